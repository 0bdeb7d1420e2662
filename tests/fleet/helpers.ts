/**
 * Real bundle archives and a real HTTP(S) registry for the rollout tests: versions of the shipped model
 * made the way a release is (copy, bump manifest version, re-sign with the development key, pack with
 * src/models/pack.ts), served by node:http with the faults a network makes (a connection cut mid-body,
 * a server that ignores Range, one that stalls).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { cp, readFile, stat, writeFile } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { packBundle } from '../../src/models/pack.js';
import { signBundle } from '../../src/models/signature.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const SHIPPED = path.join(ROOT, 'models', 'orientation-qa');
export const DEV_PRIVATE = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pem');
export const DEV_PUBLIC = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem');

interface ManifestLike {
  id: string;
  version: string;
  golden?: { logits: number[] }[];
}

export async function shippedManifest(): Promise<ManifestLike> {
  return JSON.parse(await readFile(path.join(SHIPPED, 'manifest.json'), 'utf8')) as ManifestLike;
}

/**
 * A new version of the shipped model in `dest`: same files, manifest version bumped, re-signed with the
 * development key. `breakGolden`: the golden reference outputs are altered before signing (the signature
 * is valid, the golden check fails on the agent). `sign: false` leaves the old manifest.sig (bad signature).
 */
export async function makeVersion(dest: string, version: string, opts: { breakGolden?: boolean; sign?: boolean } = {}): Promise<string> {
  await cp(SHIPPED, dest, { recursive: true });
  const file = path.join(dest, 'manifest.json');
  const m = JSON.parse(await readFile(file, 'utf8')) as ManifestLike;
  m.version = version;
  if (opts.breakGolden) for (const g of m.golden ?? []) g.logits = g.logits.map((x, i) => x + (i === 0 ? 5 : -5));
  await writeFile(file, JSON.stringify(m, null, 2) + '\n');
  if (opts.sign !== false) await signBundle(dest, await readFile(DEV_PRIVATE));
  return dest;
}

export interface PackedBundle {
  file: string;
  sha256: string;
  size: number;
}

export async function packTar(dir: string, out: string): Promise<PackedBundle> {
  await packBundle(dir, out);
  const h = createHash('sha256');
  for await (const c of createReadStream(out)) h.update(c as Buffer);
  return { file: out, sha256: h.digest('hex'), size: (await stat(out)).size };
}

export interface ServedFile {
  file: string;
  /** Cut the connection after this many body bytes, for the first `cuts` requests. */
  cutAfter?: number;
  cuts?: number;
  /** Answer 200 with the whole file even to a Range request. */
  ignoreRange?: boolean;
  /** Stop sending (keep the connection open) after this many bytes, for the first `stalls` requests. */
  stallAfter?: number;
  stalls?: number;
  /** Send these extra bytes after the file (a server that sends more than it should). */
  extra?: number;
}

export interface SeenRequest {
  path: string;
  range: string | null;
  status: number;
}

/** A registry: GET /<name> serves the registered files with Range support and scripted faults. */
export class BundleServer {
  readonly requests: SeenRequest[] = [];
  private readonly files = new Map<string, ServedFile>();
  private readonly served = new Map<string, number>();
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: http.Server | https.Server,
    readonly base: string,
  ) {}

  static async start(tls?: { cert: string | Buffer; key: string | Buffer }): Promise<BundleServer> {
    const holder: { self?: BundleServer } = {};
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      void holder.self!.handle(req, res);
    };
    const server = tls ? https.createServer({ cert: tls.cert, key: tls.key }, handler) : http.createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const self = new BundleServer(server, `${tls ? 'https' : 'http'}://127.0.0.1:${port}`);
    holder.self = self;
    server.on(tls ? 'secureConnection' : 'connection', (s: Socket) => {
      self.sockets.add(s);
      s.on('close', () => self.sockets.delete(s));
    });
    return self;
  }

  add(name: string, f: ServedFile): string {
    this.files.set(`/${name}`, f);
    return `${this.base}/${name}`;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const p = new URL(req.url ?? '/', this.base).pathname;
    const f = this.files.get(p);
    const range = req.headers.range ?? null;
    if (!f) {
      this.requests.push({ path: p, range, status: 404 });
      res.writeHead(404).end('not found');
      return;
    }
    const n = (this.served.get(p) ?? 0) + 1;
    this.served.set(p, n);
    const body = await readFile(f.file);
    let start = 0;
    let status = 200;
    const m = range && !f.ignoreRange ? /^bytes=(\d+)-$/.exec(range) : null;
    if (m) {
      start = Number(m[1]);
      if (start >= body.length) {
        this.requests.push({ path: p, range, status: 416 });
        res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
        return;
      }
      status = 206;
    }
    this.requests.push({ path: p, range, status });
    let chunk = body.subarray(start);
    if (f.extra) chunk = Buffer.concat([chunk, Buffer.alloc(f.extra, 0x41)]);
    const headers: Record<string, string | number> = { 'content-type': 'application/x-tar', 'accept-ranges': 'bytes' };
    if (status === 206) headers['content-range'] = `bytes ${start}-${body.length - 1}/${body.length}`;
    if (!f.extra) headers['content-length'] = chunk.length;
    res.writeHead(status, headers);
    const cut = f.cutAfter !== undefined && n <= (f.cuts ?? 1) ? f.cutAfter : undefined;
    const stall = f.stallAfter !== undefined && n <= (f.stalls ?? 1) ? f.stallAfter : undefined;
    if (cut !== undefined) {
      res.write(chunk.subarray(0, cut), () => res.socket?.destroy());
      return;
    }
    if (stall !== undefined) {
      res.write(chunk.subarray(0, stall)); // and nothing more: the client's stall timeout must fire
      return;
    }
    res.end(chunk);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
