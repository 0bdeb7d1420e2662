/**
 * Decoding with a per-file time limit: the same decodeBuffer, run in worker threads.
 *
 * Decoding is synchronous (dicom-parser, WASM codecs), so a pathological file could block the agent's
 * event loop for good; the chaos fuzzer found one (a bit-flipped HTJ2K codestream on which the openjph
 * codec never returns). In a worker thread it cannot: after `timeoutMs` the worker is terminated (V8
 * interrupts WASM loops too, measured at ~15 ms), the file fails with DecodeError 'decode-timeout' and
 * is quarantined, and a fresh worker takes the next file. Frames come back as transferred buffers.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { DecodeError, type DecodeOptions, type DecodedCapture } from './types.js';

/** What the worker answers (src/decode/pool-worker.ts). */
export type PoolReply =
  | { ok: true; capture: DecodedCapture }
  | { ok: false; decodeError: true; code: DecodeError['code']; message: string }
  | { ok: false; decodeError: false; name: string; message: string };

/** The compiled worker: next to this module in dist/, or dist/ when running from the .ts sources (tests). */
function poolWorkerEntry(): string {
  const here = fileURLToPath(import.meta.url);
  const sibling = path.join(path.dirname(here), 'pool-worker.js');
  if (here.endsWith('.js') && existsSync(sibling)) return sibling;
  const built = path.resolve(path.dirname(here), '../../dist/src/decode/pool-worker.js');
  if (!existsSync(built)) throw new Error(`decode worker not found at ${built}: run 'npm run build' first`);
  return built;
}

export interface DecodePoolOptions {
  /** Workers (files decoded at once); the pipeline uses its concurrency. */
  size: number;
  /** Per-file limit; past it the worker is terminated and the file fails with 'decode-timeout'. */
  timeoutMs: number;
}

export class DecodePool {
  private readonly idle: Worker[] = [];
  private readonly all = new Set<Worker>();
  private readonly waiting: ((w: Worker) => void)[] = [];
  private readonly entry = poolWorkerEntry();
  private closed = false;
  /** Files stopped by the time limit (diagnostics, tests). */
  timeouts = 0;

  private readonly readyPromise: Promise<void>;

  constructor(private readonly opts: DecodePoolOptions) {
    // Started now, not at the first file: loading the decoders in a fresh thread takes ~0.3-1 s.
    for (let i = 0; i < Math.max(1, opts.size); i++) this.idle.push(this.spawn());
    const first = this.idle[0]!;
    this.readyPromise = new Promise<void>((resolve) => {
      const done = (): void => {
        first.off('message', onMessage);
        resolve();
      };
      const onMessage = (m: unknown): void => {
        if ((m as { ready?: boolean }).ready) done();
      };
      first.on('message', onMessage);
      first.once('exit', done);
    });
  }

  /**
   * Resolves once a worker has loaded the decoders (or died trying: decode() then reports it). The
   * pipeline waits for it before counting a job's attempt, so a restart's warm-up is not an attempt.
   */
  ready(): Promise<void> {
    return this.readyPromise;
  }

  private spawn(): Worker {
    const w = new Worker(this.entry, { execArgv: [] });
    w.unref();
    this.all.add(w);
    w.on('error', () => undefined); // reported to the job in flight by decode()
    w.on('exit', () => this.all.delete(w));
    return w;
  }

  private acquire(): Promise<Worker> {
    const w = this.idle.pop();
    if (w) return Promise.resolve(w);
    if (this.all.size < Math.max(1, this.opts.size)) return Promise.resolve(this.spawn());
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(w: Worker): void {
    const next = this.waiting.shift();
    if (next) next(w);
    else this.idle.push(w);
  }

  /** A worker that timed out or died: gone, and whoever waits gets a fresh one. */
  private discard(w: Worker): void {
    this.all.delete(w);
    void w.terminate();
    const next = this.waiting.shift();
    if (next) next(this.spawn());
    else if (!this.closed) this.idle.push(this.spawn()); // keep one warm for the next file
  }

  async decode(bytes: Uint8Array, options: DecodeOptions): Promise<DecodedCapture> {
    if (this.closed) throw new Error('decode pool is closed');
    const w = await this.acquire();
    return new Promise<DecodedCapture>((resolve, reject) => {
      let settled = false;
      const finish = (healthy: boolean): void => {
        settled = true;
        clearTimeout(timer);
        w.off('message', onMessage);
        w.off('error', onError);
        w.off('exit', onExit);
        if (healthy) this.release(w);
        else this.discard(w);
      };
      const onMessage = (m: PoolReply | { ready: true }): void => {
        if (settled || 'ready' in m) return;
        finish(true);
        if (m.ok) resolve(m.capture);
        else if (m.decodeError) reject(new DecodeError(m.code, m.message));
        else reject(Object.assign(new Error(m.message), { name: m.name }));
      };
      const onError = (err: Error): void => {
        if (settled) return;
        finish(false);
        reject(new DecodeError('corrupt', `the decoder failed on this file: ${err.message}`));
      };
      const onExit = (code: number): void => {
        if (settled) return;
        finish(false);
        reject(new DecodeError('corrupt', `the decoder exited (code ${code}) on this file`));
      };
      const timer = setTimeout(() => {
        if (settled) return;
        finish(false);
        this.timeouts++;
        reject(new DecodeError('decode-timeout', `decoding did not finish within ${this.opts.timeoutMs} ms and was stopped (a malformed or hostile file)`));
      }, this.opts.timeoutMs);
      w.on('message', onMessage);
      w.on('error', onError);
      w.on('exit', onExit);
      w.postMessage({ bytes, options });
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const ws = [...this.all];
    this.all.clear();
    this.idle.length = 0;
    await Promise.all(ws.map((w) => w.terminate()));
  }
}
