/**
 * Chaos: power loss of the state store (SQLite, WAL, synchronous=NORMAL; src/store/db.ts).
 *
 * 1. kill -9: a child (bench/chaos/store-writer.ts, the agent's own StateStore) writes journal and
 *    outbox transactions in a loop with explicit checkpoints of every mode; it is SIGKILLed at random
 *    moments, a share of them right after it announced a checkpoint. After each kill the store must
 *    open, pass `PRAGMA integrity_check`, hold every job the child reported committed (in that state
 *    or a later one), and keep the journal/outbox invariants; the next child continues on it.
 * 2. power cut: the child is frozen (SIGSTOP) at a random moment and agent.db + agent.db-wal copied,
 *    which is exactly what a power cut leaves when the page cache had reached the disk; in `torn` mode
 *    the copied WAL is also cut at a random byte (the unsynced tail lost, as synchronous=NORMAL allows).
 *    The copy (without -shm, which a reboot does not keep either) must open with integrity ok and the
 *    invariants; only commits after the last completed checkpoint may be missing (counted).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { StateStore } from '../../../src/store/index.js';
import { rng, sleep } from './common.js';

export const STORE_WRITER = path.resolve('dist/bench/chaos/store-writer.js');

type Reported = 'inferred' | 'published' | 'failed';

class Writer {
  readonly reported = new Map<string, Reported>();
  /** Jobs reported before the last completed checkpoint (durable even on power loss). */
  durable = new Map<string, Reported>();
  inCheckpoint = false;
  checkpoints = 0;
  lines = 0;
  private buf = '';
  readonly proc: ChildProcess;
  readonly exited: Promise<void>;
  stderr = '';

  constructor(dir: string, mode: 'agent' | 'torn', generation: number) {
    this.proc = spawn(process.execPath, [STORE_WRITER, dir, mode], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, WRITER_GENERATION: String(generation) } });
    this.proc.stdout!.setEncoding('utf8');
    this.proc.stdout!.on('data', (c: string) => {
      this.buf += c;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.line(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
    });
    this.proc.stderr!.on('data', (c: Buffer) => (this.stderr += c.toString()));
    this.exited = new Promise((r) => this.proc.once('exit', () => r()));
  }

  private line(l: string): void {
    this.lines++;
    const [kind, arg] = l.split(' ');
    if (kind === 'inferred' || kind === 'failed') this.reported.set(arg!, kind);
    else if (kind === 'published') this.reported.set(arg!, 'published');
    else if (kind === 'ckpt-begin') this.inCheckpoint = true;
    else if (kind === 'ckpt-end') {
      this.inCheckpoint = false;
      this.checkpoints++;
      if (l.startsWith('ckpt-end TRUNCATE')) this.durable = new Map(this.reported);
    }
  }

  async until(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (this.proc.exitCode !== null) throw new Error(`store writer exited ${this.proc.exitCode}: ${this.stderr}`);
      if (Date.now() > deadline) throw new Error('store writer made no progress');
      await sleep(1);
    }
  }
}

export interface StoreCheck {
  integrity: string;
  jobs: number;
  outbox: number;
  /** Reported-committed jobs missing or in an earlier state (must be 0 after kill -9). */
  missing: number;
  /** Invariant violations, described. */
  violations: string[];
}

const RANK: Record<string, number> = { queued: 0, decoded: 1, inferred: 2, published: 3, failed: 10 };

/** Opens a store (read-write, as the agent would at start, so WAL recovery runs) and checks it. */
export function checkStore(dir: string, reported: Map<string, Reported>): StoreCheck {
  const store = StateStore.open(dir); // the agent's own open: WAL recovery + schema check
  try {
    const db = store.db;
    const integrity = db.pragma('integrity_check', { simple: true }) as string;
    const jobs = db.prepare('SELECT hash, state, results FROM jobs').all() as { hash: string; state: string; results: number }[];
    const byHash = new Map(jobs.map((j) => [j.hash, j]));
    const rows = db.prepare('SELECT job_hash AS hash, COUNT(*) AS n FROM outbox GROUP BY job_hash').all() as { hash: string; n: number }[];
    const rowsOf = new Map(rows.map((r) => [r.hash, r.n]));
    const violations: string[] = [];
    for (const r of rows) if (!byHash.has(r.hash)) violations.push(`outbox rows of unknown job ${r.hash.slice(0, 12)}`);
    for (const j of jobs) {
      const n = rowsOf.get(j.hash) ?? 0;
      if (j.state === 'inferred' && (n < 1 || n > j.results)) violations.push(`inferred job ${j.hash.slice(0, 12)} has ${n} outbox rows for ${j.results} results`);
      if (j.state === 'published' && n !== 0) violations.push(`published job ${j.hash.slice(0, 12)} still has ${n} outbox rows`);
      if (j.state === 'failed' && n > 1) violations.push(`failed job ${j.hash.slice(0, 12)} has ${n} error rows`);
    }
    let missing = 0;
    for (const [hash, state] of reported) {
      const j = byHash.get(hash);
      const ok = j && (state === 'failed' ? j.state === 'failed' : j.state !== 'failed' && RANK[j.state]! >= RANK[state]!);
      if (!ok) missing++;
    }
    return { integrity, jobs: jobs.length, outbox: (db.prepare('SELECT COUNT(*) AS n FROM outbox').get() as { n: number }).n, missing, violations: violations.slice(0, 20) };
  } finally {
    store.close();
  }
}

export interface StoreChaosReport {
  scenario: 'store';
  seed: number;
  kills: { total: number; duringCheckpoint: number; jobsAtEnd: number; missing: number; violations: string[]; integrityFailures: number };
  snapshots: { total: number; torn: number; duringCheckpoint: number; missing: number; rolledBack: number; violations: string[]; integrityFailures: number };
  wallMs: number;
}

export async function runStoreChaos(opts: { kills: number; snapshots: number; seed: number; log?: (l: string) => void }): Promise<StoreChaosReport> {
  const t0 = Date.now();
  const random = rng(opts.seed);
  const log = opts.log ?? (() => undefined);
  const root = mkdtempSync(path.join(tmpdir(), 'chaos-store-'));
  const report: StoreChaosReport = {
    scenario: 'store',
    seed: opts.seed,
    kills: { total: 0, duringCheckpoint: 0, jobsAtEnd: 0, missing: 0, violations: [], integrityFailures: 0 },
    snapshots: { total: 0, torn: 0, duringCheckpoint: 0, missing: 0, rolledBack: 0, violations: [], integrityFailures: 0 },
    wallMs: 0,
  };
  try {
    // 1. kill -9, on one store that every generation continues.
    const dir = path.join(root, 'state');
    const reported = new Map<string, Reported>();
    for (let k = 0; k < opts.kills; k++) {
      const w = new Writer(dir, 'agent', k + 1);
      await w.until(() => w.lines > 0);
      const atCheckpoint = random() < 0.4;
      if (atCheckpoint) {
        // Let it run a little, then strike right after it announces a checkpoint (+0..2 ms).
        await sleep(random() * 100);
        const seen = w.checkpoints;
        await w.until(() => w.inCheckpoint || w.checkpoints > seen);
        if (random() < 0.5) await sleep(random() * 2);
      } else {
        await sleep(20 + random() * 300);
      }
      const during = w.inCheckpoint;
      w.proc.kill('SIGKILL');
      await w.exited;
      for (const [h, s] of w.reported) reported.set(h, s);
      const c = checkStore(dir, reported);
      report.kills.total++;
      if (during) report.kills.duringCheckpoint++;
      report.kills.missing += c.missing;
      report.kills.jobsAtEnd = c.jobs;
      if (c.integrity !== 'ok') report.kills.integrityFailures++;
      report.kills.violations.push(...c.violations);
      if ((k + 1) % 25 === 0) log(`store: ${k + 1}/${opts.kills} kills, ${c.jobs} jobs, ${report.kills.duringCheckpoint} during a checkpoint`);
    }

    // 2. power-cut snapshots of a running writer: frozen, copied, optionally WAL torn.
    for (let s = 0; s < opts.snapshots; s++) {
      const torn = s % 2 === 1;
      const sdir = path.join(root, `snap-src-${s}`);
      const w = new Writer(sdir, torn ? 'torn' : 'agent', 0);
      await w.until(() => w.checkpoints >= 1);
      await sleep(random() * 150);
      w.proc.kill('SIGSTOP');
      await sleep(5); // stdout lines already written reach us
      const during = w.inCheckpoint;
      const reportedAtStop = new Map(w.reported);
      const durableAtStop = new Map(w.durable);
      const copy = path.join(root, `snap-${s}`);
      mkdirSync(copy);
      copyFileSync(path.join(sdir, 'agent.db'), path.join(copy, 'agent.db'));
      const wal = path.join(sdir, 'agent.db-wal');
      if (existsSync(wal)) copyFileSync(wal, path.join(copy, 'agent.db-wal'));
      w.proc.kill('SIGKILL');
      await w.exited;
      report.snapshots.total++;
      if (during) report.snapshots.duringCheckpoint++;
      let expectAll = reportedAtStop;
      const copiedWal = path.join(copy, 'agent.db-wal');
      if (torn && !during && existsSync(copiedWal)) {
        // Lose a random unsynced tail of the WAL (never the 32-byte header's worth of nothing: cut anywhere).
        const size = statSync(copiedWal).size;
        truncateSync(copiedWal, Math.floor(random() * size));
        report.snapshots.torn++;
        expectAll = durableAtStop; // only what the last checkpoint synced is promised
      }
      const c = checkStore(copy, expectAll);
      const all = checkStore(copy, reportedAtStop);
      report.snapshots.missing += c.missing;
      report.snapshots.rolledBack += all.missing - c.missing;
      if (c.integrity !== 'ok') report.snapshots.integrityFailures++;
      report.snapshots.violations.push(...c.violations);
      rmSync(sdir, { recursive: true, force: true });
      rmSync(copy, { recursive: true, force: true });
    }
    log(`store: ${report.snapshots.total} snapshots (${report.snapshots.torn} with a torn WAL), ${report.snapshots.rolledBack} commits rolled back by torn WALs`);
  } finally {
    rmSync(root, { recursive: true, force: true });
    report.wallMs = Date.now() - t0;
  }
  return report;
}
