/**
 * Decode fuzzer driver: runs `cases` mutated DICOM, PNG and JPEG files (seeds in
 * tests/fixtures/fuzz-seeds, corpus.ts; DICOM mutated by mutate.ts, PNG and JPEG by mutate-image.ts)
 * through the agent's decode + preprocess path in a child process
 * (bench/chaos/fuzz-worker.ts, built to dist/), and watches it from outside, because a hang in
 * synchronous decode code cannot be timed out from inside:
 *
 * - per-file timeout: the agent's own (DecodePool, `decodeTimeoutMs`) turns a decode that never returns
 *   into DecodeError 'decode-timeout'; beyond it, no `end` within `timeoutMs` of a `begin` is a hang of
 *   the agent's path itself: the child is killed, the case saved, and a new child continues;
 * - crash: the child exiting (signal, native abort, uncaught error) mid-case is a crash; saved, continued;
 * - memory: the child's RSS, as it reports it per case and as /proc says, sampled; the peak is kept;
 * - every outcome is classified: ok (the mutation left a decodable image), decode:<code> (a DecodeError:
 *   the pipeline quarantines it with that code and message), preprocess, or bug:<name> (anything else:
 *   the pipeline would retry it and quarantine it as processing-failed, not with a clear reason).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { rssMiB } from '../lib/common.js';
import { corpusCase, loadCorpusSeed, seedFormatOf, seedNames, SEED_FORMATS, type SeedFormat } from './corpus.js';

export const FUZZ_WORKER = path.resolve('dist/bench/chaos/fuzz-worker.js');
export const FUZZ_SEEDS = path.resolve('tests/fixtures/fuzz-seeds');

export interface FuzzFinding {
  index: number;
  format: SeedFormat;
  kind: 'hang' | 'crash' | 'bug' | 'timeout';
  detail: string;
  /** Where the case was written (when saveDir is given). */
  file?: string;
}

export interface FuzzReport {
  scenario: 'fuzz';
  seed: number;
  cases: number;
  seeds: number;
  outcomes: Record<string, number>;
  /** The same, per seed format (cases, outcomes, findings and time per case of that format's seeds). */
  byFormat: Record<SeedFormat, FormatReport>;
  /** Decode errors whose message is empty (a quarantine without a reason). */
  emptyReasons: number;
  hangs: number;
  crashes: number;
  bugs: number;
  findings: FuzzFinding[];
  timeoutMs: number;
  decodeTimeoutMs: number;
  msPerCase: { p50: number; p99: number; max: number };
  slowest: { index: number; ms: number; what: string }[];
  /** Worker RSS: at the first case, the highest seen, at the middle case (after warm-up) and at the last. */
  rssMiB: { start: number; peak: number; mid: number; end: number };
  workers: number;
  wallMs: number;
}

export interface FormatReport {
  seeds: number;
  cases: number;
  outcomes: Record<string, number>;
  emptyReasons: number;
  hangs: number;
  crashes: number;
  bugs: number;
  timeouts: number;
  msPerCase: { p50: number; p99: number; max: number };
}

/** The exact bytes of case i (to save or replay a finding), with its seed's name and format. */
export function fuzzCase(runSeed: number, i: number, seedsDir = FUZZ_SEEDS): { name: string; format: SeedFormat; bytes: Uint8Array; mutations: string[] } {
  const names = seedNames(seedsDir);
  const seed = loadCorpusSeed(seedsDir, names[i % names.length]!);
  const { bytes, mutations } = corpusCase([seed], runSeed, i);
  return { name: seed.name, format: seed.format, bytes, mutations };
}

const EXTENSION: Record<SeedFormat, string> = { dicom: 'dcm', png: 'png', jpeg: 'jpg' };

const quantiles = (times: number[]): { p50: number; p99: number; max: number } => {
  const sorted = [...times].sort((a, b) => a - b);
  const q = (p: number): number => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : 0);
  return { p50: q(0.5), p99: q(0.99), max: sorted[sorted.length - 1] ?? 0 };
};

export async function runFuzz(opts: {
  cases: number;
  seed: number;
  /** The decoder's per-file limit (the pipeline's decodeTimeoutMs). */
  decodeTimeoutMs?: number;
  /** The outer watchdog: a case with no answer this long is a hang of the whole path. */
  timeoutMs?: number;
  saveDir?: string;
  log?: (l: string) => void;
}): Promise<FuzzReport> {
  const t0 = Date.now();
  const decodeTimeoutMs = opts.decodeTimeoutMs ?? 5_000;
  const timeoutMs = opts.timeoutMs ?? decodeTimeoutMs + 10_000;
  const log = opts.log ?? (() => undefined);
  const outcomes: Record<string, number> = {};
  const findings: FuzzFinding[] = [];
  const times: number[] = [];
  const slowest: { index: number; ms: number; what: string }[] = [];
  let emptyReasons = 0;
  let rssStart = 0;
  let rssPeak = 0;
  let rssEnd = 0;
  let rssMid = 0;
  let workers = 0;
  let next = 0;
  const names = seedNames(FUZZ_SEEDS);
  const formatOf = (i: number): SeedFormat => seedFormatOf(names[i % names.length]!)!;
  const per = Object.fromEntries(
    SEED_FORMATS.map((f) => [f, { seeds: names.filter((n) => seedFormatOf(n) === f).length, cases: 0, outcomes: {}, emptyReasons: 0, hangs: 0, crashes: 0, bugs: 0, timeouts: 0, times: [] as number[] }]),
  ) as Record<SeedFormat, Omit<FormatReport, 'msPerCase'> & { times: number[] }>;

  const save = (f: Omit<FuzzFinding, 'format'>): FuzzFinding => {
    const finding: FuzzFinding = { ...f, format: formatOf(f.index) };
    if (opts.saveDir) {
      mkdirSync(opts.saveDir, { recursive: true });
      const c = fuzzCase(opts.seed, f.index);
      finding.file = path.join(opts.saveDir, `case-${opts.seed}-${f.index}-${f.kind}.${EXTENSION[c.format]}`);
      writeFileSync(finding.file, c.bytes);
    }
    const p = per[finding.format];
    if (f.kind === 'hang') p.hangs++;
    else if (f.kind === 'crash') p.crashes++;
    else if (f.kind === 'bug') p.bugs++;
    else p.timeouts++;
    findings.push(finding);
    return finding;
  };

  while (next < opts.cases) {
    workers++;
    const from = next;
    const child = spawn(process.execPath, [FUZZ_WORKER, FUZZ_SEEDS, String(opts.seed), String(from), String(opts.cases), String(decodeTimeoutMs)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let current: { index: number; since: number } | undefined;
    let buf = '';
    let stderr = '';
    let hung = false;
    child.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (c: string) => {
      buf += c;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const parts = line.split(' ');
        if (parts[0] === 'begin') {
          current = { index: Number(parts[1]), since: Date.now() };
        } else if (parts[0] === 'end') {
          const [, idx, outcome, ms, rss, what] = parts as [string, string, string, string, string, string];
          const message = parts.slice(6).join(' ');
          current = undefined;
          next = Number(idx) + 1;
          outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
          const t = Number(ms);
          times.push(t);
          const p = per[formatOf(Number(idx))];
          p.cases++;
          p.outcomes[outcome] = (p.outcomes[outcome] ?? 0) + 1;
          p.times.push(t);
          if (outcome.startsWith('decode:') && message.trim() === '') p.emptyReasons++;
          const r = Number(rss);
          if (rssStart === 0) rssStart = r;
          rssPeak = Math.max(rssPeak, r);
          rssEnd = r;
          if (Number(idx) === Math.floor(opts.cases / 2)) rssMid = r;
          if (outcome.startsWith('decode:') && message.trim() === '') emptyReasons++;
          if (outcome === 'decode:decode-timeout') save({ index: Number(idx), kind: 'timeout', detail: `${what} stopped by the ${decodeTimeoutMs} ms decode limit` });
          if (outcome.startsWith('bug:')) save({ index: Number(idx), kind: 'bug', detail: `${outcome} ${what} ${message}` });
          if (slowest.length < 5 || t > slowest[slowest.length - 1]!.ms) {
            slowest.push({ index: Number(idx), ms: t, what });
            slowest.sort((a, b) => b.ms - a.ms);
            slowest.length = Math.min(slowest.length, 5);
          }
          if (next % 2000 === 0) log(`fuzz: ${next}/${opts.cases} cases, ${JSON.stringify(outcomes)}`);
        }
      }
    });
    const watchdog = setInterval(() => {
      const p = rssMiB(child.pid!);
      if (p !== null) rssPeak = Math.max(rssPeak, p);
      if (current && Date.now() - current.since > timeoutMs) {
        hung = true;
        child.kill('SIGKILL');
      }
    }, 100);
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
    clearInterval(watchdog);
    if (current) {
      // Died or was killed in the middle of a case.
      const f = hung
        ? save({ index: current.index, kind: 'hang', detail: `no result within ${timeoutMs} ms` })
        : save({ index: current.index, kind: 'crash', detail: `worker exited (code ${exit.code}, signal ${exit.signal}): ${stderr.slice(-500)}` });
      log(`fuzz: ${f.kind} at case ${f.index}: ${f.detail}`);
      next = current.index + 1;
    } else if (exit.code !== 0 && next < opts.cases) {
      throw new Error(`fuzz worker failed outside a case (code ${exit.code}, signal ${exit.signal}): ${stderr}`);
    }
  }
  const byFormat = Object.fromEntries(
    SEED_FORMATS.map((f) => {
      const { times: t, ...rest } = per[f];
      return [f, { ...rest, cases: rest.cases + rest.hangs + rest.crashes, msPerCase: quantiles(t) }];
    }),
  ) as Record<SeedFormat, FormatReport>;
  return {
    scenario: 'fuzz',
    seed: opts.seed,
    cases: opts.cases,
    seeds: names.length,
    outcomes,
    byFormat,
    emptyReasons,
    hangs: findings.filter((f) => f.kind === 'hang').length,
    crashes: findings.filter((f) => f.kind === 'crash').length,
    bugs: findings.filter((f) => f.kind === 'bug').length,
    findings: findings.slice(0, 50),
    timeoutMs,
    decodeTimeoutMs,
    msPerCase: quantiles(times),
    slowest,
    rssMiB: { start: rssStart, peak: rssPeak, mid: rssMid || rssStart, end: rssEnd },
    workers,
    wallMs: Date.now() - t0,
  };
}
