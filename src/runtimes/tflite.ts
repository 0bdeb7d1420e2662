/**
 * TFLite implementation of Runtime, on LiteRT.js (@litertjs/core: TFLite's maintained successor,
 * XNNPACK kernels compiled to WebAssembly). Loads `.tflite` flatbuffers, fp32 or int8 (e.g. the bundle's
 * tflite/model_fp32.tflite and tflite/model_int8.tflite from models/training/to_tflite.py).
 *
 * Why LiteRT.js and not @tensorflow/tfjs-tflite (the design's first choice): measured on the shipped
 * model by bench/runtimes/tflite-choice.ts (docs/ARCHITECTURE.md, "TFLite in Node"): LiteRT.js is faster
 * for both fp32 and int8, and tfjs-tflite peer-pins @tensorflow/tfjs-core 4.9.0, whose tensors it needs
 * for every call; installed beside our @tensorflow/tfjs 4.22 the two tfjs-core copies share one global
 * engine (tfjs-core keeps it on globalThis), so one version's code drives the other's engine.
 *
 * Node shims, scoped: LiteRT.js is browser-built. Its loader reads `self.ModuleFactory` after running the
 * Emscripten script through `importScripts` (a Web Worker global), and the script itself, finding Node,
 * calls `require` and uses `__dirname` (which an ES module does not have). `loadLiteRtInNode` therefore
 *   - defines `globalThis.self` and `globalThis.importScripts` ONLY while loadLiteRt() runs, restoring
 *     the previous property descriptors afterwards (also on failure);
 *   - evaluates the Emscripten script inside a function whose parameters are `require`, `__dirname` and
 *     `__filename`, so none of them becomes a global;
 *   - hands the module `print`/`printErr` that write to stderr (INFO lines dropped), so LiteRT's log
 *     never reaches stdout (where `edge-agent infer` writes its NDJSON);
 *   - drops, while loading only, the console.warn LiteRT.js emits when its default environment finds no
 *     `navigator.gpu` (Node has none; the doctor reports webgpu unavailable with that reason).
 * Nothing else is patched. In the agent the runtime runs inside a supervised inference worker
 * (src/runtimes/worker/), which keeps even the loaded WASM module out of the main process.
 *
 * Build and threads: Node 20 lacks WebAssembly relaxed SIMD, so LiteRT.js picks its "compat" build
 * (SIMD, single-threaded); its threaded build needs relaxed SIMD (and Web Workers), so intraOpThreads is
 * not used here. Hardware delegates (GPU, NNAPI, Hexagon/QNN, Core ML, Edge TPU) are not reachable from
 * the WASM build in Node: LiteRT.js's other accelerators are 'webgpu' (needs navigator.gpu, absent in
 * Node) and 'webnn' (browser API). Requested providers that map to nothing are recorded as failed
 * attempts with that reason; the session always ends on 'wasm' (XNNPACK on the CPU).
 *
 * Batch: models written by to_tflite.py have a fixed batch of 1 (TFLite shapes are static); a batch of N
 * runs as N invokes, outputs concatenated.
 */
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import vm from 'node:vm';
import type * as LiteRtTypes from '@litertjs/core';
import type { InferenceSessionHandle, ProviderAttempt, Runtime, RuntimeLoadOptions } from './types.js';
import { assertInputFitsShape, elementCount } from './tensor.js';

type LiteRt = typeof LiteRtTypes;
type CompiledModel = LiteRtTypes.CompiledModel;

const require = createRequire(import.meta.url);

/** Config/provider names -> LiteRT.js accelerator; names absent here have no LiteRT.js counterpart in Node. */
const ACCELERATORS: Readonly<Record<string, 'wasm' | 'webgpu'>> = {
  cpu: 'wasm',
  wasm: 'wasm',
  xnnpack: 'wasm',
  webgpu: 'webgpu',
};

export const HARDWARE_DELEGATES_NOTE =
  'hardware delegates (GPU, NNAPI, Hexagon/QNN, Core ML, Edge TPU) are not reachable from the WASM build of LiteRT.js in Node: CPU (XNNPACK in WebAssembly) only';

/** Accelerators actually tried (always ending with 'wasm') and the requested names LiteRT.js cannot serve. */
export function acceleratorPlan(providers: readonly string[]): { plan: ('wasm' | 'webgpu')[]; unsupported: string[] } {
  const plan: ('wasm' | 'webgpu')[] = [];
  const unsupported: string[] = [];
  for (const p of providers) {
    const key = p.trim().toLowerCase();
    const acc = ACCELERATORS[key];
    if (!acc) {
      if (!unsupported.includes(key)) unsupported.push(key);
    } else if (!plan.includes(acc)) plan.push(acc);
  }
  if (plan.includes('wasm')) plan.splice(plan.indexOf('wasm'), 1);
  plan.push('wasm');
  return { plan, unsupported };
}

function errorReason(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const oneLine = msg.replace(/\s+/g, ' ').trim();
  return oneLine.length > 300 ? `${oneLine.slice(0, 297)}...` : oneLine;
}

/** Which LiteRT.js WASM build this engine loads, and why (the same test LiteRT.js itself makes). */
export interface LiteRtBuild {
  file: string;
  relaxedSimd: boolean;
  threads: boolean;
}

interface Loaded {
  lr: LiteRt;
  build: LiteRtBuild;
  version: string;
}

function litertPackageDir(): string {
  // The package's "exports" only name ./dist/index.js; its wasm/ folder sits beside dist/.
  return path.dirname(path.dirname(require.resolve('@litertjs/core')));
}

/**
 * LiteRT's native log lines: INFO dropped (one set per model load), WARNING/ERROR to stderr, never stdout.
 * Also dropped: the warning that its NPU accelerator could not be registered, which the WASM build prints
 * on every environment it creates in Node (the doctor says hardware delegates are not reachable).
 */
function stderrLine(...args: unknown[]): void {
  const line = args.map(String).join(' ');
  if (line.startsWith('INFO: ') || /NPU accelerator could not be loaded and registered/.test(line)) return;
  process.stderr.write(`[litert] ${line}\n`);
}

/**
 * Runs `fn` with `self`/`importScripts` defined as LiteRT.js's loader needs them in Node, then puts back
 * whatever was there before (see the header).
 */
async function withLoaderShims<T>(fn: () => Promise<T>): Promise<T> {
  const g = globalThis as Record<string, unknown>;
  const names = ['self', 'importScripts', 'Module'] as const;
  const saved = names.map((n) => [n, Object.getOwnPropertyDescriptor(g, n)] as const);
  g.self = g;
  g.importScripts = (url: string | URL): void => {
    const file = url instanceof URL ? url.pathname : url.replace(/^file:\/\//, '');
    const code = readFileSync(file, 'utf8');
    // Function scope: the script's `require`/`__dirname`/`__filename` are parameters, not globals.
    const wrap = vm.runInThisContext(`(function (require, __dirname, __filename) {${code}\n;return ModuleFactory;})`, { filename: file }) as (
      r: NodeRequire,
      d: string,
      f: string,
    ) => unknown;
    g.ModuleFactory = wrap(createRequire(file), path.dirname(file), file);
  };
  // The loader passes self.Module to the factory: our print hooks (LiteRT's INFO lines go to stderr).
  g.Module = { print: stderrLine, printErr: stderrLine };
  // loadLiteRt() also creates a default environment and tries WebGPU on the way (`navigator.gpu`), then
  // console.warns a ReferenceError in Node; the doctor reports webgpu as unavailable with its reason.
  const warn = console.warn;
  console.warn = (...args: unknown[]): void => {
    if (typeof args[0] === 'string' && args[0].startsWith('Failed to create default WebGPU device')) return;
    warn(...args);
  };
  try {
    return await fn();
  } finally {
    console.warn = warn;
    for (const [n, d] of saved) {
      if (d) Object.defineProperty(g, n, d);
      else delete g[n];
    }
    delete g.ModuleFactory;
  }
}

let loading: Promise<Loaded> | undefined;

/** Loads LiteRT.js once per process (it keeps one global WASM module). A failure is retried next call. */
export function loadLiteRtInNode(): Promise<Loaded> {
  loading ??= (async () => {
    const lr = await import('@litertjs/core');
    const dir = path.join(litertPackageDir(), 'wasm');
    const relaxedSimd = await lr.supportsFeature('relaxedSimd');
    // Single-threaded builds only: the threaded one needs relaxed SIMD and Web Workers.
    const file = relaxedSimd ? 'litert_wasm_internal.js' : 'litert_wasm_compat_internal.js';
    const existing = lr.getGlobalLiteRtPromise();
    if (existing) await existing;
    else await withLoaderShims(() => lr.loadLiteRt(path.join(dir, file)));
    const pkg = JSON.parse(readFileSync(path.join(litertPackageDir(), 'package.json'), 'utf8')) as { version: string };
    return { lr, build: { file, relaxedSimd, threads: false }, version: pkg.version };
  })();
  loading.catch(() => {
    loading = undefined;
  });
  return loading;
}

class TfliteSession implements InferenceSessionHandle {
  readonly runtime = 'tflite';
  private disposed = false;
  private readonly inDims: number[];
  /** Runs one at a time: a batch is several invokes of the one compiled model, never interleaved. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly lr: LiteRt,
    private readonly model: CompiledModel,
    readonly provider: string,
    readonly attempts: ProviderAttempt[],
    readonly inputName: string,
    readonly outputName: string,
    private readonly inputIndex: number,
    private readonly outputIndex: number,
  ) {
    this.inDims = Array.from(model.getInputDetails()[inputIndex]?.shape ?? []);
  }

  run(input: Float32Array, shape: number[]): Promise<{ data: Float32Array; shape: number[] }> {
    const next = this.queue.then(() => this.runNow(input, shape));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async runNow(input: Float32Array, shape: number[]): Promise<{ data: Float32Array; shape: number[] }> {
    if (this.disposed) throw new Error('tflite session was disposed');
    assertInputFitsShape(input, shape);
    const modelBatch = this.inDims[0] ?? 1;
    const sameTail = shape.length === this.inDims.length && shape.slice(1).every((d, i) => d === this.inDims[i + 1]);
    if (!sameTail || !(shape[0] === modelBatch || modelBatch === 1)) {
      throw new Error(`input shape [${shape.join(', ')}] does not fit the model input [${this.inDims.join(', ')}]`);
    }
    const runs = shape[0] === modelBatch ? 1 : (shape[0] ?? 1);
    const per = elementCount(this.inDims);
    const parts: Float32Array[] = [];
    let outShape: number[] = [];
    for (let r = 0; r < runs; r++) {
      const slice = runs === 1 ? input : input.subarray(r * per, (r + 1) * per);
      const t = new this.lr.Tensor(slice, runs === 1 ? shape : this.inDims);
      let outs: LiteRtTypes.Tensor[] = [];
      try {
        outs = await this.model.run([t]);
        const o = outs[this.outputIndex];
        if (!o) throw new Error(`model produced no output #${this.outputIndex} ('${this.outputName}')`);
        if (o.type.dtype !== 'float32') throw new Error(`output '${this.outputName}' is ${o.type.dtype}, expected float32`);
        parts.push(new Float32Array(o.toTypedArray() as Float32Array));
        outShape = Array.from(o.type.layout.dimensions);
      } finally {
        t.delete();
        for (const o of outs) o.delete();
      }
    }
    if (runs === 1) return { data: parts[0] as Float32Array, shape: outShape };
    const data = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) {
      data.set(p, off);
      off += p.length;
    }
    return { data, shape: [runs * (outShape[0] ?? 1), ...outShape.slice(1)] };
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue; // a run in flight finishes before the model's memory goes
    this.model.delete();
  }
}

export interface TfliteLoadExtras {
  /** Signature input/output to bind (defaults: the first). From the manifest's input/output spec. */
  inputName?: string;
  outputName?: string;
}

export interface TfliteAcceleratorReport {
  name: string;
  available: boolean;
  reason?: string;
  detail?: string;
}

export class TfliteRuntime implements Runtime {
  readonly type = 'tflite';

  constructor(private readonly loader: () => Promise<Loaded> = loadLiteRtInNode) {}

  /** Available when LiteRT.js's WASM module loads. Never throws. */
  async probe(): Promise<{ available: boolean; reason?: string; version?: string }> {
    try {
      const { version } = await this.loader();
      return { available: true, version };
    } catch (e) {
      return { available: false, reason: `@litertjs/core failed to load: ${errorReason(e)}` };
    }
  }

  /** What each LiteRT.js accelerator does here (doctor). Never throws. */
  async accelerators(): Promise<TfliteAcceleratorReport[]> {
    let loaded: Loaded;
    try {
      loaded = await this.loader();
    } catch (e) {
      const reason = `@litertjs/core failed to load: ${errorReason(e)}`;
      return ['wasm', 'webgpu', 'webnn'].map((name) => ({ name, available: false, reason }));
    }
    const b = loaded.build;
    return [
      {
        name: 'wasm',
        available: true,
        detail: `XNNPACK on the CPU, ${b.file.replace(/\.js$/, '')} build (SIMD yes, relaxed SIMD ${b.relaxedSimd ? 'yes' : 'no'}, threads no)`,
      },
      {
        name: 'webgpu',
        available: false,
        reason: loaded.lr.isWebGPUSupported() ? 'navigator.gpu exists but no adapter was requested' : 'no WebGPU in Node (navigator.gpu is undefined)',
      },
      { name: 'webnn', available: false, reason: 'WebNN is a browser API (navigator.ml); Node has none' },
    ];
  }

  async load(modelPath: string, options: RuntimeLoadOptions, extras: TfliteLoadExtras = {}): Promise<InferenceSessionHandle> {
    const { lr } = await this.loader();
    const bytes = new Uint8Array(await readFile(modelPath));
    const { plan, unsupported } = acceleratorPlan(options.providers);
    const attempts: ProviderAttempt[] = unsupported.map((p) => ({
      provider: p,
      ok: false,
      reason: `no LiteRT.js accelerator for '${p}' (${HARDWARE_DELEGATES_NOTE})`,
    }));
    for (const acc of plan) {
      if (acc === 'webgpu' && !lr.isWebGPUSupported()) {
        attempts.push({ provider: 'webgpu', ok: false, reason: 'no WebGPU in Node (navigator.gpu is undefined)' });
        continue;
      }
      let model: CompiledModel;
      try {
        model = await lr.loadAndCompile(bytes, { accelerator: acc });
      } catch (e) {
        attempts.push({ provider: acc, ok: false, reason: `model did not load: ${errorReason(e)}` });
        continue;
      }
      const inputs = model.getInputDetails();
      const outputs = model.getOutputDetails();
      const inIdx = extras.inputName ? inputs.findIndex((d) => d.name === extras.inputName) : 0;
      const outIdx = extras.outputName ? outputs.findIndex((d) => d.name === extras.outputName) : 0;
      const inDetail = inputs[inIdx];
      const outDetail = outputs[outIdx];
      if (inputs.length !== 1 || !inDetail || !outDetail) {
        model.delete();
        throw new Error(
          `model ${modelPath} has inputs [${inputs.map((d) => d.name).join(', ')}] and outputs [${outputs.map((d) => d.name).join(', ')}]; ` +
            `expected one input '${extras.inputName ?? '(first)'}' and output '${extras.outputName ?? '(first)'}'`,
        );
      }
      if (inDetail.dtype !== 'float32' || outDetail.dtype !== 'float32') {
        model.delete();
        throw new Error(
          `model ${modelPath} has a ${inDetail.dtype} input and a ${outDetail.dtype} output; this runtime feeds and reads float32 ` +
            '(quantize inside the model: float input, QUANTIZE/DEQUANTIZE at the edges)',
        );
      }
      attempts.push({ provider: acc, ok: true });
      return new TfliteSession(lr, model, acc, attempts, inDetail.name, outDetail.name, inIdx, outIdx);
    }
    const detail = attempts.map((a) => `${a.provider}: ${a.reason ?? 'failed'}`).join('; ');
    throw new Error(`LiteRT.js could not load ${modelPath} (${detail})`);
  }
}
