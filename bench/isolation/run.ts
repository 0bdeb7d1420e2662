/**
 * bench/isolation: worker threads vs child processes for running inference outside the main event loop
 * (a benchmark, not a test). Figures go into docs/ARCHITECTURE.md "Inference isolation".
 *
 *   npm run build && /usr/bin/python3 tests/fixtures/runtimes/make-tiny-cnn.py --wide /tmp/wide.onnx \
 *     && node dist/bench/isolation/run.js --wide /tmp/wide.onnx [--model FILE.onnx] [--hw 224]
 *   shipped model (128x128 input): node dist/bench/isolation/run.js --hw 128 --model models/orientation-qa/model.onnx \
 *     --wide models/orientation-qa/model.onnx
 *
 * 1. transfer: round trip of a 1x1x224x224 float32 tensor (50,176 values, 196 KiB)
 *    with no inference: thread + transferred ArrayBuffer, thread + SharedArrayBuffer (only a message
 *    id crosses), process + IPC 'advanced' (V8 serializer), process + IPC 'json' (Node's default);
 * 2. per call: sequential inference latency in-process vs SupervisedSession(thread|process), 1 worker;
 * 3. throughput: SupervisedSession pools (1 or 2 workers x 1 or 2 ORT intra-op threads) kept busy;
 * 4. crash isolation: process.abort() in a worker thread vs in a child (bench/isolation/crash.ts);
 * 5. memory on restart: 20 cycles of load -> 50 runs -> release, in-process vs thread vs process, this
 *    process's RSS after each cycle (separate node processes per mode, so they do not mix).
 * Prints Markdown tables; writes bench/results/isolation-<UTC timestamp>.json.
 */
import { fork, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { OnnxRuntime } from '../../src/runtimes/onnx.js';
import type { InferenceSessionHandle, RuntimeLoadOptions } from '../../src/runtimes/types.js';
import { SupervisedSession } from '../../src/runtimes/worker/supervisor.js';
import { percentile } from '../e2e/stats.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..', '..');
const ECHO = path.join(HERE, 'echo.js');
const { values: args } = parseArgs({
  options: {
    /** Input height = width of both models (the shipped orientation-qa takes 128). */
    hw: { type: 'string', default: '224' },
    model: { type: 'string', default: path.join(ROOT, 'tests/fixtures/runtimes/tiny-cnn.onnx') },
    wide: { type: 'string', default: '/tmp/wide.onnx' },
    only: { type: 'string' },
    n: { type: 'string', default: '2000' },
    seconds: { type: 'string', default: '4' },
    out: { type: 'string', default: path.join(ROOT, 'bench/results') },
  },
});
const N = Number(args.n);
const HW = Number(args.hw);
const SHAPE = [1, 1, HW, HW];
const SIZE = HW * HW;

function opts(threads: number): RuntimeLoadOptions {
  return { providers: ['cpu'], intraOpThreads: threads, interOpThreads: 1, graphOptimization: 'all' };
}

function stats(samplesMs: number[]): { p50: number; p99: number; mean: number } {
  const s = [...samplesMs].sort((a, b) => a - b);
  const r = (x: number): number => Math.round(x * 1000) / 1000;
  return { p50: r(percentile(s, 50)), p99: r(percentile(s, 99)), mean: r(s.reduce((a, b) => a + b, 0) / s.length) };
}

function input(seed = 1): Float32Array {
  const a = new Float32Array(SIZE);
  for (let i = 0; i < SIZE; i++) a[i] = ((i * 7919 + seed * 104729) % 1000) / 1000;
  return a;
}

// ---- 1. transfer ------------------------------------------------------------------------------------

type Peer = { send(m: unknown, transfer?: ArrayBuffer[]): void; next(): Promise<unknown>; close(): void };

function threadPeer(): Peer {
  const w = new Worker(ECHO);
  let waiter: ((m: unknown) => void) | undefined;
  w.on('message', (m) => waiter?.(m));
  return {
    send: (m, t = []) => w.postMessage(m, t),
    next: () => new Promise((r) => (waiter = r)),
    close: () => void w.terminate(),
  };
}

function processPeer(serialization: 'advanced' | 'json'): Peer {
  const c = fork(ECHO, [], { serialization, execArgv: [] });
  let waiter: ((m: unknown) => void) | undefined;
  c.on('message', (m) => waiter?.(m));
  return {
    send: (m) => c.send(m as never),
    next: () => new Promise((r) => (waiter = r)),
    close: () => c.kill(),
  };
}

async function transfer(): Promise<Record<string, ReturnType<typeof stats>>> {
  const out: Record<string, ReturnType<typeof stats>> = {};
  const src = input();
  const cases: [string, () => Peer, 'transfer' | 'sab' | 'copy'][] = [
    ['thread, transferred ArrayBuffer (copy in + transfer)', threadPeer, 'transfer'],
    ['thread, SharedArrayBuffer (write in place)', threadPeer, 'sab'],
    ["process, IPC serialization 'advanced'", () => processPeer('advanced'), 'copy'],
    ["process, IPC serialization 'json'", () => processPeer('json'), 'copy'],
  ];
  for (const [name, make, how] of cases) {
    const peer = make();
    let sab: Float32Array | undefined;
    if (how === 'sab') {
      const buf = new SharedArrayBuffer(SIZE * 4);
      sab = new Float32Array(buf);
      const p = peer.next();
      peer.send({ kind: 'sab-init', sab: buf });
      await p;
    }
    const n = how === 'copy' && name.includes('json') ? Math.min(N, 200) : N;
    const times: number[] = [];
    for (let i = 0; i < n + 50; i++) {
      const t0 = performance.now();
      const p = peer.next();
      if (how === 'sab') {
        sab!.set(src);
        peer.send({ kind: 'sab', n: SIZE });
      } else if (how === 'transfer') {
        const copy = new Float32Array(src); // the supervisor keeps the original for a retry
        peer.send({ kind: 'tensor', data: copy }, [copy.buffer]);
      } else {
        peer.send({ kind: 'tensor', data: src });
      }
      await p;
      if (i >= 50) times.push(performance.now() - t0);
    }
    peer.close();
    out[name] = stats(times);
  }
  return out;
}

// ---- 2./3. inference through the supervisor ----------------------------------------------------------

async function perCall(model: string): Promise<Record<string, ReturnType<typeof stats>>> {
  const out: Record<string, ReturnType<typeof stats>> = {};
  const x = input();
  const sessions: [string, () => Promise<InferenceSessionHandle>][] = [
    ['in-process', () => new OnnxRuntime().load(model, opts(1))],
    ['thread (SupervisedSession)', () => supervised(model, 'thread', 1, 1)],
    ['process (SupervisedSession)', () => supervised(model, 'process', 1, 1)],
  ];
  for (const [name, open] of sessions) {
    const s = await open();
    const times: number[] = [];
    const n = Math.min(N, 1000);
    for (let i = 0; i < n + 50; i++) {
      const t0 = performance.now();
      await s.run(x, SHAPE);
      if (i >= 50) times.push(performance.now() - t0);
    }
    await s.dispose();
    out[name] = stats(times);
  }
  return out;
}

function supervised(model: string, mode: 'thread' | 'process', workers: number, threads: number): Promise<SupervisedSession> {
  return SupervisedSession.start(
    { runtime: 'onnx', modelPath: model, options: opts(threads) },
    { mode, workers, inferenceTimeoutMs: 30_000, maxWorkerRssMb: 0, restartLimit: { count: 5, windowSec: 60 } },
  );
}

async function throughput(model: string): Promise<Record<string, { imagesPerSec: number; p50: number; p99: number }>> {
  const out: Record<string, { imagesPerSec: number; p50: number; p99: number }> = {};
  const x = input();
  const seconds = Number(args.seconds);
  const configs: [string, () => Promise<InferenceSessionHandle>, number][] = [
    ['in-process, 1 session x 2 threads (calls queue in ORT)', () => new OnnxRuntime().load(model, opts(2)), 2],
    ['in-process, 1 session x 1 thread', () => new OnnxRuntime().load(model, opts(1)), 2],
  ];
  for (const mode of ['process', 'thread'] as const) {
    for (const [w, t] of [
      [1, 1],
      [1, 2],
      [2, 1],
      [2, 2],
    ] as const) {
      configs.push([`${mode}, ${w} worker(s) x ${t} thread(s)`, () => supervised(model, mode, w, t), 2 * w]);
    }
  }
  for (const [name, open, callers] of configs) {
    const s = await open();
    for (let i = 0; i < 20; i++) await s.run(x, SHAPE);
    const lat: number[] = [];
    let done = 0;
    const end = performance.now() + seconds * 1000;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: callers }, async () => {
        while (performance.now() < end) {
          const a = performance.now();
          await s.run(x, SHAPE);
          lat.push(performance.now() - a);
          done++;
        }
      }),
    );
    const secs = (performance.now() - t0) / 1000;
    await s.dispose();
    out[name] = { imagesPerSec: Math.round(done / secs), ...stats(lat) };
  }
  return out;
}

// ---- 4. crash isolation -------------------------------------------------------------------------------

function crash(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const mode of ['thread', 'process']) {
    const r = spawnSync(process.execPath, [path.join(HERE, 'crash.js'), mode], { encoding: 'utf8', timeout: 10_000 });
    out[mode] = r.signal ? `agent process killed by ${r.signal}` : `agent process alive (${r.stdout.trim()})`;
  }
  return out;
}

// ---- 5. memory on restart -------------------------------------------------------------------------------

async function memoryMode(model: string, mode: 'none' | 'thread' | 'process'): Promise<{ rssMb: number[]; childRssMb?: number }> {
  const x = input();
  const rssMb: number[] = [];
  const mb = (b: number): number => Math.round((b / 2 ** 20) * 10) / 10;
  rssMb.push(mb(process.memoryUsage.rss()));
  let childRssMb: number | undefined;
  for (let c = 0; c < 20; c++) {
    const s = mode === 'none' ? await new OnnxRuntime().load(model, opts(1)) : await supervised(model, mode, 1, 1);
    for (let i = 0; i < 50; i++) await s.run(x, SHAPE);
    if (s instanceof SupervisedSession && mode === 'process' && c === 0) {
      const { readFileSync } = await import('node:fs');
      childRssMb = mb(Number(readFileSync(`/proc/${s.pids[0]}/statm`, 'utf8').split(' ')[1]) * 4096);
    }
    await s.dispose();
    global.gc?.();
    rssMb.push(mb(process.memoryUsage.rss()));
  }
  return childRssMb === undefined ? { rssMb } : { rssMb, childRssMb };
}

function memory(model: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const mode of ['none', 'thread', 'process']) {
    const r = spawnSync(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--only', `mem:${mode}`, '--wide', model, '--hw', String(HW)], {
      encoding: 'utf8',
      timeout: 300_000,
    });
    out[mode] = JSON.parse(r.stdout.trim().split('\n').pop() ?? 'null') as unknown;
  }
  return out;
}

// ---- main -------------------------------------------------------------------------------------------------

function table(title: string, rows: Record<string, Record<string, unknown> | string>): void {
  console.log(`\n### ${title}\n`);
  const first = Object.values(rows)[0];
  if (typeof first === 'string') {
    console.log('| case | outcome |\n|---|---|');
    for (const [k, v] of Object.entries(rows)) console.log(`| ${k} | ${v as string} |`);
    return;
  }
  const cols = Object.keys(first ?? {});
  console.log(`| case | ${cols.join(' | ')} |\n|---|${cols.map(() => '---').join('|')}|`);
  for (const [k, v] of Object.entries(rows)) console.log(`| ${k} | ${cols.map((c) => JSON.stringify((v as Record<string, unknown>)[c])).join(' | ')} |`);
}

async function main(): Promise<void> {
  if (args.only?.startsWith('mem:')) {
    console.log(JSON.stringify(await memoryMode(args.wide, args.only.slice(4) as 'none' | 'thread' | 'process')));
    return;
  }
  const machine = { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version };
  const result: Record<string, unknown> = { machine, models: { small: args.model, wide: args.wide }, shape: SHAPE };
  console.log(`isolation bench on ${machine.cpus} x ${machine.cpu}, node ${machine.node}`);
  result.transfer = await transfer();
  table(`1. transfer round trip, 1x1x${HW}x${HW} float32, no inference (ms)`, result.transfer as Record<string, Record<string, unknown>>);
  result.perCallSmall = await perCall(args.model);
  table(`2a. per call, sequential, small model ${path.basename(args.model)} (ms)`, result.perCallSmall as Record<string, Record<string, unknown>>);
  result.perCallWide = await perCall(args.wide);
  table(`2b. per call, sequential, wide model ${path.basename(args.wide)} (ms)`, result.perCallWide as Record<string, Record<string, unknown>>);
  result.throughputWide = await throughput(args.wide);
  table(`3. throughput, wide model, callers = 2 x workers, ${args.seconds} s each`, result.throughputWide as Record<string, Record<string, unknown>>);
  result.crash = crash();
  table('4. process.abort() inside the worker', result.crash as Record<string, string>);
  const mem = memory(args.wide) as Record<string, { rssMb: number[]; childRssMb?: number }>;
  result.memory = mem;
  const memRows: Record<string, Record<string, unknown>> = {};
  for (const [k, v] of Object.entries(mem)) {
    memRows[k] = { before: v.rssMb[0], afterCycle1: v.rssMb[1], afterCycle20: v.rssMb[v.rssMb.length - 1], childRss: v.childRssMb ?? '-' };
  }
  table('5. main-process RSS (MB) over 20 cycles of load -> 50 runs -> release, wide model', memRows);
  mkdirSync(args.out, { recursive: true });
  const file = path.join(args.out, `isolation-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  console.log(`\nwritten ${path.relative(ROOT, file)}`);
}

await main();
