/**
 * The agent's state store: one SQLite file (better-sqlite3, WAL) holding the job journal and the
 * result outbox. The journal is the truth about every capture the agent accepted.
 *
 * Durability: WAL with synchronous=NORMAL. A committed transaction survives a crash of the process
 * (kill -9 included: the WAL is in the OS page cache); only a power cut can roll back the last
 * transactions, never corrupt the file. That is safe here because files leave the inbox only after
 * the `published` commit, and rolling that commit back just re-sends results with the same resultId.
 * FULL would fsync every commit (~3 per capture) for no gain in what can be lost.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { AUDIT_SCHEMA } from './audit.js';

export type Db = Database.Database;

const SCHEMA_VERSION = 3;

const MIGRATIONS: string[] = [
  `CREATE TABLE jobs (
     hash        TEXT PRIMARY KEY,
     name        TEXT NOT NULL,
     path        TEXT NOT NULL,
     size        INTEGER NOT NULL,
     state       TEXT NOT NULL CHECK (state IN ('queued','decoded','inferred','published','failed')),
     attempts    INTEGER NOT NULL DEFAULT 0,
     error_code  TEXT,
     error       TEXT,
     modality    TEXT,
     frames      INTEGER,
     results     INTEGER NOT NULL DEFAULT 0,
     finalized   INTEGER NOT NULL DEFAULT 0,
     created_at  INTEGER NOT NULL,
     updated_at  INTEGER NOT NULL
   );
   CREATE INDEX jobs_state ON jobs(state);
   CREATE TABLE outbox (
     seq        INTEGER PRIMARY KEY AUTOINCREMENT,
     job_hash   TEXT,
     result_id  TEXT,
     topic      TEXT NOT NULL,
     payload    TEXT NOT NULL,
     created_at INTEGER NOT NULL
   );
   CREATE INDEX outbox_job ON outbox(job_hash);
   CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);`,
  // 2: append-only audit log (src/store/audit.ts).
  AUDIT_SCHEMA,
  // 3: attempts begun while the job ran alone (the pipeline runs a job whose earlier attempt did not
  // finish on its own: only a death then is evidence against the file; src/pipeline/pipeline.ts).
  `ALTER TABLE jobs ADD COLUMN solo_attempts INTEGER NOT NULL DEFAULT 0;`,
];

export function openDatabase(stateDir: string, fileName = 'agent.db'): Db {
  mkdirSync(stateDir, { recursive: true });
  const db = new Database(path.join(stateDir, fileName));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > SCHEMA_VERSION) {
    db.close();
    throw new Error(`state store ${stateDir} was written by a newer agent (schema ${current} > ${SCHEMA_VERSION})`);
  }
  for (let v = current; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return db;
}

export function getMeta(db: Db, key: string): string | undefined {
  const row = db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
  return row?.value;
}

export function setMeta(db: Db, key: string, value: string): void {
  db.prepare('INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
}
