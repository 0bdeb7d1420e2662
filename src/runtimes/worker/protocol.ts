/**
 * Messages between the supervisor (main event loop) and an inference worker (a child process or a
 * worker thread running ./entry.ts). Both directions carry typed, plain values only: float32 tensors
 * travel as Float32Array (structured clone / V8 serializer: `fork(..., { serialization: 'advanced' })`
 * for processes, transferred ArrayBuffers for threads), never as JSON.
 */
import type { ProviderAttempt, RuntimeLoadOptions } from '../types.js';

/** What a worker loads: a runtime from the registry by `type`, a model file and the runtime's options. */
export interface WorkerSpec {
  runtime: string;
  modelPath: string;
  options: RuntimeLoadOptions;
  /** Runtime-specific extras passed as load()'s third argument (e.g. onnx inputName/outputName). */
  extras?: Record<string, unknown>;
}

/** The worker's own view of its memory, reported with every answer (bytes). */
export interface MemoryReport {
  rss: number;
  heapUsed: number;
  external: number;
}

export type ToWorker =
  | { type: 'load'; spec: WorkerSpec }
  | { type: 'run'; id: number; input: Float32Array; shape: number[] }
  | { type: 'dispose' };

export type FromWorker =
  | {
      type: 'loaded';
      runtime: string;
      provider: string;
      attempts: ProviderAttempt[];
      inputName: string;
      outputName: string;
      memory: MemoryReport;
    }
  | { type: 'load-error'; message: string }
  | { type: 'result'; id: number; data: Float32Array; shape: number[]; memory: MemoryReport }
  | { type: 'error'; id: number; message: string }
  | { type: 'disposed' };

const FROM_WORKER_TYPES = new Set(['loaded', 'load-error', 'result', 'error', 'disposed']);

/** Narrows a message from a worker (our own code, but a crashed or foreign child must not confuse us). */
export function isFromWorker(m: unknown): m is FromWorker {
  return typeof m === 'object' && m !== null && FROM_WORKER_TYPES.has((m as { type?: unknown }).type as string);
}

/**
 * TEST-ONLY fault hook (see entry.ts). Inert unless the worker's environment has
 * `EDGE_AGENT_TEST_FAULTS=1`: then an input whose first value is FAULT_SENTINEL triggers the fault
 * named by its second value. Its third value is 0 for "every time", or a token k > 0 for "only the
 * first time token k is seen" (state kept as files in `EDGE_AGENT_TEST_FAULTS_DIR`, default the OS
 * temp dir, so it survives the worker's restart).
 */
export const FAULT_ENV = 'EDGE_AGENT_TEST_FAULTS';
export const FAULT_DIR_ENV = 'EDGE_AGENT_TEST_FAULTS_DIR';
/**
 * A whole runtime that crashes (tests of the fallback to the next runtime): while a file with this name
 * + the runtime type (e.g. `edge-agent-crash-runtime-onnx`) exists in the fault dir, every call in a
 * worker of that runtime aborts, zero inputs included. Inert without EDGE_AGENT_TEST_FAULTS=1.
 */
export const CRASH_RUNTIME_PREFIX = 'edge-agent-crash-runtime-';
/** Exactly representable in float32 and far outside any normalised image value. */
export const FAULT_SENTINEL = -77777;
export const FaultKind = {
  /** process.abort() (SIGABRT on the process in a thread): a real native-style crash. */
  abort: 1,
  /** Spins the worker's event loop forever (a hang the worker cannot report). */
  hang: 2,
  /** Allocates 200 MB, touches it and keeps it (a leak), then answers normally. */
  leak: 3,
} as const;
export type FaultName = keyof typeof FaultKind;

/** Writes the fault marker into the first values of `input` (tests and benches). */
export function markFault(input: Float32Array, fault: FaultName, onceToken = 0): Float32Array {
  input[0] = FAULT_SENTINEL;
  input[1] = FaultKind[fault];
  input[2] = onceToken;
  return input;
}
