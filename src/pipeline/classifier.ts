/**
 * Classifier: a loaded model bundle behind one call, `classify(frames)`. It owns the manifest-driven
 * preprocessing, the runtime session and the output activation, so the pipeline holds no
 * model-specific code.
 */
import type { ImageFrame } from '../decode/types.js';
import type { LoadedBundle, ModelFileEntry } from '../models/types.js';
import type { InferenceSessionHandle, ProviderAttempt, RuntimeLoadOptions } from '../runtimes/types.js';
import { loadBundle, selectModelFile } from '../models/bundle.js';
import { assertGolden, runGolden, type GoldenResult } from '../models/golden.js';
import { loadTrustedKeys, signatureCheck, type SignatureStatus } from '../models/signature.js';
import { preprocess, toBatch } from '../preprocess/index.js';
import { openSession, type IsolationOptions } from '../runtimes/worker/supervisor.js';
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
  /** PEM files of the public keys whose signature on manifest.sig is accepted (config model.trustedKeys). */
  trustedKeys: string[];
  /** Load a bundle that has no manifest.sig (config model.allowUnsigned; development only). */
  allowUnsigned: boolean;
  /** Run the manifest's golden inputs and refuse the model on a mismatch (default true). */
  golden?: boolean;
  /** Run inference in supervised workers (config model.isolation...); absent: in this process (the CLI's infer). */
  isolation?: IsolationOptions;
}

export class BundleClassifier implements Classifier {
  readonly labels: string[];
  readonly info: ModelInfo;
  /** Who signed the bundle (or that it is unsigned and was allowed). */
  signature: SignatureStatus = { signed: false };
  /** Outcome of the golden check on load (empty: the bundle has no golden entries or it was off). */
  golden: GoldenResult[] = [];
  private inflight = 0;
  private idle: (() => void)[] = [];
  private disposed = false;

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

  /**
   * Loads with every check: signature of manifest.json (before anything in it is trusted), schema, file
   * hashes and paths, then the runtime session, then the golden inputs through that session. Throws
   * BundleError (nothing is left loaded) when any check fails.
   */
  static async load(bundleDir: string, opts: ClassifierOptions): Promise<BundleClassifier> {
    const trustedKeys = await loadTrustedKeys(opts.trustedKeys);
    let signature: SignatureStatus = { signed: false };
    const bundle = await loadBundle(bundleDir, {
      manifestChecks: [signatureCheck({ trustedKeys, allowUnsigned: opts.allowUnsigned }, (s) => (signature = s))],
    });
    // The bundle file in the runtime's own format (runtime types are named after the formats they load).
    const file = selectModelFile(bundle, opts.runtime as ModelFileEntry['format']);
    // In-process, or a supervised worker pool behind the same InferenceSessionHandle (src/runtimes/worker/).
    const session = await openSession(opts.runtime, path.join(bundle.dir, file.path), opts, opts.isolation);
    const c = new BundleClassifier(bundle, session, file.sha256, opts.maxBatch ?? 8);
    c.signature = signature;
    try {
      if (opts.golden !== false) {
        c.golden = await runGolden(bundle, file, session);
        assertGolden(bundle, file, c.golden);
      }
      await c.warmup(opts.warmupRuns);
    } catch (e) {
      await session.dispose().catch(() => undefined);
      throw e;
    }
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
    if (this.disposed) throw new Error(`model ${this.info.id}@${this.info.version} was unloaded`);
    this.inflight++;
    try {
      return await this.classifyNow(frames);
    } finally {
      this.inflight--;
      if (this.inflight === 0) for (const wake of this.idle.splice(0)) wake();
    }
  }

  private async classifyNow(frames: ImageFrame[]): Promise<ClassifyOutput> {
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

  /** Waits for running classify() calls (a swapped-out model finishes its jobs), then frees the session. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    while (this.inflight > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
    this.disposed = true;
    await this.session.dispose();
  }
}
