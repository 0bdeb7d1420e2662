/**
 * Stored values -> what a reader would see, as floats in [0, 1]:
 * modality LUT (rescale), VOI window (PS3.3 C.11.2.1.2), MONOCHROME1 inversion, palette and YBR -> RGB.
 *
 * Hot loops are plain indexed loops over typed arrays; greyscale goes through a lookup table built over
 * the frame's stored value range whenever that range is small enough (always for 8/16-bit data).
 */
import { DecodeError, DecodeOptions, ImageFrame, RawFrame, WindowSpec } from './types.js';
import type { DisplayAttributes } from './dicom.js';

export interface VoiChoice {
  center: number;
  width: number;
  fn: 'LINEAR' | 'LINEAR_EXACT' | 'SIGMOID' | 'LUT';
  source: 'file' | 'config';
  /** fn 'LUT': the file's VOI LUT (values already in [0, 1]) and its first mapped input value. */
  lut?: Float32Array;
  firstMapped?: number;
}

/**
 * The file's VOI (window first, then VOI LUT Sequence) when preferred and present, else the configured
 * window for the modality, else none (min-max).
 */
export function chooseWindow(display: DisplayAttributes, modality: string, opts: DecodeOptions): VoiChoice | undefined {
  const fn = display.voiLutFunction === 'SIGMOID' ? 'SIGMOID' : display.voiLutFunction === 'LINEAR_EXACT' ? 'LINEAR_EXACT' : 'LINEAR';
  if (opts.preferFileWindow && display.windowCenter !== undefined && display.windowWidth !== undefined) {
    // LINEAR needs width >= 1 (C.11.2.1.2.1); other functions need width > 0.
    if (fn !== 'LINEAR' || display.windowWidth >= 1) {
      return { center: display.windowCenter, width: display.windowWidth, fn, source: 'file' };
    }
  }
  if (opts.preferFileWindow && display.voiLut) {
    return { center: 0, width: 1, fn: 'LUT', source: 'file', lut: display.voiLut.data, firstMapped: display.voiLut.firstMapped };
  }
  const cfg: WindowSpec | undefined = opts.windowByModality[modality];
  if (cfg && Number.isFinite(cfg.center) && Number.isFinite(cfg.width) && cfg.width >= 1) {
    return { center: cfg.center, width: cfg.width, fn: 'LINEAR', source: 'config' };
  }
  return undefined;
}

/** One VOI-mapped value in [0, 1] from a modality value. */
function voi(x: number, w: VoiChoice | undefined, lo: number, span: number): number {
  let y: number;
  if (!w) {
    y = span > 0 ? (x - lo) / span : 0;
  } else if (w.fn === 'LUT') {
    const lut = w.lut!;
    let k = Math.round(x) - w.firstMapped!;
    if (k < 0) k = 0;
    else if (k >= lut.length) k = lut.length - 1;
    y = lut[k]!;
  } else if (w.fn === 'LINEAR') {
    const c = w.center - 0.5;
    const half = (w.width - 1) / 2;
    if (x <= c - half) y = 0;
    else if (x > c + half) y = 1;
    else y = (x - c) / (w.width - 1) + 0.5;
  } else if (w.fn === 'LINEAR_EXACT') {
    y = (x - w.center) / w.width + 0.5;
  } else {
    y = 1 / (1 + Math.exp((-4 * (x - w.center)) / w.width));
  }
  return y < 0 ? 0 : y > 1 ? 1 : y;
}

export function minMax(data: RawFrame['data']): { min: number; max: number } {
  let min = Infinity;
  let max = -Infinity;
  const n = data.length;
  for (let i = 0; i < n; i++) {
    const v = data[i]!;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return { min, max };
}

const LUT_LIMIT = 1 << 20;

function greyscale(raw: RawFrame, display: DisplayAttributes, w: VoiChoice | undefined, min: number, max: number): Float32Array {
  const { rescaleSlope: slope, rescaleIntercept: intercept, modalityLut } = display;
  const invert = raw.photometric === 'MONOCHROME1';
  const n = raw.data.length;
  const out = new Float32Array(n);
  const data = raw.data;
  const range = max - min + 1;
  if (range <= LUT_LIMIT) {
    // modality value of every stored value in [min, max], then one VOI lookup table
    const mv = new Float64Array(range);
    if (modalityLut) {
      const last = modalityLut.data.length - 1;
      for (let k = 0; k < range; k++) {
        let j = min + k - modalityLut.firstMapped;
        if (j < 0) j = 0;
        else if (j > last) j = last;
        mv[k] = modalityLut.data[j]!;
      }
    } else {
      for (let k = 0; k < range; k++) mv[k] = (min + k) * slope + intercept;
    }
    let lo = Infinity;
    let hi = -Infinity;
    if (w) {
      lo = 0;
      hi = 0;
    } else {
      // min-max over the modality values actually present
      const seen = new Uint8Array(range);
      for (let i = 0; i < n; i++) seen[data[i]! - min] = 1;
      // padding (outside the scanned field of view) is not image: keep it out of the range
      const pad = display.padding;
      if (pad) {
        let any = false;
        for (let k = 0; k < range; k++) {
          const v = min + k;
          if (seen[k] && !(v >= pad.from && v <= pad.to)) {
            any = true;
            break;
          }
        }
        if (any) for (let v = Math.max(pad.from, min); v <= Math.min(pad.to, max); v++) seen[v - min] = 0;
      }
      for (let k = 0; k < range; k++) {
        if (!seen[k]) continue;
        const m = mv[k]!;
        if (m < lo) lo = m;
        if (m > hi) hi = m;
      }
    }
    const lut = new Float32Array(range);
    for (let k = 0; k < range; k++) {
      const y = voi(mv[k]!, w, lo, hi - lo);
      lut[k] = invert ? 1 - y : y;
    }
    // padding pixels are background: black, whatever the window or photometric
    const pad = display.padding;
    if (pad) for (let v = Math.max(pad.from, min); v <= Math.min(pad.to, max); v++) lut[v - min] = 0;
    for (let i = 0; i < n; i++) out[i] = lut[data[i]! - min]!;
  } else {
    // 32-bit data with a huge range: linear rescale only
    const m0 = min * slope + intercept;
    const m1 = max * slope + intercept;
    const lo = Math.min(m0, m1);
    const span = Math.abs(m1 - m0);
    for (let i = 0; i < n; i++) {
      const y = voi(data[i]! * slope + intercept, w, lo, span);
      out[i] = invert ? 1 - y : y;
    }
  }
  return out;
}

function palette(raw: RawFrame, display: DisplayAttributes): Float32Array {
  const pal = display.palette;
  if (!pal) throw new DecodeError('corrupt', 'PALETTE COLOR image without a palette');
  const { red, green, blue, firstMapped } = pal;
  const last = red.length - 1;
  const n = raw.data.length;
  const out = new Float32Array(n * 3);
  const data = raw.data;
  for (let i = 0; i < n; i++) {
    let k = data[i]! - firstMapped;
    if (k < 0) k = 0;
    else if (k > last) k = last;
    const o = 3 * i;
    out[o] = red[k]!;
    out[o + 1] = green[k] ?? 0;
    out[o + 2] = blue[k] ?? 0;
  }
  return out;
}

function colour(raw: RawFrame): Float32Array {
  const maxv = 2 ** raw.bitsStored - 1;
  const scale = 1 / maxv;
  const n = raw.data.length;
  const out = new Float32Array(n);
  const data = raw.data;
  const p = raw.photometric;
  if (p === 'YBR_FULL' || p === 'YBR_FULL_422') {
    // PS3.3 C.7.6.3.1.2, generalised to BitsStored
    const half = 2 ** (raw.bitsStored - 1);
    for (let i = 0; i < n; i += 3) {
      const y = data[i]!;
      const cb = data[i + 1]! - half;
      const cr = data[i + 2]! - half;
      let r = (y + 1.402 * cr) * scale;
      let g = (y - 0.344136 * cb - 0.714136 * cr) * scale;
      let b = (y + 1.772 * cb) * scale;
      r = r < 0 ? 0 : r > 1 ? 1 : r;
      g = g < 0 ? 0 : g > 1 ? 1 : g;
      b = b < 0 ? 0 : b > 1 ? 1 : b;
      out[i] = r;
      out[i + 1] = g;
      out[i + 2] = b;
    }
  } else {
    for (let i = 0; i < n; i++) {
      const v = data[i]! * scale;
      out[i] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
  }
  return out;
}

/**
 * Stored frame -> ImageFrame. Throws DecodeError('constant-image') when every stored value is equal:
 * such a frame carries no information and must never reach the model.
 */
export function toImageFrame(raw: RawFrame, display: DisplayAttributes, modality: string, opts: DecodeOptions): ImageFrame {
  const { min, max } = minMax(raw.data);
  if (min === max) {
    throw new DecodeError('constant-image', `frame ${raw.index} is constant (every stored value is ${min})`);
  }
  const base = { index: raw.index, width: raw.width, height: raw.height };
  if (raw.photometric === 'PALETTE COLOR') {
    return { ...base, channels: 3, data: palette(raw, display) };
  }
  if (raw.samplesPerPixel === 3) {
    return { ...base, channels: 3, data: colour(raw) };
  }
  const w = chooseWindow(display, modality, opts);
  return { ...base, channels: 1, data: greyscale(raw, display, w, min, max) };
}
