import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { StateStore } from '../../src/store/index.js';

function store(): { dir: string; s: StateStore } {
  const dir = mkdtempSync(path.join(tmpdir(), 'store-'));
  return { dir, s: StateStore.open(dir) };
}

const file = (hash: string, name = `${hash}.dcm`) => ({ hash, name, path: `/inbox/${name}`, size: 100 });

describe('journal', () => {
  it('walks a job queued -> decoded -> inferred -> published, the outbox emptying on ack', () => {
    const { s } = store();
    expect(s.journal.accept(file('a')).outcome).toBe('new');
    expect(s.journal.get('a')?.state).toBe('queued');
    s.journal.markDecoded('a', { modality: 'CT', frames: 2 });
    expect(s.journal.get('a')?.state).toBe('decoded');
    const seqs = s.journal.complete('a', [
      { resultId: 'r1', topic: 't/result', payload: '{"n":1}' },
      { resultId: 'r2', topic: 't/result', payload: '{"n":2}' },
    ]);
    expect(s.journal.get('a')?.state).toBe('inferred');
    expect(s.outbox.next(0, 10).map((r) => r.payload)).toEqual(['{"n":1}', '{"n":2}']);
    const published: string[] = [];
    s.outbox.onJobPublished = (h) => published.push(h);
    s.outbox.ack(seqs[0]!);
    expect(published).toEqual([]);
    expect(s.journal.get('a')?.state).toBe('inferred');
    s.outbox.ack(seqs[1]!);
    expect(published).toEqual(['a']);
    expect(s.journal.get('a')?.state).toBe('published');
    expect(s.outbox.size()).toBe(0);
  });

  it('recognises the same content: resume while unfinished, duplicate once published, retry after failure', () => {
    const { s } = store();
    s.journal.accept(file('b'));
    expect(s.journal.accept(file('b', 'copy.dcm')).outcome).toBe('resume');
    s.journal.complete('b', []);
    expect(s.journal.get('b')?.state).toBe('published');
    expect(s.journal.accept(file('b', 'again.dcm')).outcome).toBe('duplicate');
    s.journal.accept(file('c'));
    s.journal.fail('c', 'corrupt', 'bad bytes', { resultId: null, topic: 't/error', payload: '{}' });
    expect(s.journal.get('c')).toMatchObject({ state: 'failed', errorCode: 'corrupt', error: 'bad bytes' });
    expect(s.outbox.next(0, 10).map((r) => r.topic)).toEqual(['t/error']);
    expect(s.journal.accept(file('c')).outcome).toBe('retry');
    expect(s.journal.get('c')).toMatchObject({ state: 'queued', attempts: 0, error: null });
  });

  it('lists unfinished jobs and finished-but-not-moved files for recovery', () => {
    const { s } = store();
    s.journal.accept(file('q'));
    s.journal.accept(file('d'));
    s.journal.markDecoded('d', { modality: 'MR', frames: 1 });
    s.journal.accept(file('p'));
    s.journal.complete('p', []);
    expect(s.journal.unfinished().map((j) => j.hash)).toEqual(['q', 'd']);
    expect(s.journal.pendingFinalize().map((j) => j.hash)).toEqual(['p']);
    s.journal.markFinalized('p', '/done/p.dcm');
    expect(s.journal.pendingFinalize()).toEqual([]);
    expect(s.journal.get('p')?.path).toBe('/done/p.dcm');
  });

  // Runs the compiled store (npm test builds first) in a child process that kills itself.
  it('keeps a committed transaction when the process is killed with SIGKILL right after', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'store-kill-'));
    const script = `
      import { StateStore } from ${JSON.stringify(path.resolve('dist/src/store/index.js'))};
      const s = StateStore.open(${JSON.stringify(dir)});
      s.journal.accept({ hash: 'k', name: 'k.dcm', path: '/inbox/k.dcm', size: 1 });
      s.journal.complete('k', [{ resultId: 'rk', topic: 't', payload: 'p' }]);
      process.kill(process.pid, 'SIGKILL');
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.signal).toBe('SIGKILL');
    const s = StateStore.open(dir);
    expect(s.journal.get('k')?.state).toBe('inferred');
    expect(s.outbox.next(0, 10)).toHaveLength(1);
    expect(s.db.pragma('integrity_check', { simple: true })).toBe('ok');
  });

  it('keeps one UID salt per device across restarts', () => {
    const { dir, s } = store();
    const salt = s.uidSalt('');
    s.close();
    expect(StateStore.open(dir).uidSalt('')).toBe(salt);
    expect(salt).toMatch(/^[0-9a-f]{64}$/);
  });
});
