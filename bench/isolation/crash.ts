/**
 * Crash isolation demo for bench/isolation/run.ts: starts the echo peer as a worker THREAD or a child
 * PROCESS, tells it to abort (SIGABRT, the way a native runtime crash ends; see echo.ts), then reports
 * whether this (the "agent") process is still alive one second later. Run:
 *   node dist/bench/isolation/crash.js thread   -> this process dies with SIGABRT (prints nothing)
 *   node dist/bench/isolation/crash.js process  -> prints "survived: child killed by SIGABRT"
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

const echo = fileURLToPath(new URL('./echo.js', import.meta.url));
const mode = process.argv[2];
if (mode === 'thread') {
  const w = new Worker(echo);
  w.on('exit', (code) => console.log(`survived: thread exited with code ${code}`));
  w.postMessage({ kind: 'abort' });
} else {
  const c = fork(echo, [], { serialization: 'advanced' });
  c.on('exit', (code, signal) => console.log(`survived: child killed by ${signal ?? code}`));
  c.send({ kind: 'abort' });
}
setTimeout(() => process.exit(0), 1000);
