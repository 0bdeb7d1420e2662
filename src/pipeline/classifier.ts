/**
 * Classifier: a loaded model bundle behind one call, `classify(frames)`. It owns the manifest-driven
 * preprocessing, the runtime session and the output activation, so the pipeline holds no
 * model-specific code.
 */
import type { ImageFrame } from '../decode/types.js';
import type { LoadedBundle, ModelFileEntry } from '../models/types.js';
import type { InferenceSessionHandle, ProviderAttempt, RuntimeLoadOptions } from '../runtimes/types.js';
import { BundleError, loadBundle } from '../models/bundle.js';
import { assertGolden, runGolden, type GoldenResult } from '../models/golden.js';
import { loadTrustedKeys, signatureCheck, type SignatureStatus } from '../models/signature.js';
import { preprocess, toBatch } from '../preprocess/index.js';
import {
  candidateKey,
  markChosen,
  markFailed,
  planSelection,
  servingWorkers,
  type Candidate,
  type OptimiseFor,
  type PrecisionPreference,
  type RuntimePreference,
  type SelectionReport,
} from '../runtimes/select.js';
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
  /** Config model.runtime: 'auto', one runtime, or runtimes in preference order (src/runtimes/select.ts). */
  runtime: RuntimePreference;
  /** Config model.precision (default 'auto': int8 only where it measures faster here). */
  precision?: PrecisionPreference;
  /** Config model.optimiseFor: what `auto` ranks by (default 'latency'). */
  optimiseFor?: OptimiseFor;
  /** State dir holding the runtime benchmark cache (runtime-selection.json); absent: no cache. */
  stateDir?: string;
  /** Timed-run budget of the auto benchmark, all candidates together (default 2000 ms). */
  benchmarkBudgetMs?: number;
  /** Runtimes not to use (they failed while serving; the fallback path). */
  excludeRuntimes?: readonly string[];
  /** Try exactly these candidates (`runtime/precision`) in this order, without a benchmark (the fallback path). */
  candidates?: readonly string[];
  /**
   * Benchmark candidates when the config asks for it (auto). Default: only when `isolation` is given (the
   * agent); the in-process one-shot `infer` uses the agent's cached measurement or the static order.
   */
  benchmark?: boolean;
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
  /** Why this runtime x precision serves: chosen, candidates with ms or reason, cached or measured, notes. */
  selection!: SelectionReport;
  private inflight = 0;
  private idle: (() => void)[] = [];
  private disposed = false;

  private constructor(
    readonly bundle: LoadedBundle,
    private readonly session: InferenceSessionHandle,
    /** The bundle file being served (its format names the runtime). */
    readonly file: ModelFileEntry,
    private readonly maxBatch: number,
  ) {
    this.labels = bundle.manifest.labels;
    this.info = {
      id: bundle.manifest.id,
      version: bundle.manifest.version,
      sha256: file.sha256,
      runtime: session.runtime,
      provider: session.provider,
    };
  }

  /** Absolute path of the served model file (the supervisor's RuntimeFailedEvent.modelPath). */
  get modelPath(): string {
    return path.join(this.bundle.dir, this.file.path);
  }

  get precision(): ModelFileEntry['precision'] {
    return this.file.precision;
  }

  get attempts(): ProviderAttempt[] {
    return this.session.attempts;
  }

  /**
   * Loads with every check: signature of manifest.json (before anything in it is trusted), schema, file
   * hashes and paths; then picks the runtime x precision to serve (src/runtimes/select.ts: config order,
   * or the cached on-device benchmark for `auto`) and opens it with its golden check. A candidate that
   * fails to load or to pass its golden check is recorded in `selection` and the next one is tried.
   * Throws BundleError (nothing is left loaded) when the bundle fails a check or no candidate serves.
   */
  static async load(bundleDir: string, opts: ClassifierOptions): Promise<BundleClassifier> {
    const trustedKeys = await loadTrustedKeys(opts.trustedKeys);
    let signature: SignatureStatus = { signed: false };
    const bundle = await loadBundle(bundleDir, {
      manifestChecks: [signatureCheck({ trustedKeys, allowUnsigned: opts.allowUnsigned }, (s) => (signature = s))],
    });
    const selectOpts: Parameters<typeof planSelection>[1] = {
      runtime: opts.runtime,
      precision: opts.precision ?? 'auto',
      optimiseFor: opts.optimiseFor ?? 'latency',
      load: opts,
      excludeRuntimes: opts.excludeRuntimes ?? [],
      measure: opts.benchmark ?? opts.isolation !== undefined,
    };
    if (opts.isolation) selectOpts.isolation = opts.isolation;
    if (opts.stateDir) selectOpts.stateDir = opts.stateDir;
    if (opts.benchmarkBudgetMs !== undefined) selectOpts.budgetMs = opts.benchmarkBudgetMs;
    // Fallback: the order was decided when the model was first loaded; keep it, minus what failed.
    if (opts.candidates) selectOpts.order = opts.candidates;
    const plan = await planSelection(bundle, selectOpts);
    const failures: { c: Candidate; error: unknown }[] = [];
    for (const c of plan.order) {
      try {
        const classifier = await BundleClassifier.open(bundle, c, opts);
        classifier.signature = signature;
        markChosen(plan.report, c, classifier.session);
        classifier.selection = plan.report;
        return classifier;
      } catch (e) {
        failures.push({ c, error: e });
        const golden = e instanceof BundleError && e.code === 'golden-mismatch';
        markFailed(plan.report, c, e instanceof Error ? e.message : String(e), golden ? 'excluded' : 'unavailable');
      }
    }
    throw noCandidate(bundle, plan.report, failures);
  }

  /** Opens one candidate: session (in-process or supervised workers), golden check, warm-up. */
  private static async open(bundle: LoadedBundle, c: Candidate, opts: ClassifierOptions): Promise<BundleClassifier> {
    // In-process, or a supervised worker pool behind the same InferenceSessionHandle (src/runtimes/worker/).
    // A thread variant chosen by the auto benchmark runs with its own intra-op threads; with the worker
    // count left to the agent (0), the pool then has cores / threads workers, so every core has work
    // (bench/runtimes: onnx/int8 at 1 thread, 2 workers gave 13-36% more images/s than 1 worker on 2 cores).
    const load = c.threads ? { ...opts, intraOpThreads: c.threads } : opts;
    const iso = opts.isolation;
    const isolation = iso && iso.mode !== 'none' ? { ...iso, workers: servingWorkers(c, iso) } : iso;
    const session = await openSession(c.runtime, path.join(bundle.dir, c.file.path), load, isolation);
    const classifier = new BundleClassifier(bundle, session, c.file, opts.maxBatch ?? 8);
    try {
      if (opts.golden !== false) {
        classifier.golden = await runGolden(bundle, c.file, session);
        assertGolden(bundle, c.file, classifier.golden);
      }
      await classifier.warmup(opts.warmupRuns);
    } catch (e) {
      await session.dispose().catch(() => undefined);
      throw e;
    }
    return classifier;
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

/**
 * The error when nothing can serve: the candidates' own error when there was one (or they all failed the
 * same way, e.g. every runtime computes wrong golden outputs: 'golden-mismatch'), else 'no-runtime'
 * listing each candidate's reason; 'no-model-file' when the bundle has no file the config allows.
 */
function noCandidate(bundle: LoadedBundle, report: SelectionReport, failures: { c: Candidate; error: unknown }[]): BundleError {
  const first = failures[0]?.error;
  if (failures.length === 1 && first instanceof BundleError) return first;
  const problems: string[] = [];
  const codes = new Set<string>();
  for (const rep of report.candidates) {
    if (rep.status === 'excluded' || rep.status === 'unavailable' || rep.status === 'failed') {
      problems.push(`${candidateKey(rep)}: ${rep.reason ?? rep.status}`);
      const f = failures.find((x) => candidateKey(x.c) === candidateKey(rep));
      if (f) codes.add(f.error instanceof BundleError ? f.error.code : 'no-runtime');
      else codes.add(rep.status === 'excluded' && /golden/.test(rep.reason ?? '') ? 'golden-mismatch' : 'no-runtime');
    }
  }
  const id = `${bundle.manifest.id}@${bundle.manifest.version}`;
  if (!report.candidates.length) {
    const have = [...new Set(bundle.manifest.files.map((f) => `${f.format}/${f.precision}`))].join(', ');
    return new BundleError(
      'no-model-file',
      `bundle '${bundle.manifest.id}' has no model file for runtime ${report.runtimes.join('|')} x precision ${report.precisions.join('|')} (has: ${have})`,
      report.notes.length ? report.notes : undefined,
    );
  }
  const code = codes.size === 1 ? ([...codes][0] as BundleError['code']) : 'no-runtime';
  return new BundleError(code, `no runtime could serve model ${id}: ${problems.join('; ') || report.notes.join('; ')}`, problems.length ? problems : report.notes);
}
