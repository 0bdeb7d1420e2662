import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ImageFrame } from '../../src/decode/types.js';
import type { Manifest, ModelInputSpec } from '../../src/models/types.js';
import { PreprocessError, axisWeights, batchFrames, preprocess, toBatch } from '../../src/preprocess/index.js';
import { BUNDLE_DIR, FIXTURES, decodeGreyDicom, decodePng16, readF32, rot90 } from '../models/helpers.js';

function spec(over: Partial<ModelInputSpec> = {}): ModelInputSpec {
  return {
    name: 'input',
    layout: 'NCHW',
    shape: [-1, 1, 8, 8],
    dtype: 'float32',
    channels: 1,
    normalisation: { mean: [0], std: [1] },
    resize: 'stretch',
    ...over,
  };
}

function frameOf(width: number, height: number, channels: 1 | 3, fn: (x: number, y: number, c: number) => number): ImageFrame {
  const data = new Float32Array(width * height * channels);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) for (let c = 0; c < channels; c++) data[(y * width + x) * channels + c] = fn(x, y, c);
  return { index: 0, width, height, channels, data };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

interface ParityCase {
  name: string;
  mean: number;
  std: number;
  frame: { path: string; shape: [number, number] };
  expected: { path: string; shape: [number, number] };
}

describe('TS preprocessing equals the Python training preprocessing (models/training/prep.py)', () => {
  const parityDir = path.join(FIXTURES, 'parity');
  const cases = (JSON.parse(readFileSync(path.join(parityDir, 'cases.json'), 'utf8')) as { cases: ParityCase[] }).cases;

  it('has real-image parity cases covering downscale with fractional weights and upscale', () => {
    expect(cases.length).toBeGreaterThanOrEqual(4);
  });

  for (const c of cases) {
    it(`${c.name}: max |TS - Python| <= 1e-4`, () => {
      const [h, w] = c.frame.shape;
      const [oh, ow] = c.expected.shape;
      const frame: ImageFrame = { index: 0, width: w, height: h, channels: 1, data: readF32(path.join(parityDir, c.frame.path)) };
      const out = preprocess(frame, spec({ shape: [1, 1, oh, ow], normalisation: { mean: [c.mean], std: [c.std] } }));
      expect(maxAbsDiff(out, readF32(path.join(parityDir, c.expected.path)))).toBeLessThanOrEqual(1e-4);
    });
  }

  it('the shipped bundle golden inputs are reproduced from their decoded frames', () => {
    const manifest = JSON.parse(readFileSync(path.join(BUNDLE_DIR, 'manifest.json'), 'utf8')) as Manifest;
    const golden = manifest.golden as { name: string; frame: { path: string; shape: [number, number] }; input: { path: string } }[];
    expect(golden.length).toBeGreaterThan(0);
    for (const g of golden) {
      const [h, w] = g.frame.shape;
      const frame: ImageFrame = { index: 0, width: w, height: h, channels: 1, data: readF32(path.join(BUNDLE_DIR, g.frame.path)) };
      expect(maxAbsDiff(preprocess(frame, manifest.input), readF32(path.join(BUNDLE_DIR, g.input.path)))).toBeLessThanOrEqual(1e-4);
    }
  });

  it('a real DICOM decoded in TS preprocesses to the Python golden tensor', () => {
    const manifest = JSON.parse(readFileSync(path.join(BUNDLE_DIR, 'manifest.json'), 'utf8')) as Manifest;
    const file = path.join(FIXTURES, 'pydicom-CT_small.dcm');
    expect(existsSync(file)).toBe(true);
    const golden = (manifest.golden as { name: string; input: { path: string } }[]).find((g) => g.name === 'pydicom-CT_small');
    expect(golden).toBeDefined();
    const out = preprocess(decodeGreyDicom(file), manifest.input);
    expect(maxAbsDiff(out, readF32(path.join(BUNDLE_DIR, (golden as { input: { path: string } }).input.path)))).toBeLessThanOrEqual(1e-4);
  });
});

describe('preprocess behaviour', () => {
  it('area-averages on downscale: a 4x4 checker becomes flat grey at 2x2', () => {
    const f = frameOf(4, 4, 1, (x, y) => ((x + y) % 2 === 0 ? 1 : 0));
    const out = preprocess(f, spec({ shape: [1, 1, 2, 2] }));
    expect(Array.from(out)).toEqual([0.5, 0.5, 0.5, 0.5]);
  });

  it('keeps a constant image constant at any size (weights sum to 1), also when upscaling', () => {
    const f = frameOf(37, 23, 1, () => 0.3);
    for (const [h, w] of [[8, 8], [100, 61], [5, 90]] as const) {
      const out = preprocess(f, spec({ shape: [1, 1, h, w] }));
      for (const v of out) expect(v).toBeCloseTo(0.3, 5);
    }
  });

  it('axis weights are normalised and stay inside the source', () => {
    for (const [i, o] of [[512, 224], [181, 128], [64, 128], [7, 3]] as const) {
      const w = axisWeights(i, o);
      for (let k = 0; k < o; k++) {
        let s = 0;
        for (let t = 0; t < (w.count[k] as number); t++) s += w.weights[k * w.maxTaps + t] as number;
        expect(s).toBeCloseTo(1, 6);
        expect(w.start[k]).toBeGreaterThanOrEqual(0);
        expect((w.start[k] as number) + (w.count[k] as number)).toBeLessThanOrEqual(i);
      }
    }
  });

  it('commutes with rotation for a square stretch (rotating the frame rotates the tensor)', () => {
    const f = frameOf(50, 30, 1, (x, y) => Math.sin(x * 0.3) * 0.5 + 0.5 * (y / 30));
    const s = spec({ shape: [1, 1, 16, 16] });
    const base = preprocess(f, s);
    const rotated = preprocess(rot90(f, 1), s);
    const expectRot = preprocess(rot90({ index: 0, width: 16, height: 16, channels: 1, data: base }, 1), spec({ shape: [1, 1, 16, 16] }));
    expect(maxAbsDiff(rotated, expectRot)).toBeLessThan(1e-5);
  });

  it('applies mean/std normalisation', () => {
    const f = frameOf(4, 4, 1, () => 1);
    const out = preprocess(f, spec({ shape: [1, 1, 2, 2], normalisation: { mean: [0.5], std: [0.25] } }));
    expect(Array.from(out)).toEqual([2, 2, 2, 2]);
  });

  it('converts RGB to grey with Rec. 601 luma weights', () => {
    const f = frameOf(2, 2, 3, (_x, _y, c) => [1, 0.5, 0.25][c] as number);
    const out = preprocess(f, spec({ shape: [1, 1, 2, 2] }));
    for (const v of out) expect(v).toBeCloseTo(0.299 + 0.587 * 0.5 + 0.114 * 0.25, 6);
  });

  it('replicates grey to RGB and honours NCHW vs NHWC', () => {
    const f = frameOf(3, 2, 1, (x, y) => (x + 3 * y) / 10);
    const nchw = preprocess(f, spec({ channels: 3, shape: [1, 3, 2, 3], normalisation: { mean: [0, 0, 0], std: [1, 1, 1] } }));
    const nhwc = preprocess(f, spec({ layout: 'NHWC', channels: 3, shape: [1, 2, 3, 3], normalisation: { mean: [0, 0, 0], std: [1, 1, 1] } }));
    for (let p = 0; p < 6; p++) {
      for (let c = 0; c < 3; c++) {
        expect(nchw[c * 6 + p]).toBeCloseTo(p / 10, 6);
        expect(nhwc[p * 3 + c]).toBeCloseTo(p / 10, 6);
      }
    }
  });

  it('letterbox keeps the aspect ratio, centres the image and pads with 0 before normalisation', () => {
    const f = frameOf(20, 10, 1, () => 1); // landscape 2:1
    const out = preprocess(f, spec({ shape: [1, 1, 8, 8], resize: 'letterbox', normalisation: { mean: [0.5], std: [0.5] } }));
    // image occupies rows 2..5 (8x4), rows 0-1 and 6-7 are padding: (0 - 0.5) / 0.5 = -1
    for (let y = 0; y < 8; y++) {
      for (let x = 0; x < 8; x++) expect(out[y * 8 + x]).toBeCloseTo(y >= 2 && y < 6 ? 1 : -1, 6);
    }
  });

  it('crop fills the output and keeps the centre of the frame', () => {
    // left third 0, middle third 1, right third 0 on a 30x10 frame; crop to 10x10 keeps the middle
    const f = frameOf(30, 10, 1, (x) => (x >= 10 && x < 20 ? 1 : 0));
    const out = preprocess(f, spec({ shape: [1, 1, 10, 10], resize: 'crop' }));
    for (const v of out) expect(v).toBeCloseTo(1, 6);
  });

  it('batches tensors and frames with the batch dimension first', () => {
    const s = spec({ shape: [-1, 1, 4, 4] });
    const a = frameOf(8, 8, 1, () => 0.2);
    const b = frameOf(6, 9, 1, () => 0.7);
    const t = toBatch([preprocess(a, s), preprocess(b, s)], s);
    expect(t.shape).toEqual([2, 1, 4, 4]);
    expect(t.data[0]).toBeCloseTo(0.2, 6);
    expect(t.data[16]).toBeCloseTo(0.7, 6);
    const fb = batchFrames([a, b], s);
    expect(fb.shape).toEqual([2, 1, 4, 4]);
    expect(maxAbsDiff(fb.data, t.data)).toBe(0);
    expect(toBatch([], s).shape).toEqual([0, 1, 4, 4]);
  });

  it('rejects malformed frames and specs with a clear error', () => {
    const bad: ImageFrame = { index: 0, width: 4, height: 4, channels: 1, data: new Float32Array(3) };
    expect(() => preprocess(bad, spec())).toThrow(PreprocessError);
    expect(() => preprocess(bad, spec())).toThrow(/3 values, expected 16/);
    const f = frameOf(4, 4, 1, () => 0);
    expect(() => preprocess(f, spec({ shape: [1, 3, 8, 8] }))).toThrow(/3 channels but spec.channels is 1/);
    expect(() => toBatch([new Float32Array(5)], spec())).toThrow(/expected 64/);
  });

  it('classifier-sized input from a real 181x217 MR slice stays finite and in normalised range', async () => {
    const frame = await decodePng16(path.join(FIXTURES, 'colin27-axial.png'));
    expect([frame.width, frame.height]).toEqual([181, 217]);
    const out = preprocess(frame, spec({ shape: [1, 1, 128, 128], normalisation: { mean: [0.5], std: [0.25] } }));
    for (const v of out) {
      expect(Number.isFinite(v)).toBe(true);
      expect(v).toBeGreaterThanOrEqual(-2 - 1e-6);
      expect(v).toBeLessThanOrEqual(2 + 1e-6);
    }
  });
});
