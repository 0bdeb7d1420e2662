/**
 * Fleet health and commands end to end: the compiled agent as a separate process, a real mosquitto,
 * real DICOM dropped into its inbox, and an MQTT.js client in the role of the central server / IT.
 */
import { copyFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CommandResponse, HealthPayload } from '../../src/fleet/protocol.js';
import { AgentProcess, agentDirs, type AgentDirs } from '../helpers/agent.js';
import { mosquittoAvailable, skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { freePort } from '../helpers/ports.js';
import { until } from '../mqtt/util.js';

if (process.env.CI === 'true' && !mosquittoAvailable) throw new Error('CI=true: mosquitto is a required peer');

const FIXTURES = path.resolve('tests/fixtures/dicom');
const CT = path.join(FIXTURES, 'pydicom_CT_small.dcm');
const MR = path.join(FIXTURES, 'pydicom_MR_small.dcm');

interface Result {
  resultId: string;
  input: { fileName: string; contentHash: string };
}

/** An MQTT.js client in the role of central: sends requests, collects responses, health and results. */
class Central {
  readonly responses: { topic: string; r: CommandResponse }[] = [];
  readonly health = new Map<string, HealthPayload[]>();
  readonly results: { topic: string; r: Result }[] = [];
  readonly errors: { topic: string; e: { code: string; message: string; settings?: string[] } }[] = [];
  private n = 0;
  private constructor(readonly client: MqttClient) {}

  static async connect(url: string): Promise<Central> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 5, reconnectPeriod: 200 });
    const c = new Central(client);
    client.on('message', (topic, payload) => {
      const text = payload.toString();
      if (text.length === 0) return;
      const levels = topic.split('/');
      if (levels[2] === 'response') c.responses.push({ topic, r: JSON.parse(text) as CommandResponse });
      else if (levels[2] === 'health') {
        const list = c.health.get(levels[1]!) ?? [];
        list.push(JSON.parse(text) as HealthPayload);
        c.health.set(levels[1]!, list);
      } else if (levels[2] === 'result') c.results.push({ topic, r: JSON.parse(text) as Result });
      else if (levels[2] === 'error') c.errors.push({ topic, e: JSON.parse(text) as { code: string; message: string } });
    });
    await client.subscribeAsync(['imaging/+/response/+', 'imaging/+/health', 'imaging/+/result', 'imaging/+/error'], { qos: 1 });
    return c;
  }

  /** Sends a request (raw payload or {transaction, data}) and waits for the response with that transaction. */
  async request(topic: string, data?: unknown, timeoutMs = 45_000): Promise<CommandResponse> {
    const transaction = `t-${++this.n}`;
    const payload = JSON.stringify(data === undefined ? { transaction } : { transaction, data });
    await this.client.publishAsync(topic, payload, { qos: 1 });
    let hit: CommandResponse | undefined;
    await until(() => (hit = this.responses.find((x) => x.r.transaction === transaction)?.r) !== undefined, timeoutMs, `response to ${topic} (${transaction})`);
    return hit!;
  }

  /** Publishes a raw payload and waits for the next response on `responseTopic` after the ones seen so far. */
  async raw(topic: string, payload: string | Buffer, responseTopic: string): Promise<CommandResponse> {
    const before = this.responses.filter((x) => x.topic === responseTopic).length;
    await this.client.publishAsync(topic, payload, { qos: 1 });
    await until(() => this.responses.filter((x) => x.topic === responseTopic).length > before, 45_000, `response on ${responseTopic}`);
    return this.responses.filter((x) => x.topic === responseTopic)[before]!.r;
  }

  async waitHealth(device: string, pred: (h: HealthPayload) => boolean, what: string, timeoutMs = 30_000): Promise<HealthPayload> {
    let hit: HealthPayload | undefined;
    await until(() => (hit = (this.health.get(device) ?? []).find(pred)) !== undefined, timeoutMs, `health of ${device}: ${what}`);
    return hit!;
  }

  close(): Promise<void> {
    return this.client.endAsync(true);
  }
}

function sha256File(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

const agents: AgentProcess[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.kill()));
});

async function startAgent(dirs: AgentDirs): Promise<AgentProcess> {
  const a = await AgentProcess.start(dirs);
  agents.push(a);
  return a;
}

function config(deviceId: string, url: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { deviceId, mqtt: { url }, model: { runtime: 'onnx', precision: 'fp32' }, fleet: { healthIntervalSec: 1 }, ...extra };
}

describe.skipIf(skipWithoutMosquitto)('fleet health and commands (real agent, real mosquitto)', () => {
  let broker: Mosquitto;
  let central: Central;
  beforeAll(async () => {
    broker = await startMosquitto();
    central = await Central.connect(broker.url);
  });
  afterAll(async () => {
    await central?.close();
    await broker?.dispose();
  });

  it('health is retained with its fields and follows the work; bad requests get error responses and the agent keeps processing', async () => {
    const dirs = agentDirs(config('fleet-a', broker.url, { configId: 'ct-scanner', mqtt: { url: broker.url, username: 'agent-a', password: 'pw-secret-123' } }));
    await startAgent(dirs);
    const first = await central.waitHealth('fleet-a', () => true, 'first');
    expect(first).toMatchObject({ deviceId: 'fleet-a', groups: [], configId: 'ct-scanner', ingest: { paused: false, queueDepth: 0 }, lastError: null });
    expect(first.model).toMatchObject({ id: 'orientation-qa', runtime: 'onnx', provider: 'cpu' });
    expect(first.agentVersion).toMatch(/^\d+\.\d+\.\d+/);
    expect(first.diskFreeBytes).toBeGreaterThan(0);
    expect(first.rssMb).toBeGreaterThan(10);

    // Hostile requests: each answered with an error, none changes anything.
    const req = 'imaging/fleet-a/request';
    const notJson = await central.raw(`${req}/set-config`, 'ingest.stabilityMs=5', 'imaging/fleet-a/response/set-config');
    expect(notJson).toMatchObject({ status: 'error', deviceId: 'fleet-a', data: null });
    expect(notJson.error).toMatch(/not JSON/);
    const wrongType = await central.request(`${req}/set-config`, { set: 'everything' });
    expect(wrongType.status).toBe('error');
    expect(wrongType.error).toMatch(/\/data\/set: must be object/);
    const badValue = await central.request(`${req}/set-config`, { set: { ingest: { stabilityMs: -1 } } });
    expect(badValue.error).toMatch(/ingest.stabilityMs: must be >= 50/);
    const big = await central.raw(`${req}/ping`, Buffer.alloc(100 * 1024, 0x20), 'imaging/fleet-a/response/ping');
    expect(big.error).toMatch(/102400 bytes, over the 65536-byte limit/);
    const unknown = await central.request(`${req}/format-disk`);
    expect(unknown).toMatchObject({ status: 'error', error: 'unknown command "format-disk"' });
    const badHash = await central.request(`${req}/reprocess`, { hash: '../../etc/passwd' });
    expect(badHash.error).toMatch(/\/data\/hash: must match pattern/);
    expect(existsSync(path.join(dirs.stateDir, 'config-overrides.json'))).toBe(false);

    // Live settings: a new inbox watcher and new pipeline options, applied without a restart.
    const live = await central.request(`${req}/set-config`, { set: { ingest: { stabilityMs: 150, maxAttempts: 2 }, pipeline: { concurrency: 1 }, decode: { framePolicy: 'first' } } });
    expect(live.status).toBe('ok');
    expect((live.data as { applied: string[] }).applied.sort()).toEqual(['decode.framePolicy', 'ingest.maxAttempts', 'ingest.stabilityMs', 'pipeline.concurrency']);

    // ... and the agent still works: a capture dropped now is classified and health shows it.
    copyFileSync(CT, path.join(dirs.inbox, 'ct.dcm'));
    await until(() => central.results.some((x) => x.topic === 'imaging/fleet-a/result'), 30_000, 'result after the bad requests');
    const h = await central.waitHealth('fleet-a', (x) => x.counts.processed === 1 && x.latencyMs.window === 1, 'one capture processed');
    expect(h.latencyMs.p50).toBeGreaterThan(0);
    expect(h.latencyMs.p99).toBe(h.latencyMs.p50);

    const ping = await central.request(`${req}/ping`);
    expect(ping).toMatchObject({ status: 'ok', deviceId: 'fleet-a', error: null, data: { pong: true, model: { id: 'orientation-qa' } } });

    // get-config: the effective config, the password never sent
    const cfg = await central.request(`${req}/get-config`);
    expect(cfg.status).toBe('ok');
    expect(JSON.stringify(cfg)).not.toContain('pw-secret-123');
    expect((cfg.data as { config: { mqtt: { password: string; username: string } } }).config.mqtt).toMatchObject({ username: 'agent-a', password: '***' });

    // reprocess: by content hash, from done/: the same result again (same model, same resultId)
    const hash = sha256File(CT);
    const re = await central.request(`${req}/reprocess`, { hash: `sha256:${hash}` });
    expect(re).toMatchObject({ status: 'ok', data: { hash: `sha256:${hash}`, name: 'ct.dcm', from: 'done', queued: true } });
    await until(() => central.results.filter((x) => x.topic === 'imaging/fleet-a/result').length === 2, 30_000, 'result of the reprocessed capture');
    const [r1, r2] = central.results.filter((x) => x.topic === 'imaging/fleet-a/result').map((x) => x.r);
    expect(r2!.resultId).toBe(r1!.resultId);
    expect(readdirSync(dirs.doneDir)).toEqual(['ct.dcm']); // the file stays in done/
    const gone = await central.request(`${req}/reprocess`, { hash: 'a'.repeat(64) });
    expect(gone).toMatchObject({ status: 'error' });
    expect(gone.error).toMatch(/no capture with content hash/);

    // Every request is in the audit log (append-only SQLite): command, payload hash, outcome, never the payload.
    const db = new Database(path.join(dirs.stateDir, 'agent.db'), { readonly: true });
    let commands: { cmd: string; outcome: string; payloadSha256: string; transaction: string | null }[];
    try {
      commands = (db.prepare("SELECT data FROM audit WHERE kind = 'command' ORDER BY seq").all() as { data: string }[]).map(
        (r) => JSON.parse(r.data) as { cmd: string; outcome: string; payloadSha256: string; transaction: string | null },
      );
    } finally {
      db.close();
    }
    expect(commands.length).toBe(11);
    expect(commands.find((c) => c.cmd === 'format-disk')!.outcome).toBe('refused: unknown command');
    expect(commands.find((c) => c.cmd === 'ping' && c.outcome.startsWith('refused'))!.outcome).toMatch(/payload too large/);
    expect(commands.filter((c) => c.outcome === 'ok').map((c) => c.cmd)).toEqual(['set-config', 'ping', 'get-config', 'reprocess']);
    expect(commands.every((c) => /^[0-9a-f]{64}$/.test(c.payloadSha256))).toBe(true);
    // payloads themselves are not stored (only their hash)
    expect(JSON.stringify(commands)).not.toContain('ingest.stabilityMs=5');
    expect(JSON.stringify(commands)).not.toContain('everything');
  }, 180_000);

  it('set-config is applied live or at restart, persisted across a restart; pause outlives a restart; restart exits 75', async () => {
    const dirs = agentDirs(config('fleet-b', broker.url));
    let agent = await startAgent(dirs);
    const req = 'imaging/fleet-b/request';
    await central.waitHealth('fleet-b', () => true, 'first');

    const set = await central.request(`${req}/set-config`, { set: { configId: 'ct-7', ingest: { stabilityMs: 300 }, mqtt: { keepaliveSec: 45 } } });
    expect(set.status).toBe('ok');
    expect(set.data).toMatchObject({ applied: ['configId', 'ingest.stabilityMs'], restartRequired: ['mqtt.keepaliveSec'], pendingRestart: ['mqtt.keepaliveSec'], pinned: [] });
    await central.waitHealth('fleet-b', (h) => h.configId === 'ct-7', 'new configId');
    const before = (await central.request(`${req}/get-config`)).data as { config: { ingest: { stabilityMs: number }; mqtt: { keepaliveSec: number } }; pendingRestart: string[] };
    expect(before.config.ingest.stabilityMs).toBe(300);
    expect(before.config.mqtt.keepaliveSec).toBe(30);
    expect(before.pendingRestart).toEqual(['mqtt.keepaliveSec']);

    const paused = await central.request(`${req}/pause`, { reason: 'scanner maintenance' });
    expect(paused).toMatchObject({ status: 'ok', data: { paused: true, persistent: true } });
    await central.waitHealth('fleet-b', (h) => h.ingest.paused, 'paused');

    const restart = await central.request(`${req}/restart`);
    expect(restart).toMatchObject({ status: 'ok', data: { restarting: true, exitCode: 75 } });
    await agent.waitForExit();
    expect(agent.exitCode).toBe(75);

    // The next start (what systemd's Restart=on-failure does) runs with the overrides, still paused.
    central.health.delete('fleet-b');
    agent = await startAgent(dirs);
    const after = (await central.request(`${req}/get-config`)).data as { config: { configId: string; ingest: { stabilityMs: number }; mqtt: { keepaliveSec: number } }; pendingRestart: string[] };
    expect(after.config).toMatchObject({ configId: 'ct-7', ingest: { stabilityMs: 300 }, mqtt: { keepaliveSec: 45 } });
    expect(after.pendingRestart).toEqual([]);
    await central.waitHealth('fleet-b', (h) => h.ingest.paused && h.configId === 'ct-7', 'still paused after the restart');
    expect(agent.logs.some((l) => /intake paused by a fleet command/.test(l.msg))).toBe(true);

    copyFileSync(MR, path.join(dirs.inbox, 'mr.dcm'));
    // Paused: after several health rounds the file is still in the inbox, nothing published for it.
    const seen = (central.health.get('fleet-b') ?? []).length;
    await central.waitHealth('fleet-b', () => (central.health.get('fleet-b') ?? []).length >= seen + 3, 'three more health rounds');
    expect(existsSync(path.join(dirs.inbox, 'mr.dcm'))).toBe(true);
    expect(central.results.some((x) => x.topic === 'imaging/fleet-b/result')).toBe(false);

    const resumed = await central.request(`${req}/resume`);
    expect(resumed).toMatchObject({ status: 'ok', data: { paused: false, wasPaused: true } });
    await until(() => central.results.some((x) => x.topic === 'imaging/fleet-b/result'), 30_000, 'result after resume');
    await central.waitHealth('fleet-b', (h) => !h.ingest.paused && h.counts.processed === 1, 'resumed');
    expect(existsSync(path.join(dirs.stateDir, 'ingest-paused.json'))).toBe(false);
  }, 240_000);

  it('broker settings set remotely that cannot connect are reverted: exit 75, back on the previous broker, config-reverted reported', async () => {
    const dirs = agentDirs(config('fleet-r', broker.url, { fleet: { healthIntervalSec: 30, confirmConnectSec: 3 } }));
    let agent = await startAgent(dirs);
    const req = 'imaging/fleet-r/request';
    const nowhere = `mqtt://127.0.0.1:${await freePort()}`;
    const set = await central.request(`${req}/set-config`, { set: { mqtt: { url: nowhere, keepaliveSec: 20 } } });
    expect(set.data).toMatchObject({ restartRequired: ['mqtt.url', 'mqtt.keepaliveSec'] });
    expect(existsSync(path.join(dirs.stateDir, 'config-overrides.unconfirmed.json'))).toBe(true);
    expect((await central.request(`${req}/restart`)).status).toBe('ok');
    await agent.waitForExit();
    expect(agent.exitCode).toBe(75);

    // The next start uses the unreachable broker: it cannot be told anything, so it reverts by itself.
    agent = await startAgent(dirs);
    await agent.waitForExit();
    expect(agent.exitCode).toBe(75);
    expect(agent.logs.some((l) => /did not connect within 3 s; reverted/.test(l.msg))).toBe(true);
    expect(JSON.parse(readFileSync(path.join(dirs.stateDir, 'config-overrides.json'), 'utf8'))).toEqual({});

    // And the start after that is back on the real broker, says what happened, and is commandable.
    agent = await startAgent(dirs);
    await until(() => central.errors.some((x) => x.topic === 'imaging/fleet-r/error' && x.e.code === 'config-reverted'), 60_000, 'config-reverted error');
    expect(central.errors.find((x) => x.e.code === 'config-reverted')!.e.settings).toEqual(['mqtt.url', 'mqtt.keepaliveSec']);
    const cfg = (await central.request(`${req}/get-config`)).data as { config: { mqtt: { url: string } }; overrides: object };
    expect(cfg.config.mqtt.url).toBe(broker.url);
    expect(cfg.overrides).toEqual({});
    expect(existsSync(path.join(dirs.stateDir, 'config-overrides.unconfirmed.json'))).toBe(false);
  }, 240_000);

  it('a group request is answered by every agent in the group, each on its own response topic', async () => {
    const a = agentDirs(config('fleet-g1', broker.url, { fleet: { healthIntervalSec: 30, groups: ['ward-g'] } }));
    const b = agentDirs(config('fleet-g2', broker.url, { fleet: { healthIntervalSec: 30, groups: ['ward-g', 'ct'] } }));
    const c = agentDirs(config('fleet-g3', broker.url, { fleet: { healthIntervalSec: 30, groups: ['other'] } }));
    await Promise.all([startAgent(a), startAgent(b), startAgent(c)]);
    // Subscribed once the device topic answers.
    for (const d of ['fleet-g1', 'fleet-g2', 'fleet-g3']) expect((await central.request(`imaging/${d}/request/ping`)).status).toBe('ok');
    await central.client.publishAsync('imaging/group/ward-g/request/ping', JSON.stringify({ transaction: 'group-1' }), { qos: 1 });
    await until(() => central.responses.filter((x) => x.r.transaction === 'group-1').length === 2, 20_000, 'two group responses');
    // fleet-g3 is not in the group; a ping to it right after proves it has handled anything sent before
    expect((await central.request('imaging/fleet-g3/request/ping')).status).toBe('ok');
    const group = central.responses.filter((x) => x.r.transaction === 'group-1');
    expect(group.map((x) => x.topic).sort()).toEqual(['imaging/fleet-g1/response/ping', 'imaging/fleet-g2/response/ping']);
    expect(group.every((x) => x.r.status === 'ok')).toBe(true);
    const health = await central.waitHealth('fleet-g2', () => true, 'health');
    expect(health.groups).toEqual(['ward-g', 'ct']);
  }, 240_000);
});
