/**
 * ServingModel (src/pipeline/serving.ts) on its own, with real supervised ORT / TF.js workers on the
 * shipped bundle: a runtime marked failed while serving is replaced by the next in the order, and a
 * classify call the failed runtime refused comes back with a result from the new one; with nothing left
 * to fall back to, the caller gets the runtime-failed error and the event says why. The runtime crash is
 * the worker's test fault hook (EDGE_AGENT_TEST_FAULTS=1 + `edge-agent-crash-runtime-onnx` in the fault
 * dir: every onnx call aborts its worker, zero-input canaries included).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeFile, defaultDecodeOptions } from '../../src/decode/index.js';
import type { ImageFrame } from '../../src/decode/types.js';
import type { ClassifierOptions } from '../../src/pipeline/classifier.js';
import { ServingModel, type FallbackEvent } from '../../src/pipeline/serving.js';
import { CRASH_RUNTIME_PREFIX, FAULT_DIR_ENV, FAULT_ENV } from '../../src/runtimes/worker/protocol.js';

const SHIPPED = path.resolve('models/orientation-qa');
const faultDir = mkdtempSync(path.join(tmpdir(), 'serving-faults-'));
const crashFile = path.join(faultDir, CRASH_RUNTIME_PREFIX + 'onnx');
const saved = { faults: process.env[FAULT_ENV], dir: process.env[FAULT_DIR_ENV] };

beforeAll(() => {
  // the supervised workers inherit this process's environment
  process.env[FAULT_ENV] = '1';
  process.env[FAULT_DIR_ENV] = faultDir;
});
afterAll(() => {
  for (const [k, v] of [[FAULT_ENV, saved.faults], [FAULT_DIR_ENV, saved.dir]] as const) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

function options(runtime: ClassifierOptions['runtime']): ClassifierOptions {
  return {
    runtime,
    precision: 'fp32',
    providers: ['cpu'],
    intraOpThreads: 1,
    interOpThreads: 1,
    graphOptimization: 'all',
    warmupRuns: 1,
    trustedKeys: [path.resolve('models/keys/DEVELOPMENT-ONLY-signing-key.pub.pem')],
    allowUnsigned: false,
    isolation: { mode: 'process', workers: 1, inferenceTimeoutMs: 10_000, maxWorkerRssMb: 0, restartLimit: { count: 1, windowSec: 60 } },
  };
}

async function frames(): Promise<ImageFrame[]> {
  return (await decodeFile(path.resolve('tests/fixtures/models/colin27-coronal.png'), defaultDecodeOptions())).frames;
}

describe('ServingModel', () => {
  it('falls back to the next runtime when the serving one is marked failed; the refused call gets its result from the new runtime', async () => {
    rmSync(crashFile, { force: true });
    const events: FallbackEvent[] = [];
    const m = await ServingModel.load(SHIPPED, options(['onnx', 'tfjs']), { onFallback: (e) => events.push(e) });
    try {
      const input = await frames();
      const before = await m.classify(input);
      expect(m.info).toMatchObject({ runtime: 'onnx', provider: 'cpu' });
      writeFileSync(crashFile, '');
      const after = await m.classify(input);
      expect(m.info).toMatchObject({ runtime: 'tfjs', provider: 'wasm' });
      expect(m.precision).toBe('fp32');
      // same model in another runtime: same label, scores within the golden tolerance
      const argmax = (p: number[]) => p.indexOf(Math.max(...p));
      expect(argmax(after.probabilities[0]!)).toBe(argmax(before.probabilities[0]!));
      after.probabilities[0]!.forEach((p, i) => expect(Math.abs(p - before.probabilities[0]![i]!)).toBeLessThan(1e-3));
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ failed: { runtime: 'onnx', precision: 'fp32' }, previous: { runtime: 'onnx' }, now: { runtime: 'tfjs', precision: 'fp32', provider: 'wasm' } });
      expect(events[0]!.failed.reason).toMatch(/^2 worker restarts within 60 s \(last: .*SIGABRT/);
      expect(m.selection).toMatchObject({ mode: 'fallback', chosen: { runtime: 'tfjs' }, order: ['tfjs/fp32'] });
      expect(m.selection.notes[0]).toBe(events[0]!.message);
    } finally {
      await m.dispose();
      rmSync(crashFile, { force: true });
    }
  });

  it('with no other runtime in the order, the refused call fails with runtime-failed and the event says why', async () => {
    rmSync(crashFile, { force: true });
    const events: FallbackEvent[] = [];
    const m = await ServingModel.load(SHIPPED, options(['onnx']), { onFallback: (e) => events.push(e) });
    try {
      const input = await frames();
      await m.classify(input);
      writeFileSync(crashFile, '');
      await expect(m.classify(input)).rejects.toMatchObject({ code: 'runtime-failed' });
      expect(events).toHaveLength(1);
      expect(events[0]!.now).toBeUndefined();
      expect(events[0]!.error).toBe('no other runtime in the preference order (onnx/fp32)');
      expect(events[0]!.message).toMatch(/^runtime 'onnx' \(onnx\/fp32\) failed: .*; no fallback: no other runtime in the preference order/);
      expect(m.info.runtime).toBe('onnx'); // nothing replaced it; a reload is the way out
    } finally {
      await m.dispose();
      rmSync(crashFile, { force: true });
    }
  });
});
