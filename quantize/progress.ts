/**
 * Progress on stderr. On a TTY: one bar redrawn in place (`\r`), at most ~10 times a second. Not a TTY
 * (CI logs, pipes): plain lines, one at the start, one at each 25%, one at the end, so logs stay short.
 */
export interface Progress {
  start(label: string, total: number): void;
  tick(n?: number): void;
  done(): void;
}

export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(s: string): boolean;
}

export function createProgress(stream: ProgressStream = process.stderr, enabled = true): Progress {
  let label = '';
  let total = 0;
  let count = 0;
  let t0 = 0;
  let lastDraw = 0;
  let nextQuarter = 1;
  const tty = Boolean(stream.isTTY);
  const elapsed = (): string => `${((Date.now() - t0) / 1000).toFixed(1)}s`;
  const draw = (force: boolean): void => {
    const now = Date.now();
    if (!force && now - lastDraw < 100) return;
    lastDraw = now;
    const width = Math.max(10, Math.min(30, (stream.columns ?? 80) - label.length - 30));
    const frac = total > 0 ? Math.min(1, count / total) : 0;
    const fill = Math.round(frac * width);
    stream.write(`\r${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${count}/${total} ${elapsed()}\x1b[K`);
  };
  return {
    start(l, t) {
      if (!enabled) return;
      label = l;
      total = t;
      count = 0;
      t0 = Date.now();
      lastDraw = 0;
      nextQuarter = 1;
      if (tty) draw(true);
      else stream.write(`${label}: 0/${total}\n`);
    },
    tick(n = 1) {
      if (!enabled) return;
      count += n;
      if (tty) draw(false);
      else if (total > 0 && count < total && count >= (nextQuarter * total) / 4) {
        while (count >= (nextQuarter * total) / 4) nextQuarter++;
        stream.write(`${label}: ${count}/${total} (${elapsed()})\n`);
      }
    },
    done() {
      if (!enabled) return;
      if (tty) {
        draw(true);
        stream.write('\n');
      } else stream.write(`${label}: ${count}/${total} done (${elapsed()})\n`);
    },
  };
}
