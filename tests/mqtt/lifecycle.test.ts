import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MqttLink, type RejectedEvent } from '../../src/mqtt/link.js';
import { skipWithoutMosquitto, startMosquitto } from '../helpers/mosquitto.js';
import { freePort } from '../helpers/ports.js';
import { MemoryOutbox, Subscriber, testLogger, until } from './util.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups.length = 0;
});

describe('link lifecycle without a broker', () => {
  it('waitForConnection times out with the last network error; close() returns promptly while retrying', async () => {
    const port = await freePort();
    const link = new MqttLink({ url: `mqtt://127.0.0.1:${port}`, deviceId: 'd', logger: testLogger(), reconnectPeriodMs: 100 });
    link.start();
    await expect(link.waitForConnection(500)).rejects.toThrow(/no connection to MQTT broker .* within 500 ms: .*ECONNREFUSED/);
    expect(link.status()).toMatchObject({ connected: false, connects: 0 });
    const t0 = Date.now();
    await link.close();
    expect(Date.now() - t0).toBeLessThan(2000);
    await link.close(); // idempotent
  });
});

describe.skipIf(skipWithoutMosquitto)('link lifecycle on mosquitto', () => {
  it('online() called while the broker is down takes effect when it comes up', async () => {
    const port = await freePort();
    const link = new MqttLink({ url: `mqtt://127.0.0.1:${port}`, deviceId: 'late', logger: testLogger(), reconnectPeriodMs: 100 });
    cleanups.push(() => link.close());
    link.start();
    await link.online(); // resolves at once: nothing to publish yet
    const mosq = await startMosquitto({ port });
    cleanups.push(() => mosq.dispose());
    await link.waitForConnection(5000);
    const sub = await Subscriber.connect(mosq.url, 'imaging/late/state');
    cleanups.push(() => sub.close());
    await until(() => sub.messages.length > 0, 5000, 'retained online');
    expect(sub.messages[0]).toMatchObject({ payload: '{"state":"online"}', retain: true });
  });

  it("clamps the window to the broker's Receive Maximum", async () => {
    const mosq = await startMosquitto({ conf: 'max_inflight_messages 5' });
    cleanups.push(() => mosq.dispose());
    const link = new MqttLink({ url: mosq.url, deviceId: 'rm', logger: testLogger() });
    cleanups.push(() => link.close());
    const outbox = new MemoryOutbox();
    link.attachOutbox(outbox, { window: 32 });
    const connected = new Promise<number>((resolve) => link.once('connected', (e) => resolve(e.window)));
    link.start();
    expect(await connected).toBe(5);
    expect(link.status().outbox.window).toBe(5);
  });

  it('a row the broker refuses (ACL) is reported and kept; the rows after it still flow', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'acl-'));
    cleanups.push(() => Promise.resolve(rmSync(dir, { recursive: true, force: true })));
    const acl = join(dir, 'acl');
    writeFileSync(acl, 'topic readwrite imaging/acl/#\ntopic read #\n');
    const mosq = await startMosquitto({ conf: `acl_file ${acl}` });
    cleanups.push(() => mosq.dispose());
    const sub = await Subscriber.connect(mosq.url, '#');
    cleanups.push(() => sub.close());
    const link = new MqttLink({ url: mosq.url, deviceId: 'acl', logger: testLogger(), reconnectPeriodMs: 1000 });
    cleanups.push(() => link.close());
    const rejected: RejectedEvent[] = [];
    link.on('rejected', (e) => rejected.push(e));
    const outbox = new MemoryOutbox();
    outbox.add('imaging/acl/result', () => '1');
    outbox.add('forbidden/acl/result', () => '2');
    outbox.add('imaging/acl/result', () => '3');
    link.attachOutbox(outbox, { window: 4 });
    link.start();
    await until(() => outbox.acks.length === 2 && rejected.length > 0, 5000, 'acks and a rejection');
    expect(outbox.acks).toEqual([1, 3]);
    expect(outbox.rows.map((r) => r.seq)).toEqual([2]);
    expect(rejected[0]).toMatchObject({ seq: 2, topic: 'forbidden/acl/result' });
    expect(rejected[0]!.error.message).toMatch(/Not authorized/);
    expect(sub.messages.map((m) => m.payload)).toEqual(['1', '3']);
    expect(link.connected).toBe(true);
  });
});
