/**
 * Remote pause/resume of intake (fleet `pause` / `resume`).
 *
 * A pause survives a restart: it is kept in `<stateDir>/ingest-paused.json` and applied before the inbox
 * watcher starts. Hospital IT pauses a device for a reason (scanner maintenance, a model under
 * investigation); a watchdog or power-cycle restart must not quietly undo that. Only `resume` does.
 *
 * While paused, files keep arriving in the inbox (the file system is the buffer) and nothing is taken;
 * jobs already taken finish and their results are published. Backpressure resumes (the pipeline has room
 * again) never lift a commanded pause.
 */
import { readFileSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './config-store.js';

export const PAUSE_FILE = 'ingest-paused.json';

export interface PauseRecord {
  paused: true;
  since: string;
  by: string | null;
  reason: string | null;
}

export interface IngestTarget {
  pause(): void;
  resume(): void;
}

export class IngestControl {
  private record: PauseRecord | null;
  private target: IngestTarget | undefined;
  private readonly file: string;

  constructor(stateDir: string) {
    this.file = path.join(stateDir, PAUSE_FILE);
    this.record = IngestControl.read(this.file);
  }

  private static read(file: string): PauseRecord | null {
    try {
      const v = JSON.parse(readFileSync(file, 'utf8')) as Partial<PauseRecord>;
      if (v.paused !== true) return null;
      return { paused: true, since: String(v.since ?? ''), by: typeof v.by === 'string' ? v.by : null, reason: typeof v.reason === 'string' ? v.reason : null };
    } catch (err) {
      // No file: not paused. A torn or foreign file: stay paused rather than silently resume.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      return { paused: true, since: new Date().toISOString(), by: null, reason: `unreadable ${PAUSE_FILE}: ${(err as Error).message}` };
    }
  }

  get paused(): boolean {
    return this.record !== null;
  }

  get state(): PauseRecord | null {
    return this.record;
  }

  /** The watcher to drive (again after it was replaced); applies the current state to it. */
  attach(target: IngestTarget): void {
    this.target = target;
    if (this.record) target.pause();
  }

  async pause(by: string | null, reason: string | null): Promise<PauseRecord> {
    if (this.record) return this.record;
    const record: PauseRecord = { paused: true, since: new Date().toISOString(), by, reason };
    await writeFileAtomic(this.file, JSON.stringify(record) + '\n');
    this.record = record;
    this.target?.pause();
    return record;
  }

  async resume(): Promise<void> {
    if (!this.record) return;
    await unlink(this.file).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    this.record = null;
    this.target?.resume();
  }
}
