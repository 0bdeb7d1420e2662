/**
 * Model bundle download over HTTP(S) from the central registry: resumable, size-capped, with a stall
 * timeout, sha256-verified before anyone unpacks it.
 *
 * - The bytes go to `<dest>.part`; only a file whose sha256 matches is renamed to `dest`. A `.part` left by
 *   a cut connection or by an agent restart is continued with `Range: bytes=<have>-`: a server answering
 *   206 with the matching Content-Range is appended to, one answering 200 (no range support) restarts the
 *   file from zero. A `.part` already as long as the expected size is only hashed.
 * - Cap: the expected `size` (the desired document's) and the hard cap `maxBytes` (config
 *   fleet.download.maxBytes). A document whose size is over the cap is refused before any request; a
 *   server that sends more than `size` bytes (Content-Length or the stream itself) is cut off and the
 *   partial file deleted.
 * - Timeout: no byte for `timeoutMs` ends the attempt (and the next attempt resumes); the total number of
 *   attempts is bounded. HTTP 4xx (except 408/429) is final; 5xx and network errors are retried.
 * - Redirects (301/302/303/307/308) are followed, at most 5, http/https only.
 * - TLS: `ca` (config fleet.download.caFile) is the CA that signed the registry's certificate.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';

export type DownloadErrorCode = 'too-large' | 'hash-mismatch' | 'http' | 'network' | 'timeout' | 'bad-url' | 'aborted';

export class DownloadError extends Error {
  override name = 'DownloadError';
  constructor(
    readonly code: DownloadErrorCode,
    message: string,
    /** A retry of the same download can help (network, timeout, 5xx). */
    readonly retryable = false,
  ) {
    super(message);
  }
}

export interface DownloadOptions {
  url: string;
  /** Final file; the partial one is `<dest>.part`. */
  dest: string;
  /** Expected sha256 (hex) of the whole file. */
  sha256: string;
  /** Expected size in bytes. */
  size: number;
  /** Hard cap in bytes, whatever `size` says. */
  maxBytes: number;
  /** No data for this long ends an attempt (ms). */
  timeoutMs: number;
  /** Attempts in all (first + retries after a cut connection or stall); default 5. */
  attempts?: number;
  /** CA certificate(s) (PEM) for https. */
  ca?: string | Buffer;
  /** Progress: bytes on disk so far (including those resumed from a partial file) and the total. */
  onProgress?: (bytes: number, total: number) => void;
  signal?: AbortSignal;
}

export interface DownloadResult {
  file: string;
  bytes: number;
  /** Bytes that were already on disk when this call started (resumed). */
  resumedFrom: number;
  /** HTTP requests made. */
  requests: number;
}

const MAX_REDIRECTS = 5;

async function sizeOf(file: string): Promise<number> {
  return stat(file).then(
    (s) => s.size,
    () => 0,
  );
}

async function sha256Of(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

function parseUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new DownloadError('bad-url', `bundle url ${JSON.stringify(url)} is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new DownloadError('bad-url', `bundle url must be http(s), got ${u.protocol}`);
  return u;
}

/** Where a URL is shown (logs, model/state): without credentials or query string (signed URLs carry tokens). */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '<invalid url>';
  }
}

/**
 * Downloads `url` to `dest` (see the file comment). Resolves when `dest` holds the verified file; rejects
 * with DownloadError. A verified `dest` that already exists is returned without a request.
 */
export async function downloadBundle(o: DownloadOptions): Promise<DownloadResult> {
  if (!/^[0-9a-f]{64}$/.test(o.sha256)) throw new DownloadError('hash-mismatch', 'expected sha256 must be 64 lowercase hex digits');
  if (!Number.isSafeInteger(o.size) || o.size <= 0) throw new DownloadError('too-large', `expected size ${o.size} is not a positive integer`);
  if (o.size > o.maxBytes) {
    throw new DownloadError('too-large', `bundle is ${o.size} bytes, over the download cap of ${o.maxBytes} bytes (fleet.download.maxBytes)`);
  }
  parseUrl(o.url);
  const part = `${o.dest}.part`;
  if ((await sizeOf(o.dest)) === o.size && (await sha256Of(o.dest)) === o.sha256) {
    return { file: o.dest, bytes: o.size, resumedFrom: o.size, requests: 0 };
  }
  const resumedFrom = Math.min(await sizeOf(part), o.size);
  const attempts = Math.max(1, o.attempts ?? 5);
  let requests = 0;
  let last: DownloadError | undefined;
  for (let i = 0; i < attempts; i++) {
    if (o.signal?.aborted) throw new DownloadError('aborted', 'download aborted');
    let have = await sizeOf(part);
    if (have > o.size) {
      await rm(part, { force: true });
      have = 0;
    }
    if (have < o.size) {
      try {
        requests++;
        await fetchInto(o, part, have);
      } catch (e) {
        last = e instanceof DownloadError ? e : new DownloadError('network', (e as Error).message, true);
        if (!last.retryable) {
          if (last.code === 'too-large') await rm(part, { force: true });
          throw last;
        }
        if (i + 1 < attempts) await new Promise((r) => setTimeout(r, Math.min(200 * 2 ** i, 5000)));
        continue;
      }
    }
    const got = await sizeOf(part);
    if (got !== o.size) {
      last = new DownloadError('network', `connection ended after ${got} of ${o.size} bytes`, true);
      continue;
    }
    const digest = await sha256Of(part);
    if (digest !== o.sha256) {
      await rm(part, { force: true });
      throw new DownloadError('hash-mismatch', `downloaded file's sha256 ${digest} does not match the expected ${o.sha256}; deleted`);
    }
    await rename(part, o.dest);
    o.onProgress?.(o.size, o.size);
    return { file: o.dest, bytes: o.size, resumedFrom, requests };
  }
  throw last ?? new DownloadError('network', 'download failed');
}

/** One request (following redirects): appends to `part` from byte `have`. Rejects with DownloadError. */
async function fetchInto(o: DownloadOptions, part: string, have: number): Promise<void> {
  let url = parseUrl(o.url);
  for (let hop = 0; ; hop++) {
    const res = await request(url, have, o);
    const status = res.statusCode ?? 0;
    if ([301, 302, 303, 307, 308].includes(status) && res.headers.location) {
      res.resume();
      if (hop >= MAX_REDIRECTS) throw new DownloadError('http', `more than ${MAX_REDIRECTS} redirects from ${displayUrl(o.url)}`);
      url = parseUrl(new URL(res.headers.location, url).toString());
      continue;
    }
    if (status === 206 || status === 200) return receive(res, o, part, status === 206 ? have : 0);
    res.resume();
    if (status === 416 && have > 0) {
      // our partial file does not fit what the server has: start over
      await rm(part, { force: true });
      throw new DownloadError('http', `server refused the range from byte ${have} (416); restarting`, true);
    }
    const retryable = status >= 500 || status === 408 || status === 429;
    throw new DownloadError('http', `registry answered HTTP ${status} for ${displayUrl(url.toString())}`, retryable);
  }
}

function request(url: URL, have: number, o: DownloadOptions): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'accept-encoding': 'identity' };
    if (have > 0) headers.range = `bytes=${have}-`;
    const opts: https.RequestOptions = { method: 'GET', headers, timeout: o.timeoutMs };
    if (o.signal) opts.signal = o.signal;
    if (url.protocol === 'https:' && o.ca !== undefined) opts.ca = o.ca;
    const req = (url.protocol === 'https:' ? https : http).request(url, opts, resolve);
    req.on('timeout', () => req.destroy(new DownloadError('timeout', `no answer from ${displayUrl(url.toString())} within ${o.timeoutMs} ms`, true)));
    req.on('error', (e) => reject(asDownloadError(e, o)));
    req.end();
  });
}

function asDownloadError(e: unknown, o: DownloadOptions): DownloadError {
  if (e instanceof DownloadError) return e;
  if (o.signal?.aborted) return new DownloadError('aborted', 'download aborted');
  const err = e as NodeJS.ErrnoException;
  return new DownloadError('network', `${err.code ? `${err.code}: ` : ''}${err.message}`, true);
}

/** Streams the body into `part` at offset `from` (0: truncate), enforcing the size cap. */
async function receive(res: IncomingMessage, o: DownloadOptions, part: string, from: number): Promise<void> {
  const cap = Math.min(o.size, o.maxBytes);
  if (from > 0) {
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
    if (!m || Number(m[1]) !== from) {
      res.resume();
      await rm(part, { force: true });
      throw new DownloadError('http', `206 answer without a Content-Range starting at byte ${from}; restarting`, true);
    }
    if (m[3] !== '*' && Number(m[3]) > cap) {
      res.resume();
      throw new DownloadError('too-large', `registry says the file is ${m[3]} bytes, expected ${o.size} (cap ${cap})`);
    }
  } else {
    const len = Number(res.headers['content-length'] ?? NaN);
    if (Number.isFinite(len) && len > cap) {
      res.resume();
      throw new DownloadError('too-large', `registry sends ${len} bytes, expected ${o.size} (cap ${cap})`);
    }
  }
  const fh = await open(part, from > 0 ? 'r+' : 'w');
  let pos = from;
  let lastReported = -1;
  try {
    await new Promise<void>((resolve, reject) => {
      let writing: Promise<unknown> = Promise.resolve();
      let failed = false;
      const fail = (e: DownloadError): void => {
        if (failed) return;
        failed = true;
        res.destroy();
        // writes already queued land first: the partial file is final when the attempt ends
        void writing.finally(() => reject(e));
      };
      res.setTimeout(o.timeoutMs, () => fail(new DownloadError('timeout', `no data for ${o.timeoutMs} ms at byte ${pos}`, true)));
      res.on('data', (chunk: Buffer) => {
        if (failed) return;
        if (pos + chunk.length > cap) {
          fail(new DownloadError('too-large', `registry sent more than the expected ${o.size} bytes (cap ${cap}); cut off`));
          return;
        }
        const at = pos;
        pos += chunk.length;
        res.pause();
        writing = writing
          .then(() => fh.write(chunk, 0, chunk.length, at))
          .then(() => {
            // progress every ~1%: enough for a UI, few enough for MQTT
            const step = Math.max(1, Math.floor(o.size / 100));
            if (Math.floor(pos / step) !== lastReported) {
              lastReported = Math.floor(pos / step);
              o.onProgress?.(pos, o.size);
            }
            res.resume();
          }, (e: unknown) => fail(new DownloadError('network', `cannot write ${part}: ${(e as Error).message}`)));
      });
      res.on('aborted', () => fail(new DownloadError('network', `connection cut at byte ${pos}`, true)));
      res.on('error', (e) => fail(asDownloadError(e, o)));
      let ended = false;
      res.on('close', () => {
        if (!ended) fail(new DownloadError('network', `connection closed at byte ${pos}`, true));
      });
      res.on('end', () => {
        ended = true;
        void writing.then(() => {
          if (failed) return;
          if (!res.complete) fail(new DownloadError('network', `connection cut at byte ${pos}`, true));
          else resolve();
        });
      });
    });
  } finally {
    await fh.sync().catch(() => undefined);
    await fh.close();
  }
}
