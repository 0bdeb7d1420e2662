/**
 * Health (issue 6): the retained `<base>/<device>/health` document (HealthPayload, src/fleet/protocol.ts),
 * published every `fleet.healthIntervalSec` and at once on a change: model swap, pause/resume, an error,
 * a rollout step, a (re)connection to the broker (a broker restarted without persistence forgot it).
 * Changes that come in a burst are coalesced: at most one change-driven publish per second (a storm of
 * quarantined files does not become a storm of health messages).
 *
 * Latency is end to end as a user sees it: from the moment the agent took the file (journal accept,
 * right after the inbox watcher found it complete) to the broker's PUBACK of its result, over a sliding
 * window of the last `window` published captures; p50/p99 by nearest rank. Disk is the free space of the
 * state directory's filesystem (statfs), the place that fills up first on a device.
 *
 * Everything here comes from counters and metadata: no file name, no patient data.
 */
import { statfs } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { HealthPayload } from './protocol.js';

export type HealthModel = HealthPayload['model'];

/** Change-driven publishes are at least this far apart. */
const MIN_CHANGE_SPACING_MS = 1000;

/** What the reporter reads at each snapshot; every function must be cheap and must not throw (guarded anyway). */
export interface HealthSources {
  deviceId: string;
  groups: string[];
  agentVersion: string;
  stateDir: string;
  configId(): string;
  model(): HealthModel;
  /** Notes about the runtime/precision choice (classifier.selection.notes), if any. */
  notes(): string[] | undefined;
  paused(): boolean;
  queueDepth(): number;
  counts(): HealthPayload['counts'];
}

export interface HealthReporterOptions {
  sources: HealthSources;
  publish(payload: HealthPayload): Promise<void>;
  intervalSec: number;
  /** Results in the latency window. */
  window: number;
  log: Logger;
  /** Process start (ms since epoch) for uptime; default: now. */
  startedAt?: number;
}

/** Nearest-rank percentile of an ascending list; null when empty. */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** Reads `classifier.selection.notes` (runtime selection) without trusting its shape. */
export function selectionNotes(classifier: unknown): string[] | undefined {
  if (typeof classifier !== 'object' || classifier === null) return undefined;
  let selection: unknown;
  try {
    selection = (classifier as { selection?: unknown }).selection;
  } catch {
    return undefined;
  }
  if (typeof selection !== 'object' || selection === null) return undefined;
  const notes = (selection as { notes?: unknown }).notes;
  if (!Array.isArray(notes)) return undefined;
  const out = notes.filter((n): n is string => typeof n === 'string').slice(0, 20).map((n) => n.slice(0, 300));
  return out.length > 0 ? out : undefined;
}

/** Reads the model part of health from a classifier's `info` (+ `precision` when it has one). */
export function healthModel(classifier: unknown): HealthModel {
  if (typeof classifier !== 'object' || classifier === null) return null;
  let info: Record<string, unknown> | undefined;
  try {
    info = (classifier as { info?: unknown }).info as Record<string, unknown> | undefined;
  } catch {
    return null;
  }
  if (typeof info !== 'object' || info === null) return null;
  const str = (v: unknown): string => (typeof v === 'string' ? v : '');
  const model: NonNullable<HealthModel> = {
    id: str(info.id),
    version: str(info.version),
    sha256: str(info.sha256),
    runtime: str(info.runtime),
    provider: str(info.provider),
  };
  let precision: unknown = info.precision;
  try {
    precision ??= (classifier as { precision?: unknown }).precision;
  } catch {
    precision = undefined;
  }
  if (typeof precision === 'string') model.precision = precision;
  return model;
}

export class HealthReporter {
  private readonly latencies: number[];
  private next = 0;
  private filled = 0;
  private timer: NodeJS.Timeout | undefined;
  private intervalSec: number;
  private lastError: HealthPayload['lastError'] = null;
  private pendingChange: NodeJS.Timeout | undefined;
  private lastPublishAt = 0;
  private publishing: Promise<void> = Promise.resolve();
  private again = false;
  private inFlight = false;
  private stopped = true;
  private readonly startedAt: number;
  private published = 0;

  constructor(private readonly opts: HealthReporterOptions) {
    this.latencies = new Array<number>(Math.max(1, opts.window)).fill(0);
    this.intervalSec = opts.intervalSec;
    this.startedAt = opts.startedAt ?? Date.now();
  }

  /** Publishes now and every interval from now on. */
  start(): void {
    this.stopped = false;
    this.schedule();
    this.changed('start');
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.pendingChange) clearTimeout(this.pendingChange);
    this.pendingChange = undefined;
  }

  /** Live change of fleet.healthIntervalSec. */
  setIntervalSec(sec: number): void {
    if (sec === this.intervalSec) return;
    this.intervalSec = sec;
    if (!this.stopped) this.schedule();
  }

  /** One capture's end-to-end latency (ms): file taken -> result acknowledged by the broker. */
  recordLatency(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    this.latencies[this.next] = ms;
    this.next = (this.next + 1) % this.latencies.length;
    if (this.filled < this.latencies.length) this.filled++;
  }

  /** The last error (code + message without patient data); publishes at once. */
  recordError(code: string, message: string): void {
    this.lastError = { code: code.slice(0, 100), message: message.slice(0, 500), at: new Date().toISOString() };
    this.changed(`error ${code}`);
  }

  /** Something health shows changed: publish soon (one publish for a burst of changes). */
  changed(reason: string): void {
    if (this.stopped || this.pendingChange) return;
    const wait = Math.max(0, this.lastPublishAt + MIN_CHANGE_SPACING_MS - Date.now());
    this.pendingChange = setTimeout(() => {
      this.pendingChange = undefined;
      this.opts.log.debug({ reason }, 'health changed');
      void this.publishNow();
    }, wait);
  }

  /** Number of snapshots handed to publish so far. */
  get publishedCount(): number {
    return this.published;
  }

  async snapshot(): Promise<HealthPayload> {
    const s = this.opts.sources;
    const guard = <T>(fn: () => T, fallback: T): T => {
      try {
        return fn();
      } catch (err) {
        this.opts.log.warn({ err }, 'health source failed');
        return fallback;
      }
    };
    const window = this.latencies.slice(0, this.filled).sort((a, b) => a - b);
    const round = (v: number | null): number | null => (v === null ? null : Math.round(v * 10) / 10);
    let diskFreeBytes = -1;
    try {
      const fs = await statfs(s.stateDir);
      diskFreeBytes = Number(fs.bavail) * Number(fs.bsize);
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'free disk of the state dir unknown');
    }
    const notes = guard(() => s.notes(), undefined);
    const payload: HealthPayload = {
      deviceId: s.deviceId,
      groups: s.groups,
      agentVersion: s.agentVersion,
      uptimeSec: Math.round((Date.now() - this.startedAt) / 1000),
      configId: guard(() => s.configId(), ''),
      model: guard(() => s.model(), null),
      ...(notes ? { notes } : {}),
      ingest: { paused: guard(() => s.paused(), false), queueDepth: guard(() => s.queueDepth(), 0) },
      counts: guard(() => s.counts(), { processed: 0, failed: 0, quarantined: 0 }),
      latencyMs: { p50: round(percentile(window, 50)), p99: round(percentile(window, 99)), window: window.length },
      rssMb: Math.round(process.memoryUsage.rss() / (1024 * 1024)),
      diskFreeBytes,
      lastError: this.lastError,
      at: new Date().toISOString(),
    };
    return payload;
  }

  /** Takes a snapshot and publishes it; concurrent calls collapse into one more publish. */
  publishNow(): Promise<void> {
    if (this.inFlight) {
      this.again = true;
      return this.publishing;
    }
    this.inFlight = true;
    this.publishing = (async () => {
      try {
        do {
          this.again = false;
          const payload = await this.snapshot();
          this.published++;
          this.lastPublishAt = Date.now();
          await this.opts.publish(payload);
        } while (this.again && !this.stopped);
      } catch (err) {
        this.opts.log.warn({ err }, 'health not published');
      } finally {
        this.inFlight = false;
      }
    })();
    return this.publishing;
  }

  private schedule(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = setInterval(() => void this.publishNow(), this.intervalSec * 1000);
    this.timer.unref();
  }
}
