import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { openDatabase, getMeta, setMeta, type Db } from './db.js';
import { Journal } from './journal.js';
import { Outbox } from './outbox.js';
import { AuditLog } from './audit.js';

export { Journal, type Job, type JobState, type AcceptOutcome, type OutboxMessage } from './journal.js';
export { Outbox, type OutboxEntry } from './outbox.js';
export {
  AuditLog,
  AUDIT_KINDS,
  payloadSha256,
  type AuditKind,
  type AuditEntry,
  type AuditQuery,
  type AuditResultInput,
  type AuditCommandInput,
  type AuditModelChangeInput,
  type ModelRef,
} from './audit.js';

export class StateStore {
  readonly journal: Journal;
  readonly outbox: Outbox;
  /** Append-only record of results, commands and model changes (src/store/audit.ts). */
  readonly audit: AuditLog;

  private constructor(readonly db: Db) {
    this.journal = new Journal(db);
    this.outbox = new Outbox(db);
    this.audit = new AuditLog(db);
  }

  static open(stateDir: string): StateStore {
    return new StateStore(openDatabase(stateDir));
  }

  /**
   * Salt for hashing DICOM UIDs: from the configured file, else generated once and kept in the store,
   * so the same study hashes the same way on this device across restarts (and differently elsewhere).
   */
  uidSalt(saltFile: string): string {
    if (saltFile) return readFileSync(saltFile, 'utf8').trim();
    let salt = getMeta(this.db, 'uid_salt');
    if (!salt) {
      salt = randomBytes(32).toString('hex');
      setMeta(this.db, 'uid_salt', salt);
    }
    return salt;
  }

  /**
   * A small real write (one meta row, committed): throws SQLITE_FULL while the store's disk is full.
   * The pipeline probes with it to resume intake once space returns.
   */
  probeWrite(): void {
    setMeta(this.db, 'write_probe', String(Date.now()));
  }

  /**
   * Copies the WAL into the database and truncates it to zero bytes. The WAL only grows between
   * checkpoints (auto-checkpoint at 1000 pages, ~4 MB), so on a full disk this is what frees space:
   * without it a WAL that filled the disk stays full forever (no commit, so no auto-checkpoint).
   * Returns false when a reader kept it from completing.
   */
  checkpoint(): boolean {
    const r = this.db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
    return r[0]?.busy === 0;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
