// ORT latency (batch 1) of OrientationNet ONNX exports: node models/training/latency.mjs FILE.onnx...
// p10/median/p90 of 200 runs after 20 warm-up runs (p10 is the least disturbed on a shared machine), at 1 and 2 intra-op threads, graph optimisation 'all'.
// Run it on an otherwise idle machine; figures are ms.
import { createRequire } from 'node:module';
const ort = createRequire(import.meta.url)('onnxruntime-node');

for (const file of process.argv.slice(2)) {
  for (const threads of [1, 2]) {
    const s = await ort.InferenceSession.create(file, {
      executionProviders: ['cpu'], graphOptimizationLevel: 'all', intraOpNumThreads: threads, interOpNumThreads: 1,
    });
    const meta = s.inputNames[0];
    const size = Number(/size_(\d+)/.exec(file)?.[1] ?? process.env.SIZE ?? 128);
    const x = new ort.Tensor('float32', new Float32Array(size * size).map(() => Math.random()), [1, 1, size, size]);
    for (let i = 0; i < 20; i++) await s.run({ [meta]: x });
    const t = [];
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      await s.run({ [meta]: x });
      t.push(performance.now() - t0);
    }
    t.sort((a, b) => a - b);
    console.log(JSON.stringify({ file: file.split("/").pop(), size, threads, p10Ms: +t[20].toFixed(3), medianMs: +t[100].toFixed(3), p90Ms: +t[180].toFixed(3) }));
    await s.release();
  }
}
