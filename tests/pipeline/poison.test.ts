/**
 * Poison input through the real pipeline, store and supervisor: a file whose inference kills the worker
 * every time is quarantined at once (code 'poison-input', one attempt, not ingest.maxAttempts) while the
 * other files are classified. The worker crash is real (the worker's test-only fault hook aborts it);
 * the only test-made part is the small Classifier below, which marks the tensor of the file chosen as
 * poison, because no image decodes to the hook's sentinel values.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import type { ImageFrame } from '../../src/decode/types.js';
import type { ModelInputSpec } from '../../src/models/types.js';
import type { Classifier, ClassifyOutput } from '../../src/pipeline/classifier.js';
import { activate } from '../../src/pipeline/result.js';
import { preprocess } from '../../src/preprocess/index.js';
import { FAULT_ENV, markFault } from '../../src/runtimes/worker/protocol.js';
import { SupervisedSession } from '../../src/runtimes/worker/supervisor.js';
import { StateStore } from '../../src/store/index.js';
import { testPipeline } from './helpers.js';

const MODEL = path.resolve('tests/fixtures/runtimes/tiny-cnn.onnx');
const SPEC: ModelInputSpec = {
  name: 'input',
  layout: 'NCHW',
  shape: [1, 1, 224, 224],
  dtype: 'float32',
  channels: 1,
  normalisation: { mean: [0.5], std: [0.25] },
  resize: 'stretch',
};
/** The poison file is the one 77 pixels wide. */
const POISON_WIDTH = 77;

class SupervisedClassifier implements Classifier {
  readonly info = { id: 'tiny-cnn', version: '0.0.1', sha256: '0'.repeat(64), runtime: 'onnx', provider: 'cpu' };
  readonly labels = ['up', 'right', 'down', 'left'];
  readonly attempts = [];
  constructor(readonly session: SupervisedSession) {}
  async classify(frames: ImageFrame[]): Promise<ClassifyOutput> {
    const probabilities: number[][] = [];
    for (const f of frames) {
      const x = preprocess(f, SPEC);
      if (f.width === POISON_WIDTH) markFault(x, 'abort');
      const out = await this.session.run(x, [1, 1, 224, 224]);
      probabilities.push(activate(out.data, 'softmax'));
    }
    return { probabilities, preprocessMs: 0, inferMs: 0 };
  }
  dispose(): Promise<void> {
    return this.session.dispose();
  }
}

async function png(file: string, width: number, seed: number): Promise<void> {
  const px = Buffer.alloc(width * 64);
  for (let i = 0; i < px.length; i++) px[i] = (i * (seed + 3) + seed * 29) % 256;
  await sharp(px, { raw: { width, height: 64, channels: 1 } }).png().toFile(file);
}

const cleanup: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
});

describe('pipeline and a poison input', () => {
  it('quarantines the file that kills the inference worker (poison-input, 1 attempt) while the others are classified', async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'poison-'));
    const inbox = path.join(root, 'inbox');
    mkdirSync(inbox);
    const session = await SupervisedSession.start(
      { runtime: 'onnx', modelPath: MODEL, options: { providers: ['cpu'], intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' } },
      {
        mode: 'process',
        workers: 1,
        inferenceTimeoutMs: 5000,
        maxWorkerRssMb: 0,
        restartLimit: { count: 5, windowSec: 60 },
        backoff: { initialMs: 20, maxMs: 200 },
        env: { [FAULT_ENV]: '1' },
      },
    );
    const classifier = new SupervisedClassifier(session);
    cleanup.push(() => classifier.dispose());
    const store = StateStore.open(path.join(root, 'state'));
    cleanup.push(() => store.close());
    const failures: string[] = [];
    const pipeline = testPipeline(root, inbox, store, classifier, failures);
    const names = ['a.png', 'b.png', 'poison.png', 'c.png', 'd.png', 'e.png'];
    for (const [i, n] of names.entries()) await png(path.join(inbox, n), n === 'poison.png' ? POISON_WIDTH : 64, i);
    for (const n of names) {
      const p = path.join(inbox, n);
      const st = statSync(p);
      expect(pipeline.offer({ path: p, name: n, size: st.size, mtimeMs: st.mtimeMs })).toBe(true);
    }
    await new Promise((r) => setTimeout(r, 100));
    await pipeline.idle();

    expect(failures).toEqual(['poison-input']);
    expect(pipeline.stats).toMatchObject({ processed: 5, failed: 1 });
    const sidecar = JSON.parse(readFileSync(path.join(root, 'quarantine', 'poison.png.json'), 'utf8')) as Record<string, unknown>;
    expect(sidecar).toMatchObject({ file: 'poison.png', code: 'poison-input', attempts: 1 });
    expect(String(sidecar.reason)).toMatch(/killed the inference worker 2 times/);
    expect(readdirSync(path.join(root, 'quarantine')).sort()).toEqual(['poison.png', 'poison.png.json']);
    expect(session.restarts).toBe(2);
    expect(session.failure).toBeUndefined();
  });
});
