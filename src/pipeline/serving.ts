/**
 * The model the pipeline serves with, surviving a runtime that fails under it.
 *
 * ServingModel wraps the BundleClassifier chosen at load (src/runtimes/select.ts decides which runtime x
 * precision, in preference or benchmark order). When the inference supervisor marks the serving runtime
 * failed (a restart storm: more than model.restartLimit.count worker restarts within windowSec), it loads
 * the next candidate of that order whose runtime has not failed (with every check: signature, hashes,
 * golden outputs), swaps it in and reports the switch through `onFallback` (the agent logs it and
 * publishes an `error`). Calls that the failed runtime refused (SupervisorError 'runtime-failed': the
 * one in flight and the queued ones) wait for the switch and run again on the new runtime, so the
 * pipeline never sees the failure and no capture is lost or counted as a failed attempt.
 *
 * A runtime that fails to load is handled earlier, inside BundleClassifier.load: the next candidate is
 * tried and the selection report says why.
 */
import type { ImageFrame } from '../decode/types.js';
import type { ProviderAttempt } from '../runtimes/types.js';
import { candidateKey, describeSelection, type SelectionReport } from '../runtimes/select.js';
import type { RuntimeFailedEvent } from '../runtimes/worker/supervisor.js';
import { BundleClassifier, type Classifier, type ClassifierOptions, type ClassifyOutput } from './classifier.js';
import type { ModelInfo } from './result.js';

export interface FallbackEvent {
  /** The runtime that failed while serving, the precision it served, and why it was marked failed. */
  failed: { runtime: string; precision: string; reason: string };
  /** The model as it served before the failure. */
  previous: ModelInfo;
  /** What serves now; absent when no other candidate could load (calls keep failing until a reload). */
  now?: ModelInfo & { precision: string };
  /** Why the loading of the next candidate(s) failed, when it did. */
  error?: string;
  /** One sentence naming both runtimes and the reason (for logs and the published error). */
  message: string;
}

export interface ServingHooks {
  onFallback?: (e: FallbackEvent) => void;
}

function isRuntimeFailed(e: unknown): boolean {
  return e instanceof Error && (e as Error & { code?: unknown }).code === 'runtime-failed';
}

export class ServingModel implements Classifier {
  private current!: BundleClassifier;
  private switching: Promise<void> | undefined;
  private readonly failedRuntimes: string[] = [];
  private disposed = false;
  /** Switches made so far (oldest first). */
  readonly fallbacks: FallbackEvent[] = [];

  private constructor(
    private readonly bundleDir: string,
    private readonly opts: ClassifierOptions,
    private readonly hooks: ServingHooks,
  ) {}

  /** Loads like BundleClassifier.load (every check, runtime selection) and watches the serving runtime. */
  static async load(bundleDir: string, opts: ClassifierOptions, hooks: ServingHooks = {}): Promise<ServingModel> {
    const s = new ServingModel(bundleDir, opts, hooks);
    s.current = await BundleClassifier.load(bundleDir, s.watched(opts));
    return s;
  }

  /** The classifier serving now. */
  get classifier(): BundleClassifier {
    return this.current;
  }
  get info(): ModelInfo {
    return this.current.info;
  }
  get labels(): string[] {
    return this.current.labels;
  }
  get attempts(): ProviderAttempt[] {
    return this.current.attempts;
  }
  get selection(): SelectionReport {
    return this.current.selection;
  }
  get precision(): string {
    return this.current.precision;
  }
  get signature(): BundleClassifier['signature'] {
    return this.current.signature;
  }
  get golden(): BundleClassifier['golden'] {
    return this.current.golden;
  }
  get bundle(): BundleClassifier['bundle'] {
    return this.current.bundle;
  }
  /** One line for logs: what serves, how it was chosen, the fallback order. */
  describe(): string {
    return describeSelection(this.selection);
  }

  async classify(frames: ImageFrame[]): Promise<ClassifyOutput> {
    for (let tries = 0; ; tries++) {
      const c = this.current;
      try {
        return await c.classify(frames);
      } catch (e) {
        if (!isRuntimeFailed(e) || this.disposed || tries > 8) throw e;
        // The failed event reaches runtimeFailed() before this rejection is seen (same tick), so a
        // switch is under way here unless nothing was left to fall back to.
        if (this.switching) await this.switching;
        if (this.current === c) throw e;
      }
    }
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.switching?.catch(() => undefined);
    await this.current.dispose();
  }

  /** Options whose isolation also tells this model when the runtime it serves is marked failed. */
  private watched(o: ClassifierOptions): ClassifierOptions {
    const iso = o.isolation;
    if (!iso) return o;
    const theirs = iso.onRuntimeFailed;
    return {
      ...o,
      isolation: {
        ...iso,
        onRuntimeFailed: (e) => {
          theirs?.(e);
          this.runtimeFailed(e);
        },
      },
    };
  }

  private runtimeFailed(e: RuntimeFailedEvent): void {
    // Only the serving session counts (not one being loaded or benchmarked, nor one already replaced).
    if (this.disposed || this.switching || !this.current || e.modelPath !== this.current.modelPath) return;
    this.switching = this.fallBack(e).finally(() => (this.switching = undefined));
  }

  private async fallBack(e: RuntimeFailedEvent): Promise<void> {
    const old = this.current;
    const from = { runtime: e.runtime, precision: old.precision, reason: `${e.restarts} worker restarts within ${e.windowSec} s (last: ${e.lastReason})` };
    if (!this.failedRuntimes.includes(e.runtime)) this.failedRuntimes.push(e.runtime);
    const remaining = old.selection.order.filter((k) => !this.failedRuntimes.includes(k.split('/')[0]!));
    let next: BundleClassifier | undefined;
    let error: string | undefined;
    if (!remaining.length) {
      error = `no other runtime in the ${old.selection.mode === 'auto' ? 'benchmark' : 'preference'} order (${old.selection.order.join(' > ') || 'none'})`;
    } else {
      try {
        next = await BundleClassifier.load(this.bundleDir, this.watched({ ...this.opts, excludeRuntimes: [...this.failedRuntimes], candidates: remaining }));
      } catch (err) {
        error = err instanceof Error ? err.message : String(err);
      }
    }
    const failedKey = candidateKey(from);
    if (!next || this.disposed) {
      if (next) await next.dispose();
      const ev: FallbackEvent = {
        failed: from,
        previous: old.info,
        error: error ?? 'the model was unloaded',
        message: `runtime '${e.runtime}' (${failedKey}) failed: ${from.reason}; no fallback: ${error ?? 'the model was unloaded'}`,
      };
      this.fallbacks.push(ev);
      if (!this.disposed) this.hooks.onFallback?.(ev);
      return;
    }
    const to = next.selection.chosen!;
    // Keep what the first selection learned (measurements, notes) next to the fallback's own notes.
    for (const rep of next.selection.candidates) {
      const before = old.selection.candidates.find((x) => candidateKey(x) === candidateKey(rep));
      if (before?.ms && !rep.ms) rep.ms = before.ms;
    }
    if (to.ms === undefined) {
      const ms = next.selection.candidates.find((x) => candidateKey(x) === candidateKey(to))?.ms?.p50;
      if (ms !== undefined) to.ms = ms;
    }
    const message = `runtime '${e.runtime}' (${failedKey}) failed: ${from.reason}; fell back to '${to.runtime}' (${candidateKey(to)}, provider ${to.provider})`;
    next.selection.notes = [message, ...old.selection.notes.filter((n) => !next.selection.notes.includes(n)), ...next.selection.notes];
    this.current = next;
    const ev: FallbackEvent = { failed: from, previous: old.info, now: { ...next.info, precision: next.precision }, message };
    this.fallbacks.push(ev);
    this.hooks.onFallback?.(ev);
    // The old session already refused its calls; freeing it must not hold up the retries.
    void old.dispose().catch(() => undefined);
  }
}
