/**
 * PNG- and JPEG-aware mutator for the decode fuzzer: takes a real PNG or JPEG seed
 * (tests/fixtures/fuzz-seeds) and returns a damaged copy, deterministically for a given RNG, the way
 * mutate.ts does for DICOM. These files are decoded by sharp (libvips, libpng, mozjpeg, libexif, lcms:
 * native code), so a crash or a hang there takes the whole worker, not one file.
 *
 * It re-reads the structure of the buffer before each mutation (PNG chunks; JPEG marker segments and
 * entropy-coded scan data), tolerating a structure already broken by the previous one, so it can hit
 * the fields a decoder trusts, and it fixes the chunk CRC after most PNG edits so the damage reaches
 * past the CRC check into the parser, inflate and unfilter code:
 *
 * - PNG: chunk lengths (bogus, huge), CRCs, IHDR fields (width/height 0 or huge, bit depth, colour type,
 *   compression, filter, interlace), IDAT truncation, bit flips and splices, re-compressed IDAT with
 *   damaged scanlines (bad filter types, short or long image data), missing IEND, critical chunks
 *   dropped, duplicated or out of order, inserted chunks (PLTE, tRNS, iCCP, eXIf, zTXt bomb, unknown
 *   critical chunk, ...);
 * - JPEG: marker segment lengths, SOF dimensions (0, huge), precision, component counts, sampling
 *   factors and table ids, the SOF type (progressive, lossless, arithmetic, hierarchical), Huffman and
 *   quantisation tables, SOS fields (component count, selectors, spectral selection, approximation),
 *   truncation inside scan data, missing EOI, bogus restart markers and intervals, EXIF / ICC segments
 *   with hostile contents, segments dropped, duplicated or out of order;
 * - both: blind bit flips, truncation, splices and zero runs (mutate.ts's).
 */
import { deflateSync, inflateSync, crc32 } from 'node:zlib';
import { mutateOnce as mutateBlind, type Mutation as BlindMutation, type Rng } from './mutate.js';

export type ImageFormat = 'png' | 'jpeg';

export interface ImageSeed {
  name: string;
  format: ImageFormat;
  bytes: Uint8Array;
}

const BLIND = ['bitflip', 'truncate', 'splice', 'zero-run'] as const satisfies readonly BlindMutation[];

export const PNG_MUTATIONS = [
  ...BLIND,
  'png-chunk-length',
  'png-crc',
  'png-ihdr',
  'png-idat-truncate',
  'png-idat-bitflip',
  'png-idat-splice',
  'png-rescanline',
  'png-drop-iend',
  'png-chunk-order',
  'png-insert-chunk',
] as const;

export const JPEG_MUTATIONS = [
  ...BLIND,
  'jpeg-marker-length',
  'jpeg-sof',
  'jpeg-sof-type',
  'jpeg-dht',
  'jpeg-dqt',
  'jpeg-sos',
  'jpeg-scan-truncate',
  'jpeg-scan-bitflip',
  'jpeg-drop-eoi',
  'jpeg-restart',
  'jpeg-app-segment',
  'jpeg-segment-order',
] as const;

export type ImageMutation = (typeof PNG_MUTATIONS)[number] | (typeof JPEG_MUTATIONS)[number];

const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rng, n: number): number => Math.floor(r() * n);
const HUGE32 = [0xffffffff, 0xfffffff0, 0x7fffffff, 0x80000000, 0x10000000, 0x00ffffff, 0x7ffffffe];

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const u32be = (v: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0);
  return b;
};
const u16be = (v: number): Uint8Array => Uint8Array.of((v >> 8) & 0xff, v & 0xff);
const ascii = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
const randomBytes = (r: Rng, n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(r, 256));

/** A minimal TIFF (EXIF) block with hostile values: orientation, entry counts, offsets, a self-pointing sub-IFD. */
function hostileTiff(r: Rng): Uint8Array {
  const le = r() < 0.5;
  const b = new Uint8Array(8 + 2 + 12 * 4 + 4 + 16);
  const dv = new DataView(b.buffer);
  b.set(ascii(le ? 'II' : 'MM'), 0);
  dv.setUint16(2, r() < 0.9 ? 42 : int(r, 0x10000), le);
  dv.setUint32(4, r() < 0.8 ? 8 : pick(r, [0, 7, b.length, 0xffffffff, int(r, 0x10000)]), le);
  dv.setUint16(8, r() < 0.7 ? 4 : pick(r, [0, 0xffff, 1000, 5]), le);
  const entry = (i: number, tag: number, type: number, count: number, value: number): void => {
    const at = 10 + 12 * i;
    dv.setUint16(at, tag, le);
    dv.setUint16(at + 2, type, le);
    dv.setUint32(at + 4, count, le);
    if (type === 3 && count === 1) dv.setUint16(at + 8, value, le);
    else dv.setUint32(at + 8, value, le);
  };
  entry(0, 0x0112, r() < 0.8 ? 3 : pick(r, [0, 4, 7, 13, 0xffff]), r() < 0.8 ? 1 : pick(r, [0, 2, 0xffff, 0xffffffff]), pick(r, [0, 1, 6, 8, 9, 255, 0xffff]));
  // Exif sub-IFD pointer: to itself (a loop), past the end, or to the padding.
  entry(1, 0x8769, 4, 1, pick(r, [8, 10, b.length - 16, 0xfffffff0, int(r, b.length * 2)]));
  entry(2, 0x010f, 2, pick(r, [4, 0x7fffffff, 0xffffffff, int(r, 0x10000)]), pick(r, [b.length - 16, 0xffffff00, 0]));
  entry(3, int(r, 0x10000), int(r, 20), int(r, 0x100000), int(r, 0x100000000));
  dv.setUint32(10 + 12 * 4, pick(r, [0, 8, 0xffffffff, int(r, 0x10000)]), le);
  b.set(randomBytes(r, 16), b.length - 16);
  return b;
}

// ---------------------------------------------------------------------------------------------------
// PNG

const PNG_SIG = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

interface PngChunk {
  offset: number;
  length: number;
  type: string;
  dataOffset: number;
  /** The chunk runs past the end of the buffer (already truncated or given a bogus length). */
  cut: boolean;
}

/** Chunks as far as they can be read (a bogus length ends the walk). */
function pngChunks(buf: Uint8Array): PngChunk[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: PngChunk[] = [];
  let i = 8;
  while (i + 8 <= buf.length) {
    const length = dv.getUint32(i);
    const type = String.fromCharCode(buf[i + 4]!, buf[i + 5]!, buf[i + 6]!, buf[i + 7]!);
    const cut = i + 12 + length > buf.length;
    out.push({ offset: i, length, type, dataOffset: i + 8, cut });
    if (cut || type === 'IEND') break;
    i += 12 + length;
  }
  return out;
}

function chunkBytes(c: PngChunk, buf: Uint8Array): Uint8Array {
  return buf.slice(c.offset, Math.min(buf.length, c.offset + 12 + c.length));
}

function makeChunk(type: string, data: Uint8Array, crcOk = true): Uint8Array {
  const td = concat([ascii(type), data]);
  const crc = crc32(td);
  return concat([u32be(data.length), td, u32be(crcOk ? crc : crc ^ 0x5a5a5a5a)]);
}

/** Recomputes the CRC of a chunk whose bytes are all present. */
function fixCrc(buf: Uint8Array, c: PngChunk): void {
  const end = c.dataOffset + c.length;
  if (end + 4 > buf.length) return;
  buf.set(u32be(crc32(buf.subarray(c.offset + 4, end))), end);
}

/** Samples per pixel for a PNG colour type. */
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

let bomb: Uint8Array | undefined;
/** 16 MiB of zeros deflated (a few KiB); made once. */
const zlibBomb = (): Uint8Array => (bomb ??= new Uint8Array(deflateSync(new Uint8Array(16 << 20), { level: 9 })));

function pngHostileChunk(r: Rng): Uint8Array {
  const choice = int(r, 12);
  switch (choice) {
    case 0: {
      // PLTE: any length, a multiple of 3 or not, up to more than 256 entries.
      const n = pick(r, [0, 1, 3, 48, 767, 768, 771, 3 * int(r, 300)]);
      return makeChunk('PLTE', randomBytes(r, n));
    }
    case 1:
      return makeChunk('tRNS', randomBytes(r, pick(r, [0, 1, 2, 6, 255, 256, 257, int(r, 600)])));
    case 2: {
      // iCCP: a name, a compression method, then a zlib stream of garbage (or not zlib at all).
      const profile = r() < 0.5 ? deflateSync(randomBytes(r, 128 + int(r, 512))) : randomBytes(r, int(r, 256));
      return makeChunk('iCCP', concat([ascii('icc'), Uint8Array.of(0, r() < 0.8 ? 0 : int(r, 256)), profile]));
    }
    case 3:
      return makeChunk('eXIf', hostileTiff(r));
    case 4:
      // zTXt decompression bomb: 16 MiB of zeros in a few KiB.
      return makeChunk('zTXt', concat([ascii('Comment'), Uint8Array.of(0, 0), zlibBomb()]));
    case 5:
      return makeChunk('iTXt', concat([ascii('XML:com.adobe.xmp'), Uint8Array.of(0, r() < 0.5 ? 1 : 0, 0, 0, 0), r() < 0.5 ? deflateSync(randomBytes(r, 300)) : randomBytes(r, 300)]));
    case 6:
      return makeChunk('gAMA', r() < 0.5 ? u32be(pick(r, [0, 1, 0xffffffff, 45455])) : randomBytes(r, int(r, 8)));
    case 7:
      return makeChunk('sBIT', randomBytes(r, 1 + int(r, 5)));
    case 8:
      return makeChunk('pHYs', concat([u32be(pick(r, HUGE32)), u32be(pick(r, [0, ...HUGE32])), Uint8Array.of(int(r, 256))]));
    case 9:
      // An unknown critical chunk (upper-case first letter): a decoder must refuse it.
      return makeChunk(pick(r, ['ABCD', 'IDAX', 'CgBI', 'Zzzz']), randomBytes(r, int(r, 64)));
    case 10:
      // An empty IDAT, or one of random bytes.
      return makeChunk('IDAT', randomBytes(r, pick(r, [0, 1, 2, int(r, 1000)])));
    default:
      // APNG control chunks (decoders that ignore them must keep ignoring them).
      return makeChunk(pick(r, ['acTL', 'fcTL', 'fdAT']), randomBytes(r, pick(r, [8, 26, 30, int(r, 64)])));
  }
}

function mutatePng(buf: Uint8Array, kind: ImageMutation, r: Rng): Uint8Array {
  const chunks = pngChunks(buf);
  const whole = chunks.filter((c) => !c.cut);
  const idats = whole.filter((c) => c.type === 'IDAT');
  const ihdr = whole.find((c) => c.type === 'IHDR' && c.length >= 13);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const fix = r() < 0.85;
  switch (kind) {
    case 'png-chunk-length': {
      const c = pick(r, chunks);
      if (!c) return buf;
      const v = pick(r, [0, 1, Math.max(0, c.length - 1 - int(r, 16)), c.length + 1 + int(r, 16), int(r, buf.length * 2), pick(r, HUGE32)]);
      dv.setUint32(c.offset, v >>> 0);
      return buf;
    }
    case 'png-crc': {
      const c = pick(r, whole);
      if (c) dv.setUint32(c.dataOffset + c.length, (dv.getUint32(c.dataOffset + c.length) ^ (1 + int(r, 0xffffffff))) >>> 0);
      return buf;
    }
    case 'png-ihdr': {
      if (!ihdr) return buf;
      const d = ihdr.dataOffset;
      const n = 1 + (r() < 0.3 ? 1 : 0);
      for (let k = 0; k < n; k++) {
        const field = int(r, 7);
        if (field <= 1) {
          const v = pick(r, [0, 1, 2, 7, 8, 16384, 30000, 65535, 65536, 1_000_000, 1_000_001, ...HUGE32]);
          dv.setUint32(d + 4 * field, v >>> 0);
        } else if (field === 2) buf[d + 8] = pick(r, [0, 1, 2, 3, 4, 5, 7, 8, 16, 32, 255]);
        else if (field === 3) buf[d + 9] = pick(r, [0, 1, 2, 3, 4, 5, 6, 7, 8, 255]);
        else if (field === 4) buf[d + 10] = pick(r, [1, 8, 255]);
        else if (field === 5) buf[d + 11] = pick(r, [1, 64, 255]);
        else buf[d + 12] = pick(r, [0, 1, 2, 255]);
      }
      if (fix) fixCrc(buf, ihdr);
      return buf;
    }
    case 'png-idat-truncate': {
      const c = pick(r, idats);
      if (!c) return buf;
      if (r() < 0.5) {
        // Cut the stream after this IDAT (no more image data, no IEND).
        return buf.slice(0, c.dataOffset + c.length + 4);
      }
      // Shorten this IDAT, with its length and CRC made consistent.
      const keep = int(r, c.length);
      const chunk = makeChunk('IDAT', buf.slice(c.dataOffset, c.dataOffset + keep), fix);
      return concat([buf.subarray(0, c.offset), chunk, buf.subarray(c.dataOffset + c.length + 4)]);
    }
    case 'png-idat-bitflip': {
      const c = pick(r, idats);
      if (!c || c.length === 0) return buf;
      const n = 1 + int(r, 8);
      for (let k = 0; k < n; k++) {
        // Bias to the zlib header and the first blocks.
        const at = c.dataOffset + (r() < 0.5 ? int(r, Math.min(c.length, 16)) : int(r, c.length));
        buf[at]! ^= 1 << int(r, 8);
      }
      if (fix) fixCrc(buf, c);
      return buf;
    }
    case 'png-idat-splice': {
      const c = pick(r, idats);
      if (!c) return buf;
      const bytes = chunkBytes(c, buf);
      const end = c.offset + bytes.length;
      const op = int(r, 3);
      if (op === 0) return concat([buf.subarray(0, end), bytes, buf.subarray(end)]); // twice
      if (op === 1) return concat([buf.subarray(0, c.offset), buf.subarray(end)]); // dropped
      // Another seed-independent splice: this IDAT's data after the first chunk (out of order).
      const first = whole[0];
      if (!first) return buf;
      const afterFirst = first.offset + 12 + first.length;
      return concat([buf.subarray(0, afterFirst), bytes, buf.subarray(afterFirst, c.offset), buf.subarray(end)]);
    }
    case 'png-rescanline': {
      // Inflate the image data, damage the scanlines, deflate again: a valid zlib stream carrying bad
      // filter types, or too little or too much data for the IHDR geometry.
      if (!ihdr || idats.length === 0) return buf;
      let raw: Uint8Array;
      try {
        raw = new Uint8Array(inflateSync(concat(idats.map((c) => buf.subarray(c.dataOffset, c.dataOffset + c.length)))));
      } catch {
        return buf;
      }
      const width = dv.getUint32(ihdr.dataOffset);
      const depth = buf[ihdr.dataOffset + 8]!;
      const channels = PNG_CHANNELS[buf[ihdr.dataOffset + 9]!] ?? 1;
      const interlaced = buf[ihdr.dataOffset + 12] !== 0;
      const stride = 1 + Math.ceil((width * channels * depth) / 8);
      const op = int(r, 4);
      if (op === 0 && !interlaced && stride > 1) {
        const rows = Math.floor(raw.length / stride);
        const n = 1 + int(r, 4);
        for (let k = 0; k < n && rows > 0; k++) raw[stride * int(r, rows)] = pick(r, [0, 1, 2, 3, 4, 5, 127, 255]);
      } else if (op === 1) raw = raw.slice(0, int(r, raw.length));
      else if (op === 2) raw = concat([raw, randomBytes(r, 1 + int(r, 4096))]);
      else for (let k = 0, n = 1 + int(r, 64); k < n && raw.length > 0; k++) raw[int(r, raw.length)] = int(r, 256);
      const idat = makeChunk('IDAT', new Uint8Array(deflateSync(raw)), fix);
      const firstIdat = idats[0]!;
      const lastIdat = idats[idats.length - 1]!;
      const tail = lastIdat.dataOffset + lastIdat.length + 4;
      // The other chunks between the IDATs (none in a well-formed file) go.
      return concat([buf.subarray(0, firstIdat.offset), idat, buf.subarray(tail)]);
    }
    case 'png-drop-iend': {
      const c = whole.find((x) => x.type === 'IEND');
      if (!c) return buf;
      return r() < 0.5 ? buf.slice(0, c.offset) : concat([buf.subarray(0, c.offset), randomBytes(r, 1 + int(r, 64))]);
    }
    case 'png-chunk-order': {
      const critical = whole.filter((c) => ['IHDR', 'PLTE', 'IDAT'].includes(c.type));
      const c = pick(r, critical);
      if (!c) return buf;
      const bytes = chunkBytes(c, buf);
      const end = c.offset + bytes.length;
      const without = concat([buf.subarray(0, c.offset), buf.subarray(end)]);
      const op = int(r, 3);
      if (op === 0) return without; // dropped (no IHDR, no PLTE for a palette image, ...)
      if (op === 1) return concat([buf.subarray(0, end), bytes, buf.subarray(end)]); // twice in a row
      // Moved: to just before IEND (IHDR / PLTE after the image data), or to just after the signature.
      const iend = pngChunks(without).find((x) => x.type === 'IEND');
      const at = r() < 0.5 && iend ? iend.offset : 8;
      return concat([without.subarray(0, at), bytes, without.subarray(at)]);
    }
    case 'png-insert-chunk': {
      const chunk = pngHostileChunk(r);
      // Before the first IDAT (where ancillary chunks that matter go), or anywhere between chunks.
      const at = r() < 0.7 && idats[0] ? idats[0].offset : pick(r, [8, ...whole.map((c) => c.offset + 12 + c.length)]);
      return concat([buf.subarray(0, at), chunk, buf.subarray(at)]);
    }
    default:
      return buf;
  }
}

// ---------------------------------------------------------------------------------------------------
// JPEG

interface JpegSegment {
  offset: number;
  marker: number;
  /** Declared length (incl. its own 2 bytes); 0 for a standalone marker. */
  length: number;
  dataOffset: number;
  end: number;
  /** For SOS: where the entropy-coded data ends (the next non-RST marker). */
  scanEnd?: number;
}

const STANDALONE = (m: number): boolean => m === 0x01 || (m >= 0xd0 && m <= 0xd9);
const IS_SOF = (m: number): boolean => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;

function jpegSegments(buf: Uint8Array): JpegSegment[] {
  const out: JpegSegment[] = [];
  let i = buf[0] === 0xff && buf[1] === 0xd8 ? 2 : 0;
  while (i + 1 < buf.length) {
    if (buf[i] !== 0xff) break;
    while (buf[i + 1] === 0xff && i + 2 < buf.length) i++; // fill bytes
    const marker = buf[i + 1]!;
    if (STANDALONE(marker)) {
      out.push({ offset: i, marker, length: 0, dataOffset: i + 2, end: i + 2 });
      if (marker === 0xd9) break;
      i += 2;
      continue;
    }
    if (i + 4 > buf.length) break;
    const length = (buf[i + 2]! << 8) | buf[i + 3]!;
    const seg: JpegSegment = { offset: i, marker, length, dataOffset: i + 4, end: Math.min(buf.length, i + 2 + length) };
    out.push(seg);
    if (i + 2 + length > buf.length || length < 2) break;
    i += 2 + length;
    if (marker === 0xda) {
      let j = i;
      while (j + 1 < buf.length && !(buf[j] === 0xff && buf[j + 1] !== 0 && !(buf[j + 1]! >= 0xd0 && buf[j + 1]! <= 0xd7))) j++;
      seg.scanEnd = j + 1 < buf.length ? j : buf.length;
      i = seg.scanEnd;
    }
  }
  return out;
}

function jpegSegmentBytes(buf: Uint8Array, s: JpegSegment): Uint8Array {
  return buf.slice(s.offset, s.scanEnd ?? s.end);
}

function jpegHostileApp(r: Rng): Uint8Array {
  const seg = (marker: number, data: Uint8Array): Uint8Array => concat([Uint8Array.of(0xff, marker), u16be(Math.min(0xffff, data.length + 2)), data]);
  const choice = int(r, 4);
  if (choice === 0) return seg(0xe1, concat([ascii('Exif'), Uint8Array.of(0, 0), hostileTiff(r)]));
  if (choice === 1) {
    // ICC profile chunk: sequence numbers and counts that do not add up, a header with bogus sizes.
    const header = randomBytes(r, 128);
    header.set(u32be(pick(r, [0, 128, 0xffffffff, int(r, 1 << 20)])), 0);
    header.set(ascii(pick(r, ['acsp', 'xxxx'])), 36);
    return seg(0xe2, concat([ascii('ICC_PROFILE'), Uint8Array.of(0, pick(r, [0, 1, 2, 255]), pick(r, [0, 1, 255])), header, randomBytes(r, int(r, 512))]));
  }
  if (choice === 2) return seg(0xe0, concat([ascii('JFIF'), Uint8Array.of(0, 1, 2, int(r, 3)), u16be(pick(r, [0, 1, 0xffff])), u16be(pick(r, [0, 1, 0xffff])), Uint8Array.of(pick(r, [0, 255]), pick(r, [0, 255])), randomBytes(r, int(r, 64))]));
  return seg(0xee, concat([ascii('Adobe'), randomBytes(r, 7)])); // Adobe: colour transform flag
}

function mutateJpeg(buf: Uint8Array, kind: ImageMutation, r: Rng): Uint8Array {
  const segs = jpegSegments(buf);
  const withLength = segs.filter((s) => s.length > 0);
  const sofs = segs.filter((s) => IS_SOF(s.marker) && s.end - s.dataOffset >= 6);
  const scans = segs.filter((s) => s.marker === 0xda && s.scanEnd !== undefined);
  const of = (m: number): JpegSegment[] => segs.filter((s) => s.marker === m && s.end > s.dataOffset);
  const set16 = (at: number, v: number): void => {
    if (at + 1 < buf.length) {
      buf[at] = (v >> 8) & 0xff;
      buf[at + 1] = v & 0xff;
    }
  };
  switch (kind) {
    case 'jpeg-marker-length': {
      const s = pick(r, withLength);
      if (s) set16(s.offset + 2, pick(r, [0, 1, 2, 3, Math.max(0, s.length - 1 - int(r, 8)), s.length + 1 + int(r, 8), 0xffff, int(r, 0x10000)]));
      return buf;
    }
    case 'jpeg-sof': {
      const s = pick(r, sofs);
      if (!s) return buf;
      const d = s.dataOffset;
      const ncomp = buf[d + 5]!;
      const field = int(r, 7);
      if (field === 6) {
        // Both dimensions: a few KB claiming hundreds of megapixels (libjpeg fills a missing scan with grey).
        set16(d + 1, pick(r, [8200, 16000, 30000, 65500]));
        set16(d + 3, pick(r, [8200, 16000, 30000, 65500]));
      } else if (field === 0) buf[d] = pick(r, [0, 1, 2, 7, 9, 12, 16, 255]); // precision
      else if (field === 1) set16(d + 1, pick(r, [0, 1, 8, 16384, 30000, 65500, 65535])); // height
      else if (field === 2) set16(d + 3, pick(r, [0, 1, 8, 16384, 30000, 65500, 65535])); // width
      else if (field === 3) buf[d + 5] = pick(r, [0, 1, 2, 3, 4, 5, 10, 255]); // component count (length unchanged)
      else if (field === 4 && ncomp > 0) {
        const c = d + 6 + 3 * int(r, ncomp);
        if (c + 2 < s.end) buf[c + 1] = pick(r, [0x00, 0x01, 0x10, 0x11, 0x12, 0x21, 0x22, 0x44, 0x14, 0x41, 0x55, 0xff]); // sampling
      } else if (ncomp > 0) {
        const c = d + 6 + 3 * int(r, ncomp);
        if (c + 2 < s.end) {
          if (r() < 0.5) buf[c + 2] = pick(r, [0, 1, 2, 3, 4, 255]); // quant table id
          else buf[c] = buf[d + 6]!; // duplicate component id
        }
      }
      return buf;
    }
    case 'jpeg-sof-type': {
      const s = pick(r, sofs);
      // C1 extended, C2 progressive, C3 lossless, C5-C7 hierarchical, C9-CB / CD-CF arithmetic.
      if (s) buf[s.offset + 1] = pick(r, [0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]);
      return buf;
    }
    case 'jpeg-dht': {
      const s = pick(r, of(0xc4));
      if (!s) return buf;
      const d = s.dataOffset;
      const op = int(r, 4);
      if (op === 0) buf[d] = pick(r, [0x00, 0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x14, 0x20, 0x0f, 0xff]); // class / id
      else if (op === 1) {
        // Code counts: more codes than the code space, more than 256 values, or all zero.
        const v = pick(r, [0, 2, 3, 4, 255]);
        for (let k = 0; k < 16 && d + 1 + k < s.end; k++) if (k === 0 || r() < 0.3) buf[d + 1 + k] = v;
      } else if (op === 2) {
        for (let k = 0, n = 1 + int(r, 8); k < n; k++) buf[d + 17 + int(r, Math.max(1, s.end - d - 17))] = int(r, 256); // symbols
      } else for (let k = d; k < s.end; k++) buf[k] = 0;
      return buf;
    }
    case 'jpeg-dqt': {
      const s = pick(r, of(0xdb));
      if (!s) return buf;
      const d = s.dataOffset;
      const op = int(r, 3);
      if (op === 0) buf[d] = pick(r, [0x00, 0x01, 0x03, 0x04, 0x10, 0x11, 0x1f, 0x20, 0xff]); // precision / id
      else buf.fill(op === 1 ? 0 : 0xff, d + 1, s.end); // all-zero (divide by zero?) or all-max
      return buf;
    }
    case 'jpeg-sos': {
      const s = pick(r, scans);
      if (!s) return buf;
      const d = s.dataOffset;
      const ns = buf[d]!;
      const field = int(r, 5);
      if (field === 0) buf[d] = pick(r, [0, 1, 2, 3, 4, 5, 255]);
      else if (field === 1 && ns > 0) buf[d + 1 + 2 * int(r, ns)] = pick(r, [0, 1, 2, 3, 4, 99, 255]); // component selector
      else if (field === 2 && ns > 0) buf[d + 2 + 2 * int(r, ns)] = pick(r, [0x00, 0x01, 0x10, 0x11, 0x04, 0x40, 0x44, 0xff]); // DC/AC table
      else if (field === 3) {
        buf[d + 1 + 2 * ns] = pick(r, [0, 1, 63, 64, 255]); // Ss
        buf[d + 2 + 2 * ns] = pick(r, [0, 1, 63, 64, 255]); // Se
      } else buf[d + 3 + 2 * ns] = pick(r, [0x00, 0x01, 0x10, 0x0d, 0xd0, 0xff]); // Ah/Al
      return buf;
    }
    case 'jpeg-scan-truncate': {
      const s = pick(r, scans);
      if (!s || s.scanEnd === undefined) return buf;
      const cut = s.end + int(r, Math.max(1, s.scanEnd - s.end));
      const op = int(r, 3);
      if (op === 0) return buf.slice(0, cut);
      if (op === 1) return concat([buf.subarray(0, cut), Uint8Array.of(0xff, 0xd9)]); // EOI early
      return concat([buf.subarray(0, cut), buf.subarray(s.scanEnd)]); // the rest of this scan gone, the file goes on
    }
    case 'jpeg-scan-bitflip': {
      const s = pick(r, scans);
      if (!s || s.scanEnd === undefined || s.scanEnd <= s.end) return buf;
      for (let k = 0, n = 1 + int(r, 16); k < n; k++) buf[s.end + int(r, s.scanEnd - s.end)]! ^= 1 << int(r, 8);
      return buf;
    }
    case 'jpeg-drop-eoi': {
      const eoi = segs.find((s) => s.marker === 0xd9);
      const at = eoi ? eoi.offset : buf.length >= 2 && buf[buf.length - 2] === 0xff && buf[buf.length - 1] === 0xd9 ? buf.length - 2 : -1;
      if (at < 0) return buf;
      return r() < 0.6 ? buf.slice(0, at) : concat([buf.subarray(0, at), randomBytes(r, 1 + int(r, 64))]);
    }
    case 'jpeg-restart': {
      const s = pick(r, scans);
      if (!s || s.scanEnd === undefined) return buf;
      const scanEnd = s.scanEnd;
      const op = int(r, 3);
      let out = buf;
      if (op !== 1) {
        // A DRI segment before the scan, with no (or not matching) RST markers in it.
        const dri = concat([Uint8Array.of(0xff, 0xdd, 0, 4), u16be(pick(r, [0, 1, 2, 7, 100, 0xffff]))]);
        out = concat([buf.subarray(0, s.offset), dri, buf.subarray(s.offset)]);
      }
      if (op !== 0) {
        // RST markers at random places in the scan data, numbered out of sequence.
        const shift = out.length - buf.length;
        const points = Array.from({ length: 1 + int(r, 6) }, () => shift + s.end + int(r, Math.max(1, scanEnd - s.end)))
          .sort((a, b) => a - b)
          .filter((p, k, all) => all.indexOf(p) === k);
        const parts: Uint8Array[] = [];
        let from = 0;
        for (const p of points) {
          parts.push(out.subarray(from, p), Uint8Array.of(0xff, 0xd0 + int(r, 8)));
          from = p;
        }
        parts.push(out.subarray(from));
        out = concat(parts);
      }
      return out;
    }
    case 'jpeg-app-segment': {
      const app = jpegHostileApp(r);
      const existing = segs.filter((s) => s.marker >= 0xe0 && s.marker <= 0xef);
      const replace = r() < 0.4 ? pick(r, existing) : undefined;
      if (replace) return concat([buf.subarray(0, replace.offset), app, buf.subarray(replace.end)]);
      return concat([buf.subarray(0, 2), app, buf.subarray(2)]);
    }
    case 'jpeg-segment-order': {
      const tables = segs.filter((s) => [0xc4, 0xdb, 0xdd, 0xda].includes(s.marker) || IS_SOF(s.marker));
      const s = pick(r, tables);
      if (!s) return buf;
      const bytes = jpegSegmentBytes(buf, s);
      const end = s.offset + bytes.length;
      const op = int(r, 4);
      if (op === 0) return concat([buf.subarray(0, s.offset), buf.subarray(end)]); // dropped
      if (op === 1) return concat([buf.subarray(0, end), bytes, buf.subarray(end)]); // twice (two SOFs, a scan again, ...)
      if (op === 2) return concat([buf.subarray(0, 2), bytes, buf.subarray(2, s.offset), buf.subarray(end)]); // first
      return concat([buf.subarray(0, s.offset), Uint8Array.of(0xff, 0xd8), buf.subarray(s.offset)]); // a second SOI
    }
    default:
      return buf;
  }
}

// ---------------------------------------------------------------------------------------------------

export function imageFormatOf(name: string): ImageFormat | undefined {
  const n = name.toLowerCase();
  if (n.endsWith('.png')) return 'png';
  if (n.endsWith('.jpg') || n.endsWith('.jpeg')) return 'jpeg';
  return undefined;
}

export function loadImageSeed(name: string, bytes: Uint8Array): ImageSeed {
  const format = imageFormatOf(name);
  if (!format) throw new Error(`${name}: not a PNG or JPEG seed name`);
  if (format === 'png' && !PNG_SIG.every((b, i) => bytes[i] === b)) throw new Error(`${name}: no PNG signature`);
  if (format === 'jpeg' && !(bytes[0] === 0xff && bytes[1] === 0xd8)) throw new Error(`${name}: no JPEG SOI`);
  return { name, format, bytes };
}

/** Applies one mutation (returns a new buffer or the mutated input). */
export function mutateImageOnce(seed: ImageSeed, buf: Uint8Array, kind: ImageMutation, r: Rng): Uint8Array {
  if ((BLIND as readonly string[]).includes(kind)) return mutateBlind({ name: seed.name, bytes: seed.bytes, elements: [] }, buf, kind as BlindMutation, r);
  return seed.format === 'png' ? mutatePng(buf, kind, r) : mutateJpeg(buf, kind, r);
}

/** One fuzz case: 1-3 mutations of a copy of the seed (format-aware ones twice as likely as blind ones). */
export function mutateImage(seed: ImageSeed, r: Rng): { bytes: Uint8Array; mutations: ImageMutation[] } {
  const kinds: readonly ImageMutation[] = seed.format === 'png' ? PNG_MUTATIONS : JPEG_MUTATIONS;
  const aware = kinds.filter((k) => !(BLIND as readonly string[]).includes(k));
  let buf: Uint8Array = seed.bytes.slice();
  const mutations: ImageMutation[] = [];
  const n = 1 + (r() < 0.3 ? 1 + int(r, 2) : 0);
  for (let i = 0; i < n; i++) {
    const kind = r() < 0.25 ? pick(r, BLIND) : pick(r, aware);
    mutations.push(kind);
    buf = mutateImageOnce(seed, buf, kind, r);
    if (buf.length === 0) break;
  }
  return { bytes: buf, mutations };
}
