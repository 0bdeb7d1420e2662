/**
 * The fleet view as hospital IT sees it through central's API: agents appear from their retained
 * topics (no polling), with groups, versions, health, online/offline (last will included), recent
 * results and errors; filters work; malformed messages change nothing; two central instances share the
 * result/error streams through a shared subscription while both see every agent's retained state.
 */
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandOutcome } from '../../src/central/commands.js';
import type { AgentSummary, AgentView } from '../../src/central/fleet.js';
import { SimAgent, startSimFleet, stopSimFleet } from '../../src/central/sim.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { startTestCentral, until, type TestCentral } from './helpers.js';

const V1 = { id: 'orientation-qa', version: '1.1.0', sha256: 'a'.repeat(64) };
const V2 = { id: 'orientation-qa', version: '1.2.0', sha256: 'b'.repeat(64) };

async function agents(c: TestCentral, query = ''): Promise<AgentSummary[]> {
  const res = await c.api(`/api/agents${query}`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { agents: AgentSummary[] }).agents;
}

describe.skipIf(skipWithoutMosquitto)('central fleet view', () => {
  let broker: Mosquitto;
  let central: TestCentral;
  let sims: SimAgent[] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    // agents first: central must learn them from the retained topics alone
    sims = await startSimFleet({ url: broker.url, count: 6, prefix: 'ct', model: V1, groups: (i) => (i < 4 ? ['ward-a'] : ['ward-b', 'mobile']) });
    const other = new SimAgent({ url: broker.url, deviceId: 'mr-1', groups: ['ward-b'], model: V2 });
    await other.start();
    sims.push(other);
    central = await startTestCentral(broker.url);
  });
  afterAll(async () => {
    await stopSimFleet(sims);
    await central?.close();
    await broker?.dispose();
  });

  it('shows every agent from the retained topics, with groups, version and health', async () => {
    const list = await until(async () => {
      const l = await agents(central);
      return l.length === 7 && l.every((a) => a.version !== null) && l;
    }, '7 agents with health');
    expect(list.map((a) => a.deviceId)).toEqual(['ct-0000', 'ct-0001', 'ct-0002', 'ct-0003', 'ct-0004', 'ct-0005', 'mr-1']);
    expect(list.every((a) => a.online === true)).toBe(true);
    expect(list.find((a) => a.deviceId === 'ct-0004')).toMatchObject({ groups: ['ward-b', 'mobile'], model: 'orientation-qa', version: '1.1.0', agentVersion: 'sim', p50: 1, p99: 2 });
    const fleet = (await (await central.api('/api/fleet')).json()) as { agents: number; online: number; groups: Record<string, number>; versions: Record<string, number> };
    expect(fleet).toMatchObject({ agents: 7, online: 7, groups: { 'ward-a': 4, 'ward-b': 3, mobile: 2 }, versions: { 'orientation-qa@1.1.0': 6, 'orientation-qa@1.2.0': 1 } });
  });

  it('filters by group, version and online', async () => {
    expect((await agents(central, '?group=ward-b')).map((a) => a.deviceId)).toEqual(['ct-0004', 'ct-0005', 'mr-1']);
    expect((await agents(central, '?version=1.2.0')).map((a) => a.deviceId)).toEqual(['mr-1']);
    expect((await agents(central, '?group=ward-b&version=1.1.0')).map((a) => a.deviceId)).toEqual(['ct-0004', 'ct-0005']);
    expect(await agents(central, '?online=false')).toEqual([]);
  });

  it('marks an agent offline on a clean stop and on a lost connection (last will)', async () => {
    await sims[0]!.stop();
    sims[1]!.crash();
    const off = await until(async () => {
      const l = await agents(central, '?online=false');
      return l.length === 2 && l;
    }, 'two offline agents');
    expect(off.map((a) => a.deviceId)).toEqual(['ct-0000', 'ct-0001']);
    expect((await agents(central, '?online=true')).length).toBe(5);
  });

  it('shows recent results and errors per agent', async () => {
    const a = sims[2]!;
    await a.publishResult('rot90');
    await a.publishResult('rot0');
    await a.publishError('decode-failed', 'capture-7.dcm: truncated pixel data');
    const detail = await until(async () => {
      const d = (await (await central.api('/api/agents/ct-0002')).json()) as AgentView;
      return d.results.length === 2 && d.errors.length === 1 && d;
    }, 'results and an error on ct-0002');
    expect(detail.results.map((r) => r.label)).toEqual(['rot0', 'rot90']);
    expect(detail.results[0]).toMatchObject({ score: 0.97, model: 'orientation-qa@1.1.0' });
    expect(detail.errors[0]).toMatchObject({ code: 'decode-failed', message: 'capture-7.dcm: truncated pixel data' });
    const row = (await agents(central)).find((r) => r.deviceId === 'ct-0002');
    expect(row).toMatchObject({ resultCount: 2, lastError: { code: 'decode-failed' } });
    expect((await central.api('/api/agents/nope')).status).toBe(404);
  });

  it('ignores malformed messages and keeps serving', async () => {
    const c = await mqtt.connectAsync(broker.url);
    await c.publishAsync('imaging/ct-0003/health', 'not json{', { qos: 1, retain: false });
    await c.publishAsync('imaging/ct-0003/state', '[1,2,3]', { qos: 1 });
    await c.publishAsync('imaging/ct-0003/model/state', Buffer.alloc(300 * 1024, 0x7b), { qos: 1 });
    await c.publishAsync('imaging/ct-0003/error', '"just a string"', { qos: 1 });
    await c.endAsync();
    const fleet = await until(async () => {
      const f = (await (await central.api('/api/fleet')).json()) as { malformedMessages: number };
      return f.malformedMessages >= 4 && f;
    }, 'malformed messages counted');
    expect(fleet.malformedMessages).toBeGreaterThanOrEqual(4);
    expect((await agents(central)).find((a) => a.deviceId === 'ct-0003')).toMatchObject({ online: true, version: '1.1.0' });
  });

  it('sends fleet commands to an agent or a group and returns their responses', async () => {
    const post = (p: string, body: unknown, auth = true): Promise<Response> =>
      auth
        ? central.api(p, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } })
        : fetch(central.url + p, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    const one = await post('/api/agents/ct-0003/commands/ping', {});
    expect(one.status).toBe(200);
    const o = (await one.json()) as CommandOutcome;
    expect(o.responses).toEqual([expect.objectContaining({ status: 'ok', deviceId: 'ct-0003', data: { pong: true } })]);
    expect(o.missing).toEqual([]);
    // a group: every member the fleet view knows answers (ward-b: ct-0004, ct-0005, mr-1)
    const group = (await (await post('/api/groups/ward-b/commands/ping', { timeoutMs: 10_000 })).json()) as CommandOutcome;
    expect(group.responses.map((r) => r.deviceId)).toEqual(['ct-0004', 'ct-0005', 'mr-1']);
    expect(group.missing).toEqual([]);
    // the agent's own refusal comes back as an error response
    const refused = (await (await post('/api/agents/ct-0003/commands/reprocess', { data: { hash: 'x' } })).json()) as CommandOutcome;
    expect(refused.responses[0]).toMatchObject({ status: 'error', error: "unknown command 'reprocess'" });
    // an unknown command is refused before anything is sent; a stopped agent times out
    const unknown = await post('/api/agents/ct-0003/commands/format-disk', {});
    expect(unknown.status).toBe(400);
    expect(((await unknown.json()) as { error: string }).error).toMatch(/unknown command 'format-disk'/);
    const gone = await post('/api/agents/ct-0000/commands/ping', { timeoutMs: 300 });
    expect(gone.status).toBe(504);
    expect((await post('/api/agents/ct-0003/commands/ping', {}, false)).status).toBe(401);
  });

  it('two central instances: both see all retained state, the result stream is shared (each result once)', async () => {
    const c1 = await startTestCentral(broker.url, { shareGroup: 'central' });
    const c2 = await startTestCentral(broker.url, { shareGroup: 'central' });
    try {
      for (const c of [c1, c2]) await until(async () => (await agents(c)).length === 7, 'full fleet on each instance');
      const a = sims[3]!;
      for (let i = 0; i < 20; i++) await a.publishResult();
      const counts = await until(async () => {
        const n = await Promise.all([c1, c2].map(async (c) => ((await agents(c)).find((r) => r.deviceId === 'ct-0003')?.resultCount ?? 0)));
        return n[0]! + n[1]! >= 20 && n;
      }, 'all 20 results received across the two instances');
      expect(counts[0]! + counts[1]!).toBe(20);
      // the non-shared instance (plain subscription) sees every one of them
      expect((await agents(central)).find((r) => r.deviceId === 'ct-0003')?.resultCount).toBe(20);
      // command responses are never shared: each instance gets the answer to its own request
      for (const c of [c1, c2]) {
        const r = await c.api('/api/agents/ct-0003/commands/ping', { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
        expect(r.status).toBe(200);
      }
    } finally {
      await c1.close();
      await c2.close();
    }
  });
});
