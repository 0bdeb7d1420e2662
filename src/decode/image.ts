/**
 * PNG and JPEG captures via sharp (libvips): 8- or 16-bit, grey or colour; alpha is dropped, EXIF
 * orientation applied, palette/CMYK converted to sRGB. Values are scaled to [0, 1] by the sample depth.
 */
import sharp, { type Metadata, type OutputInfo } from 'sharp';
import { DecodeError, DecodedCapture } from './types.js';

function imageError(kind: 'png' | 'jpeg', e: unknown): DecodeError {
  const msg = e instanceof Error ? e.message : String(e);
  const truncated = /premature|truncat|unexpected end|end of (file|stream|data)|not enough|short read/i.test(msg);
  return new DecodeError(truncated ? 'truncated' : 'corrupt', `${kind.toUpperCase()} cannot be decoded: ${msg}`);
}

export async function decodeRasterImage(bytes: Uint8Array, kind: 'png' | 'jpeg'): Promise<DecodedCapture> {
  let meta: Metadata;
  try {
    // failOn 'truncated' turns a cut-off file into an error instead of a half-grey image.
    meta = await sharp(bytes, { failOn: 'truncated' }).metadata();
  } catch (e) {
    throw imageError(kind, e);
  }
  const sixteen = meta.depth === 'ushort' || (meta.bitsPerSample ?? 8) > 8;
  const grey = meta.space === 'b-w' || meta.space === 'grey16' || (meta.channels ?? 3) <= 2;
  let out: { data: Buffer; info: OutputInfo };
  try {
    let pipe = sharp(bytes, { failOn: 'truncated' }).rotate().removeAlpha();
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
