/**
 * DICOM-aware mutator for the decode fuzzer: takes a real DICOM seed (tests/fixtures/fuzz-seeds) and
 * returns a damaged copy, deterministically for a given RNG. It knows where the seed's element headers
 * are (parsed once with dicom-parser), so besides blind bit flips and truncation it can hit the fields a
 * parser trusts: declared lengths (bogus, huge, undefined), VRs, the transfer syntax UID, pixel data
 * and the image geometry (Rows, Columns, Bits Allocated, Samples per Pixel, Number of Frames), and
 * sequences (huge or undefined lengths without delimiters).
 */
import { createRequire } from 'node:module';
import type * as DicomParserNs from 'dicom-parser';

const require = createRequire(import.meta.url);
const dicomParser = require('dicom-parser') as typeof DicomParserNs;

export type Rng = () => number;

interface ElementSite {
  tag: string;
  /** Offset of the element's first header byte. */
  headerOffset: number;
  dataOffset: number;
  length: number;
  /** Where the VR's two letters are (explicit VR only). */
  vrOffset: number | null;
  /** Where the declared length is, and its width in bytes. */
  lengthOffset: number;
  lengthBytes: 2 | 4;
  littleEndian: boolean;
  isSequence: boolean;
}

export interface Seed {
  name: string;
  bytes: Uint8Array;
  elements: ElementSite[];
}

const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);

/** Maps a valid seed's element headers (meta group little endian; data set per its transfer syntax). */
export function loadSeed(name: string, bytes: Uint8Array): Seed {
  const elements: ElementSite[] = [];
  let ds: DicomParserNs.DataSet;
  // A Buffer: dicom-parser inflates a deflated data set with Buffer methods.
  const input = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  try {
    ds = dicomParser.parseDicom(input, { untilTag: 'x7fe00010' });
  } catch {
    // No meta (headerless seed): try as implicit little endian, the way the decoder does.
    ds = dicomParser.parseDicom(input, { TransferSyntaxUID: '1.2.840.10008.1.2' });
  }
  const ts = ds.string('x00020010') ?? '1.2.840.10008.1.2';
  const bigEndian = ts === '1.2.840.10008.1.2.2';
  const implicit = ts === '1.2.840.10008.1.2';
  const walk = (set: DicomParserNs.DataSet): void => {
    for (const [tag, el] of Object.entries(set.elements)) {
      const meta = tag.startsWith('x0002');
      const explicit = meta || !implicit;
      const vr = el.vr;
      const long = !explicit || (vr !== undefined && LONG_VRS.has(vr));
      const headerLen = explicit ? (long ? 12 : 8) : 8;
      const headerOffset = el.dataOffset - headerLen;
      if (headerOffset < 0 || el.dataOffset > bytes.length) continue;
      elements.push({
        tag,
        headerOffset,
        dataOffset: el.dataOffset,
        length: el.length,
        vrOffset: explicit ? headerOffset + 4 : null,
        lengthOffset: el.dataOffset - (long ? 4 : 2),
        lengthBytes: long ? 4 : 2,
        littleEndian: meta || !bigEndian,
        isSequence: vr === 'SQ' || el.items !== undefined,
      });
      for (const item of el.items ?? []) if (item.dataSet) walk(item.dataSet);
    }
  };
  walk(ds);
  // Deflated data sets are compressed after the meta group: only the meta elements map to file bytes.
  const sites = ts === '1.2.840.10008.1.2.1.99' ? elements.filter((e) => e.tag.startsWith('x0002')) : elements;
  return { name, bytes, elements: sites.sort((a, b) => a.headerOffset - b.headerOffset) };
}

export const MUTATIONS = [
  'bitflip',
  'truncate',
  'bogus-length',
  'huge-length',
  'undefined-length',
  'bad-vr',
  'bad-transfer-syntax',
  'pixel-length-mismatch',
  'geometry',
  'sequence-length',
  'splice',
  'zero-run',
] as const;
export type Mutation = (typeof MUTATIONS)[number];

const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rng, n: number): number => Math.floor(r() * n);

function writeLength(buf: Uint8Array, site: ElementSite, value: number): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (site.lengthOffset + site.lengthBytes > buf.length) return;
  if (site.lengthBytes === 2) dv.setUint16(site.lengthOffset, value & 0xffff, site.littleEndian);
  else dv.setUint32(site.lengthOffset, value >>> 0, site.littleEndian);
}

function writeUS(buf: Uint8Array, site: ElementSite, value: number): void {
  if (site.dataOffset + 2 > buf.length || site.length < 2) return;
  new DataView(buf.buffer, buf.byteOffset, buf.byteLength).setUint16(site.dataOffset, value & 0xffff, site.littleEndian);
}

/** Replaces the bytes of an element's value with `text` (padded/truncated to the same length). */
function writeText(buf: Uint8Array, site: ElementSite, text: string): void {
  for (let i = 0; i < site.length && site.dataOffset + i < buf.length; i++) buf[site.dataOffset + i] = i < text.length ? text.charCodeAt(i) : 0;
}

const TRANSFER_SYNTAXES = [
  '1.2.840.10008.1.2',
  '1.2.840.10008.1.2.1',
  '1.2.840.10008.1.2.2',
  '1.2.840.10008.1.2.1.99',
  '1.2.840.10008.1.2.5',
  '1.2.840.10008.1.2.4.50',
  '1.2.840.10008.1.2.4.51',
  '1.2.840.10008.1.2.4.57',
  '1.2.840.10008.1.2.4.70',
  '1.2.840.10008.1.2.4.80',
  '1.2.840.10008.1.2.4.81',
  '1.2.840.10008.1.2.4.90',
  '1.2.840.10008.1.2.4.91',
  '1.2.840.10008.1.2.4.201',
  '1.2.840.10008.1.2.4.100', // MPEG2: not an image codec the agent has
  '1.2.3.4.5.6.7.8.9',
  '',
  'garbage\u0000\u00ff',
];

const HUGE = [0xffffffff, 0xfffffff0, 0x7fffffff, 0x80000000, 0x10000000, 0x00ffffff, 0xfffffffe];

/** Applies one mutation in place (some return a new buffer: truncate, splice). */
export function mutateOnce(seed: Seed, buf: Uint8Array, kind: Mutation, r: Rng): Uint8Array {
  const els = seed.elements;
  const el = (filter?: (e: ElementSite) => boolean): ElementSite | undefined => {
    const xs = filter ? els.filter(filter) : els;
    return xs.length > 0 ? pick(r, xs) : undefined;
  };
  switch (kind) {
    case 'bitflip': {
      const n = 1 + int(r, 16);
      for (let i = 0; i < n; i++) {
        // Bias to the header (first 2 KiB) where the structure is.
        const at = r() < 0.6 ? int(r, Math.min(buf.length, 2048)) : int(r, buf.length);
        buf[at]! ^= 1 << int(r, 8);
      }
      return buf;
    }
    case 'truncate':
      return buf.slice(0, int(r, buf.length));
    case 'bogus-length': {
      const s = el();
      if (s) writeLength(buf, s, s.lengthBytes === 2 ? int(r, 0x10000) : int(r, buf.length * 4));
      return buf;
    }
    case 'huge-length': {
      const s = el((e) => e.lengthBytes === 4) ?? el();
      if (s) writeLength(buf, s, pick(r, HUGE));
      return buf;
    }
    case 'undefined-length': {
      const s = el((e) => e.lengthBytes === 4) ?? el();
      if (s) writeLength(buf, s, 0xffffffff);
      return buf;
    }
    case 'bad-vr': {
      const s = el((e) => e.vrOffset !== null);
      if (s && s.vrOffset !== null) {
        const choices = ['XX', '\u0000\u0000', 'SQ', 'OB', 'UN', 'US', 'FD', 'AT', 'ob', String.fromCharCode(int(r, 256), int(r, 256))];
        const vr = pick(r, choices);
        buf[s.vrOffset] = vr.charCodeAt(0) & 0xff;
        buf[s.vrOffset + 1] = vr.charCodeAt(1) & 0xff;
      }
      return buf;
    }
    case 'bad-transfer-syntax': {
      const s = els.find((e) => e.tag === 'x00020010');
      if (s) writeText(buf, s, pick(r, TRANSFER_SYNTAXES));
      return buf;
    }
    case 'pixel-length-mismatch': {
      const s = els.find((e) => e.tag === 'x7fe00010');
      if (s) {
        const choice = int(r, 4);
        if (choice === 0) writeLength(buf, s, Math.max(0, s.length - 1 - int(r, s.length)));
        else if (choice === 1) writeLength(buf, s, s.length + 1 + int(r, 1 << 20));
        else if (choice === 2) return buf.slice(0, s.dataOffset + int(r, Math.max(1, buf.length - s.dataOffset)));
        else writeLength(buf, s, pick(r, HUGE));
      }
      return buf;
    }
    case 'geometry': {
      // Rows, Columns, Bits Allocated, Bits Stored, High Bit, Samples per Pixel, Pixel Representation,
      // Planar Configuration; Number of Frames is text (IS).
      const s = el((e) => ['x00280010', 'x00280011', 'x00280100', 'x00280101', 'x00280102', 'x00280002', 'x00280103', 'x00280006'].includes(e.tag));
      if (s) writeUS(buf, s, pick(r, [0, 1, 3, 7, 8, 12, 16, 17, 24, 32, 33, 64, 255, 4096, 32768, 65535]));
      const frames = els.find((e) => e.tag === 'x00280008');
      if (frames && r() < 0.5) writeText(buf, frames, pick(r, ['0', '-1', '99999', '1e9', 'x', '2']));
      return buf;
    }
    case 'sequence-length': {
      const s = el((e) => e.isSequence) ?? el((e) => e.lengthBytes === 4);
      if (s) writeLength(buf, s, pick(r, [...HUGE, int(r, 1 << 16)]));
      return buf;
    }
    case 'splice': {
      // Duplicate or drop a random chunk: everything after it shifts.
      const a = int(r, buf.length);
      const len = 1 + int(r, Math.min(512, buf.length - a));
      if (r() < 0.5) {
        const out = new Uint8Array(buf.length - len);
        out.set(buf.subarray(0, a), 0);
        out.set(buf.subarray(a + len), a);
        return out;
      }
      const out = new Uint8Array(buf.length + len);
      out.set(buf.subarray(0, a + len), 0);
      out.set(buf.subarray(a), a + len);
      return out;
    }
    case 'zero-run': {
      const a = int(r, buf.length);
      buf.fill(r() < 0.5 ? 0 : 0xff, a, Math.min(buf.length, a + 1 + int(r, 4096)));
      return buf;
    }
  }
}

/** One fuzz case: 1-3 mutations of a copy of the seed. */
export function mutate(seed: Seed, r: Rng): { bytes: Uint8Array; mutations: Mutation[] } {
  let buf: Uint8Array = seed.bytes.slice();
  const mutations: Mutation[] = [];
  const n = 1 + (r() < 0.3 ? 1 + int(r, 2) : 0);
  for (let i = 0; i < n; i++) {
    const kind = pick(r, MUTATIONS);
    mutations.push(kind);
    buf = mutateOnce(seed, buf, kind, r);
    if (buf.length === 0) break;
  }
  return { bytes: buf, mutations };
}
