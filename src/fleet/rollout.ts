/**
 * Model rollout as desired state (issue 6). Central retains a DesiredModel (src/fleet/protocol.ts) on
 * `<base>/<device>/desired/model` or `<base>/group/<group>/desired/model`; this agent converges on it and
 * reports every step on its retained `<base>/<device>/model/state`:
 *
 *   downloading (progress) -> verifying (sha256 of the .tar, unpack, signature by a trusted key, manifest
 *   schema, file hashes; names the desired id/version) -> golden (a new classifier is loaded beside the
 *   serving one: golden inputs + warm-up) -> shadow (optional: the candidate classifies the next N live
 *   images beside the serving model; label agreement below minAgreement stops here) -> activating (the
 *   store's active pointer is switched, then the pipeline; the old model finishes its jobs, then is freed)
 *   -> observing (optional: error rate over the next observeImages images; above maxErrorRate rolls back)
 *   -> active.
 *
 * Any failure ends in `rolled-back` with `reason` (and `failedPhase`): before activation nothing changed
 * (the serving model never stopped), after it the previous version is loaded and swapped back in. `failed`
 * is for a document that cannot be acted on (schema) or a rollback that could not load the previous model.
 * A document whose version is already serving is answered `active`, nothing else. The outcome of a
 * document is remembered (rollout.json), so the retained document delivered again after a reconnect or
 * restart does not start the same failed rollout over; central issues a new document (new rolloutId or
 * issuedAt) to retry.
 *
 * Which document applies: the device's own wins; otherwise the newest `issuedAt` among the agent's groups.
 * An empty retained payload clears that topic's document (a rollout not yet activated is abandoned, the
 * serving model stays). An invalid document is reported `failed` and changes nothing else.
 *
 * Restarts: the rollout in progress is persisted (store rollout.json) at every step. On start, a rollout
 * that had not activated is resumed from the start of its steps (the download continues its .part file,
 * an installed version is re-verified); one that had activated continues observing when the new version
 * is what the store serves (after several restarts in a row during observation it is rolled back: a model
 * that crashes the agent must not stay), or is resumed when the pointer switch had not happened.
 */
import { readFile, statfs } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { Ajv, type ErrorObject } from 'ajv';
import { BundleError, loadBundle } from '../models/bundle.js';
import { loadTrustedKeys, signatureCheck } from '../models/signature.js';
import type { ImageFrame } from '../decode/types.js';
import type { Classifier } from '../pipeline/classifier.js';
import type { ModelInfo } from '../pipeline/result.js';
import { DownloadError, displayUrl, downloadBundle } from './download.js';
import { ModelStore, ModelStoreError, refString, sameRef, type ModelRef } from './model-store.js';
import { MAX_REQUEST_BYTES, fleetTopics, type DesiredModel, type ModelPhase, type ModelState } from './protocol.js';

export interface RolloutOptions {
  deviceId: string;
  baseTopic: string;
  groups: string[];
  /** The model shipped with the agent (config model.bundle): the rollback target before any rollout. */
  shippedBundle: string;
  /** PEM files of the keys trusted to sign bundles (config model.trustedKeys). Rolled-out bundles must be signed. */
  trustedKeys: string[];
  download: { maxBytes: number; timeoutMs: number; ca?: Buffer };
}

/** What the rollout needs from the agent (agent/agent.ts implements it; wiring only). */
export interface RolloutHost {
  /** The model serving now. */
  serving(): ModelInfo | null;
  /** Loads a bundle dir into a new classifier with every check (signature, hashes, golden, warm-up). */
  load(dir: string): Promise<Classifier>;
  /** Serves `next` (pipeline switched at once, old model disposed after its running jobs). */
  swap(next: Classifier, cause: { reason: string; actor: string }): Promise<void>;
  /** Publishes the retained model/state (never rejects). */
  publishState(topic: string, state: ModelState): Promise<void>;
  /** Records a model change in the audit log. */
  audit?(change: { from: ModelRef | null; to: ModelRef | null; reason: string; actor: string }): void;
}

/** A classification the pipeline just made (pipeline event `onClassified`). */
export interface ClassifiedEvent {
  frames: ImageFrame[];
  probabilities: number[][];
  labels: string[];
  model: ModelInfo;
}

/** Pipeline failure codes that are the model's (or runtime's) fault; input faults (decode...) are not counted. */
const MODEL_FAILURE_CODES = new Set(['processing-failed', 'poison-input', 'too-many-attempts']);

const DEFAULT_MIN_AGREEMENT = 0.9;
const DEFAULT_MAX_ERROR_RATE = 0.1;
/** Longest `reason` put on model/state (the full text is in the agent's log). */
const MAX_REASON = 2000;
/** Restarts in a row while observing a new version before it is rolled back. */
const MAX_OBSERVE_RESTARTS = 3;

const semver =
  '^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)(?:-((?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\\.(?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\\+([0-9a-zA-Z-]+(?:\\.[0-9a-zA-Z-]+)*))?$';

/** JSON Schema of DesiredModel. Unknown top-level keys are allowed (newer central), known ones are strict. */
export const desiredModelSchema = {
  type: 'object',
  required: ['rolloutId', 'id', 'version', 'url', 'sha256', 'size', 'issuedAt'],
  properties: {
    rolloutId: { type: 'string', minLength: 1, maxLength: 128 },
    id: { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' },
    version: { type: 'string', maxLength: 128, pattern: semver },
    url: { type: 'string', maxLength: 4096, pattern: '^https?://[^\\s]+$' },
    sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
    size: { type: 'integer', minimum: 1 },
    issuedAt: { type: 'string', pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?(Z|[+-]\\d{2}:\\d{2})$' },
    policy: {
      type: 'object',
      additionalProperties: false,
      properties: {
        shadowImages: { type: 'integer', minimum: 0, maximum: 100000 },
        minAgreement: { type: 'number', minimum: 0, maximum: 1 },
        observeImages: { type: 'integer', minimum: 0, maximum: 100000 },
        maxErrorRate: { type: 'number', minimum: 0, maximum: 1 },
      },
    },
  },
} as const;

const ajv = new Ajv({ allErrors: true, strict: true });
const validateDesired = ajv.compile<DesiredModel>(desiredModelSchema);

function schemaErrors(errors: ErrorObject[] | null | undefined): string {
  return (errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? 'is invalid'}`).join('; ');
}

/** Parses and validates a desired/model payload: the document, null for an empty (clearing) payload, or an error. */
export function parseDesired(payload: Buffer): { ok: true; doc: DesiredModel | null } | { ok: false; error: string } {
  if (payload.length === 0) return { ok: true, doc: null };
  if (payload.length > MAX_REQUEST_BYTES) return { ok: false, error: `document is ${payload.length} bytes (limit ${MAX_REQUEST_BYTES})` };
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch (e) {
    return { ok: false, error: `not valid JSON: ${(e as Error).message}` };
  }
  if (!validateDesired(v)) return { ok: false, error: `invalid desired model document: ${schemaErrors(validateDesired.errors)}` };
  if (Number.isNaN(Date.parse(v.issuedAt))) return { ok: false, error: 'invalid desired model document: /issuedAt is not a date' };
  return { ok: true, doc: v };
}

/** Identity of one desired document: a new rolloutId, bundle or issuedAt is a new attempt. */
export function desiredKey(d: DesiredModel): string {
  return `${d.rolloutId}|${d.id}@${d.version}|${d.sha256}|${d.issuedAt}`;
}

/** Persisted in the store's rollout.json. */
interface RolloutRecord {
  current: {
    desired: DesiredModel;
    phase: ModelPhase;
    restarts: number;
    startedAt: string;
    /** The store's pointers before activation: an automatic rollback restores them. */
    before?: { active: ModelRef | null; previous: ModelRef | null };
  } | null;
  /** Terminal outcome of the last document handled (not restarted when the same document comes again). */
  last: { key: string; state: ModelState } | null;
}

class RolloutFailure extends Error {
  constructor(
    readonly phase: ModelPhase,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

class Superseded extends Error {}

interface ShadowRun {
  candidate: Classifier;
  want: number;
  compared: number;
  agreeFrames: number;
  frames: number;
  running: number;
  error: string | null;
  done: () => void;
}

interface ObserveRun {
  want: number;
  maxErrorRate: number;
  seen: number;
  errors: number;
  done: () => void;
}

export class RolloutManager {
  private readonly topics: ReturnType<typeof fleetTopics>;
  private readonly docs = new Map<string, DesiredModel>();
  private record: RolloutRecord = { current: null, last: null };
  private lastState: ModelState | null = null;
  /** The document being worked on (key) and a way to interrupt a wait (shadow, observe). */
  private working: { key: string; interrupt: (e: Error) => void; activated: boolean } | null = null;
  /** Rollout work, one piece at a time; closed until start() has read the persisted record. */
  private queue: Promise<void>;
  private openGate: () => void = () => undefined;
  private shadow: ShadowRun | null = null;
  private observe: ObserveRun | null = null;
  private stopped = false;
  private lastProgressPct = -1;
  /** A command waits for the rollout work: an activation in progress skips its observation. */
  private commandWaiting: string | null = null;

  constructor(
    private readonly opts: RolloutOptions,
    readonly store: ModelStore,
    private readonly host: RolloutHost,
    private readonly log: Logger,
  ) {
    this.topics = fleetTopics(opts.baseTopic);
    this.queue = new Promise<void>((resolve) => (this.openGate = resolve));
  }

  /** Filters to subscribe (device first, then each group). */
  get filters(): string[] {
    return [this.topics.desiredModel(this.opts.deviceId), ...this.opts.groups.map((g) => this.topics.groupDesiredModel(g))];
  }

  get stateTopic(): string {
    return this.topics.modelState(this.opts.deviceId);
  }

  /** The last state reported (republished after a reconnect by the caller if it wishes). */
  get state(): ModelState | null {
    return this.lastState;
  }

  /**
   * Reads the persisted record and resumes (or reports) a rollout interrupted by a restart. Documents
   * that arrived before (retained ones, at connect) are handled after it, in order. Does not wait for the
   * resumed rollout.
   */
  async start(): Promise<void> {
    const rec = await this.store.loadRollout<RolloutRecord>();
    if (rec && typeof rec === 'object') this.record = { current: rec.current ?? null, last: rec.last ?? null };
    const cur = this.record.current;
    let first: (() => Promise<void>) | null = null;
    if (!cur) {
      const last = this.record.last?.state;
      await this.report(last ? { ...last, serving: this.servingRef(), at: new Date().toISOString() } : this.baseState('idle', null));
    } else {
      const serving = this.host.serving();
      const target = { id: cur.desired.id, version: cur.desired.version };
      this.log.warn({ rolloutId: cur.desired.rolloutId, phase: cur.phase, target: refString(target) }, 'agent restarted during a model rollout; resuming it');
      if ((cur.phase === 'activating' || cur.phase === 'observing') && sameRef(serving, target)) {
        cur.restarts++;
        await this.saveRecord();
        const restarts = cur.restarts;
        first =
          restarts >= MAX_OBSERVE_RESTARTS
            ? () => this.rollbackAfterActivation(cur.desired, 'observing', 'restarts', `the agent restarted ${restarts} times in a row while serving ${refString(target)}`)
            : () => this.finishActivated(cur.desired, true);
      } else {
        first = () => this.run(cur.desired, true);
      }
    }
    const open = this.openGate;
    if (!first) {
      open();
      return;
    }
    const job = first;
    void job()
      .catch((e: unknown) => this.log.error({ err: e }, 'resumed model rollout failed unexpectedly'))
      .finally(open);
  }

  /** Handler for a message on one of `filters`. Never throws. */
  async onMessage(topic: string, payload: Buffer): Promise<void> {
    if (this.stopped) return;
    const parsed = parseDesired(payload);
    if (!parsed.ok) {
      let rolloutId: string | null = null;
      try {
        const v = JSON.parse(payload.toString('utf8')) as { rolloutId?: unknown };
        if (typeof v.rolloutId === 'string') rolloutId = v.rolloutId.slice(0, 128);
      } catch {
        // not JSON: no rollout id to echo
      }
      await this.refuse(topic, parsed.error, rolloutId);
      return;
    }
    if (parsed.doc) this.docs.set(topic, parsed.doc);
    else this.docs.delete(topic);
    this.evaluate();
  }

  /** Reports a desired document that cannot be acted on (`failed`); nothing else changes. */
  async refuse(topic: string, error: string, rolloutId: string | null = null): Promise<void> {
    this.log.warn({ topic, error }, 'desired model document refused');
    const keep = this.lastState;
    await this.report({ ...this.baseState('failed', null), rolloutId, reason: `${topic}: ${error}`, failedPhase: 'idle', code: 'invalid-document' });
    // the refusal does not change what this agent is doing: report the ongoing step again
    if (keep && this.working) await this.report({ ...keep, at: new Date().toISOString() });
  }

  /** The document that applies: the device's own, else the newest issuedAt among the groups. */
  effective(): DesiredModel | null {
    const own = this.docs.get(this.topics.desiredModel(this.opts.deviceId));
    if (own) return own;
    let best: DesiredModel | null = null;
    for (const g of this.opts.groups) {
      const d = this.docs.get(this.topics.groupDesiredModel(g));
      if (d && (!best || Date.parse(d.issuedAt) > Date.parse(best.issuedAt))) best = d;
    }
    return best;
  }

  private evaluate(): void {
    const doc = this.effective();
    const key = doc ? desiredKey(doc) : null;
    if (this.working && this.working.key !== key && !this.working.activated) {
      // a different (or no) desired state: abandon the rollout that has not changed anything yet
      this.working.interrupt(new Superseded(doc ? `superseded by rollout ${doc.rolloutId}` : 'desired state cleared'));
    } else if (this.working && this.working.key !== key && this.observe) {
      // observing a version already serving: a newer document ends the watch (the version stays)
      this.working.interrupt(new Superseded('observation cut short by a newer desired state'));
    }
    if (!doc || !key) return;
    this.enqueue(key, () => this.handle(doc));
  }

  /** Runs rollout work one piece at a time (a job checks itself whether its document still applies). */
  private enqueue(key: string, job: () => Promise<void>): void {
    this.queue = this.queue.then(async () => {
      if (this.stopped) return;
      try {
        await job();
      } catch (e) {
        this.log.error({ err: e }, 'model rollout step failed unexpectedly');
      }
    });
  }

  /** Waits for queued work (tests, stop). */
  idle(): Promise<void> {
    return this.queue;
  }

  private async handle(doc: DesiredModel): Promise<void> {
    const eff = this.effective();
    if (!eff || desiredKey(eff) !== desiredKey(doc)) return;
    const key = desiredKey(doc);
    if (this.record.current && desiredKey(this.record.current.desired) === key) return; // already resumed from the record
    if (this.record.last?.key === key) {
      // the same document again (reconnect, restart): its outcome stands
      this.log.info({ rolloutId: doc.rolloutId, phase: this.record.last.state.phase }, 'desired model document already handled; its outcome stands');
      await this.report({ ...this.record.last.state, serving: this.servingRef(), at: new Date().toISOString() });
      return;
    }
    const serving = this.host.serving();
    if (sameRef(serving, doc)) {
      this.log.info({ rolloutId: doc.rolloutId, version: doc.version }, 'desired model version is already serving');
      await this.finish(doc, { ...this.baseState('active', doc), reason: 'already serving this version' });
      return;
    }
    await this.run(doc, false);
  }

  /** All steps of one rollout up to activation; failures before activation change nothing. */
  private async run(doc: DesiredModel, resumed: boolean): Promise<void> {
    const key = desiredKey(doc);
    const target: ModelRef = { id: doc.id, version: doc.version };
    let candidate: Classifier | null = null;
    let interruptWith: ((e: Error) => void) | null = null;
    const interrupted = new Promise<never>((_, reject) => (interruptWith = reject));
    interrupted.catch(() => undefined);
    const abort = new AbortController();
    let interruptReason: Error | null = null;
    this.working = {
      key,
      activated: false,
      interrupt: (e) => {
        interruptReason ??= e;
        abort.abort();
        interruptWith?.(e);
      },
    };
    const race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, interrupted]);
    this.record.current = { desired: doc, phase: 'downloading', restarts: 0, startedAt: new Date().toISOString() };
    this.log.info({ rolloutId: doc.rolloutId, target: refString(target), url: displayUrl(doc.url), resumed }, 'model rollout started');
    let phase: ModelPhase = 'downloading';
    try {
      // 1. download (skipped when this version is installed already: verified again below)
      const installed = this.store.has(target);
      let tar: string | null = null;
      if (!installed) {
        await this.step(doc, 'downloading', resumed ? 'resuming after a restart' : null);
        this.lastProgressPct = -1;
        // room for the archive and its unpacked copy (the serving model and the state store need theirs)
        const fs = await statfs(this.store.root).catch(() => null);
        if (fs && fs.bavail * fs.bsize < 2 * doc.size + 64 * 1024 * 1024) {
          throw new RolloutFailure(
            'downloading',
            'no-space',
            `${fs.bavail * fs.bsize} bytes free in ${this.store.root}; a ${doc.size}-byte bundle needs about ${2 * doc.size + 64 * 1024 * 1024}`,
          );
        }
        let downloading: Promise<unknown> = Promise.resolve();
        try {
          const r = await race(
            (downloading = downloadBundle({
              url: doc.url,
              dest: this.store.downloadPath(doc.sha256),
              sha256: doc.sha256,
              size: doc.size,
              maxBytes: this.opts.download.maxBytes,
              timeoutMs: this.opts.download.timeoutMs,
              ...(this.opts.download.ca ? { ca: this.opts.download.ca } : {}),
              signal: abort.signal,
              onProgress: (bytes, total) => this.progress(doc, bytes, total),
            })),
          );
          tar = r.file;
          this.log.info({ bytes: r.bytes, resumedFrom: r.resumedFrom, requests: r.requests }, 'model bundle downloaded and its sha256 verified');
        } catch (e) {
          // interrupted: let the aborted transfer finish writing its partial file before going on
          await downloading.catch(() => undefined);
          if (e instanceof DownloadError) throw new RolloutFailure('downloading', e.code, e.message);
          throw e;
        }
      }

      // 2. verify: unpack to staging, signature + schema + hashes, id/version; rename into the store
      phase = 'verifying';
      await this.step(doc, 'verifying', installed ? 'version already installed: verifying it again' : null);
      const dir = this.store.dirOf(target);
      try {
        if (tar) await race(this.store.install(tar, target, (d) => this.verify(d), doc.sha256));
        else await race(this.verify(dir));
      } catch (e) {
        if (e instanceof BundleError || e instanceof ModelStoreError) throw new RolloutFailure('verifying', e.code, e.message);
        if (e instanceof Superseded) throw e;
        throw new RolloutFailure('verifying', 'unpack-failed', (e as Error).message);
      }
      if (tar) await this.store.cleanDownloads();

      // 3. golden: a new classifier beside the serving one
      phase = 'golden';
      await this.step(doc, 'golden', null);
      try {
        const loading = this.host.load(dir);
        // interrupted while loading: the candidate still arrives later and must be freed
        loading.catch(() => undefined);
        candidate = await race(loading).catch((e: unknown) => {
          void loading.then((c) => c.dispose()).catch(() => undefined);
          throw e;
        });
      } catch (e) {
        if (e instanceof Superseded) throw e;
        throw new RolloutFailure('golden', e instanceof BundleError ? e.code : 'load-failed', (e as Error).message);
      }

      // 4. shadow
      const shadowImages = doc.policy?.shadowImages ?? 0;
      if (shadowImages > 0) {
        phase = 'shadow';
        await this.step(doc, 'shadow', `comparing with the serving model on the next ${shadowImages} images`, { shadow: { compared: 0, agreement: 1 } });
        const s = await race(this.runShadow(candidate, shadowImages));
        const min = doc.policy?.minAgreement ?? DEFAULT_MIN_AGREEMENT;
        if (s.error) throw new RolloutFailure('shadow', 'candidate-failed', `the candidate failed on a live image: ${s.error}`);
        if (s.agreement < min) {
          throw new RolloutFailure(
            'shadow',
            'low-agreement',
            `shadow agreement ${s.agreement.toFixed(3)} over ${s.compared} images is below minAgreement ${min}`,
          );
        }
      }
    } catch (err) {
      this.shadow = null;
      if (candidate) await candidate.dispose().catch(() => undefined);
      this.working = null;
      const e = interruptReason ?? err;
      if (this.stopped) return; // the agent stops: the record stays, the next start resumes
      if (e instanceof Superseded) {
        this.log.info({ rolloutId: doc.rolloutId, reason: e.message }, 'model rollout abandoned before activation; the serving model stays');
        await this.finish(doc, { ...this.baseState('idle', doc), reason: e.message }, false);
        return;
      }
      const f = e instanceof RolloutFailure ? e : new RolloutFailure(phase, 'internal', (e as Error).message);
      this.log.error({ rolloutId: doc.rolloutId, phase: f.phase, code: f.code, reason: f.message }, 'model rollout refused; the serving model stays');
      // a version refused at golden or shadow is of no use on disk (activate would refuse it again)
      if (this.store.has(target) && !sameRef(target, this.store.active) && !sameRef(target, this.store.previous)) {
        await this.store.remove(target).catch((e: unknown) => this.log.warn({ err: e }, 'could not remove the refused version'));
      }
      const serving = this.servingRef();
      this.host.audit?.({ from: serving, to: null, reason: `rollout ${doc.rolloutId} of ${refString(target)} refused at ${f.phase} (${f.code})`, actor: 'central' });
      await this.finish(doc, {
        ...this.baseState('rolled-back', doc),
        previous: serving ? { id: serving.id, version: serving.version } : null,
        reason: `${f.phase}: ${f.code}: ${f.message}`,
        failedPhase: f.phase,
        code: f.code,
      });
      return;
    }

    // 5. activate: pointer first (a crash from here on restarts on the new version), then the pipeline
    this.working.activated = true;
    if (this.record.current) this.record.current.before = { active: this.store.active, previous: this.store.previous };
    await this.step(doc, 'activating', null);
    const from = this.host.serving();
    await this.store.setActive(target);
    await this.host.swap(candidate, { reason: `rollout ${doc.rolloutId}: activated`, actor: 'central' });
    this.log.info({ rolloutId: doc.rolloutId, from: from && refString(from), to: refString(target) }, 'model rollout activated the new version');
    await this.finishActivated(doc, false);
  }

  /** After activation: observe (optional), then active; a failed observation rolls back. */
  private async finishActivated(doc: DesiredModel, resumed: boolean): Promise<void> {
    const key = desiredKey(doc);
    const want = doc.policy?.observeImages ?? 0;
    if (want > 0 && this.commandWaiting) {
      this.working = null;
      await this.finish(doc, { ...this.baseState('active', doc), reason: `observation skipped: interrupted by the ${this.commandWaiting} command` });
      return;
    }
    if (want > 0) {
      let interruptWith: ((e: Error) => void) | null = null;
      const interrupted = new Promise<never>((_, reject) => (interruptWith = reject));
      interrupted.catch(() => undefined);
      this.working = { key, activated: true, interrupt: (e) => interruptWith?.(e) };
      const maxErrorRate = doc.policy?.maxErrorRate ?? DEFAULT_MAX_ERROR_RATE;
      await this.step(doc, 'observing', `${resumed ? 'resumed after a restart: ' : ''}watching the error rate over the next ${want} images (max ${maxErrorRate})`);
      let verdict: { seen: number; errors: number };
      try {
        verdict = await Promise.race([this.runObserve(want, maxErrorRate), interrupted]);
      } catch (e) {
        this.observe = null;
        if (!(e instanceof Superseded)) throw e;
        this.working = null;
        if (this.stopped) return; // resumed (observation starts over) at the next start
        await this.finish(doc, { ...this.baseState('active', doc), reason: e.message });
        return;
      }
      const rate = verdict.seen ? verdict.errors / verdict.seen : 0;
      if (rate > maxErrorRate) {
        await this.rollbackAfterActivation(
          doc,
          'observing',
          'error-rate',
          `error rate ${rate.toFixed(3)} (${verdict.errors} of ${verdict.seen} images) after activation is above maxErrorRate ${maxErrorRate}`,
        );
        return;
      }
    }
    this.working = null;
    await this.finish(doc, { ...this.baseState('active', doc), reason: null });
    const removed = await this.store.prune().catch((e: unknown) => {
      this.log.warn({ err: e }, 'could not prune old model versions');
      return [];
    });
    if (removed.length) this.log.info({ removed: removed.map(refString) }, 'old model versions removed (fleet.keepVersions)');
  }

  /** The new version served and misbehaved: load the previous one (or the shipped model) and swap it back. */
  private async rollbackAfterActivation(doc: DesiredModel, phase: ModelPhase, code: string, why: string): Promise<void> {
    this.working = null;
    const failed: ModelRef = { id: doc.id, version: doc.version };
    const prev = this.store.previous && !sameRef(this.store.previous, failed) ? this.store.previous : null;
    // the pointers as they were before the activation (the misbehaving version is not a rollback target)
    const before = this.record.current?.before?.previous ?? null;
    const previousAfter = before && !sameRef(before, failed) && !sameRef(before, prev) ? before : null;
    this.log.error({ rolloutId: doc.rolloutId, phase, code, reason: why, to: prev ? refString(prev) : 'shipped model' }, 'rolling back the new model version');
    const outcome = await this.switchTo(prev, { reason: `rollback of rollout ${doc.rolloutId}: ${why}`, actor: 'agent' }, previousAfter);
    if (!outcome.ok) {
      await this.finish(doc, {
        ...this.baseState('failed', doc),
        reason: `${phase}: ${code}: ${why}; rollback failed too (${outcome.error}), ${refString(failed)} keeps serving`,
        failedPhase: phase,
        code,
      });
      return;
    }
    await this.store.remove(failed).catch((e: unknown) => this.log.warn({ err: e }, 'could not remove the rolled-back version'));
    const serving = this.servingRef();
    await this.finish(doc, {
      ...this.baseState('rolled-back', doc),
      previous: serving ? { id: serving.id, version: serving.version } : null,
      reason: `${phase}: ${code}: ${why}`,
      failedPhase: phase,
      code,
    });
  }

  /**
   * Loads and serves an installed version (null: the shipped bundle); the store's active pointer follows,
   * and `previousAfter` becomes the previous one (the rollback target).
   */
  private async switchTo(ref: ModelRef | null, cause: { reason: string; actor: string }, previousAfter: ModelRef | null): Promise<{ ok: true } | { ok: false; error: string }> {
    const dir = ref ? this.store.dirOf(ref) : this.opts.shippedBundle;
    let next: Classifier;
    try {
      if (ref) await this.verify(dir);
      next = await this.host.load(dir);
    } catch (e) {
      return { ok: false, error: (e as Error).message };
    }
    await this.store.setActive(ref, previousAfter && this.store.has(previousAfter) && !sameRef(previousAfter, ref) ? previousAfter : null);
    await this.host.swap(next, cause);
    return { ok: true };
  }

  /** Signature (trusted key required: a rolled-out bundle is never accepted unsigned), schema, file hashes. */
  private async verify(dir: string): Promise<void> {
    const trustedKeys = await loadTrustedKeys(this.opts.trustedKeys);
    await loadBundle(dir, { manifestChecks: [signatureCheck({ trustedKeys, allowUnsigned: false })] });
  }

  private runShadow(candidate: Classifier, want: number): Promise<{ compared: number; agreement: number; error: string | null }> {
    return new Promise((resolve) => {
      const s: ShadowRun = {
        candidate,
        want,
        compared: 0,
        agreeFrames: 0,
        frames: 0,
        running: 0,
        error: null,
        done: () => {
          this.shadow = null;
          resolve({ compared: s.compared, agreement: s.frames ? s.agreeFrames / s.frames : 1, error: s.error });
        },
      };
      this.shadow = s;
    });
  }

  private runObserve(want: number, maxErrorRate: number): Promise<{ seen: number; errors: number }> {
    return new Promise((resolve) => {
      const o: ObserveRun = {
        want,
        maxErrorRate,
        seen: 0,
        errors: 0,
        done: () => {
          this.observe = null;
          resolve({ seen: o.seen, errors: o.errors });
        },
      };
      this.observe = o;
    });
  }

  /** Pipeline hook: a capture was classified by the serving model (shadow comparison, observation). */
  onClassified(e: ClassifiedEvent): void {
    const o = this.observe;
    if (o) {
      o.seen++;
      this.checkObserve(o);
    }
    const s = this.shadow;
    if (!s || s.compared + s.running >= s.want) return;
    s.running++;
    const doc = this.record.current?.desired;
    void s.candidate
      .classify(e.frames)
      .then((out) => {
        for (let i = 0; i < e.probabilities.length; i++) {
          const a = argmax(e.probabilities[i] ?? []);
          const b = argmax(out.probabilities[i] ?? []);
          s.frames++;
          if (a >= 0 && e.labels[a] === s.candidate.labels[b]) s.agreeFrames++;
        }
      })
      .catch((err: unknown) => {
        s.error ??= (err as Error).message;
      })
      .finally(() => {
        s.running--;
        s.compared++;
        if (this.shadow !== s) return;
        const agreement = s.frames ? s.agreeFrames / s.frames : 1;
        if (doc) void this.step(doc, 'shadow', null, { shadow: { compared: s.compared, agreement } }, false);
        if (s.error || s.compared >= s.want) s.done();
      });
  }

  /** Pipeline hook: a capture failed (quarantined); model-caused failures count in observation. */
  onFailure(code: string): void {
    const o = this.observe;
    if (!o || !MODEL_FAILURE_CODES.has(code)) return;
    o.seen++;
    o.errors++;
    this.checkObserve(o);
  }

  private checkObserve(o: ObserveRun): void {
    const doc = this.record.current?.desired;
    // stop early once the error budget of the whole window is spent
    if (o.errors > o.maxErrorRate * o.want || o.seen >= o.want) o.done();
    else if (doc) void this.step(doc, 'observing', `${o.seen} of ${o.want} images, ${o.errors} errors`, {}, false);
  }

  private progress(doc: DesiredModel, bytes: number, total: number): void {
    const pct = Math.floor((100 * bytes) / Math.max(1, total));
    if (pct === this.lastProgressPct || (pct < this.lastProgressPct + 5 && bytes < total)) return;
    this.lastProgressPct = pct;
    void this.step(doc, 'downloading', null, { progress: { bytes, total } }, false);
  }

  // --- commands (registered in the command router by the agent) ---

  /** `models`: installed versions, the active and previous ones, and what serves now. */
  models(): {
    serving: ModelInfo | null;
    active: ModelRef | null;
    previous: ModelRef | null;
    shipped: string;
    installed: { id: string; version: string; installedAt: string; sha256: string | null; active: boolean; previous: boolean }[];
    rollout: { rolloutId: string; phase: ModelPhase; target: ModelRef } | null;
  } {
    const cur = this.record.current;
    return {
      serving: this.host.serving(),
      active: this.store.active,
      previous: this.store.previous,
      shipped: this.opts.shippedBundle,
      installed: this.store.list().map((m) => ({ id: m.id, version: m.version, installedAt: m.installedAt, sha256: m.sha256, active: m.active, previous: m.previous })),
      rollout: cur ? { rolloutId: cur.desired.rolloutId, phase: cur.phase, target: { id: cur.desired.id, version: cur.desired.version } } : null,
    };
  }

  /** `activate {version}`: serves an installed version (verified and golden-checked again first). */
  activate(version: string, actor = 'central', id?: string): Promise<ModelInfo> {
    return this.command('activate', async () => {
      const ref = await this.resolveVersion(version, id);
      const serving = this.host.serving();
      if (sameRef(serving, ref ?? (await this.shippedRef())) && sameRef(this.store.active, ref)) return serving!;
      const r = await this.switchTo(ref, { reason: `activate command: ${ref ? refString(ref) : 'shipped model'}`, actor }, this.store.active);
      if (!r.ok) throw new Error(`${ref ? refString(ref) : 'the shipped model'} refused, the current model keeps serving: ${r.error}`);
      await this.reportManual(`activated by command (${actor})`);
      return this.host.serving()!;
    });
  }

  /** `rollback {version?}`: back to `version`, else to the previous version (or the shipped model). */
  rollback(version?: string, actor = 'central'): Promise<ModelInfo> {
    return this.command('rollback', async () => {
      let ref: ModelRef | null;
      if (version) {
        ref = await this.resolveVersion(version);
      } else {
        if (!this.store.active) throw new Error('nothing to roll back: the shipped model is serving and no previous version is recorded');
        ref = this.store.previous;
      }
      const leaving = this.store.active;
      const r = await this.switchTo(ref, { reason: `rollback command${version ? ` to ${version}` : ''}`, actor }, leaving);
      if (!r.ok) throw new Error(`rollback refused, the current model keeps serving: ${r.error}`);
      await this.reportManual(`rolled back by command (${actor})`, 'rolled-back', leaving);
      return this.host.serving()!;
    });
  }

  /** An installed version, or null for the shipped bundle's version (central rolls back to what a device served). */
  private async resolveVersion(version: string, id?: string): Promise<ModelRef | null> {
    const matches = this.store.list().filter((m) => m.version === version && (!id || m.id === id));
    if (matches.length) return matches[matches.length - 1]!;
    const shipped = await this.shippedRef();
    if (shipped && shipped.version === version && (!id || shipped.id === id)) return null;
    const have = [...this.store.list().map(refString), ...(shipped ? [`${refString(shipped)} (shipped)`] : [])];
    throw new Error(`version ${version} is not installed (installed: ${have.join(', ') || 'none'})`);
  }

  private async shippedRef(): Promise<ModelRef | null> {
    try {
      const m = JSON.parse(await readFile(path.join(this.opts.shippedBundle, 'manifest.json'), 'utf8')) as Partial<ModelRef>;
      return typeof m.id === 'string' && typeof m.version === 'string' ? { id: m.id, version: m.version } : null;
    } catch {
      return null;
    }
  }

  /**
   * Commands run one at a time with the rollout work. A rollout in progress is interrupted first: one
   * not yet activated is abandoned (nothing changed), an observation ends with the version kept; an
   * activation in progress is waited for. The operator's choice then stands (see reportManual).
   */
  private command<T>(name: string, fn: () => Promise<T>): Promise<T> {
    this.commandWaiting = name;
    this.working?.interrupt(new Superseded(`interrupted by the ${name} command`));
    const p = this.queue.then(() => {
      this.commandWaiting = null;
      return fn();
    });
    this.queue = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  private async reportManual(reason: string, phase: ModelPhase = 'active', leaving: ModelRef | null = null): Promise<void> {
    const serving = this.servingRef();
    const state: ModelState = {
      ...this.baseState(phase, null),
      target: serving ? { id: serving.id, version: serving.version } : null,
      previous: leaving,
      reason,
    };
    // the retained desired document, if any, must not undo an operator's choice on the next reconnect or
    // restart: it counts as handled, and this state (not the rollout's) is what is restated then
    const eff = this.effective();
    if (eff) this.record.last = { key: desiredKey(eff), state };
    await this.saveRecord();
    await this.report(state);
  }

  /** Stops work in progress; the persisted record is kept so that the next start resumes it. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.working?.interrupt(new Superseded('agent stopping'));
    this.openGate(); // stopped before start(): queued work returns at once
    await this.queue;
  }

  // --- state reporting ---

  private servingRef(): ModelState['serving'] {
    const s = this.host.serving();
    return s ? { id: s.id, version: s.version, sha256: s.sha256 } : null;
  }

  private baseState(phase: ModelPhase, doc: DesiredModel | null): ModelState {
    return {
      deviceId: this.opts.deviceId,
      rolloutId: doc?.rolloutId ?? null,
      phase,
      serving: this.servingRef(),
      target: doc ? { id: doc.id, version: doc.version } : null,
      previous: null,
      reason: null,
      shadow: null,
      progress: null,
      at: new Date().toISOString(),
    };
  }

  /** Reports a step (and persists it when `persist`), keeping shadow/progress detail of the same step. */
  private async step(doc: DesiredModel, phase: ModelPhase, reason: string | null, extra: Partial<ModelState> = {}, persist = true): Promise<void> {
    if (persist && this.record.current) {
      this.record.current.phase = phase;
      await this.saveRecord();
      this.log.info({ rolloutId: doc.rolloutId, phase, target: `${doc.id}@${doc.version}`, reason }, `model rollout: ${phase}`);
    }
    await this.report({ ...this.baseState(phase, doc), reason, ...extra });
  }

  /** Terminal outcome of a document: persisted (so it is not retried) and reported. */
  private async finish(doc: DesiredModel, state: ModelState, remember = true): Promise<void> {
    this.record.current = null;
    if (remember) this.record.last = { key: desiredKey(doc), state };
    await this.saveRecord();
    this.log.info({ rolloutId: doc.rolloutId, phase: state.phase, reason: state.reason, serving: state.serving }, `model rollout ${state.phase}`);
    await this.report(state);
  }

  private async saveRecord(): Promise<void> {
    try {
      await this.store.saveRollout(this.record.current || this.record.last ? this.record : null);
    } catch (e) {
      this.log.error({ err: e }, 'could not persist the rollout state');
    }
  }

  private async report(state: ModelState): Promise<void> {
    // a reason can list every runtime's golden failure: keep the retained document small
    if (state.reason && state.reason.length > MAX_REASON) state = { ...state, reason: `${state.reason.slice(0, MAX_REASON - 1)}…` };
    this.lastState = state;
    await this.host.publishState(this.stateTopic, state);
  }
}

function argmax(v: number[]): number {
  let best = -1;
  let bestV = -Infinity;
  for (let i = 0; i < v.length; i++) {
    if ((v[i] as number) > bestV) {
      bestV = v[i] as number;
      best = i;
    }
  }
  return best;
}

/** The part of the command router (src/fleet/commands.ts) the rollout commands need. */
export interface RolloutCommandRouter {
  register(name: string, dataSchema: object, handler: (data: unknown, ctx: { sender: string | null }) => unknown, opts?: { exclusive?: boolean }): void;
}

const versionArg = { type: 'string', minLength: 1, maxLength: 128, pattern: semver } as const;

/**
 * Registers `models`, `activate {version, id?}` and `rollback {version?}` (docs/MQTT.md "Commands").
 * `activate`/`rollback` answer with the model now serving, or an error (the serving model then stays).
 */
export function registerRolloutCommands(router: RolloutCommandRouter, rollout: RolloutManager): void {
  router.register('models', { type: 'object', additionalProperties: false }, () => rollout.models(), { exclusive: false });
  router.register(
    'activate',
    {
      type: 'object',
      additionalProperties: false,
      required: ['version'],
      properties: { version: versionArg, id: desiredModelSchema.properties.id },
    },
    async (data, ctx) => {
      const d = data as { version: string; id?: string };
      return { serving: await rollout.activate(d.version, ctx.sender ?? 'central', d.id) };
    },
  );
  router.register('rollback', { type: 'object', additionalProperties: false, properties: { version: versionArg } }, async (data, ctx) => {
    const d = (data ?? {}) as { version?: string };
    return { serving: await rollout.rollback(d.version, ctx.sender ?? 'central') };
  });
}
