/**
 * DICOM Part 10 (and headerless DICOM) -> stored pixel values, one frame at a time.
 *
 * Parsing is dicom-parser; pixel codecs are in codecs.ts / rle.ts / jpeg12.ts. Every failure on outside input
 * becomes a DecodeError with a code the pipeline can quarantine by; nothing here trusts a declared length or
 * size further than the bytes actually present.
 */
import { createRequire } from 'node:module';
import { inflateRawSync } from 'node:zlib';
import type * as DicomParserNs from 'dicom-parser';
import type { DataSet, Element } from 'dicom-parser';
import { CaptureMeta, DecodeError, RawFrame } from './types.js';
import { decodeRleFrame } from './rle.js';
import { decodeJpegSequential, jpegColourMarkers, peekJ2kSize, peekJpegFrame, withAdobeNoTransform } from './jpeg12.js';
import {
  CodecOutput,
  decodeHTJ2K,
  decodeJ2K,
  decodeJpegBaseline8,
  decodeJpegLS,
  decodeJpegLossless,
} from './codecs.js';

const require = createRequire(import.meta.url);
const dicomParser = require('dicom-parser') as typeof DicomParserNs;

export const TS = {
  implicitLE: '1.2.840.10008.1.2',
  explicitLE: '1.2.840.10008.1.2.1',
  deflatedLE: '1.2.840.10008.1.2.1.99',
  explicitBE: '1.2.840.10008.1.2.2',
  rle: '1.2.840.10008.1.2.5',
  jpegBaseline: '1.2.840.10008.1.2.4.50',
  jpegExtended: '1.2.840.10008.1.2.4.51',
  jpegLossless: '1.2.840.10008.1.2.4.57',
  jpegLosslessSV1: '1.2.840.10008.1.2.4.70',
  jpegLsLossless: '1.2.840.10008.1.2.4.80',
  jpegLsNear: '1.2.840.10008.1.2.4.81',
  j2kLossless: '1.2.840.10008.1.2.4.90',
  j2k: '1.2.840.10008.1.2.4.91',
  htj2kLossless: '1.2.840.10008.1.2.4.201',
  htj2kRpclLossless: '1.2.840.10008.1.2.4.202',
  htj2k: '1.2.840.10008.1.2.4.203',
} as const;

const NATIVE = new Set<string>([TS.implicitLE, TS.explicitLE, TS.deflatedLE, TS.explicitBE]);
const SUPPORTED = new Set<string>(Object.values(TS));
/** Syntaxes whose decode must reproduce the stored values exactly. */
export const LOSSLESS_SYNTAXES = new Set<string>([
  TS.implicitLE, TS.explicitLE, TS.deflatedLE, TS.explicitBE, TS.rle, TS.jpegLossless, TS.jpegLosslessSV1,
  TS.jpegLsLossless, TS.j2kLossless, TS.htj2kLossless, TS.htj2kRpclLossless,
]);

/** Largest single decoded frame accepted (bytes). Protects memory from absurd Rows x Columns. */
const MAX_FRAME_BYTES = 512 * 1024 * 1024;
/** Cap on the inflated size of a deflated data set. */
const MAX_INFLATED_BYTES = 1024 * 1024 * 1024;

export interface PixelModule {
  rows: number;
  columns: number;
  samplesPerPixel: 1 | 3;
  bitsAllocated: number;
  bitsStored: number;
  highBit: number;
  pixelRepresentation: 0 | 1;
  photometric: string;
  planarConfiguration: number;
  numberOfFrames: number;
}

export interface DisplayAttributes {
  rescaleSlope: number;
  rescaleIntercept: number;
  windowCenter?: number;
  windowWidth?: number;
  voiLutFunction: string;
  /** Pixel Padding Value (and Range Limit): stored values that mark "no image here", left out of min-max. */
  padding?: { from: number; to: number };
  /** First item of the Modality LUT Sequence (0028,3000), used instead of rescale: raw output values. */
  modalityLut?: { data: Float64Array; firstMapped: number };
  /** First item of the VOI LUT Sequence (0028,3010): output normalised to [0, 1]. */
  voiLut?: { data: Float32Array; firstMapped: number };
  palette?: { red: Float32Array; green: Float32Array; blue: Float32Array; firstMapped: number };
}

export interface ParsedDicom {
  dataSet: DataSet;
  transferSyntax: string;
  meta: CaptureMeta;
  pixel: PixelModule;
  display: DisplayAttributes;
  frameCount: number;
  readFrame(i: number): RawFrame;
}

/** True when the bytes look like DICOM: Part 10 preamble, or a headerless data set starting at group 0002/0008. */
export function sniffDicom(bytes: Uint8Array): 'part10' | 'explicitLE' | 'implicitLE' | 'explicitBE' | 'meta-no-preamble' | undefined {
  if (bytes.length >= 132 && bytes[128] === 0x44 && bytes[129] === 0x49 && bytes[130] === 0x43 && bytes[131] === 0x4d) {
    return 'part10';
  }
  if (bytes.length < 12) return undefined;
  const isVr = (a: number, b: number): boolean => a >= 0x41 && a <= 0x5a && b >= 0x41 && b <= 0x5a;
  const g0 = bytes[0]! | (bytes[1]! << 8);
  const gBE = (bytes[0]! << 8) | bytes[1]!;
  const explicit = isVr(bytes[4]!, bytes[5]!);
  if (g0 === 0x0002 && explicit) return 'meta-no-preamble';
  if (g0 === 0x0008) {
    if (explicit) return 'explicitLE';
    // implicit: a 32-bit length that fits the buffer
    const len = (bytes[4]! | (bytes[5]! << 8) | (bytes[6]! << 16) | (bytes[7]! << 24)) >>> 0;
    const elem = bytes[2]! | (bytes[3]! << 8);
    if (len < bytes.length && elem < 0x1000) return 'implicitLE';
  }
  if (gBE === 0x0008 && explicit) return 'explicitBE';
  return undefined;
}

function describe(e: unknown): string {
  if (e instanceof Error) return e.message;
  if (typeof e === 'string') return e;
  if (e && typeof e === 'object' && 'exception' in e) return describe(e.exception);
  return String(e);
}

function isTruncationMessage(msg: string): boolean {
  return /past end|overread|overrun|beyond|end of buffer|eof|premature|truncat|outside of range|offset is outside|maxPosition|greater than or equal to 'byteArray' length/i.test(msg);
}

/**
 * What dicom-parser is given for a sniffed file: a Part 10 file as is; a meta group without the 128-byte
 * preamble gets one (plus "DICM"); a bare data set gets its transfer syntax as an option. Undefined: not DICOM.
 */
export function parserInput(bytes: Uint8Array): { input: Uint8Array; options: DicomParserNs.ParseDicomOptions } | undefined {
  const kind = sniffDicom(bytes);
  if (!kind) return undefined;
  let input = bytes;
  const options: DicomParserNs.ParseDicomOptions = {};
  if (kind === 'meta-no-preamble') {
    input = new Uint8Array(bytes.length + 132);
    input.set([0x44, 0x49, 0x43, 0x4d], 128);
    input.set(bytes, 132);
  } else if (kind !== 'part10') {
    options.TransferSyntaxUID = kind === 'explicitLE' ? TS.explicitLE : kind === 'implicitLE' ? TS.implicitLE : TS.explicitBE;
  }
  return { input, options };
}

function parse(bytes: Uint8Array): DataSet {
  const prepared = parserInput(bytes);
  if (!prepared) throw new DecodeError('not-dicom', 'not a DICOM file: no DICM preamble and no plausible DICOM data set at offset 0');
  const { input, options } = prepared;
  let inflateError: unknown;
  const inflater = (arr: Uint8Array, position: number): Uint8Array => {
    try {
      const inflated = inflateRawSync(arr.subarray(position), { maxOutputLength: MAX_INFLATED_BYTES });
      const full = new Uint8Array(position + inflated.length);
      full.set(arr.subarray(0, position), 0);
      full.set(inflated, position);
      return full;
    } catch (e) {
      inflateError = e;
      throw e;
    }
  };
  (options as { inflater?: unknown }).inflater = inflater;
  try {
    return dicomParser.parseDicom(input, options);
  } catch (e) {
    if (inflateError !== undefined) {
      const msg = describe(inflateError);
      throw new DecodeError(/unexpected end/i.test(msg) ? 'truncated' : 'corrupt', `deflated data set does not inflate: ${msg}`);
    }
    const msg = describe(e);
    if (/DICM prefix not found/.test(msg)) throw new DecodeError('not-dicom', `not a DICOM file: ${msg}`);
    if (isTruncationMessage(msg)) throw new DecodeError('truncated', `DICOM file is truncated: ${msg}`);
    throw new DecodeError('corrupt', `DICOM data set cannot be parsed: ${msg}`);
  }
}

function str(ds: DataSet, tag: string, index?: number): string | undefined {
  const v = ds.string(tag, index);
  return v === undefined || v === '' ? undefined : v.trim();
}

function num(ds: DataSet, tag: string, index?: number): number | undefined {
  const v = ds.floatString(tag, index);
  return v === undefined || !Number.isFinite(v) ? undefined : v;
}

function us(ds: DataSet, tag: string): number | undefined {
  const el = ds.elements[tag];
  if (!el || el.length < 2) return undefined;
  return ds.uint16(tag);
}

/** Patient name (whole and by component), patient ID, accession number: for scrubbing only, never published. */
function readIdentifiers(ds: DataSet): string[] {
  const out = new Set<string>();
  for (const tag of ['x00100010', 'x00100020', 'x00080050', 'x00101000']) {
    const v = str(ds, tag);
    if (!v) continue;
    out.add(v);
    for (const part of v.split(/[\^=\\]/)) if (part.trim()) out.add(part.trim());
  }
  return [...out];
}

function readPixelModule(ds: DataSet): PixelModule {
  const rows = us(ds, 'x00280010') ?? 0;
  const columns = us(ds, 'x00280011') ?? 0;
  const spp = us(ds, 'x00280002') ?? 1;
  const bitsAllocated = us(ds, 'x00280100') ?? 0;
  const bitsStored = us(ds, 'x00280101') ?? bitsAllocated;
  const highBit = us(ds, 'x00280102') ?? bitsStored - 1;
  const pr = us(ds, 'x00280103') ?? 0;
  const photometric = (str(ds, 'x00280004') ?? (spp === 3 ? 'RGB' : 'MONOCHROME2')).toUpperCase();
  const planar = us(ds, 'x00280006') ?? 0;
  const framesRaw = ds.string('x00280008');
  const frames = framesRaw === undefined || framesRaw.trim() === '' ? 1 : parseInt(framesRaw, 10);
  if (!rows || !columns) throw new DecodeError('corrupt', `image has Rows=${rows} Columns=${columns}`);
  if (spp !== 1 && spp !== 3) throw new DecodeError('corrupt', `SamplesPerPixel ${spp} is not 1 or 3`);
  if (![1, 8, 16, 32].includes(bitsAllocated)) throw new DecodeError('corrupt', `BitsAllocated ${bitsAllocated} is not 1, 8, 16 or 32`);
  if (bitsStored < 1 || bitsStored > bitsAllocated) throw new DecodeError('corrupt', `BitsStored ${bitsStored} does not fit BitsAllocated ${bitsAllocated}`);
  if (!Number.isFinite(frames) || frames < 1) throw new DecodeError('corrupt', `NumberOfFrames '${framesRaw ?? ''}' is not a positive integer`);
  return {
    rows,
    columns,
    samplesPerPixel: spp,
    bitsAllocated,
    bitsStored,
    highBit,
    pixelRepresentation: pr === 1 ? 1 : 0,
    photometric,
    planarConfiguration: planar,
    numberOfFrames: frames,
  };
}

function readPalette(ds: DataSet, pr: 0 | 1): DisplayAttributes['palette'] {
  const channel = (descTag: string, dataTag: string): { lut: Float32Array; first: number } => {
    const desc = ds.elements[descTag];
    const data = ds.elements[dataTag];
    if (!desc || desc.length < 6 || !data || data.length === 0) {
      throw new DecodeError('corrupt', 'PALETTE COLOR image without its palette lookup table (descriptor or data missing)');
    }
    const entries = ds.uint16(descTag, 0) || 65536;
    const first = pr === 1 ? ds.int16(descTag, 1)! : ds.uint16(descTag, 1)!;
    const bits = ds.uint16(descTag, 2) ?? 16;
    const lut = new Float32Array(entries);
    if (data.dataOffset + data.length > ds.byteArray.length) throw new DecodeError('truncated', 'palette lookup table data runs past the end of the file');
    if (bits <= 8 && data.length >= entries && data.length < entries * 2) {
      const scale = 1 / ((1 << bits) - 1);
      for (let i = 0; i < entries; i++) lut[i] = ds.byteArray[data.dataOffset + i]! * scale;
    } else if (bits <= 8) {
      // 8-bit entries stored one per 16-bit word (older writers) or packed; read bytes like pydicom does
      const n = Math.min(entries, data.length);
      const scale = 1 / 255;
      for (let i = 0; i < n; i++) lut[i] = ds.byteArray[data.dataOffset + i]! * scale;
    } else {
      if (data.length < entries * 2) throw new DecodeError('corrupt', `palette has ${data.length / 2} entries, descriptor says ${entries}`);
      const scale = 1 / ((2 ** bits) - 1);
      for (let i = 0; i < entries; i++) lut[i] = ds.uint16(dataTag, i)! * scale;
    }
    return { lut, first };
  };
  const r = channel('x00281101', 'x00281201');
  const g = channel('x00281102', 'x00281202');
  const b = channel('x00281103', 'x00281203');
  return { red: r.lut, green: g.lut, blue: b.lut, firstMapped: r.first };
}

function readPadding(ds: DataSet, px: PixelModule): DisplayAttributes['padding'] {
  const read = (tag: string): number | undefined => {
    const el = ds.elements[tag];
    if (!el || el.length < 2) return undefined;
    // US or SS by Pixel Representation (PS3.3 C.7.5.1.1.2)
    return px.pixelRepresentation === 1 ? ds.int16(tag) : ds.uint16(tag);
  };
  const value = read('x00280120');
  if (value === undefined || px.samplesPerPixel !== 1) return undefined;
  const limit = read('x00280121') ?? value;
  return { from: Math.min(value, limit), to: Math.max(value, limit) };
}

/** Modality LUT Sequence, first item (PS3.3 C.11.1): maps stored values to modality values. */
function readModalityLut(ds: DataSet, px: PixelModule): DisplayAttributes['modalityLut'] {
  if (px.samplesPerPixel !== 1) return undefined;
  const item = ds.elements.x00283000?.items?.[0]?.dataSet;
  if (!item) return undefined;
  const desc = item.elements.x00283002;
  const data = item.elements.x00283006;
  if (!desc || desc.length < 6 || !data || data.length === 0) return undefined;
  if (data.dataOffset + data.length > item.byteArray.length) throw new DecodeError('truncated', 'Modality LUT data runs past the end of the file');
  const entries = item.uint16('x00283002', 0) || 65536;
  const firstMapped = px.pixelRepresentation === 1 ? item.int16('x00283002', 1)! : item.uint16('x00283002', 1)!;
  const lut = new Float64Array(entries);
  if (data.length >= entries * 2) {
    for (let i = 0; i < entries; i++) lut[i] = item.uint16('x00283006', i)!;
  } else if (data.length >= entries) {
    for (let i = 0; i < entries; i++) lut[i] = item.byteArray[data.dataOffset + i]!;
  } else {
    throw new DecodeError('corrupt', `Modality LUT has ${data.length} bytes of data for ${entries} entries`);
  }
  return { data: lut, firstMapped };
}

/** VOI LUT Sequence, first item (PS3.3 C.11.2): descriptor [entries, first mapped, bits] + LUT data. */
function readVoiLut(ds: DataSet, px: PixelModule, display: { rescaleIntercept: number }): DisplayAttributes['voiLut'] {
  const item = ds.elements.x00283010?.items?.[0]?.dataSet;
  if (!item) return undefined;
  const desc = item.elements.x00283002;
  const data = item.elements.x00283006;
  if (!desc || desc.length < 6 || !data || data.length === 0) return undefined;
  if (data.dataOffset + data.length > item.byteArray.length) throw new DecodeError('truncated', 'VOI LUT data runs past the end of the file');
  const entries = item.uint16('x00283002', 0) || 65536;
  // First mapped value: US or SS. Modality values can be negative when the pixels are signed or rescaled
  // below zero, and then it is read as SS (PS3.3 C.11.2.1.1).
  const signed = desc.vr === 'SS' || px.pixelRepresentation === 1 || display.rescaleIntercept < 0;
  const firstMapped = signed ? item.int16('x00283002', 1)! : item.uint16('x00283002', 1)!;
  const bits = Math.min(16, Math.max(1, item.uint16('x00283002', 2) ?? 16));
  const lut = new Float32Array(entries);
  const scale = 1 / ((2 ** bits) - 1);
  if (data.length >= entries * 2) {
    for (let i = 0; i < entries; i++) lut[i] = Math.min(1, item.uint16('x00283006', i)! * scale);
  } else if (data.length >= entries) {
    for (let i = 0; i < entries; i++) lut[i] = Math.min(1, item.byteArray[data.dataOffset + i]! * scale);
  } else {
    throw new DecodeError('corrupt', `VOI LUT has ${data.length} bytes of data for ${entries} entries`);
  }
  return { data: lut, firstMapped };
}

function readDisplay(ds: DataSet, px: PixelModule): DisplayAttributes {
  const slope = num(ds, 'x00281053');
  const intercept = num(ds, 'x00281052');
  const wc = num(ds, 'x00281050', 0);
  const ww = num(ds, 'x00281051', 0);
  const display: DisplayAttributes = {
    rescaleSlope: slope !== undefined && slope !== 0 ? slope : 1,
    rescaleIntercept: intercept ?? 0,
    voiLutFunction: (str(ds, 'x00281056') ?? 'LINEAR').toUpperCase(),
  };
  if (wc !== undefined && ww !== undefined && ww > 0) {
    display.windowCenter = wc;
    display.windowWidth = ww;
  }
  if (px.photometric === 'PALETTE COLOR') display.palette = readPalette(ds, px.pixelRepresentation);
  display.modalityLut = readModalityLut(ds, px);
  const pad = readPadding(ds, px);
  if (pad) display.padding = pad;
  display.voiLut = readVoiLut(ds, px, display);
  return display;
}

/** Copy `count` samples of `bytesPerSample` from LE (or BE, swapped) bytes into an aligned typed array. */
function toSamples(
  src: Uint8Array,
  count: number,
  px: PixelModule,
  bigEndian: boolean,
): RawFrame['data'] {
  const bps = px.bitsAllocated / 8;
  const buf = new Uint8Array(count * bps);
  buf.set(src.subarray(0, count * bps));
  if (bigEndian && bps === 2) {
    for (let i = 0; i < buf.length; i += 2) {
      const t = buf[i]!;
      buf[i] = buf[i + 1]!;
      buf[i + 1] = t;
    }
  } else if (bigEndian && bps === 4) {
    for (let i = 0; i < buf.length; i += 4) {
      let t = buf[i]!;
      buf[i] = buf[i + 3]!;
      buf[i + 3] = t;
      t = buf[i + 1]!;
      buf[i + 1] = buf[i + 2]!;
      buf[i + 2] = t;
    }
  }
  const signed = px.pixelRepresentation === 1;
  const ab = buf.buffer;
  if (bps === 1) return signed ? new Int8Array(ab) : buf;
  if (bps === 2) return signed ? new Int16Array(ab) : new Uint16Array(ab);
  return signed ? new Int32Array(ab) : new Uint32Array(ab);
}

/** Sign-extend (signed) or mask (unsigned) samples to BitsStored, in place. */
function applyBitsStored(data: RawFrame['data'], px: PixelModule): void {
  const bs = px.bitsStored;
  if (bs >= px.bitsAllocated) return;
  const n = data.length;
  if (px.pixelRepresentation === 1) {
    const sh = 32 - bs;
    for (let i = 0; i < n; i++) data[i] = (data[i]! << sh) >> sh;
  } else if (bs < 32) {
    const mask = bs === 31 ? 0x7fffffff : (1 << bs) - 1;
    for (let i = 0; i < n; i++) data[i] = data[i]! & mask;
  }
}

function deplanarize<T extends RawFrame['data']>(data: T, pixels: number): T {
  const out = new (data.constructor as new (n: number) => T)(data.length);
  for (let i = 0; i < pixels; i++) {
    out[3 * i] = data[i]!;
    out[3 * i + 1] = data[pixels + i]!;
    out[3 * i + 2] = data[2 * pixels + i]!;
  }
  return out;
}

/** YBR_FULL_422 native layout: Y0 Y1 Cb Cr per pixel pair -> full YBR interleaved. */
function expand422(src: Uint8Array, rows: number, columns: number): Uint8Array {
  const out = new Uint8Array(rows * columns * 3);
  let s = 0;
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < columns; x += 2) {
      const y0 = src[s]!;
      const y1 = src[s + 1]!;
      const cb = src[s + 2]!;
      const cr = src[s + 3]!;
      s += 4;
      let o = (y * columns + x) * 3;
      out[o] = y0;
      out[o + 1] = cb;
      out[o + 2] = cr;
      if (x + 1 < columns) {
        o += 3;
        out[o] = y1;
        out[o + 1] = cb;
        out[o + 2] = cr;
      }
    }
  }
  return out;
}

function frameBytes(px: PixelModule): number {
  return px.rows * px.columns * px.samplesPerPixel * Math.max(1, px.bitsAllocated / 8);
}

function fragmentsInBounds(ds: DataSet, pe: Element): void {
  const total = ds.byteArray.length;
  for (const f of pe.fragments ?? []) {
    if (f.position + f.length > total) {
      throw new DecodeError('truncated', `pixel data fragment at byte ${f.position} (${f.length} bytes) runs past the end of the ${total}-byte file`);
    }
  }
}

/** Frame i of encapsulated pixel data, via the Basic Offset Table, one-fragment-per-frame, or marker scanning. */
function encapsulatedFrameReader(ds: DataSet, pe: Element, frames: number): (i: number) => Uint8Array {
  const fragments = pe.fragments ?? [];
  if (fragments.length === 0) throw new DecodeError('no-pixel-data', 'encapsulated pixel data has no fragments');
  fragmentsInBounds(ds, pe);
  const bytesOf = (start: number, count: number): Uint8Array => {
    try {
      return dicomParser.readEncapsulatedPixelDataFromFragments(ds, pe, start, count);
    } catch (e) {
      throw new DecodeError('corrupt', `cannot read pixel data fragments: ${describe(e)}`);
    }
  };
  if (frames === 1) return () => bytesOf(0, fragments.length);
  const bot = pe.basicOffsetTable ?? [];
  if (bot.length === frames) {
    // map offsets to fragment indices (robust to a BOT that does not start at 0)
    const starts = bot.map((off) => fragments.findIndex((f) => f.offset === off));
    if (starts.every((s) => s >= 0)) {
      return (i) => {
        const s = starts[i]!;
        const e = i + 1 < frames ? starts[i + 1]! : fragments.length;
        return bytesOf(s, e - s);
      };
    }
  }
  if (fragments.length === frames) return (i) => bytesOf(i, 1);
  // Group fragments by frame-start markers (JPEG SOI, J2K SOC, JP2 signature).
  const arr = ds.byteArray;
  const starts: number[] = [];
  fragments.forEach((f, idx) => {
    const p = f.position;
    const b0 = arr[p];
    const b1 = arr[p + 1];
    if ((b0 === 0xff && (b1 === 0xd8 || b1 === 0x4f)) || (b0 === 0 && arr[p + 4] === 0x6a && arr[p + 5] === 0x50)) starts.push(idx);
  });
  if (starts.length === frames) {
    return (i) => {
      const s = starts[i]!;
      const e = i + 1 < frames ? starts[i + 1]! : fragments.length;
      return bytesOf(s, e - s);
    };
  }
  throw new DecodeError('corrupt', `NumberOfFrames is ${frames} but the ${fragments.length} pixel data fragments cannot be split into that many frames`);
}

function corruptCodec(name: string, e: unknown): DecodeError {
  if (e instanceof DecodeError) return e;
  const msg = describe(e);
  return new DecodeError(isTruncationMessage(msg) ? 'truncated' : 'corrupt', `${name} decoder failed: ${msg}`);
}

/** Copy a codec's native-endian output into the frame's typed array (handles 8-bit streams in 16-bit frames). */
function codecToSamples(out: CodecOutput, px: PixelModule, count: number): RawFrame['data'] {
  const { info, bytes } = out;
  const wide = info.bitsPerSample > 8;
  const srcCount = wide ? bytes.length >> 1 : bytes.length;
  if (srcCount < count) {
    throw new DecodeError('corrupt', `codec produced ${srcCount} samples, the image needs ${count}`);
  }
  const aligned = wide ? new Uint8Array(bytes.length & ~1) : bytes;
  if (wide) aligned.set(bytes.subarray(0, aligned.length));
  const src: ArrayLike<number> = wide
    ? info.isSigned
      ? new Int16Array(aligned.buffer)
      : new Uint16Array(aligned.buffer)
    : info.isSigned
      ? new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length)
      : bytes;
  const dst = allocSamples(px, count);
  for (let i = 0; i < count; i++) dst[i] = src[i]!;
  return dst;
}

function allocSamples(px: PixelModule, count: number): RawFrame['data'] {
  const signed = px.pixelRepresentation === 1;
  if (px.bitsAllocated <= 8) return signed ? new Int8Array(count) : new Uint8Array(count);
  if (px.bitsAllocated === 16) return signed ? new Int16Array(count) : new Uint16Array(count);
  return signed ? new Int32Array(count) : new Uint32Array(count);
}

function checkDims(name: string, w: number, h: number, px: PixelModule): void {
  if (w !== px.columns || h !== px.rows) {
    throw new DecodeError('corrupt', `${name} stream is ${w}x${h}, the header says ${px.columns}x${px.rows}`);
  }
}

function decodeEncapsulated(ts: string, encoded: Uint8Array, px: PixelModule): { data: RawFrame['data']; photometric: string } {
  const pixels = px.rows * px.columns;
  const count = pixels * px.samplesPerPixel;
  let photometric = px.photometric;
  switch (ts) {
    case TS.rle: {
      let bytes: Uint8Array;
      try {
        bytes = decodeRleFrame(encoded, px.rows, px.columns, px.samplesPerPixel, px.bitsAllocated);
      } catch (e) {
        throw corruptCodec('RLE', e);
      }
      return { data: toSamples(bytes, count, px, false), photometric };
    }
    case TS.jpegBaseline:
    case TS.jpegExtended: {
      const frame = peekJpegFrame(encoded);
      if (!frame) throw new DecodeError('corrupt', 'JPEG frame has no SOI/SOF marker');
      // Check the stream's size before a codec allocates for it.
      checkDims('JPEG', frame.width, frame.height, px);
      if (frame.precision === 8 && (frame.sof === 0xc0 || frame.sof === 0xc1)) {
        let stream = encoded;
        if (px.samplesPerPixel === 3 && px.photometric === 'RGB') {
          // libjpeg treats a 3-component JPEG with neither JFIF nor Adobe marker (and component IDs other
          // than 'R','G','B') as YCbCr. When DICOM says RGB in that ambiguous case, the data was stored
          // without colour transform (PS3.5 8.2.1): say so with an Adobe marker. A JFIF marker, or chroma
          // subsampling (never used on RGB; gdcm writes such YCbCr streams labelled RGB), still means YCbCr.
          const m = jpegColourMarkers(encoded);
          const rgbIds = m.componentIds.join(',') === '82,71,66';
          if (!m.jfif && m.adobeTransform === undefined && !rgbIds && !m.subsampled) stream = withAdobeNoTransform(encoded);
        }
        let out: CodecOutput;
        try {
          out = decodeJpegBaseline8(stream);
        } catch (e) {
          throw corruptCodec('libjpeg-turbo', e);
        }
        checkDims('JPEG', out.info.width, out.info.height, px);
        if (out.info.componentCount !== px.samplesPerPixel) {
          throw new DecodeError('corrupt', `JPEG has ${out.info.componentCount} components, header says ${px.samplesPerPixel}`);
        }
        // libjpeg converts YCbCr to RGB itself (JFIF/Adobe/default rules): the output is RGB.
        if (px.samplesPerPixel === 3) photometric = 'RGB';
        return { data: codecToSamples(out, px, count), photometric };
      }
      let dec;
      try {
        dec = decodeJpegSequential(encoded);
      } catch (e) {
        throw corruptCodec('JPEG extended', e);
      }
      checkDims('JPEG', dec.width, dec.height, px);
      const dst = allocSamples(px, count);
      if (dec.data.length < count) throw new DecodeError('corrupt', 'JPEG decoded fewer samples than the image needs');
      for (let i = 0; i < count; i++) dst[i] = dec.data[i]!;
      return { data: dst, photometric };
    }
    case TS.jpegLossless:
    case TS.jpegLosslessSV1: {
      const frame = peekJpegFrame(encoded);
      if (!frame) throw new DecodeError('corrupt', 'JPEG lossless frame has no SOI/SOF marker');
      if (frame.sof !== 0xc3) throw new DecodeError('corrupt', `JPEG lossless transfer syntax holds a SOF${frame.sof - 0xc0} (not lossless) stream`);
      checkDims('JPEG lossless', frame.width, frame.height, px);
      let dec;
      try {
        dec = decodeJpegLossless(encoded, px.bitsAllocated <= 8 ? 1 : 2);
      } catch (e) {
        throw corruptCodec('JPEG lossless', e);
      }
      checkDims('JPEG lossless', dec.width, dec.height, px);
      if (dec.data.length < count) throw new DecodeError('corrupt', 'JPEG lossless decoded fewer samples than the image needs');
      const dst = allocSamples(px, count);
      for (let i = 0; i < count; i++) dst[i] = dec.data[i]!;
      return { data: dst, photometric };
    }
    case TS.jpegLsLossless:
    case TS.jpegLsNear:
    case TS.j2kLossless:
    case TS.j2k:
    case TS.htj2kLossless:
    case TS.htj2kRpclLossless:
    case TS.htj2k: {
      const isLs = ts === TS.jpegLsLossless || ts === TS.jpegLsNear;
      const isHt = ts === TS.htj2kLossless || ts === TS.htj2kRpclLossless || ts === TS.htj2k;
      const name = isLs ? 'JPEG-LS' : isHt ? 'HTJ2K' : 'JPEG 2000';
      // Check the stream's declared size before the codec allocates for it.
      const declared = isLs ? peekJpegFrame(encoded) : peekJ2kSize(encoded);
      if (!declared) throw new DecodeError('corrupt', `${name} frame has no readable ${isLs ? 'SOF55' : 'SIZ'} header`);
      checkDims(name, declared.width, declared.height, px);
      let out: CodecOutput;
      try {
        out = isLs ? decodeJpegLS(encoded) : isHt ? decodeHTJ2K(encoded) : decodeJ2K(encoded);
      } catch (e) {
        throw corruptCodec(name, e);
      }
      checkDims(name, out.info.width, out.info.height, px);
      if (out.info.componentCount !== px.samplesPerPixel) {
        throw new DecodeError('corrupt', `${name} stream has ${out.info.componentCount} components, header says ${px.samplesPerPixel}`);
      }
      let data = codecToSamples(out, px, count);
      if (isLs && px.samplesPerPixel === 3 && out.interleaveMode === 0) data = deplanarize(data, pixels);
      // The J2K codecs apply the inverse component transform themselves.
      if (!isLs && (photometric === 'YBR_RCT' || photometric === 'YBR_ICT')) photometric = 'RGB';
      return { data, photometric };
    }
    default:
      throw new DecodeError('unsupported-syntax', `transfer syntax ${ts} is not supported`);
  }
}

/** Parse a DICOM buffer and prepare frame readers. Throws DecodeError for every bad input. */
export function openDicom(bytes: Uint8Array): ParsedDicom {
  if (bytes.length === 0) throw new DecodeError('empty-file', 'file is empty');
  const ds = parse(bytes);
  const ts = (ds.string('x00020010') ?? TS.implicitLE).replace(/\0/g, '').trim();
  const modality = str(ds, 'x00080060') ?? 'OT';
  const pe = ds.elements.x7fe00010;
  if (!pe) {
    const floatPixels = ds.elements.x7fe00008 ?? ds.elements.x7fe00009;
    const what = str(ds, 'x00080016') ?? 'unknown SOP class';
    throw new DecodeError(
      'no-pixel-data',
      floatPixels ? `float/double pixel data (${modality}) is not an image this agent classifies` : `DICOM object (${modality}, ${what}) has no pixel data`,
    );
  }
  if (!SUPPORTED.has(ts)) throw new DecodeError('unsupported-syntax', `transfer syntax ${ts} is not supported`);
  const px = readPixelModule(ds);
  const meta: CaptureMeta = {
    modality,
    transferSyntaxUid: ts,
    sopClassUid: str(ds, 'x00080016'),
    sopInstanceUid: str(ds, 'x00080018'),
    studyInstanceUid: str(ds, 'x0020000d'),
    seriesInstanceUid: str(ds, 'x0020000e'),
    rows: px.rows,
    columns: px.columns,
    numberOfFrames: px.numberOfFrames,
    photometric: px.photometric,
    bitsStored: px.bitsStored,
    identifiers: readIdentifiers(ds),
  };
  const display = readDisplay(ds, px);
  const fb = frameBytes(px);
  if (fb > MAX_FRAME_BYTES) throw new DecodeError('corrupt', `declared frame ${px.columns}x${px.rows}x${px.samplesPerPixel} of ${px.bitsAllocated}-bit samples exceeds ${MAX_FRAME_BYTES} bytes`);
  const pixels = px.rows * px.columns;
  const count = pixels * px.samplesPerPixel;
  const total = ds.byteArray.length;

  if (NATIVE.has(ts)) {
    if (pe.encapsulatedPixelData) throw new DecodeError('corrupt', `encapsulated pixel data in native transfer syntax ${ts}`);
    const available = Math.max(0, Math.min(pe.length, total - pe.dataOffset));
    if (pe.length === 0) throw new DecodeError('no-pixel-data', 'pixel data element is empty');
    const bitsPerFrame = px.bitsAllocated === 1 ? count : 0;
    let is422 = px.photometric === 'YBR_FULL_422' && px.bitsAllocated === 8 && px.samplesPerPixel === 3;
    const storedFrameBytes = px.bitsAllocated === 1
      ? Math.ceil(count / 8)
      : is422 ? (pixels * 2 * px.bitsAllocated) / 8 : fb;
    // Some writers label YBR_FULL_422 but store full-resolution samples: trust the length.
    if (is422 && pe.length >= fb * px.numberOfFrames) is422 = false;
    const frameStride = is422 ? storedFrameBytes : fb;
    const needed = px.bitsAllocated === 1 ? Math.ceil((bitsPerFrame * px.numberOfFrames) / 8) : frameStride * px.numberOfFrames;
    // Every declared frame must be present: sizes are bounded by the bytes in the buffer, never the header.
    if (available < needed) {
      if (pe.dataOffset + pe.length > total) {
        throw new DecodeError('truncated', `pixel data holds ${available} bytes, ${px.numberOfFrames} frame(s) of ${px.columns}x${px.rows} need ${needed}: file is truncated`);
      }
      throw new DecodeError('corrupt', `pixel data holds ${available} bytes, ${px.numberOfFrames} frame(s) of ${px.columns}x${px.rows} need ${needed}`);
    }
    const framesPresent = px.numberOfFrames;
    const bigEndian = ts === TS.explicitBE;
    const readFrame = (i: number): RawFrame => {
      if (!Number.isInteger(i) || i < 0 || i >= framesPresent) throw new RangeError(`frame ${i} out of range 0..${framesPresent - 1}`);
      let data: RawFrame['data'];
      let photometric = px.photometric;
      if (px.bitsAllocated === 1) {
        const out = new Uint8Array(count);
        const bit0 = i * bitsPerFrame;
        const base = pe.dataOffset;
        for (let k = 0; k < count; k++) {
          const b = bit0 + k;
          out[k] = (ds.byteArray[base + (b >> 3)]! >> (b & 7)) & 1;
        }
        data = out;
      } else {
        const start = pe.dataOffset + i * frameStride;
        let src = ds.byteArray.subarray(start, start + frameStride);
        if (is422) {
          src = expand422(src, px.rows, px.columns);
          photometric = 'YBR_FULL';
        }
        data = toSamples(src, count, px, bigEndian);
        applyBitsStored(data, px);
        if (px.samplesPerPixel === 3 && px.planarConfiguration === 1) data = deplanarize(data, pixels);
      }
      return rawFrame(i, px, photometric, data);
    };
    return { dataSet: ds, transferSyntax: ts, meta, pixel: px, display, frameCount: framesPresent, readFrame };
  }

  if (!pe.encapsulatedPixelData) {
    throw new DecodeError('corrupt', `transfer syntax ${ts} requires encapsulated pixel data, found native`);
  }
  const frameAt = encapsulatedFrameReader(ds, pe, px.numberOfFrames);
  const readFrame = (i: number): RawFrame => {
    if (!Number.isInteger(i) || i < 0 || i >= px.numberOfFrames) throw new RangeError(`frame ${i} out of range 0..${px.numberOfFrames - 1}`);
    const encoded = frameAt(i);
    if (encoded.length === 0) throw new DecodeError('corrupt', `frame ${i} has no encoded bytes`);
    const { data, photometric } = decodeEncapsulated(ts, encoded, px);
    applyBitsStored(data, px);
    return rawFrame(i, px, photometric, data);
  };
  return { dataSet: ds, transferSyntax: ts, meta, pixel: px, display, frameCount: px.numberOfFrames, readFrame };
}

function rawFrame(i: number, px: PixelModule, photometric: string, data: RawFrame['data']): RawFrame {
  return {
    index: i,
    width: px.columns,
    height: px.rows,
    samplesPerPixel: px.samplesPerPixel,
    bitsAllocated: px.bitsAllocated,
    bitsStored: px.bitsStored,
    pixelRepresentation: px.pixelRepresentation,
    photometric,
    data,
  };
}
