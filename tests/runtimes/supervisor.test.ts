/**
 * The inference supervisor with real workers (compiled dist/src/runtimes/worker/entry.js: `npm test`
 * builds first) and real faults: SIGKILL from outside, and the worker's test-only fault hook
 * (EDGE_AGENT_TEST_FAULTS=1: a real abort, a real busy-loop hang, a real 200 MB allocation).
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { OnnxRuntime } from '../../src/runtimes/onnx.js';
import type { InferenceSessionHandle, RuntimeLoadOptions } from '../../src/runtimes/types.js';
import { FAULT_DIR_ENV, FAULT_ENV, markFault, type FaultName } from '../../src/runtimes/worker/protocol.js';
import {
  SupervisedSession,
  SupervisorError,
  defaultWorkers,
  openSession,
  type RestartEvent,
  type RuntimeFailedEvent,
  type SupervisorOptions,
} from '../../src/runtimes/worker/supervisor.js';

const MODEL = path.resolve('tests/fixtures/runtimes/tiny-cnn.onnx');
const SHAPE = [1, 1, 224, 224];
const SIZE = 224 * 224;
const LOAD: RuntimeLoadOptions = { providers: ['cpu'], intraOpThreads: 1, interOpThreads: 1, graphOptimization: 'all' };
const faultDir = mkdtempSync(path.join(tmpdir(), 'faults-'));
let onceToken = 1;

/** A distinct, deterministic image-like input. */
function image(seed: number): Float32Array {
  const a = new Float32Array(SIZE);
  for (let i = 0; i < SIZE; i++) a[i] = ((i * 31 + seed * 977) % 1013) / 1013;
  return a;
}

function faulty(fault: FaultName, seed: number, once: boolean): Float32Array {
  return markFault(image(seed), fault, once ? onceToken++ : 0);
}

const sessions: InferenceSessionHandle[] = [];
afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.dispose()));
});

async function supervised(over: Partial<SupervisorOptions> = {}, faults = true): Promise<SupervisedSession> {
  const s = await SupervisedSession.start(
    { runtime: 'onnx', modelPath: MODEL, options: LOAD },
    {
      mode: 'process',
      workers: 1,
      inferenceTimeoutMs: 3000,
      maxWorkerRssMb: 0,
      restartLimit: { count: 10, windowSec: 60 },
      backoff: { initialMs: 20, maxMs: 200 },
      env: { [FAULT_ENV]: faults ? '1' : '', [FAULT_DIR_ENV]: faultDir },
      ...over,
    },
  );
  sessions.push(s);
  return s;
}

let reference: InferenceSessionHandle | undefined;
/** The same input through the runtime in this process (no worker, no fault hook). */
async function inProcess(input: Float32Array): Promise<number[]> {
  reference ??= await new OnnxRuntime().load(MODEL, LOAD);
  return [...(await reference.run(input, SHAPE)).data];
}

function restarts(s: SupervisedSession): RestartEvent[] {
  const seen: RestartEvent[] = [];
  s.on('restart', (e) => seen.push(e));
  return seen;
}

async function until(cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for a condition');
    await new Promise((r) => setTimeout(r, 10));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function rssMb(pid: number): number {
  return (Number(readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]) * 4096) / 2 ** 20;
}

describe('supervised inference gives the same results as in-process inference', () => {
  for (const mode of ['process', 'thread'] as const) {
    it(`${mode} workers: identical output values, runtime and provider`, async () => {
      const s = await supervised({ mode, workers: 2 });
      expect(s.runtime).toBe('onnx');
      expect(s.provider).toBe('cpu');
      expect(s.inputName).toBe('input');
      expect(s.outputName).toBe('logits');
      const inputs = Array.from({ length: 8 }, (_, i) => image(i));
      const got = await Promise.all(inputs.map((x) => s.run(x, SHAPE)));
      for (let i = 0; i < inputs.length; i++) {
        expect(got[i]!.shape).toEqual([1, 4]);
        expect([...got[i]!.data]).toEqual(await inProcess(inputs[i]!));
      }
      // distinct inputs give distinct outputs (the comparison above is not of constants)
      expect([...got[0]!.data]).not.toEqual([...got[1]!.data]);
    });
  }

  it("openSession with isolation 'none' (the CLI's infer) runs in this process", async () => {
    const s = await openSession('onnx', MODEL, LOAD, {
      mode: 'none',
      workers: 0,
      inferenceTimeoutMs: 1000,
      maxWorkerRssMb: 0,
      restartLimit: { count: 5, windowSec: 60 },
    });
    sessions.push(s);
    expect(s).not.toBeInstanceOf(SupervisedSession);
    expect([...(await s.run(image(3), SHAPE)).data]).toEqual(await inProcess(image(3)));
  });

  it('a pool defaults to one worker per two cores, at least one', () => {
    expect(defaultWorkers(1)).toBe(1);
    expect(defaultWorkers(2)).toBe(1);
    expect(defaultWorkers(8)).toBe(4);
  });
});

describe('supervision', () => {
  it.each([1, 2])('a worker killed with SIGKILL mid-stream (pool of %i) is restarted, the call in flight is retried, nothing is lost', async (workers) => {
    const s = await supervised({ workers });
    const seen = restarts(s);
    const firstPid = s.pids[0]!;
    const others = s.pids.slice(1);
    const inputs = Array.from({ length: 40 }, (_, i) => image(100 + i));
    let done = 0;
    const calls = inputs.map((x) =>
      s.run(x, SHAPE).then((r) => {
        if (++done === 5) process.kill(firstPid, 'SIGKILL'); // the 6th call is in flight on that worker now
        return r;
      }),
    );
    const got = await Promise.all(calls);
    for (let i = 0; i < inputs.length; i++) expect([...got[i]!.data]).toEqual(await inProcess(inputs[i]!));
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ reason: 'exit', pid: firstPid });
    expect(seen[0]!.detail).toMatch(/SIGKILL/);
    expect(s.retries).toBe(1);
    expect(alive(firstPid)).toBe(false);
    await until(() => s.pids.length === workers && !s.pids.includes(firstPid)); // the replacement may still be in backoff
    expect(s.pids).toEqual(expect.arrayContaining(others)); // the other worker was left alone
  });

  it('a hanging call is timed out, its worker killed and replaced, and the call retried', async () => {
    const s = await supervised({ inferenceTimeoutMs: 1000 });
    const seen = restarts(s);
    const firstPid = s.pids[0]!;
    const x = faulty('hang', 1, true); // hangs the first time only
    const t0 = Date.now();
    const out = await s.run(x, SHAPE);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect([...out.data]).toEqual(await inProcess(x));
    expect(seen.map((e) => e.reason)).toEqual(['timeout']);
    expect(alive(firstPid)).toBe(false);
    expect(s.retries).toBe(1);
  });

  it('a hang in a worker THREAD is ended with terminate() and the call retried', async () => {
    const s = await supervised({ mode: 'thread', inferenceTimeoutMs: 1000 });
    const seen = restarts(s);
    const x = faulty('hang', 2, true);
    const out = await s.run(x, SHAPE);
    expect([...out.data]).toEqual(await inProcess(x));
    expect(seen.map((e) => e.reason)).toEqual(['timeout']);
  });

  it('a worker that leaks past maxWorkerRssMb is replaced after its call, which still succeeds', async () => {
    const probe = await supervised();
    const baseline = rssMb(probe.pids[0]!);
    await probe.dispose();
    const limit = Math.ceil(baseline + 100); // the fault holds 200 MB
    const s = await supervised({ maxWorkerRssMb: limit });
    const seen = restarts(s);
    const firstPid = s.pids[0]!;
    const x = faulty('leak', 3, true);
    expect([...(await s.run(x, SHAPE)).data]).toEqual(await inProcess(x));
    await until(() => s.pids.length === 1 && s.pids[0] !== firstPid);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.reason).toBe('memory');
    expect(seen[0]!.detail).toMatch(new RegExp(`over maxWorkerRssMb \\(${limit}\\)`));
    await until(() => !alive(firstPid)); // SIGKILLed; gone once reaped
    expect(rssMb(s.pids[0]!)).toBeLessThan(limit);
    expect([...(await s.run(image(4), SHAPE)).data]).toEqual(await inProcess(image(4)));
  });

  it('an input that crashes the worker every time is refused as poison-input while other calls keep succeeding', async () => {
    const s = await supervised({ restartLimit: { count: 3, windowSec: 60 } });
    const seen = restarts(s);
    const good = Array.from({ length: 20 }, (_, i) => image(200 + i));
    const poison = [faulty('abort', 5, false), faulty('abort', 6, false)];
    const calls = [...good.slice(0, 10), poison[0]!, ...good.slice(10), poison[1]!].map((x) =>
      s.run(x, SHAPE).then(
        (r) => ({ ok: true as const, data: [...r.data] }),
        (e: unknown) => ({ ok: false as const, error: e }),
      ),
    );
    const got = await Promise.all(calls);
    const poisoned = [got[10]!, got[21]!];
    for (const p of poisoned) {
      expect(p.ok).toBe(false);
      const err = (p as { error: unknown }).error;
      expect(err).toBeInstanceOf(SupervisorError);
      expect((err as SupervisorError).code).toBe('poison-input');
      expect((err as Error).message).toMatch(/killed the inference worker 2 times.*SIGABRT/);
    }
    const fine = got.filter((_, i) => i !== 10 && i !== 21);
    for (let i = 0; i < good.length; i++) expect(fine[i]).toEqual({ ok: true, data: await inProcess(good[i]!) });
    // each poison input killed two workers; a zero canary passed on each fresh worker in between
    expect(seen.filter((e) => e.reason === 'exit')).toHaveLength(4);
    // 4 restarts > restartLimit.count 3, but restarts caused by proven poison do not fail the runtime
    expect(s.failure).toBeUndefined();
    expect([...(await s.run(image(7), SHAPE)).data]).toEqual(await inProcess(image(7)));
  });

  it('a restart storm marks the runtime failed with an event, and calls reject with runtime-failed', async () => {
    const s = await supervised({ restartLimit: { count: 2, windowSec: 60 } });
    const failed: RuntimeFailedEvent[] = [];
    s.on('failed', (e) => failed.push(e));
    const killed: number[] = [];
    while (failed.length === 0) {
      await until(() => s.pids.length === 1 && !killed.includes(s.pids[0]!));
      const pid = s.pids[0]!;
      killed.push(pid);
      process.kill(pid, 'SIGKILL');
      await until(() => !alive(pid) && (failed.length > 0 || s.pids.every((p) => p !== pid)));
    }
    expect(killed).toHaveLength(3); // restarts 1 and 2 are allowed, the 3rd within 60 s is one too many
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ runtime: 'onnx', modelPath: MODEL, restarts: 3, windowSec: 60 });
    expect(failed[0]!.lastReason).toMatch(/SIGKILL/);
    expect(s.pids).toEqual([]);
    await expect(s.run(image(1), SHAPE)).rejects.toMatchObject({ code: 'runtime-failed' });
  });

  it('the fault hook is inert without EDGE_AGENT_TEST_FAULTS: a marked input is just an input', async () => {
    const s = await supervised({}, false);
    const seen = restarts(s);
    const x = faulty('abort', 9, false);
    expect([...(await s.run(x, SHAPE)).data]).toEqual(await inProcess(x));
    expect(seen).toEqual([]);
  });

  it('a model swap starts the new worker before the old one retires; dispose ends the old process', async () => {
    const old = await supervised();
    const oldPid = old.pids[0]!;
    const fresh = await supervised();
    expect(alive(oldPid)).toBe(true);
    expect(fresh.pids[0]).not.toBe(oldPid);
    await old.dispose();
    expect(alive(oldPid)).toBe(false);
    await expect(old.run(image(1), SHAPE)).rejects.toMatchObject({ code: 'disposed' });
    expect([...(await fresh.run(image(1), SHAPE)).data]).toEqual(await inProcess(image(1)));
  });

  it('a model that does not load rejects start() with the runtime reason and leaves no worker behind', async () => {
    await expect(
      SupervisedSession.start(
        { runtime: 'onnx', modelPath: path.resolve('tests/fixtures/runtimes/make-tiny-cnn.py'), options: LOAD },
        { mode: 'process', workers: 1, inferenceTimeoutMs: 1000, maxWorkerRssMb: 0, restartLimit: { count: 1, windowSec: 60 } },
      ),
    ).rejects.toThrow(/no execution provider could load/);
  });
});
