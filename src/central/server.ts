/**
 * The central server process: MQTT fleet view + rollout controller + model registry + HTTP JSON API +
 * web console, in one node:http server (no framework: a dozen routes, and the registry needs raw
 * streaming of request and response bodies with byte ranges, which node:http gives directly).
 *
 * Routes (all JSON; everything except /login, /healthz and bundle downloads needs the token):
 *   GET  /healthz                                  liveness (no auth)
 *   GET  /login, POST /login, POST /logout         console login (sets / clears the session cookie)
 *   GET  /                                         the console (static files under src/central/console)
 *   GET  /api/fleet                                counts (online, groups, versions)
 *   GET  /api/agents?group=&version=&online=       fleet table rows
 *   GET  /api/agents/:id                           one agent: health, model state, desired, recent results/errors
 *   POST /api/agents/:id/commands/:cmd             fleet command to one agent, waits for its response
 *   POST /api/groups/:group/commands/:cmd          fleet command to a group, collects the members' responses
 *   GET  /api/events                               Server-Sent Events: `agents` (changed rows), `rollout` (progress)
 *   GET  /api/bundles                              registry listing (sha256, size, signer)
 *   POST /api/bundles                              upload a signed bundle .tar (body); 201 / 200 (same bytes again)
 *   GET  /api/bundles/:id/:version                 one bundle record
 *   DELETE /api/bundles/:id/:version
 *   GET  /registry/bundles/:id/:version/bundle.tar download (Range, ETag = sha256); no auth, see docs/CENTRAL.md
 *   GET  /api/rollouts, POST /api/rollouts, GET /api/rollouts/:id, POST /api/rollouts/:id/halt
 */
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { shippedPath } from '../config/load.js';
import { loadTrustedKeys } from '../models/signature.js';
import { Auth, readTokenFile } from './auth.js';
import { CommandClient, CommandRequestError } from './commands.js';
import { openCentralDb, type CentralDb } from './db.js';
import { FleetView, type AgentFilter } from './fleet.js';
import { Registry, RegistryError } from './registry.js';
import { RolloutController, RolloutError, type RolloutSpec, type RolloutView } from './rollout.js';
import { LocalDiskStorage, StorageNotFound, type BundleStorage } from './storage.js';

export interface CentralOptions {
  mqttUrl: string;
  dataDir: string;
  /** The API token itself, or read from tokenFile. */
  token?: string;
  tokenFile?: string;
  /** PEM public keys whose signatures the registry accepts. */
  trustedKeys: string[];
  port?: number;
  host?: string;
  /** URL agents use to reach this server (goes into DesiredModel.url); default http://<host>:<port>. */
  publicUrl?: string;
  baseTopic?: string;
  /** Share name for non-retained streams when several central instances run (`$share/<name>/...`). */
  shareGroup?: string;
  mqttUsername?: string;
  mqttPassword?: string;
  /** Storage backend (default: local disk under <dataDir>/bundles). */
  storage?: BundleStorage;
  maxUploadBytes?: number;
  /** Deadline checks (ms). */
  tickMs?: number;
  /** Console updates go out at most this often (ms, default 100); a change after a quiet spell at once. */
  pushIntervalMs?: number;
  log?: (msg: string, extra?: Record<string, unknown>) => void;
}

export interface CentralServer {
  readonly url: string;
  readonly port: number;
  readonly fleet: FleetView;
  readonly rollouts: RolloutController;
  readonly registry: Registry;
  readonly mqtt: MqttClient;
  close(): Promise<void>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

const CONSOLE_DIR = shippedPath('src', 'central', 'console');
const STATIC: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'login.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'login.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};
const MAX_JSON = 64 * 1024;

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const type = req.headers['content-type'] ?? '';
  if (!/^application\/json\b/i.test(type)) throw new HttpError(415, 'send a JSON body (content-type: application/json)');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_JSON) throw new HttpError(413, `JSON body larger than ${MAX_JSON} bytes`);
    chunks.push(c as Buffer);
  }
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new HttpError(400, `body is not a JSON object: ${(e as Error).message}`);
  }
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 4096) throw new HttpError(413, 'form too large');
    chunks.push(c as Buffer);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

/** Parses `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range); null = not satisfiable; undefined = ignore. */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | null | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined; // multi-range or malformed: send the whole file (RFC 9110 allows)
  let start: number;
  let end: number;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return null;
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return null;
  return { start, end };
}

/** `id@version` or {id, version}. */
function bundleRef(v: unknown): { id: string; version: string } {
  if (typeof v === 'string') {
    const i = v.lastIndexOf('@');
    if (i > 0 && i < v.length - 1) return { id: v.slice(0, i), version: v.slice(i + 1) };
  } else if (typeof v === 'object' && v !== null) {
    const o = v as Record<string, unknown>;
    if (typeof o.id === 'string' && typeof o.version === 'string') return { id: o.id, version: o.version };
  }
  throw new HttpError(400, 'bundle must be "id@version" (e.g. orientation-qa@1.2.0)');
}

function num(v: unknown, name: string): number | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isFinite(n)) throw new HttpError(400, `${name} must be a number`);
  return n;
}

function tokenOf(body: Record<string, unknown>): string {
  return typeof body.token === 'string' ? body.token : '';
}

/** Rollout without its per-device list (for pushes and lists). */
function brief(v: RolloutView): Omit<RolloutView, 'devices'> {
  const { devices: _d, ...rest } = v;
  return rest;
}

export async function startCentral(opts: CentralOptions): Promise<CentralServer> {
  const token = opts.token ?? (opts.tokenFile ? readTokenFile(opts.tokenFile) : undefined);
  if (!token) throw new Error('central needs an API token (--token-file)');
  const auth = new Auth(token);
  const keys = await loadTrustedKeys(opts.trustedKeys);
  if (keys.length === 0) throw new Error('central needs at least one trusted public key (--trusted-key) to accept bundles');
  const log = opts.log ?? (() => undefined);
  const db: CentralDb = openCentralDb(opts.dataDir);
  const storage = opts.storage ?? new LocalDiskStorage(path.join(opts.dataDir, 'bundles'));
  const registry = new Registry({ db, storage, trustedKeys: keys, tmpDir: path.join(opts.dataDir, 'tmp'), maxUploadBytes: opts.maxUploadBytes });

  const mqttOpts: IClientOptions = {
    clientId: `edge-central-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
    protocolVersion: 5,
    clean: true,
    reconnectPeriod: 1000,
    connectTimeout: 10_000,
  };
  if (opts.mqttUsername) mqttOpts.username = opts.mqttUsername;
  if (opts.mqttPassword) mqttOpts.password = opts.mqttPassword;
  const client = await mqtt.connectAsync(opts.mqttUrl, mqttOpts);
  client.on('error', (e) => log(`mqtt: ${e.message}`));
  const fleet = new FleetView({ baseTopic: opts.baseTopic, shareGroup: opts.shareGroup });

  const server: Server = createServer();
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const commands = new CommandClient(client, fleet, opts.baseTopic);
  const rollouts = new RolloutController({ db, fleet, registry, client, baseTopic: opts.baseTopic, publicUrl: opts.publicUrl ?? url, tickMs: opts.tickMs, log });

  // --- console push (SSE): changed rows, at most one batch per pushIntervalMs. Leading edge: a change
  // after a quiet spell goes out at once; a burst (a rollout wave, a broker reconnect) is coalesced. ---
  const streams = new Set<ServerResponse>();
  const dirtyAgents = new Set<string>();
  const dirtyRollouts = new Set<string>();
  const pushInterval = opts.pushIntervalMs ?? 100;
  let lastFlush = 0;
  let flushTimer: NodeJS.Timeout | null = null;
  const flush = (): void => {
    flushTimer = null;
    lastFlush = Date.now();
    if (!streams.size || (!dirtyAgents.size && !dirtyRollouts.size)) return;
    const frames: string[] = [];
    if (dirtyAgents.size) {
      const rows = [...dirtyAgents].map((id) => {
        const a = fleet.agents.get(id);
        return a ? fleet.summary(a) : { deviceId: id, removed: true };
      });
      frames.push(`event: agents\ndata: ${JSON.stringify(rows)}\n\n`);
      dirtyAgents.clear();
    }
    for (const id of dirtyRollouts) {
      const v = rollouts.view(id);
      if (v) frames.push(`event: rollout\ndata: ${JSON.stringify(brief(v))}\n\n`);
    }
    dirtyRollouts.clear();
    const text = frames.join('');
    for (const s of streams) s.write(text);
  };
  const schedule = (): void => {
    if (flushTimer || !streams.size) return;
    flushTimer = setTimeout(flush, Math.max(0, lastFlush + pushInterval - Date.now()));
  };
  fleet.on('change', (e) => {
    if (e.kind === 'group-desired' || !streams.size) return;
    dirtyAgents.add(e.deviceId);
    schedule();
  });
  rollouts.on('change', (id) => {
    if (!streams.size) return;
    dirtyRollouts.add(id);
    schedule();
  });
  const keepalive = setInterval(() => {
    for (const s of streams) s.write(': keepalive\n\n');
  }, 15_000);

  const serveStatic = async (res: ServerResponse, name: string): Promise<void> => {
    const type = STATIC[name];
    if (!type) throw new HttpError(404, 'not found');
    const body = await readFile(path.join(CONSOLE_DIR, name));
    res.writeHead(200, {
      'content-type': type,
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
      'content-security-policy': "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    });
    res.end(body);
  };

  const download = async (req: IncomingMessage, res: ServerResponse, id: string, version: string): Promise<void> => {
    const rec = registry.get(id, version);
    if (!rec) throw new HttpError(404, `no bundle ${id}@${version}`);
    const etag = `"${rec.sha256}"`;
    const common = {
      'content-type': 'application/x-tar',
      etag,
      'accept-ranges': 'bytes',
      'cache-control': 'public, max-age=31536000, immutable',
      'content-disposition': `attachment; filename="${rec.id}-${rec.version}.tar"`,
    };
    if (req.headers['if-none-match'] === etag) {
      res.writeHead(304, { etag });
      res.end();
      return;
    }
    // If-Range: only honour the range when the client's validator still matches
    const ifRange = req.headers['if-range'];
    const rangeHeader = ifRange === undefined || ifRange === etag ? req.headers.range : undefined;
    const range = parseRange(rangeHeader, rec.size);
    if (range === null) {
      res.writeHead(416, { 'content-range': `bytes */${rec.size}`, etag });
      res.end();
      return;
    }
    if (req.method === 'HEAD') {
      res.writeHead(200, { ...common, 'content-length': String(rec.size) });
      res.end();
      return;
    }
    const stream = await registry.open(rec, range);
    if (range) {
      res.writeHead(206, { ...common, 'content-length': String(range.end - range.start + 1), 'content-range': `bytes ${range.start}-${range.end}/${rec.size}` });
    } else {
      res.writeHead(200, { ...common, 'content-length': String(rec.size) });
    }
    await pipeline(stream, res);
  };

  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const u = new URL(req.url ?? '/', 'http://x');
    const p = u.pathname;
    const method = req.method ?? 'GET';
    const parts = p.split('/').filter(Boolean).map(decodeURIComponent);

    if (p === '/healthz') return send(res, 200, { ok: true, mqtt: client.connected, agents: fleet.agents.size });
    if (parts[0] === 'registry' && parts[1] === 'bundles' && parts.length === 5 && parts[4] === 'bundle.tar' && (method === 'GET' || method === 'HEAD')) {
      return download(req, res, parts[2] as string, parts[3] as string);
    }
    if (p === '/login' && method === 'GET') return serveStatic(res, 'login.html');
    // what the login page itself needs (no fleet data in them)
    if (method === 'GET' && (p === '/console/style.css' || p === '/console/login.js')) return serveStatic(res, p.slice('/console/'.length));
    if (p === '/login' && method === 'POST') {
      const type = req.headers['content-type'] ?? '';
      const given = /^application\/json/i.test(type) ? tokenOf(await readJson(req)) : (await readForm(req)).get('token') ?? '';
      if (!auth.checkToken(given.trim())) {
        log('console login refused');
        if (/json/i.test(type)) return send(res, 401, { error: 'wrong token' });
        res.writeHead(303, { location: '/login?error=1' });
        res.end();
        return;
      }
      const secure = req.headers['x-forwarded-proto'] === 'https';
      if (/json/i.test(type)) return send(res, 200, { ok: true }, { 'set-cookie': auth.cookieHeader(secure) });
      res.writeHead(303, { location: '/', 'set-cookie': auth.cookieHeader(secure) });
      res.end();
      return;
    }
    if (p === '/logout' && method === 'POST') {
      res.writeHead(303, { location: '/login', 'set-cookie': Auth.clearCookieHeader() });
      res.end();
      return;
    }

    const who = auth.check(req);
    if (!who) {
      if (p === '/' || p === '/index.html') {
        res.writeHead(303, { location: '/login' });
        res.end();
        return;
      }
      throw new HttpError(401, 'authentication required: send Authorization: Bearer <token> (the token in central\'s --token-file) or log in at /login', {});
    }
    if (method === 'GET' && (p === '/' || p === '/index.html')) return serveStatic(res, 'index.html');
    if (method === 'GET' && parts[0] === 'console' && parts.length === 2) return serveStatic(res, parts[1] as string);

    if (parts[0] !== 'api') throw new HttpError(404, `no route ${method} ${p}`);
    const [, what, a, b, c] = parts;
    if (what === 'fleet' && method === 'GET' && !a) {
      return send(res, 200, { ...fleet.counts(), malformedMessages: fleet.malformed, mqttConnected: client.connected });
    }
    if ((what === 'agents' || what === 'groups') && a && b === 'commands' && c && method === 'POST') {
      const body = await readJson(req);
      const target = what === 'agents' ? { device: a } : { group: a };
      log(`command ${c} to ${what === 'agents' ? 'device' : 'group'} ${a} (${who})`);
      const out = await commands.send(target, c, body.data, num(body.timeoutMs, 'timeoutMs'));
      if (what === 'agents' && out.responses.length === 0) {
        throw new HttpError(504, `no response from '${a}' to '${c}' within the timeout (agent offline or not subscribed?)`, { transaction: out.transaction });
      }
      return send(res, 200, out);
    }
    if (what === 'agents' && method === 'GET') {
      if (!a) {
        const filter: AgentFilter = {};
        const g = u.searchParams.get('group');
        const v = u.searchParams.get('version');
        const o = u.searchParams.get('online');
        if (g) filter.group = g;
        if (v) filter.version = v;
        if (o === 'true' || o === 'false') filter.online = o === 'true';
        return send(res, 200, { agents: fleet.list(filter) });
      }
      const agent = fleet.agents.get(a);
      if (!agent) throw new HttpError(404, `no agent '${a}' in the fleet view`);
      return send(res, 200, { ...agent, summary: fleet.summary(agent) });
    }
    if (what === 'events' && method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
      res.write(`retry: 2000\nevent: hello\ndata: ${JSON.stringify({ at: new Date().toISOString() })}\n\n`);
      streams.add(res);
      req.on('close', () => streams.delete(res));
      return;
    }
    if (what === 'bundles') {
      if (!a && method === 'GET') return send(res, 200, { bundles: registry.list().map((r) => ({ ...r, url: `/registry/bundles/${encodeURIComponent(r.id)}/${encodeURIComponent(r.version)}/bundle.tar` })) });
      if (!a && method === 'POST') {
        const len = req.headers['content-length'] ? Number(req.headers['content-length']) : undefined;
        const { record, created } = await registry.upload(req, len);
        log(`bundle ${record.id}@${record.version} ${created ? 'uploaded' : 're-uploaded (identical)'}`, { sha256: record.sha256, keyId: record.keyId });
        return send(res, created ? 201 : 200, record);
      }
      if (a && b && !c) {
        if (method === 'GET') {
          const rec = registry.get(a, b);
          if (!rec) throw new HttpError(404, `no bundle ${a}@${b}`);
          return send(res, 200, rec);
        }
        if (method === 'DELETE') {
          const busy = rollouts.usedBy(a, b);
          if (busy) throw new HttpError(409, `${a}@${b} is being rolled out by ${busy}; halt it or wait for it before deleting the bundle`);
          if (!(await registry.delete(a, b))) throw new HttpError(404, `no bundle ${a}@${b}`);
          return send(res, 200, { deleted: `${a}@${b}` });
        }
      }
    }
    if (what === 'rollouts') {
      if (!a && method === 'GET') return send(res, 200, { rollouts: rollouts.list().map(brief) });
      if (!a && method === 'POST') {
        const body = await readJson(req);
        const spec: RolloutSpec = {
          bundle: bundleRef(body.bundle),
          group: typeof body.group === 'string' ? body.group : '',
          canary: num(body.canary, 'canary') ?? 0.1,
          maxFailures: num(body.maxFailures, 'maxFailures'),
          maxFailureRate: num(body.maxFailureRate, 'maxFailureRate'),
          deviceTimeoutSec: num(body.deviceTimeoutSec, 'deviceTimeoutSec'),
          createdBy: who === 'cookie' ? 'console' : 'api',
        };
        if (body.policy !== undefined) spec.policy = body.policy as RolloutSpec['policy'];
        const v = await rollouts.create(spec);
        return send(res, 201, v);
      }
      if (a && !b && method === 'GET') {
        const v = rollouts.view(a);
        if (!v) throw new HttpError(404, `no rollout '${a}'`);
        return send(res, 200, v);
      }
      if (a && b === 'halt' && method === 'POST') {
        return send(res, 200, await rollouts.halt(a, who === 'cookie' ? 'operator (console)' : 'operator (api)'));
      }
    }
    throw new HttpError(404, `no route ${method} ${p}`);
  };

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    route(req, res).catch((e: unknown) => {
      let status = 500;
      let body: Record<string, unknown>;
      if (e instanceof HttpError) {
        status = e.status;
        body = { error: e.message, ...e.extra };
      } else if (e instanceof RegistryError) {
        status = e.status;
        body = { error: e.message, code: e.code, problems: e.problems };
      } else if (e instanceof CommandRequestError) {
        status = e.status;
        body = { error: e.message };
      } else if (e instanceof RolloutError) {
        status = e.status;
        body = { error: e.message };
      } else if (e instanceof StorageNotFound) {
        status = 404;
        body = { error: e.message };
      } else {
        log(`http ${req.method} ${req.url}: ${(e as Error).stack ?? String(e)}`);
        body = { error: 'internal error' };
      }
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // an unread upload body: answer, then close rather than read the rest
      if (!req.complete) res.setHeader('connection', 'close');
      send(res, status, body);
    });
  });

  await fleet.attach(client);
  await rollouts.start();
  log(`central listening on ${url}`, { mqtt: opts.mqttUrl });

  return {
    url,
    port,
    fleet,
    rollouts,
    registry,
    mqtt: client,
    async close() {
      if (flushTimer) clearTimeout(flushTimer);
      clearInterval(keepalive);
      rollouts.stop();
      fleet.detach();
      for (const s of streams) s.end();
      streams.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await client.endAsync();
      db.close();
    },
  };
}
