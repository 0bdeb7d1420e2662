import net from 'node:net';
import { Aedes } from 'aedes';
import { afterEach, describe, expect, it } from 'vitest';
import { startEmbeddedBroker } from '../../src/mqtt/broker.js';
import { MqttLink } from '../../src/mqtt/link.js';
import { canConnect } from '../helpers/ports.js';
import { MemoryOutbox, Subscriber, TcpProxy, testLogger, until } from './util.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups.length = 0;
});

describe('embedded aedes broker', () => {
  it('starts on an ephemeral port, the link connects, results arrive, close frees the port', async () => {
    const broker = await startEmbeddedBroker({ port: 0 });
    expect(broker.port).toBeGreaterThan(0);
    expect(broker.url).toBe(`mqtt://127.0.0.1:${broker.port}`);
    expect(await canConnect(broker.port)).toBe(true);

    const sub = await Subscriber.connect(broker.url, 'imaging/#', { protocolVersion: 4 });
    cleanups.push(() => sub.close());
    const outbox = new MemoryOutbox();
    const link = new MqttLink({ url: broker.url, deviceId: 'edge-1', protocolVersion: broker.protocolVersion, logger: testLogger(), reconnectPeriodMs: 100 });
    cleanups.push(() => link.close());
    link.attachOutbox(outbox);
    link.start();
    await link.waitForConnection(5000);
    await link.online();
    for (let i = 0; i < 50; i++) outbox.add(link.topics.result, (seq) => JSON.stringify({ seq }));
    link.kick();
    await until(() => outbox.rows.length === 0, 5000, 'outbox drained');
    await until(() => sub.on('imaging/edge-1/result').length === 50, 5000, 'results at the subscriber');
    expect(sub.on('imaging/edge-1/result').map((m) => (JSON.parse(m.payload) as { seq: number }).seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(sub.on('imaging/edge-1/state').map((m) => m.payload)).toContain('{"state":"online"}');

    const disconnected = new Promise<string>((resolve) => link.once('disconnected', (e) => resolve(e.reason)));
    await broker.close();
    await broker.close(); // idempotent
    await disconnected;
    expect(await canConnect(broker.port)).toBe(false);
    // The port is free again: something else can listen on it.
    const probe = net.createServer();
    await new Promise<void>((resolve, reject) => {
      probe.once('error', reject);
      probe.listen(broker.port, '127.0.0.1', () => resolve());
    });
    await new Promise<void>((resolve) => probe.close(() => resolve()));
  });

  it('reports a clear error when the port is taken', async () => {
    const a = await startEmbeddedBroker();
    cleanups.push(() => a.close());
    await expect(startEmbeddedBroker({ port: a.port })).rejects.toThrow(/already in use/);
  });
});

describe('resend after reconnect (aedes with held PUBACKs)', () => {
  it('sends each in-flight row exactly once more after a reconnect: MQTT.js does not resend it as well', async () => {
    // A broker that holds PUBACKs until the test releases them, so rows are certainly in flight.
    const broker = await Aedes.createBroker();
    const seen = new Map<number, number>();
    let hold = true;
    const held: Array<() => void> = [];
    broker.authorizePublish = (_client, packet, cb) => {
      if (packet.topic.endsWith('/result')) {
        const seq = (JSON.parse(packet.payload.toString()) as { seq: number }).seq;
        seen.set(seq, (seen.get(seq) ?? 0) + 1);
        if (hold) {
          held.push(() => cb(null));
          return;
        }
      }
      cb(null);
    };
    const server = net.createServer((s) => broker.handle(s));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const addr = server.address() as net.AddressInfo;
    const proxy = await TcpProxy.start(addr.port);
    cleanups.push(async () => {
      await proxy.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
    });

    const outbox = new MemoryOutbox();
    for (let i = 0; i < 20; i++) outbox.add('imaging/x/result', (seq) => JSON.stringify({ seq }));
    const link = new MqttLink({ url: proxy.url, deviceId: 'x', protocolVersion: 4, logger: testLogger(), reconnectPeriodMs: 100 });
    cleanups.push(() => link.close(500));
    link.attachOutbox(outbox, { window: 8 });
    link.start();
    await until(() => seen.size === 8, 5000, '8 rows in flight');
    expect(link.status().outbox.inflight).toBe(8);
    expect(await link.flush(50)).toBe(8);

    proxy.drop();
    held.length = 0; // those PUBACKs died with the connection
    hold = false;
    // flush() waits for every row handed out so far (the first 8, plus what fits after reconnect).
    expect(await link.flush(5000)).toBe(0);
    await until(() => outbox.rows.length === 0, 5000, 'drain after reconnect');
    await new Promise((r) => setTimeout(r, 200)); // anything MQTT.js might still resend would show up now
    for (let seq = 1; seq <= 8; seq++) expect(seen.get(seq), `row ${seq}`).toBe(2);
    for (let seq = 9; seq <= 20; seq++) expect(seen.get(seq), `row ${seq}`).toBe(1);
    expect(outbox.acks).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });
});

describe('close() with rows in flight', () => {
  it('is bounded by its timeout when the broker stops answering, and leaves the unacknowledged rows in the outbox', async () => {
    // aedes handles a client's packets one after another: holding the first result holds everything
    // after it too (the offline state, the DISCONNECT), like a broker that hangs.
    const broker = await Aedes.createBroker();
    broker.authorizePublish = (_client, packet, cb) => {
      if (packet.topic.endsWith('/result')) return; // never acknowledged
      cb(null);
    };
    const sockets = new Set<net.Socket>();
    const server = net.createServer((s) => {
      sockets.add(s);
      broker.handle(s);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as net.AddressInfo).port;
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
    });

    const outbox = new MemoryOutbox();
    for (let i = 0; i < 5; i++) outbox.add('imaging/y/result', (seq) => JSON.stringify({ seq }));
    const link = new MqttLink({ url: `mqtt://127.0.0.1:${port}`, deviceId: 'y', protocolVersion: 4, logger: testLogger() });
    link.attachOutbox(outbox, { window: 4 });
    link.start();
    await link.waitForConnection(5000);
    await until(() => link.status().outbox.inflight === 4, 5000, 'rows in flight');
    expect(await link.flush(100)).toBe(4);
    const t0 = Date.now();
    await link.close(300);
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(link.connected).toBe(false);
    expect(outbox.rows).toHaveLength(5);
    expect(outbox.acks).toEqual([]);
  });
});
