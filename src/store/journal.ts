/**
 * Job journal: one row per accepted capture, keyed by the sha256 of its content.
 *
 *   queued -> decoded -> inferred -> published        (results in the outbox until PUBACK)
 *         \-> failed                                  (quarantined with its reason)
 *
 * `finalized` records that the file left the inbox (moved to done/ or quarantine/, or deleted), so a
 * restart between the commit and the move finishes the move instead of redoing the job.
 */
import type Database from 'better-sqlite3';
import type { Db } from './db.js';

export type JobState = 'queued' | 'decoded' | 'inferred' | 'published' | 'failed';

export interface Job {
  hash: string;
  name: string;
  path: string;
  size: number;
  state: JobState;
  attempts: number;
  /** Attempts begun while no other job ran (see Pipeline: a suspect job runs alone). */
  soloAttempts: number;
  errorCode: string | null;
  error: string | null;
  modality: string | null;
  frames: number | null;
  results: number;
  finalized: boolean;
  createdAt: number;
  updatedAt: number;
}

interface JobRow {
  hash: string;
  name: string;
  path: string;
  size: number;
  state: JobState;
  attempts: number;
  solo_attempts: number;
  error_code: string | null;
  error: string | null;
  modality: string | null;
  frames: number | null;
  results: number;
  finalized: number;
  created_at: number;
  updated_at: number;
}

function toJob(r: JobRow): Job {
  return {
    hash: r.hash,
    name: r.name,
    path: r.path,
    size: r.size,
    state: r.state,
    attempts: r.attempts,
    soloAttempts: r.solo_attempts,
    errorCode: r.error_code,
    error: r.error,
    modality: r.modality,
    frames: r.frames,
    results: r.results,
    finalized: r.finalized === 1,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

export type AcceptOutcome =
  /** never seen: a new job */
  | 'new'
  /** seen and not finished: the job goes on (e.g. after a restart) */
  | 'resume'
  /** already published: nothing to do but to take the file out of the inbox */
  | 'duplicate'
  /** failed before and dropped again: a fresh try */
  | 'retry';

export interface OutboxMessage {
  resultId: string | null;
  topic: string;
  payload: string;
}

export class Journal {
  private readonly now: () => number;

  constructor(
    private readonly db: Db,
    now: () => number = Date.now,
  ) {
    this.now = now;
  }

  private readonly statements = new Map<string, Database.Statement>();

  /** Prepared once per SQL text (the journal runs a handful of statements per capture). */
  private q(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.statements.set(sql, st);
    }
    return st;
  }

  get(hash: string): Job | undefined {
    const r = this.q('SELECT * FROM jobs WHERE hash = ?').get(hash) as JobRow | undefined;
    return r ? toJob(r) : undefined;
  }

  /** Registers a complete file found in the inbox. */
  accept(file: { hash: string; name: string; path: string; size: number }): { outcome: AcceptOutcome; job: Job } {
    return this.db.transaction(() => {
      const t = this.now();
      const existing = this.get(file.hash);
      if (!existing) {
        this.db
          .prepare('INSERT INTO jobs(hash, name, path, size, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
          .run(file.hash, file.name, file.path, file.size, 'queued', t, t);
        return { outcome: 'new' as const, job: this.get(file.hash)! };
      }
      if (existing.state === 'published') {
        // Same content again: the job is done. Point the row at this copy so it can be finalized.
        this.q('UPDATE jobs SET path = ?, finalized = 0, updated_at = ? WHERE hash = ?').run(file.path, t, file.hash);
        return { outcome: 'duplicate' as const, job: this.get(file.hash)! };
      }
      if (existing.state === 'failed') {
        this.db
          .prepare(
            "UPDATE jobs SET state = 'queued', name = ?, path = ?, size = ?, attempts = 0, solo_attempts = 0, error = NULL, error_code = NULL, finalized = 0, updated_at = ? WHERE hash = ?",
          )
          .run(file.name, file.path, file.size, t, file.hash);
        return { outcome: 'retry' as const, job: this.get(file.hash)! };
      }
      if (existing.state === 'inferred') {
        // Results are in the outbox; only the move after PUBACK remains.
        this.q('UPDATE jobs SET path = ?, updated_at = ? WHERE hash = ?').run(file.path, t, file.hash);
        return { outcome: 'duplicate' as const, job: this.get(file.hash)! };
      }
      this.q('UPDATE jobs SET path = ?, name = ?, updated_at = ? WHERE hash = ?').run(file.path, file.name, t, file.hash);
      return { outcome: 'resume' as const, job: this.get(file.hash)! };
    })();
  }

  /**
   * Counts a processing attempt before it starts, so a file that kills the process is not retried forever;
   * `solo`: no other job runs beside this one (counted apart: only a death then points at this file).
   */
  beginAttempt(hash: string, solo = false): { attempts: number; soloAttempts: number } {
    this.q('UPDATE jobs SET attempts = attempts + 1, solo_attempts = solo_attempts + ?, updated_at = ? WHERE hash = ?').run(solo ? 1 : 0, this.now(), hash);
    const job = this.get(hash);
    return { attempts: job?.attempts ?? 0, soloAttempts: job?.soloAttempts ?? 0 };
  }

  markDecoded(hash: string, info: { modality: string; frames: number }): void {
    this.db
      .prepare("UPDATE jobs SET state = 'decoded', modality = ?, frames = ?, updated_at = ? WHERE hash = ? AND state IN ('queued','decoded')")
      .run(info.modality, info.frames, this.now(), hash);
  }

  /** Results into the outbox and the job to `inferred`, in one transaction. Returns the outbox seqs. */
  complete(hash: string, messages: OutboxMessage[]): number[] {
    return this.db.transaction(() => {
      const t = this.now();
      const insert = this.q('INSERT INTO outbox(job_hash, result_id, topic, payload, created_at) VALUES (?, ?, ?, ?, ?)');
      const seqs = messages.map((m) => Number(insert.run(hash, m.resultId, m.topic, m.payload, t).lastInsertRowid));
      const state = messages.length > 0 ? 'inferred' : 'published';
      this.db
        .prepare('UPDATE jobs SET state = ?, results = ?, error = NULL, error_code = NULL, updated_at = ? WHERE hash = ?')
        .run(state, messages.length, t, hash);
      return seqs;
    })();
  }

  /** The job failed for good: state `failed` with its reason, and the error message into the outbox. */
  fail(hash: string, code: string, reason: string, message: OutboxMessage | null): void {
    this.db.transaction(() => {
      const t = this.now();
      this.q("UPDATE jobs SET state = 'failed', error_code = ?, error = ?, updated_at = ? WHERE hash = ?").run(code, reason, t, hash);
      if (message) {
        this.db
          .prepare('INSERT INTO outbox(job_hash, result_id, topic, payload, created_at) VALUES (?, ?, ?, ?, ?)')
          .run(hash, message.resultId, message.topic, message.payload, t);
      }
    })();
  }

  markFinalized(hash: string, newPath: string | null): void {
    this.db
      .prepare('UPDATE jobs SET finalized = 1, path = COALESCE(?, path), updated_at = ? WHERE hash = ?')
      .run(newPath, this.now(), hash);
  }

  /**
   * A finished job (published or failed) runs again from `path` (fleet `reprocess`): back to `queued`
   * with fresh attempts; `created_at` restarts so latency counts from now. False when not finished.
   */
  reopen(hash: string, path: string): boolean {
    const t = this.now();
    const r = this.q(
      "UPDATE jobs SET state = 'queued', path = ?, attempts = 0, solo_attempts = 0, error = NULL, error_code = NULL, finalized = 0, results = 0, created_at = ?, updated_at = ? WHERE hash = ? AND state IN ('published','failed')",
    ).run(path, t, t, hash);
    return r.changes === 1;
  }

  /** Jobs to (re)run after a restart: accepted but not yet inferred. */
  unfinished(): Job[] {
    return (this.q("SELECT * FROM jobs WHERE state IN ('queued','decoded') ORDER BY created_at, rowid").all() as JobRow[]).map(toJob);
  }

  /** Finished jobs whose file has not left the inbox yet. */
  pendingFinalize(): Job[] {
    return (
      this.q("SELECT * FROM jobs WHERE finalized = 0 AND state IN ('published','failed') ORDER BY updated_at").all() as JobRow[]
    ).map(toJob);
  }

  counts(): Record<JobState, number> {
    const out: Record<JobState, number> = { queued: 0, decoded: 0, inferred: 0, published: 0, failed: 0 };
    for (const r of this.q('SELECT state, COUNT(*) AS n FROM jobs GROUP BY state').all() as { state: JobState; n: number }[]) {
      out[r.state] = r.n;
    }
    return out;
  }
}
