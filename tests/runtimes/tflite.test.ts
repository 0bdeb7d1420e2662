/**
 * The tflite runtime (LiteRT.js) on the shipped bundle's TFLite files (models/orientation-qa/tflite/,
 * written from model.onnx by models/training/to_tflite.py): the golden check for the fp32 and the int8
 * file, provider fallback with the reason hardware delegates are not reachable here, batches, clear
 * errors for bad files and inputs, the Node shims staying out of the process's globals and LiteRT's log
 * lines out of stdout, and the runtime serving from a supervised worker (process and thread).
 * Cross-runtime parity on real images is in ./parity.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBundle, selectModelFile } from '../../src/models/bundle.js';
import { assertGolden, runGolden } from '../../src/models/golden.js';
import type { LoadedBundle, ModelFileEntry } from '../../src/models/types.js';
import { defaultRegistry } from '../../src/runtimes/registry.js';
import { TfliteRuntime, acceleratorPlan } from '../../src/runtimes/tflite.js';
import type { InferenceSessionHandle, RuntimeLoadOptions } from '../../src/runtimes/types.js';
import { openSession } from '../../src/runtimes/worker/supervisor.js';
import { BUNDLE_DIR, ROOT, readF32 } from '../models/helpers.js';

const opts = (providers: string[]): RuntimeLoadOptions => ({ providers, intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' });
const SHIM_GLOBALS = ['self', 'importScripts', 'Module', 'ModuleFactory', 'require', '__dirname', '__filename'];

let bundle: LoadedBundle;
let fp32File: ModelFileEntry;
let int8File: ModelFileEntry;
let fp32: InferenceSessionHandle;
let int8: InferenceSessionHandle;
let globalsBefore: Record<string, boolean>;

const golden = (): { name: string; input: { path: string; shape: number[] }; logits: number[] }[] =>
  bundle.manifest.golden as { name: string; input: { path: string; shape: number[] }; logits: number[] }[];

beforeAll(async () => {
  globalsBefore = Object.fromEntries(SHIM_GLOBALS.map((n) => [n, n in globalThis]));
  bundle = await loadBundle(BUNDLE_DIR);
  fp32File = selectModelFile(bundle, 'tflite', 'fp32');
  int8File = selectModelFile(bundle, 'tflite', 'int8');
  const io = { inputName: bundle.manifest.input.name, outputName: bundle.manifest.output.name };
  const rt = new TfliteRuntime();
  fp32 = await rt.load(path.join(bundle.dir, fp32File.path), opts(['cpu']), io);
  int8 = await rt.load(path.join(bundle.dir, int8File.path), opts(['cpu']), io);
});

afterAll(async () => {
  await fp32?.dispose();
  await int8?.dispose();
});

describe('tflite accelerator plan', () => {
  it('maps cpu/xnnpack/wasm to LiteRT.js wasm (always last), webgpu to webgpu; hardware EPs are reported as unsupported', () => {
    expect(acceleratorPlan([])).toEqual({ plan: ['wasm'], unsupported: [] });
    expect(acceleratorPlan(['cpu'])).toEqual({ plan: ['wasm'], unsupported: [] });
    expect(acceleratorPlan(['xnnpack', 'webgpu', 'cpu'])).toEqual({ plan: ['webgpu', 'wasm'], unsupported: [] });
    expect(acceleratorPlan(['cuda', 'nnapi', 'tensorrt', 'cpu'])).toEqual({ plan: ['wasm'], unsupported: ['cuda', 'nnapi', 'tensorrt'] });
  });
});

describe('TfliteRuntime (LiteRT.js)', () => {
  it('is registered as type tflite and probes available with the @litertjs/core version', async () => {
    expect(defaultRegistry().types()).toContain('tflite');
    const p = await defaultRegistry().probe('tflite');
    expect(p).toMatchObject({ type: 'tflite', available: true, version: expect.stringMatching(/^2\.\d+\.\d+$/) as unknown });
  });

  it('reports its accelerators: wasm (XNNPACK, single-threaded build) available; webgpu and webnn unavailable in Node with the reason', async () => {
    const by = Object.fromEntries((await new TfliteRuntime().accelerators()).map((a) => [a.name, a]));
    expect(by.wasm).toMatchObject({ available: true, detail: expect.stringMatching(/^XNNPACK on the CPU, litert_wasm_(compat_)?internal build .*threads no/) as unknown });
    expect(by.webgpu).toMatchObject({ available: false, reason: expect.stringMatching(/no WebGPU in Node/) as unknown });
    expect(by.webnn).toMatchObject({ available: false, reason: expect.stringMatching(/browser API/) as unknown });
  });

  it('requested GPU/NPU providers fall back to wasm, each attempt saying why', async () => {
    const s = await new TfliteRuntime().load(path.join(bundle.dir, int8File.path), opts(['cuda', 'nnapi', 'webgpu', 'cpu']));
    try {
      expect(s.runtime).toBe('tflite');
      expect(s.provider).toBe('wasm');
      expect(s.attempts.map((a) => [a.provider, a.ok])).toEqual([
        ['cuda', false],
        ['nnapi', false],
        ['webgpu', false],
        ['wasm', true],
      ]);
      expect(s.attempts[0]?.reason).toMatch(/hardware delegates .* not reachable from the WASM build of LiteRT\.js in Node/);
      expect(s.attempts[2]?.reason).toMatch(/no WebGPU in Node/);
      expect([s.inputName, s.outputName]).toEqual(['input', 'logits']);
    } finally {
      await s.dispose();
    }
  });

  it('leaves no loader shim behind in the process globals (self, importScripts, require, __dirname...)', () => {
    const after = Object.fromEntries(SHIM_GLOBALS.map((n) => [n, n in globalThis]));
    expect(after).toEqual(globalsBefore);
  });

  it('keeps stdout clean: LiteRT.js log lines go to stderr (edge-agent infer writes NDJSON on stdout)', () => {
    const mod = pathToFileURL(path.join(ROOT, 'dist', 'src', 'runtimes', 'tflite.js')).href;
    const script = `
      const { TfliteRuntime } = await import(${JSON.stringify(mod)});
      const s = await new TfliteRuntime().load(${JSON.stringify(path.join(bundle.dir, int8File.path))}, { providers: ['cpu'], intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' });
      const out = await s.run(new Float32Array(128 * 128), [1, 1, 128, 128]);
      await s.dispose();
      process.stdout.write(JSON.stringify({ n: out.data.length }) + '\\n');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('{"n":4}\n');
  });
});

describe('the bundle\'s TFLite files', () => {
  it('are listed fp32 and int8, the int8 file with its tolerance and the activation ranges it was quantized with', () => {
    expect(fp32File).toMatchObject({ path: 'tflite/model_fp32.tflite', format: 'tflite', precision: 'fp32' });
    expect(int8File).toMatchObject({ path: 'tflite/model_int8.tflite', format: 'tflite', precision: 'int8' });
    const e = int8File as ModelFileEntry & { goldenTolerance?: number; provenance?: { activationRanges?: { tensors?: Record<string, { min: number; max: number }> } } };
    expect(e.goldenTolerance).toBeGreaterThan(0);
    expect(e.goldenTolerance).toBeLessThanOrEqual(1);
    const ranges = e.provenance?.activationRanges?.tensors ?? {};
    // the quantized input, the six conv outputs (after ReLU) and the classifier's logits
    expect(Object.keys(ranges).length).toBe(8);
    for (const r of Object.values(ranges)) expect(r.min).toBeLessThanOrEqual(r.max);
    // int8 weights: about a quarter of the fp32 file
    expect(int8File.size).toBeLessThan(0.3 * fp32File.size);
  });

  it('were converted from the bundle\'s current model.onnx', () => {
    const onnx = selectModelFile(bundle, 'onnx', 'fp32');
    for (const f of [fp32File, int8File]) {
      expect((f as ModelFileEntry & { provenance?: { convertedFrom?: unknown } }).provenance?.convertedFrom).toEqual({ path: onnx.path, sha256: onnx.sha256 });
    }
  });

  it('fp32: the golden check passes through tflite, logits within 1e-4 of the ONNX reference', async () => {
    const results = await runGolden(bundle, fp32File, fp32);
    expect(results.length).toBe(golden().length);
    expect(() => assertGolden(bundle, fp32File, results)).not.toThrow();
    for (const r of results) expect(r.maxAbsDiff).toBeLessThan(1e-4);
  });

  it('int8: the golden check passes within the file\'s own tolerance, and int8 really differs from fp32 (it is quantized)', async () => {
    const results = await runGolden(bundle, int8File, int8);
    expect(() => assertGolden(bundle, int8File, results)).not.toThrow();
    for (const r of results) expect(r.tolerance).toBe((int8File as { goldenTolerance?: number }).goldenTolerance);
    expect(Math.max(...results.map((r) => r.maxAbsDiff))).toBeGreaterThan(1e-3);
  });

  it('a batch of N runs as N invokes of the batch-1 model: same values as one at a time', async () => {
    const g = golden();
    const xs = g.map((e) => readF32(path.join(bundle.dir, e.input.path)));
    const batch = new Float32Array(xs.length * 128 * 128);
    xs.forEach((x, i) => batch.set(x, i * x.length));
    for (const s of [fp32, int8]) {
      const out = await s.run(batch, [xs.length, 1, 128, 128]);
      expect(out.shape).toEqual([xs.length, 4]);
      for (let i = 0; i < xs.length; i++) {
        const one = await s.run(xs[i]!, [1, 1, 128, 128]);
        expect(Array.from(out.data.subarray(4 * i, 4 * i + 4))).toEqual(Array.from(one.data));
      }
    }
  });

  it('concurrent calls on one session give each caller its own, correct output', async () => {
    const g = golden();
    const xs = g.map((e) => readF32(path.join(bundle.dir, e.input.path)));
    const single = await Promise.all(xs.map((x) => fp32.run(x, [1, 1, 128, 128])));
    const batch = new Float32Array(xs.length * 128 * 128);
    xs.forEach((x, i) => batch.set(x, i * x.length));
    const [many, ...again] = await Promise.all([fp32.run(batch, [xs.length, 1, 128, 128]), ...xs.map((x) => fp32.run(x, [1, 1, 128, 128]))]);
    for (let i = 0; i < xs.length; i++) {
      for (let j = 0; j < 4; j++) expect(Math.abs(single[i]!.data[j]! - g[i]!.logits[j]!)).toBeLessThan(1e-4);
      expect(Array.from(again[i]!.data)).toEqual(Array.from(single[i]!.data));
      expect(Array.from(many.data.subarray(4 * i, 4 * i + 4))).toEqual(Array.from(single[i]!.data));
    }
  });

  it('refuses an input of the wrong size or shape with a message naming both shapes', async () => {
    await expect(fp32.run(new Float32Array(10), [1, 1, 128, 128])).rejects.toThrow(/input has 10 values but shape \[1, 1, 128, 128\] needs 16384/);
    await expect(fp32.run(new Float32Array(64 * 256), [1, 1, 64, 256])).rejects.toThrow(/input shape \[1, 1, 64, 256\] does not fit the model input \[1, 1, 128, 128\]/);
  });

  it('refuses a file that is not a TFLite model with a clear error, and stays usable', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'tflite-bad-'));
    try {
      const file = path.join(dir, 'model.tflite');
      await writeFile(file, (await readFile(path.join(bundle.dir, 'model.onnx'))).subarray(0, 4096));
      await expect(new TfliteRuntime().load(file, opts(['cpu']))).rejects.toThrow(/LiteRT\.js could not load .*model\.tflite \(wasm: model did not load/);
      const x = readF32(path.join(bundle.dir, golden()[0]!.input.path));
      expect((await fp32.run(x, [1, 1, 128, 128])).data.length).toBe(4);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('tflite in a supervised worker', () => {
  for (const mode of ['process', 'thread'] as const) {
    it(`${mode}: the int8 file serves from the worker with the same outputs as in process`, async () => {
      const s = await openSession('tflite', path.join(bundle.dir, int8File.path), opts(['cpu']), {
        mode,
        workers: 1,
        inferenceTimeoutMs: 30_000,
        maxWorkerRssMb: 0,
        restartLimit: { count: 5, windowSec: 60 },
      });
      try {
        expect([s.runtime, s.provider]).toEqual(['tflite', 'wasm']);
        for (const g of golden()) {
          const x = readF32(path.join(bundle.dir, g.input.path));
          const [a, b] = [await s.run(x, g.input.shape), await int8.run(x, g.input.shape)];
          expect(Array.from(a.data)).toEqual(Array.from(b.data));
        }
      } finally {
        await s.dispose();
      }
    }, 60_000);
  }
});

/**
 * models/training/to_tflite.py needs /usr/bin/python3 with python3-onnx + python3-numpy and flatc
 * (flatbuffers-compiler). In CI a missing one fails these tests; locally they skip.
 */
function converterTools(): boolean {
  const missing: string[] = [];
  if (spawnSync('/usr/bin/python3', ['-c', 'import onnx, numpy'], { encoding: 'utf8' }).status !== 0) missing.push('python3-onnx/python3-numpy');
  if (spawnSync('flatc', ['--version'], { encoding: 'utf8' }).status !== 0) missing.push('flatbuffers-compiler (flatc)');
  if (missing.length && process.env.CI === 'true') throw new Error(`to_tflite.py tools missing in CI: ${missing.join(', ')}`);
  return missing.length === 0;
}

const CONVERTER = path.join(ROOT, 'models', 'training', 'to_tflite.py');
const haveTools = converterTools();

describe.skipIf(!haveTools)('models/training/to_tflite.py', () => {
  const sha = (f: string): string => createHash('sha256').update(readFileSync(f)).digest('hex');
  const run = (...args: string[]) => spawnSync('/usr/bin/python3', [CONVERTER, ...args], { encoding: 'utf8', timeout: 120_000 });

  it('re-running it on the bundle (with the ranges file its provenance names) reproduces the shipped TFLite files byte for byte', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'to-tflite-'));
    try {
      cpSync(BUNDLE_DIR, dir, { recursive: true });
      const ranges = (int8File as { provenance?: { activationRanges?: { rangesFile?: { path: string; sha256: string } } } }).provenance?.activationRanges?.rangesFile;
      const args = ['--bundle', dir];
      if (ranges) {
        expect(sha(path.join(dir, ranges.path))).toBe(ranges.sha256);
        args.push('--ranges', path.join(dir, ranges.path));
      }
      const r = run(...args);
      expect(r.status, r.stderr).toBe(0);
      for (const f of [fp32File, int8File]) expect(sha(path.join(dir, f.path)), f.path).toBe(f.sha256);
      const m = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as { files: { path: string }[] };
      // entries replaced in place: the same files in the same order
      expect(m.files.map((f) => f.path)).toEqual(bundle.manifest.files.map((f) => f.path));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('avoids the SAME-padding trap: the stride-2 conv reads an explicit PAD (1,1 on H and W) and is VALID; stride-1 convs are SAME', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tflite-json-'));
    try {
      const r = spawnSync('flatc', ['--json', '--strict-json', '--raw-binary', '-o', dir, path.join(ROOT, 'models', 'training', 'tflite', 'schema.fbs'), '--', path.join(bundle.dir, fp32File.path)], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const m = JSON.parse(readFileSync(path.join(dir, 'model_fp32.json'), 'utf8')) as {
        operator_codes: { builtin_code?: number; deprecated_builtin_code?: number }[];
        subgraphs: { tensors: { name: string; buffer: number }[]; operators: { opcode_index?: number; inputs: number[]; outputs: number[]; builtin_options?: Record<string, unknown> }[] }[];
        buffers: { data?: number[] }[];
      };
      const code = (i: number | undefined) => m.operator_codes[i ?? 0]?.deprecated_builtin_code ?? 0;
      const sg = m.subgraphs[0]!;
      const convs = sg.operators.filter((o) => code(o.opcode_index) === 3);
      expect(convs.length).toBe(6);
      const strided = convs.filter((o) => o.builtin_options?.stride_h === 2);
      expect(strided.length).toBe(1);
      expect(strided[0]!.builtin_options?.padding).toBe('VALID');
      const producer = sg.operators.find((o) => o.outputs.includes(strided[0]!.inputs[0]!));
      expect(code(producer?.opcode_index)).toBe(34); // PAD
      const pads = m.buffers[sg.tensors[producer!.inputs[1]!]!.buffer]!.data!;
      expect(Array.from(new Int32Array(new Uint8Array(pads).buffer))).toEqual([0, 0, 1, 1, 1, 1, 0, 0]);
      for (const c of convs.filter((o) => o !== strided[0])) expect(c.builtin_options?.padding ?? 'SAME').toBe('SAME');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a malformed ranges file with a message naming the tensor', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'to-tflite-bad-'));
    try {
      cpSync(BUNDLE_DIR, dir, { recursive: true });
      const bad = path.join(dir, 'bad-ranges.json');
      writeFileSync(bad, JSON.stringify({ '/Concat_output_0': { min: 3 } }));
      const r = run('--bundle', dir, '--ranges', bad);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/range for '\/Concat_output_0' must be \{"min": number, "max": number\}/);
      expect(existsSync(path.join(dir, 'manifest.json'))).toBe(true);
      expect(sha(path.join(dir, 'manifest.json'))).toBe(sha(path.join(BUNDLE_DIR, 'manifest.json')));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
