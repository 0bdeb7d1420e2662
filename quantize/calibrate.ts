/**
 * Activation ranges for static quantization. The fp32 model runs in onnxruntime-node with the tensors
 * to calibrate exposed as extra graph outputs; every calibration input goes through it, and the values
 * seen give a range per tensor:
 *
 * - minmax: the smallest and largest value seen (no clipping; sensitive to outliers).
 * - percentile: the [100-p, p] percentiles of all values seen (default p = 99.99), from a 4096-bin
 *   histogram over the min-max range (second pass). A non-negative tensor keeps min = 0.
 * - entropy: the clipping threshold T of |x| that minimises the KL divergence between the distribution
 *   of |x| (2048-bin histogram, values past T folded into the last bin) and the same distribution
 *   quantized to the int8 levels available (TensorRT's calibration, Migacz 2017). Range [-T, T], or
 *   [0, T] for a non-negative tensor, intersected with the min-max range.
 *
 * Every range contains 0 (so 0 is exactly representable: zero padding, ReLU) and has min < max.
 */
import type * as OrtTypes from 'onnxruntime-node';
import { cloneModel, encodeModel, floatValueInfo, type ModelProto } from './onnx.js';
import type { Progress } from './progress.js';

export type CalibrationMethod = 'minmax' | 'percentile' | 'entropy';
export const CALIBRATION_METHODS: readonly CalibrationMethod[] = ['minmax', 'percentile', 'entropy'];

export interface Range {
  min: number;
  max: number;
}

export interface CalibrationOptions {
  method: CalibrationMethod;
  /** percentile: the upper percentile kept (default 99.99). */
  percentile?: number;
  /** Bins of the entropy histogram (default 2048). */
  entropyBins?: number;
  /** Quantized levels on the positive side used by the entropy search (default 128, 255 for non-negative tensors). */
  progress?: Progress;
}

export interface CalibrationInput {
  data: Float32Array;
  shape: number[];
}

type Ort = typeof OrtTypes;

/** A copy of the model whose graph outputs also include `tensors` (ORT returns only graph outputs). */
export function exposeTensors(model: ModelProto, tensors: string[]): Uint8Array {
  const m = cloneModel(model);
  const g = m.graph;
  if (!g) throw new Error('model has no graph');
  const have = new Set((g.output ?? []).map((o) => o.name));
  g.output = [...(g.output ?? []), ...tensors.filter((t) => !have.has(t)).map((t) => floatValueInfo(t))];
  return encodeModel(m);
}

class Hist {
  readonly counts: Float64Array;
  constructor(
    readonly lo: number,
    readonly hi: number,
    readonly bins: number,
  ) {
    this.counts = new Float64Array(bins);
  }
  add(values: Float32Array, abs: boolean): void {
    const { lo, hi, bins, counts } = this;
    const scale = hi > lo ? bins / (hi - lo) : 0;
    for (let i = 0; i < values.length; i++) {
      let v = values[i] as number;
      if (abs) v = Math.abs(v);
      let b = Math.floor((v - lo) * scale);
      if (b < 0) b = 0;
      else if (b >= bins) b = bins - 1;
      counts[b] = (counts[b] as number) + 1;
    }
  }
}

/** The value below which `q` (0..1) of the histogram mass lies (linear inside the bin). */
function histQuantile(h: Hist, q: number): number {
  let total = 0;
  for (const c of h.counts) total += c;
  const target = q * total;
  let acc = 0;
  const w = (h.hi - h.lo) / h.bins;
  for (let b = 0; b < h.bins; b++) {
    const c = h.counts[b] as number;
    if (acc + c >= target && c > 0) return h.lo + w * (b + (target - acc) / c);
    acc += c;
  }
  return h.hi;
}

/**
 * KL-optimal threshold on a histogram of |x| over [0, absmax]: for each candidate i (bins kept), P is
 * the first i bins with the tail folded into bin i-1; Q is P merged into `levels` groups and expanded
 * back over the non-empty bins. Returns the threshold (upper edge of the best i-th bin).
 */
export function klThreshold(counts: Float64Array, absMax: number, levels: number): number {
  const bins = counts.length;
  if (bins <= levels) return absMax;
  let bestI = bins;
  let bestKl = Infinity;
  const p = new Float64Array(bins);
  const q = new Float64Array(bins);
  let tail = 0;
  for (let b = bins - 1; b >= levels; b--) tail += counts[b] as number;
  // iterate i = levels..bins; tail = sum(counts[i..])
  for (let i = levels; i <= bins; i++) {
    if (i > levels) tail -= counts[i - 1] as number;
    let pSum = 0;
    for (let b = 0; b < i; b++) {
      p[b] = counts[b] as number;
      pSum += p[b] as number;
    }
    p[i - 1] = (p[i - 1] as number) + tail;
    pSum += tail;
    if (pSum === 0) continue;
    // quantize the first i bins (without the folded tail) into `levels` groups
    const per = i / levels;
    for (let j = 0; j < levels; j++) {
      const start = Math.floor(j * per);
      const end = j === levels - 1 ? i : Math.floor((j + 1) * per);
      let sum = 0;
      let nonZero = 0;
      for (let b = start; b < end; b++) {
        const c = counts[b] as number;
        sum += c;
        if (c > 0) nonZero++;
      }
      const v = nonZero ? sum / nonZero : 0;
      for (let b = start; b < end; b++) q[b] = (counts[b] as number) > 0 ? v : 0;
    }
    let qSum = 0;
    for (let b = 0; b < i; b++) qSum += q[b] as number;
    if (qSum === 0) continue;
    let kl = 0;
    for (let b = 0; b < i; b++) {
      const pb = (p[b] as number) / pSum;
      if (pb === 0) continue;
      const qb = (q[b] as number) / qSum;
      // a bin P has and Q lost: large penalty instead of infinity
      kl += qb > 0 ? pb * Math.log(pb / qb) : pb * 20;
    }
    if (kl < bestKl) {
      bestKl = kl;
      bestI = i;
    }
  }
  return (bestI / bins) * absMax;
}

/** Widens a range so it holds 0 and has min < max (a tensor that is constant over the whole set). */
export function saneRange(r: Range): Range {
  let min = Math.min(0, r.min);
  let max = Math.max(0, r.max);
  if (!(max > min)) {
    max = min + 1e-6;
  }
  if (!Number.isFinite(min) || !Number.isFinite(max)) throw new Error(`non-finite range [${min}, ${max}]`);
  min = Object.is(min, -0) ? 0 : min;
  return { min, max };
}

export interface CollectedRanges {
  ranges: Record<string, Range>;
  /** Raw min/max per tensor (always computed: the first pass). */
  minMax: Record<string, Range>;
  inputs: number;
}

/**
 * Runs the fp32 model over the calibration inputs and returns one range per tensor. `inputName` is the
 * graph input fed; inputs are produced lazily (so a large set is never all in memory).
 */
export async function collectRanges(
  ort: Ort,
  model: ModelProto,
  inputName: string,
  tensors: string[],
  inputs: () => AsyncIterable<CalibrationInput>,
  count: number,
  opts: CalibrationOptions,
): Promise<CollectedRanges> {
  const graphInputs = new Set((model.graph?.input ?? []).map((i) => i.name));
  const exposed = tensors.filter((t) => !graphInputs.has(t));
  const bytes = exposeTensors(model, exposed);
  const session = await ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'disabled', intraOpNumThreads: 0 });
  const minMax = new Map<string, Range>(tensors.map((t) => [t, { min: Infinity, max: -Infinity }]));
  const run = async (x: CalibrationInput): Promise<Record<string, { data: unknown }>> => {
    const out: Record<string, { data: unknown }> = await session.run({ [inputName]: new ort.Tensor('float32', x.data, x.shape) }, exposed);
    // a graph input is calibrated from the data fed (ORT does not return inputs as outputs)
    for (const t of tensors) if (graphInputs.has(t)) out[t] = { data: x.data };
    return out;
  };
  let n = 0;
  try {
    opts.progress?.start(`calibrate ${opts.method}${opts.method === 'minmax' ? '' : ' (pass 1/2: min-max)'}`, count);
    for await (const x of inputs()) {
      const out = await run(x);
      for (const t of tensors) {
        const v = out[t]?.data as Float32Array | undefined;
        if (!v) throw new Error(`ORT returned no tensor '${t}'`);
        const r = minMax.get(t) as Range;
        for (let i = 0; i < v.length; i++) {
          const a = v[i] as number;
          if (a < r.min) r.min = a;
          if (a > r.max) r.max = a;
        }
      }
      n++;
      opts.progress?.tick();
    }
    opts.progress?.done();
    if (n === 0) throw new Error('calibration set gave no input');
    for (const [t, r] of minMax) {
      if (!Number.isFinite(r.min) || !Number.isFinite(r.max)) throw new Error(`tensor '${t}' has non-finite values in calibration (NaN or Inf)`);
    }
    const ranges: Record<string, Range> = {};
    if (opts.method === 'minmax') {
      for (const [t, r] of minMax) ranges[t] = saneRange(r);
    } else {
      const hists = new Map<string, Hist>();
      for (const [t, r] of minMax) {
        if (opts.method === 'percentile') hists.set(t, new Hist(r.min, r.max, 4096));
        else hists.set(t, new Hist(0, Math.max(Math.abs(r.min), Math.abs(r.max)), opts.entropyBins ?? 2048));
      }
      opts.progress?.start(`calibrate ${opts.method} (pass 2/2: histograms)`, count);
      for await (const x of inputs()) {
        const out = await run(x);
        for (const t of tensors) (hists.get(t) as Hist).add(out[t]?.data as Float32Array, opts.method === 'entropy');
        opts.progress?.tick();
      }
      opts.progress?.done();
      for (const [t, r] of minMax) {
        const h = hists.get(t) as Hist;
        const nonNegative = r.min >= 0;
        if (opts.method === 'percentile') {
          const p = (opts.percentile ?? 99.99) / 100;
          const hi = histQuantile(h, p);
          const lo = nonNegative ? 0 : histQuantile(h, 1 - p);
          ranges[t] = saneRange({ min: Math.max(lo, r.min), max: Math.min(hi, r.max) });
        } else {
          const thr = klThreshold(h.counts, h.hi, nonNegative ? 255 : 128);
          ranges[t] = saneRange({ min: nonNegative ? 0 : Math.max(-thr, r.min), max: Math.min(thr, r.max) });
        }
      }
    }
    const raw: Record<string, Range> = {};
    for (const [t, r] of minMax) raw[t] = { min: r.min, max: r.max };
    return { ranges, minMax: raw, inputs: n };
  } finally {
    await session.release();
  }
}
