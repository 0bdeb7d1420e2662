/**
 * The command router and the remote config against a real mosquitto (MQTT 5) and the embedded aedes
 * broker (MQTT 3.1.1): every request answered on response/<cmd>, hostile payloads refused with an error
 * response and no effect, MQTT 5 correlation, audit records; set-config validated by the full loader,
 * applied live or marked restartRequired, persisted atomically and read back by the loader.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, OVERRIDES_FILE } from '../../src/config/load.js';
import { configSchema } from '../../src/config/schema.js';
import { LIVE_SETTINGS, unhandledLiveSettings } from '../../src/fleet/agent-fleet.js';
import { CommandError, CommandRouter } from '../../src/fleet/commands.js';
import { ConfigStore, needsRestart, settingPaths } from '../../src/fleet/config-store.js';
import { startEmbeddedBroker } from '../../src/mqtt/broker.js';
import { MqttLink } from '../../src/mqtt/link.js';
import type { CommandResponse } from '../../src/fleet/protocol.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { testLogger, until } from '../mqtt/util.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups.length = 0;
});

interface Reply {
  topic: string;
  response: CommandResponse;
  correlation?: string;
}

async function requester(url: string, filter: string, protocolVersion: 4 | 5 = 5): Promise<{ client: MqttClient; replies: Reply[] }> {
  const client = await mqtt.connectAsync(url, { protocolVersion, reconnectPeriod: 100 });
  cleanups.push(() => client.endAsync(true));
  const replies: Reply[] = [];
  client.on('message', (topic, payload, packet) => {
    const r: Reply = { topic, response: JSON.parse(payload.toString()) as CommandResponse };
    const corr = packet.properties?.correlationData?.toString();
    if (corr !== undefined) r.correlation = corr;
    replies.push(r);
  });
  await client.subscribeAsync(filter, { qos: 1 });
  return { client, replies };
}

function routerOn(url: string, deviceId: string, groups: string[] = [], protocolVersion: 4 | 5 = 5) {
  const link = new MqttLink({ url, deviceId, protocolVersion, logger: testLogger(), reconnectPeriodMs: 100 });
  cleanups.push(() => link.close());
  const audit: { cmd: string; outcome: string; payloadSha256: string; transaction?: string | null; sender: string | null }[] = [];
  const router = new CommandRouter({ deviceId, baseTopic: 'imaging', groups, log: testLogger(), audit: { command: (c) => audit.push(c) } });
  let subscribed = 0;
  link.on('subscribed', () => subscribed++);
  return {
    link,
    router,
    audit,
    async start(): Promise<void> {
      router.start(link);
      link.start();
      await until(() => subscribed > 0, 10_000, 'router subscribed');
    },
  };
}

describe('settings: live or restart, nothing in between', () => {
  it('every setting without x-restart is applied live by the agent', () => {
    expect(unhandledLiveSettings()).toEqual([]);
    for (const p of Object.keys(LIVE_SETTINGS)) {
      expect(settingPaths()).toContain(p);
      expect(needsRestart(p)).toBe(false);
    }
    expect(needsRestart('mqtt.tls.caFile')).toBe(true); // object-level mark covers the leaves
    expect(needsRestart('fleet.groups')).toBe(true);
    expect(needsRestart('ingest.stabilityMs')).toBe(false);
    expect(configSchema.properties.fleet.properties.healthIntervalSec.default).toBe(30);
  });
});

describe.skipIf(skipWithoutMosquitto)('command router on mosquitto (MQTT 5)', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker?.dispose();
  });

  it('answers registered commands with {status, deviceId, transaction, data, error}; refuses everything else without running a handler', async () => {
    const r = routerOn(broker.url, 'cmd-1');
    const calls: unknown[] = [];
    r.router.register('echo', { type: 'object', additionalProperties: false, properties: { n: { type: 'integer', minimum: 0 } } }, (data) => {
      calls.push(data);
      return { got: data };
    });
    r.router.register('fail', { type: 'object' }, () => {
      throw new CommandError('nope, because', { why: 'test' });
    });
    await r.start();
    const { client, replies } = await requester(broker.url, 'imaging/cmd-1/response/+');
    const send = (cmd: string, payload: string | Buffer): Promise<unknown> => client.publishAsync(`imaging/cmd-1/request/${cmd}`, payload, { qos: 1 });

    await send('echo', JSON.stringify({ transaction: 'a1', data: { n: 3 } }));
    await send('echo', '{"transaction":"a2","data":{"n":"three"}}'); // wrong type
    await send('echo', '{"transaction":"a3","data":{"n":1,"extra":true}}'); // unknown field
    await send('echo', '{"transaction":"a4","data":{"n":1},"more":1}'); // unknown envelope field
    await send('echo', 'not json at all');
    await send('echo', '[1,2,3]');
    await send('echo', Buffer.alloc(100 * 1024, 0x7b)); // 100 KB
    await send('does-not-exist', '{"transaction":"a5"}');
    await send('fail', '{"transaction":"a6"}');
    await send('echo', ''); // empty payload = {} (mosquitto_pub -n)
    await until(() => replies.length === 10, 10_000, '10 responses');

    const byTx = (tx: string): CommandResponse => replies.find((x) => x.response.transaction === tx)!.response;
    expect(byTx('a1')).toEqual({ status: 'ok', deviceId: 'cmd-1', transaction: 'a1', data: { got: { n: 3 } }, error: null });
    expect(byTx('a2').status).toBe('error');
    expect(byTx('a2').error).toMatch(/invalid echo request: \/data\/n: must be integer/);
    expect(byTx('a3').error).toMatch(/\/data\/extra: is not allowed/);
    expect(byTx('a4').error).toMatch(/\/more: is not allowed/);
    expect(byTx('a5')).toMatchObject({ status: 'error', error: 'unknown command "does-not-exist"' });
    expect(replies.find((x) => x.response.transaction === 'a5')!.topic).toBe('imaging/cmd-1/response/does-not-exist');
    expect(byTx('a6')).toMatchObject({ status: 'error', error: 'nope, because', data: { why: 'test' } });
    const untagged = replies.filter((x) => x.response.transaction === null).map((x) => x.response.error);
    expect(untagged).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/payload is not JSON/),
        expect.stringMatching(/must be a JSON object/),
        expect.stringMatching(/payload is 102400 bytes, over the 65536-byte limit/),
        null, // the empty payload ran echo with {}
      ]),
    );
    // Only the valid requests reached the handler.
    expect(calls).toEqual([{ n: 3 }, {}]);
    // Each request is in the audit log with its payload hash and outcome.
    await until(() => r.audit.length === 10, 5000, 'audit records');
    expect(r.audit.filter((a) => a.outcome === 'ok').map((a) => a.cmd)).toEqual(['echo', 'echo']);
    expect(r.audit.find((a) => a.transaction === 'a5')!.outcome).toBe('refused: unknown command');
    expect(r.audit.every((a) => /^[0-9a-f]{64}$/.test(a.payloadSha256))).toBe(true);
  });

  it('honours MQTT 5 Response Topic + Correlation Data, and answers group requests on its own response topic', async () => {
    const r = routerOn(broker.url, 'cmd-2', ['ward-7']);
    r.router.register('ping', { type: 'object' }, (_d, ctx) => ({ group: ctx.group, sender: ctx.sender }), { exclusive: false });
    await r.start();
    const { client, replies } = await requester(broker.url, 'imaging/cmd-2/response/+');
    const mine = await requester(broker.url, 'replies/central-1');
    await client.publishAsync('imaging/cmd-2/request/ping', '{}', {
      qos: 1,
      properties: { responseTopic: 'replies/central-1', correlationData: Buffer.from('c-77'), userProperties: { sender: 'central' } },
    });
    await client.publishAsync('imaging/group/ward-7/request/ping', '{"transaction":"g1"}', { qos: 1 });
    await client.publishAsync('imaging/group/ward-8/request/ping', '{"transaction":"not-mine"}', { qos: 1 });
    await until(() => replies.length === 2 && mine.replies.length === 1, 5000, 'responses');
    expect(mine.replies[0]!.correlation).toBe('c-77');
    expect(mine.replies[0]!.response.data).toEqual({ group: null, sender: 'central' });
    expect(replies.find((x) => x.response.transaction === 'g1')!.response.data).toEqual({ group: 'ward-7', sender: null });
    expect(replies.some((x) => x.response.transaction === 'not-mine')).toBe(false);
  });

  it('runs state-changing commands one at a time in arrival order', async () => {
    const r = routerOn(broker.url, 'cmd-3');
    const log: string[] = [];
    r.router.register('slow', { type: 'object', properties: { id: { type: 'string' } } }, async (d) => {
      const id = (d as { id: string }).id;
      log.push(`start ${id}`);
      await new Promise((res) => setImmediate(res));
      log.push(`end ${id}`);
      return id;
    });
    await r.start();
    const { client, replies } = await requester(broker.url, 'imaging/cmd-3/response/+');
    for (const id of ['a', 'b', 'c']) await client.publishAsync('imaging/cmd-3/request/slow', JSON.stringify({ data: { id } }), { qos: 1 });
    await until(() => replies.length === 3, 5000, 'three responses');
    expect(log).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
  });
});

describe('command router on the embedded aedes broker (MQTT 3.1.1)', () => {
  it('answers with the transaction echoed (no correlation data on 3.1.1)', async () => {
    const broker = await startEmbeddedBroker({ port: 0 });
    cleanups.push(() => broker.close());
    const r = routerOn(broker.url, 'aedes-cmd', [], 4);
    r.router.register('ping', { type: 'object' }, () => 'pong', { exclusive: false });
    await r.start();
    const { client, replies } = await requester(broker.url, 'imaging/aedes-cmd/response/+', 4);
    await client.publishAsync('imaging/aedes-cmd/request/ping', '{"transaction":"x-1"}', { qos: 1 });
    await until(() => replies.length === 1, 5000, 'response');
    expect(replies[0]!.response).toEqual({ status: 'ok', deviceId: 'aedes-cmd', transaction: 'x-1', data: 'pong', error: null });
  });
});

describe('remote config store (state-dir overrides)', () => {
  function setup(yaml: string, env: NodeJS.ProcessEnv = {}) {
    const dir = mkdtempSync(path.join(tmpdir(), 'cfgstore-'));
    const file = path.join(dir, 'agent.yaml');
    mkdirSync(path.join(dir, 'state'));
    writeFileSync(file, `stateDir: ${path.join(dir, 'state')}\ninbox: ${path.join(dir, 'inbox')}\n${yaml}`);
    const loaded = loadConfig(file, { stateOverrides: true, env });
    const applied: string[][] = [];
    let failApply = false;
    const store = new ConfigStore({
      running: loaded.config,
      loaded,
      load: (overrides) => loadConfig(file, { overrides, env }),
      apply: (paths) => {
        applied.push(paths);
        if (failApply) return Promise.reject(new Error('cannot apply'));
        return Promise.resolve([]);
      },
      log: testLogger(),
    });
    return { dir, file, loaded, store, applied, failApply: (v: boolean) => (failApply = v) };
  }

  it('applies live settings, marks restart ones, persists atomically, and the next load sees the overrides', async () => {
    const s = setup('ingest:\n  stabilityMs: 500\n');
    const out = await s.store.set({ set: { ingest: { stabilityMs: 900 }, mqtt: { keepaliveSec: 45 }, configId: 'ct-3' } });
    expect(out.applied.sort()).toEqual(['configId', 'ingest.stabilityMs']);
    expect(out.restartRequired).toEqual(['mqtt.keepaliveSec']);
    expect(out.pendingRestart).toEqual(['mqtt.keepaliveSec']);
    expect(s.loaded.config.ingest.stabilityMs).toBe(900); // the running config changed in place
    expect(s.loaded.config.mqtt.keepaliveSec).toBe(30); // not running yet
    const file = path.join(s.dir, 'state', OVERRIDES_FILE);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ ingest: { stabilityMs: 900 }, mqtt: { keepaliveSec: 45 }, configId: 'ct-3' });
    expect(readdirSync(path.join(s.dir, 'state')).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    // What `run` loads on the next start: file < overrides.
    const next = loadConfig(s.file, { stateOverrides: true, env: {} });
    expect(next.config.ingest.stabilityMs).toBe(900);
    expect(next.config.mqtt.keepaliveSec).toBe(45);
    // env wins over the overrides and set-config says so
    const pinned = loadConfig(s.file, { stateOverrides: true, env: { EDGE_AGENT_INGEST__STABILITY_MS: '700' } });
    expect(pinned.config.ingest.stabilityMs).toBe(700);
    expect(pinned.pinned).toContain('ingest.stabilityMs');
    // and CLI flags win over everything
    const flagged = loadConfig(s.file, { stateOverrides: true, env: {}, cli: { deviceId: 'from-cli' } });
    expect(flagged.config.deviceId).toBe('from-cli');
    expect(flagged.pinned).toEqual(['deviceId']);
    // unset removes an override: the file's value applies again
    const back = await s.store.set({ unset: ['ingest.stabilityMs'] });
    expect(back.applied).toEqual(['ingest.stabilityMs']);
    expect(s.loaded.config.ingest.stabilityMs).toBe(500);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ mqtt: { keepaliveSec: 45 }, configId: 'ct-3' });
  });

  it('refuses invalid changes with every problem and changes nothing', async () => {
    const s = setup('');
    const err = await s.store.set({ set: { ingest: { stabilityMs: 'fast', bogus: 1 }, mqtt: { tls: { caFile: '/nonexistent/ca.pem' } } } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    const problems = ((err as CommandError).data as { problems: string[] }).problems;
    expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(/ingest.stabilityMs: must be integer/), expect.stringMatching(/ingest.bogus: unknown setting/)]));
    const err2 = await s.store.set({ set: { mqtt: { tls: { caFile: '/nonexistent/ca.pem' } } } }).catch((e: unknown) => e);
    expect((err2 as Error).message).toMatch(/mqtt.tls.caFile: cannot read \/nonexistent\/ca.pem/);
    await expect(s.store.set({ set: { stateDir: '/tmp/elsewhere' } })).rejects.toThrow(/stateDir cannot be changed remotely/);
    await expect(s.store.set({ set: { mqtt: { password: 'x' } } })).rejects.toThrow(/mqtt.password cannot be changed remotely/);
    expect(existsSync(path.join(s.dir, 'state', OVERRIDES_FILE))).toBe(false);
    expect(s.applied).toEqual([]);
    // a live apply that fails: undone, nothing written
    s.failApply(true);
    await expect(s.store.set({ set: { ingest: { stabilityMs: 1234 } } })).rejects.toThrow(/nothing changed: cannot apply/);
    expect(s.loaded.config.ingest.stabilityMs).toBe(1000);
    expect(existsSync(path.join(s.dir, 'state', OVERRIDES_FILE))).toBe(false);
  });

  it('dry run reports without changing; get-config redacts the password', async () => {
    const s = setup('mqtt:\n  username: agent\n  password: s3cret-pw\n');
    const dry = await s.store.set({ set: { pipeline: { concurrency: 4 } }, dryRun: true });
    expect(dry).toMatchObject({ dryRun: true, applied: [], restartRequired: [] });
    expect(s.loaded.config.pipeline.concurrency).toBe(2);
    const view = s.store.get();
    expect(JSON.stringify(view)).not.toContain('s3cret-pw');
    expect(view.config.mqtt.password).toBe('***');
  });

  it('the device id "group" is reserved by the fleet topics; top-level groups merge into fleet.groups', () => {
    const s = setup('');
    expect(() => loadConfig(s.file, { env: {}, cli: { deviceId: 'group' } })).toThrow(/deviceId: "group" is reserved/);
    const dir = mkdtempSync(path.join(tmpdir(), 'cfggroups-'));
    const file = path.join(dir, 'a.yaml');
    writeFileSync(file, 'groups: [old]\nfleet:\n  groups: [ward-a]\n');
    expect(loadConfig(file, { env: {} }).config.fleet.groups).toEqual(['ward-a', 'old']);
  });

  it('a corrupt overrides file refuses to start with a clear message', () => {
    const s = setup('');
    writeFileSync(path.join(s.dir, 'state', OVERRIDES_FILE), '{"ingest": {"stabilityMs": 5}}');
    expect(() => loadConfig(s.file, { stateOverrides: true, env: {} })).toThrow(/ingest.stabilityMs: must be >= 50 \(from .*config-overrides.json\)/);
    writeFileSync(path.join(s.dir, 'state', OVERRIDES_FILE), '{"ingest": ');
    expect(() => loadConfig(s.file, { stateOverrides: true, env: {} })).toThrow(/is not valid JSON/);
    // validate-config (no stateOverrides) checks the file alone
    expect(loadConfig(s.file, { env: {} }).config.ingest.stabilityMs).toBe(1000);
  });
});
