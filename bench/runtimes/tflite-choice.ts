/**
 * Which TFLite runtime for Node: LiteRT.js (@litertjs/core, the agent's tflite runtime) vs
 * @tensorflow/tfjs-tflite (the design's first choice), on the shipped bundle's TFLite files
 * (tflite/model_fp32.tflite, tflite/model_int8.tflite), with ONNX Runtime fp32 (1 thread) as the reference.
 *
 *   npm run build && node dist/bench/runtimes/tflite-choice.js [--tfjs-tflite-dir DIR] [--runs N] [--rounds R] [--out DIR]
 *
 * @tensorflow/tfjs-tflite is NOT a dependency of the agent: in this project's tree npm refuses it
 * (ERESOLVE, it peer-pins @tensorflow/tfjs-core 4.9.0 against our 4.22). To measure it, install it in a
 * scratch folder the way its users would (npm then hoists tfjs-core 4.9.0 and nests 4.22 under tfjs):
 *   mkdir -p /tmp/tfjs-tflite && cd /tmp/tfjs-tflite && npm init -y && \
 *     npm install @tensorflow/tfjs-tflite@0.0.1-alpha.10 @tensorflow/tfjs@4.22
 * and pass --tfjs-tflite-dir /tmp/tfjs-tflite (default: that path; skipped with the reason when absent).
 *
 * Each (candidate x precision) runs in its own child process: one process never holds two runtimes or
 * their Node shims. Per child: load time, then `--warmup` runs and `--runs` timed runs of batch 1 over the
 * bundle's golden inputs (cycled), latency p50/p90/p99/mean in ms and CPU ms per run; the max abs difference of the outputs
 * from the golden logits (correctness); for tfjs-tflite also the tfjs-core versions it sees and whether
 * its tfjs-core shares the global engine with @tensorflow/tfjs 4.22 loaded beside it.
 * `--rounds R` (default 5) repeats the whole plan, interleaved, and reports each candidate's median round
 * by CPU time per run (process.cpuUsage: on a shared, loaded machine the wall-clock latency mostly
 * measures the other processes; CPU time of these single-threaded runs is what a run costs on an idle
 * core). Wall-clock p50/p99 are reported too, and every round is kept in the JSON.
 * Results: one JSON in bench/results/tflite-choice-<time>.json and a Markdown table on stdout.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const BUNDLE = path.join(ROOT, 'models', 'orientation-qa');

interface Golden {
  name: string;
  input: { path: string; shape: number[] };
  logits: number[];
}

interface ChildResult {
  candidate: string;
  precision: string;
  ok: boolean;
  error?: string;
  version?: string;
  build?: string;
  loadMs?: number;
  latencyMs?: { p50: number; p90: number; p99: number; mean: number; n: number };
  /** CPU time (user + system) of the process per timed run: what a run costs on an idle core. */
  cpuMsPerRun?: number;
  goldenMaxAbsDiff?: number;
  coexistence?: Record<string, unknown>;
}

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? (process.argv[i + 1] as string) : def;
}

function goldens(): { g: Golden; x: Float32Array }[] {
  const m = JSON.parse(readFileSync(path.join(BUNDLE, 'manifest.json'), 'utf8')) as { golden: Golden[] };
  return m.golden.map((g) => {
    const b = readFileSync(path.join(BUNDLE, g.input.path));
    const copy = new Uint8Array(b.byteLength);
    copy.set(b);
    return { g, x: new Float32Array(copy.buffer) };
  });
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

async function measure(run: (x: Float32Array) => Promise<Float32Array>, warmup: number, runs: number): Promise<Pick<ChildResult, 'latencyMs' | 'cpuMsPerRun' | 'goldenMaxAbsDiff'>> {
  const gs = goldens();
  let maxDiff = 0;
  for (const { g, x } of gs) {
    const y = await run(x);
    for (let i = 0; i < g.logits.length; i++) maxDiff = Math.max(maxDiff, Math.abs((y[i] as number) - (g.logits[i] as number)));
  }
  for (let i = 0; i < warmup; i++) await run(gs[i % gs.length]!.x);
  const t: number[] = [];
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < runs; i++) {
    const x = gs[i % gs.length]!.x;
    const t0 = performance.now();
    await run(x);
    t.push(performance.now() - t0);
  }
  const cpu = process.cpuUsage(cpu0);
  t.sort((a, b) => a - b);
  const r = (v: number): number => Math.round(v * 1000) / 1000;
  return {
    latencyMs: { p50: r(quantile(t, 0.5)), p90: r(quantile(t, 0.9)), p99: r(quantile(t, 0.99)), mean: r(t.reduce((a, b) => a + b, 0) / t.length), n: t.length },
    cpuMsPerRun: r((cpu.user + cpu.system) / 1000 / runs),
    goldenMaxAbsDiff: Math.round(maxDiff * 1e6) / 1e6,
  };
}

const SHAPE = [1, 1, 128, 128];

async function childLitert(precision: string, warmup: number, runs: number): Promise<ChildResult> {
  const { TfliteRuntime, loadLiteRtInNode } = await import('../../src/runtimes/tflite.js');
  const t0 = performance.now();
  const s = await new TfliteRuntime().load(path.join(BUNDLE, 'tflite', `model_${precision}.tflite`), { providers: ['cpu'], intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' });
  const loadMs = performance.now() - t0;
  const { version, build } = await loadLiteRtInNode();
  const m = await measure(async (x) => (await s.run(x, SHAPE)).data, warmup, runs);
  await s.dispose();
  return { candidate: 'litertjs', precision, ok: true, version: `@litertjs/core ${version}`, build: build.file, loadMs: Math.round(loadMs), ...m };
}

async function childOnnx(precision: string, warmup: number, runs: number): Promise<ChildResult> {
  const { OnnxRuntime } = await import('../../src/runtimes/onnx.js');
  const t0 = performance.now();
  const s = await new OnnxRuntime().load(path.join(BUNDLE, 'model.onnx'), { providers: ['cpu'], intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' });
  const loadMs = performance.now() - t0;
  const m = await measure(async (x) => (await s.run(x, SHAPE)).data, warmup, runs);
  await s.dispose();
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'node_modules', 'onnxruntime-node', 'package.json'), 'utf8')) as { version: string };
  return { candidate: 'onnxruntime-node', precision, ok: true, version: `onnxruntime-node ${pkg.version}`, build: 'cpu EP, 1 thread, graph optimization all', loadMs: Math.round(loadMs), ...m };
}

/** tfjs-tflite in Node: the same kind of scoped shims as src/runtimes/tflite.ts, plus `location` and the single-thread SIMD build. */
async function childTfjsTflite(precision: string, warmup: number, runs: number, dir: string): Promise<ChildResult> {
  const req = createRequire(path.join(dir, 'package.json'));
  const pkgDir = path.dirname(req.resolve('@tensorflow/tfjs-tflite/package.json'));
  const wasmDir = path.join(pkgDir, 'wasm') + path.sep;
  const g = globalThis as Record<string, unknown>;
  // @tensorflow/tfjs (4.22) first, as an agent that also serves TF.js models would have it loaded.
  const tfjs = req('@tensorflow/tfjs') as { version_core: string; engine: () => unknown; env: () => { set: (k: string, v: boolean) => void } };
  tfjs.env().set('PROD', true);
  g.self = g;
  g.location = { origin: '', href: wasmDir, protocol: 'file:' };
  g.importScripts = (url: string): void => {
    // the single-thread SIMD build, never *_threaded.js (it needs Web Workers)
    const file = url.replace(/^file:\/\//, '').replace(/_threaded\.js$/, '.js').replace(/_cc\.js$/, '_cc_simd.js');
    const wrap = vm.runInThisContext(`(function (require, __dirname, __filename) {${readFileSync(file, 'utf8')}\n;return tflite_web_api_ModuleFactory;})`, { filename: file }) as (
      r: NodeRequire,
      d: string,
      f: string,
    ) => (a: Record<string, unknown>) => unknown;
    const factory = wrap(createRequire(file), path.dirname(file), file);
    g.tflite_web_api_ModuleFactory = (a: Record<string, unknown>) => factory({ ...a, wasmBinary: readFileSync(file.replace(/\.js$/, '.wasm')) });
  };
  const tflite = req('@tensorflow/tfjs-tflite') as {
    setWasmPath: (p: string) => void;
    loadTFLiteModel: (m: ArrayBuffer, o: { numThreads: number }) => Promise<{ predict: (t: unknown) => { dataSync: () => Float32Array; dispose: () => void } }>;
  };
  const coreReq = createRequire(req.resolve('@tensorflow/tfjs-tflite'));
  const core = coreReq('@tensorflow/tfjs-core') as { version_core: string; engine: () => unknown; tensor: (x: Float32Array, s: number[]) => { dispose: () => void } };
  tflite.setWasmPath(wasmDir);
  const bytes = readFileSync(path.join(BUNDLE, 'tflite', `model_${precision}.tflite`));
  const t0 = performance.now();
  const model = await tflite.loadTFLiteModel(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength), { numThreads: 1 });
  const loadMs = performance.now() - t0;
  for (const n of ['self', 'location', 'importScripts', 'tflite_web_api_ModuleFactory']) delete g[n];
  const m = await measure(
    (x) => {
      const t = core.tensor(x, SHAPE);
      const y = model.predict(t);
      const d = y.dataSync().slice();
      t.dispose();
      y.dispose();
      return Promise.resolve(d);
    },
    warmup,
    runs,
  );
  const version = (JSON.parse(readFileSync(path.join(pkgDir, 'package.json'), 'utf8')) as { version: string }).version;
  return {
    candidate: 'tfjs-tflite',
    precision,
    ok: true,
    version: `@tensorflow/tfjs-tflite ${version}`,
    build: 'tflite_web_api_cc_simd (single thread)',
    loadMs: Math.round(loadMs),
    ...m,
    coexistence: {
      tfjsCoreSeenByTfjsTflite: core.version_core,
      tfjsCoreOfTfjs: tfjs.version_core,
      sharedGlobalEngine: core.engine() === tfjs.engine(),
    },
  };
}

async function child(): Promise<void> {
  const [candidate, precision, warmup, runs, dir] = process.argv.slice(3);
  let r: ChildResult;
  try {
    if (candidate === 'litertjs') r = await childLitert(precision!, Number(warmup), Number(runs));
    else if (candidate === 'onnxruntime-node') r = await childOnnx(precision!, Number(warmup), Number(runs));
    else r = await childTfjsTflite(precision!, Number(warmup), Number(runs), dir!);
  } catch (e) {
    r = { candidate: candidate!, precision: precision!, ok: false, error: e instanceof Error ? e.message : String(e) };
  }
  process.stdout.write(`RESULT ${JSON.stringify(r)}\n`);
}

function main(): void {
  const runs = arg('--runs', '60');
  const roundsArg = arg('--rounds', '5');
  const warmup = arg('--warmup', '20');
  const dir = arg('--tfjs-tflite-dir', '/tmp/tfjs-tflite');
  const outDir = arg('--out', path.join(ROOT, 'bench', 'results'));
  const plan: [string, string][] = [
    ['onnxruntime-node', 'fp32'],
    ['litertjs', 'fp32'],
    ['litertjs', 'int8'],
    ['tfjs-tflite', 'fp32'],
    ['tfjs-tflite', 'int8'],
  ];
  // Rounds interleave the candidates so a change in the machine's load hits all of them alike; a
  // candidate's figure is its median-p50 round (all rounds are kept in the JSON).
  const rounds: ChildResult[][] = [];
  for (let round = 0; round < Number(roundsArg); round++) {
    const results: ChildResult[] = [];
    for (const [candidate, precision] of plan) {
      if (candidate === 'tfjs-tflite' && !existsSync(path.join(dir, 'node_modules', '@tensorflow', 'tfjs-tflite'))) {
        results.push({ candidate, precision, ok: false, error: `@tensorflow/tfjs-tflite is not installed in ${dir} (see the header of this file)` });
        continue;
      }
      const self = fileURLToPath(import.meta.url);
      const r = spawnSync(process.execPath, [self, '--child', candidate, precision, warmup, runs, dir], { encoding: 'utf8', maxBuffer: 1 << 24, timeout: 600_000 });
      const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
      results.push(line ? (JSON.parse(line.slice(7)) as ChildResult) : { candidate, precision, ok: false, error: `child exited ${r.status}: ${r.stderr.slice(-500)}` });
      process.stderr.write(`round ${round + 1}: ${candidate} ${precision}: ${line ? 'done' : 'failed'}\n`);
    }
    rounds.push(results);
  }
  const results = plan.map(([candidate, precision]) => {
    const all = rounds.map((rs) => rs.find((r) => r.candidate === candidate && r.precision === precision)!);
    const ok = all.filter((r) => r.ok).sort((a, b) => a.cpuMsPerRun! - b.cpuMsPerRun!);
    return ok.length ? (ok[Math.floor((ok.length - 1) / 2)] as ChildResult) : (all[0] as ChildResult);
  });
  const ref = results.find((r) => r.candidate === 'onnxruntime-node' && r.ok)?.latencyMs?.p50;
  let load = '';
  try {
    load = readFileSync('/proc/loadavg', 'utf8').trim();
  } catch {
    // not Linux
  }
  let git = '';
  try {
    git = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  } catch {
    // not a checkout
  }
  const report = {
    bench: 'tflite-choice',
    when: new Date().toISOString(),
    gitRevision: git,
    machine: { cpus: os.availableParallelism(), cpuModel: os.cpus()[0]?.model.trim(), node: process.version, loadavgBefore: load },
    model: 'models/orientation-qa 1.1.0 (4-view CNN, 363M MACs per image), batch 1, 1 thread',
    runs: Number(runs),
    warmup: Number(warmup),
    rounds: rounds.map((rs) => rs.map((r) => ({ candidate: r.candidate, precision: r.precision, p50: r.latencyMs?.p50, p99: r.latencyMs?.p99, cpuMsPerRun: r.cpuMsPerRun }))),
    loadavgAfter: (() => {
      try {
        return readFileSync('/proc/loadavg', 'utf8').trim();
      } catch {
        return '';
      }
    })(),
    results: results.map((r) => ({ ...r, vsOnnxFp32P50: ref && r.latencyMs ? Math.round((r.latencyMs.p50 / ref) * 100) / 100 : undefined })),
  };
  mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `tflite-choice-${report.when.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify(report, null, 2) + '\n');
  const rows = report.results.map((r) =>
    r.ok
      ? `| ${r.candidate} | ${r.precision} | ${r.latencyMs!.p50} | ${r.latencyMs!.p99} | ${r.cpuMsPerRun} | ${r.vsOnnxFp32P50 ?? '-'} | ${r.loadMs} | ${r.goldenMaxAbsDiff} |`
      : `| ${r.candidate} | ${r.precision} | - | - | - | - | - | ${r.error} |`,
  );
  process.stdout.write(
    ['| runtime | precision | p50 ms | p99 ms | CPU ms / run | p50 / ORT fp32 | load ms | golden max abs diff |', '|---|---|---|---|---|---|---|---|', ...rows].join('\n') +
      `\n\n${path.relative(ROOT, file)}\n`,
  );
}

if (process.argv[2] === '--child') await child();
else main();
