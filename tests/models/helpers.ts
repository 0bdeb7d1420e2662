/**
 * Test helpers for the model tests: a minimal decoder for UNCOMPRESSED grey DICOM (the fixtures here)
 * with the same [0,1] maths as models/training/prep.py dicom_to_unit (rescale, first file window if
 * width > 1 else min-max, MONOCHROME1 inversion), so these tests do not depend on src/decode (owned and
 * tested elsewhere); plus float32 fixture readers and a CCW rotation equal to numpy.rot90(img, k).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import dicomParser from 'dicom-parser';
import sharp from 'sharp';
import type { ImageFrame } from '../../src/decode/types.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BUNDLE_DIR = path.join(ROOT, 'models', 'orientation-qa');
export const FIXTURES = path.join(ROOT, 'tests', 'fixtures', 'models');

export function readF32(file: string): Float32Array {
  const buf = readFileSync(file);
  const copy = new Uint8Array(buf.byteLength);
  copy.set(buf);
  return new Float32Array(copy.buffer);
}

export function decodeGreyDicom(file: string): ImageFrame & { modality: string } {
  const bytes = new Uint8Array(readFileSync(file));
  const ds = dicomParser.parseDicom(bytes);
  const rows = ds.uint16('x00280010') ?? 0;
  const cols = ds.uint16('x00280011') ?? 0;
  const bits = ds.uint16('x00280100') ?? 16;
  const signed = ds.uint16('x00280103') === 1;
  const photometric = (ds.string('x00280004') ?? 'MONOCHROME2').trim();
  const el = ds.elements.x7fe00010;
  if (!el || el.encapsulatedPixelData) throw new Error(`${file}: only uncompressed pixel data is supported here`);
  const n = rows * cols;
  const raw = new Float64Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset + el.dataOffset, el.length);
  for (let i = 0; i < n; i++) {
    if (bits === 8) raw[i] = signed ? view.getInt8(i) : view.getUint8(i);
    else raw[i] = signed ? view.getInt16(2 * i, true) : view.getUint16(2 * i, true);
  }
  const slope = ds.floatString('x00281053') ?? 1;
  const intercept = ds.floatString('x00281052') ?? 0;
  const center = ds.floatString('x00281050');
  const width = ds.floatString('x00281051');
  const data = new Float32Array(n);
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = (raw[i] as number) * (slope || 1) + intercept;
    raw[i] = v;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  for (let i = 0; i < n; i++) {
    const v = raw[i] as number;
    let y: number;
    if (center !== undefined && width !== undefined && width > 1) {
      y = Math.min(1, Math.max(0, (v - (center - 0.5)) / (width - 1) + 0.5));
    } else {
      y = hi > lo ? (v - lo) / (hi - lo) : 0;
    }
    data[i] = photometric === 'MONOCHROME1' ? 1 - y : y;
  }
  return { index: 0, width: cols, height: rows, channels: 1, data, modality: (ds.string('x00080060') ?? '').trim() };
}

/** A 16-bit grey PNG fixture -> [0,1] frame (value / 65535), as written by models/training/export.py. */
export async function decodePng16(file: string): Promise<ImageFrame> {
  const { data, info } = await sharp(file).toColourspace('grey16').raw({ depth: 'ushort' }).toBuffer({ resolveWithObject: true });
  if (info.channels !== 1) throw new Error(`${file}: expected 1 channel, got ${info.channels}`);
  const u16 = new Uint16Array(data.buffer, data.byteOffset, data.length / 2);
  const out = new Float32Array(u16.length);
  for (let i = 0; i < u16.length; i++) out[i] = (u16[i] as number) / 65535;
  return { index: 0, width: info.width, height: info.height, channels: 1, data: out };
}

/** Counter-clockwise rotation by k*90 degrees, identical to numpy.rot90(img, k): the quantize tool's own (its evaluation labels by construction). */
export { rot90 } from '../../quantize/dataset.js';

export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if ((v[i] as number) > (v[best] as number)) best = i;
  return best;
}

export function softmax(v: ArrayLike<number>): number[] {
  const arr = Array.from(v);
  const m = Math.max(...arr);
  const e = arr.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}
