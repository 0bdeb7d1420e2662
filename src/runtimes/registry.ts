/**
 * Runtimes keyed by `type` ('onnx', 'tfjs', 'tflite'). Creating or probing a
 * runtime never throws: a native module that fails to import (missing binary, wrong ABI) is reported as
 * unavailable with its reason, and the agent picks another runtime or refuses the model with that reason.
 */
import { OnnxRuntime } from './onnx.js';
import { TfjsRuntime } from './tfjs.js';
import { TfliteRuntime } from './tflite.js';
import type { Runtime } from './types.js';

/** Builds a runtime object. Must not import native modules itself: that happens in probe()/load(). */
export type RuntimeFactory = () => Runtime;

export interface RuntimeProbe {
  type: string;
  available: boolean;
  reason?: string;
  version?: string;
}

function reasonOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class RuntimeRegistry {
  private readonly factories = new Map<string, RuntimeFactory>();
  private readonly instances = new Map<string, Runtime>();

  register(type: string, factory: RuntimeFactory): this {
    this.factories.set(type, factory);
    this.instances.delete(type);
    return this;
  }

  types(): string[] {
    return [...this.factories.keys()];
  }

  has(type: string): boolean {
    return this.factories.has(type);
  }

  /** The runtime for `type`; throws (naming the registered types) for an unregistered type. */
  get(type: string): Runtime {
    const factory = this.factories.get(type);
    if (!factory) throw new Error(`unknown runtime '${type}' (registered: ${this.types().join(', ') || 'none'})`);
    let inst = this.instances.get(type);
    if (!inst) {
      inst = factory();
      this.instances.set(type, inst);
    }
    return inst;
  }

  /** Probes one runtime. Never throws. */
  async probe(type: string): Promise<RuntimeProbe> {
    if (!this.factories.has(type)) {
      return { type, available: false, reason: `unknown runtime '${type}' (registered: ${this.types().join(', ') || 'none'})` };
    }
    try {
      const rt = this.get(type);
      const p = await rt.probe();
      return { type, ...p };
    } catch (e) {
      return { type, available: false, reason: `runtime '${type}' failed to load: ${reasonOf(e)}` };
    }
  }

  /** Probes every registered runtime. Never throws. */
  async probeAll(): Promise<RuntimeProbe[]> {
    return Promise.all(this.types().map((t) => this.probe(t)));
  }
}

/** The registry with every runtime this build knows. */
export function defaultRegistry(): RuntimeRegistry {
  return new RuntimeRegistry()
    .register('onnx', () => new OnnxRuntime())
    .register('tfjs', () => new TfjsRuntime())
    .register('tflite', () => new TfliteRuntime());
}

let shared: RuntimeRegistry | undefined;
/** The process-wide registry (default runtimes). */
export function runtimeRegistry(): RuntimeRegistry {
  shared ??= defaultRegistry();
  return shared;
}

/** Shorthand for runtimeRegistry().get(type). */
export function getRuntime(type: string): Runtime {
  return runtimeRegistry().get(type);
}
