/**
 * Baseline (a) of bench/e2e, the upper bound: the same model in a bare onnxruntime-node loop on
 * pre-decoded, pre-processed tensors (batch 1, one `await session.run` after the other), with the
 * session options the agent derives from its config (cpu EP, graph optimisation, intra/inter-op threads,
 * sequential execution). Decoding and preprocessing are done up front with the agent's own code
 * (src/decode decodeBuffer, src/preprocess preprocess) and timed separately, single-threaded: that is
 * what those stages cost per image outside the agent.
 *
 * Usage: node dist/bench/e2e/bare.js <bundleDir> <files.json> <intraOpThreads> [minSeconds]
 * Prints one JSON object.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { decodeBuffer, defaultDecodeOptions } from '../../src/decode/index.js';
import { loadBundle, selectModelFile } from '../../src/models/bundle.js';
import { preprocess } from '../../src/preprocess/index.js';
import { loadOrt } from '../../src/runtimes/onnx.js';
import { mean, percentile } from './stats.js';

async function main(): Promise<void> {
  const [bundleDir, listFile, intraArg, minSecArg] = process.argv.slice(2);
  if (!bundleDir || !listFile || intraArg === undefined) throw new Error('usage: bare.js <bundleDir> <files.json> <intraOpThreads> [minSeconds]');
  const intraOpThreads = Number(intraArg);
  const minSeconds = Number(minSecArg ?? '4');
  const files = JSON.parse(await readFile(listFile, 'utf8')) as string[];
  const bundle = await loadBundle(bundleDir);
  const spec = bundle.manifest.input;
  const decodeOpts = { ...defaultDecodeOptions(), framePolicy: 'middle' as const };

  const tensors: Float32Array[] = [];
  const readMs: number[] = [];
  const decodeMs: number[] = [];
  const prepMs: number[] = [];
  for (const f of files) {
    const t0 = performance.now();
    const bytes = await readFile(f);
    const t1 = performance.now();
    const cap = await decodeBuffer(bytes, decodeOpts);
    const t2 = performance.now();
    tensors.push(preprocess(cap.frames[0]!, spec));
    const t3 = performance.now();
    readMs.push(t1 - t0);
    decodeMs.push(t2 - t1);
    prepMs.push(t3 - t2);
  }

  const ort = await loadOrt();
  const file = selectModelFile(bundle, 'onnx');
  const session = await ort.InferenceSession.create(path.join(bundle.dir, file.path), {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: intraOpThreads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });
  const inputName = spec.name || session.inputNames[0]!;
  const shape = spec.shape.map((d, i) => (i === 0 ? 1 : d));
  const run = (t: Float32Array) => session.run({ [inputName]: new ort.Tensor('float32', t, shape) });
  for (let i = 0; i < 20; i++) await run(tensors[i % tensors.length]!);

  const per: number[] = [];
  const start = performance.now();
  let n = 0;
  while (performance.now() - start < minSeconds * 1000 || n < tensors.length) {
    const a = performance.now();
    await run(tensors[n % tensors.length]!);
    per.push(performance.now() - a);
    n++;
  }
  const seconds = (performance.now() - start) / 1000;
  await session.release();
  process.stdout.write(
    JSON.stringify({
      intraOpThreads,
      images: n,
      seconds,
      imagesPerSec: n / seconds,
      inferMs: { p50: percentile(per, 50), p99: percentile(per, 99), mean: mean(per) },
      perImageOutsideLoopMs: { read: mean(readMs), decode: mean(decodeMs), preprocess: mean(prepMs) },
      ortVersion: ort.env.versions.node ?? ort.env.versions.common,
    }) + '\n',
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`bare: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
