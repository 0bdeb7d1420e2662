/**
 * An inference worker: runs as a child process (`fork`, the default isolation) or as a worker thread.
 * It loads one Runtime from the registry (type + model path + RuntimeLoadOptions), then answers `run`
 * messages one at a time and reports its memory with each answer. The supervisor (./supervisor.ts)
 * owns its life: it kills this worker on a timeout or a memory limit and starts a fresh one.
 *
 * Nothing here survives a restart, which is the point: native memory of a runtime (ORT arenas, TensorRT
 * engines) is returned to the OS when the process exits.
 *
 * TEST-ONLY FAULT HOOK: with `EDGE_AGENT_TEST_FAULTS=1` in the environment, an input whose first value
 * is FAULT_SENTINEL makes this worker abort, hang or leak (protocol.ts). Without that variable the
 * check is a single comparison and the input is run like any other; production never sets it.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parentPort } from 'node:worker_threads';
import { runtimeRegistry } from '../registry.js';
import type { InferenceSessionHandle, RuntimeLoadOptions } from '../types.js';
import { CRASH_RUNTIME_PREFIX, FAULT_DIR_ENV, FAULT_ENV, FAULT_SENTINEL, FaultKind, type FromWorker, type MemoryReport, type ToWorker } from './protocol.js';

const faultsEnabled = process.env[FAULT_ENV] === '1';
const leaked: Buffer[] = [];

function send(msg: FromWorker): void {
  if (parentPort) {
    const transfer = msg.type === 'result' ? [msg.data.buffer as ArrayBuffer] : [];
    parentPort.postMessage(msg, transfer);
  } else if (process.send) {
    process.send(msg);
  }
}

function memory(): MemoryReport {
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external };
}

function reason(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function abort(): void {
  // A native abort() raises SIGABRT on the whole process. Node forbids process.abort() in a worker
  // thread, so a thread raises the same signal, with the same effect as a crash in native code.
  if (parentPort) process.kill(process.pid, 'SIGABRT');
  else process.abort();
}

function maybeFault(input: Float32Array, runtime: string): void {
  if (!faultsEnabled) return;
  if (existsSync(path.join(process.env[FAULT_DIR_ENV] || tmpdir(), CRASH_RUNTIME_PREFIX + runtime))) abort();
  if (input.length < 3 || input[0] !== FAULT_SENTINEL) return;
  const token = input[2] ?? 0;
  if (token > 0) {
    const marker = path.join(process.env[FAULT_DIR_ENV] || tmpdir(), `edge-agent-fault-${token}`);
    try {
      writeFileSync(marker, String(process.pid), { flag: 'wx' });
    } catch {
      return; // this once-fault already fired
    }
  }
  switch (input[1]) {
    case FaultKind.abort:
      abort();
      break;
    case FaultKind.hang:
      for (;;) {
        // spin: the event loop never comes back, so only a kill ends this worker
      }
    case FaultKind.leak:
      leaked.push(Buffer.alloc(200 * 1024 * 1024, 1));
      break;
    default:
      break;
  }
}

let session: InferenceSessionHandle | undefined;

async function handle(msg: ToWorker): Promise<void> {
  switch (msg.type) {
    case 'load': {
      try {
        const rt = runtimeRegistry().get(msg.spec.runtime);
        // Runtimes may take a third, runtime-specific argument (e.g. OnnxRuntime's input/output names).
        const load: (p: string, o: RuntimeLoadOptions, x?: Record<string, unknown>) => Promise<InferenceSessionHandle> = rt.load.bind(rt);
        session = await load(msg.spec.modelPath, msg.spec.options, msg.spec.extras);
        send({
          type: 'loaded',
          runtime: session.runtime,
          provider: session.provider,
          attempts: session.attempts,
          inputName: session.inputName,
          outputName: session.outputName,
          memory: memory(),
        });
      } catch (e) {
        send({ type: 'load-error', message: reason(e) });
      }
      return;
    }
    case 'run': {
      try {
        if (!session) throw new Error('worker has no model loaded');
        maybeFault(msg.input, session.runtime);
        const out = await session.run(msg.input, msg.shape);
        // Own copy: the runtime's output may view a larger buffer, and a thread transfers this one.
        send({ type: 'result', id: msg.id, data: new Float32Array(out.data), shape: out.shape, memory: memory() });
      } catch (e) {
        send({ type: 'error', id: msg.id, message: reason(e) });
      }
      return;
    }
    case 'dispose': {
      await session?.dispose().catch(() => undefined);
      session = undefined;
      send({ type: 'disposed' });
      if (parentPort) parentPort.close();
      else process.disconnect?.();
      return;
    }
  }
}

// Messages are handled strictly in order (the supervisor sends one run at a time anyway).
let chain = Promise.resolve();
function onMessage(m: unknown): void {
  const msg = m as ToWorker;
  chain = chain.then(() => handle(msg));
}

if (parentPort) {
  parentPort.on('message', onMessage);
} else if (process.send) {
  process.on('message', onMessage);
  // The supervisor went away (crashed or was killed): do not linger as an orphan holding native memory.
  process.on('disconnect', () => process.exit(0));
} else {
  process.stderr.write('runtimes/worker/entry: must be started by the supervisor (fork or worker_threads)\n');
  process.exit(2);
}
