/**
 * DICOM RLE Lossless (1.2.840.10008.1.2.5), PS3.5 Annex G.
 *
 * One frame = 64-byte header (segment count + 15 segment offsets, little-endian UL) then PackBits segments.
 * Segment order: for each sample (R, G, B or the single grey sample), one segment per byte of the sample,
 * most significant byte first. Output: interleaved samples, each as little-endian bytes of
 * bitsAllocated/8 bytes, i.e. the same layout as Explicit VR Little Endian with planar configuration 0.
 */
export class RleError extends Error {}

export function decodeRleFrame(
  frame: Uint8Array,
  rows: number,
  columns: number,
  samplesPerPixel: number,
  bitsAllocated: number,
): Uint8Array {
  if (frame.length < 64) throw new RleError(`RLE frame is ${frame.length} bytes, shorter than its 64-byte header`);
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const segments = view.getUint32(0, true);
  const bytesPerSample = bitsAllocated / 8;
  const expected = samplesPerPixel * bytesPerSample;
  if (!Number.isInteger(bytesPerSample) || segments !== expected || segments > 15) {
    throw new RleError(`RLE header declares ${segments} segments, expected ${expected}`);
  }
  const pixels = rows * columns;
  const stride = expected; // bytes per pixel in the output
  const out = new Uint8Array(pixels * stride);
  for (let s = 0; s < segments; s++) {
    const start = view.getUint32(4 + 4 * s, true);
    const end = s + 1 < segments ? view.getUint32(8 + 4 * s, true) : frame.length;
    if (start < 64 || start > frame.length || end > frame.length || end < start) {
      throw new RleError(`RLE segment ${s} offsets ${start}..${end} fall outside the ${frame.length}-byte frame`);
    }
    const sample = Math.floor(s / bytesPerSample);
    const byteInSample = s % bytesPerSample; // 0 = most significant
    // Position of this byte in the little-endian output sample.
    let o = sample * bytesPerSample + (bytesPerSample - 1 - byteInSample);
    let written = 0;
    let i = start;
    while (i < end && written < pixels) {
      const n = frame[i++]!;
      if (n < 128) {
        // literal run of n + 1 bytes
        let count = n + 1;
        if (i + count > end) count = end - i;
        if (written + count > pixels) count = pixels - written;
        for (let k = 0; k < count; k++) {
          out[o] = frame[i + k]!;
          o += stride;
        }
        i += n + 1;
        written += count;
      } else if (n > 128) {
        // replicate the next byte 257 - n times
        if (i >= end) break;
        const v = frame[i++]!;
        let count = 257 - n;
        if (written + count > pixels) count = pixels - written;
        for (let k = 0; k < count; k++) {
          out[o] = v;
          o += stride;
        }
        written += count;
      }
      // n === 128: no operation
    }
    if (written < pixels) {
      throw new RleError(`RLE segment ${s} decoded ${written} of ${pixels} pixels: truncated or corrupt`);
    }
  }
  return out;
}
