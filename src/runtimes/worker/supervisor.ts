/**
 * Inference isolation and supervision.
 *
 * Inference runs OUTSIDE the main event loop so decoding, MQTT and the inbox watcher stay responsive,
 * and outside the agent's PROCESS by default (config `model.isolation: process`), because a runtime is
 * native code: a SIGSEGV/abort in ORT, TensorRT or a delegate kills whatever process it runs in.
 *
 * Why child processes (fork) and not worker threads, measured by bench/isolation on the 2-core dev box
 * (`npm run build && /usr/bin/python3 tests/fixtures/runtimes/make-tiny-cnn.py --wide /tmp/wide.onnx &&
 * node dist/bench/isolation/run.js --wide /tmp/wide.onnx`, bench/results/isolation-2026-11-30T03-34-37-404Z.json;
 * a second run, isolation-2026-11-30T03-44-38-449Z.json, agrees within the machine's noise; table in docs/ARCHITECTURE.md):
 * - crash isolation: abort in a worker THREAD killed the whole agent (SIGABRT); in a child process only
 *   the child died and the agent went on. This decides it: "never crash on input from outside".
 * - per-call overhead for a 1x1x224x224 float32 tensor (196 KiB), round trip without inference, p50:
 *   thread + transferred ArrayBuffer 0.04 ms, thread + SharedArrayBuffer 0.07 ms, process + IPC
 *   'advanced' serialization (V8 serializer, used here) 0.34 ms, process + IPC 'json' (Node's default) 33 ms.
 *   Per inference on a ~0.5 GMAC CNN (shipped-model class): in-process 2.14 ms, thread 2.39, process 2.51
 *   p50 (+0.37 ms, ~17%); a few tenths of a ms against a 10-60 ms decode.
 * - memory: 20 cycles of load -> 50 runs -> release of an ORT session left the agent at 92 MB RSS
 *   in-process and 97 MB with a thread (native memory stays in the process), 62 MB with a child
 *   process (the child's ~116 MB goes back to the OS when it exits). Only a process can be measured
 *   (/proc/<pid>/statm) and killed on its own, so only a process can enforce maxWorkerRssMb.
 * - throughput on 2 cores (wide model, callers = 2 x workers): 1 process worker 367-370 images/s, 2
 *   workers x 1 thread 376-396 (+2-8%, inside the noise), 2 x 2 threads 177-203 (oversubscribed);
 *   in-process 448-484. A second worker does not pay on 2 cores (the IPC copies compete for the same
 *   cores), so `workers: 0` means one per two cores.
 * `thread` stays available (config) for boxes where the lower overhead matters more than crash isolation;
 * it still gets timeouts (terminate()) and restarts, but a native crash takes the agent down with it.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { getRuntime } from '../registry.js';
import type { InferenceSessionHandle, ProviderAttempt, RuntimeLoadOptions } from '../types.js';
import { isFromWorker, type FromWorker, type ToWorker, type WorkerSpec } from './protocol.js';

export type IsolationMode = 'process' | 'thread' | 'none';

/** Config `model.isolation`, `model.workers`, ... as the classifier receives it. */
export interface IsolationOptions {
  mode: IsolationMode;
  /** Workers in the pool; 0 = by cores (defaultWorkers()). */
  workers: number;
  /** A call running longer is a hang: the worker is killed and replaced, the call retried once. */
  inferenceTimeoutMs: number;
  /** A worker process whose resident memory grows past this (MB) is replaced; 0 = no limit. Not enforced for threads. */
  maxWorkerRssMb: number;
  /** More than `count` restarts within `windowSec` seconds: the runtime is marked failed. */
  restartLimit: { count: number; windowSec: number };
  /** Told once when the runtime is marked failed (the agent publishes an error and falls back). */
  onRuntimeFailed?: (e: RuntimeFailedEvent) => void;
  /** Told on every worker restart (logging). */
  onRestart?: (e: RestartEvent) => void;
}

export interface SupervisorOptions extends Omit<IsolationOptions, 'mode' | 'onRuntimeFailed' | 'onRestart'> {
  mode: Exclude<IsolationMode, 'none'>;
  /** Worker deaths a single call may cause before it is refused as `poison-input` (default 2: first try + one retry). */
  poisonAfter?: number;
  /** Time a worker may take to start and load the model (default 300 s: TensorRT builds engines at load). */
  loadTimeoutMs?: number;
  /** Restart backoff: initialMs * 2^(recent restarts - 1), capped (default 100 ms .. 5 s). */
  backoff?: { initialMs: number; maxMs: number };
  /** How often idle workers' memory is checked (default 5 s; 0 = only after calls). */
  memoryCheckIntervalMs?: number;
  /** Extra environment for the workers. */
  env?: NodeJS.ProcessEnv;
}

export type RestartReason = 'exit' | 'timeout' | 'memory' | 'load-failed' | 'canary-failed';

export interface RestartEvent {
  slot: number;
  /** Process id of the worker that was replaced (process mode). */
  pid?: number;
  reason: RestartReason;
  detail: string;
  /** Restarts counted within the current window (after this one). */
  recent: number;
  /** Delay before the replacement starts. */
  backoffMs: number;
}

export interface RuntimeFailedEvent {
  runtime: string;
  modelPath: string;
  restarts: number;
  windowSec: number;
  lastReason: string;
}

export interface SupervisorEvents {
  restart: [RestartEvent];
  failed: [RuntimeFailedEvent];
}

/** Errors from a supervised session carry a `code` the pipeline acts on. */
export class SupervisorError extends Error {
  constructor(
    readonly code: 'poison-input' | 'runtime-failed' | 'disposed',
    message: string,
  ) {
    super(message);
    this.name = 'SupervisorError';
  }
}

/** Workers by cores: one per two cores (each runs ORT with its own intra-op threads), at least one. */
export function defaultWorkers(cores = os.availableParallelism()): number {
  return Math.max(1, Math.floor(cores / 2));
}

/** The compiled worker entry: next to this module in dist/, or dist/ when running from the .ts sources. */
export function workerEntry(): string {
  const here = fileURLToPath(import.meta.url);
  const sibling = path.join(path.dirname(here), 'entry.js');
  if (here.endsWith('.js') && existsSync(sibling)) return sibling;
  const root = path.resolve(path.dirname(here), '../../..');
  const built = path.join(root, 'dist', 'src', 'runtimes', 'worker', 'entry.js');
  if (!existsSync(built)) throw new Error(`inference worker entry not found at ${built}: run 'npm run build' first`);
  return built;
}

// ---------------------------------------------------------------------------------------------------
// Transports: one child process or one worker thread behind the same small surface.

interface Transport {
  readonly pid: number | undefined;
  send(msg: ToWorker): void;
  /** Kills at once: SIGKILL for a process, terminate() for a thread. */
  kill(): void;
  /** Resident memory in bytes as the OS sees it (process mode), else undefined. */
  rss(): number | undefined;
  onMessage: (m: FromWorker) => void;
  onExit: (detail: string) => void;
}

const PAGE = 4096;

class ProcessTransport implements Transport {
  onMessage: (m: FromWorker) => void = () => undefined;
  onExit: (detail: string) => void = () => undefined;
  private readonly child: ChildProcess;

  constructor(entry: string, env: NodeJS.ProcessEnv) {
    this.child = fork(entry, [], {
      serialization: 'advanced',
      execArgv: [],
      env,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('message', (m) => {
      if (isFromWorker(m)) this.onMessage(m);
    });
    this.child.on('error', () => undefined); // e.g. EPIPE on send to a dying child; 'exit' follows
    this.child.on('exit', (code, signal) => this.onExit(signal ? `killed by ${signal}` : `exited with code ${code}`));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  send(msg: ToWorker): void {
    if (this.child.connected) this.child.send(msg);
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }

  rss(): number | undefined {
    if (!this.child.pid || this.child.exitCode !== null) return undefined;
    try {
      const statm = readFileSync(`/proc/${this.child.pid}/statm`, 'utf8').split(' ');
      return Number(statm[1]) * PAGE;
    } catch {
      return undefined; // not Linux, or the child just exited
    }
  }
}

class ThreadTransport implements Transport {
  onMessage: (m: FromWorker) => void = () => undefined;
  onExit: (detail: string) => void = () => undefined;
  private readonly worker: Worker;

  constructor(entry: string, env: NodeJS.ProcessEnv) {
    this.worker = new Worker(entry, { env, execArgv: [] });
    this.worker.on('message', (m) => {
      if (isFromWorker(m)) this.onMessage(m);
    });
    let error = '';
    this.worker.on('error', (e) => (error = e.message));
    this.worker.on('exit', (code) => this.onExit(error ? `threw: ${error}` : `exited with code ${code}`));
  }

  readonly pid = undefined;

  send(msg: ToWorker): void {
    // The input is transferred (zero-copy); the caller keeps its own copy for a retry (see run()).
    if (msg.type === 'run') this.worker.postMessage(msg, [msg.input.buffer as ArrayBuffer]);
    else this.worker.postMessage(msg);
  }

  kill(): void {
    void this.worker.terminate();
  }

  /** A thread shares the process: its native memory cannot be told apart, so only the worker's own report is used. */
  rss(): number | undefined {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------

interface Call {
  id: number;
  input: Float32Array;
  shape: number[];
  /** Workers that died while running this call. */
  deaths: number;
  /** Restart records caused by this call (dropped from the storm count if it proves to be poison). */
  restartStamps: number[];
  resolve: (v: { data: Float32Array; shape: number[] }) => void;
  reject: (e: Error) => void;
  /** Internal zero-input canary: resolves/rejects only the slot logic. */
  canary?: boolean;
}

type SlotState = 'starting' | 'ready' | 'busy' | 'dead';

class Slot {
  state: SlotState = 'starting';
  transport: Transport | undefined;
  call: Call | undefined;
  timer: NodeJS.Timeout | undefined;
  lastReportedRss = 0;
  /** Shape of a call that died on the previous worker: run a zero canary of it before trusting the new one. */
  suspectShape: number[] | undefined;
  constructor(readonly index: number) {}
}

let nextCallId = 1;

/**
 * A pool of supervised inference workers behind the InferenceSessionHandle interface, so it drops into
 * BundleClassifier unchanged. Calls queue in order and go to the first free worker.
 *
 * Events (also passed to IsolationOptions callbacks by openSession()):
 * - `restart` (RestartEvent): a worker exited/crashed, hung past inferenceTimeoutMs, or grew past
 *   maxWorkerRssMb, and a replacement is starting after an exponential backoff.
 * - `failed` (RuntimeFailedEvent): more than restartLimit.count restarts within restartLimit.windowSec.
 *   Every worker is stopped; queued and later calls reject with SupervisorError code `runtime-failed`.
 *   The agent logs it and publishes an error (code 'runtime-failed'); falling back to the next runtime
 *   in the preference list belongs in that handler.
 *
 * A call in flight when its worker dies goes back to the head of the queue (the next free worker takes
 * it). The replacement worker first runs a zero-input canary of the same shape: if the canary kills it too, the runtime is at fault (the
 * call waits; restarts count toward the limit). If the canary passes and the call kills the worker again
 * (poisonAfter deaths in all), the call rejects with SupervisorError code `poison-input` and the
 * restarts it caused are not counted toward the limit: a burst of bad files must not fail a healthy runtime.
 */
export class SupervisedSession extends EventEmitter<SupervisorEvents> implements InferenceSessionHandle {
  readonly runtime: string;
  provider = '';
  attempts: ProviderAttempt[] = [];
  inputName = '';
  outputName = '';
  /** Set once the runtime is marked failed. */
  failure: RuntimeFailedEvent | undefined;
  /** Total restarts since start (all reasons). */
  restarts = 0;
  /** Calls put back in the queue because their worker died under them. */
  retries = 0;

  private readonly slots: Slot[] = [];
  private readonly queue: Call[] = [];
  private readonly restartStamps: number[] = [];
  private readonly entry: string;
  private readonly env: NodeJS.ProcessEnv;
  private readonly poisonAfter: number;
  private readonly loadTimeoutMs: number;
  private readonly backoff: { initialMs: number; maxMs: number };
  private memoryTimer: NodeJS.Timeout | undefined;
  private disposed = false;
  private lastReason = '';

  private constructor(
    private readonly spec: WorkerSpec,
    private readonly opts: SupervisorOptions,
  ) {
    super();
    this.runtime = spec.runtime;
    this.entry = workerEntry();
    this.env = { ...process.env, ...opts.env };
    this.poisonAfter = Math.max(1, opts.poisonAfter ?? 2);
    this.loadTimeoutMs = opts.loadTimeoutMs ?? 300_000;
    this.backoff = opts.backoff ?? { initialMs: 100, maxMs: 5000 };
  }

  /** Starts `workers` workers and waits until each has loaded the model; a load error rejects (nothing left running). */
  static async start(spec: WorkerSpec, opts: SupervisorOptions): Promise<SupervisedSession> {
    const s = new SupervisedSession(spec, opts);
    const n = opts.workers > 0 ? opts.workers : defaultWorkers();
    for (let i = 0; i < n; i++) s.slots.push(new Slot(i));
    try {
      await Promise.all(s.slots.map((slot) => s.spawn(slot)));
    } catch (e) {
      s.disposed = true;
      for (const slot of s.slots) slot.transport?.kill();
      throw e;
    }
    const interval = opts.memoryCheckIntervalMs ?? 5000;
    if (interval > 0 && opts.maxWorkerRssMb > 0) {
      s.memoryTimer = setInterval(() => s.checkIdleMemory(), interval);
      s.memoryTimer.unref();
    }
    return s;
  }

  /** Process ids of the live workers (process mode). */
  get pids(): number[] {
    return this.slots.filter((s) => s.state !== 'dead' && s.transport?.pid).map((s) => s.transport!.pid!);
  }

  get workerCount(): number {
    return this.slots.length;
  }

  run(input: Float32Array, shape: number[]): Promise<{ data: Float32Array; shape: number[] }> {
    if (this.disposed) return Promise.reject(new SupervisorError('disposed', 'inference session was disposed'));
    if (this.failure) return Promise.reject(this.failedError());
    return new Promise((resolve, reject) => {
      this.queue.push({ id: nextCallId++, input, shape, deaths: 0, restartStamps: [], resolve, reject });
      this.pump();
    });
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    if (this.memoryTimer) clearInterval(this.memoryTimer);
    for (const c of this.queue.splice(0)) c.reject(new SupervisorError('disposed', 'inference session was disposed'));
    await Promise.all(this.slots.map((slot) => this.stopSlot(slot)));
  }

  // -------------------------------------------------------------------------------------------------

  /** Starts a worker in `slot` and loads the model; resolves when it is ready, rejects on a load error or an early death. */
  private spawn(slot: Slot): Promise<void> {
    slot.state = 'starting';
    const t = this.newTransport();
    slot.transport = t;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const loadTimer = setTimeout(() => {
        if (settled) return;
        settled = true;
        t.kill();
        reject(new Error(`inference worker did not load ${this.spec.modelPath} within ${this.loadTimeoutMs} ms`));
      }, this.loadTimeoutMs);
      t.onMessage = (m) => {
        if (!settled) {
          if (m.type === 'loaded') {
            settled = true;
            clearTimeout(loadTimer);
            this.provider = m.provider;
            this.attempts = m.attempts;
            this.inputName = m.inputName;
            this.outputName = m.outputName;
            slot.lastReportedRss = m.memory.rss;
            slot.state = 'ready';
            resolve();
            this.afterReady(slot);
          } else if (m.type === 'load-error') {
            settled = true;
            clearTimeout(loadTimer);
            t.kill();
            reject(new Error(m.message));
          }
          return;
        }
        this.onWorkerMessage(slot, t, m);
      };
      t.onExit = (detail) => {
        if (!settled) {
          settled = true;
          clearTimeout(loadTimer);
          reject(new Error(`inference worker ${detail} while loading ${this.spec.modelPath}`));
          return;
        }
        if (slot.transport === t) this.onWorkerDeath(slot, 'exit', `worker ${detail}`);
      };
      t.send({ type: 'load', spec: this.spec });
    });
  }

  private newTransport(): Transport {
    return this.opts.mode === 'thread' ? new ThreadTransport(this.entry, this.env) : new ProcessTransport(this.entry, this.env);
  }

  /** A (re)started worker is ready: run the canary if the previous one died on a call, then take work. */
  private afterReady(slot: Slot): void {
    if (slot.suspectShape) {
      const shape = slot.suspectShape;
      slot.suspectShape = undefined;
      const size = shape.reduce((a, b) => a * b, 1);
      const canary: Call = {
        id: nextCallId++,
        input: new Float32Array(size),
        shape,
        deaths: 0,
        restartStamps: [],
        canary: true,
        resolve: () => undefined,
        reject: () => undefined,
      };
      this.dispatch(slot, canary);
      return;
    }
    this.pump();
  }

  private pump(): void {
    if (this.disposed || this.failure) return;
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (slot.state === 'ready') this.dispatch(slot, this.queue.shift()!);
    }
  }

  private dispatch(slot: Slot, call: Call): void {
    const t = slot.transport!;
    slot.state = 'busy';
    slot.call = call;
    slot.timer = setTimeout(() => {
      if (slot.call !== call || slot.transport !== t) return;
      t.kill();
      this.onWorkerDeath(slot, 'timeout', `call exceeded inferenceTimeoutMs (${this.opts.inferenceTimeoutMs} ms)`);
    }, this.opts.inferenceTimeoutMs);
    // Threads get a transferred copy (the original stays here for a retry); processes copy through IPC anyway.
    const input = this.opts.mode === 'thread' ? new Float32Array(call.input) : call.input;
    t.send({ type: 'run', id: call.id, input, shape: call.shape });
  }

  private onWorkerMessage(slot: Slot, t: Transport, m: FromWorker): void {
    if (slot.transport !== t) return;
    if (m.type !== 'result' && m.type !== 'error') return;
    const call = slot.call;
    if (!call || call.id !== m.id) return;
    clearTimeout(slot.timer);
    slot.call = undefined;
    slot.state = 'ready';
    if (m.type === 'result') {
      slot.lastReportedRss = m.memory.rss;
      if (!call.canary) call.resolve({ data: m.data, shape: m.shape });
    } else if (!call.canary) {
      call.reject(new Error(m.message));
    }
    if (call.canary && m.type === 'error') {
      // the runtime answers but refuses zeros: nothing to learn; carry on
    }
    if (this.overMemory(slot)) {
      this.recycle(slot, 'memory', `worker resident memory ${Math.round(this.rssOf(slot) / 2 ** 20)} MB is over maxWorkerRssMb (${this.opts.maxWorkerRssMb})`);
      return;
    }
    this.pump();
  }

  private rssOf(slot: Slot): number {
    return slot.transport?.rss() ?? slot.lastReportedRss;
  }

  /**
   * Process mode only: a thread's native memory cannot be told apart from the agent's (its RSS report is
   * the whole process), and replacing a thread would not return that memory anyway (bench/isolation).
   */
  private overMemory(slot: Slot): boolean {
    if (this.opts.mode !== 'process' || this.opts.maxWorkerRssMb <= 0) return false;
    return this.rssOf(slot) > this.opts.maxWorkerRssMb * 2 ** 20;
  }

  private checkIdleMemory(): void {
    if (this.disposed || this.failure) return;
    for (const slot of this.slots) {
      if (slot.state === 'ready' && this.overMemory(slot)) {
        this.recycle(slot, 'memory', `idle worker resident memory ${Math.round(this.rssOf(slot) / 2 ** 20)} MB is over maxWorkerRssMb (${this.opts.maxWorkerRssMb})`);
      }
    }
  }

  /** Retires an idle worker and starts a replacement (memory limit). */
  private recycle(slot: Slot, reason: RestartReason, detail: string): void {
    const t = slot.transport;
    slot.transport = undefined;
    t?.kill();
    this.scheduleRestart(slot, reason, detail, t?.pid);
  }

  /** The worker in `slot` died (exit, crash, or killed by us on a timeout). */
  private onWorkerDeath(slot: Slot, reason: RestartReason, detail: string): void {
    if (this.disposed) return;
    const t = slot.transport;
    slot.transport = undefined;
    clearTimeout(slot.timer);
    const call = slot.call;
    slot.call = undefined;
    const stamp = this.scheduleRestart(slot, reason, detail, t?.pid);
    if (!call) return;
    if (call.canary) {
      // The runtime dies on zeros too: not the input's fault. Keep checking with a canary on the next worker.
      slot.suspectShape = call.shape;
      return;
    }
    call.deaths++;
    if (stamp !== undefined) call.restartStamps.push(stamp);
    if (call.deaths >= this.poisonAfter) {
      // Proven poison (a canary passed on a fresh worker in between): these restarts do not count.
      for (const s of call.restartStamps) {
        const i = this.restartStamps.indexOf(s);
        if (i >= 0) this.restartStamps.splice(i, 1);
      }
      call.reject(
        new SupervisorError(
          'poison-input',
          `input killed the inference worker ${call.deaths} times (last: ${detail}); a zero input of the same shape ran fine on a fresh worker`,
        ),
      );
      return;
    }
    slot.suspectShape = call.shape;
    this.retries++;
    if (!this.failure) this.queue.unshift(call);
    else call.reject(this.failedError());
  }

  /** Counts a restart and starts a replacement after the backoff; marks the runtime failed past the limit. Returns the restart's stamp. */
  private scheduleRestart(slot: Slot, reason: RestartReason, detail: string, pid: number | undefined): number | undefined {
    slot.state = 'dead';
    if (this.disposed || this.failure) return undefined;
    const now = performance.now() + Math.random() * 1e-6; // unique stamps
    const windowMs = this.opts.restartLimit.windowSec * 1000;
    while (this.restartStamps.length > 0 && this.restartStamps[0]! < now - windowMs) this.restartStamps.shift();
    this.restartStamps.push(now);
    this.restarts++;
    this.lastReason = `${reason}: ${detail}`;
    const recent = this.restartStamps.length;
    if (recent > this.opts.restartLimit.count) {
      this.fail();
      return now;
    }
    const backoffMs = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** (recent - 1));
    const ev: RestartEvent = { slot: slot.index, reason, detail, recent, backoffMs };
    if (pid !== undefined) ev.pid = pid;
    this.emit('restart', ev);
    const timer = setTimeout(() => {
      if (this.disposed || this.failure) return;
      this.spawn(slot).catch((e: unknown) => {
        if (this.disposed || this.failure) return;
        if (slot.state !== 'dead') this.scheduleRestart(slot, 'load-failed', e instanceof Error ? e.message : String(e), undefined);
      });
    }, backoffMs);
    timer.unref();
    return now;
  }

  private fail(): void {
    if (this.failure) return;
    this.failure = {
      runtime: this.spec.runtime,
      modelPath: this.spec.modelPath,
      restarts: this.restartStamps.length,
      windowSec: this.opts.restartLimit.windowSec,
      lastReason: this.lastReason,
    };
    if (this.memoryTimer) clearInterval(this.memoryTimer);
    for (const slot of this.slots) {
      clearTimeout(slot.timer);
      slot.transport?.kill();
      slot.transport = undefined;
      slot.state = 'dead';
      const call = slot.call;
      slot.call = undefined;
      if (call && !call.canary) call.reject(this.failedError());
    }
    for (const c of this.queue.splice(0)) c.reject(this.failedError());
    this.emit('failed', this.failure);
  }

  private failedError(): SupervisorError {
    const f = this.failure!;
    return new SupervisorError(
      'runtime-failed',
      `runtime '${f.runtime}' was marked failed: ${f.restarts} worker restarts within ${f.windowSec} s (last: ${f.lastReason})`,
    );
  }

  private async stopSlot(slot: Slot): Promise<void> {
    clearTimeout(slot.timer);
    const t = slot.transport;
    slot.state = 'dead';
    if (!t) return;
    await new Promise<void>((resolve) => {
      const kill = setTimeout(() => t.kill(), 3000);
      t.onExit = () => {
        clearTimeout(kill);
        resolve();
      };
      t.onMessage = () => undefined;
      t.send({ type: 'dispose' });
    });
    slot.transport = undefined;
  }
}

/**
 * Opens a session for `modelPath`: in this process (mode 'none', or no isolation given: the CLI's
 * `infer`) or behind a supervised pool of workers.
 */
export async function openSession(
  runtimeType: string,
  modelPath: string,
  options: RuntimeLoadOptions,
  isolation?: IsolationOptions,
): Promise<InferenceSessionHandle> {
  const runtime = getRuntime(runtimeType); // throws for an unknown type before any worker starts
  if (!isolation || isolation.mode === 'none') return runtime.load(modelPath, options);
  const { mode, onRuntimeFailed, onRestart, ...rest } = isolation;
  // Only the runtime's own options cross to the worker (callers may pass a wider object with functions in it).
  const { providers, interOpThreads, graphOptimization } = options;
  // intraOpThreads 0 ("runtime default" = every core) in each of N workers would oversubscribe the cores
  // (bench/isolation: 2 workers x 2 threads on 2 cores gave about half the throughput of 2 x 1): share them.
  const workers = rest.workers > 0 ? rest.workers : defaultWorkers();
  const intraOpThreads = options.intraOpThreads > 0 ? options.intraOpThreads : Math.max(1, Math.floor(os.availableParallelism() / workers));
  const spec: WorkerSpec = { runtime: runtimeType, modelPath, options: { providers, intraOpThreads, interOpThreads, graphOptimization } };
  const s = await SupervisedSession.start(spec, { ...rest, workers, mode });
  if (onRestart) s.on('restart', onRestart);
  if (onRuntimeFailed) s.on('failed', onRuntimeFailed);
  return s;
}
