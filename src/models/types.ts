/**
 * Model bundle manifest (directory with manifest.json + model files). Issue 3 adds signing and
 * golden checks; this is the shape the pipeline relies on, so the pipeline holds no model-specific code.
 */
import type { WindowSpec } from '../decode/types.js';

export interface ModelInputSpec {
  /** Graph input name. */
  name: string;
  layout: 'NCHW' | 'NHWC';
  /** Full shape with batch first; batch may be -1 (dynamic). */
  shape: number[];
  dtype: 'float32';
  channels: 1 | 3;
  /** Applied after scaling to [0,1]: (x - mean[c]) / std[c]. */
  normalisation: { mean: number[]; std: number[] };
  /** stretch: resize to HxW ignoring aspect; letterbox: fit inside and pad with 0; crop: fill and centre-crop. */
  resize: 'stretch' | 'letterbox' | 'crop';
  /** Default VOI window per modality the model was trained with (device config may override). */
  windowing?: Record<string, WindowSpec>;
}

export interface ModelOutputSpec {
  name: string;
  activation: 'softmax' | 'sigmoid' | 'none';
}

export interface ModelFileEntry {
  path: string;
  format: 'onnx' | 'tflite' | 'tfjs';
  precision: 'fp32' | 'int8';
  sha256: string;
  size: number;
}

export interface Manifest {
  id: string;
  version: string;
  task: string;
  labels: string[];
  input: ModelInputSpec;
  output: ModelOutputSpec;
  files: ModelFileEntry[];
  golden?: unknown[];
  provenance?: Record<string, unknown>;
  minAgentVersion?: string;
}

export interface LoadedBundle {
  dir: string;
  manifest: Manifest;
  /** sha256 of manifest.json bytes (identifies the exact bundle). */
  manifestSha256: string;
}
