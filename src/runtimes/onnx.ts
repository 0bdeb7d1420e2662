/**
 * ONNX Runtime (onnxruntime-node) implementation of Runtime.
 *
 * Execution providers are tried ONE AT A TIME in preference order: onnxruntime-node does not fall back
 * inside one session (['webgpu','cpu'] throws when there is no adapter; 'cuda' throws "Failed to load
 * shared library" without the provider libs). Each failure is recorded in `attempts` with its reason;
 * 'cpu' is always the last resort (appended when absent).
 */
import { createRequire } from 'node:module';
import type * as OrtTypes from 'onnxruntime-node';
import type { InferenceSessionHandle, ProviderAttempt, Runtime, RuntimeLoadOptions } from './types.js';
import { assertInputFitsShape } from './tensor.js';

type Ort = typeof OrtTypes;

/** Friendly provider names (device configs) -> ORT execution provider names. */
export const ORT_PROVIDER_NAMES: Readonly<Record<string, string>> = {
  cpu: 'cpu',
  cuda: 'cuda',
  gpu: 'cuda',
  tensorrt: 'tensorrt',
  trt: 'tensorrt',
  webgpu: 'webgpu',
  dml: 'dml',
  directml: 'dml',
  coreml: 'coreml',
  xnnpack: 'xnnpack',
  openvino: 'openvino',
  qnn: 'qnn',
  nnapi: 'nnapi',
  rocm: 'rocm',
  migraphx: 'migraphx',
  cann: 'cann',
  acl: 'acl',
  armnn: 'armnn',
  webnn: 'webnn',
};

/** Maps a friendly name to the ORT EP name; unknown names are passed through lower-cased (ORT reports them). */
export function ortProviderName(name: string): string {
  const key = name.trim().toLowerCase();
  return ORT_PROVIDER_NAMES[key] ?? key;
}

/** Provider order actually tried: mapped, de-duplicated, 'cpu' last (appended if absent). */
export function providerPlan(providers: readonly string[]): string[] {
  const plan: string[] = [];
  for (const p of providers) {
    const ep = ortProviderName(p);
    if (ep && !plan.includes(ep)) plan.push(ep);
  }
  const cpu = plan.indexOf('cpu');
  if (cpu >= 0) plan.splice(cpu, 1);
  plan.push('cpu');
  return plan;
}

function errorReason(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  // ORT messages can be multi-line with long native paths; keep the first meaningful line(s) short.
  const oneLine = msg.replace(/\s+/g, ' ').trim();
  return oneLine.length > 500 ? `${oneLine.slice(0, 497)}...` : oneLine;
}

let ortPromise: Promise<Ort> | undefined;
/** Loads onnxruntime-node once (lazily, so a broken native module is reported by probe, not at import). */
export function loadOrt(): Promise<Ort> {
  // createRequire inside a promise: a native module that fails to load becomes a rejected promise
  ortPromise ??= Promise.resolve().then(() => createRequire(import.meta.url)('onnxruntime-node') as Ort);
  return ortPromise;
}

class OnnxSession implements InferenceSessionHandle {
  readonly runtime = 'onnx';
  private disposed = false;

  constructor(
    private readonly ort: Ort,
    private readonly session: OrtTypes.InferenceSession,
    readonly provider: string,
    readonly attempts: ProviderAttempt[],
    readonly inputName: string,
    readonly outputName: string,
  ) {}

  async run(input: Float32Array, shape: number[]): Promise<{ data: Float32Array; shape: number[] }> {
    if (this.disposed) throw new Error('onnx session was disposed');
    assertInputFitsShape(input, shape);
    const tensor = new this.ort.Tensor('float32', input, shape);
    const out = await this.session.run({ [this.inputName]: tensor }, [this.outputName]);
    const t = out[this.outputName];
    if (!t) throw new Error(`model produced no output named '${this.outputName}'`);
    if (t.type !== 'float32') throw new Error(`output '${this.outputName}' is ${t.type}, expected float32`);
    return { data: t.data as Float32Array, shape: [...t.dims] };
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.session.release();
  }
}

export interface OnnxLoadExtras {
  /** Graph input/output to bind (defaults: the model's first input/output). From the manifest's input/output spec. */
  inputName?: string;
  outputName?: string;
}

export class OnnxRuntime implements Runtime {
  readonly type = 'onnx';

  constructor(private readonly loader: () => Promise<Ort> = loadOrt) {}

  async probe(): Promise<{ available: boolean; reason?: string; version?: string }> {
    try {
      const ort = await this.loader();
      const version = ort.env.versions.node ?? ort.env.versions.common;
      return version ? { available: true, version } : { available: true };
    } catch (e) {
      return { available: false, reason: `onnxruntime-node failed to load: ${errorReason(e)}` };
    }
  }

  /** Execution providers this build ships (bundled ones load without extra libraries). */
  async supportedProviders(): Promise<{ name: string; bundled: boolean }[]> {
    const ort = (await this.loader()) as Ort & { listSupportedBackends?: () => { name: string; bundled: boolean }[] };
    return ort.listSupportedBackends ? ort.listSupportedBackends() : [{ name: 'cpu', bundled: true }];
  }

  async load(modelPath: string, options: RuntimeLoadOptions, extras: OnnxLoadExtras = {}): Promise<InferenceSessionHandle> {
    const ort = await this.loader();
    const attempts: ProviderAttempt[] = [];
    for (const ep of providerPlan(options.providers)) {
      const sessionOptions: OrtTypes.InferenceSession.SessionOptions = {
        executionProviders: [ep],
        graphOptimizationLevel: options.graphOptimization,
        intraOpNumThreads: options.intraOpThreads,
        interOpNumThreads: options.interOpThreads,
        executionMode: options.interOpThreads > 1 ? 'parallel' : 'sequential',
      };
      let session: OrtTypes.InferenceSession;
      try {
        session = await ort.InferenceSession.create(modelPath, sessionOptions);
      } catch (e) {
        attempts.push({ provider: ep, ok: false, reason: errorReason(e) });
        continue;
      }
      attempts.push({ provider: ep, ok: true });
      const inputName = extras.inputName ?? session.inputNames[0];
      const outputName = extras.outputName ?? session.outputNames[0];
      if (!inputName || !session.inputNames.includes(inputName) || !outputName || !session.outputNames.includes(outputName)) {
        await session.release();
        throw new Error(
          `model ${modelPath} has inputs [${session.inputNames.join(', ')}] and outputs [${session.outputNames.join(', ')}]; ` +
            `expected input '${extras.inputName ?? '(first)'}' and output '${extras.outputName ?? '(first)'}'`,
        );
      }
      return new OnnxSession(ort, session, ep, attempts, inputName, outputName);
    }
    const detail = attempts.map((a) => `${a.provider}: ${a.reason ?? 'failed'}`).join('; ');
    throw new Error(`no execution provider could load ${modelPath} (${detail})`);
  }
}

/** Runs `n` inferences on zero input so the first real capture does not pay for lazy init / allocation. */
export async function warmUp(session: InferenceSessionHandle, shape: number[], n = 3): Promise<number[]> {
  const size = shape.reduce((a, b) => a * b, 1);
  const input = new Float32Array(size);
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await session.run(input, shape);
    times.push(performance.now() - t0);
  }
  return times;
}
