/**
 * edge-quantize end to end: bundle in, calibrated int8 model measured against its fp32 source, gate,
 * then (only when the gate passes, or with --force) the int8 file, the activation ranges and the
 * manifest entry with provenance are written into the bundle and the manifest is re-signed.
 *
 * Nothing is written before the gate: every artefact is built in memory first. Writes go to temporary
 * files renamed into place; the manifest is re-read right before it is rewritten (other tools add their
 * own files[] entries to the same manifest) and only this tool's entry is replaced.
 */
import { createHash, createPublicKey } from 'node:crypto';
import { access, readFile, realpath, rename, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import type * as OrtTypes from 'onnxruntime-node';
import { loadBundle, selectModelFile } from '../src/models/bundle.js';
import { goldenEntries, type GoldenEntry } from '../src/models/golden.js';
import { validateManifest } from '../src/models/schema.js';
import { loadTrustedKeys, parsePrivateKey, parsePublicKey, readSignatureFile, signBundle, verifyManifestSignature } from '../src/models/signature.js';
import type { LoadedBundle, Manifest } from '../src/models/types.js';
import { collectRanges, type CalibrationInput, type CalibrationMethod, type Range } from './calibrate.js';
import { loadEvalSet, loadFrames, toInput, type EvalLayout, type SetSummary } from './dataset.js';
import { compareAccuracy, compareLatency, createSession, machineInfo, runOne, type AccuracyReport, type LatencyReport } from './evaluate.js';
import { decodeModel, encodeModel, type ModelProto } from './onnx.js';
import { createProgress, type Progress } from './progress.js';
import { planStatic, quantizeDynamic, quantizeStatic, type ActivationType, type SkippedNode } from './qdq.js';

type Ort = typeof OrtTypes;

export interface QuantizeOptions {
  bundle: string;
  calibration?: string;
  eval: string;
  evalLayout: EvalLayout;
  mode: 'static' | 'dynamic';
  method: CalibrationMethod;
  percentile: number;
  activations: ActivationType;
  keepFp32: string[];
  threads: number;
  latencyRuns: number;
  warmup: number;
  /** Largest accuracy drop accepted, in percentage points. */
  maxDropPoints: number;
  /** int8 must be at least this much faster (fp32 median / int8 median must exceed it). */
  minSpeedup: number;
  /** Smallest share of evaluation cases where int8 gives the fp32 label (0..1). */
  minAgreement: number;
  force: boolean;
  /** Private key (PEM file) to re-sign the manifest with. */
  key?: string;
  /**
   * Public keys (PEM files) besides --key's own that may have signed the input bundle. A signed input
   * is verified before anything else, so re-signing never launders a tampered manifest.
   */
  trustedKeys?: string[];
  /** Bundle-relative path of the int8 file. */
  output: string;
  /** Where the activation ranges JSON goes (default: next to the int8 file, `<output>.ranges.json`). */
  rangesOut?: string;
  /** Compute everything and report, write nothing. */
  dryRun?: boolean;
  progress?: Progress;
  log?: (line: string) => void;
}

export const DEFAULTS = {
  evalLayout: 'auto' as EvalLayout,
  mode: 'static' as const,
  method: 'minmax' as CalibrationMethod,
  percentile: 99.99,
  activations: 'uint8' as ActivationType,
  threads: 1,
  latencyRuns: 200,
  warmup: 20,
  maxDropPoints: 1,
  minSpeedup: 1,
  minAgreement: 0.98,
  output: 'model_int8.onnx',
};

export class GateError extends Error {
  constructor(
    message: string,
    readonly report: QuantizeReport,
  ) {
    super(message);
    this.name = 'GateError';
  }
}

export interface QuantizeReport {
  bundle: string;
  source: { path: string; sha256: string };
  output: { path: string; sha256: string; size: number } | null;
  mode: 'static' | 'dynamic';
  method: CalibrationMethod | null;
  activations: ActivationType | null;
  quantizedOps: Record<string, number>;
  keptFp32: Record<string, number>;
  skipped: SkippedNode[];
  calibration: (SetSummary & { inputs: number }) | null;
  evaluation: SetSummary & { layout: string } & AccuracyReport;
  latency: LatencyReport;
  goldenMaxAbsDiff: number;
  gate: { maxAccuracyDropPoints: number; minLabelAgreement: number; minSpeedup: number; passed: boolean; failures: string[]; forced: boolean };
  machine: Record<string, unknown>;
  ranges: { path: string; sha256: string; tensors: number } | null;
  written: boolean;
}

let ortCache: Ort | undefined;
export function loadOrtModule(): Ort {
  ortCache ??= createRequire(import.meta.url)('onnxruntime-node') as Ort;
  return ortCache;
}

function sha256(b: Uint8Array | string): string {
  return createHash('sha256').update(b).digest('hex');
}

async function readGoldenInput(bundle: LoadedBundle, g: GoldenEntry): Promise<Float32Array> {
  const bytes = await readFile(path.join(bundle.dir, g.input.path));
  const out = new Float32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readFloatLE(4 * i);
  return out;
}

async function writeAtomic(file: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, data);
  await rename(tmp, file);
}

/** Runs the whole tool. Throws GateError when the gate refuses (nothing written), Error for bad input. */
export async function quantizeBundle(o: QuantizeOptions): Promise<QuantizeReport> {
  const log = o.log ?? ((): void => undefined);
  const progress = o.progress ?? createProgress(process.stderr, false);
  const ort = loadOrtModule();
  if (o.output.includes('..') || path.isAbsolute(o.output)) throw new Error(`--output '${o.output}' must be a path inside the bundle`);
  // a signed bundle must be re-signed, or its signature would no longer match
  const privateKey = o.key ? parsePrivateKey(await readFile(o.key), o.key) : undefined;
  const signed = await access(path.join(o.bundle, 'manifest.sig')).then(
    () => true,
    () => false,
  );
  if (signed && !privateKey && !o.dryRun) throw new Error(`bundle '${o.bundle}' is signed: give --key PRIVATE.pem to re-sign it after adding the int8 file (or --dry-run)`);
  if (signed && !o.dryRun) {
    const trusted = [...(privateKey ? [parsePublicKey(createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }), o.key)] : []), ...(await loadTrustedKeys(o.trustedKeys ?? []))];
    const dirReal = await realpath(o.bundle);
    try {
      verifyManifestSignature(await readFile(path.join(dirReal, 'manifest.json')), await readSignatureFile(dirReal), { trustedKeys: trusted, allowUnsigned: false });
    } catch (e) {
      throw new Error(`the input bundle's signature does not verify, refusing to quantize and re-sign it: ${(e as Error).message} (pass --trusted-key PUBLIC.pem for the key that signed it)`);
    }
  }

  const bundle = await loadBundle(o.bundle);
  const manifest = bundle.manifest;
  const srcEntry = selectModelFile(bundle, 'onnx', 'fp32');
  const srcPath = path.join(bundle.dir, srcEntry.path);
  const fp32Bytes = new Uint8Array(await readFile(srcPath));
  const model: ModelProto = decodeModel(fp32Bytes);
  const inputName = manifest.input.name;
  if (!(model.graph?.input ?? []).some((i) => i.name === inputName)) throw new Error(`model has no input named '${inputName}' (manifest input.name)`);

  // 1. plan + calibrate (static) or rewrite directly (dynamic)
  let int8Model: ModelProto;
  let quantizedOps: Record<string, number>;
  let skipped: SkippedNode[];
  let ranges: Record<string, Range> | undefined;
  let calibration: QuantizeReport['calibration'] = null;
  if (o.mode === 'static') {
    if (!o.calibration) throw new Error('static quantization needs --calibration DIR (real images)');
    const plan = planStatic(model, o.keepFp32);
    if (plan.quantized.size === 0) throw new Error('nothing to quantize: no Conv/Gemm/MatMul with constant weights (or all kept fp32)');
    const files = await loadFrames(o.calibration, manifest, progress);
    const inputs: CalibrationInput[] = [];
    for (const it of files.items) for (const f of it.frames) inputs.push(toInput(f, manifest));
    if (!inputs.length) {
      const why = files.summary.skipped.slice(0, 3).map((s) => `${s.file}: ${s.reason}`).join('; ');
      throw new Error(`calibration set '${o.calibration}' has no usable image (${files.summary.files} files${why ? `; ${why}` : ''})`);
    }
    log(`calibration: ${inputs.length} inputs from ${files.summary.used}/${files.summary.files} files (${files.summary.skipped.length} skipped), ${plan.tensors.length} tensors`);
    const collected = await collectRanges(
      ort,
      model,
      inputName,
      plan.tensors,
      // eslint-disable-next-line @typescript-eslint/require-await
      async function* () {
        yield* inputs;
      },
      inputs.length,
      { method: o.method, percentile: o.percentile, progress },
    );
    ranges = collected.ranges;
    calibration = { ...files.summary, inputs: inputs.length };
    const q = quantizeStatic(model, plan, ranges, o.activations);
    int8Model = q.model;
    quantizedOps = q.quantizedOps;
    skipped = q.skipped;
  } else {
    const q = quantizeDynamic(model, o.keepFp32);
    int8Model = q.model;
    quantizedOps = q.quantizedOps;
    skipped = q.skipped;
  }
  const int8Bytes = encodeModel(int8Model);

  // 2. the result must load in onnxruntime-node, at the optimisation level the agent serves with
  const sessOpts = { threads: o.threads, graphOptimization: 'all' as const };
  let int8: OrtTypes.InferenceSession;
  try {
    int8 = await createSession(ort, int8Bytes, sessOpts);
  } catch (e) {
    throw new Error(`the quantized model does not load in onnxruntime-node: ${(e as Error).message}`);
  }
  const fp32 = await createSession(ort, fp32Bytes, sessOpts);
  try {
    // 3. evaluation: accuracy, agreement, latency; golden deviation
    const ev = await loadEvalSet(o.eval, manifest, o.evalLayout, progress);
    log(`evaluation: ${ev.cases.length} cases (${ev.layout} layout) from ${ev.summary.used}/${ev.summary.files} files`);
    const acc = await compareAccuracy(ort, fp32, int8, ev.cases, manifest.output.activation, progress);
    const lat = await compareLatency(ort, fp32, int8, ev.cases, { ...sessOpts, runs: o.latencyRuns, warmup: o.warmup }, progress);
    let goldenMax = 0;
    const goldens = goldenEntries(bundle, srcEntry);
    for (const g of goldens) {
      const x = await readGoldenInput(bundle, g);
      const y = await runOne(ort, int8, { data: x, shape: [1, ...manifest.input.shape.slice(1)] });
      for (let i = 0; i < y.length; i++) goldenMax = Math.max(goldenMax, Math.abs((y[i] as number) - (g.logits[i] as number)));
    }

    // 4. gate
    const failures: string[] = [];
    if (acc.accuracyDropPoints > o.maxDropPoints) {
      failures.push(
        `accuracy drop ${acc.accuracyDropPoints.toFixed(2)} points > ${o.maxDropPoints} (fp32 ${(acc.fp32Accuracy * 100).toFixed(2)}%, int8 ${(acc.int8Accuracy * 100).toFixed(2)}% on ${acc.cases} cases)`,
      );
    }
    // a different model that happens to score as well on a small set is still a different model
    if (acc.labelAgreement < o.minAgreement) {
      failures.push(
        `int8 changes the fp32 label of ${((1 - acc.labelAgreement) * 100).toFixed(2)}% of cases (label agreement ${(acc.labelAgreement * 100).toFixed(2)}% < ${(o.minAgreement * 100).toFixed(2)}%)`,
      );
    }
    if (!(lat.speedup > o.minSpeedup)) {
      failures.push(
        `int8 is not faster than fp32 here: ${lat.int8MedianMs} ms vs ${lat.fp32MedianMs} ms median at ${o.threads} thread(s) (speedup ${lat.speedup}x, needs > ${o.minSpeedup}x)`,
      );
    }
    if (!Number.isFinite(goldenMax)) failures.push('int8 outputs on the golden inputs are not finite');
    const keptFp32: Record<string, number> = {};
    for (const s of skipped) keptFp32[s.opType] = (keptFp32[s.opType] ?? 0) + 1;
    const rangesJson = ranges ? JSON.stringify(Object.fromEntries(Object.entries(ranges).map(([k, r]) => [k, { min: r.min, max: r.max }])), null, 1) + '\n' : undefined;
    const rangesRel = o.rangesOut ? undefined : `${o.output.replace(/\.onnx$/, '')}.ranges.json`;
    const rangesFile = o.rangesOut ? path.resolve(o.rangesOut) : path.join(bundle.dir, rangesRel as string);
    const report: QuantizeReport = {
      bundle: o.bundle,
      source: { path: srcEntry.path, sha256: srcEntry.sha256 },
      output: { path: o.output, sha256: sha256(int8Bytes), size: int8Bytes.length },
      mode: o.mode,
      method: o.mode === 'static' ? o.method : null,
      activations: o.mode === 'static' ? o.activations : null,
      quantizedOps,
      keptFp32,
      skipped,
      calibration,
      evaluation: { layout: ev.layout, ...ev.summary, ...acc },
      latency: lat,
      goldenMaxAbsDiff: goldenMax,
      gate: { maxAccuracyDropPoints: o.maxDropPoints, minLabelAgreement: o.minAgreement, minSpeedup: o.minSpeedup, passed: failures.length === 0, failures, forced: failures.length > 0 && o.force },
      machine: machineInfo(ort.env.versions.node ?? ort.env.versions.common ?? 'unknown'),
      ranges: rangesJson ? { path: rangesRel ?? rangesFile, sha256: sha256(rangesJson), tensors: Object.keys(ranges ?? {}).length } : null,
      written: false,
    };
    if (failures.length && !o.force) {
      throw new GateError(`edge-quantize: gate refused the int8 model, nothing written:\n  - ${failures.join('\n  - ')}\n(use --force to write it anyway with the failure recorded in the manifest)`, report);
    }
    if (o.dryRun) return report;

    // 5. write: int8 file, ranges, manifest entry + provenance, signature
    await writeAtomic(path.join(bundle.dir, o.output), int8Bytes);
    if (rangesJson) await writeAtomic(rangesFile, rangesJson);
    const goldenTolerance = Math.max(0.25, Math.ceil(2 * goldenMax * 1000) / 1000);
    const entry = {
      path: o.output,
      format: 'onnx' as const,
      precision: 'int8' as const,
      sha256: report.output?.sha256 as string,
      size: int8Bytes.length,
      goldenTolerance,
      provenance: provenanceOf(report, o, goldenTolerance),
    };
    const manifestPath = path.join(bundle.dir, 'manifest.json');
    // re-read right before writing: other tools add their own entries to the same manifest
    const current = JSON.parse(await readFile(manifestPath, 'utf8')) as Manifest;
    current.files = [...current.files.filter((f) => f.path !== o.output), entry];
    const v = validateManifest(current);
    if (!v.ok) throw new Error(`the updated manifest would be invalid: ${v.errors.join('; ')}`);
    await writeAtomic(manifestPath, JSON.stringify(current, null, 2) + '\n');
    if (o.key) await signBundle(bundle.dir, await readFile(o.key), o.key);
    report.written = true;
    return report;
  } finally {
    await int8.release();
    await fp32.release();
  }
}

function provenanceOf(r: QuantizeReport, o: QuantizeOptions, goldenTolerance: number): Record<string, unknown> {
  return {
    tool: 'edge-quantize',
    date: new Date().toISOString(),
    quantizedFrom: r.source,
    mode: r.mode,
    scheme:
      r.mode === 'static'
        ? `ONNX QDQ: weights int8 symmetric per output channel, bias int32, activations ${r.activations ?? ''} asymmetric (${r.method ?? ''} calibration)`
        : 'dynamic: weights int8 symmetric per output channel (stored uint8 + 128), activations uint8 quantized per call (DynamicQuantizeLinear)',
    method: r.method,
    ...(r.method === 'percentile' ? { percentile: o.percentile } : {}),
    activations: r.activations,
    quantizedOps: r.quantizedOps,
    keptFp32: r.keptFp32,
    keepFp32Option: o.keepFp32,
    calibration: r.calibration ? { files: r.calibration.files, used: r.calibration.used, inputs: r.calibration.inputs, sha256: r.calibration.sha256 } : null,
    evaluation: {
      layout: r.evaluation.layout,
      files: r.evaluation.used,
      sha256: r.evaluation.sha256,
      cases: r.evaluation.cases,
      fp32Accuracy: round(r.evaluation.fp32Accuracy),
      int8Accuracy: round(r.evaluation.int8Accuracy),
      accuracyDeltaPoints: round(-r.evaluation.accuracyDropPoints),
      labelAgreement: round(r.evaluation.labelAgreement),
      maxScoreDiff: round(r.evaluation.maxScoreDiff),
    },
    latency: r.latency,
    speedup: r.latency.speedup,
    goldenMaxAbsDiff: round(r.goldenMaxAbsDiff),
    goldenTolerance,
    machine: r.machine,
    gate: r.gate,
    ranges: r.ranges,
  };
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}
