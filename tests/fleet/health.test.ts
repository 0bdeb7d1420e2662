/**
 * Retained health through a real link and broker: what a console subscribing late sees, and that a change
 * (error, latency, pause) is published at once. Percentiles and the defensive readers as units.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HealthReporter, healthModel, percentile, selectionNotes, type HealthSources } from '../../src/fleet/health.js';
import type { HealthPayload } from '../../src/fleet/protocol.js';
import { MqttLink } from '../../src/mqtt/link.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Subscriber, testLogger, until } from '../mqtt/util.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups.length = 0;
});

describe('health units', () => {
  it('nearest-rank percentiles', () => {
    expect(percentile([], 50)).toBeNull();
    expect(percentile([7], 99)).toBe(7);
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(xs, 50)).toBe(50);
    expect(percentile(xs, 99)).toBe(99);
    expect(percentile(xs, 100)).toBe(100);
  });

  it('reads the classifier defensively', () => {
    expect(selectionNotes(undefined)).toBeUndefined();
    expect(selectionNotes({ selection: { notes: 'not a list' } })).toBeUndefined();
    expect(selectionNotes({ selection: { notes: ['int8 slower than fp32 here: 1.3 vs 1.1 ms', 42] } })).toEqual(['int8 slower than fp32 here: 1.3 vs 1.1 ms']);
    expect(healthModel(null)).toBeNull();
    expect(healthModel({ info: { id: 'm', version: '1.0.0', sha256: 'ab', runtime: 'onnx', provider: 'cpu' }, precision: 'int8' })).toEqual({
      id: 'm',
      version: '1.0.0',
      sha256: 'ab',
      runtime: 'onnx',
      provider: 'cpu',
      precision: 'int8',
    });
  });
});

describe.skipIf(skipWithoutMosquitto)('health on mosquitto', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker?.dispose();
  });

  function setup(deviceId: string, intervalSec = 3600) {
    const link = new MqttLink({ url: broker.url, deviceId, logger: testLogger(), reconnectPeriodMs: 100 });
    cleanups.push(() => link.close());
    const state = { paused: false, processed: 0, queue: 0 };
    const sources: HealthSources = {
      deviceId,
      groups: ['ward-a'],
      agentVersion: '9.9.9',
      stateDir: mkdtempSync(path.join(tmpdir(), 'health-')),
      configId: () => 'ct-scanner',
      model: () => ({ id: 'orientation-qa', version: '1.1.0', sha256: 'f'.repeat(64), runtime: 'onnx', provider: 'cpu' }),
      notes: () => ['int8 slower than fp32 here'],
      paused: () => state.paused,
      queueDepth: () => state.queue,
      counts: () => ({ processed: state.processed, failed: 0, quarantined: 0 }),
    };
    const health = new HealthReporter({ sources, publish: (p) => link.publishHealth(p), intervalSec, window: 100, log: testLogger() });
    cleanups.push(() => health.stop());
    return { link, health, state };
  }

  const parse = (s: Subscriber, topic: string): HealthPayload[] => s.on(topic).map((m) => JSON.parse(m.payload) as HealthPayload);

  it('publishes a retained document with every field; a late subscriber gets it; changes go out at once', async () => {
    const { link, health, state } = setup('h-1');
    link.start();
    await link.waitForConnection(5000);
    health.start();
    await until(() => health.publishedCount >= 1, 5000, 'first health');
    const late = await Subscriber.connect(broker.url, 'imaging/h-1/health');
    cleanups.push(() => late.close());
    await until(() => late.on('imaging/h-1/health').length >= 1, 5000, 'retained health');
    const first = late.on('imaging/h-1/health')[0]!;
    expect(first.retain).toBe(true);
    const doc = JSON.parse(first.payload) as HealthPayload;
    expect(Object.keys(doc).sort()).toEqual(
      ['agentVersion', 'at', 'configId', 'counts', 'deviceId', 'diskFreeBytes', 'groups', 'ingest', 'lastError', 'latencyMs', 'model', 'notes', 'rssMb', 'uptimeSec'].sort(),
    );
    expect(doc).toMatchObject({
      deviceId: 'h-1',
      groups: ['ward-a'],
      agentVersion: '9.9.9',
      configId: 'ct-scanner',
      ingest: { paused: false, queueDepth: 0 },
      latencyMs: { p50: null, p99: null, window: 0 },
      lastError: null,
      notes: ['int8 slower than fp32 here'],
    });
    expect(doc.model?.version).toBe('1.1.0');
    expect(doc.rssMb).toBeGreaterThan(10);
    expect(doc.diskFreeBytes).toBeGreaterThan(0);

    for (let i = 1; i <= 100; i++) health.recordLatency(i * 10);
    state.processed = 100;
    state.paused = true;
    health.recordError('decode-failed', 'not a DICOM file');
    await until(() => parse(late, 'imaging/h-1/health').some((h) => h.lastError !== null), 5000, 'health after the error');
    const after = parse(late, 'imaging/h-1/health').find((h) => h.lastError !== null)!;
    expect(after.lastError).toMatchObject({ code: 'decode-failed', message: 'not a DICOM file' });
    expect(after.latencyMs).toEqual({ p50: 500, p99: 990, window: 100 });
    expect(after.counts.processed).toBe(100);
    expect(after.ingest.paused).toBe(true);
  });

  it('a storm of errors becomes a bounded number of health messages, the last error in the last one', async () => {
    const { link, health } = setup('h-3');
    link.start();
    await link.waitForConnection(5000);
    health.start();
    await until(() => health.publishedCount >= 1, 5000, 'first health');
    const sub = await Subscriber.connect(broker.url, 'imaging/h-3/health');
    cleanups.push(() => sub.close());
    const before = health.publishedCount;
    for (let i = 1; i <= 200; i++) {
      health.recordError('decode-failed', `file ${i}`);
      await new Promise((r) => setImmediate(r));
    }
    await until(() => parse(sub, 'imaging/h-3/health').some((h) => h.lastError?.message === 'file 200'), 10_000, 'the last error published');
    // 200 changes spread over many event-loop turns: at most one change-driven publish per second.
    expect(health.publishedCount - before).toBeLessThan(10);
  });

  it('keeps publishing on its interval, and republishes after the broker restarted without persistence', async () => {
    const { link, health } = setup('h-2', 1);
    link.on('connected', () => health.changed('connected'));
    link.start();
    await link.waitForConnection(5000);
    health.start();
    await until(() => health.publishedCount >= 3, 10_000, 'periodic publishes');
    await broker.restart(); // retained health forgotten
    await link.waitForConnection(10_000);
    const sub = await Subscriber.connect(broker.url, 'imaging/h-2/health');
    cleanups.push(() => sub.close());
    await until(() => sub.on('imaging/h-2/health').length >= 1, 10_000, 'health again after the broker restart');
  });
});
