/**
 * Sequential DCT JPEG decoder (ITU T.81 baseline SOF0 and extended SOF1, Huffman coding) for 8- and
 * 12-bit sample precision: DICOM "JPEG Extended (Process 2 & 4)", 1.2.840.10008.1.2.4.51.
 *
 * Why here: the WASM libjpeg-turbo codec is 8-bit only, and the pure-JS pdf.js-derived decoders on npm
 * (e.g. the copy shipped in daikon) mis-level-shift 12-bit data (every pixel +15). This is a small, direct
 * implementation of T.81 Annex F decoding with an exact floating-point IDCT; against libjpeg's integer
 * IDCT (dcmdjpeg) it agrees within +-1 per sample, which is inside the tolerance of a lossy syntax.
 *
 * Output: raw component samples (no colour transform), interleaved, each component upsampled to the
 * full image by replication. Progressive, lossless and arithmetic-coded JPEG are rejected.
 */
export class JpegError extends Error {}

const ZIGZAG = new Int32Array([
  0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
  28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61,
  54, 47, 55, 62, 63,
]);

/** IDCT basis: COS[x * 8 + u] = C(u) * cos((2x + 1) u pi / 16) / 2 */
const COS = new Float64Array(64);
for (let x = 0; x < 8; x++) {
  for (let u = 0; u < 8; u++) {
    COS[x * 8 + u] = ((u === 0 ? Math.SQRT1_2 : 1) * Math.cos(((2 * x + 1) * u * Math.PI) / 16)) / 2;
  }
}

const LOOKAHEAD = 9;

interface Huffman {
  maxcode: Int32Array; // per length 1..16, -1 when no code of that length
  valptr: Int32Array;
  mincode: Int32Array;
  values: Uint8Array;
  /** Codes up to LOOKAHEAD bits: (length << 8) | value, indexed by the next LOOKAHEAD bits; 0 = longer code. */
  fast: Uint16Array;
}

function buildHuffman(counts: Uint8Array, values: Uint8Array): Huffman {
  const maxcode = new Int32Array(18).fill(-1);
  const valptr = new Int32Array(17);
  const mincode = new Int32Array(17);
  let code = 0;
  let k = 0;
  for (let len = 1; len <= 16; len++) {
    const n = counts[len - 1]!;
    if (n > 0) {
      valptr[len] = k;
      mincode[len] = code;
      code += n;
      k += n;
      maxcode[len] = code - 1;
    }
    code <<= 1;
  }
  maxcode[17] = 0x7fffffff; // sentinel
  const fast = new Uint16Array(1 << LOOKAHEAD);
  for (let len = 1; len <= LOOKAHEAD; len++) {
    if (maxcode[len]! < 0) continue;
    for (let c = mincode[len]!; c <= maxcode[len]!; c++) {
      const v = values[valptr[len]! + c - mincode[len]!] ?? 0;
      const shift = LOOKAHEAD - len;
      const base = c << shift;
      for (let k = 0; k < 1 << shift; k++) fast[base + k] = (len << 8) | v;
    }
  }
  return { maxcode, valptr, mincode, values, fast };
}

interface Component {
  id: number;
  h: number;
  v: number;
  tq: number;
  blocksPerLine: number;
  blocksPerColumn: number;
  /** decoded samples, (blocksPerLine*8) x (blocksPerColumn*8) */
  samples: Float32Array;
  pred: number;
  dc?: Huffman;
  ac?: Huffman;
}

export interface JpegDecoded {
  width: number;
  height: number;
  components: number;
  precision: number;
  data: Uint16Array;
}

/** Reads the frame header only (JPEG and JPEG-LS SOFn). Returns undefined when no SOF is found. */
export function peekJpegFrame(data: Uint8Array): { sof: number; precision: number; width: number; height: number } | undefined {
  let p = 2;
  if (data[0] !== 0xff || data[1] !== 0xd8) return undefined;
  while (p + 4 <= data.length) {
    if (data[p] !== 0xff) return undefined;
    const marker = data[p + 1]!;
    if (marker === 0xff) {
      p++;
      continue;
    }
    const len = (data[p + 2]! << 8) | data[p + 3]!;
    if ((marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) || marker === 0xf7) {
      return {
        sof: marker,
        precision: data[p + 4] ?? 0,
        height: ((data[p + 5] ?? 0) << 8) | (data[p + 6] ?? 0),
        width: ((data[p + 7] ?? 0) << 8) | (data[p + 8] ?? 0),
      };
    }
    p += 2 + len;
  }
  return undefined;
}

export interface JpegColourMarkers {
  jfif: boolean;
  /** Adobe APP14 transform flag (0 = none/RGB, 1 = YCbCr, 2 = YCCK), undefined when there is no APP14. */
  adobeTransform?: number;
  componentIds: number[];
  /** Components differ in sampling factors (chroma subsampling: the data is certainly YCbCr). */
  subsampled: boolean;
}

/** The markers libjpeg uses to decide whether a 3-component JPEG is YCbCr or RGB. */
export function jpegColourMarkers(data: Uint8Array): JpegColourMarkers {
  const out: JpegColourMarkers = { jfif: false, componentIds: [], subsampled: false };
  let p = 2;
  while (p + 4 <= data.length && data[p] === 0xff) {
    const marker = data[p + 1]!;
    if (marker === 0xff) {
      p++;
      continue;
    }
    const len = (data[p + 2]! << 8) | data[p + 3]!;
    const body = p + 4;
    if (marker === 0xe0 && data[body] === 0x4a && data[body + 1] === 0x46 && data[body + 2] === 0x49 && data[body + 3] === 0x46) {
      out.jfif = true;
    } else if (marker === 0xee && len >= 14 && data[body] === 0x41 && data[body + 1] === 0x64 && data[body + 2] === 0x6f) {
      out.adobeTransform = data[body + 11];
    } else if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      const nc = data[body + 5] ?? 0;
      const sampling = new Set<number>();
      for (let i = 0; i < nc; i++) {
        out.componentIds.push(data[body + 6 + 3 * i] ?? 0);
        sampling.add(data[body + 7 + 3 * i] ?? 0);
      }
      out.subsampled = sampling.size > 1;
      break;
    } else if (marker === 0xda) {
      break;
    }
    p += 2 + len;
  }
  return out;
}

/**
 * A copy of the stream with an Adobe APP14 (transform = 0) segment after SOI: tells libjpeg the three
 * components are RGB and must not be colour-converted.
 */
export function withAdobeNoTransform(data: Uint8Array): Uint8Array {
  const app14 = [0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00];
  const out = new Uint8Array(data.length + app14.length);
  out.set(data.subarray(0, 2), 0);
  out.set(app14, 2);
  out.set(data.subarray(2), 2 + app14.length);
  return out;
}

export function decodeJpegSequential(data: Uint8Array): JpegDecoded {
  let pos = 0;
  const u16 = (): number => {
    if (pos + 2 > data.length) throw new JpegError('JPEG stream ends inside a marker segment');
    const v = (data[pos]! << 8) | data[pos + 1]!;
    pos += 2;
    return v;
  };
  if (u16() !== 0xffd8) throw new JpegError('not a JPEG stream (no SOI marker)');

  const qt: Int32Array[] = [];
  const dcTables: Huffman[] = [];
  const acTables: Huffman[] = [];
  let restartInterval = 0;
  let precision = 0;
  let width = 0;
  let height = 0;
  let hmax = 1;
  let vmax = 1;
  let mcusX = 0;
  let mcusY = 0;
  const comps: Component[] = [];
  let sawScan = false;

  for (;;) {
    if (pos >= data.length) {
      if (sawScan) break; // missing EOI: accept what was decoded
      throw new JpegError('JPEG stream ends before any scan');
    }
    // find the next marker (skip fill bytes)
    if (data[pos] !== 0xff) {
      pos++;
      continue;
    }
    const marker = data[pos + 1];
    if (marker === undefined) break;
    if (marker === 0xff || marker === 0x00) {
      pos++;
      continue;
    }
    pos += 2;
    if (marker === 0xd9) break; // EOI
    if (marker >= 0xd0 && marker <= 0xd7) continue; // stray RST
    const segStart = pos;
    const len = u16();
    const segEnd = segStart + len;
    if (len < 2 || segEnd > data.length) throw new JpegError(`JPEG marker 0xFF${marker.toString(16)} segment runs past the end`);
    switch (marker) {
      case 0xdb: {
        // DQT
        while (pos < segEnd) {
          const pq = data[pos]! >> 4;
          const tq = data[pos]! & 15;
          pos++;
          const t = new Int32Array(64);
          for (let k = 0; k < 64; k++) {
            if (pq) {
              t[k] = (data[pos]! << 8) | data[pos + 1]!;
              pos += 2;
            } else {
              t[k] = data[pos++]!;
            }
          }
          qt[tq & 3] = t;
        }
        break;
      }
      case 0xc4: {
        // DHT
        while (pos < segEnd) {
          const tc = data[pos]! >> 4;
          const th = data[pos]! & 15;
          pos++;
          const counts = data.subarray(pos, pos + 16);
          pos += 16;
          let total = 0;
          for (let i = 0; i < 16; i++) total += counts[i]!;
          if (pos + total > segEnd) throw new JpegError('JPEG Huffman table runs past its segment');
          const table = buildHuffman(counts, data.slice(pos, pos + total));
          pos += total;
          (tc === 0 ? dcTables : acTables)[th & 3] = table;
        }
        break;
      }
      case 0xdd:
        restartInterval = (data[pos]! << 8) | data[pos + 1]!;
        break;
      case 0xc0:
      case 0xc1: {
        precision = data[pos]!;
        height = (data[pos + 1]! << 8) | data[pos + 2]!;
        width = (data[pos + 3]! << 8) | data[pos + 4]!;
        const nc = data[pos + 5]!;
        if (precision !== 8 && precision !== 12) throw new JpegError(`JPEG sample precision ${precision} is not 8 or 12`);
        if (!width || !height || !nc || nc > 4) throw new JpegError(`JPEG frame ${width}x${height}x${nc} is not decodable`);
        if (width * height * nc > 1 << 28) throw new JpegError(`JPEG frame ${width}x${height} is too large`);
        let p = pos + 6;
        for (let i = 0; i < nc; i++) {
          const hv = data[p + 1]!;
          const h = hv >> 4 || 1;
          const v = hv & 15 || 1;
          comps.push({ id: data[p]!, h, v, tq: data[p + 2]! & 3, blocksPerLine: 0, blocksPerColumn: 0, samples: new Float32Array(0), pred: 0 });
          p += 3;
        }
        hmax = Math.max(...comps.map((c) => c.h));
        vmax = Math.max(...comps.map((c) => c.v));
        mcusX = Math.ceil(width / (8 * hmax));
        mcusY = Math.ceil(height / (8 * vmax));
        for (const c of comps) {
          c.blocksPerLine = mcusX * c.h;
          c.blocksPerColumn = mcusY * c.v;
          c.samples = new Float32Array(c.blocksPerLine * 8 * c.blocksPerColumn * 8);
        }
        break;
      }
      case 0xc2:
      case 0xc3:
      case 0xc5:
      case 0xc6:
      case 0xc7:
      case 0xc9:
      case 0xca:
      case 0xcb:
      case 0xcd:
      case 0xce:
      case 0xcf:
        throw new JpegError(`JPEG process SOF${marker - 0xc0} (progressive, lossless or arithmetic) is not sequential Huffman DCT`);
      case 0xda: {
        if (!comps.length) throw new JpegError('JPEG scan before frame header');
        const ns = data[pos]!;
        const scanComps: Component[] = [];
        for (let i = 0; i < ns; i++) {
          const id = data[pos + 1 + 2 * i]!;
          const tables = data[pos + 2 + 2 * i]!;
          const c = comps.find((x) => x.id === id);
          if (!c) throw new JpegError(`JPEG scan names unknown component ${id}`);
          c.dc = dcTables[tables >> 4];
          c.ac = acTables[tables & 15];
          if (!c.dc || !c.ac) throw new JpegError('JPEG scan uses a Huffman table that was not defined');
          if (!qt[c.tq]) throw new JpegError('JPEG component uses a quantization table that was not defined');
          scanComps.push(c);
        }
        pos = segEnd;
        pos = decodeScan(data, pos, scanComps, qt, restartInterval, mcusX, mcusY, width, height, hmax, vmax);
        sawScan = true;
        continue;
      }
      default:
        break; // APPn, COM, DNL...: skip
    }
    pos = segEnd;
  }

  if (!sawScan) throw new JpegError('JPEG stream has no scan');
  const nc = comps.length;
  const out = new Uint16Array(width * height * nc);
  const maxv = (1 << precision) - 1;
  const shift = 1 << (precision - 1);
  for (let ci = 0; ci < nc; ci++) {
    const c = comps[ci]!;
    const lineW = c.blocksPerLine * 8;
    const sx = c.h / hmax;
    const sy = c.v / vmax;
    for (let y = 0; y < height; y++) {
      const row = ((y * sy) | 0) * lineW;
      let o = y * width * nc + ci;
      for (let x = 0; x < width; x++) {
        let v = Math.round(c.samples[row + ((x * sx) | 0)]! + shift);
        if (v < 0) v = 0;
        else if (v > maxv) v = maxv;
        out[o] = v;
        o += nc;
      }
    }
  }
  return { width, height, components: nc, precision, data: out };
}

function decodeScan(
  data: Uint8Array,
  start: number,
  comps: Component[],
  qt: Int32Array[],
  restartInterval: number,
  mcusX: number,
  mcusY: number,
  width: number,
  height: number,
  hmax: number,
  vmax: number,
): number {
  let pos = start;
  let bitBuf = 0;
  let bitCnt = 0;
  let hitMarker = false;

  const fill = (): void => {
    while (bitCnt <= 24) {
      let byte = 0;
      if (!hitMarker && pos < data.length) {
        byte = data[pos]!;
        if (byte === 0xff) {
          const next = data[pos + 1] ?? 0xd9;
          if (next === 0) {
            pos += 2;
          } else {
            hitMarker = true;
            byte = 0;
          }
        } else {
          pos++;
        }
      }
      bitBuf = ((bitBuf << 8) | byte) >>> 0;
      bitCnt += 8;
    }
  };
  const bits = (n: number): number => {
    if (n === 0) return 0;
    if (bitCnt < n) fill();
    bitCnt -= n;
    return (bitBuf >>> bitCnt) & ((1 << n) - 1);
  };
  const decodeHuff = (t: Huffman): number => {
    if (bitCnt < 16) fill(); // fill leaves at least 25 bits
    const hit = t.fast[(bitBuf >>> (bitCnt - LOOKAHEAD)) & ((1 << LOOKAHEAD) - 1)]!;
    if (hit !== 0) {
      bitCnt -= hit >> 8;
      return hit & 0xff;
    }
    for (let len = LOOKAHEAD + 1; len <= 16; len++) {
      const code = (bitBuf >>> (bitCnt - len)) & ((1 << len) - 1);
      if (code <= t.maxcode[len]!) {
        bitCnt -= len;
        return t.values[t.valptr[len]! + code - t.mincode[len]!] ?? 0;
      }
    }
    throw new JpegError('JPEG Huffman code not found (corrupt data)');
  };
  const extend = (v: number, s: number): number => (v < 1 << (s - 1) ? v - (1 << s) + 1 : v);

  const coef = new Float64Array(64);
  const tmp = new Float64Array(64);
  const decodeBlock = (c: Component, row: number, col: number): void => {
    const q = qt[c.tq]!;
    coef.fill(0);
    const t = decodeHuff(c.dc!);
    const diff = t === 0 ? 0 : extend(bits(t), t);
    c.pred += diff;
    coef[0] = c.pred * q[0]!;
    let anyAc = false;
    for (let k = 1; k < 64; ) {
      const rs = decodeHuff(c.ac!);
      const r = rs >> 4;
      const s = rs & 15;
      if (s === 0) {
        if (r === 15) {
          k += 16;
          continue;
        }
        break;
      }
      k += r;
      if (k > 63) break;
      coef[ZIGZAG[k]!] = extend(bits(s), s) * q[k]!;
      anyAc = true;
      k++;
    }
    const lineW = c.blocksPerLine * 8;
    const base = row * 8 * lineW + col * 8;
    if (!anyAc) {
      // flat block: every sample is DC / 8
      const dc = coef[0] / 8;
      for (let y = 0; y < 8; y++) c.samples.fill(dc, base + y * lineW, base + y * lineW + 8);
      return;
    }
    // separable IDCT: rows then columns
    for (let y = 0; y < 8; y++) {
      const yo = y * 8;
      for (let x = 0; x < 8; x++) {
        const xo = x * 8;
        let s = 0;
        for (let u = 0; u < 8; u++) s += COS[xo + u]! * coef[yo + u]!;
        tmp[yo + x] = s;
      }
    }
    for (let x = 0; x < 8; x++) {
      for (let y = 0; y < 8; y++) {
        const yo = y * 8;
        let s = 0;
        for (let v = 0; v < 8; v++) s += COS[yo + v]! * tmp[v * 8 + x]!;
        c.samples[base + y * lineW + x] = s;
      }
    }
  };

  const single = comps.length === 1;
  const c0 = comps[0]!;
  // Non-interleaved scan: the component's own block grid, cropped to its real size.
  const total = single
    ? Math.ceil(Math.ceil((width * c0.h) / hmax) / 8) * Math.ceil(Math.ceil((height * c0.v) / vmax) / 8)
    : mcusX * mcusY;
  const singleCols = single ? Math.ceil(Math.ceil((width * c0.h) / hmax) / 8) : 0;
  for (const c of comps) c.pred = 0;
  for (let m = 0; m < total; m++) {
    if (restartInterval && m > 0 && m % restartInterval === 0) {
      // byte-align, consume RSTn, reset predictors
      bitCnt = 0;
      bitBuf = 0;
      hitMarker = false;
      while (pos < data.length && data[pos] !== 0xff) pos++;
      if (pos + 1 < data.length && data[pos + 1]! >= 0xd0 && data[pos + 1]! <= 0xd7) pos += 2;
      for (const c of comps) c.pred = 0;
    }
    if (single) {
      decodeBlock(c0, Math.floor(m / singleCols), m % singleCols);
    } else {
      const mr = Math.floor(m / mcusX);
      const mc = m % mcusX;
      for (const c of comps) {
        for (let v = 0; v < c.v; v++) {
          for (let h = 0; h < c.h; h++) decodeBlock(c, mr * c.v + v, mc * c.h + h);
        }
      }
    }
  }
  // Hand back the position of the next marker; unread whole bytes in the buffer are scan data.
  if (!hitMarker) {
    while (pos < data.length && !(data[pos] === 0xff && data[pos + 1] !== 0 && data[pos + 1] !== undefined && !(data[pos + 1]! >= 0xd0 && data[pos + 1]! <= 0xd7))) pos++;
  }
  return pos;
}

/** Image size from a JPEG 2000 / HTJ2K codestream's SIZ segment (raw codestream or JP2 wrapper). */
export function peekJ2kSize(data: Uint8Array): { width: number; height: number } | undefined {
  // find SIZ (FF51), which follows SOC (FF4F) in a raw codestream; in JP2 it sits inside the jp2c box
  const limit = Math.min(data.length - 20, 4096);
  for (let p = 0; p < limit; p++) {
    if (data[p] === 0xff && data[p + 1] === 0x51 && (p < 2 || (data[p - 2] === 0xff && data[p - 1] === 0x4f))) {
      const u32 = (o: number): number => ((data[o]! << 24) | (data[o + 1]! << 16) | (data[o + 2]! << 8) | data[o + 3]!) >>> 0;
      const xsiz = u32(p + 6);
      const ysiz = u32(p + 10);
      const xo = u32(p + 14);
      const yo = u32(p + 18);
      return { width: xsiz - xo, height: ysiz - yo };
    }
  }
  return undefined;
}
