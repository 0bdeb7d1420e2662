/**
 * The shipped broker lockdown (device-configs/mosquitto/: mosquitto.conf + gen-acl.sh) against real
 * mosquitto 2.0 and real MQTT clients: strangers are refused at CONNECT, a device's identity cannot
 * command another device or spoof its results, an agent reads only its own and its groups' requests
 * and desired state, and central can do all of it.
 *
 * "Never received" is proven without waiting for a timeout: after the refused publish has been
 * acknowledged by the broker, an allowed publish (the barrier) follows; mosquitto routes messages in
 * the order it processes them and delivers QoS 1 messages to a client in order, so once the barrier
 * has arrived the refused message would have arrived before it.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentProcess, CLI, agentDirs } from '../helpers/agent.js';
import { skipWithoutMosquitto } from '../helpers/mosquitto.js';
import { SHIPPED, startLockedBroker, Client, type LockedBroker } from './broker.js';

const NOT_AUTHORIZED = 135;
const CT = path.resolve('tests/fixtures/dicom/pydicom_CT_small.dcm');

describe.skipIf(skipWithoutMosquitto)('broker lockdown: device-configs/mosquitto with real mosquitto', () => {
  let b: LockedBroker;
  const clients: Client[] = [];
  /** Connects with a device's (or central's) password over TLS. */
  const as = async (user: string, password = `pw-${user}`): Promise<Client> => {
    const c = await Client.connect(b.passwordUrl, { username: user, password, ca: b.pki.ca, clientId: `${user}-${clients.length}` });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    b = await startLockedBroker({ 'ct-room-2': ['ct-floor-1'], 'ct-room-3': ['ct-floor-1'], 'us-cart-7': ['ultrasound'] });
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await b?.dispose();
  });

  describe('strangers are refused at CONNECT', () => {
    it('no credentials, a wrong password, an unknown user: not authorized, no session', async () => {
      // MQTT 5 CONNACK 135 "not authorized" (mosquitto 2.0 answers every refused login with it).
      const refusal = (opts: Parameters<typeof Client.connect>[1]) =>
        Client.connect(b.passwordUrl, { ca: b.pki.ca, ...opts }).then(
          async (c) => {
            await c.close();
            return 0;
          },
          (err: { code?: number }) => err.code,
        );
      expect(await refusal({})).toBe(135);
      expect(await refusal({ username: 'ct-room-2', password: 'guess' })).toBe(135);
      expect(await refusal({ username: 'intruder', password: 'pw-intruder' })).toBe(135);
      // The right password for central over TLS does work (the refusals above are about the credentials).
      await as('central');
    });

    it('plain TCP to the TLS listener gets no MQTT session', async () => {
      await expect(Client.connect(b.passwordUrl.replace('mqtts:', 'mqtt:'), { username: 'central', password: 'pw-central' })).rejects.toThrow();
    });

    it('mutual TLS: no client certificate, or one from another CA, is refused', async () => {
      await expect(Client.connect(b.mtlsUrl, { ca: b.pki.ca })).rejects.toThrow();
      // A well-formed certificate claiming a real device's CN, signed by a CA the broker does not trust.
      const forged = b.clientCert('ct-room-2', 'other');
      await expect(Client.connect(b.mtlsUrl, { ca: b.pki.ca, cert: forged.cert, key: forged.key })).rejects.toThrow();
      // The same CN from the right CA is let in (so the refusal above is about the issuer).
      const genuine = b.clientCert('ct-room-2');
      clients.push(await Client.connect(b.mtlsUrl, { ca: b.pki.ca, cert: genuine.cert, key: genuine.key, clientId: 'mtls-genuine' }));
    });
  });

  describe('a foreign identity cannot command an agent', () => {
    it("another device's credentials: its requests and desired state never reach the agent; central's do", async () => {
      const agent = await as('ct-room-2');
      expect(await agent.subscribe('imaging/ct-room-2/request/+', 'imaging/ct-room-2/desired/model', 'imaging/group/ct-floor-1/request/+')).toEqual([1, 1, 1]);
      const foreign = await as('us-cart-7');
      expect(await foreign.publish('imaging/ct-room-2/request/set-config', 'forged-request')).toBe(NOT_AUTHORIZED);
      expect(await foreign.publish('imaging/ct-room-2/desired/model', 'forged-desired', true)).toBe(NOT_AUTHORIZED);
      expect(await foreign.publish('imaging/group/ct-floor-1/request/restart', 'forged-group-request')).toBe(NOT_AUTHORIZED);
      // A device cannot command itself either (only central sends requests).
      expect(await agent.publish('imaging/ct-room-2/request/pause', 'self-request')).toBe(NOT_AUTHORIZED);

      const central = await as('central');
      expect(await central.publish('imaging/ct-room-2/request/set-config', 'central-request')).toBe(0);
      expect(await central.publish('imaging/group/ct-floor-1/request/restart', 'central-group-request')).toBe(0);
      expect(await central.publish('imaging/ct-room-2/desired/model', 'central-desired')).toBe(0);
      await agent.waitFor('central-desired');
      expect(agent.received.map((m) => m.payload)).toEqual(['central-request', 'central-group-request', 'central-desired']);
    });

    it('no retained desired state is left behind by a refused publish', async () => {
      const foreign = await as('ct-room-3');
      expect(await foreign.publish('imaging/us-cart-7/desired/model', 'forged-retained', true)).toBe(NOT_AUTHORIZED);
      // A new subscriber gets retained messages at SUBACK: there is none.
      const agent = await as('us-cart-7');
      await agent.subscribe('imaging/us-cart-7/desired/model');
      const central = await as('central');
      expect(await central.publish('imaging/us-cart-7/desired/model', 'barrier')).toBe(0);
      await agent.waitFor('barrier');
      expect(agent.received.map((m) => m.payload)).toEqual(['barrier']);
    });
  });

  describe("an agent cannot publish under another device's topics (no spoofed results)", () => {
    it('results, errors, state, health, responses and model state of another device are dropped; its own go through', async () => {
      const central = await as('central');
      await central.subscribe('imaging/#');
      const spoofer = await as('us-cart-7');
      for (const leaf of ['result', 'error', 'state', 'health', 'response/ping', 'model/state']) {
        expect(await spoofer.publish(`imaging/ct-room-2/${leaf}`, `spoofed-${leaf}`), leaf).toBe(NOT_AUTHORIZED);
      }
      // Outside the fleet's topics entirely, and wildcard-adjacent places, too.
      expect(await spoofer.publish('imaging/group/ct-floor-1/result', 'spoofed-group')).toBe(NOT_AUTHORIZED);
      expect(await spoofer.publish('elsewhere/x', 'spoofed-elsewhere')).toBe(NOT_AUTHORIZED);
      const real = await as('ct-room-2');
      for (const leaf of ['result', 'error', 'state', 'health', 'response/ping', 'model/state']) {
        expect(await real.publish(`imaging/ct-room-2/${leaf}`, `real-${leaf}`), leaf).toBe(0);
      }
      expect(await spoofer.publish('imaging/us-cart-7/result', 'own-result')).toBe(0);
      await central.waitFor('own-result');
      const seen = central.received.map((m) => m.payload);
      expect(seen.filter((p) => p.startsWith('spoofed'))).toEqual([]);
      expect(seen).toEqual(expect.arrayContaining(['real-result', 'real-error', 'real-state', 'real-health', 'real-response/ping', 'real-model/state', 'own-result']));
    });

    it('an MQTT 3.1.1 client gets a plain PUBACK (no reason codes in 3.1.1) but its spoofed result is dropped all the same', async () => {
      const central = await as('central');
      await central.subscribe('imaging/+/result');
      const v3 = await Client.connect(b.passwordUrl, { protocolVersion: 4, username: 'us-cart-7', password: 'pw-us-cart-7', ca: b.pki.ca, clientId: 'v3-spoofer' });
      clients.push(v3);
      expect(await v3.publish('imaging/ct-room-2/result', 'v3-spoofed')).toBe(0);
      expect(await v3.publish('imaging/us-cart-7/result', 'v3-own')).toBe(0);
      await central.waitFor('v3-own');
      expect(central.received.map((m) => m.payload)).toEqual(['v3-own']);
    });

    it('a client certificate (CN = device id) gets the same confinement on the mutual-TLS listener', async () => {
      const central = await as('central');
      await central.subscribe('imaging/+/result');
      const id = b.clientCert('ct-room-3');
      const dev = await Client.connect(b.mtlsUrl, { ca: b.pki.ca, cert: id.cert, key: id.key, clientId: 'mtls-ct-room-3' });
      clients.push(dev);
      expect(await dev.publish('imaging/ct-room-2/result', 'cert-spoofed')).toBe(NOT_AUTHORIZED);
      expect(await dev.publish('imaging/ct-room-3/request/ping', 'cert-self-request')).toBe(NOT_AUTHORIZED);
      expect(await dev.publish('imaging/ct-room-3/result', 'cert-own')).toBe(0);
      await central.waitFor('cert-own');
      expect(central.received.map((m) => m.payload)).toEqual(['cert-own']);
    });
  });

  describe("an agent cannot read another device's traffic", () => {
    it("another device's or another group's requests and desired state never reach it, even through '#'", async () => {
      const nosy = await as('us-cart-7');
      // Subscribing may be granted (mosquitto checks read access per delivered message) or refused; either way nothing arrives.
      await nosy.subscribe('imaging/ct-room-2/request/+', 'imaging/ct-room-2/desired/model', 'imaging/group/ct-floor-1/request/+', 'imaging/#', '#');
      const central = await as('central');
      const results = await as('ct-room-2');
      expect(await central.publish('imaging/ct-room-2/request/get-config', 'secret-request')).toBe(0);
      expect(await central.publish('imaging/ct-room-2/desired/model', 'secret-desired')).toBe(0);
      expect(await central.publish('imaging/group/ct-floor-1/request/ping', 'secret-group')).toBe(0);
      expect(await results.publish('imaging/ct-room-2/result', 'secret-result')).toBe(0);
      // Barriers on topics us-cart-7 may read: its own request and its group's.
      expect(await central.publish('imaging/group/ultrasound/request/ping', 'own-group')).toBe(0);
      expect(await central.publish('imaging/us-cart-7/request/ping', 'own-request')).toBe(0);
      await nosy.waitFor('own-request');
      expect(nosy.received.filter((m) => m.payload.startsWith('secret'))).toEqual([]);
      expect(nosy.received.map((m) => m.payload)).toEqual(expect.arrayContaining(['own-group', 'own-request']));
    });

    it('central reads everything', async () => {
      const central = await as('central');
      await central.subscribe('imaging/#');
      const a = await as('ct-room-3');
      expect(await a.publish('imaging/ct-room-3/health', 'h3')).toBe(0);
      expect(await a.publish('imaging/ct-room-3/response/ping', 'r3')).toBe(0);
      expect(await central.publish('imaging/group/ultrasound/desired/model', 'g-desired', true)).toBe(0);
      await central.waitFor('g-desired');
      expect(central.received.map((m) => m.payload)).toEqual(expect.arrayContaining(['h3', 'r3', 'g-desired']));
      expect(await central.publish('imaging/group/ultrasound/desired/model', '', true)).toBe(0); // clear it again
    });
  });

  it('gen-acl.sh: the shipped acl.example is what it generates from devices.example, and bad device ids are refused', () => {
    const out = execFileSync(path.join(SHIPPED, 'gen-acl.sh'), [path.join(SHIPPED, 'devices.example')], { cwd: SHIPPED, encoding: 'utf8' });
    expect(out).toBe(execFileSync('cat', [path.join(SHIPPED, 'acl.example')], { encoding: 'utf8' }));
    const bad = path.join(b.etc, 'bad-devices');
    execFileSync('sh', ['-c', `printf 'ok-1 g\\ngroup x\\nct/2 y\\ncentral\\nok-1\\n' > ${bad}`]);
    let stderr = '';
    try {
      execFileSync(path.join(SHIPPED, 'gen-acl.sh'), [bad], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (err) {
      stderr = String((err as { stderr: Buffer }).stderr);
    }
    expect(stderr).toMatch(/line 2: group cannot be a device id/);
    expect(stderr).toMatch(/line 3: ct\/2 cannot be a device id/);
    expect(stderr).toMatch(/line 4: central cannot be a device id/);
    expect(stderr).toMatch(/line 5: ok-1 listed twice/);
  });

  describe('the real agent behind the locked-down broker', () => {
    let agent: AgentProcess | undefined;
    let stateDir = '';
    afterAll(async () => {
      await agent?.kill();
    });

    it('connects with its own identity (password from a credentials file, TLS), publishes its result; central receives it', { timeout: 240_000 }, async () => {
      const creds = path.join(b.etc, 'creds-ct-room-2');
      execFileSync('install', ['-d', '-m', '700', creds]);
      execFileSync('sh', ['-c', `printf 'pw-ct-room-2\\n' > ${creds}/mqtt-password && chmod 600 ${creds}/mqtt-password`]);
      const central = await as('central');
      await central.subscribe('imaging/#');
      const dirs = agentDirs({
        deviceId: 'ct-room-2',
        fleet: { groups: ['ct-floor-1'] },
        model: { runtime: 'onnx' }, // no start-up runtime benchmark: the suite shares 2 cores
        logging: { components: { mqtt: 'debug' } },
        mqtt: { url: b.passwordUrl, username: 'ct-room-2', passwordFile: '${CREDENTIALS_DIRECTORY}/mqtt-password', tls: { caFile: path.join(b.etc, 'ca.crt') } },
      });
      stateDir = dirs.stateDir;
      agent = await AgentProcess.start(dirs, [], { CREDENTIALS_DIRECTORY: creds });
      copyFileSync(CT, path.join(dirs.inbox, 'ct.dcm'));
      // Liveness bounds only (generous: the suite shares 2 cores with other agents starting up).
      const deadline = Date.now() + 120_000;
      while (central.on('imaging/ct-room-2/result').length === 0) {
        if (Date.now() > deadline) throw new Error(`no result; agent log:\n${agent.tail()}\nbroker:\n${b.mosq.logTail()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const result = JSON.parse(central.on('imaging/ct-room-2/result')[0]!) as { resultId: string; deviceId: string };
      expect(result.deviceId).toBe('ct-room-2');
      expect(result.resultId).toMatch(/^[0-9a-f]{32}$/);
      expect(central.on('imaging/ct-room-2/state').some((p) => p.includes('"online"'))).toBe(true);
      // Every subscription the agent makes (its requests, desired state, its group's) is within what the ACL grants it.
      // The link logs 'subscribed' per SUBSCRIBE it sends (one batch at connect, one per filter added later).
      const subscribedLogs = () => agent!.logs.filter((l) => l.msg === 'subscribed') as unknown as { filters: string[]; refused: string[] }[];
      const wanted = ['imaging/ct-room-2/request/+', 'imaging/group/ct-floor-1/request/+', 'imaging/ct-room-2/desired/model', 'imaging/group/ct-floor-1/desired/model'];
      const subDeadline = Date.now() + 60_000;
      while (!wanted.every((f) => subscribedLogs().some((l) => l.filters.includes(f)))) {
        if (Date.now() > subDeadline) throw new Error(`subscriptions: ${JSON.stringify(subscribedLogs())}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(subscribedLogs().flatMap((l) => l.refused)).toEqual([]);
      expect(agent.logs.filter((l) => /subscri.*refused|refused.*subscri/i.test(l.msg))).toEqual([]);
    });

    it("central's command is answered and audited; another device's identity cannot command it", { timeout: 120_000 }, async () => {
      const central = await as('central');
      await central.subscribe('imaging/ct-room-2/response/+');
      const foreign = await as('ct-room-3');
      expect(await foreign.publish('imaging/ct-room-2/request/ping', JSON.stringify({ transaction: 'forged-1' }))).toBe(NOT_AUTHORIZED);
      expect(await foreign.publish('imaging/group/ct-floor-1/request/ping', JSON.stringify({ transaction: 'forged-2' }))).toBe(NOT_AUTHORIZED);
      expect(await central.publish('imaging/ct-room-2/request/ping', JSON.stringify({ transaction: 'central-1' }))).toBe(0);
      expect(await central.publish('imaging/group/ct-floor-1/request/ping', JSON.stringify({ transaction: 'central-2' }))).toBe(0);
      const deadline = Date.now() + 60_000;
      while (central.on('imaging/ct-room-2/response/ping').length < 2) {
        if (Date.now() > deadline) throw new Error(`no responses; agent log:\n${agent!.tail()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const answered = central.on('imaging/ct-room-2/response/ping').map((p) => (JSON.parse(p) as { transaction: string; status: string }));
      expect(answered.map((a) => a.transaction).sort()).toEqual(['central-1', 'central-2']);
      expect(answered.every((a) => a.status === 'ok')).toBe(true);
      // The agent's audit log has exactly central's two commands: the forged ones never reached it.
      const exported = execFileSync(process.execPath, [CLI, 'audit', 'export', '--since', '1h', '--kind', 'command', '--state-dir', stateDir], { encoding: 'utf8' });
      const commands = exported.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { cmd: string; transaction: string; outcome: string });
      expect(commands.map((c) => c.transaction).sort()).toEqual(['central-1', 'central-2']);
    });
  });
});
