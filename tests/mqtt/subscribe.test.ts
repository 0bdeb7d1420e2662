/**
 * Subscriptions of the link (commands, desired state): they survive broker restarts, oversized payloads
 * are dropped before any handler sees them, MQTT 5 Response Topic / Correlation Data reach the handler,
 * and a handler that throws never takes the link down. Real mosquitto (MQTT 5) and the embedded aedes
 * broker (MQTT 3.1.1).
 */
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MAX_REQUEST_BYTES } from '../../src/fleet/protocol.js';
import { startEmbeddedBroker } from '../../src/mqtt/broker.js';
import { DEFAULT_MAX_INBOUND_BYTES, MqttLink, subscriptionFilterProblem, topicMatches, type InboundMessage } from '../../src/mqtt/link.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { testLogger, until } from './util.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups.length = 0;
});

async function client(url: string, protocolVersion: 4 | 5 = 5): Promise<MqttClient> {
  const c = await mqtt.connectAsync(url, { protocolVersion, reconnectPeriod: 100 });
  cleanups.push(() => c.endAsync(true));
  return c;
}

function startLink(url: string, deviceId: string, protocolVersion: 4 | 5 = 5): MqttLink {
  const link = new MqttLink({ url, deviceId, protocolVersion, logger: testLogger(), reconnectPeriodMs: 100 });
  cleanups.push(() => link.close());
  return link;
}

function countSubscribed(link: MqttLink): { n: number } {
  const counter = { n: 0 };
  link.on('subscribed', () => counter.n++);
  return counter;
}

describe('topic filters', () => {
  it('the default inbound limit is the fleet protocol limit', () => {
    expect(DEFAULT_MAX_INBOUND_BYTES).toBe(MAX_REQUEST_BYTES);
  });

  it('matches + and # like a broker, $ topics only explicitly', () => {
    expect(topicMatches('imaging/d1/request/+', 'imaging/d1/request/ping')).toBe(true);
    expect(topicMatches('imaging/d1/request/+', 'imaging/d1/request/ping/x')).toBe(false);
    expect(topicMatches('imaging/d1/request/+', 'imaging/d2/request/ping')).toBe(false);
    expect(topicMatches('imaging/#', 'imaging/d1/request/ping')).toBe(true);
    expect(topicMatches('imaging/#', 'imaging')).toBe(true); // MQTT: 'a/#' matches its parent 'a' too
    expect(topicMatches('#', '$SYS/broker/uptime')).toBe(false);
    expect(topicMatches('+/broker/uptime', '$SYS/broker/uptime')).toBe(false);
    expect(topicMatches('a/b', 'a/b')).toBe(true);
    expect(subscriptionFilterProblem('a/#/b')).toMatch(/'#'/);
    expect(subscriptionFilterProblem('a/b+/c')).toMatch(/'\+'/);
    expect(subscriptionFilterProblem('')).toBe('is empty');
    expect(subscriptionFilterProblem('imaging/group/g1/request/+')).toBeNull();
  });
});

describe.skipIf(skipWithoutMosquitto)('subscriptions on mosquitto (MQTT 5)', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker?.dispose();
  });

  it('delivers requests to the handler, and again after the broker restarted (resubscribed on connect)', async () => {
    const link = startLink(broker.url, 'sub-1');
    const got: InboundMessage[] = [];
    const subs = countSubscribed(link);
    link.subscribe(`${link.topics.root}/request/+`, (m) => {
      got.push(m);
    });
    link.start();
    await until(() => subs.n === 1, 10_000, 'first SUBACK');
    const pub = await client(broker.url);
    await pub.publishAsync('imaging/sub-1/request/ping', '{"transaction":"t1"}', { qos: 1 });
    await until(() => got.length === 1, 5000, 'first request');
    expect(got[0]!.topic).toBe('imaging/sub-1/request/ping');
    expect(got[0]!.payload.toString()).toBe('{"transaction":"t1"}');

    await broker.restart(); // no persistence: the broker forgot every subscription
    await until(() => subs.n === 2, 15_000, 'SUBACK after the restart');
    const pub2 = await client(broker.url);
    await pub2.publishAsync('imaging/sub-1/request/ping', '{"transaction":"t2"}', { qos: 1 });
    await until(() => got.length === 2, 5000, 'request after the restart');
    expect(got[1]!.payload.toString()).toBe('{"transaction":"t2"}');
    // Other devices' requests never reach this handler.
    await pub2.publishAsync('imaging/other/request/ping', '{}', { qos: 1 });
    await pub2.publishAsync('imaging/sub-1/request/ping', '{"transaction":"t3"}', { qos: 1 });
    await until(() => got.length === 3, 5000, 'third request');
    expect(got.map((m) => m.topic)).toEqual(['imaging/sub-1/request/ping', 'imaging/sub-1/request/ping', 'imaging/sub-1/request/ping']);
  });

  it('drops a payload over the limit before the handler, reports it to onOversize, and keeps working', async () => {
    const link = startLink(broker.url, 'sub-2');
    const got: InboundMessage[] = [];
    const oversize: InboundMessage[] = [];
    const subs = countSubscribed(link);
    link.subscribe('imaging/sub-2/request/+', (m) => void got.push(m), { onOversize: (m) => void oversize.push(m) });
    link.start();
    await until(() => subs.n === 1, 10_000, 'SUBACK');
    const pub = await client(broker.url);
    await pub.publishAsync('imaging/sub-2/request/set-config', Buffer.alloc(100 * 1024, 0x61), { qos: 1 });
    await pub.publishAsync('imaging/sub-2/request/ping', Buffer.alloc(MAX_REQUEST_BYTES, 0x20), { qos: 1 }); // exactly the limit: accepted
    await until(() => oversize.length === 1 && got.length === 1, 5000, 'oversize reported and the next message handled');
    expect(oversize[0]!.bytes).toBe(100 * 1024);
    expect(oversize[0]!.payload.length).toBe(0);
    expect(oversize[0]!.topic).toBe('imaging/sub-2/request/set-config');
    expect(got[0]!.bytes).toBe(MAX_REQUEST_BYTES);
    expect(link.droppedMessages).toBe(1);
  });

  it('passes MQTT 5 Response Topic and Correlation Data to the handler, and publishes correlation data back', async () => {
    const link = startLink(broker.url, 'sub-3');
    const subs = countSubscribed(link);
    link.subscribe('imaging/sub-3/request/+', async (m) => {
      await link.publish(m.responseTopic!, 'pong', { correlationData: m.correlationData! });
    });
    link.start();
    await until(() => subs.n === 1, 10_000, 'SUBACK');
    const requester = await client(broker.url);
    const replies: { payload: string; correlation: string | undefined }[] = [];
    requester.on('message', (_t, payload, packet) => {
      replies.push({ payload: payload.toString(), correlation: packet.properties?.correlationData?.toString() });
    });
    await requester.subscribeAsync('replies/me', { qos: 1 });
    await requester.publishAsync('imaging/sub-3/request/ping', '{}', {
      qos: 1,
      properties: { responseTopic: 'replies/me', correlationData: Buffer.from('corr-42') },
    });
    await until(() => replies.length === 1, 5000, 'reply on the response topic');
    expect(replies[0]).toEqual({ payload: 'pong', correlation: 'corr-42' });
  });

  it('a handler that throws or rejects is logged; the link and other messages go on', async () => {
    const link = startLink(broker.url, 'sub-4');
    const got: string[] = [];
    const subs = countSubscribed(link);
    link.subscribe('imaging/sub-4/request/+', (m) => {
      const cmd = m.topic.split('/').pop()!;
      if (cmd === 'throw') throw new Error('boom');
      if (cmd === 'reject') return Promise.reject(new Error('async boom'));
      got.push(cmd);
      return undefined;
    });
    link.start();
    await until(() => subs.n === 1, 10_000, 'SUBACK');
    const pub = await client(broker.url);
    for (const cmd of ['throw', 'reject', 'ok']) await pub.publishAsync(`imaging/sub-4/request/${cmd}`, '{}', { qos: 1 });
    await until(() => got.length === 1, 5000, 'message after the failing handlers');
    expect(got).toEqual(['ok']);
    expect(link.connected).toBe(true);
  });

  it('unsubscribe stops delivery; an invalid filter is refused', async () => {
    const link = startLink(broker.url, 'sub-5');
    const got: string[] = [];
    const subs = countSubscribed(link);
    const off = link.subscribe('imaging/sub-5/a', (m) => void got.push(m.topic));
    link.subscribe('imaging/sub-5/b', (m) => void got.push(m.topic));
    expect(() => link.subscribe('imaging/#/x', () => undefined)).toThrow(/invalid MQTT subscription filter/);
    link.start();
    await until(() => subs.n === 1, 10_000, 'SUBACK');
    off();
    expect(link.subscribedFilters).toEqual(['imaging/sub-5/b']);
    const pub = await client(broker.url);
    await pub.publishAsync('imaging/sub-5/a', 'x', { qos: 1 });
    await pub.publishAsync('imaging/sub-5/b', 'y', { qos: 1 });
    await until(() => got.length >= 1, 5000, 'message on b');
    expect(got).toEqual(['imaging/sub-5/b']);
  });
});

describe('error reports', () => {
  it('every error handed to publishError is also emitted (health keeps the last one), online or not', () => {
    const link = startLink('mqtt://127.0.0.1:1', 'err-1');
    const seen: Record<string, unknown>[] = [];
    link.on('errorReport', (e) => seen.push(e));
    link.publishError({ code: 'model-rejected', message: 'bad signature' });
    expect(seen).toEqual([{ code: 'model-rejected', message: 'bad signature' }]);
    expect(link.status().bufferedErrors).toBe(1);
  });
});

describe('subscriptions on the embedded aedes broker (MQTT 3.1.1)', () => {
  it('delivers requests and resubscribes after a reconnect; no MQTT 5 properties', async () => {
    const broker = await startEmbeddedBroker({ port: 0 });
    cleanups.push(() => broker.close());
    const link = startLink(broker.url, 'aedes-1', 4);
    const got: InboundMessage[] = [];
    const subs = countSubscribed(link);
    link.subscribe('imaging/aedes-1/request/+', (m) => void got.push(m));
    link.start();
    await until(() => subs.n === 1, 10_000, 'SUBACK');
    const pub = await client(broker.url, 4);
    await pub.publishAsync('imaging/aedes-1/request/ping', '{"transaction":"a"}', { qos: 1 });
    await until(() => got.length === 1, 5000, 'request');
    expect(got[0]!.responseTopic).toBeUndefined();
    expect(got[0]!.correlationData).toBeUndefined();
    expect(got[0]!.payload.toString()).toBe('{"transaction":"a"}');
  });
});
