import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MqttLink, MqttLinkError, type MqttLinkOptions } from '../../src/mqtt/link.js';
import { makeTestPki, type TestPki } from '../helpers/certs.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { MemoryOutbox, Subscriber, testLogger, until } from './util.js';

describe.skipIf(skipWithoutMosquitto)('credentials and TLS against mosquitto', () => {
  const cleanups: Array<() => Promise<void>> = [];
  let pki: TestPki;
  beforeAll(() => {
    pki = makeTestPki();
  });
  afterAll(() => pki.dispose());
  afterEach(async () => {
    for (const c of cleanups.reverse()) await c();
    cleanups.length = 0;
  });

  function link(opts: Omit<MqttLinkOptions, 'logger' | 'deviceId'>): MqttLink {
    const l = new MqttLink({ deviceId: 'ct-01', logger: testLogger(), reconnectPeriodMs: 200, connectTimeoutMs: 3000, ...opts });
    cleanups.push(() => l.close(500));
    l.start();
    return l;
  }

  /** A result delivered through the outbox reaches a subscriber that has the same rights. */
  async function deliversResult(l: MqttLink, sub: Subscriber): Promise<void> {
    const outbox = new MemoryOutbox();
    outbox.add(l.topics.result, () => '{"resultId":"r1"}');
    l.attachOutbox(outbox);
    await until(() => sub.on(l.topics.result).length === 1, 5000, 'result at subscriber');
    await until(() => outbox.rows.length === 0, 5000, 'ack');
  }

  describe('username/password', () => {
    let mosq: Mosquitto;
    beforeAll(async () => {
      // A private (0600, root-owned when run as root) password file: see `user root` in the helper.
      const pw = join(pki.dir, 'passwd');
      execFileSync('mosquitto_passwd', ['-c', '-b', pw, 'agent', 'c0rrect-horse']);
      execFileSync('mosquitto_passwd', ['-b', pw, 'watcher', 'w4tch']);
      mosq = await startMosquitto({ allowAnonymous: false, conf: `password_file ${pw}` });
    });
    afterAll(async () => mosq.dispose());

    it('connects with the right password and delivers', async () => {
      const sub = await Subscriber.connect(mosq.url, '#', { username: 'watcher', password: 'w4tch' });
      cleanups.push(() => sub.close());
      const l = link({ url: mosq.url, username: 'agent', password: 'c0rrect-horse' });
      await l.waitForConnection(5000);
      await deliversResult(l, sub);
    });

    it('a wrong password is refused with a clear error', async () => {
      const l = link({ url: mosq.url, username: 'agent', password: 'wrong' });
      const events: MqttLinkError[] = [];
      l.on('linkError', (e) => events.push(e));
      const err = await l.waitForConnection(5000).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(MqttLinkError);
      expect((err as MqttLinkError).kind).toBe('refused');
      expect((err as MqttLinkError).message).toMatch(/refused the connection: (Bad User Name or Password|Not authorized).*check the MQTT username, password/);
      expect(l.connected).toBe(false);
      expect(l.status().lastError).toMatch(/refused/);
      expect(events[0]?.kind).toBe('refused');
    });

    it('no credentials at all is refused too', async () => {
      const l = link({ url: mosq.url });
      await expect(l.waitForConnection(5000)).rejects.toMatchObject({ kind: 'refused' });
    });
  });

  describe('TLS', () => {
    let mosq: Mosquitto;
    beforeAll(async () => {
      mosq = await startMosquitto({ conf: `cafile ${pki.caCertPath}\ncertfile ${pki.serverCertPath}\nkeyfile ${pki.serverKeyPath}` });
    });
    afterAll(async () => mosq.dispose());

    it('connects over mqtts:// when the CA is trusted, and delivers', async () => {
      const url = `mqtts://127.0.0.1:${mosq.port}`;
      const sub = await Subscriber.connect(url, '#', { ca: pki.ca });
      cleanups.push(() => sub.close());
      const l = link({ url, tls: { ca: pki.ca } });
      await l.waitForConnection(5000);
      await deliversResult(l, sub);
    });

    it('refuses a broker certificate from an unknown CA with a TLS error', async () => {
      const l = link({ url: `mqtts://127.0.0.1:${mosq.port}`, tls: { ca: pki.otherCa } });
      const err = await l.waitForConnection(5000).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(MqttLinkError);
      expect((err as MqttLinkError).kind).toBe('tls');
      expect((err as MqttLinkError).message).toMatch(/TLS with MQTT broker .* failed/);
    });

    it('checks the host name: localhost is in the SAN too', async () => {
      const l = link({ url: `mqtts://localhost:${mosq.port}`, tls: { ca: Buffer.from(pki.ca) } });
      await l.waitForConnection(5000);
    });
  });

  describe('mutual TLS', () => {
    let mosq: Mosquitto;
    beforeAll(async () => {
      mosq = await startMosquitto({
        allowAnonymous: false,
        conf: [`cafile ${pki.caCertPath}`, `certfile ${pki.serverCertPath}`, `keyfile ${pki.serverKeyPath}`, 'require_certificate true', 'use_identity_as_username true'].join('\n'),
      });
    });
    afterAll(async () => mosq.dispose());

    it('connects with the client certificate and delivers', async () => {
      const url = `mqtts://127.0.0.1:${mosq.port}`;
      const sub = await Subscriber.connect(url, '#', { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey });
      cleanups.push(() => sub.close());
      const l = link({ url, tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey } });
      await l.waitForConnection(5000);
      await deliversResult(l, sub);
    });

    it('without a client certificate it never connects, and says why', async () => {
      const l = link({ url: `mqtts://127.0.0.1:${mosq.port}`, tls: { ca: pki.ca } });
      const err = await l.waitForConnection(3000).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(MqttLinkError);
      expect((err as MqttLinkError).kind).toBe('tls');
      expect((err as MqttLinkError).message).toMatch(/certificate required/i);
      expect(l.connected).toBe(false);
      expect(l.status().lastError).not.toBeNull();
    });
  });
});
