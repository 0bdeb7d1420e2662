/**
 * Echo peer for bench/isolation/run.ts: measures the cost of moving a tensor across the isolation
 * boundary without any inference. Runs as a worker thread (parentPort) or a forked child (process.send).
 * - {kind:'tensor', data}: answers with the same Float32Array (transferred back for threads).
 * - {kind:'sab', n}: reads n floats from the SharedArrayBuffer it was given and answers their sum (a
 *   real read of every value) so the zero-copy path is not measured as doing nothing.
 * - {kind:'abort'}: abort like a native crash (crash isolation demo): process.abort() in a child;
 *   in a thread, where Node forbids process.abort(), SIGABRT raised on the process, which is exactly
 *   what a native abort() inside a runtime does.
 */
import { parentPort } from 'node:worker_threads';

let shared: Float32Array | undefined;

type Msg = { kind: 'tensor'; data: Float32Array } | { kind: 'sab-init'; sab: SharedArrayBuffer } | { kind: 'sab'; n: number } | { kind: 'abort' };

function reply(m: unknown, transfer: ArrayBuffer[] = []): void {
  if (parentPort) parentPort.postMessage(m, transfer);
  else process.send?.(m);
}

function onMessage(raw: unknown): void {
  const m = raw as Msg;
  if (m.kind === 'tensor') {
    // JSON-serialized IPC turns a Float32Array into {"0":..}: rebuild so the work is the same on both paths.
    const raw: unknown = m.data;
    const data = raw instanceof Float32Array ? raw : new Float32Array(Object.values(raw as Record<string, number>));
    reply({ kind: 'tensor', data }, parentPort ? [data.buffer as ArrayBuffer] : []);
  } else if (m.kind === 'sab-init') {
    shared = new Float32Array(m.sab);
    reply({ kind: 'ok' });
  } else if (m.kind === 'sab') {
    let s = 0;
    const a = shared!;
    for (let i = 0; i < m.n; i++) s += a[i]!;
    reply({ kind: 'sum', s });
  } else if (m.kind === 'abort') {
    if (parentPort) process.kill(process.pid, 'SIGABRT');
    else process.abort();
  }
}

if (parentPort) parentPort.on('message', onMessage);
else {
  process.on('message', onMessage);
  process.on('disconnect', () => process.exit(0));
}
