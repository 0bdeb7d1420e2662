/**
 * Real Debian mosquitto for tests: `mosquitto -c <tmpconf>` on a free loopback port.
 *
 * Missing binary: outside CI the suites skip (`describe.skipIf(skipWithoutMosquitto)`); with CI=true a
 * missing peer is a failure, so `skipWithoutMosquitto` is false there and startMosquitto throws.
 *
 * Privileges: started as root, mosquitto drops to user `mosquitto`, which then cannot read a root-owned
 * 0600 password file or key. mosquitto 2.0.11 accepts `user root` (checked), so the generated config says
 * so when we run as root and test files can stay private.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './ports.js';

/** `mosquitto` on PATH, else Debian's /usr/sbin one (not on a normal user's PATH), else null. */
function detect(): string | null {
  for (const bin of ['mosquitto', '/usr/sbin/mosquitto']) {
    if (spawnSync(bin, ['-h'], { stdio: 'ignore' }).error === undefined) return bin;
  }
  return null;
}

export const mosquittoBinary: string | null = detect();
export const mosquittoAvailable: boolean = mosquittoBinary !== null;
/** True only when the binary is missing and we are not in CI (where a missing peer must fail). */
export const skipWithoutMosquitto: boolean = !mosquittoAvailable && process.env.CI !== 'true';

export interface MosquittoOptions {
  /** Port to listen on; a free one by default. */
  port?: number;
  /** Extra lines appended to the listener section (e.g. `password_file`, `certfile`, `require_certificate true`). */
  conf?: string;
  /** Default true; set false when `conf` brings a password file or certificates. */
  allowAnonymous?: boolean;
  /** Keep sessions and retained messages across restarts in the temp dir (default false). */
  persistence?: boolean;
  /**
   * The whole config instead of the generated one (e.g. a shipped mosquitto.conf with paths and ports
   * substituted); it must listen on `port` at 127.0.0.1 and log to stderr. `user root` is still
   * prepended when running as root. The other options are then ignored.
   */
  configText?: (ctx: { port: number; dir: string }) => string;
}

export interface Mosquitto {
  readonly url: string;
  readonly port: number;
  readonly dir: string;
  /** SIGTERM and wait for exit (clients see the connection close). */
  stop(): Promise<void>;
  /** stop() then start again on the same port with the same config (persistence off: state is lost). */
  restart(): Promise<void>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
  /** Start again after stop()/kill(). */
  start(): Promise<void>;
  /** Last lines mosquitto logged, for failure messages. */
  logTail(): string;
  /** Stop and remove the temp dir. */
  dispose(): Promise<void>;
}

export async function startMosquitto(opts: MosquittoOptions = {}): Promise<Mosquitto> {
  if (mosquittoBinary === null) {
    throw new Error('mosquitto binary not found (apt-get install mosquitto mosquitto-clients)' + (process.env.CI === 'true' ? '; CI=true: a missing peer is a failure' : ''));
  }
  const bin = mosquittoBinary;
  const dir = mkdtempSync(join(tmpdir(), 'mosq-'));
  let port = opts.port ?? (await freePort());
  const confPath = join(dir, 'mosquitto.conf');
  const writeConf = (): void => {
    if (opts.configText) {
      const root = process.getuid?.() === 0 ? 'user root\n' : '';
      writeFileSync(confPath, root + opts.configText({ port, dir }) + '\n');
      return;
    }
    const lines = [
      ...(process.getuid?.() === 0 ? ['user root'] : []),
      ...(opts.persistence === true ? ['persistence true', `persistence_location ${dir}/`] : ['persistence false']),
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      'log_type information',
      'per_listener_settings false',
      `allow_anonymous ${opts.allowAnonymous === false ? 'false' : 'true'}`,
      `listener ${port} 127.0.0.1`,
      opts.conf ?? '',
      '',
    ];
    writeFileSync(confPath, lines.join('\n'));
  };

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let log = '';
  let exitInfo: string | null = null;

  const launch = async (): Promise<void> => {
    writeConf();
    exitInfo = null;
    const proc = spawn(bin, ['-c', confPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    const onData = (b: Buffer): void => {
      log = (log + b.toString()).slice(-8000);
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    exited = new Promise<void>((resolve) => {
      proc.once('exit', (code, signal) => {
        exitInfo = `mosquitto exited (code ${code}, signal ${signal})`;
        resolve();
      });
    });
    await waitForPort(port, { timeoutMs: 10_000, abort: () => (exitInfo === null ? null : `${exitInfo}:\n${log}`) });
  };

  const start = async (): Promise<void> => {
    // The free port may be taken between probe and bind: retry with a new one unless it was fixed.
    for (let attempt = 0; ; attempt++) {
      try {
        await launch();
        return;
      } catch (err) {
        const inUse = /Address already in use/i.test(log);
        if (!inUse || opts.port !== undefined || attempt >= 3 || child === undefined || port === 0) throw err;
        port = await freePort();
      }
    }
  };

  const signalAndWait = async (sig: NodeJS.Signals): Promise<void> => {
    const proc = child;
    if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill(sig);
    await exited;
  };

  await start();
  const handle: Mosquitto = {
    get url() {
      return `mqtt://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    dir,
    stop: () => signalAndWait('SIGTERM'),
    kill: () => signalAndWait('SIGKILL'),
    async restart() {
      await signalAndWait('SIGTERM');
      await launch(); // same port: clients reconnect to the same URL
    },
    start: () => launch(),
    logTail: () => log,
    async dispose() {
      await signalAndWait('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return handle;
}
