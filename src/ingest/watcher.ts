/**
 * Inbox watcher: turns file-system events into "this file is complete" notifications.
 *
 * A file is complete when its size and mtime have not changed for `stabilityMs` (checked by one sweep
 * every `pollIntervalMs`), which covers slow in-place writers; write-then-rename shows up as a new,
 * already stable name; temporary and hidden names are never taken. Files present at start go through
 * the same check (chokidar reports them before any write could have finished: chokidar 1100, 513).
 *
 * Backpressure: the watcher tracks at most `maxTracked` files and hands a file over only when the
 * consumer accepts it. A complete file the consumer has no room for stays tracked and is offered on
 * `resume()`; events beyond `maxTracked` are dropped and remembered, and the inbox is rescanned once
 * there is room. The file system is the buffer, so a flood costs bounded memory and loses nothing.
 */
import { watch, type FSWatcher } from 'chokidar';
import { lstat, readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';

export interface WatcherOptions {
  inbox: string;
  stabilityMs: number;
  pollIntervalMs: number;
  usePolling: boolean;
  /** Globs on each path component's name (`*`, `?`), e.g. `.*`, `*.tmp`. */
  ignore: string[];
  maxTracked: number;
}

export interface CompleteFile {
  path: string;
  /** Path relative to the inbox, with `/` separators. */
  name: string;
  size: number;
  mtimeMs: number;
}

/** Returns false when the consumer is full: the watcher will offer the file again after resume(). */
export type FileConsumer = (file: CompleteFile) => boolean;

/** True for a path the consumer already holds (a rescan skips it instead of offering it again). */
export type KnownPath = (path: string) => boolean;

interface Tracked {
  size: number;
  mtimeMs: number;
  /**
   * When size/mtime were last seen to change (or first seen), on the monotonic clock (performance.now):
   * a wall clock stepped back must not hold files for the size of the step.
   */
  changedAt: number;
  /** Passed the stability check; waiting to be offered. */
  complete: boolean;
}

export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

export class InboxWatcher {
  private watcher: FSWatcher | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly tracked = new Map<string, Tracked>();
  private readonly ignore: RegExp[];
  private overflowed = false;
  private consumerFull = false;
  private paused = false;
  private sweeping = false;
  private rescanning: Promise<void> | undefined;
  private inboxReal = '';
  private readyResolve: (() => void) | undefined;

  constructor(
    private readonly opts: WatcherOptions,
    private readonly consumer: FileConsumer,
    private readonly log: Logger,
    private readonly known: KnownPath = () => false,
  ) {
    this.ignore = opts.ignore.map(globToRegExp);
  }

  /** Resolves once the initial scan is done (backlog files are tracked). */
  async start(): Promise<void> {
    this.inboxReal = await realpath(this.opts.inbox);
    const ready = new Promise<void>((resolve) => (this.readyResolve = resolve));
    this.watcher = watch(this.opts.inbox, {
      ignoreInitial: false,
      persistent: true,
      followSymlinks: false,
      usePolling: this.opts.usePolling,
      interval: this.opts.pollIntervalMs,
      binaryInterval: this.opts.pollIntervalMs,
      alwaysStat: false,
      ignored: (p: string) => this.isIgnored(p),
    });
    this.watcher.on('add', (p: string) => this.track(p));
    this.watcher.on('change', (p: string) => this.track(p));
    this.watcher.on('unlink', (p: string) => this.tracked.delete(p));
    this.watcher.on('error', (err: unknown) => this.log.error({ err }, 'inbox watcher error'));
    this.watcher.on('ready', () => this.readyResolve?.());
    this.sweepTimer = setInterval(() => void this.sweep(), this.opts.pollIntervalMs);
    await ready;
  }

  async stop(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    await this.watcher?.close();
    this.watcher = undefined;
    await this.rescanning;
    this.tracked.clear();
  }

  /** Stop handing out files (e.g. disk full, or a `pause` command); events keep being noted. */
  pause(): void {
    this.paused = true;
  }

  /** Hand out files again, rescanning the inbox when events were dropped meanwhile. */
  resume(): void {
    this.paused = false;
    this.consumerFull = false;
    if (this.overflowed) this.rescan();
    if (this.sweepTimer) void this.sweep(); // offer files already known complete right away
  }

  get trackedCount(): number {
    return this.tracked.size;
  }

  isIgnored(p: string): boolean {
    const rel = path.relative(this.opts.inbox, p);
    if (rel === '' || rel.startsWith('..')) return false;
    return rel.split(path.sep).some((part) => this.ignore.some((re) => re.test(part)));
  }

  private track(p: string): void {
    if (this.isIgnored(p)) return;
    const prev = this.tracked.get(p);
    if (prev) {
      prev.changedAt = performance.now();
      prev.complete = false;
      return;
    }
    if (this.tracked.size >= this.opts.maxTracked) {
      this.overflowed = true;
      return;
    }
    this.tracked.set(p, { size: -1, mtimeMs: -1, changedAt: performance.now(), complete: false });
  }

  private async sweep(): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      const now = performance.now();
      for (const [p, t] of this.tracked) {
        // Skip the stat when it cannot change the outcome: a file that changed less than
        // stabilityMs ago cannot be complete yet (a further write raises an event that restarts its
        // window), and a complete file waiting for room is stat'ed again when it is offered.
        if (t.size !== -1 && now - t.changedAt < this.opts.stabilityMs && !this.opts.usePolling) continue;
        if (t.complete && (this.paused || this.consumerFull)) continue;
        let s;
        try {
          s = await lstat(p);
        } catch {
          this.tracked.delete(p); // gone (renamed away or deleted)
          continue;
        }
        if (s.isSymbolicLink()) {
          if (!(await this.symlinkInside(p))) {
            this.log.warn({ file: path.relative(this.opts.inbox, p) }, 'symlink pointing outside the inbox refused');
            this.tracked.delete(p);
            continue;
          }
          s = await stat(p).catch(() => undefined);
          if (!s) {
            this.tracked.delete(p);
            continue;
          }
        }
        if (!s.isFile()) {
          this.tracked.delete(p);
          continue;
        }
        if (s.size !== t.size || s.mtimeMs !== t.mtimeMs) {
          // First look at a file: it last changed at its mtime (a backlog or rescanned file has long
          // been quiet and needs no fresh window); any later change restarts the window from now.
          // An mtime in the future (the wall clock stepped back, or a writer with a skewed clock on a
          // network filesystem) says nothing about quiet time: only the monotonic window counts then.
          const age = Date.now() - s.mtimeMs;
          t.changedAt = t.size === -1 && age > 0 ? Math.min(t.changedAt, now - age) : now;
          t.size = s.size;
          t.mtimeMs = s.mtimeMs;
          t.complete = false;
          continue;
        }
        const sinceWrite = Date.now() - s.mtimeMs;
        const quiet = sinceWrite >= 0 ? Math.min(now - t.changedAt, sinceWrite) : now - t.changedAt;
        if (quiet < this.opts.stabilityMs) continue;
        t.complete = true;
        // Paused or full: a complete file stays tracked (bounded by maxTracked) and is offered the
        // moment there is room, without a new stability window.
        if (this.paused || this.consumerFull) continue;
        const taken = this.consumer({
          path: p,
          name: path.relative(this.opts.inbox, p).split(path.sep).join('/'),
          size: s.size,
          mtimeMs: s.mtimeMs,
        });
        if (taken) this.tracked.delete(p);
        else this.consumerFull = true;
      }
      // Events were dropped because too many files were tracked (not because the consumer is full):
      // once the backlog of tracked files has shrunk, look for the dropped ones.
      if (this.overflowed && !this.paused && !this.consumerFull && this.tracked.size < this.opts.maxTracked / 2) this.rescan();
    } finally {
      this.sweeping = false;
    }
  }

  private async symlinkInside(p: string): Promise<boolean> {
    try {
      const target = await realpath(p);
      const rel = path.relative(this.inboxReal, target);
      return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
    } catch {
      return false;
    }
  }

  /** Walks the inbox and tracks every file not tracked yet (after an overflow). */
  private rescan(): void {
    if (this.rescanning) return;
    this.overflowed = false;
    this.rescanning = (async () => {
      try {
        const entries = await readdir(this.opts.inbox, { recursive: true, withFileTypes: true });
        for (const e of entries) {
          if (!(e.isFile() || e.isSymbolicLink())) continue;
          const full = path.join(e.parentPath, e.name);
          if (this.tracked.has(full) || this.isIgnored(full) || this.known(full)) continue;
          if (this.tracked.size >= this.opts.maxTracked) {
            this.overflowed = true;
            break;
          }
          this.track(full);
        }
      } catch (err) {
        this.log.error({ err }, 'inbox rescan failed');
        this.overflowed = true;
      } finally {
        this.rescanning = undefined;
      }
    })();
  }
}
