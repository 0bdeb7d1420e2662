/**
 * bench/runtimes: every runtime x precision file of a bundle (default: the shipped orientation-qa)
 * x intra-op threads (1, 2; ORT only: TF.js and LiteRT.js are single-threaded in Node) x inference workers (1, 2), served the way the agent serves it (supervised
 * worker processes, src/runtimes/worker/), batch 1 on the bundle's real pre-processed golden inputs.
 * A benchmark, not a test; figures go into docs/PERFORMANCE.md "Runtimes".
 *
 *   npm run bench:runtimes                      (builds first)
 *   nice -n -5 node dist/bench/runtimes/run.js [--bundle DIR] [--rounds 3] [--latency-ms 1500]
 *     [--throughput-ms 2000] [--threads 1,2] [--workers 1,2] [--only onnx/fp32,tflite/int8] [--out DIR]
 *
 * Per configuration and round:
 * - latency: one caller, sequential batch-1 calls (the golden inputs in turn) for --latency-ms after a
 *   warm-up; p50 / p99 of the call time as the agent sees it (IPC to the worker included);
 * - throughput: 2 x workers callers keep the pool busy for --throughput-ms; images/s.
 * Configurations are measured round-robin, --rounds times, so slow drift of a shared machine spreads over
 * all of them; the table gives the median of the rounds and the spread (min..max of the round medians).
 * Reference ratio: ORT fp32, 1 thread, 1 worker = 1.00x (p50 latency; throughput likewise).
 * Then what the agent's default config would serve (model.runtime auto, model.precision auto,
 * intraOpThreads 0, workers 0: src/runtimes/select.ts with a fresh benchmark), and whether that default
 * is within 10% of the fastest measured configuration (issue 4's target); likewise what
 * model.optimiseFor: throughput serves, against the most images/s.
 * Writes bench/results/runtimes-<UTC timestamp>.json and prints Markdown.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadBundle, modelFiles } from '../../src/models/bundle.js';
import type { LoadedBundle } from '../../src/models/types.js';
import { THREADED_RUNTIMES, benchmarkInput, candidateKey, machineFingerprint, planSelection, servingWorkers, type Candidate, type OptimiseFor } from '../../src/runtimes/select.js';
import { goldenEntries } from '../../src/models/golden.js';
import { runtimeRegistry } from '../../src/runtimes/registry.js';
import type { InferenceSessionHandle, RuntimeLoadOptions } from '../../src/runtimes/types.js';
import { defaultWorkers, openSession, type IsolationOptions } from '../../src/runtimes/worker/supervisor.js';
import { percentile } from '../e2e/stats.js';
import { readFile } from 'node:fs/promises';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..', '..');
const { values: args } = parseArgs({
  options: {
    bundle: { type: 'string', default: path.join(ROOT, 'models/orientation-qa') },
    rounds: { type: 'string', default: '3' },
    'latency-ms': { type: 'string', default: '1500' },
    'throughput-ms': { type: 'string', default: '2000' },
    threads: { type: 'string', default: '1,2' },
    workers: { type: 'string', default: '1,2' },
    only: { type: 'string' },
    name: { type: 'string' },
    out: { type: 'string', default: path.join(ROOT, 'bench/results') },
  },
});
const ROUNDS = Number(args.rounds);
const LATENCY_MS = Number(args['latency-ms']);
const THROUGHPUT_MS = Number(args['throughput-ms']);
const THREADS = args.threads.split(',').map(Number);
const WORKERS = args.workers.split(',').map(Number);

function log(msg: string): void {
  process.stderr.write(`[bench:runtimes ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function loadOptions(threads: number): RuntimeLoadOptions {
  return { providers: ['cpu'], intraOpThreads: threads, interOpThreads: 1, graphOptimization: 'all' };
}

function isolation(workers: number): IsolationOptions {
  return { mode: 'process', workers, inferenceTimeoutMs: 60_000, maxWorkerRssMb: 0, restartLimit: { count: 5, windowSec: 60 } };
}

/** Every golden input of the file (real pre-processed images), as batch-1 tensors. */
async function inputs(bundle: LoadedBundle, c: Candidate): Promise<{ data: Float32Array; shape: number[] }[]> {
  const shape = [1, ...bundle.manifest.input.shape.slice(1)];
  const out: { data: Float32Array; shape: number[] }[] = [];
  for (const g of goldenEntries(bundle, c.file)) {
    const bytes = await readFile(path.join(bundle.dir, g.input.path));
    const copy = new Uint8Array(bytes.byteLength);
    copy.set(bytes);
    out.push({ data: new Float32Array(copy.buffer), shape });
  }
  if (!out.length) out.push(await benchmarkInput(bundle, c.file));
  return out;
}

interface Config {
  key: string;
  runtime: string;
  precision: string;
  threads: number;
  workers: number;
  candidate: Candidate;
}

interface RoundResult {
  p50: number;
  p99: number;
  calls: number;
  imagesPerSec: number;
  provider: string;
}

async function measure(bundle: LoadedBundle, cfg: Config, xs: { data: Float32Array; shape: number[] }[]): Promise<RoundResult> {
  const session: InferenceSessionHandle = await openSession(cfg.runtime, path.join(bundle.dir, cfg.candidate.file.path), loadOptions(cfg.threads), isolation(cfg.workers));
  try {
    for (let i = 0; i < 10; i++) await session.run(xs[i % xs.length]!.data, xs[i % xs.length]!.shape);
    const times: number[] = [];
    const t0 = performance.now();
    for (let i = 0; performance.now() - t0 < LATENCY_MS || times.length < 20; i++) {
      const x = xs[i % xs.length]!;
      const s = performance.now();
      await session.run(x.data, x.shape);
      times.push(performance.now() - s);
    }
    let done = 0;
    const end = performance.now() + THROUGHPUT_MS;
    const start = performance.now();
    await Promise.all(
      Array.from({ length: 2 * cfg.workers }, async (_, k) => {
        for (let i = k; performance.now() < end; i++) {
          const x = xs[i % xs.length]!;
          await session.run(x.data, x.shape);
          done++;
        }
      }),
    );
    const elapsed = (performance.now() - start) / 1000;
    const r = (v: number) => Math.round(v * 1000) / 1000;
    return { p50: r(percentile(times, 50)), p99: r(percentile(times, 99)), calls: times.length, imagesPerSec: Math.round((done / elapsed) * 10) / 10, provider: session.provider };
  } finally {
    await session.dispose();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function main(): Promise<void> {
  const started = new Date();
  const bundle = await loadBundle(args.bundle);
  const registered = new Set(runtimeRegistry().types());
  const candidates: Candidate[] = modelFiles(bundle)
    .filter((f) => registered.has(f.format))
    .map((f) => ({ runtime: f.format, precision: f.precision, file: f }))
    .filter((c) => !args.only || args.only.split(',').includes(candidateKey(c)));
  const skipped = modelFiles(bundle).filter((f) => !registered.has(f.format)).map((f) => `${f.format}/${f.precision}: runtime not registered`);
  const configs: Config[] = [];
  for (const c of candidates) {
    // TF.js (wasm) and LiteRT.js run one thread in Node whatever intraOpThreads says: one thread row only.
    for (const threads of THREADED_RUNTIMES.includes(c.runtime) ? THREADS : [1]) {
      for (const workers of WORKERS) {
        configs.push({ key: `${candidateKey(c)} t${threads} w${workers}`, runtime: c.runtime, precision: c.precision, threads, workers, candidate: c });
      }
    }
  }
  log(`${bundle.manifest.id}@${bundle.manifest.version}: ${candidates.map(candidateKey).join(', ')}; ${configs.length} configurations x ${ROUNDS} rounds`);
  const xsByCandidate = new Map<Candidate, { data: Float32Array; shape: number[] }[]>();
  for (const c of candidates) xsByCandidate.set(c, await inputs(bundle, c));

  const rounds = new Map<string, RoundResult[]>();
  const failures = new Map<string, string>();
  for (let round = 1; round <= ROUNDS; round++) {
    for (const cfg of configs) {
      if (failures.has(cfg.key)) continue;
      try {
        const r = await measure(bundle, cfg, xsByCandidate.get(cfg.candidate)!);
        rounds.set(cfg.key, [...(rounds.get(cfg.key) ?? []), r]);
        log(`round ${round} ${cfg.key}: p50 ${r.p50} ms, p99 ${r.p99} ms, ${r.imagesPerSec} images/s (${r.provider})`);
      } catch (e) {
        failures.set(cfg.key, e instanceof Error ? e.message : String(e));
        log(`${cfg.key}: FAILED ${failures.get(cfg.key)!}`);
      }
    }
  }

  const rows = configs
    .filter((cfg) => rounds.has(cfg.key))
    .map((cfg) => {
      const rs = rounds.get(cfg.key)!;
      const p50s = rs.map((r) => r.p50);
      const p99s = rs.map((r) => r.p99);
      const tps = rs.map((r) => r.imagesPerSec);
      return {
        key: cfg.key,
        runtime: cfg.runtime,
        precision: cfg.precision,
        threads: cfg.threads,
        workers: cfg.workers,
        provider: rs[0]!.provider,
        p50: median(p50s),
        p50Range: [Math.min(...p50s), Math.max(...p50s)],
        p99: median(p99s),
        p99Range: [Math.min(...p99s), Math.max(...p99s)],
        imagesPerSec: median(tps),
        imagesPerSecRange: [Math.min(...tps), Math.max(...tps)],
        rounds: rs,
      };
    });
  const ref = rows.find((r) => r.runtime === 'onnx' && r.precision === 'fp32' && r.threads === 1 && r.workers === 1);
  const withRatios = rows.map((r) => ({
    ...r,
    latencyRatio: ref ? Math.round((ref.p50 / r.p50) * 100) / 100 : null,
    throughputRatio: ref ? Math.round((r.imagesPerSec / ref.imagesPerSec) * 100) / 100 : null,
  }));

  // What the default config serves: auto selection with the agent's defaults (fresh benchmark, no cache),
  // and what it serves with model.optimiseFor: throughput (a second fresh benchmark, ranked by p50 / workers).
  const defaultWorkerCount = defaultWorkers();
  const defaultThreads = Math.max(1, Math.floor(os.availableParallelism() / defaultWorkerCount));
  const choose = async (optimiseFor: OptimiseFor) => {
    log(`auto selection, optimiseFor ${optimiseFor} (default workers ${defaultWorkerCount}, intra-op threads ${defaultThreads})`);
    const plan = await planSelection(bundle, { runtime: 'auto', precision: 'auto', optimiseFor, load: loadOptions(0), isolation: isolation(0) });
    const c = plan.order[0];
    // the pool the agent would serve it with (classifier.ts: servingWorkers)
    const key = c ? `${c.runtime}/${c.precision} t${c.threads ?? defaultThreads} w${servingWorkers(c, isolation(0))}` : undefined;
    return { plan, key, row: withRatios.find((r) => r.key === key) };
  };
  const byLatency = await choose('latency');
  const byThroughput = await choose('throughput');
  const plan = byLatency.plan;
  const autoKey = byLatency.key;
  const autoRow = byLatency.row;
  const tpRow = byThroughput.row;
  const fastestLatency = [...withRatios].sort((a, b) => a.p50 - b.p50)[0];
  const fastestThroughput = [...withRatios].sort((a, b) => b.imagesPerSec - a.imagesPerSec)[0];
  const target = {
    defaultChoice: autoKey ?? null,
    fastestByLatency: fastestLatency?.key ?? null,
    fastestByThroughput: fastestThroughput?.key ?? null,
    latencyWithin10pct: autoRow && fastestLatency ? autoRow.p50 <= fastestLatency.p50 * 1.1 : null,
    throughputWithin10pct: autoRow && fastestThroughput ? autoRow.imagesPerSec >= fastestThroughput.imagesPerSec * 0.9 : null,
    latencyGapPct: autoRow && fastestLatency ? Math.round((autoRow.p50 / fastestLatency.p50 - 1) * 1000) / 10 : null,
    throughputGapPct: autoRow && fastestThroughput ? Math.round((1 - autoRow.imagesPerSec / fastestThroughput.imagesPerSec) * 1000) / 10 : null,
    // model.optimiseFor: throughput, against the fastest by images/s
    throughputChoice: byThroughput.key ?? null,
    throughputChoiceWithin10pct: tpRow && fastestThroughput ? tpRow.imagesPerSec >= fastestThroughput.imagesPerSec * 0.9 : null,
    throughputChoiceGapPct: tpRow && fastestThroughput ? Math.round((1 - tpRow.imagesPerSec / fastestThroughput.imagesPerSec) * 1000) / 10 : null,
  };

  const finished = new Date();
  const stamp = started.toISOString().replace(/[:.]/g, '-').replace(/-\d{3}Z$/, 'Z');
  const name = args.name ?? `runtimes-${stamp}`;
  const result = {
    name,
    command: `node dist/bench/runtimes/run.js ${process.argv.slice(2).join(' ')}`.trim(),
    started: started.toISOString(),
    finished: finished.toISOString(),
    nice: os.getPriority(),
    loadavg: os.loadavg(),
    machine: machineFingerprint(),
    bundle: { id: bundle.manifest.id, version: bundle.manifest.version, dir: path.relative(ROOT, bundle.dir) || bundle.dir },
    settings: { rounds: ROUNDS, latencyMs: LATENCY_MS, throughputMs: THROUGHPUT_MS, threads: THREADS, workers: WORKERS, isolation: 'process', batch: 1, graphOptimization: 'all' },
    skipped,
    failures: Object.fromEntries(failures),
    reference: ref?.key ?? null,
    rows: withRatios,
    auto: { report: plan.report, chosen: autoKey ?? null },
    autoThroughput: { report: byThroughput.plan.report, chosen: byThroughput.key ?? null },
    target,
  };
  mkdirSync(args.out, { recursive: true });
  const file = path.join(args.out, `${name}.json`);
  writeFileSync(file, JSON.stringify(result, null, 2) + '\n');

  const f = (x: number, d = 2) => x.toFixed(d);
  const md: string[] = [];
  md.push(`Run \`${name}\` (${started.toISOString()} .. ${finished.toISOString().slice(11, 19)}Z, ${ROUNDS} rounds, load average at end ${os.loadavg().map((x) => x.toFixed(1)).join(' / ')}):`);
  md.push('');
  md.push('| runtime / precision | threads | workers | provider | p50 ms (spread) | p99 ms | images/s (spread) | vs ORT fp32 1t1w (latency / throughput) |');
  md.push('|---|---|---|---|---|---|---|---|');
  for (const r of withRatios) {
    const mark = (r.key === autoKey ? ' **(default: auto)**' : '') + (r.key === byThroughput.key ? ' **(auto, optimiseFor throughput)**' : '');
    const threads = THREADED_RUNTIMES.includes(r.runtime) ? String(r.threads) : '1 (fixed)';
    md.push(
      `| ${r.runtime}/${r.precision}${mark} | ${threads} | ${r.workers} | ${r.provider} | ${f(r.p50)} (${f(r.p50Range[0]!)}..${f(r.p50Range[1]!)}) | ${f(r.p99)} | ${f(r.imagesPerSec, 0)} (${f(r.imagesPerSecRange[0]!, 0)}..${f(r.imagesPerSecRange[1]!, 0)}) | ${r.latencyRatio?.toFixed(2) ?? '-'}x / ${r.throughputRatio?.toFixed(2) ?? '-'}x |`,
    );
  }
  md.push('');
  md.push(
    `Default choice (auto, default threads/workers): ${autoKey ?? 'none'}; fastest by p50: ${target.fastestByLatency ?? '-'} (default ${target.latencyGapPct ?? '-'}% slower: ${target.latencyWithin10pct ? 'within' : 'NOT within'} 10%); ` +
      `fastest by throughput: ${target.fastestByThroughput ?? '-'} (default ${target.throughputGapPct ?? '-'}% lower: ${target.throughputWithin10pct ? 'within' : 'NOT within'} 10%).`,
  );
  md.push(
    `optimiseFor throughput choice: ${byThroughput.key ?? 'none'}; fastest by throughput: ${target.fastestByThroughput ?? '-'} (choice ${target.throughputChoiceGapPct ?? '-'}% lower: ${target.throughputChoiceWithin10pct ? 'within' : 'NOT within'} 10%).`,
  );
  if (plan.report.notes.length) md.push(`Selection notes: ${plan.report.notes.join('; ')}.`);
  const tpNote = byThroughput.plan.report.notes.find((n) => n.startsWith('ranked for throughput'));
  if (tpNote) md.push(`Throughput ranking: ${tpNote}.`);
  if (skipped.length || failures.size) md.push(`Not measured: ${[...skipped, ...[...failures].map(([k, v]) => `${k}: ${v}`)].join('; ')}.`);
  process.stdout.write(md.join('\n') + '\n');
  log(`wrote ${path.relative(ROOT, file)}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:runtimes failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
