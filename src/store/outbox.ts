/**
 * Result outbox: every message that must reach the broker (results and error reports) is written
 * here in the same transaction that finishes its job, and deleted only on PUBACK. The MQTT link reads
 * it in seq order, so a broker outage or restart loses nothing and delivery resumes in order.
 */
import type { Db } from './db.js';
import type { Job } from './journal.js';

export interface OutboxEntry {
  seq: number;
  topic: string;
  payload: string;
}

export class Outbox {
  /** Called (synchronously, after the commit) when the last outbox row of an inferred job was acknowledged. */
  onJobPublished: ((hash: string) => void) | undefined;

  private readonly nextStmt;
  private readonly countStmt;
  private readonly ackTx: (seq: number) => string | undefined;

  constructor(private readonly db: Db) {
    this.nextStmt = db.prepare('SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?');
    this.countStmt = db.prepare('SELECT COUNT(*) AS n FROM outbox');
    const del = db.prepare('DELETE FROM outbox WHERE seq = ? RETURNING job_hash');
    const left = db.prepare('SELECT 1 FROM outbox WHERE job_hash = ? LIMIT 1');
    const publish = db.prepare("UPDATE jobs SET state = 'published', updated_at = ? WHERE hash = ? AND state = 'inferred'");
    // PUBACK of a row: delete it and, with the last row of a job, mark the job published, atomically.
    this.ackTx = db.transaction((seq: number): string | undefined => {
      const row = del.get(seq) as { job_hash: string | null } | undefined;
      const hash = row?.job_hash;
      if (!hash || left.get(hash)) return undefined;
      return publish.run(Date.now(), hash).changes > 0 ? hash : undefined;
    });
  }

  next(afterSeq: number, limit: number): OutboxEntry[] {
    return this.nextStmt.all(afterSeq, limit) as OutboxEntry[];
  }

  /** PUBACKs received but not yet recorded (the store's disk was full); oldest first. */
  private readonly pendingAcks = new Set<number>();

  /**
   * Records a PUBACK. When the write fails (disk full) the ack is kept in memory and retried with the
   * next ack or flushAcks(), and the error is thrown to the caller; if the process dies first, the row
   * goes out again after the restart: a duplicate with the same resultId, never a loss.
   */
  ack(seq: number): void {
    this.pendingAcks.add(seq);
    this.flushAcks();
  }

  /** Writes the acks a full disk held back (the pipeline calls it when space returns). */
  flushAcks(): void {
    for (const seq of [...this.pendingAcks]) {
      const published = this.ackTx(seq);
      this.pendingAcks.delete(seq);
      if (published) this.onJobPublished?.(published);
    }
  }

  size(): number {
    return (this.countStmt.get() as { n: number }).n;
  }

  /** Outbox rows of one job (tests and diagnostics). */
  forJob(job: Pick<Job, 'hash'>): OutboxEntry[] {
    return this.db.prepare('SELECT seq, topic, payload FROM outbox WHERE job_hash = ? ORDER BY seq').all(job.hash) as OutboxEntry[];
  }
}
