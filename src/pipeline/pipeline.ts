/**
 * The capture pipeline: complete file -> content hash -> journal -> decode -> classify -> outbox
 * -> (PUBACK) -> done/ or deleted; any file that cannot be processed -> quarantine/ + error message.
 *
 * Memory is bounded: at most `queueCapacity` jobs are known in memory (hashing, queued or running);
 * when full, `offer()` refuses and the watcher rescans the inbox later.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rename, copyFile, unlink, writeFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { DecodePool } from '../decode/pool.js';
import { DecodeError, type DecodeOptions, type DecodedCapture, type ImageFrame } from '../decode/types.js';
import type { CompleteFile } from '../ingest/watcher.js';
import type { Job, StateStore, OutboxMessage } from '../store/index.js';
import type { Classifier } from './classifier.js';
import { buildInput, buildResult, type ErrorReport, type ModelInfo, type PrivacyOptions } from './result.js';
import { hashedName, shownFileName } from './names.js';

export interface PipelineOptions {
  deviceId: string;
  inbox: string;
  doneDir: string;
  quarantineDir: string;
  afterPublish: 'move' | 'delete';
  queueCapacity: number;
  concurrency: number;
  maxAttempts: number;
  maxFileBytes: number;
  decode: DecodeOptions;
  privacy: PrivacyOptions;
  topics: { result: string; error: string };
  /** While the state disk is full: how often a small write probes whether space came back (default 2000). */
  storeFullPollMs?: number;
  /** Per-file decode limit (decoding runs in worker threads, src/decode/pool.ts); default 20000. */
  decodeTimeoutMs?: number;
}

export interface PipelineEvents {
  /** New rows are in the outbox. */
  onOutbox?: () => void;
  /** Called when the pipeline has room again after refusing a file. */
  onRoom?: () => void;
  /**
   * The state store's disk is full (SQLITE_FULL / ENOSPC): intake is paused, files stay in the inbox.
   * Called once per episode (again only after a capture was processed since the last one).
   */
  onStoreFull?: (err: Error) => void;
  /** A write to the state store succeeded again after onStoreFull: intake resumed. */
  onStoreRecovered?: (pausedMs: number) => void;
  onResult?: (resultId: string, job: Job) => void;
  onFailure?: (code: string, job: Job) => void;
  /**
   * A capture was classified and its results committed (model rollout: shadow comparison and the error
   * rate after activation, src/fleet/rollout.ts). Called synchronously; must not throw or block.
   */
  onClassified?: (e: { frames: ImageFrame[]; probabilities: number[][]; labels: string[]; model: ModelInfo }) => void;
  /** Every result of a job was acknowledged by the broker (fleet health: end-to-end latency from job.createdAt). */
  onPublished?: (job: Job) => void;
}

/** Options that may change while the pipeline runs (fleet set-config); the next job uses them. */
export type PipelineLiveOptions = Partial<Pick<PipelineOptions, 'afterPublish' | 'queueCapacity' | 'concurrency' | 'maxAttempts' | 'maxFileBytes' | 'decode' | 'privacy'>>;

export interface PipelineStats {
  accepted: number;
  processed: number;
  failed: number;
  duplicates: number;
  inMemory: number;
  running: number;
}

/** A processing failure that is the input's fault: quarantine without retrying. */
class InputError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export class Pipeline {
  private readonly queue: string[] = [];
  /** Every hash known in memory (queued or running), and the paths being hashed. */
  private readonly known = new Set<string>();
  private readonly hashing = new Set<string>();
  private readonly pathsInFlight = new Set<string>();
  private running = 0;
  /** A suspect job (an earlier attempt unfinished) is running; nothing else starts until it ends. */
  private soloRunning = false;
  private stopping = false;
  private refused = false;
  private idleWaiters: (() => void)[] = [];
  /** Decoding off the event loop, with a per-file time limit (a hostile file cannot stall the agent). */
  private readonly decoder: DecodePool;
  /** File names as logs and error reports may show them, per job hash (src/pipeline/names.ts). */
  private readonly shownNames = new Map<string, string>();
  /** Set while the state store's disk is full (see enterStoreFull). */
  private storeFull: { since: number; timer: NodeJS.Timeout } | undefined;
  private storeFullReported = false;
  /** Files whose intake hit the full disk (the watcher had handed them over): offered again on recovery. */
  private parked = new Map<string, CompleteFile>();
  /** Finished jobs whose move out of the inbox could not be recorded on the full disk. */
  private unfinalized = new Set<string>();
  readonly stats: PipelineStats = { accepted: 0, processed: 0, failed: 0, duplicates: 0, inMemory: 0, running: 0 };

  constructor(
    private readonly opts: PipelineOptions,
    private readonly store: StateStore,
    private classifier: Classifier,
    private readonly log: Logger,
    private readonly events: PipelineEvents = {},
  ) {
    this.decoder = new DecodePool({ size: Math.max(1, opts.concurrency), timeoutMs: opts.decodeTimeoutMs ?? 20_000 });
    store.outbox.onJobPublished = (hash) => {
      const job = store.journal.get(hash);
      if (!job) return;
      try {
        this.events.onPublished?.(job);
      } catch (err) {
        this.log.warn({ err }, 'onPublished listener failed');
      }
      void this.finalize(job);
    };
  }

  /** Applies options changed while running (fleet set-config); the next job takes them. */
  updateOptions(patch: PipelineLiveOptions): void {
    Object.assign(this.opts, patch);
    this.checkRoom();
    this.pump();
  }

  /**
   * Runs a finished (published or failed) job again, reading its file from `filePath` (done/ or
   * quarantine/; a file outside the inbox stays where it is). Fleet `reprocess`. False when the
   * pipeline is full, stopping, or the job is not finished.
   */
  requeue(hash: string, filePath: string): boolean {
    if (this.stopping || this.load >= this.opts.queueCapacity || this.known.has(hash)) return false;
    if (!this.store.journal.reopen(hash, filePath)) return false;
    this.enqueue(hash, filePath);
    return true;
  }

  /** Replaces the model (later: hot swap). Jobs already running finish on the old one. */
  setClassifier(c: Classifier): void {
    this.classifier = c;
  }

  /** On start: finish file moves a crash interrupted, and resume every unfinished job. */
  async recover(): Promise<{ resumed: number; finalized: number }> {
    const pending = this.store.journal.pendingFinalize();
    for (const job of pending) await this.finalize(job);
    const unfinished = this.store.journal.unfinished();
    for (const job of unfinished) {
      if (this.known.size >= this.opts.queueCapacity) break; // the rest come back through the inbox scan
      this.enqueue(job.hash, job.path);
    }
    if (unfinished.length > 0 || pending.length > 0) {
      this.log.info({ resumed: unfinished.length, finalized: pending.length }, 'recovered unfinished work from the journal');
    }
    return { resumed: unfinished.length, finalized: pending.length };
  }

  private get load(): number {
    return this.known.size + this.hashing.size;
  }

  /** True while a file is held by the pipeline (hashing, queued, running, or waiting for PUBACK). */
  holds(filePath: string): boolean {
    return this.pathsInFlight.has(filePath);
  }

  /** Watcher consumer: false means "full, offer it again later". */
  offer(file: CompleteFile): boolean {
    if (this.stopping) return false;
    if (this.pathsInFlight.has(file.path)) return true;
    if (this.load >= this.opts.queueCapacity || this.storeFull) {
      this.refused = true;
      return false;
    }
    this.hashing.add(file.path);
    this.pathsInFlight.add(file.path);
    void this.intake(file)
      .catch((err: unknown) => {
        // e.g. the state store cannot be written: the file stays in the inbox and is offered again.
        this.pathsInFlight.delete(file.path);
        if (isDiskFull(err)) {
          this.parked.set(file.path, file);
          this.enterStoreFull(err as Error);
          return;
        }
        void shownFileName(file.path, file.name, null, this.opts.privacy.allowUids).then((shown) =>
          this.log.error({ err, file: shown }, 'could not take the file; it stays in the inbox'),
        );
      })
      .finally(() => {
        this.hashing.delete(file.path);
        this.checkRoom();
      });
    return true;
  }

  private async intake(file: CompleteFile): Promise<void> {
    let hash: string;
    try {
      if (file.size > this.opts.maxFileBytes) {
        hash = await hashFile(file.path);
        const { job } = this.store.journal.accept({ hash, name: file.name, path: file.path, size: file.size });
        await this.quarantine(job, 'too-large', `file is ${file.size} bytes, over ingest.maxFileBytes (${this.opts.maxFileBytes})`, 'ingest');
        this.pathsInFlight.delete(file.path);
        return;
      }
      hash = await hashFile(file.path);
    } catch (err) {
      if (isDiskFull(err)) throw err;
      // Vanished between "complete" and hashing (moved away by someone else): nothing to take.
      this.pathsInFlight.delete(file.path);
      const shown = await shownFileName(file.path, file.name, null, this.opts.privacy.allowUids);
      this.log.warn({ file: shown, err: (err as NodeJS.ErrnoException).code ?? (err as Error).message }, 'file disappeared before it could be taken');
      return;
    }
    const { outcome, job } = this.store.journal.accept({ hash, name: file.name, path: file.path, size: file.size });
    const log = this.log.child({ file: await this.shownName({ hash, name: file.name, path: file.path }) });
    this.stats.accepted++;
    if (outcome === 'duplicate') {
      this.stats.duplicates++;
      this.pathsInFlight.delete(file.path);
      log.info({ hash, state: job.state }, 'content already processed; not processing it again');
      if (job.state === 'published') await this.finalize(job);
      return;
    }
    if (this.known.has(hash)) {
      // The same content is already queued under another name: this copy is a duplicate.
      this.pathsInFlight.delete(file.path);
      this.stats.duplicates++;
      log.info({ hash }, 'same content already queued');
      return;
    }
    log.debug({ hash, outcome }, 'accepted');
    this.enqueue(hash, file.path);
  }

  private enqueue(hash: string, filePath: string): void {
    this.known.add(hash);
    this.pathsInFlight.add(filePath);
    this.queue.push(hash);
    this.stats.inMemory = this.known.size;
    this.pump();
  }

  /**
   * Starts queued jobs up to `concurrency`. A job whose earlier attempt did not finish (the agent died with
   * it in flight, or it failed and is retried) is a suspect: it runs alone, after the running jobs and
   * before any other, so that if the agent dies again the file is the only candidate (Journal soloAttempts).
   */
  private pump(): void {
    while (!this.stopping && !this.soloRunning && this.running < this.opts.concurrency && this.queue.length > 0) {
      const hash = this.queue[0]!;
      const solo = (this.store.journal.get(hash)?.attempts ?? 0) > 0;
      if (solo && this.running > 0) return; // pumped again as each running job ends
      this.queue.shift();
      this.running++;
      this.soloRunning = solo;
      this.stats.running = this.running;
      void this.runJob(hash, solo)
        .catch((err: unknown) => {
          // Only the journal itself failing gets here; the job stays unfinished and resumes at next start
          // (or, when the disk was full, once space returns: enterStoreFull).
          if (isDiskFull(err)) this.enterStoreFull(err as Error);
          else this.log.error({ err, hash: hash.slice(0, 12) }, 'job could not run');
          return false;
        })
        .then((retry) => {
          if (solo) this.soloRunning = false;
          this.running--;
          this.stats.running = this.running;
          if (retry && !this.stopping) this.queue.push(hash);
          else this.known.delete(hash);
          this.stats.inMemory = this.known.size;
          this.checkRoom();
          this.pump();
          if (this.running === 0 && (this.queue.length === 0 || this.stopping)) {
            for (const w of this.idleWaiters.splice(0)) w();
          }
        });
    }
  }

  private checkRoom(): void {
    // Ask for more once a quarter of the capacity is free: the watcher then offers files it already
    // knows are complete, so the queue refills before it runs dry.
    if (this.refused && this.load <= Math.max(0, Math.floor((this.opts.queueCapacity * 3) / 4))) {
      this.refused = false;
      this.events.onRoom?.();
    }
  }

  /** Runs one job; never throws. Returns true when the job should be tried again. */
  private async runJob(hash: string, solo = false): Promise<boolean> {
    const job = this.store.journal.get(hash);
    if (!job || (job.state !== 'queued' && job.state !== 'decoded')) return false;
    const log = this.log.child({ file: await this.shownName(job), hash: hash.slice(0, 12) });
    // An attempt counts from when work can start: a kill while the decoders still load (right after a
    // restart) is no evidence against the file.
    await this.decoder.ready();
    // Interrupted runs count against the file only when it ran alone (a kill while several jobs ran
    // proves nothing about any of them); failures this process saw count in the catch below.
    const { attempts, soloAttempts } = this.store.journal.beginAttempt(hash, solo);
    if (soloAttempts > this.opts.maxAttempts) {
      await this.quarantine(job, 'too-many-attempts', `processing failed or was interrupted ${attempts - 1} times, ${soloAttempts - 1} of them while it ran alone`, 'pipeline');
      return false;
    }
    const t0 = performance.now();
    const queuedMs = Date.now() - job.updatedAt;
    try {
      let bytes: Buffer;
      try {
        bytes = await readFile(job.path);
      } catch (err) {
        throw new InputError('missing', `file could not be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      const t1 = performance.now();
      let capture: DecodedCapture;
      try {
        capture = await this.decoder.decode(bytes, this.opts.decode);
      } catch (err) {
        if (err instanceof DecodeError) throw new InputError(err.code, err.message);
        throw err;
      }
      const t2 = performance.now();
      this.store.journal.markDecoded(hash, { modality: capture.meta.modality, frames: capture.frames.length });
      const classifier = this.classifier;
      const shown = await this.shownName(job);
      const out = await classifier.classify(capture.frames);
      const t3 = performance.now();
      const messages: OutboxMessage[] = capture.frames.map((frame, i) => {
        const result = buildResult({
          deviceId: this.opts.deviceId,
          labels: classifier.labels,
          probabilities: out.probabilities[i]!,
          model: classifier.info,
          input: buildInput(shown, hash, capture.kind, capture.meta, frame, this.opts.privacy),
          timings: {
            queue: queuedMs,
            read: t1 - t0,
            decode: t2 - t1,
            preprocess: out.preprocessMs,
            infer: out.inferMs,
            total: t3 - t0,
          },
        });
        return { resultId: result.resultId, topic: this.opts.topics.result, payload: JSON.stringify(result) };
      });
      // Results and their audit rows commit together: an audited result is one that will be delivered.
      this.store.db.transaction(() => {
        this.store.journal.complete(hash, messages);
        capture.frames.forEach((frame, i) =>
          this.store.audit.result({ resultId: messages[i]!.resultId!, model: classifier.info, inputSha256: hash, frame: frame.index }),
        );
      })();
      this.stats.processed++;
      this.storeFullReported = false;
      this.events.onOutbox?.();
      for (const m of messages) this.events.onResult?.(m.resultId!, job);
      this.events.onClassified?.({ frames: capture.frames, probabilities: out.probabilities, labels: classifier.labels, model: classifier.info });
      log.debug({ results: messages.length, ms: Math.round(t3 - t0) }, 'classified');
      return false;
    } catch (err) {
      if (isDiskFull(err)) {
        // Not the input's fault: the job stays unfinished in the journal and runs again once space returns.
        this.enterStoreFull(err as Error);
        return false;
      }
      try {
        if (err instanceof InputError) {
          await this.quarantine(job, err.code, err.message, err.code === 'missing' ? 'ingest' : 'decode');
          return false;
        }
        if (isPoisonInput(err)) {
          // The supervisor proved this input kills the inference worker (src/runtimes/worker/supervisor.ts):
          // quarantine it now, like bad input; retrying would only kill more workers.
          await this.quarantine(job, 'poison-input', (err as Error).message, 'inference');
          return false;
        }
        const message = err instanceof Error ? err.message : String(err);
        if (attempts >= this.opts.maxAttempts) {
          await this.quarantine(job, 'processing-failed', `failed ${attempts} times, last: ${message}`, 'pipeline');
          return false;
        }
        log.warn({ err: message, attempts }, 'processing failed; will retry');
        await new Promise((r) => setTimeout(r, 200 * attempts));
        return true;
      } catch (inner) {
        // e.g. the state disk is full: the job stays unfinished in the journal and runs again later.
        if (isDiskFull(inner)) this.enterStoreFull(inner as Error);
        else log.error({ err: inner }, 'could not record the failure of a job');
        return false;
      }
    }
  }

  /** Marks the job failed, publishes an error report and moves the file to quarantine/ with a sidecar. */
  private async quarantine(job: Job, code: string, reason: string, stage: string): Promise<void> {
    const shown = await this.shownName(job);
    const report: ErrorReport = {
      deviceId: this.opts.deviceId,
      code,
      message: reason,
      stage,
      input: { fileName: path.posix.basename(shown), contentHash: `sha256:${job.hash}` },
      createdAt: new Date().toISOString(),
    };
    this.store.journal.fail(job.hash, code, reason, { resultId: null, topic: this.opts.topics.error, payload: JSON.stringify(report) });
    this.stats.failed++;
    this.events.onOutbox?.();
    this.log.warn({ file: shown, code, reason }, 'file quarantined');
    const failed = this.store.journal.get(job.hash);
    if (failed) {
      this.events.onFailure?.(code, failed);
      await this.finalize(failed);
    }
  }

  /** Takes a finished job's file out of the inbox: done/ (or deleted) when published, quarantine/ when failed. */
  async finalize(job: Job): Promise<void> {
    if (job.finalized) return;
    try {
      if (job.state === 'failed') {
        const exists = await stat(job.path).then(
          (s) => s.isFile(),
          () => false,
        );
        let dest: string | null = null;
        if (exists && isInside(job.path, this.opts.inbox)) {
          dest = await moveUnique(job.path, path.join(this.opts.quarantineDir, job.name), job.hash);
        }
        const sidecar = {
          file: dest ? path.basename(dest) : null,
          originalName: job.name,
          contentHash: `sha256:${job.hash}`,
          code: job.errorCode,
          reason: job.error,
          attempts: job.attempts,
          quarantinedAt: new Date().toISOString(),
        };
        const sidecarPath = (dest ?? path.join(this.opts.quarantineDir, `${job.hash.slice(0, 16)}-${path.basename(job.name)}`)) + '.json';
        await mkdir(path.dirname(sidecarPath), { recursive: true });
        await writeFile(sidecarPath, JSON.stringify(sidecar, null, 2) + '\n');
        this.store.journal.markFinalized(job.hash, dest);
      } else if (job.state === 'published') {
        let dest: string | null = null;
        if (isInside(job.path, this.opts.inbox)) {
          if (this.opts.afterPublish === 'delete') {
            await unlink(job.path).catch((err: NodeJS.ErrnoException) => {
              if (err.code !== 'ENOENT') throw err;
            });
          } else {
            dest = await moveUnique(job.path, path.join(this.opts.doneDir, job.name), job.hash).catch((err: NodeJS.ErrnoException) => {
              if (err.code === 'ENOENT') return null; // already moved (e.g. by a run that crashed after the move)
              throw err;
            });
          }
        }
        this.store.journal.markFinalized(job.hash, dest);
      }
    } catch (err) {
      if (isDiskFull(err)) {
        this.unfinalized.add(job.hash);
        this.enterStoreFull(err as Error);
      } else {
        this.log.error(
          { err, file: this.shownNames.get(job.hash) ?? hashedName(job.name, job.hash) },
          'could not move the finished file out of the inbox; will retry at next start',
        );
      }
    } finally {
      this.pathsInFlight.delete(job.path);
      this.shownNames.delete(job.hash);
    }
  }

  /**
   * The job's file name as logs and published error reports may show it: its content hash instead when
   * the name repeats data from the file's header (a UID, the patient's name or ID), unless privacy.allowUids.
   */
  private async shownName(job: Pick<Job, 'hash' | 'name' | 'path'>): Promise<string> {
    let shown = this.shownNames.get(job.hash);
    if (shown === undefined) {
      shown = await shownFileName(job.path, job.name, job.hash, this.opts.privacy.allowUids);
      this.shownNames.set(job.hash, shown);
    }
    return shown;
  }

  /** True while intake is paused because the state store's disk is full. */
  get storeFullPaused(): boolean {
    return this.storeFull !== undefined;
  }

  /**
   * The state store's disk is full: pause intake (offers are refused, so the watcher keeps the files,
   * which stay in the inbox), say so once, and probe with a small write every storeFullPollMs until
   * one succeeds. Nothing is lost: a job that could not commit stays unfinished in the journal (or
   * was never accepted) and runs again; results already in the outbox keep going out.
   */
  private enterStoreFull(err: Error): void {
    if (this.storeFull || this.stopping) return;
    const pollMs = this.opts.storeFullPollMs ?? 2000;
    this.storeFull = { since: Date.now(), timer: setInterval(() => void this.probeStore(), pollMs) };
    this.refused = true;
    this.log.error(
      { err: err.message, code: (err as Error & { code?: string }).code, pollMs },
      'state store is full (no space left on its disk): intake paused, captures stay in the inbox; resuming when space returns',
    );
    if (!this.storeFullReported) {
      this.storeFullReported = true;
      this.events.onStoreFull?.(err);
    }
  }

  private async probeStore(): Promise<void> {
    const full = this.storeFull;
    if (!full || this.stopping) return;
    try {
      // The checkpoint first: it truncates the WAL, which is what filled the disk if nothing else did.
      this.store.checkpoint();
      this.store.probeWrite();
      this.store.outbox.flushAcks();
    } catch (err) {
      if (isDiskFull(err)) return; // still full
      this.log.error({ err }, 'state store probe failed');
      return;
    }
    clearInterval(full.timer);
    this.storeFull = undefined;
    const pausedMs = Date.now() - full.since;
    this.log.info({ pausedMs }, 'state store has space again: intake resumed');
    this.events.onStoreRecovered?.(pausedMs);
    // Jobs a full disk interrupted (unfinished in the journal, no longer in memory), then files it
    // refused at intake, then the watcher's waiting files.
    for (const job of this.store.journal.unfinished()) {
      if (this.known.has(job.hash)) continue;
      if (this.load >= this.opts.queueCapacity) break; // the rest come back at the next recovery or start
      this.enqueue(job.hash, job.path);
    }
    for (const hash of [...this.unfinalized]) {
      this.unfinalized.delete(hash);
      const job = this.store.journal.get(hash);
      if (job) await this.finalize(job);
    }
    for (const [p, file] of [...this.parked]) {
      if (!this.offer(file)) break;
      this.parked.delete(p);
    }
    this.refused = false;
    this.events.onRoom?.();
  }

  /** Stops taking jobs and waits for the running ones to finish (queued ones stay in the journal). */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.storeFull) clearInterval(this.storeFull.timer);
    this.queue.length = 0;
    if (this.running > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    await this.decoder.close();
  }

  /** Resolves when nothing is queued or running (tests, benches). */
  async idle(): Promise<void> {
    if (this.running === 0 && this.queue.length === 0 && this.hashing.size === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }
}

/** The state store could not write because its disk is full (SQLite SQLITE_FULL, or ENOSPC from the OS). */
export function isDiskFull(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'SQLITE_FULL' || code === 'ENOSPC';
}

/** An error whose `code` is 'poison-input' (SupervisorError from the inference supervisor). */
function isPoisonInput(err: unknown): boolean {
  return err instanceof Error && (err as Error & { code?: unknown }).code === 'poison-input';
}

export async function hashFile(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}

/** Moves a file, keeping its relative name; adds a hash suffix on a name clash; copies across devices. */
async function moveUnique(from: string, to: string, hash: string): Promise<string> {
  await mkdir(path.dirname(to), { recursive: true });
  let dest = to;
  const exists = await stat(dest).then(
    () => true,
    () => false,
  );
  if (exists) {
    const ext = path.extname(to);
    dest = `${to.slice(0, to.length - ext.length)}.${hash.slice(0, 12)}${ext}`;
  }
  try {
    await rename(from, dest);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await copyFile(from, dest);
    await unlink(from);
  }
  return dest;
}
