/**
 * TensorFlow.js implementation of Runtime: TF.js graph models (model.json with GraphDef-style nodes +
 * weightsManifest + binary weight files, e.g. from models/training/to_tfjs.py).
 *
 * Backends, tried ONE AT A TIME like ORT's providers, each failure recorded in `attempts` with its reason:
 *   1. `tfjs-node`: @tensorflow/tfjs-node (libtensorflow, native). An optionalDependency: its install
 *      downloads libtensorflow from outside the npm registry, so on most boxes it is simply absent.
 *   2. `wasm`: @tensorflow/tfjs-backend-wasm (XNNPACK kernels, SIMD when the engine has it). Threads are
 *      disabled in Node by the library itself (IS_NODE), so it is single-threaded here.
 *   3. `cpu`: the pure-JS backend that ships inside @tensorflow/tfjs (10-30x slower than wasm).
 * The session's `provider` is the backend in use ('tfjs-node' | 'wasm' | 'cpu'), so every result's
 * `model.provider` reports it.
 *
 * Requested providers: TF.js backend names ('tfjs-node', 'tfjs-node-gpu', 'wasm', 'cpu'/'tfjs-cpu')
 * are tried first in the order given. The device config's ORT-style names are mapped where TF.js has a
 * counterpart ('cuda'/'gpu' -> 'tfjs-node-gpu', 'webgpu' -> the webgpu backend, 'xnnpack' -> 'wasm');
 * 'cpu' there means "the CPU as last resort" and does not move TF.js's slow cpu backend forward. Other
 * names are recorded as attempts that failed with "no TF.js backend". The default chain
 * tfjs-node -> wasm -> cpu always follows.
 *
 * TF.js keeps one global active backend per process (or worker thread); each session re-selects its own
 * backend before running in case another session in the same process switched it.
 */
import { createRequire } from 'node:module';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type * as TfTypes from '@tensorflow/tfjs';
import type { InferenceSessionHandle, ProviderAttempt, Runtime, RuntimeLoadOptions } from './types.js';
import { assertInputFitsShape } from './tensor.js';

type Tf = typeof TfTypes;
type GraphModel = TfTypes.GraphModel;

const require = createRequire(import.meta.url);

/** TF.js backends this runtime knows, in default preference order. */
export const TFJS_DEFAULT_BACKENDS = ['tfjs-node', 'wasm', 'cpu'] as const;

interface BackendDef {
  /** Name TF.js registers the backend under. */
  tfName: string;
  /** npm package that provides it ('' = built into @tensorflow/tfjs). */
  pkg: string;
}

const BACKENDS: Readonly<Record<string, BackendDef>> = {
  'tfjs-node': { tfName: 'tensorflow', pkg: '@tensorflow/tfjs-node' },
  'tfjs-node-gpu': { tfName: 'tensorflow', pkg: '@tensorflow/tfjs-node-gpu' },
  wasm: { tfName: 'wasm', pkg: '@tensorflow/tfjs-backend-wasm' },
  webgpu: { tfName: 'webgpu', pkg: '@tensorflow/tfjs-backend-webgpu' },
  cpu: { tfName: 'cpu', pkg: '' },
};

/** Config/provider names -> TF.js backend names (see the header); undefined = no TF.js counterpart. */
const ALIASES: Readonly<Record<string, string>> = {
  'tfjs-node': 'tfjs-node',
  node: 'tfjs-node',
  tensorflow: 'tfjs-node',
  'tfjs-node-gpu': 'tfjs-node-gpu',
  cuda: 'tfjs-node-gpu',
  gpu: 'tfjs-node-gpu',
  wasm: 'wasm',
  xnnpack: 'wasm',
  webgpu: 'webgpu',
  'tfjs-cpu': 'cpu',
};

/** Backend order actually tried, plus the requested names TF.js cannot serve (recorded as failed attempts). */
export function backendPlan(providers: readonly string[]): { plan: string[]; unsupported: string[] } {
  const plan: string[] = [];
  const unsupported: string[] = [];
  for (const p of providers) {
    const key = p.trim().toLowerCase();
    if (key === 'cpu') continue; // ORT's "cpu as last resort": the default chain ends with it anyway
    const b = ALIASES[key];
    if (!b) {
      if (!unsupported.includes(key)) unsupported.push(key);
    } else if (!plan.includes(b)) plan.push(b);
  }
  for (const b of TFJS_DEFAULT_BACKENDS) if (!plan.includes(b)) plan.push(b);
  return { plan, unsupported };
}

function errorReason(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const oneLine = msg.replace(/\s+/g, ' ').trim();
  return oneLine.length > 300 ? `${oneLine.slice(0, 297)}...` : oneLine;
}

function isModuleMissing(e: unknown, pkg: string): boolean {
  const err = e as NodeJS.ErrnoException;
  return (err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND') && errorReason(e).includes(pkg);
}

let tfPromise: Promise<Tf> | undefined;
/** Loads @tensorflow/tfjs once, lazily (a broken install is reported by probe, not at import). */
export function loadTf(): Promise<Tf> {
  tfPromise ??= Promise.resolve().then(() => {
    const tf = require('@tensorflow/tfjs') as Tf;
    // PROD: no debug checks, and no console banners ("install tfjs-node to speed things up"): the
    // doctor and the result's provider say which backend runs, in our own words and not on stdout.
    tf.env().set('PROD', true);
    return tf;
  });
  return tfPromise;
}

const initialised = new Map<string, Promise<void>>();

/** Makes `backend` available and active, or throws with the reason it cannot be. Never leaves a half-set backend active. */
async function activate(tf: Tf, backend: string): Promise<void> {
  const def = BACKENDS[backend];
  if (!def) throw new Error(`no TF.js backend named '${backend}'`);
  let init = initialised.get(backend);
  if (!init) {
    init = Promise.resolve().then(() => {
      if (def.pkg) {
        let mod: Record<string, unknown>;
        try {
          mod = require(def.pkg) as Record<string, unknown>;
        } catch (e) {
          if (isModuleMissing(e, def.pkg)) {
            const why =
              backend === 'tfjs-node'
                ? `${def.pkg} is not installed (optional dependency: its install downloads libtensorflow from storage.googleapis.com, which failed or was skipped on this machine)`
                : backend === 'tfjs-node-gpu'
                  ? `${def.pkg} is not installed (not a dependency of the agent: install it on a box with CUDA; its install also downloads libtensorflow)`
                  : `${def.pkg} is not installed`;
            throw new Error(why);
          }
          throw new Error(`${def.pkg} failed to load: ${errorReason(e)}`);
        }
        if (backend === 'wasm') {
          const setWasmPaths = mod.setWasmPaths as (prefix: string) => void;
          // The .wasm binaries sit next to the package's main file (dist/); Node has no URL to fetch them from.
          setWasmPaths(path.dirname(require.resolve(def.pkg)) + path.sep);
        }
      }
      if (!tf.findBackendFactory(def.tfName)) throw new Error(`${def.pkg || '@tensorflow/tfjs'} did not register a '${def.tfName}' backend`);
    });
    initialised.set(backend, init);
  }
  try {
    await init;
  } catch (e) {
    initialised.delete(backend); // try again next time (e.g. a package installed since)
    throw e;
  }
  // setBackend() resolves false (after a console warning) when the backend's initialisation fails.
  const ok = await tf.setBackend(def.tfName);
  if (!ok || tf.getBackend() !== def.tfName) throw new Error(`the '${def.tfName}' backend failed to initialise`);
  await tf.ready();
}

export interface TfjsBackendReport {
  name: string;
  available: boolean;
  reason?: string;
  /** e.g. "SIMD yes, threads no (disabled in Node by the library)". */
  detail?: string;
}

/** Whether the wasm engine here validates SIMD (the flag TF.js itself uses to pick its SIMD build). */
async function wasmDetail(tf: Tf): Promise<string> {
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const threads = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
  return `SIMD ${simd ? 'yes' : 'no'}, threads ${threads ? 'yes' : 'no (disabled in Node by the library)'}`;
}

class TfjsSession implements InferenceSessionHandle {
  readonly runtime = 'tfjs';
  private disposed = false;

  constructor(
    private readonly tf: Tf,
    private readonly model: GraphModel,
    readonly provider: string,
    readonly attempts: ProviderAttempt[],
    readonly inputName: string,
    readonly outputName: string,
  ) {}

  async run(input: Float32Array, shape: number[]): Promise<{ data: Float32Array; shape: number[] }> {
    if (this.disposed) throw new Error('tfjs session was disposed');
    assertInputFitsShape(input, shape);
    const tf = this.tf;
    const backend = BACKENDS[this.provider]?.tfName ?? this.provider;
    if (tf.getBackend() !== backend) await activate(tf, this.provider);
    const x = tf.tensor(input, shape, 'float32');
    let y: TfTypes.Tensor | undefined;
    try {
      try {
        y = this.model.execute({ [this.inputName]: x }, this.outputName) as TfTypes.Tensor;
      } catch (e) {
        // Graphs with dynamic control flow only run asynchronously.
        if (!/executeAsync/.test(errorReason(e))) throw e;
        y = (await this.model.executeAsync({ [this.inputName]: x }, this.outputName)) as TfTypes.Tensor;
      }
      if (y.dtype !== 'float32') throw new Error(`output '${this.outputName}' is ${y.dtype}, expected float32`);
      const data = (await y.data()) as Float32Array;
      return { data, shape: [...y.shape] };
    } finally {
      x.dispose();
      y?.dispose();
    }
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.model.dispose();
    await Promise.resolve();
  }
}

export interface TfjsLoadExtras {
  /** Graph input/output to bind (defaults: the model's first input/output). From the manifest's input/output spec. */
  inputName?: string;
  outputName?: string;
}

interface ModelJson {
  format?: string;
  modelTopology?: unknown;
  weightsManifest?: { paths: string[]; weights: TfTypes.io.WeightsManifestEntry[] }[];
  signature?: unknown;
  userDefinedMetadata?: Record<string, unknown>;
  modelInitializer?: unknown;
}

/**
 * Reads model.json and its weight files into ModelArtifacts. Weight paths must be plain relative names
 * inside model.json's folder (a bundle lists and hash-checks each of them; nothing outside is read).
 */
export async function readGraphModelArtifacts(modelJsonPath: string): Promise<TfTypes.io.ModelArtifacts> {
  let json: ModelJson;
  try {
    json = JSON.parse(await readFile(modelJsonPath, 'utf8')) as ModelJson;
  } catch (e) {
    throw new Error(`${modelJsonPath} is not a readable TF.js model.json: ${errorReason(e)}`);
  }
  if (json.format !== undefined && json.format !== 'graph-model') {
    throw new Error(`${modelJsonPath} is a TF.js '${json.format}'; this runtime loads graph models ('graph-model')`);
  }
  if (!json.modelTopology || !Array.isArray(json.weightsManifest)) {
    throw new Error(`${modelJsonPath} has no modelTopology or weightsManifest`);
  }
  const dir = path.dirname(modelJsonPath);
  const specs: TfTypes.io.WeightsManifestEntry[] = [];
  const buffers: Buffer[] = [];
  for (const group of json.weightsManifest) {
    for (const p of group.paths) {
      if (p.includes('\\') || p.includes('\0') || path.posix.isAbsolute(p) || p.split('/').some((s) => s === '..' || s === '')) {
        throw new Error(`${modelJsonPath}: weight path '${p}' must be a relative path inside the model folder`);
      }
      buffers.push(await readFile(path.join(dir, p)));
    }
    specs.push(...group.weights);
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const artifacts: TfTypes.io.ModelArtifacts = {
    format: 'graph-model',
    modelTopology: json.modelTopology,
    weightSpecs: specs,
    weightData,
  };
  if (json.signature) artifacts.signature = json.signature;
  if (json.userDefinedMetadata) artifacts.userDefinedMetadata = json.userDefinedMetadata as Record<string, object>;
  if (json.modelInitializer) artifacts.modelInitializer = json.modelInitializer;
  return artifacts;
}

export class TfjsRuntime implements Runtime {
  readonly type = 'tfjs';

  constructor(private readonly loader: () => Promise<Tf> = loadTf) {}

  /** Available when @tensorflow/tfjs loads and at least one backend initialises. Never throws. */
  async probe(): Promise<{ available: boolean; reason?: string; version?: string }> {
    let tf: Tf;
    try {
      tf = await this.loader();
    } catch (e) {
      return { available: false, reason: `@tensorflow/tfjs failed to load: ${errorReason(e)}` };
    }
    const reports = await this.backends();
    const first = reports.find((r) => r.available);
    if (!first) return { available: false, reason: reports.map((r) => `${r.name}: ${r.reason ?? 'unavailable'}`).join('; '), version: tf.version_core };
    return { available: true, version: tf.version_core };
  }

  /** Tries every known backend (default order plus tfjs-node-gpu/webgpu) and says which ones work here. Never throws. */
  async backends(): Promise<TfjsBackendReport[]> {
    let tf: Tf;
    try {
      tf = await this.loader();
    } catch (e) {
      const reason = `@tensorflow/tfjs failed to load: ${errorReason(e)}`;
      return Object.keys(BACKENDS).map((name) => ({ name, available: false, reason }));
    }
    const before = tf.getBackend() as string | undefined;
    const out: TfjsBackendReport[] = [];
    for (const name of ['tfjs-node', 'tfjs-node-gpu', 'wasm', 'webgpu', 'cpu']) {
      try {
        await activate(tf, name);
        const r: TfjsBackendReport = { name, available: true };
        if (name === 'wasm') r.detail = await wasmDetail(tf);
        if (name === 'cpu') r.detail = 'pure JavaScript, 10-30x slower than wasm';
        out.push(r);
      } catch (e) {
        out.push({ name, available: false, reason: errorReason(e) });
      }
    }
    if (before && tf.getBackend() !== before) await tf.setBackend(before).catch(() => false);
    return out;
  }

  async load(modelPath: string, options: RuntimeLoadOptions, extras: TfjsLoadExtras = {}): Promise<InferenceSessionHandle> {
    const tf = await this.loader();
    const artifacts = await readGraphModelArtifacts(modelPath);
    const { plan, unsupported } = backendPlan(options.providers);
    const attempts: ProviderAttempt[] = unsupported.map((p) => ({ provider: p, ok: false, reason: `no TF.js backend for execution provider '${p}'` }));
    for (const backend of plan) {
      try {
        await activate(tf, backend);
      } catch (e) {
        attempts.push({ provider: backend, ok: false, reason: errorReason(e) });
        continue;
      }
      // Weights are uploaded to the active backend, so the model is loaded once the backend is settled.
      let model: GraphModel;
      try {
        model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
      } catch (e) {
        attempts.push({ provider: backend, ok: false, reason: `model did not load: ${errorReason(e)}` });
        continue;
      }
      attempts.push({ provider: backend, ok: true });
      const inputs = model.inputs.map((i) => i.name);
      const outputs = model.outputs.map((o) => o.name);
      const inputName = extras.inputName ?? inputs[0];
      const outputName = extras.outputName ?? outputs[0];
      if (!inputName || !inputs.includes(inputName) || !outputName || !outputs.includes(outputName)) {
        model.dispose();
        throw new Error(
          `model ${modelPath} has inputs [${inputs.join(', ')}] and outputs [${outputs.join(', ')}]; ` +
            `expected input '${extras.inputName ?? '(first)'}' and output '${extras.outputName ?? '(first)'}'`,
        );
      }
      return new TfjsSession(tf, model, backend, attempts, inputName, outputName);
    }
    const detail = attempts.map((a) => `${a.provider}: ${a.reason ?? 'failed'}`).join('; ');
    throw new Error(`no TF.js backend could load ${modelPath} (${detail})`);
  }
}
