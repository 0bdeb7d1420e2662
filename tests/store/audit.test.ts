import Database from 'better-sqlite3';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseSince, verifyExported } from '../../src/store/audit.js';
import { StateStore, payloadSha256 } from '../../src/store/index.js';

function open(): { dir: string; s: StateStore } {
  const dir = mkdtempSync(path.join(tmpdir(), 'audit-'));
  return { dir, s: StateStore.open(dir) };
}

const model = { id: 'orientation-qa', version: '1.1.0', sha256: 'ab'.repeat(32) };

describe('audit log', () => {
  it('records results, commands and model changes, and reads them back in order by time and kind', () => {
    const { s } = open();
    s.audit.result({ resultId: 'r1', model, inputSha256: 'sha256:' + 'cd'.repeat(32), at: Date.parse('2026-01-01T00:00:00Z') });
    s.audit.command({
      cmd: 'set-config',
      sender: 'central',
      payloadSha256: payloadSha256('{"data":{}}'),
      outcome: 'ok',
      transaction: 't-1',
      at: Date.parse('2026-01-02T00:00:00Z'),
    });
    s.audit.modelChange({
      from: model,
      to: { id: 'orientation-qa', version: '1.2.0', sha256: 'ef'.repeat(32) },
      reason: 'sighup-reload',
      actor: 'operator',
      at: Date.parse('2026-01-03T00:00:00Z'),
    });
    const all = [...s.audit.entries()];
    expect(all.map((e) => [e.seq, e.kind])).toEqual([
      [1, 'result'],
      [2, 'command'],
      [3, 'model'],
    ]);
    expect(all[0]).toMatchObject({ kind: 'result', resultId: 'r1', model, inputSha256: 'cd'.repeat(32), at: '2026-01-01T00:00:00.000Z' });
    expect(all[1]).toMatchObject({
      kind: 'command',
      cmd: 'set-config',
      sender: 'central',
      payloadSha256: payloadSha256('{"data":{}}'),
      outcome: 'ok',
      transaction: 't-1',
    });
    expect(all[2]).toMatchObject({ kind: 'model', from: { version: '1.1.0' }, to: { version: '1.2.0' }, actor: 'operator' });
    expect([...s.audit.entries({ since: Date.parse('2026-01-02T00:00:00Z') })].map((e) => e.seq)).toEqual([2, 3]);
    expect([...s.audit.entries({ kind: 'command' })].map((e) => e.seq)).toEqual([2]);
    expect(s.audit.count()).toBe(3);
    expect(s.audit.verify()).toEqual({ ok: true, rows: 3, brokenAt: null });
  });

  it('refuses UPDATE and DELETE in the database itself, from any connection', () => {
    const { dir, s } = open();
    s.audit.command({ cmd: 'ping', sender: null, payloadSha256: payloadSha256(''), outcome: 'ok' });
    s.close();
    const raw = new Database(path.join(dir, 'agent.db'));
    expect(() => raw.prepare("UPDATE audit SET data = '{}'").run()).toThrow(/append-only/);
    expect(() => raw.prepare('DELETE FROM audit').run()).toThrow(/append-only/);
    expect((raw.prepare('SELECT COUNT(*) AS n FROM audit').get() as { n: number }).n).toBe(1);
    raw.close();
  });

  it('detects a row altered behind the triggers (chain broken at that row)', () => {
    const { dir, s } = open();
    for (let i = 0; i < 4; i++) s.audit.result({ resultId: `r${i}`, model, inputSha256: 'cd'.repeat(32) });
    s.close();
    const raw = new Database(path.join(dir, 'agent.db'));
    raw.exec('DROP TRIGGER audit_no_update');
    raw.prepare("UPDATE audit SET data = replace(data, '\"r2\"', '\"forged\"') WHERE seq = 3").run();
    raw.close();
    const again = StateStore.open(dir);
    expect(again.audit.verify()).toEqual({ ok: false, rows: 2, brokenAt: 3 });
    again.close();
  });

  it('rolls back with the transaction it is part of (a result is audited only if it was committed)', () => {
    const { s } = open();
    s.journal.accept({ hash: 'h1', name: 'a.dcm', path: '/inbox/a.dcm', size: 1 });
    expect(() =>
      s.db.transaction(() => {
        s.journal.complete('h1', [{ resultId: 'r1', topic: 't/result', payload: '{}' }]);
        s.audit.result({ resultId: 'r1', model, inputSha256: 'h1' });
        throw new Error('disk full');
      })(),
    ).toThrow('disk full');
    expect(s.audit.count()).toBe(0);
    expect(s.outbox.size()).toBe(0);
    s.db.transaction(() => {
      s.journal.complete('h1', [{ resultId: 'r1', topic: 't/result', payload: '{}' }]);
      s.audit.result({ resultId: 'r1', model, inputSha256: 'h1' });
    })();
    expect(s.audit.count('result')).toBe(1);
    expect(s.audit.verify().ok).toBe(true);
  });

  it('migrates a version-1 store (journal and outbox kept, audit table added)', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'audit-v1-'));
    const raw = new Database(path.join(dir, 'agent.db'));
    raw.exec(`CREATE TABLE jobs (hash TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
      state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error_code TEXT, error TEXT, modality TEXT, frames INTEGER,
      results INTEGER NOT NULL DEFAULT 0, finalized INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
      CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_hash TEXT, result_id TEXT, topic TEXT NOT NULL, payload TEXT NOT NULL, created_at INTEGER NOT NULL);
      CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      INSERT INTO jobs(hash, name, path, size, state, created_at, updated_at) VALUES ('old', 'x.dcm', '/i/x.dcm', 1, 'published', 1, 1);
      PRAGMA user_version = 1;`);
    raw.close();
    const s = StateStore.open(dir);
    expect(s.journal.get('old')?.state).toBe('published');
    s.audit.modelChange({ from: null, to: model, reason: 'start', actor: 'agent' });
    expect(s.audit.count()).toBe(1);
    s.close();
  });
});

describe('parseSince (audit export --since)', () => {
  const now = Date.parse('2026-03-01T12:00:00Z');
  it('takes durations back from now and ISO times', () => {
    expect(parseSince('90s', now)).toBe(now - 90_000);
    expect(parseSince('15m', now)).toBe(now - 15 * 60_000);
    expect(parseSince('12h', now)).toBe(now - 12 * 3_600_000);
    expect(parseSince('30d', now)).toBe(now - 30 * 86_400_000);
    expect(parseSince('2w', now)).toBe(now - 14 * 86_400_000);
    expect(parseSince('2026-01-31T08:00:00Z', now)).toBe(Date.parse('2026-01-31T08:00:00Z'));
    expect(parseSince('2026-01-31', now)).toBe(Date.parse('2026-01-31'));
  });
  it('refuses anything else with the accepted forms in the message', () => {
    for (const bad of ['yesterday', '10', '5y', '2026-13-45', '']) expect(() => parseSince(bad, now)).toThrow(/ISO time .* or a duration/);
  });
});

describe('archive (operator path; never automatic)', () => {
  it('moves the oldest rows out after they were flushed, keeps the chain verifiable, and continues it', () => {
    const { dir, s } = open();
    const t = (d: number) => Date.parse(`2026-01-0${d}T00:00:00Z`);
    for (let d = 1; d <= 5; d++) s.audit.result({ resultId: `r${d}`, model, inputSha256: 'cd'.repeat(32), at: t(d) });
    const lines: string[] = [];
    let flushed = 0;
    const out = s.audit.archive(t(4), (l) => lines.push(l), () => flushed++);
    expect(out).toEqual({ rows: 3, firstSeq: 1, lastSeq: 3 });
    expect(flushed).toBe(1);
    expect(lines.map((l) => (JSON.parse(l) as { resultId: string }).resultId)).toEqual(['r1', 'r2', 'r3']);
    expect([...s.audit.entries()].map((e) => e.seq)).toEqual([4, 5]);
    expect(s.audit.verify()).toEqual({ ok: true, rows: 2, brokenAt: null });
    // The delete guard is back: nothing else can delete.
    expect(() => s.db.prepare('DELETE FROM audit').run()).toThrow(/append-only/);
    // Everything archived: the next row still links to the archived chain.
    expect(s.audit.archive(t(9), () => undefined, () => undefined)).toEqual({ rows: 2, firstSeq: 4, lastSeq: 5 });
    expect(s.audit.result({ resultId: 'r6', model, inputSha256: 'cd'.repeat(32) })).toBe(6);
    expect(s.audit.verify()).toEqual({ ok: true, rows: 1, brokenAt: null });
    s.close();
    const again = StateStore.open(dir);
    expect(again.audit.verify().ok).toBe(true);
    again.close();
  });

  it('nothing older than the cut: nothing written, nothing deleted', () => {
    const { s } = open();
    s.audit.result({ resultId: 'r1', model, inputSha256: 'cd'.repeat(32), at: Date.parse('2026-02-01T00:00:00Z') });
    const lines: string[] = [];
    expect(s.audit.archive(Date.parse('2026-01-01T00:00:00Z'), (l) => lines.push(l), () => undefined)).toEqual({ rows: 0, firstSeq: null, lastSeq: null });
    expect(lines).toEqual([]);
    expect(s.audit.count()).toBe(1);
  });

  it('a failed flush deletes nothing', () => {
    const { s } = open();
    s.audit.result({ resultId: 'r1', model, inputSha256: 'cd'.repeat(32), at: 1 });
    expect(() =>
      s.audit.archive(Date.now(), () => undefined, () => {
        throw new Error('ENOSPC');
      }),
    ).toThrow('ENOSPC');
    expect(s.audit.count()).toBe(1);
    expect(s.audit.anchor()).toBeNull();
  });
});

describe('verifyExported (archived NDJSON)', () => {
  function archived(): { lines: string[]; s: StateStore } {
    const { s } = open();
    s.audit.result({ resultId: 'r1', model, inputSha256: 'cd'.repeat(32), at: 1000 });
    s.audit.command({ cmd: 'ping', sender: null, payloadSha256: payloadSha256('{}'), outcome: 'ok', transaction: 't', at: 2000 });
    s.audit.modelChange({ from: model, to: null, reason: 'sighup-reload refused (signature)', actor: 'operator', at: 3000 });
    s.audit.result({ resultId: 'r2', model, inputSha256: 'ef'.repeat(32), frame: 3, at: 4000 });
    const lines: string[] = [];
    s.audit.archive(10_000, (l) => lines.push(l), () => undefined);
    return { lines, s };
  }

  it('an untouched archive verifies and ends at the store anchor; split files chain through prev', () => {
    const { lines, s } = archived();
    const whole = verifyExported(lines);
    expect(whole).toEqual({ ok: true, rows: 4, brokenAt: null, last: s.audit.anchor(), startsUnverifiedAt: null });
    const first = verifyExported(lines.slice(0, 2));
    expect(verifyExported(lines.slice(2), first.last!)).toMatchObject({ ok: true, rows: 2 });
    expect(verifyExported(lines.slice(2))).toMatchObject({ ok: true, startsUnverifiedAt: 3 });
    // The export's lines verify the same way as the archive's.
    s.audit.result({ resultId: 'r3', model, inputSha256: 'ab'.repeat(32) });
    expect(verifyExported([...s.audit.entries()].map((e) => JSON.stringify(e)), s.audit.anchor()!)).toMatchObject({ ok: true, rows: 1 });
  });

  it('an edited, removed or reordered line breaks the chain at that line', () => {
    const { lines } = archived();
    expect(verifyExported([lines[0]!, lines[1]!.replace('"ok"', '"refused"'), lines[2]!, lines[3]!])).toMatchObject({ ok: false, brokenAt: 2 });
    expect(verifyExported([lines[0]!, lines[2]!, lines[3]!])).toMatchObject({ ok: false, brokenAt: 3 });
    expect(verifyExported([lines[1]!, lines[0]!], undefined)).toMatchObject({ ok: false, brokenAt: 1 });
    expect(verifyExported([lines[0]!, 'not json'])).toMatchObject({ ok: false, brokenAt: 2 });
  });
});
