/**
 * Bundle download from a real HTTP(S) server (node:http) serving a real packed bundle: resume after a
 * cut connection and across a restart, size cap, bad hash, stalls, HTTP errors, TLS with a private CA.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DownloadError, downloadBundle, type DownloadOptions } from '../../src/fleet/download.js';
import { makeTestPki } from '../helpers/certs.js';
import { BundleServer, SHIPPED, packTar, type PackedBundle } from './helpers.js';

let dir: string;
let tar: PackedBundle;
let server: BundleServer;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'download-'));
  tar = await packTar(SHIPPED, path.join(dir, 'bundle.tar'));
  server = await BundleServer.start();
});
afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
function opts(url: string, over: Partial<DownloadOptions> = {}): DownloadOptions {
  return { url, dest: path.join(dir, `out-${++n}.tar`), sha256: tar.sha256, size: tar.size, maxBytes: 64 * 1024 * 1024, timeoutMs: 5000, ...over };
}

async function expectSameAsServed(file: string): Promise<void> {
  expect((await readFile(file)).equals(await readFile(tar.file))).toBe(true);
}

describe('bundle download', () => {
  it('downloads, verifies and renames into place; a second call reuses the verified file', async () => {
    const url = server.add('plain.tar', { file: tar.file });
    const o = opts(url);
    const progress: number[] = [];
    const r = await downloadBundle({ ...o, onProgress: (b) => progress.push(b) });
    expect(r).toMatchObject({ file: o.dest, bytes: tar.size, resumedFrom: 0, requests: 1 });
    await expectSameAsServed(o.dest);
    expect(existsSync(`${o.dest}.part`)).toBe(false);
    expect(progress.at(-1)).toBe(tar.size);
    expect(progress.length).toBeGreaterThan(1);
    const before = server.requests.length;
    expect((await downloadBundle(o)).requests).toBe(0);
    expect(server.requests.length).toBe(before);
  });

  it('a connection cut mid-body is resumed with a Range request from the bytes already on disk', async () => {
    const url = server.add('cut.tar', { file: tar.file, cutAfter: 1_000_000, cuts: 1 });
    const o = opts(url);
    const r = await downloadBundle(o);
    expect(r.requests).toBe(2);
    const seen = server.requests.filter((q) => q.path === '/cut.tar');
    expect(seen.map((q) => [q.range, q.status])).toEqual([
      [null, 200],
      [expect.stringMatching(/^bytes=\d+-$/), 206],
    ]);
    const from = Number(/bytes=(\d+)-/.exec(seen[1]!.range!)![1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(1_000_000);
    await expectSameAsServed(o.dest);
  });

  it('a partial file left by a previous run (agent restart) is continued, not started over', async () => {
    const url = server.add('restart.tar', { file: tar.file, cutAfter: 2_000_000, cuts: 1 });
    const o = opts(url, { attempts: 1 });
    const first = await downloadBundle(o).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(DownloadError);
    expect((first as DownloadError).code).toBe('network');
    const partial = (await stat(`${o.dest}.part`)).size;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(tar.size);
    // "restart": a new call with the same destination
    const r = await downloadBundle(o);
    expect(r.resumedFrom).toBe(partial);
    expect(server.requests.filter((q) => q.path === '/restart.tar').at(-1)).toMatchObject({ range: `bytes=${partial}-`, status: 206 });
    await expectSameAsServed(o.dest);
  });

  it('a server that ignores Range sends the whole file again: the partial file is replaced, not appended to', async () => {
    const url = server.add('norange.tar', { file: tar.file, cutAfter: 500_000, cuts: 1, ignoreRange: true });
    const o = opts(url);
    await downloadBundle(o);
    expect(server.requests.filter((q) => q.path === '/norange.tar').map((q) => q.status)).toEqual([200, 200]);
    await expectSameAsServed(o.dest);
  });

  it('a stalled transfer times out and resumes', async () => {
    const url = server.add('stall.tar', { file: tar.file, stallAfter: 300_000, stalls: 1 });
    const o = opts(url, { timeoutMs: 500 });
    const r = await downloadBundle(o);
    expect(r.requests).toBe(2);
    expect(server.requests.filter((q) => q.path === '/stall.tar').at(-1)!.status).toBe(206);
    await expectSameAsServed(o.dest);
  });

  it('refuses a document whose size is over the cap before making any request', async () => {
    const url = server.add('big.tar', { file: tar.file });
    const err = (await downloadBundle(opts(url, { maxBytes: tar.size - 1 })).catch((e: unknown) => e)) as DownloadError;
    expect(err).toBeInstanceOf(DownloadError);
    expect(err.code).toBe('too-large');
    expect(err.message).toMatch(/over the download cap/);
    expect(server.requests.some((q) => q.path === '/big.tar')).toBe(false);
  });

  it('cuts off a server that sends more than the expected size and deletes the partial file', async () => {
    const url = server.add('extra.tar', { file: tar.file, extra: 4096 });
    const o = opts(url);
    const err = (await downloadBundle(o).catch((e: unknown) => e)) as DownloadError;
    expect(err.code).toBe('too-large');
    expect(existsSync(`${o.dest}.part`)).toBe(false);
    expect(existsSync(o.dest)).toBe(false);
    // a smaller size claimed than what the registry's Content-Length announces is refused up front
    const url2 = server.add('plain2.tar', { file: tar.file });
    const err2 = (await downloadBundle(opts(url2, { size: tar.size - 10, sha256: tar.sha256 })).catch((e: unknown) => e)) as DownloadError;
    expect(err2.code).toBe('too-large');
    expect(err2.message).toMatch(/registry sends \d+ bytes, expected/);
  });

  it('a file whose sha256 differs is refused and deleted; nothing is left at the destination', async () => {
    const other = path.join(dir, 'other.tar');
    const bytes = await readFile(tar.file);
    bytes[bytes.length - 2000] = (bytes[bytes.length - 2000] ?? 0) ^ 0xff;
    await writeFile(other, bytes);
    const url = server.add('tampered.tar', { file: other });
    const o = opts(url);
    const err = (await downloadBundle(o).catch((e: unknown) => e)) as DownloadError;
    expect(err.code).toBe('hash-mismatch');
    expect(err.message).toContain(tar.sha256);
    expect(existsSync(o.dest)).toBe(false);
    expect(existsSync(`${o.dest}.part`)).toBe(false);
  });

  it('HTTP 404 is final (no retries); a non-http URL is refused', async () => {
    const o = opts(`${server.base}/missing.tar`);
    const err = (await downloadBundle(o).catch((e: unknown) => e)) as DownloadError;
    expect(err.code).toBe('http');
    expect(err.message).toMatch(/HTTP 404/);
    expect(server.requests.filter((q) => q.path === '/missing.tar')).toHaveLength(1);
    const bad = (await downloadBundle(opts('file:///etc/passwd')).catch((e: unknown) => e)) as DownloadError;
    expect(bad.code).toBe('bad-url');
  });

  it('https: verifies the registry against the configured CA, and refuses it without', async () => {
    const pki = makeTestPki();
    const tls = await BundleServer.start({ cert: await readFile(pki.serverCertPath), key: await readFile(pki.serverKeyPath) });
    try {
      const url = tls.add('tls.tar', { file: tar.file });
      const o = opts(url, { ca: pki.ca });
      await downloadBundle(o);
      await expectSameAsServed(o.dest);
      const err = (await downloadBundle(opts(url, { attempts: 1 })).catch((e: unknown) => e)) as DownloadError;
      expect(err).toBeInstanceOf(DownloadError);
      expect(err.message).toMatch(/certificate|self.signed|UNABLE_TO/i);
    } finally {
      await tls.close();
      pki.dispose();
    }
  });
});
