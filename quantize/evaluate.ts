/**
 * fp32 vs quantized, measured in the same run on this machine: accuracy on a labelled held-out set,
 * agreement (same label; largest difference of any output probability) and latency at batch 1 with the
 * configured threads and graph optimisation `all` (int8 QDQ is only fused into integer kernels at
 * `extended`/`all`). Latency: both sessions warmed up, then runs interleaved fp32/int8 over the real
 * evaluation inputs (so drift in machine load hits both alike); the median of each is compared.
 */
import os from 'node:os';
import type * as OrtTypes from 'onnxruntime-node';
import type { EvalCase } from './dataset.js';
import type { Progress } from './progress.js';

type Ort = typeof OrtTypes;

export interface SessionOptions {
  threads: number;
  graphOptimization: 'disabled' | 'basic' | 'extended' | 'all';
}

export async function createSession(ort: Ort, model: Uint8Array | string, o: SessionOptions): Promise<OrtTypes.InferenceSession> {
  return ort.InferenceSession.create(model as Uint8Array, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: o.graphOptimization,
    intraOpNumThreads: o.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });
}

export function activate(logits: Float32Array, activation: 'softmax' | 'sigmoid' | 'none'): Float64Array {
  const out = new Float64Array(logits.length);
  if (activation === 'sigmoid') {
    logits.forEach((v, i) => (out[i] = 1 / (1 + Math.exp(-v))));
  } else if (activation === 'softmax') {
    let max = -Infinity;
    for (const v of logits) max = Math.max(max, v);
    let sum = 0;
    logits.forEach((v, i) => {
      out[i] = Math.exp(v - max);
      sum += out[i];
    });
    for (let i = 0; i < out.length; i++) out[i] = (out[i] as number) / sum;
  } else logits.forEach((v, i) => (out[i] = v));
  return out;
}

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if ((a[i] as number) > (a[best] as number)) best = i;
  return best;
}

export async function runOne(ort: Ort, s: OrtTypes.InferenceSession, input: { data: Float32Array; shape: number[] }): Promise<Float32Array> {
  const out = await s.run({ [s.inputNames[0] as string]: new ort.Tensor('float32', input.data, input.shape) });
  const t = out[s.outputNames[0] as string];
  if (!t) throw new Error('model gave no output');
  return t.data as Float32Array;
}

export interface AccuracyReport {
  cases: number;
  fp32Accuracy: number;
  int8Accuracy: number;
  /** Percentage points (fp32 - int8); positive = int8 worse. */
  accuracyDropPoints: number;
  /** Share of cases where int8 gives the same label as fp32. */
  labelAgreement: number;
  /** Largest |p_fp32 - p_int8| over every case and output. */
  maxScoreDiff: number;
  meanMaxScoreDiff: number;
}

export async function compareAccuracy(
  ort: Ort,
  fp32: OrtTypes.InferenceSession,
  int8: OrtTypes.InferenceSession,
  cases: EvalCase[],
  activation: 'softmax' | 'sigmoid' | 'none',
  progress?: Progress,
): Promise<AccuracyReport> {
  let ok32 = 0;
  let ok8 = 0;
  let agree = 0;
  let maxDiff = 0;
  let sumDiff = 0;
  progress?.start('evaluate fp32 vs int8', cases.length);
  for (const c of cases) {
    const p32 = activate(await runOne(ort, fp32, c.input), activation);
    const p8 = activate(await runOne(ort, int8, c.input), activation);
    const l32 = argmax(p32);
    const l8 = argmax(p8);
    if (l32 === c.label) ok32++;
    if (l8 === c.label) ok8++;
    if (l32 === l8) agree++;
    let d = 0;
    for (let i = 0; i < p32.length; i++) d = Math.max(d, Math.abs((p32[i] as number) - (p8[i] as number)));
    if (!Number.isFinite(d)) d = Infinity;
    maxDiff = Math.max(maxDiff, d);
    sumDiff += d;
    progress?.tick();
  }
  progress?.done();
  const n = cases.length;
  return {
    cases: n,
    fp32Accuracy: ok32 / n,
    int8Accuracy: ok8 / n,
    accuracyDropPoints: ((ok32 - ok8) / n) * 100,
    labelAgreement: agree / n,
    maxScoreDiff: maxDiff,
    meanMaxScoreDiff: sumDiff / n,
  };
}

export interface LatencyReport {
  threads: number;
  graphOptimization: string;
  runs: number;
  fp32MedianMs: number;
  int8MedianMs: number;
  fp32P90Ms: number;
  int8P90Ms: number;
  /** fp32 median / int8 median (> 1: int8 faster). */
  speedup: number;
}

function quantile(sorted: number[], q: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i] as number;
}

export async function compareLatency(
  ort: Ort,
  fp32: OrtTypes.InferenceSession,
  int8: OrtTypes.InferenceSession,
  cases: EvalCase[],
  o: SessionOptions & { runs: number; warmup: number },
  progress?: Progress,
): Promise<LatencyReport> {
  const inputs = cases.map((c) => c.input);
  const pick = (i: number): { data: Float32Array; shape: number[] } => inputs[i % inputs.length] as { data: Float32Array; shape: number[] };
  for (let i = 0; i < o.warmup; i++) {
    await runOne(ort, fp32, pick(i));
    await runOne(ort, int8, pick(i));
  }
  const t32: number[] = [];
  const t8: number[] = [];
  progress?.start(`latency (${o.threads} thread${o.threads === 1 ? '' : 's'}, batch 1)`, o.runs);
  for (let i = 0; i < o.runs; i++) {
    const x = pick(i);
    // alternate which goes first, so neither always runs on a warmer cache
    const order: [OrtTypes.InferenceSession, number[]][] = i % 2 ? [[fp32, t32], [int8, t8]] : [[int8, t8], [fp32, t32]];
    for (const [s, acc] of order) {
      const t0 = process.hrtime.bigint();
      await runOne(ort, s, x);
      acc.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    progress?.tick();
  }
  progress?.done();
  t32.sort((a, b) => a - b);
  t8.sort((a, b) => a - b);
  const m32 = quantile(t32, 0.5);
  const m8 = quantile(t8, 0.5);
  return {
    threads: o.threads,
    graphOptimization: o.graphOptimization,
    runs: o.runs,
    fp32MedianMs: round(m32),
    int8MedianMs: round(m8),
    fp32P90Ms: round(quantile(t32, 0.9)),
    int8P90Ms: round(quantile(t8, 0.9)),
    speedup: round(m32 / m8),
  };
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** The machine the figures were measured on (no host name: it can identify a site). */
export function machineInfo(ortVersion: string): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    logicalCores: cpus.length,
    arch: process.arch,
    platform: `${os.platform()} ${os.release()}`,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    onnxruntime: ortVersion,
    loadAverage1m: Math.round((os.loadavg()[0] ?? 0) * 100) / 100,
  };
}
