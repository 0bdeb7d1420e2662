/**
 * Writes a line to stdout synchronously, whatever the pipe's state: the chaos children report each step
 * (a commit, a fuzz case begun) before doing the next, so the parent's view is never ahead of the facts.
 * A pipe to a busy parent is non-blocking and full at times (EAGAIN): wait 2 ms and write the rest.
 */
import { writeSync } from 'node:fs';

const pause = new Int32Array(new SharedArrayBuffer(4));

export function writeLine(line: string): void {
  const buf = Buffer.from(line + '\n');
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(1, buf, off, buf.length - off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      Atomics.wait(pause, 0, 0, 2);
    }
  }
}
