/**
 * Shared pieces of the chaos scenarios (tests/chaos/*.test.ts run them small in CI; bench/chaos/run.ts
 * runs them long): a seeded RNG, distinct real DICOM captures, a result collector on a real MQTT
 * subscriber, and the end-of-run audit of inbox, done/, quarantine/ and the SQLite journal.
 *
 * Plain TypeScript (no vitest import) so the bench can compile and run the same code.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';

/** mulberry32: small, fast, seedable; the seed is printed by every scenario so a failure replays. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** CHAOS_SEED from the environment, else a fresh one (printed by the caller). */
export function chaosSeed(): number {
  const s = process.env.CHAOS_SEED;
  return s && /^\d+$/.test(s) ? Number(s) : Math.floor(Math.random() * 2 ** 31);
}

/**
 * The model settings of every chaos agent: ONNX Runtime fp32 pinned. With `auto`, a start benchmarks
 * every runtime until its cached choice is written, and a chaos run that kills the agent during start-up
 * would measure that benchmark instead of the pipeline (and slow every kill loop down).
 */
export const CHAOS_MODEL = { runtime: 'onnx', precision: 'fp32', warmupRuns: 1 };

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const dcmtkAvailable = spawnSync('dcmodify', ['--version']).status === 0;

/** Small real single-frame DICOM the shipped model classifies (tests/fixtures/dicom, SOURCES.md). */
export const CAPTURE_SEEDS = ['pydicom_CT_small.dcm', 'pydicom_MR_small.dcm', 'derived_CT_small_jls_lossless.dcm', 'derived_CT_small_rle.dcm'].map((f) =>
  path.resolve('tests/fixtures/dicom', f),
);

export interface Capture {
  /** Where it waits before being dropped (same filesystem as the inbox: a rename is atomic). */
  staged: string;
  name: string;
  /** sha256 of the content: the result's input.contentHash is `sha256:<hash>`. */
  hash: string;
}

/** n distinct real DICOM captures (new SOP Instance UIDs via dcmtk's dcmodify) staged in `dir`. */
export function makeCaptures(n: number, dir: string, prefix = 'cap'): Capture[] {
  mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const dest = path.join(dir, `${prefix}${String(i).padStart(5, '0')}.dcm`);
    copyFileSync(CAPTURE_SEEDS[i % CAPTURE_SEEDS.length]!, dest);
    files.push(dest);
  }
  for (let i = 0; i < files.length; i += 200) {
    const r = spawnSync('dcmodify', ['-nb', '-gin', ...files.slice(i, i + 200)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`dcmodify failed: ${r.stderr}`);
  }
  const out = files.map((f) => ({ staged: f, name: path.basename(f), hash: createHash('sha256').update(readFileSync(f)).digest('hex') }));
  if (new Set(out.map((c) => c.hash)).size !== n) throw new Error('captures are not distinct');
  return out;
}

export interface ReceivedResult {
  resultId: string;
  input: { contentHash: string; fileName: string; frame: number };
  label: string;
}

/** What a subscriber saw, per capture: every delivery counted, distinct resultIds kept. */
export class ResultLedger {
  /** contentHash (hex) -> resultId -> deliveries */
  readonly byHash = new Map<string, Map<string, number>>();
  deliveries = 0;
  errors: { code: string; message: string; fileName?: string }[] = [];

  addResult(payload: string): void {
    const r = JSON.parse(payload) as ReceivedResult;
    const hash = r.input.contentHash.replace(/^sha256:/, '');
    let ids = this.byHash.get(hash);
    if (!ids) this.byHash.set(hash, (ids = new Map<string, number>()));
    ids.set(r.resultId, (ids.get(r.resultId) ?? 0) + 1);
    this.deliveries++;
  }

  addError(payload: string): void {
    const e = JSON.parse(payload) as { code: string; message: string; input?: { fileName?: string } };
    this.errors.push({ code: e.code, message: e.message, ...(e.input?.fileName ? { fileName: e.input.fileName } : {}) });
  }

  has(hash: string): boolean {
    return this.byHash.has(hash);
  }

  /** Loss and duplication against the captures that were dropped. */
  audit(captures: Capture[]): DeliveryAudit {
    const dropped = new Set(captures.map((c) => c.hash));
    let lost = 0;
    let conflicting = 0;
    let duplicateDeliveries = 0;
    const lostNames: string[] = [];
    for (const c of captures) {
      const ids = this.byHash.get(c.hash);
      if (!ids) {
        lost++;
        lostNames.push(c.name);
        continue;
      }
      if (ids.size !== 1) conflicting++;
      for (const n of ids.values()) duplicateDeliveries += n - 1;
    }
    const unexpected = [...this.byHash.keys()].filter((h) => !dropped.has(h)).length;
    return { captures: captures.length, deliveries: this.deliveries, lost, lostNames: lostNames.slice(0, 20), conflicting, duplicateDeliveries, unexpected, errors: this.errors.length };
  }
}

export interface DeliveryAudit {
  captures: number;
  /** Result messages received in all. */
  deliveries: number;
  /** Captures with no result at the subscriber. */
  lost: number;
  lostNames: string[];
  /** Captures that got two or more DIFFERENT resultIds (must be 0: that would be a real double processing). */
  conflicting: number;
  /** Extra deliveries of an identical resultId (allowed: at-least-once, detectable by resultId). */
  duplicateDeliveries: number;
  /** Results for content nobody dropped (must be 0). */
  unexpected: number;
  /** Messages on the error topic. */
  errors: number;
}

export interface StoreAudit {
  integrity: string;
  jobs: number;
  byState: Record<string, number>;
  notFinalized: number;
  outbox: number;
  /** Dropped captures with no journal row. */
  missingJobs: number;
}

/** Opens the agent's state store read-only (after the agent stopped) and checks it against the captures. */
export function auditStore(stateDir: string, captures: Capture[]): StoreAudit {
  const db = new Database(path.join(stateDir, 'agent.db'), { readonly: true });
  try {
    const integrity = (db.pragma('integrity_check', { simple: true }) as string) ?? 'no answer';
    const rows = db.prepare('SELECT hash, state, finalized FROM jobs').all() as { hash: string; state: string; finalized: number }[];
    const byState: Record<string, number> = {};
    for (const r of rows) byState[r.state] = (byState[r.state] ?? 0) + 1;
    const hashes = new Set(rows.map((r) => r.hash));
    return {
      integrity,
      jobs: rows.length,
      byState,
      notFinalized: rows.filter((r) => r.finalized !== 1).length,
      outbox: (db.prepare('SELECT COUNT(*) AS n FROM outbox').get() as { n: number }).n,
      missingJobs: captures.filter((c) => !hashes.has(c.hash)).length,
    };
  } finally {
    db.close();
  }
}

/** Regular files under a folder, recursively (relative names); [] when it does not exist. */
export function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
}

/** Resident set size of a process in MiB from /proc (Linux), or null once it is gone. */
export function rssMiB(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}
