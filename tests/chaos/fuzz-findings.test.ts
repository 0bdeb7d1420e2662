/**
 * Regression tests for what the decode fuzzer found (tests/fixtures/fuzz-seeds/findings/, SOURCES.md):
 * - a bit-flipped HTJ2K file on which the openjph codec never returns: the decode pool stops it at the
 *   per-file limit ('decode-timeout') and the next file decodes on a fresh worker;
 * - a bit-flipped implicit-VR file on which dicom-parser throws a plain string after parsing: a
 *   DecodeError ('corrupt') with the parser's words, not an unclassified error the pipeline would retry;
 * - a 5 KB baseline JPEG whose SOF claims 30000 x 8200 pixels: libjpeg fills the missing scan with grey
 *   and it decoded "ok" into a 246-megapixel frame (704 MiB of samples, 2.75 GiB as floats; sharp's own
 *   pixel limit is higher); now refused from the header as 'too-large' before anything is allocated.
 * - in the end-to-end fuzz run (pool of 2 threads in the agent), a damaged PNG quarantined as 'truncated'
 *   with a JPEG's words: libvips has one error buffer per process, libjpeg writes its warnings there even
 *   on success, and a concurrent failing decode reported them as its own. Lines of the other format's
 *   loader are now dropped, and libjpeg's warnings no longer decide the class (src/decode/image.ts).
 * And what the image fuzzing never produced (its cases all decode in milliseconds): a PNG/JPEG decode
 * stopped at the per-file limit, i.e. the pool terminating a worker thread while libvips is decoding for
 * it, must not take the process down or leave sharp unusable.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { decodeBuffer, DecodeError, defaultDecodeOptions } from '../../src/decode/index.js';
import { MAX_RASTER_PIXELS } from '../../src/decode/image.js';
import { DecodePool } from '../../src/decode/pool.js';

const finding = (name: string): Uint8Array => new Uint8Array(readFileSync(`tests/fixtures/fuzz-seeds/findings/${name}`));
const GOOD = new Uint8Array(readFileSync('tests/fixtures/fuzz-seeds/derived_MR_small_htj2k_lossless.dcm'));

describe('fuzzer findings', () => {
  it('a decode that never returns is stopped at the per-file limit; the pool keeps decoding', async () => {
    const pool = new DecodePool({ size: 1, timeoutMs: 1500 });
    try {
      const err = await pool.decode(finding('htj2k-bitflip-hang.dcm'), defaultDecodeOptions()).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DecodeError);
      expect((err as DecodeError).code).toBe('decode-timeout');
      expect((err as DecodeError).message).toMatch(/did not finish within 1500 ms/);
      expect(pool.timeouts).toBe(1);
      // The same seed, unmutated, decodes on the replacement worker, identical to the main thread.
      const viaPool = await pool.decode(GOOD, defaultDecodeOptions());
      const direct = await decodeBuffer(GOOD, defaultDecodeOptions());
      expect(viaPool.frames[0]!.width).toBe(direct.frames[0]!.width);
      expect(Array.from(viaPool.frames[0]!.data)).toEqual(Array.from(direct.frames[0]!.data));
      expect(viaPool.meta.modality).toBe(direct.meta.modality);
    } finally {
      await pool.close();
    }
  }, 30_000);

  it('a value reader throwing a plain string becomes a coded DecodeError (corrupt), through the pool too', async () => {
    const bytes = finding('implicit-bitflip-string-throw.dcm');
    const err = await decodeBuffer(bytes, defaultDecodeOptions()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DecodeError);
    expect((err as DecodeError).code).toBe('corrupt');
    expect((err as DecodeError).message).toMatch(/attempt to read past end of buffer/);
    const pool = new DecodePool({ size: 1, timeoutMs: 10_000 });
    try {
      const viaPool = await pool.decode(bytes, defaultDecodeOptions()).catch((e: unknown) => e);
      expect(viaPool).toBeInstanceOf(DecodeError);
      expect((viaPool as DecodeError).code).toBe('corrupt');
    } finally {
      await pool.close();
    }
  });

  it('a JPEG whose header claims hundreds of megapixels is refused as too-large from the header, through the pool too', async () => {
    const bytes = finding('jpeg-sof-30000x8200.jpg');
    expect(bytes.length).toBeLessThan(10_000);
    expect(30000 * 8200).toBeGreaterThan(MAX_RASTER_PIXELS);
    const err = await decodeBuffer(bytes, defaultDecodeOptions()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DecodeError);
    expect((err as DecodeError).code).toBe('too-large');
    expect((err as DecodeError).message).toMatch(/JPEG declares 30000x8200 pixels, over the 67108864-pixel limit/);
    const pool = new DecodePool({ size: 1, timeoutMs: 10_000 });
    try {
      const viaPool = await pool.decode(bytes, defaultDecodeOptions()).catch((e: unknown) => e);
      expect(viaPool).toBeInstanceOf(DecodeError);
      expect((viaPool as DecodeError).code).toBe('too-large');
      // The seed it was mutated from (160 x 160, the same scan data) still decodes.
      const seed = await pool.decode(new Uint8Array(readFileSync('tests/fixtures/fuzz-seeds/derived_retina_baseline.jpg')), defaultDecodeOptions());
      expect([seed.frames[0]!.width, seed.frames[0]!.height, seed.frames[0]!.channels]).toEqual([160, 160, 3]);
    } finally {
      await pool.close();
    }
  });

  it('a JPEG decode stopped at the per-file limit (worker terminated while libvips decodes) leaves the process and sharp working', async () => {
    // The baseline seed with its SOF set to 8192 x 8192, exactly the pixel limit: libvips decodes 64
    // megapixels (the scan data runs out and is filled with grey), far more than 50 ms of work anywhere.
    const bytes = new Uint8Array(readFileSync('tests/fixtures/fuzz-seeds/derived_retina_baseline.jpg'));
    let at = 2;
    while (bytes[at + 1] !== 0xc0) at += 2 + ((bytes[at + 2]! << 8) | bytes[at + 3]!);
    bytes.set([0x20, 0x00, 0x20, 0x00], at + 5);
    for (let i = 0; i < 3; i++) {
      // A pool per round, its worker loaded first, so the limit stops the decode itself, not a warm-up.
      const pool = new DecodePool({ size: 1, timeoutMs: 50 });
      try {
        await pool.ready();
        const err = await pool.decode(bytes, defaultDecodeOptions()).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(DecodeError);
        expect((err as DecodeError).code).toBe('decode-timeout');
        expect(pool.timeouts).toBe(1);
      } finally {
        await pool.close();
      }
    }
    // Still here (no native abort), and sharp still decodes in this process.
    const seed = await decodeBuffer(new Uint8Array(readFileSync('tests/fixtures/fuzz-seeds/derived_retina_baseline.jpg')), defaultDecodeOptions());
    expect([seed.frames[0]!.width, seed.frames[0]!.height]).toEqual([160, 160]);
  }, 60_000);

  it("a failing PNG or JPEG decoded alongside JPEGs that warn keeps its own reason and class (libvips' process-wide error buffer)", async () => {
    const png = finding('png-idat-damaged.png'); // IDAT bytes damaged: libpng refuses it
    const badJpeg = finding('jpeg-dht-bogus-counts.jpg'); // Huffman code counts past the code space: corrupt
    const jpeg = finding('jpeg-sof-height200-warning.jpg'); // SOF 200 rows, scan for 160: decodes, with a libjpeg warning
    const warned = await decodeBuffer(jpeg, defaultDecodeOptions());
    expect(warned.frames[0]!.height).toBe(200);
    // Three threads, as the pipeline's pool has at concurrency 3; before the fix about 1 round in 10
    // reported the JPEG's "premature end of data segment" for the PNG, classed 'truncated'.
    const pool = new DecodePool({ size: 3, timeoutMs: 20_000 });
    try {
      for (let round = 0; round < 60; round++) {
        const bad = round % 2 === 0 ? png : badJpeg;
        const [p] = await Promise.allSettled([pool.decode(bad, defaultDecodeOptions()), pool.decode(jpeg, defaultDecodeOptions()), pool.decode(jpeg, defaultDecodeOptions())]);
        expect(p.status).toBe('rejected');
        const err = (p as PromiseRejectedResult).reason as DecodeError;
        expect(err).toBeInstanceOf(DecodeError);
        // A PNG's reason is its own; a JPEG's may still quote the other JPEG's warning (one buffer), but
        // its class is its own.
        if (bad === png) expect(err.message, `round ${round}`).not.toMatch(/jpeg/i);
        expect(err.code, `round ${round}: ${err.message}`).toBe('corrupt');
      }
    } finally {
      await pool.close();
    }
  }, 120_000);
});
