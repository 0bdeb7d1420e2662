/**
 * Runtime x precision selection (src/runtimes/select.ts through BundleClassifier.load), with the real
 * runtimes on real bundles: the shipped orientation-qa bundle (onnx + tfjs, + whatever else it carries),
 * and small bundles around tests/fixtures/runtimes/tiny-cnn.onnx and its hand-quantized QDQ int8 twin
 * (make-tiny-cnn-int8.py), whose golden input is a real pre-processed image (Colin27 axial).
 *
 * Speed decides only one assertion here (int8 vs fp32 on the tiny CNN): its QDQ int8 file runs its
 * Q/DQ pairs around an fp32-sized model whose convs are too small to gain from int8 (FIELD-NOTES:
 * "int8 pays only when the model does enough work"); measured 0.15 vs 0.37 ms at graphOptimization 'all',
 * a 2.5x gap, and the benchmark interleaves candidates so machine noise hits both alike.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { BundleError } from '../../src/models/bundle.js';
import { BundleClassifier, type ClassifierOptions } from '../../src/pipeline/classifier.js';
import { OnnxRuntime } from '../../src/runtimes/onnx.js';
import { CACHE_FILE, INT8_MARGIN, candidateKey, type SelectionReport } from '../../src/runtimes/select.js';

const SHIPPED = path.resolve('models/orientation-qa');
const DEV_KEY = path.resolve('models/keys/DEVELOPMENT-ONLY-signing-key.pub.pem');
const TINY = path.resolve('tests/fixtures/runtimes/tiny-cnn.onnx');
const TINY_INT8 = path.resolve('tests/fixtures/runtimes/tiny-cnn-int8.onnx');

const base: ClassifierOptions = {
  runtime: 'auto',
  precision: 'auto',
  providers: ['cpu'],
  intraOpThreads: 1,
  interOpThreads: 1,
  graphOptimization: 'all',
  warmupRuns: 1,
  trustedKeys: [DEV_KEY],
  allowUnsigned: false,
  // in process (no isolation) the classifier benchmarks only when asked: these tests ask
  benchmark: true,
};

function stateDir(): string {
  return mkdtempSync(path.join(tmpdir(), 'select-state-'));
}

function sha(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function load(dir: string, o: Partial<ClassifierOptions>): Promise<BundleClassifier> {
  return BundleClassifier.load(dir, { ...base, ...o });
}

async function loadAndClose(dir: string, o: Partial<ClassifierOptions>): Promise<SelectionReport> {
  const c = await load(dir, o);
  await c.dispose();
  return c.selection;
}

/** Colin27 axial (real MR slice) pre-processed the tiny model's way: grey 224x224, (x/255 - 0.5) / 0.25. */
async function realInput(): Promise<Float32Array> {
  const raw = await sharp(path.resolve('tests/fixtures/models/colin27-axial.png')).greyscale().resize(224, 224, { fit: 'fill' }).raw().toBuffer();
  return Float32Array.from(raw, (v) => (v / 255 - 0.5) / 0.25);
}

interface TinyFile {
  path: string;
  format: 'onnx' | 'tfjs' | 'tflite';
  precision: 'fp32' | 'int8';
  bytes: Buffer;
}

/**
 * An unsigned bundle around the tiny CNN with the given files and one golden entry: the real input, and
 * logits from ORT fp32 on tiny-cnn.onnx (or `goldenLogits`, optionally only for `goldenFile`).
 */
async function tinyBundle(files: TinyFile[], golden: { logits?: number[]; file?: string } = {}): Promise<string> {
  const dir = mkdtempSync(path.join(tmpdir(), 'select-bundle-'));
  mkdirSync(path.join(dir, 'golden'));
  const input = await realInput();
  const inputBytes = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  writeFileSync(path.join(dir, 'golden/colin27.f32'), inputBytes);
  let logits = golden.logits;
  if (!logits) {
    const s = await new OnnxRuntime().load(TINY, { providers: ['cpu'], intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' });
    logits = [...(await s.run(input, [1, 1, 224, 224])).data];
    await s.dispose();
  }
  for (const f of files) {
    mkdirSync(path.dirname(path.join(dir, f.path)), { recursive: true });
    writeFileSync(path.join(dir, f.path), f.bytes);
  }
  const entry: Record<string, unknown> = {
    name: 'colin27-axial',
    input: { path: 'golden/colin27.f32', shape: [1, 1, 224, 224], dtype: 'float32-le', sha256: sha(inputBytes), size: inputBytes.length },
    logits,
  };
  if (golden.file) entry.file = golden.file;
  const manifest = {
    id: 'tiny-cnn',
    version: '0.0.1',
    task: 'test classification',
    labels: ['up', 'right', 'down', 'left'],
    input: { name: 'input', layout: 'NCHW', shape: [1, 1, 224, 224], dtype: 'float32', channels: 1, normalisation: { mean: [0.5], std: [0.25] }, resize: 'stretch' },
    output: { name: 'logits', activation: 'softmax' },
    files: files.map((f) => ({ path: f.path, format: f.format, precision: f.precision, sha256: sha(f.bytes), size: f.bytes.length })),
    golden: [entry],
  };
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
  return dir;
}

const fp32File = (): TinyFile => ({ path: 'model.onnx', format: 'onnx', precision: 'fp32', bytes: readFileSync(TINY) });
const int8File = (): TinyFile => ({ path: 'model-int8.onnx', format: 'onnx', precision: 'int8', bytes: readFileSync(TINY_INT8) });

function measured(r: SelectionReport) {
  return r.candidates.filter((c) => c.status === 'measured');
}

describe('runtime selection: auto', () => {
  it('benchmarks every runtime x precision the shipped bundle carries, serves the fastest, and reuses the cached result on the next load', async () => {
    const state = stateDir();
    const first = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: state });
    expect(first).toMatchObject({ mode: 'auto', benchmarked: true, cached: false });
    const files = new Set(first.candidates.map(candidateKey));
    expect(files).toContain('onnx/fp32');
    expect(files).toContain('tfjs/fp32');
    for (const c of first.candidates) {
      // measured with a latency, or left out with its reason (e.g. a runtime this build lacks)
      if (c.status === 'measured') {
        expect(c.ms!.p50).toBeGreaterThan(0);
        expect(c.ms!.runs).toBeGreaterThanOrEqual(10);
      } else {
        expect(['unavailable', 'excluded']).toContain(c.status);
        expect(c.reason).toBeTruthy();
      }
    }
    expect(measured(first).map(candidateKey)).toEqual(expect.arrayContaining(['onnx/fp32', 'tfjs/fp32']));
    // the served candidate is the fastest measured one (int8 needs its margin over fp32 of the same runtime)
    const effective = (c: SelectionReport['candidates'][number]) =>
      c.precision === 'int8' && measured(first).some((x) => x.runtime === c.runtime && x.precision === 'fp32') ? c.ms!.p50 / (1 - INT8_MARGIN) : c.ms!.p50;
    const best = Math.min(...measured(first).map(effective));
    const chosen = first.candidates.find((c) => candidateKey(c) === candidateKey(first.chosen!))!;
    expect(effective(chosen)).toBe(best);
    expect(first.order[0]).toBe(candidateKey(first.chosen!));
    expect(first.order).toHaveLength(measured(first).length);
    expect(first.chosen!.provider).toBeTruthy();
    expect(existsSync(path.join(state, CACHE_FILE))).toBe(true);

    // second load: nothing benchmarked, the same measurements, the same choice
    const second = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: state });
    expect(second).toMatchObject({ mode: 'auto', benchmarked: true, cached: true, measuredAt: first.measuredAt });
    expect(second.chosen).toEqual(first.chosen);
    expect(second.order).toEqual(first.order);
    for (const c of second.candidates) {
      expect(c.cached).toBe(true);
      expect(c.measuredAt).toBe(first.measuredAt);
      expect(c.ms).toEqual(first.candidates.find((x) => candidateKey(x) === candidateKey(c))!.ms);
    }

    // a one-shot in-process load (`edge-agent infer`) never benchmarks: it follows the agent's cached
    // measurement when there is one, else the static order (onnx first, fp32 before int8)
    const cli = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: state, benchmark: false });
    expect(cli).toMatchObject({ benchmarked: true, cached: true, chosen: first.chosen, order: first.order });
    const cold = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: stateDir(), benchmark: false });
    expect(cold).toMatchObject({ benchmarked: false, cached: false, chosen: { runtime: 'onnx', precision: 'fp32' } });
    expect(cold.notes).toContainEqual(expect.stringMatching(/^not benchmarked in this process/));
    expect(cold.candidates.every((c) => c.status === 'not-measured')).toBe(true);

    // the cache is per model file, machine AND runtime options: other threads measure again
    const other = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: state, intraOpThreads: 2 });
    expect(other).toMatchObject({ benchmarked: true, cached: false });
    expect(other.measuredAt).not.toBe(first.measuredAt);
  }, 180_000);

  it('with intra-op threads left to the agent (0), auto measures ORT at 1 thread and at cores/workers and serves the faster', async () => {
    const cores = (await import('node:os')).availableParallelism();
    const state = stateDir();
    const r = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: state, intraOpThreads: 0, isolation: { mode: 'process', workers: 1, inferenceTimeoutMs: 30_000, maxWorkerRssMb: 0, restartLimit: { count: 5, windowSec: 60 } } });
    const onnx = r.candidates.filter((c) => c.runtime === 'onnx');
    const others = r.candidates.filter((c) => c.runtime !== 'onnx');
    if (cores > 1) {
      expect(new Set(onnx.map((c) => c.threads))).toEqual(new Set([cores, 1]));
      expect(onnx.map(candidateKey)).toContain('onnx/fp32@1t');
    } else expect(onnx.every((c) => c.threads === undefined)).toBe(true);
    expect(others.every((c) => c.threads === undefined)).toBe(true); // TF.js / LiteRT WASM: one thread in Node
    const chosen = r.candidates.find((c) => candidateKey(c) === candidateKey(r.chosen!))!;
    expect(chosen.status).toBe('measured');
    expect(r.chosen!.threads).toBe(chosen.threads);
    expect(r.order[0]).toBe(candidateKey(r.chosen!));
    // `edge-agent infer` (in process, no benchmark) follows what the agent measured in its workers
    const cli = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: state, intraOpThreads: 0, benchmark: false });
    expect(cli).toMatchObject({ cached: true, order: r.order });
    expect(candidateKey(cli.chosen!)).toBe(candidateKey(r.chosen!));
  }, 120_000);

  it('optimiseFor throughput ranks the same measurements by time per image with every worker busy (p50 / serving workers)', async () => {
    const cores = (await import('node:os')).availableParallelism();
    const state = stateDir();
    const isolation = { mode: 'process' as const, workers: 0, inferenceTimeoutMs: 30_000, maxWorkerRssMb: 0, restartLimit: { count: 5, windowSec: 60 } };
    const tp = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: state, intraOpThreads: 0, optimiseFor: 'throughput', isolation });
    // the same bundle and options for latency: the cached measurements, ranked the other way
    const lat = await loadAndClose(SHIPPED, { runtime: 'auto', stateDir: state, intraOpThreads: 0, optimiseFor: 'latency', isolation });
    expect(tp).toMatchObject({ optimiseFor: 'throughput', benchmarked: true, cached: false });
    expect(lat).toMatchObject({ optimiseFor: 'latency', benchmarked: true, cached: true, measuredAt: tp.measuredAt });
    // workers each candidate serves with (model.workers 0): a thread variant cores / threads, others one per two cores
    const workers = (c: { threads?: number }) => (c.threads ? Math.max(1, Math.floor(cores / c.threads)) : Math.max(1, Math.floor(cores / 2)));
    for (const [r, cost] of [
      [tp, (c: SelectionReport['candidates'][number]) => c.ms!.p50 / workers(c)],
      [lat, (c: SelectionReport['candidates'][number]) => c.ms!.p50],
    ] as const) {
      const m = measured(r);
      const effective = (c: SelectionReport['candidates'][number]) =>
        c.precision === 'int8' && m.some((x) => x.runtime === c.runtime && x.precision === 'fp32') ? cost(c) / (1 - INT8_MARGIN) : cost(c);
      // the whole order follows the metric, so the fallback after the first candidate does too
      const ranked = r.order.map((k) => effective(m.find((c) => candidateKey(c) === k)!));
      expect(ranked).toEqual([...ranked].sort((a, b) => a - b));
      expect(r.order[0]).toBe(candidateKey(r.chosen!));
    }
    // the health/log note says what was compared, with the workers each candidate gets
    const note = tp.notes.find((n) => n.startsWith('ranked for throughput'));
    expect(note).toBeDefined();
    if (cores > 1) expect(note).toMatch(new RegExp(`onnx/int8@1t [0-9.]+ ms / ${cores} = `));
    expect(lat.notes.some((n) => n.startsWith('ranked for throughput'))).toBe(false);
  }, 180_000);

  it('int8 slower than fp32 on this hardware: fp32 serves and the report says so; an explicit precision still wins', async () => {
    const dir = await tinyBundle([fp32File(), int8File()]);
    const c = await load(dir, { runtime: 'auto', stateDir: stateDir(), allowUnsigned: true });
    try {
      const r = c.selection;
      const i8 = r.candidates.find((x) => candidateKey(x) === 'onnx/int8')!;
      const f32 = r.candidates.find((x) => candidateKey(x) === 'onnx/fp32')!;
      expect(i8.status).toBe('measured');
      expect(f32.status).toBe('measured');
      expect(i8.ms!.p50).toBeGreaterThan(f32.ms!.p50);
      expect(r.chosen).toMatchObject({ runtime: 'onnx', precision: 'fp32', file: 'model.onnx', provider: 'cpu' });
      expect(r.order).toEqual(['onnx/fp32', 'onnx/int8']);
      expect(r.notes).toContainEqual(expect.stringMatching(/^int8 slower than fp32 here: \d[\d.]* vs \d[\d.]* ms \(onnx, p50 batch 1\); onnx serves fp32$/));
      expect(c.info.sha256).toBe(sha(readFileSync(TINY)));
      expect(c.precision).toBe('fp32');
    } finally {
      await c.dispose();
    }
    // a device config that says int8 gets int8 (no benchmark needed)
    const forced = await loadAndClose(dir, { runtime: ['onnx'], precision: 'int8', stateDir: stateDir(), allowUnsigned: true });
    expect(forced).toMatchObject({ mode: 'preference', benchmarked: false, chosen: { runtime: 'onnx', precision: 'int8', file: 'model-int8.onnx' } });
  });

  it('a candidate whose outputs miss its golden references is excluded with the reason; the next one serves', async () => {
    const dir = await tinyBundle([fp32File(), int8File()]);
    // add a golden entry only for the int8 file, with references it cannot meet
    const manifestPath = path.join(dir, 'manifest.json');
    const m = JSON.parse(readFileSync(manifestPath, 'utf8')) as { golden: Record<string, unknown>[] };
    m.golden.push({ ...m.golden[0], name: 'int8-only', file: 'model-int8.onnx', logits: [5, 5, 5, 5] });
    writeFileSync(manifestPath, JSON.stringify(m, null, 2));
    const r = await loadAndClose(dir, { runtime: 'auto', stateDir: stateDir(), allowUnsigned: true });
    const i8 = r.candidates.find((x) => candidateKey(x) === 'onnx/int8')!;
    expect(i8.status).toBe('excluded');
    expect(i8.reason).toMatch(/^golden check failed: 'int8-only' max abs diff \S+ > tolerance/);
    expect(r.notes).toContainEqual(expect.stringMatching(/^onnx\/int8 excluded: golden check failed/));
    expect(r.chosen).toMatchObject({ runtime: 'onnx', precision: 'fp32' });
    expect(r.order).toEqual(['onnx/fp32']);
  });
});

describe('runtime selection: preference list', () => {
  it('an execution provider or backend that is not available here falls back inside its runtime and says why', async () => {
    const dir = await tinyBundle([fp32File()]);
    const onnx = await loadAndClose(dir, { runtime: ['onnx'], providers: ['cuda', 'cpu'], allowUnsigned: true });
    expect(onnx.chosen).toMatchObject({ runtime: 'onnx', provider: 'cpu' });
    expect(onnx.candidates[0]!.attempts).toEqual([expect.objectContaining({ provider: 'cuda', ok: false }), { provider: 'cpu', ok: true }]);
    expect(onnx.notes).toContainEqual(expect.stringMatching(/^onnx: provider cuda unavailable: .+/));

    // tfjs-node is an optional dependency whose install cannot download libtensorflow here
    expect(existsSync(path.resolve('node_modules/@tensorflow/tfjs-node/package.json'))).toBe(false);
    const tfjs = await loadAndClose(SHIPPED, { runtime: 'tfjs', providers: ['tfjs-node', 'cpu'] });
    expect(tfjs.chosen).toMatchObject({ runtime: 'tfjs', precision: 'fp32', provider: 'wasm' });
    expect(tfjs.notes).toContainEqual(expect.stringMatching(/^tfjs: provider tfjs-node unavailable: .*not installed/));
  });

  it('a runtime that cannot load its file is skipped with the reason and the next runtime serves; with none left the load fails naming each', async () => {
    // the shipped model's TF.js files and golden inputs, with an ONNX file ORT cannot parse
    const dir = mkdtempSync(path.join(tmpdir(), 'select-broken-'));
    const shipped = JSON.parse(readFileSync(path.join(SHIPPED, 'manifest.json'), 'utf8')) as {
      files: { path: string; format: string; precision: string; sha256: string; size: number }[];
      golden: { input: { path: string } }[];
    };
    cpSync(path.join(SHIPPED, 'tfjs'), path.join(dir, 'tfjs'), { recursive: true });
    cpSync(path.join(SHIPPED, 'golden'), path.join(dir, 'golden'), { recursive: true });
    const broken = readFileSync(path.join(SHIPPED, 'model.onnx')).subarray(0, 4096);
    writeFileSync(path.join(dir, 'model.onnx'), broken);
    const files = shipped.files
      .filter((f) => f.format === 'tfjs' && f.precision === 'fp32')
      .concat([{ path: 'model.onnx', format: 'onnx', precision: 'fp32', sha256: sha(broken), size: broken.length }]);
    writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ ...shipped, files }, null, 2));

    const r = await loadAndClose(dir, { runtime: ['tflite', 'onnx', 'tfjs'], precision: 'fp32', allowUnsigned: true, trustedKeys: [] });
    expect(r.mode).toBe('preference');
    expect(r.notes).toContainEqual('tflite: bundle has no tflite model file');
    const onnx = r.candidates.find((x) => candidateKey(x) === 'onnx/fp32')!;
    expect(onnx.status).toBe('unavailable');
    expect(onnx.reason).toMatch(/model\.onnx/);
    expect(r.notes).toContainEqual(expect.stringMatching(/^onnx\/fp32 could not serve: .+/));
    expect(r.chosen).toMatchObject({ runtime: 'tfjs', precision: 'fp32', provider: 'wasm' });
    expect(r.order).toEqual(['tfjs/fp32']);

    const err = await load(dir, { runtime: ['onnx'], precision: 'fp32', allowUnsigned: true, trustedKeys: [] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BundleError);
    expect(err).toMatchObject({ code: 'no-runtime' });
    expect((err as Error).message).toMatch(/^no runtime could serve model orientation-qa@[\d.]+: onnx\/fp32: .*model\.onnx/);
  });
});
