import { appendFileSync, mkdirSync, mkdtempSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { InboxWatcher, globToRegExp, type CompleteFile } from '../../src/ingest/watcher.js';

const log = pino({ level: 'silent' });
const watchers: InboxWatcher[] = [];
afterEach(async () => {
  await Promise.all(watchers.splice(0).map((w) => w.stop()));
});

function inbox(): string {
  return mkdtempSync(path.join(tmpdir(), 'inbox-'));
}

async function start(
  dir: string,
  consumer: (f: CompleteFile) => boolean,
  extra: Partial<ConstructorParameters<typeof InboxWatcher>[0]> = {},
  known?: (p: string) => boolean,
) {
  const w = new InboxWatcher(
    {
      inbox: dir,
      stabilityMs: 300,
      pollIntervalMs: 50,
      usePolling: false,
      ignore: ['.*', '*.tmp', '*.part', '*~'],
      maxTracked: 1000,
      ...extra,
    },
    consumer,
    log,
    known,
  );
  watchers.push(w);
  await w.start();
  return w;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await sleep(20);
  }
}

describe('inbox watcher', () => {
  it('takes files already present at start (backlog)', async () => {
    const dir = inbox();
    mkdirSync(path.join(dir, 'series1'));
    writeFileSync(path.join(dir, 'a.dcm'), 'a');
    writeFileSync(path.join(dir, 'series1', 'b.dcm'), 'bb');
    const got: CompleteFile[] = [];
    await start(dir, (f) => (got.push(f), true));
    await until(() => got.length === 2);
    expect(got.map((f) => f.name).sort()).toEqual(['a.dcm', 'series1/b.dcm']);
    expect(got.find((f) => f.name === 'series1/b.dcm')?.size).toBe(2);
  });

  it('waits for a slow in-place writer to finish before taking the file', async () => {
    const dir = inbox();
    const got: CompleteFile[] = [];
    await start(dir, (f) => (got.push(f), true));
    const file = path.join(dir, 'slow.dcm');
    writeFileSync(file, 'x');
    for (let i = 0; i < 10; i++) {
      await sleep(100); // pauses shorter than stabilityMs (300)
      appendFileSync(file, 'x'.repeat(1000));
    }
    expect(got).toHaveLength(0);
    await until(() => got.length === 1);
    expect(got[0]!.size).toBe(1 + 10 * 1000);
  });

  it('takes a write-then-rename file under its final name only, never temp or hidden names', async () => {
    const dir = inbox();
    const got: CompleteFile[] = [];
    await start(dir, (f) => (got.push(f), true));
    writeFileSync(path.join(dir, 'img.dcm.tmp'), 'partial');
    writeFileSync(path.join(dir, '.hidden.dcm'), 'h');
    mkdirSync(path.join(dir, '.staging'));
    writeFileSync(path.join(dir, '.staging', 'inner.dcm'), 'i');
    writeFileSync(path.join(dir, 'upload.part'), 'p');
    await sleep(500);
    expect(got).toHaveLength(0);
    renameSync(path.join(dir, 'img.dcm.tmp'), path.join(dir, 'img.dcm'));
    await until(() => got.length === 1);
    await sleep(400);
    expect(got.map((f) => f.name)).toEqual(['img.dcm']);
  });

  it('refuses a symlink that points outside the inbox', async () => {
    const dir = inbox();
    const outside = path.join(mkdtempSync(path.join(tmpdir(), 'outside-')), 'secret.dcm');
    writeFileSync(outside, 'secret');
    writeFileSync(path.join(dir, 'inside.dcm'), 'in');
    symlinkSync(outside, path.join(dir, 'link-out.dcm'));
    symlinkSync(path.join(dir, 'inside.dcm'), path.join(dir, 'link-in.dcm'));
    const got: CompleteFile[] = [];
    await start(dir, (f) => (got.push(f), true));
    await until(() => got.length === 2);
    await sleep(400);
    expect(got.map((f) => f.name).sort()).toEqual(['inside.dcm', 'link-in.dcm']);
  });

  it('under a flood, holds back when the consumer is full and finds every file again after resume', async () => {
    const dir = inbox();
    for (let i = 0; i < 300; i++) writeFileSync(path.join(dir, `f${String(i).padStart(3, '0')}.dcm`), String(i));
    const taken = new Set<string>();
    let room = 20;
    // Like the pipeline: files it holds stay in the inbox until published, and it says so.
    const w = await start(
      dir,
      (f) => {
        if (taken.has(f.name)) return true;
        if (room === 0) return false;
        room--;
        taken.add(f.name);
        return true;
      },
      { maxTracked: 50 },
      (p) => taken.has(path.basename(p)),
    );
    await until(() => taken.size === 20);
    await sleep(300);
    expect(taken.size).toBe(20);
    expect(w.trackedCount).toBeLessThanOrEqual(50);
    // The consumer drains in steps; each resume rescans the inbox.
    while (taken.size < 300) {
      room = 40;
      w.resume();
      const before = taken.size;
      await until(() => taken.size > before || taken.size === 300);
      await sleep(200);
    }
    expect(taken.size).toBe(300);
  });

  it('ignore globs match whole names', () => {
    expect(globToRegExp('*.tmp').test('a.tmp')).toBe(true);
    expect(globToRegExp('*.tmp').test('a.tmp.dcm')).toBe(false);
    expect(globToRegExp('.*').test('.x')).toBe(true);
  });
});
