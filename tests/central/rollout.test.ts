/**
 * The rollout controller against real mosquitto and simulated agents (real MQTT clients obeying
 * desired/model): canary first, then the rest; a canary failure halts and reverts; a hung device times
 * out; a restarted central continues a rollout; the API refuses what it cannot do.
 */
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RolloutView } from '../../src/central/rollout.js';
import { startSimFleet, stopSimFleet, type SimAgent, type SimBehaviour } from '../../src/central/sim.js';
import type { DesiredModel } from '../../src/fleet/protocol.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { makeBundle, startTestCentral, tempDir, until, upload, type MadeBundle, type TestCentral } from './helpers.js';

let broker: Mosquitto;
let v110: MadeBundle;
let v120: MadeBundle;
let v130bad: MadeBundle;
const dataDir = tempDir();
let central: TestCentral;
let sims: SimAgent[] = [];

async function create(c: TestCentral, body: Record<string, unknown>): Promise<RolloutView> {
  const res = await c.api('/api/rollouts', { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
  const json = (await res.json()) as RolloutView & { error?: string };
  expect(res.status, json.error).toBe(201);
  return json;
}

async function view(c: TestCentral, id: string): Promise<RolloutView> {
  return (await (await c.api(`/api/rollouts/${id}`)).json()) as RolloutView;
}

async function fleet(group: string, count: number, behaviour?: (i: number) => SimBehaviour): Promise<SimAgent[]> {
  const s = await startSimFleet({
    url: broker.url,
    count,
    prefix: group,
    groups: () => [group],
    model: { id: 'orientation-qa', version: '1.1.0', sha256: v110.sha256 },
    behaviour: (i) => ({ download: true, ...behaviour?.(i) }),
  });
  sims.push(...s);
  await until(() => central.fleet.members(group).filter((a) => a.health).length === count, `${count} agents of ${group} in the fleet view`);
  return s;
}

/**
 * Retained desired/model documents currently on the broker for these topics: waits for the topics in
 * `expect` to arrive, then a short settle for any others (retained messages follow the SUBACK at once).
 */
async function retainedDocs(filter: string, expect: string[] = []): Promise<Map<string, DesiredModel | null>> {
  const c = await mqtt.connectAsync(broker.url);
  const out = new Map<string, DesiredModel | null>();
  c.on('message', (t, p) => out.set(t, p.length ? (JSON.parse(p.toString()) as DesiredModel) : null));
  await c.subscribeAsync(filter, { qos: 1 });
  if (expect.length) await until(() => expect.every((t) => out.has(t)), `retained ${expect.join(', ')}`, 10_000);
  await new Promise((r) => setTimeout(r, 300));
  await c.endAsync();
  return out;
}

describe.skipIf(skipWithoutMosquitto)('central rollout controller', () => {
  beforeAll(async () => {
    broker = await startMosquitto();
    central = await startTestCentral(broker.url, { dataDir });
    [v110, v120, v130bad] = await Promise.all([makeBundle('1.1.0'), makeBundle('1.2.0'), makeBundle('1.3.0')]);
    for (const b of [v110, v120, v130bad]) expect((await upload(central, b)).status).toBe(201);
  });
  afterEach(async () => {
    await stopSimFleet(sims);
    sims = [];
  });
  afterAll(async () => {
    await central?.close();
    await broker?.dispose();
  });

  it('rolls a version out canary first, then to the rest of the group, and publishes the group document', async () => {
    const agents = await fleet('ward-a', 10);
    const r = await create(central, { bundle: 'orientation-qa@1.2.0', group: 'ward-a', canary: 0.2, maxFailures: 0 });
    expect(r.status).toBe('canary');
    expect(r.devices.filter((d) => d.wave === 'canary').map((d) => d.deviceId)).toEqual(['ward-a-0000', 'ward-a-0001']);
    const done = await until(async () => {
      const v = await view(central, r.id);
      return v.status !== 'canary' && v.status !== 'widening' && v;
    }, 'rollout finished');
    expect(done.status).toBe('succeeded');
    expect(done.counts).toMatchObject({ total: 10, succeeded: 10, failed: 0 });
    for (const a of agents) expect(a.serving?.version).toBe('1.2.0');
    // every agent downloaded the real bundle from the registry and checked its sha256 (sim: download: true)
    expect(agents.every((a) => a.phases.some((p) => p.rolloutId === r.id && p.phase === 'downloading'))).toBe(true);
    // canary agents were active before any other agent was even told
    const canary = agents.slice(0, 2);
    for (const a of canary) expect(a.phases.filter((p) => p.rolloutId === r.id).map((p) => p.phase)).toEqual(['downloading', 'verifying', 'golden', 'activating', 'active']);
    const docs = await retainedDocs('imaging/group/ward-a/desired/model', ['imaging/group/ward-a/desired/model']);
    expect(docs.get('imaging/group/ward-a/desired/model')).toMatchObject({ rolloutId: r.id, version: '1.2.0', sha256: v120.sha256, size: v120.size });
    // the console/API reflects it: every row at 1.2.0
    const rows = (await (await central.api('/api/agents?group=ward-a&version=1.2.0')).json()) as { agents: unknown[] };
    expect(rows.agents).toHaveLength(10);
  });

  it('halts when the canary fails and reverts the canary; the rest never get the bad version', async () => {
    const agents = await fleet('ward-b', 10, (i) => (i === 0 ? { failVersions: ['1.3.0'] } : {}));
    const r = await create(central, { bundle: 'orientation-qa@1.3.0', group: 'ward-b', canary: 0.2, maxFailures: 0 });
    const done = await until(async () => {
      const v = await view(central, r.id);
      return v.status === 'rolled-back' && v;
    }, 'rollout rolled back');
    expect(done.reason).toMatch(/1 failed \(max 0\) in the canary: ward-b-0000: golden check failed/);
    const dev0 = done.devices.find((d) => d.deviceId === 'ward-b-0000');
    expect(dev0).toMatchObject({ wave: 'canary', status: 'failed', phase: 'rolled-back' });
    expect(done.counts.pending).toBe(8);
    // the other canary got the previous version back (a new document: rollback id, version 1.1.0)
    await until(() => agents[1]!.phases.some((p) => p.rolloutId === `${r.id}~rollback` && p.phase === 'active'), 'ward-b-0001 told to go back');
    const docs = await retainedDocs('imaging/+/desired/model', ['imaging/ward-b-0000/desired/model', 'imaging/ward-b-0001/desired/model']);
    expect(docs.get('imaging/ward-b-0001/desired/model')).toMatchObject({ rolloutId: `${r.id}~rollback`, version: '1.1.0', sha256: v110.sha256 });
    expect(docs.get('imaging/ward-b-0002/desired/model')).toBeUndefined();
    expect(agents[1]!.serving?.version).toBe('1.1.0');
    for (const a of agents.slice(2)) expect(a.phases).toEqual([]);
    expect(agents.every((a) => a.serving?.version === '1.1.0')).toBe(true);
    const group = await retainedDocs('imaging/group/ward-b/desired/model');
    expect(group.size).toBe(0);
  });

  it('tolerates failures up to --max-failures, and counts a hung device as failed after the timeout', async () => {
    // no download here: the healthy agents must finish well inside the short timeout even on a loaded machine
    const agents = await fleet('ward-c', 4, (i) => ({ download: false, ...(i === 3 ? { hangVersions: ['1.2.0'] } : {}) }));
    const r = await create(central, { bundle: 'orientation-qa@1.2.0', group: 'ward-c', canary: 0.5, maxFailures: 1, deviceTimeoutSec: 4 });
    const done = await until(async () => {
      const v = await view(central, r.id);
      return v.status === 'succeeded' && v;
    }, 'rollout succeeded with one timed-out device');
    expect(done.counts).toMatchObject({ succeeded: 3, 'timed-out': 1 });
    expect(done.devices.find((d) => d.deviceId === 'ward-c-0003')?.reason).toMatch(/no terminal phase within 4 s \(last phase: downloading\)/);
    expect(done.reason).toMatch(/1 device\(s\) failed within the allowed 1/);
    expect(agents.slice(0, 3).every((a) => a.serving?.version === '1.2.0')).toBe(true);
  });

  it('an agent that is powered off does not fail the rollout, and converges when it comes back', async () => {
    const agents = await fleet('ward-g', 3, () => ({ download: false }));
    await agents[2]!.stop(); // retained state: offline
    await until(() => central.fleet.agents.get('ward-g-0002')?.online === false, 'ward-g-0002 offline in the fleet view');
    const r = await create(central, { bundle: 'orientation-qa@1.2.0', group: 'ward-g', canary: 0.3, deviceTimeoutSec: 3 });
    expect(r.devices.filter((d) => d.wave === 'canary').map((d) => d.deviceId)).toEqual(['ward-g-0000']); // online ones go first
    const done = await until(async () => {
      const v = await view(central, r.id);
      return v.status === 'succeeded' && v;
    }, 'rollout succeeded without the offline agent');
    expect(done.counts).toMatchObject({ succeeded: 2, offline: 1, failed: 0, 'timed-out': 0 });
    expect(done.reason).toMatch(/1 device\(s\) offline: their retained document applies when they reconnect/);
    // back on: the retained document is waiting for it
    await agents[2]!.start();
    await until(() => agents[2]!.serving?.version === '1.2.0' && agents[2]!.phase === 'active', 'the returning agent on 1.2.0');
  });

  it('an operator halt reverts the devices reached so far', async () => {
    const agents = await fleet('ward-d', 4, () => ({ hangVersions: ['1.2.0'] }));
    const r = await create(central, { bundle: 'orientation-qa@1.2.0', group: 'ward-d', canary: 0.5 });
    await until(() => agents[0]!.phase === 'downloading' && agents[1]!.phase === 'downloading', 'canary downloading');
    const res = await central.api(`/api/rollouts/${r.id}/halt`, { method: 'POST' });
    const v = (await res.json()) as RolloutView;
    expect(v.status).toBe('rolled-back');
    expect(v.reason).toBe('halted by operator (api)');
    expect(v.counts).toMatchObject({ reverted: 2, pending: 2 });
    await until(() => agents[0]!.serving?.version === '1.1.0' && agents[0]!.phases.at(-1)?.rolloutId === `${r.id}~rollback`, 'canary told to stay on 1.1.0');
    expect((await central.api(`/api/rollouts/${r.id}/halt`, { method: 'POST' })).status).toBe(409);
  });

  it('refuses rollouts it cannot run, with a reason', async () => {
    await fleet('ward-e', 2, () => ({ hangVersions: ['1.2.0'] }));
    const post = (body: unknown): Promise<Response> => central.api('/api/rollouts', { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    const err = async (r: Response): Promise<string> => ((await r.json()) as { error: string }).error;
    let res = await post({ bundle: 'orientation-qa@9.9.9', group: 'ward-e' });
    expect(res.status).toBe(404);
    expect(await err(res)).toMatch(/not in the registry/);
    res = await post({ bundle: 'orientation-qa@1.2.0', group: 'nobody' });
    expect(res.status).toBe(400);
    expect(await err(res)).toMatch(/no agents/);
    res = await post({ bundle: 'orientation-qa@1.2.0', group: 'ward-e', canary: 1.5 });
    expect(res.status).toBe(400);
    res = await post({ bundle: 'orientation-qa', group: 'ward-e' });
    expect(res.status).toBe(400);
    res = await post({ bundle: 'orientation-qa@1.2.0', group: 'ward-e', policy: { minAgreement: 2 } });
    expect(res.status).toBe(400);
    expect(await err(res)).toMatch(/policy.minAgreement must be a number in \[0, 1\]/);
    res = await post({ bundle: 'orientation-qa@1.2.0', group: 'ward-e', policy: { shadowImagez: 5 } });
    expect(await err(res)).toMatch(/policy.shadowImagez is not a rollout policy field/);
    const r = await create(central, { bundle: 'orientation-qa@1.2.0', group: 'ward-e', canary: 0.5, policy: { observeImages: 5, maxErrorRate: 0.2 } });
    expect(r.desired.policy).toEqual({ observeImages: 5, maxErrorRate: 0.2 }); // goes to the agents as is
    res = await post({ bundle: 'orientation-qa@1.2.0', group: 'ward-e' });
    expect(res.status).toBe(409);
    expect(await err(res)).toContain(r.id);
    // the bundle a running rollout ships cannot be deleted from under the agents
    res = await central.api('/api/bundles/orientation-qa/1.2.0', { method: 'DELETE' });
    expect(res.status).toBe(409);
    expect(await err(res)).toContain(r.id);
    await central.api(`/api/rollouts/${r.id}/halt`, { method: 'POST' });
    res = await central.api('/api/rollouts', { method: 'POST', body: 'group=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(res.status).toBe(415);
  });

  it('continues a rollout after central restarts', async () => {
    // no download: the registry is down with central while the canary finishes
    const agents = await fleet('ward-f', 4, () => ({ stepDelayMs: 150, download: false }));
    const r = await create(central, { bundle: 'orientation-qa@1.2.0', group: 'ward-f', canary: 0.25 });
    await until(() => agents[0]!.phase === 'downloading' || agents[0]!.phase === 'verifying', 'canary started');
    await central.close();
    // the canary finishes while central is down; its retained model/state waits on the broker
    await until(() => agents[0]!.phase === 'active', 'canary active while central is down');
    central = await startTestCentral(broker.url, { dataDir });
    const done = await until(async () => {
      const v = await view(central, r.id);
      return v.status === 'succeeded' && v;
    }, 'resumed rollout succeeded');
    expect(done.counts.succeeded).toBe(4);
    expect(agents.every((a) => a.serving?.version === '1.2.0')).toBe(true);
    const list = (await (await central.api('/api/rollouts')).json()) as { rollouts: RolloutView[] };
    expect(list.rollouts.map((x) => x.group)).toEqual(['ward-f', 'ward-e', 'ward-d', 'ward-g', 'ward-c', 'ward-b', 'ward-a']);
  });
});
