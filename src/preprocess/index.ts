/**
 * Model-agnostic preprocessing: ImageFrame (HWC float32 in [0,1]) -> model input tensor.
 *
 * Steps, all driven by the manifest's ModelInputSpec (no model-specific code here):
 * 1. channels: RGB -> grey with Rec. 601 luma (0.299 R + 0.587 G + 0.114 B); grey -> RGB by replication.
 * 2. geometry (`spec.resize`): `stretch` maps the whole frame onto HxW; `letterbox` fits the frame inside
 *    HxW keeping its aspect ratio, centred, padding with 0 (in [0,1] units, i.e. before normalisation);
 *    `crop` fills HxW keeping the aspect ratio and centre-crops the overflow.
 * 3. resampling, separable per axis: output pixel i covers the source interval [off + i*s, off + (i+1)*s]
 *    (s = source pixels per output pixel). Downscale (s >= 1): area average with exact fractional overlap
 *    (box filter). Upscale (s < 1): bilinear with half-pixel centres (align_corners=False), edge-clamped,
 *    no antialias. This is the same maths as models/training/prep.py (parity-tested within 1e-4).
 * 4. normalisation: (x - mean[c]) / std[c]; layout NCHW or NHWC.
 *
 * `preprocess` returns ONE image without the batch dimension (C*H*W or H*W*C values); `toBatch` stacks
 * such tensors and returns the batched shape ([N, C, H, W] or [N, H, W, C]); `batchFrames` does both at once.
 */
import type { ImageFrame } from '../decode/types.js';
import type { ModelInputSpec } from '../models/types.js';

export class PreprocessError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PreprocessError';
  }
}

/** Height, width and channel count the spec asks for (from its shape and layout). */
export function inputGeometry(spec: ModelInputSpec): { height: number; width: number; channels: 1 | 3 } {
  if (spec.shape.length !== 4) {
    throw new PreprocessError(`input shape must have 4 dims (batch first), got [${spec.shape.join(', ')}]`);
  }
  const [, d1, d2, d3] = spec.shape as [number, number, number, number];
  const [c, h, w] = spec.layout === 'NCHW' ? [d1, d2, d3] : [d3, d1, d2];
  if (c !== spec.channels) {
    throw new PreprocessError(`input shape has ${c} channels but spec.channels is ${spec.channels}`);
  }
  if (!(h > 0 && w > 0) || !Number.isInteger(h) || !Number.isInteger(w)) {
    throw new PreprocessError(`input height/width must be positive integers, got ${h}x${w}`);
  }
  return { height: h, width: w, channels: spec.channels };
}

/** Sparse per-axis resampling weights: for output i, taps start[i]..start[i]+count[i]-1 with weights. */
export interface AxisWeights {
  start: Int32Array;
  count: Int32Array;
  /** Flattened weights, `maxTaps` per output index. */
  weights: Float32Array;
  maxTaps: number;
}

/**
 * Weights mapping `inSize` source pixels to `outSize` output pixels where output i covers the source
 * interval [srcOffset + i*srcScale, srcOffset + (i+1)*srcScale]. Mirrors axis_weights() in prep.py.
 */
export function axisWeights(inSize: number, outSize: number, srcOffset = 0, srcScale = inSize / outSize): AxisWeights {
  const s = srcScale;
  const maxTaps = s >= 1 ? Math.ceil(s) + 2 : 2;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float32Array(outSize * maxTaps);
  for (let i = 0; i < outSize; i++) {
    const base = i * maxTaps;
    if (s >= 1) {
      let a = srcOffset + i * s;
      let b = a + s;
      a = Math.max(a, 0);
      b = Math.min(b, inSize);
      const j0 = Math.floor(a);
      const j1 = Math.ceil(b);
      let total = 0;
      let first = -1;
      let n = 0;
      // overlaps in float64 first, normalised below (same order of operations as prep.py)
      const ov: number[] = [];
      for (let j = j0; j < j1; j++) {
        const o = Math.min(b, j + 1) - Math.max(a, j);
        if (o > 0) {
          if (first < 0) first = j;
          ov.push(o);
          total += o;
          n++;
        }
      }
      if (total <= 0) {
        start[i] = Math.min(Math.max(Math.floor(a), 0), inSize - 1);
        count[i] = 1;
        weights[base] = 1;
      } else {
        start[i] = first;
        count[i] = n;
        for (let k = 0; k < n; k++) weights[base + k] = (ov[k] as number) / total;
      }
    } else {
      const c = srcOffset + (i + 0.5) * s - 0.5;
      const j0 = Math.floor(c);
      const f = c - j0;
      const a = Math.min(Math.max(j0, 0), inSize - 1);
      const b = Math.min(Math.max(j0 + 1, 0), inSize - 1);
      start[i] = a;
      if (a === b) {
        count[i] = 1;
        weights[base] = 1;
      } else {
        count[i] = 2;
        weights[base] = 1 - f;
        weights[base + 1] = f;
      }
    }
  }
  return { start, count, weights, maxTaps };
}

/** Geometry of the resized image inside the HxW output: where it goes and which source region feeds it. */
interface Placement {
  /** destination rectangle inside the output */
  dy: number;
  dx: number;
  dh: number;
  dw: number;
  /** source interval mapping for each axis */
  offY: number;
  scaleY: number;
  offX: number;
  scaleX: number;
}

function placement(srcH: number, srcW: number, outH: number, outW: number, mode: ModelInputSpec['resize']): Placement {
  if (mode === 'stretch') {
    return { dy: 0, dx: 0, dh: outH, dw: outW, offY: 0, scaleY: srcH / outH, offX: 0, scaleX: srcW / outW };
  }
  if (mode === 'letterbox') {
    const k = Math.min(outH / srcH, outW / srcW);
    const dh = Math.max(1, Math.min(outH, Math.round(srcH * k)));
    const dw = Math.max(1, Math.min(outW, Math.round(srcW * k)));
    const dy = Math.floor((outH - dh) / 2);
    const dx = Math.floor((outW - dw) / 2);
    return { dy, dx, dh, dw, offY: 0, scaleY: srcH / dh, offX: 0, scaleX: srcW / dw };
  }
  // crop: scale so the frame covers HxW, centre the overflow (a fractional source window)
  const k = Math.max(outH / srcH, outW / srcW);
  const s = 1 / k;
  return { dy: 0, dx: 0, dh: outH, dw: outW, offY: (srcH - outH * s) / 2, scaleY: s, offX: (srcW - outW * s) / 2, scaleX: s };
}

const LUMA_R = 0.299;
const LUMA_G = 0.587;
const LUMA_B = 0.114;

/** Collapse or expand channels to `want`, returning planar channel images (each H*W). */
function toPlanes(frame: ImageFrame, want: 1 | 3): Float32Array[] {
  const { width, height, channels, data } = frame;
  const n = width * height;
  if (channels === 1) {
    const grey = data.length === n ? data : data.subarray(0, n);
    return want === 1 ? [grey] : [grey, grey, grey];
  }
  if (want === 1) {
    const grey = new Float32Array(n);
    for (let p = 0, q = 0; p < n; p++, q += 3) {
      grey[p] = LUMA_R * (data[q] as number) + LUMA_G * (data[q + 1] as number) + LUMA_B * (data[q + 2] as number);
    }
    return [grey];
  }
  const r = new Float32Array(n);
  const g = new Float32Array(n);
  const b = new Float32Array(n);
  for (let p = 0, q = 0; p < n; p++, q += 3) {
    r[p] = data[q] as number;
    g[p] = data[q + 1] as number;
    b[p] = data[q + 2] as number;
  }
  return [r, g, b];
}

const weightCache = new Map<string, AxisWeights>();
function cachedWeights(inSize: number, outSize: number, off: number, scale: number): AxisWeights {
  const key = `${inSize}|${outSize}|${off}|${scale}`;
  let w = weightCache.get(key);
  if (!w) {
    w = axisWeights(inSize, outSize, off, scale);
    if (weightCache.size > 256) weightCache.clear();
    weightCache.set(key, w);
  }
  return w;
}

function validateFrame(frame: ImageFrame): void {
  const { width, height, channels, data } = frame;
  if (!(width > 0 && height > 0) || !Number.isInteger(width) || !Number.isInteger(height)) {
    throw new PreprocessError(`frame size must be positive integers, got ${width}x${height}`);
  }
  if (channels !== 1 && channels !== 3) throw new PreprocessError(`frame must have 1 or 3 channels, got ${String(channels)}`);
  if (data.length < width * height * channels) {
    throw new PreprocessError(`frame data has ${data.length} values, expected ${width * height * channels}`);
  }
}

/**
 * One frame -> one model input WITHOUT the batch dimension: C*H*W values (NCHW) or H*W*C (NHWC).
 * `out` (optional) receives the result at `outOffset`, so toBatch fills a batch without copies.
 */
export function preprocess(frame: ImageFrame, spec: ModelInputSpec, out?: Float32Array, outOffset = 0): Float32Array {
  validateFrame(frame);
  const { height: H, width: W, channels: C } = inputGeometry(spec);
  const { mean, std } = spec.normalisation;
  if (mean.length !== C || std.length !== C) {
    throw new PreprocessError(`normalisation needs ${C} mean/std values, got ${mean.length}/${std.length}`);
  }
  const size = C * H * W;
  const dst = out ?? new Float32Array(size);
  if (dst.length < outOffset + size) throw new PreprocessError('output buffer too small');

  const planes = toPlanes(frame, C);
  const srcH = frame.height;
  const srcW = frame.width;
  const pl = placement(srcH, srcW, H, W, spec.resize);
  const wy = cachedWeights(srcH, pl.dh, pl.offY, pl.scaleY);
  const wx = cachedWeights(srcW, pl.dw, pl.offX, pl.scaleX);
  // horizontal pass result for one plane: srcH x dw
  const tmp = new Float32Array(srcH * pl.dw);
  const nchw = spec.layout === 'NCHW';

  for (let c = 0; c < C; c++) {
    const src = planes[c] as Float32Array;
    const m = mean[c] as number;
    const inv = 1 / (std[c] as number);
    const padValue = (0 - m) * inv;
    // horizontal pass
    for (let y = 0; y < srcH; y++) {
      const row = y * srcW;
      const trow = y * pl.dw;
      for (let x = 0; x < pl.dw; x++) {
        const s0 = row + (wx.start[x] as number);
        const n = wx.count[x] as number;
        const wb = x * wx.maxTaps;
        let acc = 0;
        for (let k = 0; k < n; k++) acc += (src[s0 + k] as number) * (wx.weights[wb + k] as number);
        tmp[trow + x] = acc;
      }
    }
    // vertical pass + normalisation + layout
    const planeBase = outOffset + (nchw ? c * H * W : c);
    const pixStride = nchw ? 1 : C;
    if (pl.dh !== H || pl.dw !== W) {
      for (let p = 0; p < H * W; p++) dst[planeBase + p * pixStride] = padValue;
    }
    const acc = new Float32Array(pl.dw);
    for (let y = 0; y < pl.dh; y++) {
      const s0 = wy.start[y] as number;
      const n = wy.count[y] as number;
      const wb = y * wy.maxTaps;
      acc.fill(0);
      for (let k = 0; k < n; k++) {
        const w = wy.weights[wb + k] as number;
        const trow = (s0 + k) * pl.dw;
        for (let x = 0; x < pl.dw; x++) acc[x] = (acc[x] as number) + (tmp[trow + x] as number) * w;
      }
      const drow = planeBase + ((pl.dy + y) * W + pl.dx) * pixStride;
      for (let x = 0; x < pl.dw; x++) dst[drow + x * pixStride] = ((acc[x] as number) - m) * inv;
    }
  }
  return out ? dst.subarray(outOffset, outOffset + size) : dst;
}

/** Preprocesses frames straight into one batch tensor (no intermediate copies); shape has the batch first. */
export function batchFrames(frames: ImageFrame[], spec: ModelInputSpec): { data: Float32Array; shape: number[] } {
  const { height: H, width: W, channels: C } = inputGeometry(spec);
  const size = C * H * W;
  const data = new Float32Array(frames.length * size);
  frames.forEach((f, i) => preprocess(f, spec, data, i * size));
  const shape = spec.layout === 'NCHW' ? [frames.length, C, H, W] : [frames.length, H, W, C];
  return { data, shape };
}

/** Stacks single-image tensors (from `preprocess`) into one batch; shape has the batch first. */
export function toBatch(tensors: Float32Array[], spec: ModelInputSpec): { data: Float32Array; shape: number[] } {
  const { height: H, width: W, channels: C } = inputGeometry(spec);
  const size = C * H * W;
  const data = new Float32Array(tensors.length * size);
  tensors.forEach((t, i) => {
    if (t.length !== size) throw new PreprocessError(`tensor ${i} has ${t.length} values, expected ${size}`);
    data.set(t, i * size);
  });
  const shape = spec.layout === 'NCHW' ? [tensors.length, C, H, W] : [tensors.length, H, W, C];
  return { data, shape };
}
