/**
 * bench/quantize: edge-quantize vs PyTorch's own post-training quantization on the shipped orientation-qa
 * model, same calibration set, same held-out evaluation, same ONNX Runtime (a benchmark, not a test).
 *
 *   npm run build && npm run bench:quantize [-- --methods minmax,percentile,entropy,minmax-int8act,dynamic --runs 300 --threads 1]
 *
 * 1. image folders from the training cache (quantize/make_sets.py, if missing): 256 train-split slices
 *    for calibration, the 230 held-out test-split slices (x4 rotations = 920 cases) for evaluation;
 * 2. edge-quantize (library call, the same code as the CLI) on a temp copy of the bundle, once per
 *    variant: each calibration method with uint8 activations, min-max with int8 activations, dynamic
 *    (gate forced, so every variant is measured; its verdict is kept in the JSON);
 * 3. models/training/ptq_reference.py: PyTorch 1.13 FX PTQ (engine onednn, per-channel int8 weights,
 *    HistogramObserver activations) on the same calibration folder, exported to ONNX;
 * 4. accuracy and label agreement of every int8 model against fp32 on the evaluation set (ORT, graph
 *    optimisation `all`), then batch-1 latency of fp32 and every int8 model interleaved round-robin on
 *    the same inputs (a noisy neighbour slows all of them alike) at each thread count;
 * 5. prints a Markdown table and writes bench/results/quantize-<UTC timestamp>.json.
 */
import { spawnSync } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type * as OrtTypes from 'onnxruntime-node';
import type { CalibrationMethod } from '../../quantize/calibrate.js';
import { loadEvalSet } from '../../quantize/dataset.js';
import { compareAccuracy, createSession, machineInfo, runOne, type AccuracyReport } from '../../quantize/evaluate.js';
import { createProgress } from '../../quantize/progress.js';
import { DEFAULTS, loadOrtModule, quantizeBundle, type QuantizeReport } from '../../quantize/run.js';
import { loadBundle } from '../../src/models/bundle.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const PY = '/usr/bin/python3';
const SHIPPED = path.join(ROOT, 'models', 'orientation-qa');
const DEV_KEY = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pem');
const SETS = path.join(ROOT, 'models', 'training', '.cache', 'quantize');

const { values: args } = parseArgs({
  options: {
    // variants: a calibration method (static, uint8 activations), `<method>-int8act` (int8
    // activations) or `dynamic`
    methods: { type: 'string', default: 'minmax,percentile,entropy,minmax-int8act,dynamic' },
    runs: { type: 'string', default: '300' },
    threads: { type: 'string', default: '1' },
    engine: { type: 'string', default: 'onednn' },
  },
});

function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.floor((s.length - 1) / 2)] as number;
}

function r3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

async function main(): Promise<void> {
  const started = new Date();
  const progress = createProgress(process.stderr, true);
  if (!existsSync(path.join(SETS, 'calibration')) || !existsSync(path.join(SETS, 'eval'))) {
    const r = spawnSync(PY, [path.join(ROOT, 'quantize', 'make_sets.py')], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error('quantize/make_sets.py failed (run models/training/data.py first)');
  }
  const calibration = path.join(SETS, 'calibration');
  const evalDir = path.join(SETS, 'eval');
  const work = await mkdtemp(path.join(os.tmpdir(), 'bench-quantize-'));
  const bundleDir = path.join(work, 'bundle');
  await cp(SHIPPED, bundleDir, { recursive: true });
  const ort: typeof OrtTypes = loadOrtModule();
  const runs = Number(args.runs);
  const threads = (args.threads ?? '1').split(',').map(Number);
  const methods = (args.methods ?? 'minmax').split(',');

  // 2. edge-quantize, one model per method
  const edge: Record<string, { report: QuantizeReport; file: string }> = {};
  for (const method of methods) {
    const output = `model_int8_${method}.onnx`;
    const report = await quantizeBundle({
      ...DEFAULTS,
      bundle: bundleDir,
      calibration,
      eval: evalDir,
      evalLayout: 'rotate',
      mode: method === 'dynamic' ? 'dynamic' : 'static',
      method: (method === 'dynamic' ? 'minmax' : method.replace(/-int8act$/, '')) as CalibrationMethod,
      activations: method.endsWith('-int8act') ? 'int8' : 'uint8',
      keepFp32: [],
      latencyRuns: 100,
      force: true,
      key: DEV_KEY,
      output,
      progress,
      log: (l) => process.stderr.write(`${method}: ${l}\n`),
    });
    edge[method] = { report, file: path.join(bundleDir, output) };
  }

  // 3. PyTorch PTQ reference on the same calibration folder
  const ptqFile = path.join(work, 'ptq_reference.onnx');
  const t0 = Date.now();
  const py = spawnSync(PY, [path.join(ROOT, 'models', 'training', 'ptq_reference.py'), '--calibration', calibration, '--engine', args.engine ?? 'onednn', '--out', ptqFile], {
    encoding: 'utf8',
  });
  if (py.status !== 0) throw new Error(`ptq_reference.py failed: ${py.stderr}`);
  const ptqInfo = JSON.parse(py.stdout.trim().split('\n').pop() as string) as Record<string, unknown>;
  const ptqSeconds = (Date.now() - t0) / 1000;

  // 4. accuracy against fp32, then interleaved latency
  const bundle = await loadBundle(bundleDir);
  const ev = await loadEvalSet(evalDir, bundle.manifest, 'rotate');
  const models: Record<string, Uint8Array> = {
    fp32: new Uint8Array(await readFile(path.join(bundleDir, 'model.onnx'))),
    'pytorch-ptq': new Uint8Array(await readFile(ptqFile)),
  };
  for (const m of methods) models[`edge-quantize-${m}`] = new Uint8Array(await readFile(edge[m]?.file as string));
  const accuracy: Record<string, AccuracyReport> = {};
  {
    const fp32 = await createSession(ort, models.fp32 as Uint8Array, { threads: 1, graphOptimization: 'all' });
    for (const [name, bytes] of Object.entries(models)) {
      if (name === 'fp32') continue;
      const s = await createSession(ort, bytes, { threads: 1, graphOptimization: 'all' });
      accuracy[name] = await compareAccuracy(ort, fp32, s, ev.cases, bundle.manifest.output.activation, progress);
      await s.release();
    }
    await fp32.release();
  }
  const latency: Record<string, Record<string, { p50: number; p90: number; runs: number }>> = {};
  for (const t of threads) {
    const sessions = await Promise.all(Object.entries(models).map(async ([name, b]) => [name, await createSession(ort, b, { threads: t, graphOptimization: 'all' })] as const));
    const times: Record<string, number[]> = Object.fromEntries(sessions.map(([n]) => [n, [] as number[]]));
    for (let i = 0; i < 20; i++) for (const [, s] of sessions) await runOne(ort, s, (ev.cases[i % ev.cases.length] as { input: { data: Float32Array; shape: number[] } }).input);
    progress.start(`latency ${t} thread(s), ${sessions.length} models interleaved`, runs);
    for (let i = 0; i < runs; i++) {
      const x = (ev.cases[i % ev.cases.length] as { input: { data: Float32Array; shape: number[] } }).input;
      // rotate the order each round so no model always runs first
      for (let j = 0; j < sessions.length; j++) {
        const [name, s] = sessions[(i + j) % sessions.length] as (typeof sessions)[number];
        const a = process.hrtime.bigint();
        await runOne(ort, s, x);
        (times[name] as number[]).push(Number(process.hrtime.bigint() - a) / 1e6);
      }
      progress.tick();
    }
    progress.done();
    latency[`${t}`] = Object.fromEntries(
      Object.entries(times).map(([n, a]) => {
        const s = [...a].sort((x, y) => x - y);
        return [n, { p50: r3(median(a)), p90: r3(s[Math.floor(0.9 * (s.length - 1))] as number), runs: a.length }];
      }),
    );
    for (const [, s] of sessions) await s.release();
  }

  // targets
  const best = methods[0] as string;
  const e = accuracy[`edge-quantize-${best}`] as AccuracyReport;
  const p = accuracy['pytorch-ptq'] as AccuracyReport;
  const lat1 = latency[`${threads[0]}`] as Record<string, { p50: number }>;
  const edgeMs = (lat1[`edge-quantize-${best}`] as { p50: number }).p50;
  const ptqMs = (lat1['pytorch-ptq'] as { p50: number }).p50;
  const fp32Ms = (lat1.fp32 as { p50: number }).p50;
  const targets = {
    method: best,
    threads: threads[0],
    int8AccuracyDropPoints: r3(e.accuracyDropPoints),
    'int8AccuracyDropPoints<=1': e.accuracyDropPoints <= 1,
    speedupVsFp32: r3(fp32Ms / edgeMs),
    'speedupVsFp32>=1.5': fp32Ms / edgeMs >= 1.5,
    accuracyVsPytorchPoints: r3((e.int8Accuracy - p.int8Accuracy) * 100),
    'accuracyWithin0.5PointOfPytorch': Math.abs(e.int8Accuracy - p.int8Accuracy) * 100 <= 0.5,
    latencyVsPytorch: r3(edgeMs / ptqMs),
    'latencyWithin10%OfPytorch': edgeMs <= ptqMs * 1.1,
  };
  const result = {
    bench: 'quantize',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    command: `node dist/bench/quantize/run.js --methods ${methods.join(',')} --runs ${runs} --threads ${threads.join(',')} --engine ${args.engine ?? 'onednn'}`,
    machine: machineInfo(ort.env.versions.node ?? ort.env.versions.common ?? 'unknown'),
    model: { bundle: 'models/orientation-qa', version: bundle.manifest.version, fp32: 'model.onnx' },
    sets: { calibration: edge[best]?.report.calibration, evaluation: { layout: ev.layout, files: ev.summary.used, cases: ev.cases.length, sha256: ev.summary.sha256 } },
    edgeQuantize: Object.fromEntries(
      Object.entries(edge).map(([m, v]) => [m, { gate: v.report.gate, inToolLatency: v.report.latency, goldenMaxAbsDiff: v.report.goldenMaxAbsDiff, quantizedOps: v.report.quantizedOps }]),
    ),
    pytorchPtq: { ...ptqInfo, seconds: ptqSeconds },
    accuracy: Object.fromEntries(Object.entries(accuracy).map(([n, a]) => [n, { ...a, fp32Accuracy: r3(a.fp32Accuracy), int8Accuracy: r3(a.int8Accuracy) }])),
    latencyMs: latency,
    targets,
  };
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const out = path.join(ROOT, 'bench', 'results', `quantize-${stamp}.json`);
  mkdirSync(path.dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify(result, null, 2) + '\n');

  const rows = Object.keys(models).map((n) => {
    const a = accuracy[n];
    const l = threads.map((t) => (latency[`${t}`]?.[n] as { p50: number }).p50);
    return `| ${n} | ${a ? (a.int8Accuracy * 100).toFixed(2) : (accuracy[`edge-quantize-${best}`] ? ((accuracy[`edge-quantize-${best}`] as AccuracyReport).fp32Accuracy * 100).toFixed(2) : '-')} | ${a ? (a.labelAgreement * 100).toFixed(2) : '100'} | ${l.map((x) => x.toFixed(2)).join(' | ')} | ${l.map((x, i) => ((latency[`${threads[i]}`]?.fp32 as { p50: number }).p50 / x).toFixed(2)).join(' | ')} |`;
  });
  process.stdout.write(
    [
      `| model | accuracy % (${ev.cases.length} cases) | label agreement with fp32 % | ${threads.map((t) => `p50 ms ${t}T`).join(' | ')} | ${threads.map((t) => `speedup ${t}T`).join(' | ')} |`,
      `|---|---|---|${threads.map(() => '---').join('|')}|${threads.map(() => '---').join('|')}|`,
      ...rows,
      '',
      `targets: ${JSON.stringify(targets)}`,
      `wrote ${path.relative(ROOT, out)}`,
      '',
    ].join('\n'),
  );
  await rm(work, { recursive: true, force: true });
}

main().catch((e: unknown) => {
  process.stderr.write(`bench/quantize: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
