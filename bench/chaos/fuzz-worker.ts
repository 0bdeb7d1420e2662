/**
 * Child process of the decode fuzzer (tests/chaos/fuzz/harness.ts): generates mutated DICOM, PNG and
 * JPEG cases [from, to) deterministically from the run seed (tests/chaos/fuzz/corpus.ts) and runs each
 * through the agent's decode path
 * (DecodePool, the pipeline's decoder: decodeBuffer in a worker thread with a per-file limit, the agent's
 * default decode options; then preprocess of every frame to the shipped model's input spec, as the
 * classifier does). Reports on stdout, synchronously:
 *
 *   begin <i>
 *   end <i> <outcome> <ms> <rssMiB> <mutations> <message>      outcome: ok | decode:<code> | preprocess | bug:<name>
 *
 * The parent watches the gap between begin and end (the per-file timeout) and the exit status (a
 * crash), restarts the child after either, and samples its RSS.
 *
 *   node dist/bench/chaos/fuzz-worker.js SEEDS_DIR RUN_SEED FROM TO [DECODE_TIMEOUT_MS]
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { defaultDecodeOptions, DecodeError } from '../../src/decode/index.js';
import { DecodePool } from '../../src/decode/pool.js';
import { preprocess, PreprocessError } from '../../src/preprocess/index.js';
import type { ModelInputSpec } from '../../src/models/types.js';
import { corpusCase, loadCorpus } from '../../tests/chaos/fuzz/corpus.js';
import { writeLine } from './line-out.js';

const [seedsDir, runSeedArg, fromArg, toArg, timeoutArg] = process.argv.slice(2);
if (!seedsDir || !runSeedArg || !fromArg || !toArg) {
  process.stderr.write('usage: fuzz-worker.js SEEDS_DIR RUN_SEED FROM TO\n');
  process.exit(2);
}
const runSeed = Number(runSeedArg);
const seeds = loadCorpus(seedsDir);
const spec = (JSON.parse(readFileSync(path.resolve('models/orientation-qa/manifest.json'), 'utf8')) as { input: ModelInputSpec }).input;
const opts = defaultDecodeOptions();
const pool = new DecodePool({ size: 1, timeoutMs: Number(timeoutArg ?? 5000) });
const out = writeLine;
const oneLine = (s: string): string => s.replace(/\s+/g, ' ').slice(0, 300);

for (let i = Number(fromArg); i < Number(toArg); i++) {
  const { seed, bytes, mutations } = corpusCase(seeds, runSeed, i);
  out(`begin ${i}`);
  const t0 = performance.now();
  let outcome = 'ok';
  let message = '';
  try {
    const capture = await pool.decode(bytes, opts);
    for (const f of capture.frames) preprocess(f, spec);
  } catch (err) {
    if (err instanceof DecodeError) outcome = `decode:${err.code}`;
    else if (err instanceof PreprocessError) outcome = 'preprocess';
    else outcome = `bug:${(err as Error)?.name ?? typeof err}`;
    message = oneLine((err as Error)?.message ?? String(err));
  }
  const ms = performance.now() - t0;
  const rss = process.memoryUsage.rss() / 1048576;
  out(`end ${i} ${outcome} ${ms.toFixed(2)} ${rss.toFixed(1)} ${seed.name}:${mutations.join('+')} ${message}`);
}
await pool.close();
