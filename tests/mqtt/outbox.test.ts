import { afterEach, describe, expect, it } from 'vitest';
import { MqttLink } from '../../src/mqtt/link.js';
import { skipWithoutMosquitto, startMosquitto } from '../helpers/mosquitto.js';
import { freePort } from '../helpers/ports.js';
import { MemoryOutbox, Subscriber, TcpProxy, testLogger, until, type Received } from './util.js';

const RESULT = 'imaging/ct-01/result';

function payloadFor(seq: number): string {
  return JSON.stringify({ resultId: `r-${seq}`, seq, label: seq % 2 === 0 ? 'normal' : 'abnormal', scores: { normal: 0.5 } });
}

function seqOf(m: Received): number {
  return (JSON.parse(m.payload) as { seq: number }).seq;
}

/** Every row at least once, first arrivals in seq order, duplicates byte-identical. */
function expectDelivered(received: Received[], n: number): { duplicates: number } {
  const first = new Map<number, string>();
  const order: number[] = [];
  let duplicates = 0;
  for (const m of received) {
    const seq = seqOf(m);
    const seen = first.get(seq);
    if (seen === undefined) {
      first.set(seq, m.payload);
      order.push(seq);
    } else {
      duplicates++;
      expect(m.payload).toBe(seen);
    }
  }
  expect(order).toEqual(Array.from({ length: n }, (_, i) => i + 1));
  for (const [seq, payload] of first) expect(payload).toBe(payloadFor(seq));
  return { duplicates };
}

describe.skipIf(skipWithoutMosquitto)('outbox delivery through mosquitto', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.reverse()) await c();
    cleanups.length = 0;
  });

  it('500 rows added while the broker is down all arrive, in order, once it starts; every row acked', async () => {
    // The subscriber's persistent session is made first, so it is subscribed the moment the broker
    // comes back (the broker restores it from its persistence file) and misses nothing.
    const port = await freePort();
    const mosq = await startMosquitto({ port, persistence: true, conf: 'max_queued_messages 2000' });
    cleanups.push(() => mosq.dispose());
    const subOpts = { clientId: 'watcher', clean: false, properties: { sessionExpiryInterval: 3600 } };
    const first = await Subscriber.connect(mosq.url, RESULT, subOpts);
    await first.close();
    await mosq.stop();

    const outbox = new MemoryOutbox();
    const link = new MqttLink({ url: `mqtt://127.0.0.1:${port}`, deviceId: 'ct-01', logger: testLogger(), reconnectPeriodMs: 100 });
    cleanups.push(() => link.close());
    const linkErrors: string[] = [];
    link.on('linkError', (e) => linkErrors.push(e.kind));
    link.attachOutbox(outbox, { window: 32 });
    link.start();
    for (let i = 0; i < 500; i++) {
      outbox.add(RESULT, payloadFor);
      if (i % 50 === 0) link.kick();
      if (i % 100 === 0) await new Promise((r) => setTimeout(r, 50));
    }
    link.kick();
    await new Promise((r) => setTimeout(r, 300));
    expect(link.connected).toBe(false);
    expect(outbox.acks).toEqual([]);
    expect(linkErrors).toContain('network');
    expect(await link.flush(0)).toBe(0); // nothing handed out while disconnected

    await mosq.start();
    await until(() => outbox.rows.length === 0, 20_000, 'outbox to drain');
    expect(outbox.acks).toEqual(Array.from({ length: 500 }, (_, i) => i + 1));

    const sub = await Subscriber.connect(mosq.url, RESULT, subOpts);
    cleanups.push(() => sub.close());
    await until(() => sub.messages.length >= 500, 20_000, '500 results at the subscriber');
    const { duplicates } = expectDelivered(sub.messages, 500);
    expect(duplicates).toBe(0);
  });

  it('broker restarted several times mid-stream (no persistence): every row arrives, in order of first arrival, each acked', async () => {
    const mosq = await startMosquitto();
    cleanups.push(() => mosq.dispose());
    // The link reaches the broker through a gate, so the test can let the subscriber resubscribe after
    // each restart before the link is back (with persistence off the broker forgets subscriptions).
    const proxy = await TcpProxy.start(mosq.port);
    cleanups.push(() => proxy.close());
    const sub = await Subscriber.connect(mosq.url, RESULT);
    cleanups.push(() => sub.close());

    const outbox = new MemoryOutbox();
    const link = new MqttLink({ url: proxy.url, deviceId: 'ct-01', logger: testLogger(), reconnectPeriodMs: 100 });
    cleanups.push(() => link.close());
    const disconnects: string[] = [];
    link.on('disconnected', (e) => disconnects.push(e.reason));
    link.attachOutbox(outbox, { window: 16 });
    link.start();
    await link.waitForConnection(5000);

    const total = 1200;
    let added = 0;
    const producer = setInterval(() => {
      for (let i = 0; i < 20 && added < total; i++, added++) outbox.add(RESULT, payloadFor);
      link.kick();
    }, 5);
    cleanups.push(() => Promise.resolve(clearInterval(producer)));

    for (const [threshold, crash] of [[150, false], [450, false], [750, true]] as const) {
      await until(() => outbox.acks.length >= threshold, 20_000, `${threshold} acks`);
      proxy.gateOpen = false;
      const subs = sub.subscriptions;
      if (crash) {
        await mosq.kill(); // SIGKILL: the broker dies without closing anything cleanly
        await mosq.start();
      } else {
        await mosq.restart();
      }
      await until(() => sub.subscriptions > subs, 10_000, 'subscriber back');
      proxy.gateOpen = true;
    }
    await until(() => added === total && outbox.rows.length === 0, 30_000, 'outbox to drain');
    await until(() => new Set(sub.messages.map(seqOf)).size === total, 10_000, 'all rows at the subscriber');

    expect(disconnects.length).toBeGreaterThanOrEqual(3);
    expect(new Set(outbox.acks).size).toBe(total);
    const { duplicates } = expectDelivered(sub.messages, total);
    if (process.env.LOG_LEVEL !== undefined) console.log({ duplicates, disconnects, received: sub.messages.length });
    // Only rows in flight when a connection died can come twice: at most one window per restart.
    expect(duplicates).toBeLessThanOrEqual(3 * 16);
    expect(await link.flush(100)).toBe(0);
  });

  it('keeps at most `window` rows unacknowledged and resumes from the oldest unacked row', async () => {
    const mosq = await startMosquitto();
    cleanups.push(() => mosq.dispose());
    const proxy = await TcpProxy.start(mosq.port);
    cleanups.push(() => proxy.close());
    const sub = await Subscriber.connect(mosq.url, RESULT);
    cleanups.push(() => sub.close());

    // An outbox that never forgets a row until acked, and records the most rows ever outstanding.
    const outbox = new MemoryOutbox();
    for (let i = 0; i < 300; i++) outbox.add(RESULT, payloadFor);
    let maxOutstanding = 0;
    const handed = new Set<number>();
    const source = {
      next: (after: number, limit: number) => {
        const rows = outbox.next(after, limit);
        for (const r of rows) handed.add(r.seq);
        maxOutstanding = Math.max(maxOutstanding, handed.size);
        return rows;
      },
      ack: (seq: number) => {
        handed.delete(seq);
        outbox.ack(seq);
      },
    };
    const link = new MqttLink({ url: proxy.url, deviceId: 'ct-01', logger: testLogger(), reconnectPeriodMs: 100 });
    cleanups.push(() => link.close());
    link.attachOutbox(source, { window: 8 });
    link.start();
    await until(() => outbox.acks.length >= 100, 10_000, '100 acks');
    proxy.gateOpen = false;
    proxy.drop();
    await until(() => !link.connected, 5000, 'disconnect');
    const oldest = outbox.rows[0]!.seq;
    const before = sub.messages.length;
    proxy.gateOpen = true;
    await until(() => outbox.rows.length === 0, 10_000, 'drain');
    await until(() => new Set(sub.messages.map(seqOf)).size === 300, 5000, 'all at subscriber');
    // After the reconnect the first row sent is the oldest one not acknowledged.
    expect(seqOf(sub.messages[before]!)).toBeLessThanOrEqual(oldest);
    expect(maxOutstanding).toBeLessThanOrEqual(8);
    expect(maxOutstanding).toBeGreaterThan(1);
    expectDelivered(sub.messages, 300);
  });
});
