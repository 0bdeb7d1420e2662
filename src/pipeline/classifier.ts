/**
 * Classifier: a loaded model bundle behind one call, `classify(frames)`. It owns the manifest-driven
 * preprocessing, the runtime session and the output activation, so the pipeline holds no
 * model-specific code.
 */
import type { ImageFrame } from '../decode/types.js';
import type { LoadedBundle } from '../models/types.js';
import type { InferenceSessionHandle, ProviderAttempt, RuntimeLoadOptions } from '../runtimes/types.js';
import { loadBundle, selectModelFile } from '../models/bundle.js';
import { preprocess, toBatch } from '../preprocess/index.js';
import { getRuntime } from '../runtimes/registry.js';
import { activate, type ModelInfo } from './result.js';
import path from 'node:path';

export interface ClassifyOutput {
  /** One probability vector per frame, in label order. */
  probabilities: number[][];
  preprocessMs: number;
  inferMs: number;
}

export interface Classifier {
  readonly info: ModelInfo;
  readonly labels: string[];
  readonly attempts: ProviderAttempt[];
  classify(frames: ImageFrame[]): Promise<ClassifyOutput>;
  dispose(): Promise<void>;
}

export interface ClassifierOptions extends RuntimeLoadOptions {
  runtime: string;
  warmupRuns: number;
  /** Frames per runtime call (multi-frame files). */
  maxBatch?: number;
}

export class BundleClassifier implements Classifier {
  readonly labels: string[];
  readonly info: ModelInfo;

  private constructor(
    readonly bundle: LoadedBundle,
    private readonly session: InferenceSessionHandle,
    sha256: string,
    private readonly maxBatch: number,
  ) {
    this.labels = bundle.manifest.labels;
    this.info = {
      id: bundle.manifest.id,
      version: bundle.manifest.version,
      sha256,
      runtime: session.runtime,
      provider: session.provider,
    };
  }

  get attempts(): ProviderAttempt[] {
    return this.session.attempts;
  }

  static async load(bundleDir: string, opts: ClassifierOptions): Promise<BundleClassifier> {
    const bundle = await loadBundle(bundleDir);
    const file = selectModelFile(bundle, 'onnx');
    const runtime = getRuntime(opts.runtime);
    const session = await runtime.load(path.join(bundle.dir, file.path), opts);
    const c = new BundleClassifier(bundle, session, file.sha256, opts.maxBatch ?? 8);
    await c.warmup(opts.warmupRuns);
    return c;
  }

  private async warmup(runs: number): Promise<void> {
    const spec = this.bundle.manifest.input;
    const [, d1 = 1, d2 = 1, d3 = 1] = spec.shape;
    const shape = [1, d1, d2, d3];
    const data = new Float32Array(d1 * d2 * d3);
    for (let i = 0; i < runs; i++) await this.session.run(data, shape);
  }

  async classify(frames: ImageFrame[]): Promise<ClassifyOutput> {
    const spec = this.bundle.manifest.input;
    const probabilities: number[][] = [];
    let preprocessMs = 0;
    let inferMs = 0;
    for (let start = 0; start < frames.length; start += this.maxBatch) {
      const chunk = frames.slice(start, start + this.maxBatch);
      const t0 = performance.now();
      const batch = toBatch(chunk.map((f) => preprocess(f, spec)), spec);
      const t1 = performance.now();
      const out = await this.session.run(batch.data, batch.shape);
      const t2 = performance.now();
      preprocessMs += t1 - t0;
      inferMs += t2 - t1;
      const perItem = out.data.length / chunk.length;
      for (let i = 0; i < chunk.length; i++) {
        probabilities.push(activate(out.data.subarray(i * perItem, (i + 1) * perItem), this.bundle.manifest.output.activation));
      }
    }
    return { probabilities, preprocessMs, inferMs };
  }

  async dispose(): Promise<void> {
    await this.session.dispose();
  }
}
