/**
 * Audit log: an append-only table in the state store recording every result the agent produced,
 * every command it received, and every change of the model it serves. It answers "which model
 * version classified this capture", "who told this device to do what" and "why did it switch models".
 *
 * Append-only is enforced by the database, not by convention: triggers RAISE on UPDATE and DELETE of
 * `audit` rows. Each row also carries `hash` = sha256(previous row's hash + this row's content), a
 * chain that `verify()` checks, so a row edited or removed behind SQLite's back (triggers dropped, file
 * patched) shows up as a broken link. Nothing here stores patient data: inputs are content hashes,
 * commands are payload hashes.
 *
 * Retention: rows are never deleted by the agent (see docs/SECURITY.md, "Audit log", for the size per
 * record and how an operator archives and starts a fresh store).
 */
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Db } from './db.js';

export type AuditKind = 'result' | 'command' | 'model';
export const AUDIT_KINDS: readonly AuditKind[] = ['result', 'command', 'model'];

export interface ModelRef {
  id: string;
  version: string;
  sha256?: string | null;
}

export interface AuditResultInput {
  resultId: string;
  model: ModelRef;
  /** sha256 (hex, optionally `sha256:`-prefixed) of the input file's content. */
  inputSha256: string;
  /** Frame of a multi-frame input (default 0). */
  frame?: number;
  at?: Date | number;
}

export interface AuditCommandInput {
  /** Command name (`ping`, `set-config`, ... or `desired/model`). */
  cmd: string;
  /** MQTT identity of the sender when the broker provides it (MQTT 5 user property), else null (unknown). */
  sender: string | null;
  /** sha256 (hex) of the raw payload as received. */
  payloadSha256: string;
  /** `ok`, `error: <reason>`, `refused: <reason>` ... */
  outcome: string;
  /** The request's `transaction` (or MQTT 5 correlation data, hex), if any. */
  transaction?: string | null;
  /** Topic the request came in on (device or group). */
  topic?: string | null;
  at?: Date | number;
}

export interface AuditModelChangeInput {
  from: ModelRef | null;
  to: ModelRef | null;
  /** `sighup-reload`, `rollout <id>: activated`, `rollback: error rate 0.4 > 0.2`, ... */
  reason: string;
  /** Who caused it: `operator` (SIGHUP / CLI), `central` or the command sender's identity, `agent` (automatic rollback). */
  actor: string;
  at?: Date | number;
}

interface AuditCommon {
  seq: number;
  /** ISO time. */
  at: string;
  /** Link of the hash chain (hex). */
  hash: string;
}

export type AuditEntry =
  | (AuditCommon & { kind: 'result'; resultId: string; model: ModelRef; inputSha256: string; frame: number })
  | (AuditCommon & {
      kind: 'command';
      cmd: string;
      sender: string | null;
      payloadSha256: string;
      outcome: string;
      transaction: string | null;
      topic: string | null;
    })
  | (AuditCommon & { kind: 'model'; from: ModelRef | null; to: ModelRef | null; reason: string; actor: string });

interface AuditRow {
  seq: number;
  at: number;
  kind: AuditKind;
  data: string;
  hash: string;
}

const NO_DELETE_TRIGGER = `CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;`;

/** Schema (run by the store's migrations, src/store/db.ts). */
export const AUDIT_SCHEMA = `
  CREATE TABLE audit (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    at    INTEGER NOT NULL,
    kind  TEXT NOT NULL CHECK (kind IN ('result','command','model')),
    data  TEXT NOT NULL,
    hash  TEXT NOT NULL
  );
  CREATE INDEX audit_at ON audit(at);
  CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;
  ${NO_DELETE_TRIGGER}`;

const GENESIS = '0'.repeat(64);

function toMs(at: Date | number | undefined): number {
  if (at === undefined) return Date.now();
  return typeof at === 'number' ? at : at.getTime();
}

function modelRef(m: ModelRef | null): ModelRef | null {
  if (!m) return null;
  return { id: String(m.id), version: String(m.version), sha256: m.sha256 ?? null };
}

function stripSha(h: string): string {
  return h.replace(/^sha256:/, '');
}

function linkHash(prev: string, seq: number, at: number, kind: string, data: string): string {
  return createHash('sha256').update(`${prev}\n${seq}\n${at}\n${kind}\n${data}`).digest('hex');
}

export interface AuditQuery {
  /** Only rows at or after this time. */
  since?: Date | number;
  kind?: AuditKind;
}

export class AuditLog {
  private readonly insertStmt: Database.Statement;
  private readonly lastStmt: Database.Statement;
  private readonly append: (at: number, kind: AuditKind, data: string) => number;

  constructor(private readonly db: Db) {
    this.insertStmt = db.prepare('INSERT INTO audit(seq, at, kind, data, hash) VALUES (?, ?, ?, ?, ?)');
    this.lastStmt = db.prepare('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1');
    // Reading the last link and inserting the next one in one (IMMEDIATE when outermost) transaction keeps
    // the chain intact even with a second writer (a CLI) on the same file. Nested in a caller's
    // transaction (the pipeline's result commit), it becomes a savepoint of that transaction.
    const tx = db.transaction((at: number, kind: AuditKind, data: string): number => {
      // An archive that took every row leaves the chain's last link in the anchor.
      const last = (this.lastStmt.get() as { seq: number; hash: string } | undefined) ?? this.anchor() ?? undefined;
      const seq = (last?.seq ?? 0) + 1;
      this.insertStmt.run(seq, at, kind, data, linkHash(last?.hash ?? GENESIS, seq, at, kind, data));
      return seq;
    });
    this.append = (at, kind, data) => tx.immediate(at, kind, data);
  }

  /** A result was committed to the outbox. Returns the audit seq. */
  result(r: AuditResultInput): number {
    const data = JSON.stringify({
      resultId: r.resultId,
      model: modelRef(r.model),
      inputSha256: stripSha(r.inputSha256),
      frame: r.frame ?? 0,
    });
    return this.append(toMs(r.at), 'result', data);
  }

  /** A command (request or desired-state document) was handled, accepted or refused. */
  command(c: AuditCommandInput): number {
    const data = JSON.stringify({
      cmd: c.cmd,
      sender: c.sender ?? null,
      payloadSha256: stripSha(c.payloadSha256),
      outcome: c.outcome,
      transaction: c.transaction ?? null,
      topic: c.topic ?? null,
    });
    return this.append(toMs(c.at), 'command', data);
  }

  /** The serving model changed (or a change was attempted and refused: say so in `reason`). */
  modelChange(m: AuditModelChangeInput): number {
    const data = JSON.stringify({ from: modelRef(m.from), to: modelRef(m.to), reason: m.reason, actor: m.actor });
    return this.append(toMs(m.at), 'model', data);
  }

  /** Entries in seq order, streamed (an export of years of rows does not load them all). */
  *entries(q: AuditQuery = {}): Generator<AuditEntry> {
    const where: string[] = [];
    const args: (number | string)[] = [];
    if (q.since !== undefined) {
      where.push('at >= ?');
      args.push(toMs(q.since));
    }
    if (q.kind) {
      where.push('kind = ?');
      args.push(q.kind);
    }
    const sql = `SELECT seq, at, kind, data, hash FROM audit ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq`;
    for (const row of this.db.prepare(sql).iterate(...args) as IterableIterator<AuditRow>) {
      yield { seq: row.seq, at: new Date(row.at).toISOString(), kind: row.kind, ...JSON.parse(row.data), hash: row.hash } as AuditEntry;
    }
  }

  /** The model serving after the last recorded change (`to`, or `from` when that change was refused); null when none. */
  lastModel(): ModelRef | null {
    const row = this.db.prepare("SELECT data FROM audit WHERE kind = 'model' ORDER BY seq DESC LIMIT 1").get() as { data: string } | undefined;
    if (!row) return null;
    const d = JSON.parse(row.data) as { from: ModelRef | null; to: ModelRef | null };
    return d.to ?? d.from;
  }

  /** Seq and hash of the last archived row (verify continues the chain from it); null before any archive. */
  anchor(): { seq: number; hash: string } | null {
    const row = this.db.prepare("SELECT value FROM meta WHERE key = 'audit_anchor'").get() as { value: string } | undefined;
    return row ? (JSON.parse(row.value) as { seq: number; hash: string }) : null;
  }

  /**
   * The operator's archive path (never automatic): the oldest rows, up to the first one at or after
   * `before`, are handed to `write` (one NDJSON line each, as `entries()` gives them), then `flush` must
   * make them durable (the CLI fsyncs its file), and only then are they deleted, in the same IMMEDIATE
   * transaction that records the chain anchor. The delete guard is lifted for that statement only: the
   * trigger is dropped and re-created inside the transaction, so no other writer ever sees it missing.
   */
  archive(before: Date | number, write: (line: string) => void, flush: () => void): ArchiveOutcome {
    const cut = toMs(before);
    return this.db.transaction((): ArchiveOutcome => {
      let first: number | null = null;
      let last: AuditRow | null = null;
      for (const row of this.db.prepare('SELECT seq, at, kind, data, hash FROM audit ORDER BY seq').iterate() as IterableIterator<AuditRow>) {
        if (row.at >= cut) break;
        first ??= row.seq;
        last = row;
        write(JSON.stringify({ seq: row.seq, at: new Date(row.at).toISOString(), kind: row.kind, ...JSON.parse(row.data), hash: row.hash }) + '\n');
      }
      if (!last || first === null) return { rows: 0, firstSeq: null, lastSeq: null };
      flush();
      this.db.exec('DROP TRIGGER audit_no_delete');
      this.db.prepare('DELETE FROM audit WHERE seq <= ?').run(last.seq);
      this.db.exec(NO_DELETE_TRIGGER);
      this.db
        .prepare("INSERT INTO meta(key, value) VALUES ('audit_anchor', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .run(JSON.stringify({ seq: last.seq, hash: last.hash }));
      return { rows: last.seq - first + 1, firstSeq: first, lastSeq: last.seq };
    }).immediate();
  }

  count(kind?: AuditKind): number {
    const row = (
      kind ? this.db.prepare('SELECT COUNT(*) AS n FROM audit WHERE kind = ?').get(kind) : this.db.prepare('SELECT COUNT(*) AS n FROM audit').get()
    ) as { n: number };
    return row.n;
  }

  /**
   * Walks the hash chain. `ok: false` names the first row whose link does not follow from the one
   * before it (edited, inserted or deleted behind the triggers' back).
   */
  verify(): { ok: boolean; rows: number; brokenAt: number | null } {
    // After an archive, the chain continues from the last archived row (its seq and hash are kept).
    const anchor = this.anchor();
    let prev = anchor?.hash ?? GENESIS;
    let expectedSeq = (anchor?.seq ?? 0) + 1;
    let rows = 0;
    for (const row of this.db.prepare('SELECT seq, at, kind, data, hash FROM audit ORDER BY seq').iterate() as IterableIterator<AuditRow>) {
      if (row.seq !== expectedSeq || linkHash(prev, row.seq, row.at, row.kind, row.data) !== row.hash) {
        return { ok: false, rows, brokenAt: row.seq };
      }
      prev = row.hash;
      expectedSeq++;
      rows++;
    }
    return { ok: true, rows, brokenAt: null };
  }
}

export interface ArchiveOutcome {
  rows: number;
  /** Seq range moved out (inclusive); null when nothing was older than the cut. */
  firstSeq: number | null;
  lastSeq: number | null;
}

export interface ExportVerification {
  ok: boolean;
  rows: number;
  /** Seq of the first line whose link does not follow (or that is not a valid entry); null when ok. */
  brokenAt: number | null;
  /** Last verified link: give it as `prev` to check the next archive file, or compare with the store's anchor. */
  last: { seq: number; hash: string } | null;
  /** The first line's own link could not be checked (no `prev` and it is not seq 1): the chain starts there. */
  startsUnverifiedAt: number | null;
}

/**
 * Checks the hash chain of exported or archived NDJSON lines (`audit export`, `audit archive`), in
 * order, optionally continuing from the last link of the previous file. Each entry's stored data is
 * recomputed from its fields (everything but seq, at, kind, hash, in order), so an edited, inserted or
 * removed line breaks the chain.
 */
export function verifyExported(lines: Iterable<string>, prev?: { seq: number; hash: string }): ExportVerification {
  let link = prev ?? null;
  let rows = 0;
  let startsUnverifiedAt: number | null = null;
  for (const line of lines) {
    if (line.trim() === '') continue;
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return { ok: false, rows, brokenAt: (link?.seq ?? 0) + 1, last: link, startsUnverifiedAt };
    }
    const { seq, at, kind, hash, ...data } = e;
    const atMs = typeof at === 'string' ? Date.parse(at) : NaN;
    if (typeof seq !== 'number' || typeof hash !== 'string' || typeof kind !== 'string' || Number.isNaN(atMs)) {
      return { ok: false, rows, brokenAt: typeof seq === 'number' ? seq : (link?.seq ?? 0) + 1, last: link, startsUnverifiedAt };
    }
    if (link === null && seq !== 1) {
      startsUnverifiedAt = seq; // first line of a later archive with no previous file given: trust its link
    } else {
      const prevHash = link?.hash ?? GENESIS;
      const expectedSeq = (link?.seq ?? 0) + 1;
      if (seq !== expectedSeq || linkHash(prevHash, seq, atMs, kind, JSON.stringify(data)) !== hash) {
        return { ok: false, rows, brokenAt: seq, last: link, startsUnverifiedAt };
      }
    }
    link = { seq, hash };
    rows++;
  }
  return { ok: true, rows, brokenAt: null, last: link, startsUnverifiedAt };
}

/** sha256 hex of a payload, for `command({payloadSha256})`. */
export function payloadSha256(payload: Uint8Array | string): string {
  return createHash('sha256').update(payload).digest('hex');
}

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 };

/**
 * `--since` of `edge-agent audit export`: an ISO 8601 time (`2026-01-31`, `2026-01-31T08:00:00Z`) or a
 * duration back from `now` (`90s`, `15m`, `12h`, `30d`, `2w`). Throws on anything else.
 */
export function parseSince(value: string, now = Date.now()): number {
  const v = value.trim();
  const d = /^(\d+(?:\.\d+)?)\s*([smhdw])$/i.exec(v);
  if (d) return now - Number(d[1]) * UNIT_MS[d[2]!.toLowerCase()]!;
  if (/^\d{4}-\d{2}-\d{2}/.test(v)) {
    const t = Date.parse(v);
    if (!Number.isNaN(t)) return t;
  }
  throw new Error(`--since ${JSON.stringify(value)}: expected an ISO time (2026-01-31T08:00:00Z) or a duration (90s, 15m, 12h, 30d, 2w)`);
}

/**
 * Opens a state store's audit log read-only (the agent may be running: WAL lets both work). Never
 * migrates or creates anything; a store without an audit table (written by an older agent) is an error.
 */
export function openAuditReadOnly(stateDir: string, fileName = 'agent.db'): { audit: AuditLog; close: () => void } {
  const file = path.join(stateDir, fileName);
  if (!existsSync(file)) throw new Error(`no state store at ${file}`);
  const db = new Database(file, { readonly: true, fileMustExist: true });
  db.pragma('busy_timeout = 5000');
  const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").get();
  if (!has) {
    db.close();
    throw new Error(`state store ${file} has no audit log yet (written by an agent before schema 2; start the agent once to migrate)`);
  }
  return { audit: new AuditLog(db), close: () => db.close() };
}
