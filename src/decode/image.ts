/**
 * PNG and JPEG captures via sharp (libvips): 8- or 16-bit, grey or colour; alpha is dropped, EXIF
 * orientation applied, palette/CMYK converted to sRGB. Values are scaled to [0, 1] by the sample depth.
 */
import sharp, { type Metadata, type OutputInfo } from 'sharp';
import { DecodeError, DecodedCapture } from './types.js';

/**
 * Largest PNG/JPEG accepted, in pixels (8192 x 8192; ~0.8 GB of float frame for RGB). The header decides
 * how much the decoder allocates, not the file size: a fuzzer case, a 5 KB JPEG whose SOF claims
 * 30000 x 8200, decoded "ok" (libjpeg fills the missing scan data with grey) into 246 megapixels,
 * 2.75 GiB as floats. sharp's own limit (0x3FFF squared) lets that through.
 */
export const MAX_RASTER_PIXELS = 8192 * 8192;

/**
 * libvips keeps one error buffer per process, and libjpeg writes its warnings there even when a decode
 * succeeds; with the pool decoding files at once in several threads, a failing decode's message can carry
 * another file's lines (the fuzz e2e run saw a damaged PNG quarantined as 'truncated' with a JPEG's
 * "premature end of data segment"). Lines of the other format's loader are not this file's: dropped.
 */
function ownLines(kind: 'png' | 'jpeg', msg: string): string[] {
  const foreign = kind === 'png' ? /^(VipsJpeg|jpegload|VipsForeignLoadJpeg)/ : /^(vipspng|pngload|VipsForeignLoadPng|spng)/;
  const kept: string[] = [];
  for (const raw of msg.split('\n')) {
    const line = raw.trim();
    // sharp prefixes the buffer with its own words on the first line ("Input buffer has corrupt header: ...").
    const prefixed = /^(Input [^:]*:)\s*(.*)$/.exec(line);
    if (prefixed && foreign.test(prefixed[2]!)) kept.push(prefixed[1]!);
    else if (line !== '' && !foreign.test(line)) kept.push(line);
  }
  return kept;
}

function imageError(kind: 'png' | 'jpeg', e: unknown): DecodeError {
  const lines = ownLines(kind, e instanceof Error ? e.message : String(e));
  const msg = lines.join(' ') || 'the decoder gave no detail';
  if (/exceeds pixel limit/i.test(msg)) return new DecodeError('too-large', `${kind.toUpperCase()} is over the ${MAX_RASTER_PIXELS}-pixel limit: ${msg}`);
  // libjpeg's warnings ("Corrupt JPEG data: premature end of data segment", ...) never fail a decode by
  // themselves and may be another JPEG's (same buffer): the class comes from the other lines.
  const fatal = lines.filter((l) => !/Corrupt JPEG data:/i.test(l)).join(' ');
  const truncated = /premature|truncat|unexpected end|end of (file|stream|data)|not enough|short read/i.test(fatal);
  return new DecodeError(truncated ? 'truncated' : 'corrupt', `${kind.toUpperCase()} cannot be decoded: ${msg}`);
}

export async function decodeRasterImage(bytes: Uint8Array, kind: 'png' | 'jpeg'): Promise<DecodedCapture> {
  let meta: Metadata;
  try {
    // failOn 'truncated' turns a cut-off file into an error instead of a half-grey image.
    meta = await sharp(bytes, { failOn: 'truncated', limitInputPixels: false }).metadata();
  } catch (e) {
    throw imageError(kind, e);
  }
  const declared = (meta.width ?? 0) * (meta.height ?? 0);
  if (declared > MAX_RASTER_PIXELS) {
    throw new DecodeError('too-large', `${kind.toUpperCase()} declares ${meta.width}x${meta.height} pixels, over the ${MAX_RASTER_PIXELS}-pixel limit`);
  }
  const sixteen = meta.depth === 'ushort' || (meta.bitsPerSample ?? 8) > 8;
  const grey = meta.space === 'b-w' || meta.space === 'grey16' || (meta.channels ?? 3) <= 2;
  let out: { data: Buffer; info: OutputInfo };
  try {
    let pipe = sharp(bytes, { failOn: 'truncated', limitInputPixels: MAX_RASTER_PIXELS }).rotate().removeAlpha();
    pipe = grey ? pipe.toColourspace(sixteen ? 'grey16' : 'b-w') : pipe.toColourspace(sixteen ? 'rgb16' : 'srgb');
    out = await pipe.raw({ depth: sixteen ? 'ushort' : 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw imageError(kind, e);
  }
  const { width, height, channels } = out.info;
  if (channels !== 1 && channels !== 3) throw new DecodeError('corrupt', `${kind} decoded to ${channels} channels`);
  const n = width * height * channels;
  const data = new Float32Array(n);
  let min = Infinity;
  let max = -Infinity;
  if (sixteen) {
    const src = new Uint16Array(out.data.buffer, out.data.byteOffset, n);
    for (let i = 0; i < n; i++) {
      const v = src[i]!;
      if (v < min) min = v;
      if (v > max) max = v;
      data[i] = v / 65535;
    }
  } else {
    const src = out.data;
    for (let i = 0; i < n; i++) {
      const v = src[i]!;
      if (v < min) min = v;
      if (v > max) max = v;
      data[i] = v / 255;
    }
  }
  if (min === max) throw new DecodeError('constant-image', `${kind} image is constant (every sample is ${min})`);
  return {
    kind,
    meta: {
      modality: 'OT',
      rows: height,
      columns: width,
      numberOfFrames: 1,
      photometric: channels === 1 ? 'MONOCHROME2' : 'RGB',
      bitsStored: sixteen ? 16 : 8,
    },
    frames: [{ index: 0, width, height, channels, data }],
  };
}
