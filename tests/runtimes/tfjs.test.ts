/**
 * The tfjs runtime on the shipped bundle's TF.js graph model (models/orientation-qa/tfjs/, converted from
 * model.onnx by models/training/to_tfjs.py): parity with onnxruntime-node on the same real images
 * (decoded by src/decode, preprocessed by src/preprocess, all four rotations in one batch), the golden
 * check through tfjs, the backend chain (tfjs-node -> wasm -> cpu) with the reason for each fallback, and
 * the backend reported as the classifier's model.provider.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeFile, defaultDecodeOptions } from '../../src/decode/index.js';
import type { ImageFrame } from '../../src/decode/types.js';
import { loadBundle, selectModelFile } from '../../src/models/bundle.js';
import { assertGolden, runGolden } from '../../src/models/golden.js';
import type { LoadedBundle } from '../../src/models/types.js';
import { BundleClassifier } from '../../src/pipeline/classifier.js';
import { preprocess, toBatch } from '../../src/preprocess/index.js';
import { OnnxRuntime } from '../../src/runtimes/onnx.js';
import { defaultRegistry } from '../../src/runtimes/registry.js';
import { TfjsRuntime, backendPlan } from '../../src/runtimes/tfjs.js';
import type { InferenceSessionHandle, RuntimeLoadOptions } from '../../src/runtimes/types.js';
import { BUNDLE_DIR, FIXTURES, ROOT, argmax, readF32, rot90, softmax } from '../models/helpers.js';

const DEV_PUBLIC = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem');
const opts = (providers: string[]): RuntimeLoadOptions => ({ providers, intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' });

/** Whether @tensorflow/tfjs-node installed on this machine (its install downloads libtensorflow; here it cannot). */
function tfjsNodeInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve('@tensorflow/tfjs-node');
    return true;
  } catch {
    return false;
  }
}

/** Probability tolerance for onnx vs tfjs (both fp32; measured differences are ~1e-6). */
const PROB_TOL = 1e-3;

// Real images: the bundle's held-out fixtures and other real scans from tests/fixtures (SOURCES.md there).
const IMAGES = [
  path.join(FIXTURES, 'colin27-axial.png'),
  path.join(FIXTURES, 'colin27-sagittal.png'),
  path.join(FIXTURES, 'pydicom-CT_small.dcm'),
  path.join(ROOT, 'tests', 'fixtures', 'images', 'itk_BrainT1Slice.png'),
  path.join(ROOT, 'tests', 'fixtures', 'images', 'derived_CT_small_grey16.png'),
];

let bundle: LoadedBundle;
let onnx: InferenceSessionHandle;
let tfjs: InferenceSessionHandle;

beforeAll(async () => {
  bundle = await loadBundle(BUNDLE_DIR);
  const io = { inputName: bundle.manifest.input.name, outputName: bundle.manifest.output.name };
  onnx = await new OnnxRuntime().load(path.join(bundle.dir, selectModelFile(bundle, 'onnx', 'fp32').path), opts(['cpu']), io);
  tfjs = await new TfjsRuntime().load(path.join(bundle.dir, selectModelFile(bundle, 'tfjs').path), opts(['wasm']), io);
});

afterAll(async () => {
  await onnx?.dispose();
  await tfjs?.dispose();
});

describe('tfjs backend plan', () => {
  it('tries requested TF.js backends first, then tfjs-node -> wasm -> cpu; ORT-only names are reported, cpu stays last', () => {
    expect(backendPlan([])).toEqual({ plan: ['tfjs-node', 'wasm', 'cpu'], unsupported: [] });
    expect(backendPlan(['wasm'])).toEqual({ plan: ['wasm', 'tfjs-node', 'cpu'], unsupported: [] });
    expect(backendPlan(['cpu'])).toEqual({ plan: ['tfjs-node', 'wasm', 'cpu'], unsupported: [] });
    expect(backendPlan(['cuda', 'tensorrt', 'xnnpack', 'cpu'])).toEqual({ plan: ['tfjs-node-gpu', 'wasm', 'tfjs-node', 'cpu'], unsupported: ['tensorrt'] });
    expect(backendPlan(['tfjs-cpu'])).toEqual({ plan: ['cpu', 'tfjs-node', 'wasm'], unsupported: [] });
  });
});

describe('TfjsRuntime', () => {
  it('is registered as type tfjs and probes available with the tfjs version', async () => {
    expect(defaultRegistry().types()).toContain('tfjs');
    const p = await defaultRegistry().probe('tfjs');
    expect(p).toMatchObject({ type: 'tfjs', available: true, version: '4.22.0' });
  });

  it('reports which backends load here: wasm with SIMD, cpu, and tfjs-node with its reason when it did not install', async () => {
    const reports = await new TfjsRuntime().backends();
    const by = Object.fromEntries(reports.map((r) => [r.name, r]));
    expect(by.wasm).toMatchObject({ available: true });
    expect(by.wasm?.detail).toMatch(/^SIMD (yes|no), threads no/);
    expect(by.cpu?.available).toBe(true);
    if (tfjsNodeInstalled()) expect(by['tfjs-node']?.available).toBe(true);
    else expect(by['tfjs-node']).toMatchObject({ available: false, reason: expect.stringMatching(/@tensorflow\/tfjs-node is not installed.*libtensorflow/) as unknown });
  });

  it('with the default order, requesting tfjs-node falls back to wasm here and says why (the provider reported is the backend in use)', async () => {
    const s = await new TfjsRuntime().load(path.join(bundle.dir, 'tfjs/model.json'), opts(['tfjs-node', 'wasm', 'cpu']));
    try {
      expect(s.runtime).toBe('tfjs');
      if (tfjsNodeInstalled()) {
        expect(s.provider).toBe('tfjs-node');
      } else {
        expect(s.provider).toBe('wasm');
        expect(s.attempts.map((a) => [a.provider, a.ok])).toEqual([
          ['tfjs-node', false],
          ['wasm', true],
        ]);
        expect(s.attempts[0]?.reason).toMatch(/not installed/);
      }
      expect(s.inputName).toBe('input');
      expect(s.outputName).toBe('logits');
    } finally {
      await s.dispose();
    }
  });

  it('refuses a model.json whose weights point outside its folder', async () => {
    const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const dir = await mkdtemp(path.join(tmpdir(), 'tfjs-escape-'));
    try {
      const file = path.join(dir, 'model.json');
      await writeFile(file, JSON.stringify({ format: 'graph-model', modelTopology: { node: [] }, weightsManifest: [{ paths: ['../secret.bin'], weights: [] }] }));
      await expect(new TfjsRuntime().load(file, opts(['wasm']))).rejects.toThrow(/weight path '\.\.\/secret\.bin' must be a relative path inside/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('parity: the shipped model through onnx and tfjs (wasm) on the same real images', () => {
  it('the TF.js files were converted from the bundle\'s current model.onnx (to_tfjs.py re-run after export.py)', async () => {
    const { readFile } = await import('node:fs/promises');
    const json = JSON.parse(await readFile(path.join(bundle.dir, selectModelFile(bundle, 'tfjs').path), 'utf8')) as {
      userDefinedMetadata?: { source?: { path: string; sha256: string } };
    };
    const onnxFile = selectModelFile(bundle, 'onnx', 'fp32');
    expect(json.userDefinedMetadata?.source).toEqual({ path: onnxFile.path, sha256: onnxFile.sha256 });
  });

  it('golden inputs: same logits within the golden tolerance, and the golden check passes through tfjs', async () => {
    expect(tfjs.provider).toBe('wasm');
    const file = selectModelFile(bundle, 'tfjs');
    expect(file.path).toBe('tfjs/model.json');
    const results = await runGolden(bundle, file, tfjs);
    expect(results.length).toBe((bundle.manifest.golden ?? []).length);
    expect(results.length).toBeGreaterThanOrEqual(3);
    expect(() => assertGolden(bundle, file, results)).not.toThrow();
    for (const r of results) expect(r.maxAbsDiff).toBeLessThan(1e-4);

    const golden = bundle.manifest.golden as { name: string; input: { path: string; shape: number[] } }[];
    for (const g of golden) {
      const x = readF32(path.join(bundle.dir, g.input.path));
      const [a, b] = [await onnx.run(x, g.input.shape), await tfjs.run(x, g.input.shape)];
      const [pa, pb] = [softmax(a.data), softmax(b.data)];
      expect(argmax(pb)).toBe(argmax(pa));
      for (let i = 0; i < pa.length; i++) expect(Math.abs(pb[i]! - pa[i]!)).toBeLessThan(PROB_TOL);
    }
  });

  for (const file of IMAGES) {
    it(`${path.relative(ROOT, file)}: same label and probabilities (1e-3) in all four rotations`, async () => {
      const capture = await decodeFile(file, defaultDecodeOptions());
      const frame = capture.frames[0] as ImageFrame;
      const spec = bundle.manifest.input;
      const batch = toBatch([0, 1, 2, 3].map((k) => preprocess(rot90(frame, k), spec)), spec);
      const a = await onnx.run(batch.data, batch.shape);
      const b = await tfjs.run(batch.data, batch.shape);
      expect(b.shape).toEqual(a.shape);
      expect(a.shape).toEqual([4, 4]);
      for (let k = 0; k < 4; k++) {
        const pa = softmax(a.data.subarray(4 * k, 4 * k + 4));
        const pb = softmax(b.data.subarray(4 * k, 4 * k + 4));
        expect(bundle.manifest.labels[argmax(pb)]).toBe(bundle.manifest.labels[argmax(pa)]);
        for (let i = 0; i < 4; i++) expect(Math.abs(pb[i]! - pa[i]!)).toBeLessThan(PROB_TOL);
      }
    });
  }

  it('the pure-JS cpu backend (the last resort) gives the same output too', async () => {
    const s = await new TfjsRuntime().load(path.join(bundle.dir, 'tfjs/model.json'), opts(['tfjs-cpu']));
    try {
      expect(s.provider).toBe('cpu');
      const g = (bundle.manifest.golden as { input: { path: string; shape: number[] } }[])[0]!;
      const x = readF32(path.join(bundle.dir, g.input.path));
      const [a, b] = [await onnx.run(x, g.input.shape), await s.run(x, g.input.shape)];
      for (let i = 0; i < a.data.length; i++) expect(Math.abs(b.data[i]! - a.data[i]!)).toBeLessThan(1e-4);
      // the wasm session keeps its own backend after another session switched the process's active one
      const c = await tfjs.run(x, g.input.shape);
      expect(tfjs.provider).toBe('wasm');
      for (let i = 0; i < a.data.length; i++) expect(Math.abs(c.data[i]! - a.data[i]!)).toBeLessThan(1e-4);
    } finally {
      await s.dispose();
    }
  });
});

describe('BundleClassifier with model.runtime tfjs', () => {
  const load = (isolation?: 'process' | 'thread') =>
    BundleClassifier.load(BUNDLE_DIR, {
      runtime: 'tfjs',
      ...opts(['cpu']),
      warmupRuns: 1,
      trustedKeys: [DEV_PUBLIC],
      allowUnsigned: false,
      ...(isolation
        ? { isolation: { mode: isolation, workers: 1, inferenceTimeoutMs: 30_000, maxWorkerRssMb: 0, restartLimit: { count: 5, windowSec: 60 } } }
        : {}),
    });

  for (const mode of [undefined, 'process', 'thread'] as const) {
    it(`${mode ? `in a supervised worker ${mode}` : 'in process'}: loads the signed bundle's tfjs file, passes the golden check and reports runtime tfjs / provider ${tfjsNodeInstalled() ? 'tfjs-node' : 'wasm'}`, async () => {
      const c = await load(mode);
      try {
        expect(c.info.runtime).toBe('tfjs');
        expect(c.info.provider).toBe(tfjsNodeInstalled() ? 'tfjs-node' : 'wasm');
        expect(c.info.sha256).toBe(selectModelFile(c.bundle, 'tfjs').sha256);
        expect(c.signature.signed).toBe(true);
        expect(c.golden.length).toBeGreaterThanOrEqual(3);
        expect(c.golden.every((g) => g.ok)).toBe(true);
        const capture = await decodeFile(path.join(FIXTURES, 'colin27-axial.png'), defaultDecodeOptions());
        const out = await c.classify([rot90(capture.frames[0]!, 1)]);
        expect(c.labels[argmax(out.probabilities[0]!)]).toBe('rot90');
      } finally {
        await c.dispose();
      }
    });
  }
});
