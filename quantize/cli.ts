#!/usr/bin/env node
/**
 * `edge-quantize BUNDLE --calibration DIR --eval DIR [options]`: int8 post-training quantization of a
 * bundle's fp32 ONNX model that proves itself (see quantize/README.md).
 *
 * Exit codes: 0 written (or --dry-run passed), 1 error (bad input, model, key...), 2 usage,
 * 3 the gate refused the int8 model (accuracy drop or not faster): nothing was written.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { BundleError } from '../src/models/bundle.js';
import { CALIBRATION_METHODS, type CalibrationMethod } from './calibrate.js';
import { createProgress } from './progress.js';
import { DEFAULTS, GateError, quantizeBundle, type QuantizeReport } from './run.js';
import type { EvalLayout } from './dataset.js';
import type { ActivationType } from './qdq.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

function nonNegative(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError('must be a number >= 0');
  return n;
}

function percentile(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 50 || n > 100) throw new InvalidArgumentError('must be in (50, 100]');
  return n;
}

function list(v: string, prev: string[] = []): string[] {
  return [...prev, ...v.split(',').map((s) => s.trim()).filter(Boolean)];
}

function pct(x: number): string {
  return `${(x * 100).toFixed(2)}%`;
}

function summary(r: QuantizeReport): string {
  const e = r.evaluation;
  const l = r.latency;
  const lines = [
    `edge-quantize: ${r.bundle} ${r.source.path} -> ${r.output?.path ?? '-'} (${r.mode}${r.method ? `, ${r.method}` : ''}${r.activations ? `, ${r.activations} activations` : ''})`,
    `  quantized ops: ${Object.entries(r.quantizedOps).map(([k, v]) => `${k} x${v}`).join(', ') || 'none'}`,
    `  kept fp32:     ${Object.entries(r.keptFp32).map(([k, v]) => `${k} x${v}`).join(', ') || 'none'}`,
  ];
  if (r.calibration) lines.push(`  calibration:   ${r.calibration.inputs} inputs from ${r.calibration.used}/${r.calibration.files} files, sha256 ${r.calibration.sha256.slice(0, 16)}`);
  lines.push(
    `  evaluation:    ${e.cases} cases (${e.layout}), fp32 ${pct(e.fp32Accuracy)}, int8 ${pct(e.int8Accuracy)}, drop ${e.accuracyDropPoints.toFixed(2)} points`,
    `  agreement:     labels ${pct(e.labelAgreement)}, max score diff ${e.maxScoreDiff.toFixed(4)} (mean ${e.meanMaxScoreDiff.toFixed(4)})`,
    `  latency:       fp32 ${l.fp32MedianMs} ms, int8 ${l.int8MedianMs} ms (median of ${l.runs}, batch 1, ${l.threads} thread(s)): ${l.speedup}x`,
    `  golden:        int8 vs fp32 reference logits, max abs diff ${r.goldenMaxAbsDiff.toFixed(4)}`,
    `  gate:          ${r.gate.passed ? 'passed' : `FAILED${r.gate.forced ? ' (forced: recorded in the manifest)' : ''}: ${r.gate.failures.join('; ')}`}`,
  );
  if (r.ranges) lines.push(`  ranges:        ${r.ranges.tensors} tensors -> ${r.ranges.path}`);
  lines.push(`  written:       ${r.written ? 'yes' : 'no'}`);
  return lines.join('\n') + '\n';
}

const program = new Command();
program
  .name('edge-quantize')
  .description('int8 post-training quantization of a model bundle, measured against its fp32 model before anything is written')
  .argument('<bundle>', 'bundle directory (manifest.json + an fp32 ONNX model)')
  .option('--calibration <dir>', 'calibration images (DICOM/PNG/JPEG, searched recursively), decoded and pre-processed like the agent does')
  .requiredOption('--eval <dir>', 'labelled held-out images (see --eval-layout)')
  .addOption(new Option('--eval-layout <layout>', 'folders: one subfolder per label; rotate: upright images tested in 4 rotations by construction (numpy.rot90 k, labels[k])').choices(['auto', 'folders', 'rotate']).default(DEFAULTS.evalLayout))
  .addOption(new Option('--mode <mode>', 'static: calibrated QDQ; dynamic: int8 weights, activations quantized per call').choices(['static', 'dynamic']).default(DEFAULTS.mode))
  .addOption(new Option('--method <method>', 'activation range calibration').choices([...CALIBRATION_METHODS]).default(DEFAULTS.method))
  .option('--percentile <p>', 'percentile kept by --method percentile', percentile, DEFAULTS.percentile)
  .addOption(new Option('--activations <type>', 'activation integer type (uint8 suits x86 VNNI/AVX2 best)').choices(['uint8', 'int8']).default(DEFAULTS.activations))
  .option('--keep-fp32 <ops>', 'op types or node names left in fp32 (comma-separated, repeatable)', list, [])
  .option('--threads <n>', 'intra-op threads for the latency comparison', positiveInt, DEFAULTS.threads)
  .option('--runs <n>', 'timed batch-1 runs of each model', positiveInt, DEFAULTS.latencyRuns)
  .option('--warmup <n>', 'untimed runs of each model first', positiveInt, DEFAULTS.warmup)
  .option('--max-drop <points>', 'largest accuracy drop accepted, percentage points', nonNegative, DEFAULTS.maxDropPoints)
  .option('--min-agreement <share>', 'smallest share (0-1) of evaluation cases where int8 must give the fp32 label', nonNegative, DEFAULTS.minAgreement)
  .option('--min-speedup <x>', 'int8 must be more than this many times faster than fp32', nonNegative, DEFAULTS.minSpeedup)
  .option('--force', 'write even when the gate fails; the failure is recorded in the manifest')
  .option('--key <pem>', 'Ed25519 private key (PEM) to re-sign manifest.json with')
  .option('--trusted-key <pem>', 'public key (PEM) that may have signed the input bundle, besides --key\'s own (repeatable)', (v: string, prev: string[] = []) => [...prev, v], [])
  .option('--output <file>', 'bundle-relative path of the int8 model', DEFAULTS.output)
  .option('--ranges <file>', 'write the activation ranges JSON here (default: <output without .onnx>.ranges.json in the bundle)')
  .option('--dry-run', 'measure and report, write nothing')
  .option('--json', 'print the full report as JSON on stdout')
  .option('--no-progress', 'no progress output on stderr')
  .action(async (bundle: string, opts: Record<string, unknown>) => {
    const progress = createProgress(process.stderr, opts.progress !== false);
    try {
      const report = await quantizeBundle({
        bundle,
        calibration: opts.calibration as string | undefined,
        eval: opts.eval as string,
        evalLayout: opts.evalLayout as EvalLayout,
        mode: opts.mode as 'static' | 'dynamic',
        method: opts.method as CalibrationMethod,
        percentile: opts.percentile as number,
        activations: opts.activations as ActivationType,
        keepFp32: opts.keepFp32 as string[],
        threads: opts.threads as number,
        latencyRuns: opts.runs as number,
        warmup: opts.warmup as number,
        maxDropPoints: opts.maxDrop as number,
        minSpeedup: opts.minSpeedup as number,
        minAgreement: opts.minAgreement as number,
        force: Boolean(opts.force),
        key: opts.key as string | undefined,
        trustedKeys: opts.trustedKey as string[],
        output: opts.output as string,
        rangesOut: opts.ranges as string | undefined,
        dryRun: Boolean(opts.dryRun),
        progress,
        log: (l) => process.stderr.write(`${l}\n`),
      });
      process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : summary(report));
    } catch (e) {
      if (e instanceof GateError) {
        if (opts.json) process.stdout.write(JSON.stringify(e.report, null, 2) + '\n');
        else process.stdout.write(summary(e.report));
        process.stderr.write(`${e.message}\n`);
        process.exitCode = 3;
        return;
      }
      const msg = e instanceof BundleError || e instanceof Error ? e.message : String(e);
      process.stderr.write(`edge-quantize: ${msg}\n`);
      process.exitCode = 1;
    }
  });

program.exitOverride((err) => {
  process.exit(err.exitCode === 0 ? 0 : 2);
});
await program.parseAsync(process.argv);
