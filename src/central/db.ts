/**
 * Central's own state: one SQLite file (`<dataDir>/central.db`, better-sqlite3, WAL) holding the
 * registry index and the rollouts, so a restarted central continues every rollout where it was.
 * The fleet view is NOT stored: it is rebuilt from the broker's retained topics on every start.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

export type CentralDb = Database.Database;

const MIGRATIONS: string[] = [
  `CREATE TABLE bundles (
     id            TEXT NOT NULL,
     version       TEXT NOT NULL,
     storage_key   TEXT NOT NULL,
     sha256        TEXT NOT NULL,
     size          INTEGER NOT NULL,
     manifest_sha  TEXT NOT NULL,
     key_id        TEXT NOT NULL,
     task          TEXT,
     labels        TEXT NOT NULL,
     uploaded_at   TEXT NOT NULL,
     PRIMARY KEY (id, version)
   );
   CREATE TABLE rollouts (
     id          TEXT PRIMARY KEY,
     doc         TEXT NOT NULL,
     status      TEXT NOT NULL,
     created_at  TEXT NOT NULL,
     updated_at  TEXT NOT NULL
   );
   CREATE INDEX rollouts_status ON rollouts(status);
   CREATE TABLE rollout_devices (
     rollout_id  TEXT NOT NULL REFERENCES rollouts(id),
     device_id   TEXT NOT NULL,
     wave        TEXT NOT NULL CHECK (wave IN ('canary','rest')),
     status      TEXT NOT NULL,
     phase       TEXT,
     reason      TEXT,
     previous    TEXT,
     issued_at   TEXT,
     updated_at  TEXT NOT NULL,
     PRIMARY KEY (rollout_id, device_id)
   );`,
];

export function openCentralDb(dataDir: string): CentralDb {
  mkdirSync(dataDir, { recursive: true });
  const db = new Database(path.join(dataDir, 'central.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    db.close();
    throw new Error(`central database in ${dataDir} was written by a newer central (schema ${current} > ${MIGRATIONS.length})`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return db;
}
