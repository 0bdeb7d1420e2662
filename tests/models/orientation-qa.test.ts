/**
 * The shipped orientation-qa bundle, end to end as the agent runs it: loadBundle -> selectModelFile ->
 * preprocess (manifest input spec) -> onnxruntime-node -> softmax. Inputs are real held-out images
 * (test split of models/training/data.py: never used for training or model selection), committed under
 * tests/fixtures/models/ (see SOURCES.md there), rotated in TS into all four orientations.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBundle, selectModelFile } from '../../src/models/bundle.js';
import type { LoadedBundle } from '../../src/models/types.js';
import { preprocess, toBatch } from '../../src/preprocess/index.js';
import { OnnxRuntime } from '../../src/runtimes/onnx.js';
import type { InferenceSessionHandle } from '../../src/runtimes/types.js';
import type { ImageFrame } from '../../src/decode/types.js';
import { BUNDLE_DIR, FIXTURES, argmax, decodeGreyDicom, decodePng16, readF32, rot90, softmax } from './helpers.js';

let bundle: LoadedBundle;
let session: InferenceSessionHandle;

beforeAll(async () => {
  bundle = await loadBundle(BUNDLE_DIR);
  // the fp32 model: these tests hold it to the training framework's outputs (int8: tests/quantize)
  const file = selectModelFile(bundle, 'onnx', 'fp32');
  session = await new OnnxRuntime().load(path.join(bundle.dir, file.path), {
    providers: ['cpu'],
    intraOpThreads: 1,
    interOpThreads: 1,
    graphOptimization: 'all',
  }, { inputName: bundle.manifest.input.name, outputName: bundle.manifest.output.name });
});

afterAll(async () => {
  await session?.dispose();
});

// The middle slice of each plane of the held-out Colin27 MR volume (16-bit PNG, BSD-3) and a held-out
// CT patient (DICOM, decoded here); chosen before looking at the model's output.
//
// KNOWN LIMITATIONS (v1.1.0; figures from `evaluate.py`, see models/orientation-qa/MODEL_CARD.md):
// - CT_small is a CHEST CT (patient 1CT1). The only axial body CT in training is one pelvis slice, and the
//   model is a quarter turn off on every 1CT1 image in every rotation (held-out 1CT1: 0/12). Kept as an expected
//   failure so the limitation stays visible; it turns red (and must become a normal case) as soon as a
//   model that handles chest CT ships.
// - colin27-sagittal (the exact midline slice) is called upside down in every rotation: 58 of the 59
//   held-out Colin27 sagittal slices are right (98.3%, as in 1.0.0, which missed a different one), but the
//   midline slice picked for this test a priori is the one 1.1.0 gets wrong. Expected failure, same rule.
const HELD_OUT = [
  { file: 'colin27-axial.png', modality: 'MR', knownFailure: false },
  { file: 'colin27-coronal.png', modality: 'MR', knownFailure: false },
  { file: 'colin27-sagittal.png', modality: 'MR', knownFailure: true },
  { file: 'pydicom-CT_small.dcm', modality: 'CT', knownFailure: true },
];

async function loadFixture(file: string): Promise<{ frame: ImageFrame; modality: string }> {
  if (file.endsWith('.png')) return { frame: await decodePng16(path.join(FIXTURES, file)), modality: 'MR' };
  const f = decodeGreyDicom(path.join(FIXTURES, file));
  return { frame: f, modality: f.modality };
}

describe('orientation-qa classifies real held-out images in all four rotations', () => {
  for (const { file, modality, knownFailure } of HELD_OUT) {
    (knownFailure ? it.fails : it)(`${file} (${modality})${knownFailure ? ' [known limitation, see MODEL_CARD.md]' : ''}`, async () => {
      const { frame, modality: m } = await loadFixture(file);
      expect(m).toBe(modality);
      const spec = bundle.manifest.input;
      const frames = [0, 1, 2, 3].map((k) => rot90(frame, k));
      const batch = toBatch(frames.map((f) => preprocess(f, spec)), spec);
      const out = await session.run(batch.data, batch.shape);
      expect(out.shape).toEqual([4, 4]);
      const labels = bundle.manifest.labels;
      const predicted = [0, 1, 2, 3].map((k) => labels[argmax(out.data.subarray(k * 4, k * 4 + 4))]);
      expect(predicted).toEqual(['rot0', 'rot90', 'rot180', 'rot270']);
      for (let k = 0; k < 4; k++) {
        const p = softmax(out.data.subarray(k * 4, k * 4 + 4));
        expect(p.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
      }
    });
  }
});

describe('orientation-qa golden tensors (reference output from the training framework)', () => {
  it('ONNX Runtime reproduces the reference logits on the golden inputs', async () => {
    const golden = bundle.manifest.golden as { name: string; input: { path: string; shape: number[] }; logits: number[]; label: string }[];
    expect(golden.length).toBeGreaterThanOrEqual(3);
    for (const g of golden) {
      const out = await session.run(readF32(path.join(bundle.dir, g.input.path)), g.input.shape);
      expect(out.data.length).toBe(g.logits.length);
      for (let i = 0; i < g.logits.length; i++) expect(Math.abs((out.data[i] as number) - (g.logits[i] as number))).toBeLessThan(1e-3);
      expect(bundle.manifest.labels[argmax(out.data)]).toBe(g.label);
    }
  });
});
