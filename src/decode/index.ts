/**
 * Public API of the decode part: file or bytes -> DecodedCapture (frames ready for preprocessing), and
 * decodeDicomRaw for bit-exact checks of stored values.
 */
import { open, stat } from 'node:fs/promises';
import { openDicom, sniffDicom } from './dicom.js';
import { toImageFrame } from './display.js';
import { decodeRasterImage } from './image.js';
import { CaptureMeta, DecodeError, DecodedCapture, DecodeOptions, ImageFrame, RawFrame } from './types.js';

export * from './types.js';
export { setCodecLogger } from './codecs.js';

export function defaultDecodeOptions(): DecodeOptions {
  return {
    framePolicy: 'middle',
    maxFrames: 16,
    windowByModality: {
      CT: { center: 40, width: 400 },
    },
    preferFileWindow: true,
    maxFileBytes: 512 * 1024 * 1024,
  };
}

const PNG_SIG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

export type SniffedFormat = 'dicom' | 'png' | 'jpeg';

/** Format by content, never by file name. */
export function sniffFormat(bytes: Uint8Array): SniffedFormat | undefined {
  if (bytes.length >= 8 && PNG_SIG.every((b, i) => bytes[i] === b)) return 'png';
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  if (sniffDicom(bytes)) return 'dicom';
  return undefined;
}

/** Indices of the frames a policy selects out of `count`. */
export function selectFrames(count: number, opts: DecodeOptions): number[] {
  if (count <= 1) return [0];
  switch (opts.framePolicy) {
    case 'first':
      return [0];
    case 'middle':
      return [Math.floor(count / 2)];
    case 'all': {
      const n = Math.max(1, Math.min(count, Math.floor(opts.maxFrames)));
      return Array.from({ length: n }, (_, i) => i);
    }
    default:
      return [0];
  }
}

function checkSize(length: number, opts: DecodeOptions): void {
  if (length === 0) throw new DecodeError('empty-file', 'file is empty');
  if (length > opts.maxFileBytes) {
    throw new DecodeError('too-large', `file is ${length} bytes, over the ${opts.maxFileBytes}-byte limit`);
  }
}

function decodeDicom(bytes: Uint8Array, opts: DecodeOptions): DecodedCapture {
  const dcm = openDicom(bytes);
  const frames: ImageFrame[] = [];
  let constant: DecodeError | undefined;
  for (const i of selectFrames(dcm.frameCount, opts)) {
    const raw = dcm.readFrame(i);
    try {
      frames.push(toImageFrame(raw, dcm.display, dcm.meta.modality, opts));
    } catch (e) {
      // Under 'all', a blank frame in a cine is skipped; the capture fails only if every frame is blank.
      if (e instanceof DecodeError && e.code === 'constant-image') constant = e;
      else throw e;
    }
  }
  if (frames.length === 0) throw constant ?? new DecodeError('no-pixel-data', 'no frame decoded');
  return { kind: 'dicom', meta: dcm.meta, frames };
}

export async function decodeBuffer(bytes: Uint8Array, opts: DecodeOptions): Promise<DecodedCapture> {
  checkSize(bytes.length, opts);
  const format = sniffFormat(bytes);
  switch (format) {
    case 'png':
    case 'jpeg':
      return decodeRasterImage(bytes, format);
    case 'dicom':
      try {
        return decodeDicom(bytes, opts);
      } catch (e) {
        // dicom-parser throws plain strings from its value readers (e.g. a declared length past the
        // end of the buffer, read after parsing); outside input never gets to fail as a non-DecodeError.
        if (e instanceof DecodeError) throw e;
        throw new DecodeError('corrupt', `DICOM data set cannot be read: ${e instanceof Error ? e.message : String(e)}`);
      }
    default:
      throw new DecodeError('unsupported-format', 'not DICOM, PNG or JPEG (unrecognised content)');
  }
}

export async function decodeFile(path: string, opts: DecodeOptions): Promise<DecodedCapture> {
  // Check the size before reading: a huge file is refused without loading it.
  const st = await stat(path);
  if (!st.isFile()) throw new DecodeError('unsupported-format', `${path} is not a regular file`);
  checkSize(st.size, opts);
  const fh = await open(path, 'r');
  let bytes: Buffer;
  try {
    bytes = await fh.readFile();
  } finally {
    await fh.close();
  }
  return decodeBuffer(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length), opts);
}

/** Stored values exactly (after decompression, sign handling and planar interleave; before any LUT). */
export function decodeDicomRaw(bytes: Uint8Array): { meta: CaptureMeta; frameCount: number; rawFrame(i: number): RawFrame } {
  const dcm = openDicom(bytes);
  return { meta: dcm.meta, frameCount: dcm.frameCount, rawFrame: (i: number) => dcm.readFrame(i) };
}
