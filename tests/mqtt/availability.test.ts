import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { MqttLink } from '../../src/mqtt/link.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Subscriber, TcpProxy, testLogger, until } from './util.js';

const run = promisify(execFile);

/** What a brand-new `mosquitto_sub` sees on a retained topic. */
async function retainedVia(mosq: Mosquitto, topic: string): Promise<string> {
  const { stdout } = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(mosq.port), '-t', topic, '-C', '1', '-W', '5', '-q', '1']);
  return stdout.trim();
}

describe.skipIf(skipWithoutMosquitto)('availability on mosquitto', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.reverse()) await c();
    cleanups.length = 0;
  });

  it('retained online after online(), retained offline will when the connection dies abruptly, online again after reconnect', async () => {
    const mosq = await startMosquitto();
    cleanups.push(() => mosq.dispose());
    const proxy = await TcpProxy.start(mosq.port);
    cleanups.push(() => proxy.close());
    const link = new MqttLink({ url: proxy.url, deviceId: 'ct-01', logger: testLogger(), reconnectPeriodMs: 200, keepaliveSec: 5 });
    cleanups.push(() => link.close());
    const events: string[] = [];
    link.on('connected', (e) => events.push(e.reconnect ? 'reconnected' : 'connected'));
    link.on('disconnected', (e) => events.push(`disconnected: ${e.reason}`));

    link.start();
    await link.waitForConnection(5000);
    // Before online(): nothing retained yet (the agent is not ready).
    await link.online({ version: 'test' });
    expect(JSON.parse(await retainedVia(mosq, 'imaging/ct-01/state'))).toEqual({ state: 'online', version: 'test' });

    const watcher = await Subscriber.connect(mosq.url, 'imaging/ct-01/state');
    cleanups.push(() => watcher.close());
    await until(() => watcher.on('imaging/ct-01/state').length >= 1, 5000, 'retained state for a new subscriber');
    expect(watcher.messages[0]).toMatchObject({ retain: true });
    expect(JSON.parse(watcher.messages[0]!.payload)).toMatchObject({ state: 'online' });

    // Kill the link's TCP connection abruptly (RST, no DISCONNECT) and keep the "network" down.
    proxy.gateOpen = false;
    proxy.drop();
    await until(() => watcher.messages.some((m) => m.payload === '{"state":"offline"}'), 10_000, 'the last will');
    expect(link.connected).toBe(false);
    expect(link.status().connected).toBe(false);
    expect(events.some((e) => e.startsWith('disconnected'))).toBe(true);
    // A new subscriber now sees the retained will.
    expect(await retainedVia(mosq, 'imaging/ct-01/state')).toBe('{"state":"offline"}');

    // Network back: the link reconnects and republishes online by itself.
    proxy.gateOpen = true;
    await until(() => link.connected, 10_000, 'reconnect');
    await until(() => watcher.messages.at(-1)?.payload.includes('"state":"online"') === true, 5000, 'online republished');
    expect(events).toContain('reconnected');
  });

  it('republishes the retained online state after a broker restart without persistence', async () => {
    const mosq = await startMosquitto();
    cleanups.push(() => mosq.dispose());
    const link = new MqttLink({ url: mosq.url, deviceId: 'dx-02', logger: testLogger(), reconnectPeriodMs: 200 });
    cleanups.push(() => link.close());
    link.start();
    await link.waitForConnection(5000);
    await link.online();
    await mosq.restart(); // persistence off: the broker forgets retained messages
    await until(() => link.status().connects >= 2, 10_000, 'reconnect after restart');
    await until(() => link.status().outbox.inflight === 0, 1000, 'settle');
    expect(JSON.parse(await retainedVia(mosq, 'imaging/dx-02/state'))).toEqual({ state: 'online' });
  });

  it('close() leaves a retained offline state (a normal DISCONNECT discards the will)', async () => {
    const mosq = await startMosquitto();
    cleanups.push(() => mosq.dispose());
    const link = new MqttLink({ url: mosq.url, deviceId: 'us-03', logger: testLogger() });
    link.start();
    await link.waitForConnection(5000);
    await link.online();
    await link.close();
    expect(await retainedVia(mosq, 'imaging/us-03/state')).toBe('{"state":"offline"}');
  });

  it('errors: QoS 1 when connected, bounded buffer while offline, delivered after reconnect', async () => {
    const mosq = await startMosquitto();
    cleanups.push(() => mosq.dispose());
    const proxy = await TcpProxy.start(mosq.port);
    cleanups.push(() => proxy.close());
    const sub = await Subscriber.connect(mosq.url, 'imaging/e1/error');
    cleanups.push(() => sub.close());
    const link = new MqttLink({ url: proxy.url, deviceId: 'e1', logger: testLogger(), reconnectPeriodMs: 200, maxBufferedErrors: 3 });
    cleanups.push(() => link.close());
    link.start();
    await link.waitForConnection(5000);
    link.publishError({ n: 0 });
    await until(() => sub.messages.length === 1, 5000, 'first error');
    expect(sub.messages[0]).toMatchObject({ retain: false });

    proxy.gateOpen = false;
    proxy.drop();
    await until(() => !link.connected, 5000, 'disconnect');
    for (let n = 1; n <= 5; n++) link.publishError({ n });
    expect(link.status()).toMatchObject({ bufferedErrors: 3, droppedErrors: 2 });
    proxy.gateOpen = true;
    await until(() => sub.messages.length === 4, 10_000, 'buffered errors after reconnect');
    expect(sub.messages.map((m) => (JSON.parse(m.payload) as { n: number }).n)).toEqual([0, 3, 4, 5]);
  });
});
