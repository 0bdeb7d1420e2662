/**
 * Which runtime x precision serves a bundle on this machine (config `model.runtime`, `model.precision`).
 *
 * A bundle carries the same model in several files: format (onnx | tflite | tfjs, one runtime each) x
 * precision (fp32 | int8). A *candidate* is one such file with the runtime that loads it.
 *
 * - Preference (`runtime: [onnx, tflite, tfjs]` or one name): candidates in that order; within a
 *   runtime, precisions in `model.precision` order. With `precision: auto` and both precisions of a
 *   runtime in the bundle, those two are benchmarked and int8 goes first only where it is faster.
 * - `auto`: a short on-device benchmark of every candidate the bundle carries (each opened the way it
 *   will serve: same runtime options, same isolation; golden-checked; then batch-1 runs of the golden
 *   input in blocks of back-to-back calls, candidates in turn so a noisy neighbour slows all of them
 *   alike, within a small time budget). Candidates are ordered by median latency; that order is also the fallback order.
 *   With `model.optimiseFor: throughput` they are ordered by median latency / the workers the candidate
 *   serves with (servingWorkers): the time per image when a backlog keeps every worker busy.
 *
 * int8 is put ahead of fp32 of the same runtime only when it is at least INT8_MARGIN faster: a tie goes to
 * fp32 (no accuracy cost). When int8 loses, the report carries a note such as
 * "int8 slower than fp32 here: 0.41 vs 0.33 ms (onnx, p50)" for health and logs.
 *
 * Measurements are cached in `<stateDir>/runtime-selection.json`, one entry per candidate keyed by the
 * model file's sha256, the runtime options and the machine fingerprint (CPU model, cores, arch, Node,
 * agent and runtime package versions): a restart, or a reload of the same bundle, does not benchmark again.
 * Delete the file to force a new measurement.
 *
 * A candidate that fails to load (runtime missing, no usable provider) is `unavailable`; one whose
 * outputs miss the golden references is `excluded`; both keep their reason in the report.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { modelFiles, resolveBundlePath } from '../models/bundle.js';
import { goldenEntries, runGolden } from '../models/golden.js';
import type { LoadedBundle, ModelFileEntry } from '../models/types.js';
import type { InferenceSessionHandle, ProviderAttempt, RuntimeLoadOptions } from './types.js';
import { defaultWorkers, openSession, type IsolationOptions } from './worker/supervisor.js';

export type RuntimeName = 'onnx' | 'tflite' | 'tfjs';
export type Precision = ModelFileEntry['precision'];
export type RuntimePreference = 'auto' | RuntimeName | readonly RuntimeName[];
export type PrecisionPreference = 'auto' | Precision | readonly Precision[];
/** What `auto` ranks candidates by (config model.optimiseFor). */
export type OptimiseFor = 'latency' | 'throughput';

/** Runtime types a bundle file format maps to (runtimes are named after the formats they load). */
export const RUNTIME_NAMES: readonly RuntimeName[] = ['onnx', 'tflite', 'tfjs'];
export const PRECISIONS: readonly Precision[] = ['int8', 'fp32'];
/** int8 goes ahead of fp32 of the same runtime only when its median is at least this much lower. */
export const INT8_MARGIN = 0.05;
export const CACHE_FILE = 'runtime-selection.json';
const MAX_CACHE_ENTRIES = 256;
/** Back-to-back calls per candidate per benchmark round. */
const BENCH_BLOCK = 5;

export interface Candidate {
  runtime: string;
  precision: Precision;
  file: ModelFileEntry;
  /** Intra-op threads this candidate runs with (auto with model.intraOpThreads 0); absent: as configured. */
  threads?: number;
}

/** Runtimes whose speed depends on model.intraOpThreads (TF.js and LiteRT WASM run one thread in Node). */
export const THREADED_RUNTIMES: readonly string[] = ['onnx'];

export type CandidateStatus = 'measured' | 'not-measured' | 'unavailable' | 'excluded' | 'no-file' | 'failed';

export interface Latency {
  p50: number;
  p90: number;
  mean: number;
  runs: number;
}

export interface CandidateReport {
  runtime: string;
  precision: Precision;
  /** Intra-op threads of this variant (auto tries 1 and cores/workers when model.intraOpThreads is 0). */
  threads?: number;
  /** Bundle-relative path of the model file ('' when the bundle has none for this runtime/precision). */
  file: string;
  status: CandidateStatus;
  /** Batch-1 latency of the golden input through the serving path (ms). */
  ms?: Latency;
  provider?: string;
  /** Providers/backends tried before `provider`, with the reason each failed. */
  attempts?: ProviderAttempt[];
  reason?: string;
  /** This entry came from the cache (measured at `measuredAt`). */
  cached?: boolean;
  measuredAt?: string;
}

export interface MachineFingerprint {
  cpu: string;
  cores: number;
  arch: string;
  platform: string;
  node: string;
  agent: string;
  /** Versions of the runtime packages installed ('absent' when not installed). */
  runtimes: Record<string, string>;
}

export interface SelectionReport {
  /** 'auto' (benchmark) or 'preference' (config order); 'fallback' after a runtime failed while serving. */
  mode: 'auto' | 'preference' | 'fallback';
  /** What measured candidates were ranked by. */
  optimiseFor: OptimiseFor;
  runtimes: string[];
  precisions: string[];
  /** The candidate serving now (set once it loaded and passed its golden check). */
  chosen?: { runtime: string; precision: Precision; file: string; provider: string; ms?: number; threads?: number };
  /** Candidates in serving/fallback order, as `runtime/precision`. */
  order: string[];
  candidates: CandidateReport[];
  /** A benchmark decided the order (measured now or cached). */
  benchmarked: boolean;
  /** Every measurement used came from the cache: nothing was benchmarked on this load. */
  cached: boolean;
  measuredAt?: string;
  /** Human-readable notes for health and logs. */
  notes: string[];
  fingerprint: MachineFingerprint;
}

export interface SelectOptions {
  runtime: RuntimePreference;
  precision?: PrecisionPreference;
  /** latency (default): rank by batch-1 median; throughput: by median / servingWorkers. */
  optimiseFor?: OptimiseFor;
  /** Runtime options the candidates are opened with (the serving ones: same threads, providers). */
  load: RuntimeLoadOptions;
  /** Isolation the benchmark sessions use (the serving one; callbacks are not passed on). */
  isolation?: IsolationOptions;
  /** Where the benchmark cache lives; absent: no cache. */
  stateDir?: string;
  /** Timed-run budget of the benchmark, all candidates together (default 2000 ms). */
  budgetMs?: number;
  /** Timed runs per candidate: at least minRuns (default 10), at most maxRuns (default 200). */
  minRuns?: number;
  maxRuns?: number;
  /** Runtimes not to use (failed while serving). */
  excludeRuntimes?: readonly string[];
  /** A fixed order of `runtime/precision` keys (the fallback path): no benchmark; other candidates are left out. */
  order?: readonly string[];
  /**
   * false: never benchmark here; use the cached measurement when every candidate has one, else the static
   * order (runtime list order, fp32 before int8). For one-shot in-process loads (`edge-agent infer`).
   */
  measure?: boolean;
  /** Agent version for the fingerprint (default: package.json's). */
  agentVersion?: string;
}

export interface SelectionPlan {
  report: SelectionReport;
  /** Usable candidates in the order to try them. */
  order: Candidate[];
}

/** `onnx/int8`, or `onnx/int8@1t` for a thread variant. */
export function candidateKey(c: { runtime: string; precision: string; threads?: number | undefined }): string {
  return `${c.runtime}/${c.precision}${c.threads ? `@${c.threads}t` : ''}`;
}

function sameCandidate(a: { runtime: string; precision: string; threads?: number | undefined }, b: { runtime: string; precision: string; threads?: number | undefined }): boolean {
  return candidateKey(a) === candidateKey(b);
}

/** Threads one worker gets when model.intraOpThreads is 0 (as openSession computes them): the cores shared by the pool. */
export function defaultThreads(isolation: IsolationOptions | undefined): number {
  return Math.max(1, Math.floor(os.availableParallelism() / servingWorkers({}, isolation)));
}

/**
 * Workers a candidate serves with: model.workers when set; with workers left to the agent (0), a thread
 * variant gets cores / its threads workers (every core busy), any other candidate the default pool
 * (defaultWorkers); in-process serving (isolation none, or none given) is one.
 */
export function servingWorkers(c: { threads?: number | undefined }, isolation: IsolationOptions | undefined): number {
  if (!isolation || isolation.mode === 'none') return 1;
  if (isolation.workers > 0) return isolation.workers;
  return c.threads ? Math.max(1, Math.floor(os.availableParallelism() / c.threads)) : defaultWorkers();
}

/** `auto` | one | list -> list (auto: every known runtime in the default order). */
export function runtimeList(pref: RuntimePreference | undefined): string[] {
  if (pref === undefined || pref === 'auto') return [...RUNTIME_NAMES];
  return typeof pref === 'string' ? [pref] : [...pref];
}

export function precisionList(pref: PrecisionPreference | undefined): Precision[] {
  if (pref === undefined || pref === 'auto') return [...PRECISIONS];
  return typeof pref === 'string' ? [pref] : [...pref];
}

// ---------------------------------------------------------------------------------------------------
// Machine fingerprint and cache

const packageRoot = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'node_modules'))) return dir;
    dir = path.dirname(dir);
  }
  return process.cwd();
})();

const RUNTIME_PACKAGES = [
  'onnxruntime-node',
  '@tensorflow/tfjs',
  '@tensorflow/tfjs-backend-wasm',
  '@tensorflow/tfjs-node',
  '@tensorflow/tfjs-tflite',
  '@litertjs/core',
  'node-tflite',
];

function packageVersion(name: string, root = packageRoot): string {
  try {
    return (JSON.parse(readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'absent';
  }
}

let fingerprintMemo: MachineFingerprint | undefined;
/** What the benchmark depends on besides the model file and options. */
export function machineFingerprint(agentVersion?: string): MachineFingerprint {
  if (!fingerprintMemo) {
    const runtimes: Record<string, string> = {};
    for (const p of RUNTIME_PACKAGES) runtimes[p] = packageVersion(p);
    fingerprintMemo = {
      cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
      cores: os.availableParallelism(),
      arch: process.arch,
      platform: process.platform,
      node: process.versions.node,
      agent: readAgentVersion(),
      runtimes,
    };
  }
  return agentVersion ? { ...fingerprintMemo, agent: agentVersion } : fingerprintMemo;
}

function readAgentVersion(): string {
  try {
    return (JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

interface CacheEntry {
  runtime: string;
  precision: Precision;
  fileSha256: string;
  status: 'measured' | 'unavailable' | 'excluded';
  ms?: Latency;
  provider?: string;
  attempts?: ProviderAttempt[];
  reason?: string;
  measuredAt: string;
}

interface CacheFile {
  version: 1;
  entries: Record<string, CacheEntry>;
}

/**
 * Model file + runtime + precision + threads + runtime options + machine. Not the isolation mode or worker
 * count (their IPC cost is the same for every candidate; the threads they imply are in `threads`), so the
 * in-process `infer` finds what the agent measured.
 */
function cacheKey(c: Candidate, opts: SelectOptions, fp: MachineFingerprint): string {
  const material = {
    file: c.file.sha256,
    runtime: c.runtime,
    precision: c.precision,
    threads: c.threads ?? null,
    options: {
      providers: opts.load.providers,
      intraOpThreads: opts.load.intraOpThreads,
      interOpThreads: opts.load.interOpThreads,
      graphOptimization: opts.load.graphOptimization,
    },
    machine: fp,
  };
  return createHash('sha256').update(JSON.stringify(material)).digest('hex');
}

async function readCache(stateDir: string | undefined): Promise<CacheFile> {
  if (!stateDir) return { version: 1, entries: {} };
  try {
    const parsed = JSON.parse(await readFile(path.join(stateDir, CACHE_FILE), 'utf8')) as CacheFile;
    if (parsed.version === 1 && parsed.entries && typeof parsed.entries === 'object') return parsed;
  } catch {
    // no cache yet, or unreadable: measure
  }
  return { version: 1, entries: {} };
}

/** Writes atomically (temp + rename); a cache that cannot be written costs a benchmark next time, nothing else. */
async function writeCache(stateDir: string | undefined, cache: CacheFile): Promise<string | undefined> {
  if (!stateDir) return undefined;
  // Bounded: entries of old bundles and machines go, oldest first.
  const keys = Object.keys(cache.entries);
  if (keys.length > MAX_CACHE_ENTRIES) {
    keys.sort((a, b) => cache.entries[a]!.measuredAt.localeCompare(cache.entries[b]!.measuredAt));
    for (const k of keys.slice(0, keys.length - MAX_CACHE_ENTRIES)) delete cache.entries[k];
  }
  try {
    await mkdir(stateDir, { recursive: true });
    const file = path.join(stateDir, CACHE_FILE);
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(cache, null, 2) + '\n');
    await rename(tmp, file);
    return undefined;
  } catch (e) {
    return `benchmark cache not written (${(e as Error).message}); the next start measures again`;
  }
}

// ---------------------------------------------------------------------------------------------------
// Benchmark

function reasonOf(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const one = msg.replace(/\s+/g, ' ').trim();
  return one.length > 400 ? `${one.slice(0, 397)}...` : one;
}

function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i]!;
}

export function latencyOf(times: number[]): Latency {
  const s = [...times].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / Math.max(1, s.length);
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return { p50: r(quantile(s, 0.5)), p90: r(quantile(s, 0.9)), mean: r(mean), runs: s.length };
}

/** The first golden input that applies to `file` as a batch-1 tensor, else zeros of the input shape. */
export async function benchmarkInput(bundle: LoadedBundle, file: ModelFileEntry): Promise<{ data: Float32Array; shape: number[] }> {
  const spec = bundle.manifest.input.shape;
  const shape = [1, ...spec.slice(1).map((d) => (d > 0 ? d : 1))];
  const size = shape.reduce((a, b) => a * b, 1);
  const g = goldenEntries(bundle, file)[0];
  if (g) {
    try {
      const real = await resolveBundlePath(bundle.dir, g.input.path, 'golden input');
      const bytes = await readFile(real);
      if (bytes.length === size * 4) {
        const copy = new Uint8Array(bytes.byteLength);
        copy.set(bytes);
        const view = new DataView(copy.buffer);
        const data = new Float32Array(size);
        for (let i = 0; i < size; i++) data[i] = view.getFloat32(4 * i, true);
        return { data, shape };
      }
    } catch {
      // fall through to zeros; the golden check itself reports a bad golden input
    }
  }
  return { data: new Float32Array(size), shape };
}

/** Opens a candidate the way it would serve (runtime options, isolation without the agent's callbacks). */
export async function openCandidate(
  bundle: LoadedBundle,
  c: Candidate,
  load: RuntimeLoadOptions,
  isolation?: IsolationOptions,
): Promise<InferenceSessionHandle> {
  const iso: IsolationOptions | undefined = isolation ? { ...isolation } : undefined;
  if (iso) {
    delete iso.onRuntimeFailed;
    delete iso.onRestart;
  }
  const { providers, interOpThreads, graphOptimization } = load;
  const intraOpThreads = c.threads ?? load.intraOpThreads;
  return openSession(c.runtime, path.join(bundle.dir, c.file.path), { providers, intraOpThreads, interOpThreads, graphOptimization }, iso);
}

interface Measured {
  status: 'measured' | 'unavailable' | 'excluded';
  ms?: Latency;
  provider?: string;
  attempts?: ProviderAttempt[];
  reason?: string;
}

/**
 * Opens every candidate (golden-checked), warms each, then times batch-1 runs of its golden input in
 * blocks of BENCH_BLOCK calls, candidates in turn, until `budgetMs` of timed runs or maxRuns each.
 * Sessions are disposed.
 */
export async function benchmarkCandidates(
  bundle: LoadedBundle,
  candidates: Candidate[],
  opts: Pick<SelectOptions, 'load' | 'isolation' | 'budgetMs' | 'minRuns' | 'maxRuns'>,
): Promise<Map<Candidate, Measured>> {
  const out = new Map<Candidate, Measured>();
  const open: { c: Candidate; session: InferenceSessionHandle; input: { data: Float32Array; shape: number[] }; times: number[] }[] = [];
  try {
    for (const c of candidates) {
      let session: InferenceSessionHandle;
      try {
        session = await openCandidate(bundle, c, opts.load, opts.isolation);
      } catch (e) {
        out.set(c, { status: 'unavailable', reason: reasonOf(e) });
        continue;
      }
      const base = { provider: session.provider, attempts: session.attempts };
      try {
        const golden = await runGolden(bundle, c.file, session);
        const bad = golden.filter((g) => !g.ok);
        if (bad.length) {
          out.set(c, { ...base, status: 'excluded', reason: `golden check failed: ${bad.map((g) => `'${g.name}' ${g.problem ?? 'mismatch'}`).join('; ')}` });
          await session.dispose().catch(() => undefined);
          continue;
        }
        const input = await benchmarkInput(bundle, c.file);
        for (let i = 0; i < 3; i++) await session.run(input.data, input.shape);
        open.push({ c, session, input, times: [] });
      } catch (e) {
        out.set(c, { ...base, status: 'excluded', reason: `failed on its golden input: ${reasonOf(e)}` });
        await session.dispose().catch(() => undefined);
      }
    }
    const minRuns = opts.minRuns ?? 10;
    const maxRuns = Math.max(minRuns, opts.maxRuns ?? 200);
    const budget = opts.budgetMs ?? 2000;
    const start = performance.now();
    const failed = new Set<Candidate>();
    // Blocks of back-to-back calls, candidates in turn: rounds spread a noisy neighbour over all of them,
    // blocks keep a runtime's thread pool warm as when files arrive together (call-by-call interleaving
    // let ORT's pool go idle between calls and favoured 1 thread; bench/runtimes 07:04).
    for (let done = 0; done < maxRuns; done += BENCH_BLOCK) {
      if (done >= minRuns && performance.now() - start > budget) break;
      for (const o of open) {
        if (failed.has(o.c)) continue;
        try {
          for (let i = 0; i < BENCH_BLOCK; i++) {
            const t0 = performance.now();
            await o.session.run(o.input.data, o.input.shape);
            o.times.push(performance.now() - t0);
          }
        } catch (e) {
          failed.add(o.c);
          out.set(o.c, { provider: o.session.provider, attempts: o.session.attempts, status: 'excluded', reason: `failed while benchmarked: ${reasonOf(e)}` });
        }
      }
    }
    for (const o of open) {
      if (!failed.has(o.c)) out.set(o.c, { status: 'measured', ms: latencyOf(o.times), provider: o.session.provider, attempts: o.session.attempts });
    }
  } finally {
    await Promise.all(open.map((o) => o.session.dispose().catch(() => undefined)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Selection

function fmtMs(x: number): string {
  return x >= 10 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(3);
}

/**
 * Plans which candidate serves: lists the bundle's candidates for the allowed runtimes/precisions,
 * benchmarks when the order depends on speed (auto; or precision auto with both precisions of a
 * runtime), using and refreshing the cache, and returns the report and the order to try.
 */
export async function planSelection(bundle: LoadedBundle, opts: SelectOptions): Promise<SelectionPlan> {
  const auto = opts.runtime === 'auto';
  const precisionAuto = (opts.precision ?? 'auto') === 'auto';
  const runtimes = runtimeList(opts.runtime);
  const precisions = precisionList(opts.precision);
  const excluded = new Set(opts.excludeRuntimes ?? []);
  const fp = machineFingerprint(opts.agentVersion);
  const files = modelFiles(bundle);
  const reports: CandidateReport[] = [];
  const candidates: Candidate[] = [];
  const notes: string[] = [];

  for (const runtime of runtimes) {
    const mine = files.filter((f) => f.format === runtime);
    if (excluded.has(runtime)) {
      for (const f of mine.filter((x) => precisions.includes(x.precision))) {
        reports.push({ runtime, precision: f.precision, file: f.path, status: 'failed', reason: `runtime '${runtime}' failed while serving` });
      }
      continue;
    }
    if (!mine.length) {
      // a listed runtime without a file: say so (auto lists every known runtime; only named ones are noted)
      if (!auto) notes.push(`${runtime}: bundle has no ${runtime} model file`);
      continue;
    }
    for (const precision of precisions) {
      const f = mine.find((x) => x.precision === precision);
      if (!f) continue;
      // auto with threads left to the agent (intraOpThreads 0): measure 1 thread too, since on a busy or
      // small box one thread per worker can beat cores/workers threads (bench/runtimes).
      const many = defaultThreads(opts.isolation);
      if (auto && opts.load.intraOpThreads === 0 && THREADED_RUNTIMES.includes(runtime) && many > 1) {
        candidates.push({ runtime, precision, file: f, threads: many }, { runtime, precision, file: f, threads: 1 });
      } else candidates.push({ runtime, precision, file: f });
    }
    if (!candidates.some((c) => c.runtime === runtime)) {
      notes.push(`${runtime}: bundle has no ${precisions.join('/')} ${runtime} file (has ${mine.map((x) => x.precision).join(', ')})`);
    }
  }

  // What needs a measurement.
  const multiPrecision = (rt: string) => candidates.filter((c) => c.runtime === rt).length > 1;
  const toMeasure = opts.order
    ? []
    : auto
      ? candidates.length > 1
        ? [...candidates]
        : []
      : precisionAuto
        ? candidates.filter((c) => multiPrecision(c.runtime))
        : [];
  const cache = await readCache(opts.stateDir);
  const results = new Map<Candidate, Measured & { cached?: boolean; measuredAt?: string }>();
  const missing: Candidate[] = [];
  for (const c of toMeasure) {
    const hit = cache.entries[cacheKey(c, opts, fp)];
    if (hit && hit.fileSha256 === c.file.sha256) {
      const m: Measured & { cached: boolean; measuredAt: string } = { status: hit.status, cached: true, measuredAt: hit.measuredAt };
      if (hit.ms) m.ms = hit.ms;
      if (hit.provider) m.provider = hit.provider;
      if (hit.attempts) m.attempts = hit.attempts;
      if (hit.reason) m.reason = hit.reason;
      results.set(c, m);
    } else missing.push(c);
  }
  let measuredAt: string | undefined;
  if (missing.length && opts.measure === false) {
    // No benchmark in this process: the static order, unless the agent measured every candidate already.
    results.clear();
    toMeasure.splice(0);
    notes.push('not benchmarked in this process (in-process load): static order; the agent measures and caches on its first start');
  } else if (missing.length) {
    measuredAt = new Date().toISOString();
    const measured = await benchmarkCandidates(bundle, missing, opts);
    for (const [c, m] of measured) {
      results.set(c, { ...m, measuredAt });
      const entry: CacheEntry = { runtime: c.runtime, precision: c.precision, fileSha256: c.file.sha256, status: m.status, measuredAt };
      if (m.ms) entry.ms = m.ms;
      if (m.provider) entry.provider = m.provider;
      if (m.attempts) entry.attempts = m.attempts;
      if (m.reason) entry.reason = m.reason;
      cache.entries[cacheKey(c, opts, fp)] = entry;
    }
    const problem = await writeCache(opts.stateDir, cache);
    if (problem) notes.push(problem);
  } else if (toMeasure.length) {
    measuredAt = [...results.values()].map((r) => r.measuredAt ?? '').sort().pop();
  }

  // Order: usable candidates; measured ones by median (int8 needs the margin over its fp32 sibling).
  const usable = candidates.filter((c) => {
    const r = results.get(c);
    return !r || r.status === 'measured';
  });
  const msOf = (c: Candidate) => results.get(c)?.ms?.p50;
  const optimiseFor = opts.optimiseFor ?? 'latency';
  // throughput: time per image with every worker of the candidate busy
  const costOf = (c: Candidate): number | undefined => {
    const ms = msOf(c);
    return ms === undefined || optimiseFor === 'latency' ? ms : ms / servingWorkers(c, opts.isolation);
  };
  const effective = (c: Candidate): number => {
    const ms = costOf(c) ?? Infinity;
    if (c.precision !== 'int8' || !precisionAuto) return ms;
    const sibling = usable.some((x) => x.runtime === c.runtime && x.precision === 'fp32' && msOf(x) !== undefined);
    return sibling ? ms / (1 - INT8_MARGIN) : ms;
  };
  let order: Candidate[];
  if (opts.order) {
    const byKey = new Map(usable.map((c) => [candidateKey(c), c]));
    order = opts.order.map((k) => byKey.get(k)).filter((c): c is Candidate => c !== undefined);
  } else if (!toMeasure.length && precisionAuto) {
    // static order: runtimes as listed (auto: onnx, tflite, tfjs), fp32 before int8 (no measured reason for int8)
    order = [];
    for (const rt of runtimes) {
      const mine = usable.filter((c) => c.runtime === rt);
      order.push(...mine.filter((c) => c.precision === 'fp32'), ...mine.filter((c) => c.precision !== 'fp32'));
    }
  } else if (auto) {
    const precisionRank = (c: Candidate) => (precisionAuto ? 0 : precisions.indexOf(c.precision));
    order = [...usable].sort((a, b) => precisionRank(a) - precisionRank(b) || effective(a) - effective(b));
  } else {
    order = [];
    for (const rt of runtimes) {
      const mine = usable.filter((c) => c.runtime === rt);
      if (precisionAuto && mine.every((c) => msOf(c) !== undefined)) mine.sort((a, b) => effective(a) - effective(b));
      order.push(...mine);
    }
  }

  // int8 vs fp32 per runtime, in words.
  for (const rt of new Set(candidates.map((c) => c.runtime))) {
    const best = (precision: Precision): number | undefined => {
      const ms = candidates.filter((c) => c.runtime === rt && c.precision === precision && results.get(c)?.status === 'measured').map((c) => msOf(c)!);
      return ms.length ? Math.min(...ms) : undefined;
    };
    const a = best('int8');
    const b = best('fp32');
    if (a === undefined || b === undefined) continue;
    if (a > b) notes.push(`int8 slower than fp32 here: ${fmtMs(a)} vs ${fmtMs(b)} ms (${rt}, p50 batch 1); ${rt} serves fp32`);
    else if (precisionAuto && a > b * (1 - INT8_MARGIN)) {
      notes.push(`int8 not faster than fp32 by ${INT8_MARGIN * 100}% here: ${fmtMs(a)} vs ${fmtMs(b)} ms (${rt}, p50 batch 1); ${rt} serves fp32`);
    } else notes.push(`int8 faster than fp32 here: ${fmtMs(a)} vs ${fmtMs(b)} ms (${rt}, p50 batch 1, ${(b / a).toFixed(2)}x)`);
  }

  for (const c of candidates) {
    const r = results.get(c);
    const rep: CandidateReport = { runtime: c.runtime, precision: c.precision, file: c.file.path, status: r ? r.status : 'not-measured' };
    if (c.threads) rep.threads = c.threads;
    if (r?.ms) rep.ms = r.ms;
    if (r?.provider) rep.provider = r.provider;
    if (r?.attempts) rep.attempts = r.attempts;
    if (r?.reason) rep.reason = r.reason;
    if (r?.cached) rep.cached = true;
    if (r?.measuredAt) rep.measuredAt = r.measuredAt;
    reports.push(rep);
    if (r?.status === 'unavailable') notes.push(`${candidateKey(c)} unavailable: ${r.reason ?? 'failed to load'}`);
    if (r?.status === 'excluded') notes.push(`${candidateKey(c)} excluded: ${r.reason ?? 'failed its checks'}`);
  }

  if (optimiseFor === 'throughput' && toMeasure.length && !opts.order) {
    const per = usable
      .filter((c) => msOf(c) !== undefined)
      .map((c) => `${candidateKey(c)} ${fmtMs(msOf(c)!)} ms / ${servingWorkers(c, opts.isolation)} = ${fmtMs(costOf(c)!)}`);
    notes.push(`ranked for throughput (p50 / workers, ms per image with a backlog): ${per.join(', ')}`);
  }

  const report: SelectionReport = {
    mode: excluded.size ? 'fallback' : auto ? 'auto' : 'preference',
    optimiseFor,
    runtimes,
    precisions,
    order: order.map(candidateKey),
    candidates: reports,
    benchmarked: toMeasure.length > 0,
    cached: toMeasure.length > 0 && missing.length === 0,
    notes,
    fingerprint: fp,
  };
  if (measuredAt) report.measuredAt = measuredAt;
  return { report, order };
}

/** Records the outcome of trying `c` to serve (it failed to load or its golden check failed). */
export function markFailed(report: SelectionReport, c: Candidate, reason: string, status: 'unavailable' | 'excluded' = 'unavailable'): void {
  const rep = report.candidates.find((x) => sameCandidate(x, c));
  if (rep) {
    rep.status = status;
    rep.reason = reason;
  }
  report.order = report.order.filter((k) => k !== candidateKey(c));
  report.notes.push(`${candidateKey(c)} ${status === 'excluded' ? 'excluded' : 'could not serve'}: ${reason}`);
}

/** Records the candidate that serves, with the provider its session settled on. */
export function markChosen(report: SelectionReport, c: Candidate, session: InferenceSessionHandle): void {
  const rep = report.candidates.find((x) => sameCandidate(x, c));
  const chosen: NonNullable<SelectionReport['chosen']> = { runtime: c.runtime, precision: c.precision, file: c.file.path, provider: session.provider };
  if (c.threads) chosen.threads = c.threads;
  if (rep?.ms) chosen.ms = rep.ms.p50;
  if (rep) {
    rep.provider = session.provider;
    rep.attempts = session.attempts;
  }
  report.chosen = chosen;
  for (const a of session.attempts.filter((x) => !x.ok)) {
    report.notes.push(`${c.runtime}: provider ${a.provider} unavailable: ${a.reason ?? 'failed'}`);
  }
}

/** One line for logs: "onnx/fp32 (cpu) chosen by benchmark, 0.33 ms p50 (cached); order onnx/fp32 > tfjs/fp32". */
export function describeSelection(r: SelectionReport): string {
  if (!r.chosen) return `no runtime could serve (${r.notes.join('; ')})`;
  const how = r.mode === 'auto' ? `chosen by on-device benchmark${r.optimiseFor === 'throughput' ? ' for throughput' : ''}` : r.mode === 'fallback' ? 'fallback' : r.benchmarked ? 'preference order, precision by benchmark' : 'preference order';
  const ms = r.chosen.ms !== undefined ? `, ${fmtMs(r.chosen.ms)} ms p50` : '';
  const cached = r.benchmarked ? (r.cached ? ' (cached measurement)' : ' (measured now)') : '';
  return `${candidateKey(r.chosen)} (${r.chosen.provider}) ${how}${ms}${cached}; order ${r.order.join(' > ')}`;
}
