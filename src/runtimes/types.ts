/** One interface for every inference runtime (onnx today; tflite and tfjs in issue 4). */

export interface RuntimeLoadOptions {
  /** Execution providers in preference order, e.g. ['cuda','cpu']. The runtime falls back one list at a time. */
  providers: string[];
  intraOpThreads: number;
  interOpThreads: number;
  graphOptimization: 'disabled' | 'basic' | 'extended' | 'all';
}

export interface ProviderAttempt {
  provider: string;
  ok: boolean;
  reason?: string;
}

export interface InferenceSessionHandle {
  readonly runtime: string;
  /** Provider actually in use, e.g. 'cpu'. */
  readonly provider: string;
  /** What was tried before settling on `provider` (failures carry their reason). */
  readonly attempts: ProviderAttempt[];
  readonly inputName: string;
  readonly outputName: string;
  /** Runs one batch. `input` is float32 in the model's layout; returns the raw output tensor values and shape. */
  run(input: Float32Array, shape: number[]): Promise<{ data: Float32Array; shape: number[] }>;
  dispose(): Promise<void>;
}

export interface Runtime {
  readonly type: string;
  /** Whether the runtime's native module loads here; `reason` says why not. */
  probe(): Promise<{ available: boolean; reason?: string; version?: string }>;
  load(modelPath: string, options: RuntimeLoadOptions): Promise<InferenceSessionHandle>;
}
