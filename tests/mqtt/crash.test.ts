/**
 * The agent process dies hard (kill -9) while online: the broker must publish the retained offline will.
 * The link runs in a real child process: src/mqtt is transpiled (no type check, that is tsc's job) into
 * node_modules/.cache so the child resolves mqtt and pino from this checkout.
 */
import { spawn, execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import ts from 'typescript';
import { afterEach, describe, expect, it } from 'vitest';
import { skipWithoutMosquitto, startMosquitto } from '../helpers/mosquitto.js';
import { Subscriber, until } from './util.js';

const run = promisify(execFile);
const root = resolve(import.meta.dirname, '../..');

function buildChild(): string {
  const dir = join(root, 'node_modules', '.cache', `mqtt-crash-${process.pid}`);
  mkdirSync(join(dir, 'mqtt'), { recursive: true });
  for (const f of readdirSync(join(root, 'src/mqtt')).filter((n) => n.endsWith('.ts'))) {
    const out = ts.transpileModule(readFileSync(join(root, 'src/mqtt', f), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
      fileName: f,
    });
    writeFileSync(join(dir, 'mqtt', f.replace(/\.ts$/, '.js')), out.outputText);
  }
  writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
  writeFileSync(
    join(dir, 'child.js'),
    `import pino from 'pino';
import { MqttLink } from './mqtt/link.js';
const link = new MqttLink({ url: process.argv[2], deviceId: 'crashy', logger: pino({ level: 'silent' }) });
link.start();
await link.waitForConnection(5000);
await link.online({ pid: process.pid });
process.stdout.write('ready\\n');
setInterval(() => undefined, 1000);
`,
  );
  return dir;
}

describe.skipIf(skipWithoutMosquitto)('agent process killed with SIGKILL', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.reverse()) await c();
    cleanups.length = 0;
  });

  it('the broker publishes the retained offline will; a new subscriber sees it', async () => {
    const dir = buildChild();
    cleanups.push(() => Promise.resolve(rmSync(dir, { recursive: true, force: true })));
    const mosq = await startMosquitto();
    cleanups.push(() => mosq.dispose());
    const sub = await Subscriber.connect(mosq.url, 'imaging/crashy/state');
    cleanups.push(() => sub.close());

    const child = spawn(process.execPath, [join(dir, 'child.js'), mosq.url], { stdio: ['ignore', 'pipe', 'pipe'] });
    cleanups.push(() => Promise.resolve(void child.kill('SIGKILL')));
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    await until(() => out.includes('ready') || child.exitCode !== null, 15_000, 'child link online');
    expect(out).toContain('ready');
    await until(() => sub.messages.length > 0, 5000, 'online state');
    expect(JSON.parse(sub.messages.at(-1)!.payload)).toEqual({ state: 'online', pid: child.pid });

    const exited = new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_c, sig) => r(sig)));
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    await until(() => sub.messages.at(-1)?.payload === '{"state":"offline"}', 10_000, 'last will');
    const { stdout } = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(mosq.port), '-t', 'imaging/crashy/state', '-C', '1', '-W', '5', '-v']);
    expect(stdout.trim()).toBe('imaging/crashy/state {"state":"offline"}');
  });
});
