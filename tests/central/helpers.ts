/**
 * Shared setup for central's tests: real mosquitto (tests/helpers/mosquitto.ts), a central server on a
 * free port with a temp data dir and token, and real signed bundles made from the shipped
 * models/orientation-qa (re-versioned and re-signed with the committed DEVELOPMENT-ONLY key, which
 * central trusts here exactly like a device with the dev key does).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCentral, type CentralOptions, type CentralServer } from '../../src/central/server.js';
import { packBundle } from '../../src/models/pack.js';
import { signBundle } from '../../src/models/signature.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const SHIPPED_BUNDLE = path.join(ROOT, 'models', 'orientation-qa');
export const DEV_KEY = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pem');
export const DEV_PUB = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem');
export const TOKEN = 'test-token-0123456789abcdef';

export function tempDir(prefix = 'central-'): string {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

export interface MadeBundle {
  dir: string;
  tar: string;
  id: string;
  version: string;
  sha256: string;
  size: number;
}

/**
 * A copy of the shipped bundle as `version`, signed with `key` (default the dev key; null = unsigned),
 * after `edit` had a chance to change the copy (before signing), packed to a .tar.
 */
export async function makeBundle(
  version: string,
  opts: { key?: string | null; edit?: (dir: string, manifest: Record<string, unknown>) => void; afterSign?: (dir: string) => void } = {},
): Promise<MadeBundle> {
  const root = tempDir('bundle-');
  const dir = path.join(root, 'orientation-qa');
  cpSync(SHIPPED_BUNDLE, dir, { recursive: true });
  rmSync(path.join(dir, 'manifest.sig'), { force: true });
  rmSync(path.join(dir, 'MODEL_CARD.md'), { force: true });
  const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
  manifest.version = version;
  opts.edit?.(dir, manifest);
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  const key = opts.key === undefined ? DEV_KEY : opts.key;
  if (key) await signBundle(dir, readFileSync(key), key);
  opts.afterSign?.(dir);
  const tar = path.join(root, `orientation-qa-${version}.tar`);
  await packBundle(dir, tar);
  const bytes = readFileSync(tar);
  return { dir, tar, id: String(manifest.id), version, sha256: sha256(bytes), size: bytes.length };
}

export interface TestCentral extends CentralServer {
  dataDir: string;
  tokenFile: string;
  /** fetch against the server with the bearer token (unless headers say otherwise). */
  api(p: string, init?: RequestInit): Promise<Response>;
}

export async function startTestCentral(mqttUrl: string, opts: Partial<CentralOptions> = {}): Promise<TestCentral> {
  const dataDir = opts.dataDir ?? tempDir();
  const tokenFile = path.join(dataDir, 'token');
  writeFileSync(tokenFile, TOKEN + '\n', { mode: 0o600 });
  const server = await startCentral({ mqttUrl, dataDir, tokenFile, trustedKeys: [DEV_PUB], tickMs: 100, ...opts });
  return Object.assign(server, {
    dataDir,
    tokenFile,
    api(p: string, init: RequestInit = {}): Promise<Response> {
      const headers = new Headers(init.headers);
      if (!headers.has('authorization')) headers.set('authorization', `Bearer ${TOKEN}`);
      return fetch(server.url + p, { ...init, headers });
    },
  });
}

export async function upload(c: TestCentral, b: MadeBundle | string): Promise<Response> {
  const body = readFileSync(typeof b === 'string' ? b : b.tar);
  return c.api('/api/bundles', { method: 'POST', body, headers: { 'content-type': 'application/x-tar' } });
}

/** Waits until `fn` returns a truthy value (event-driven code under test; bounded by the test timeout). */
export type Truthy<T> = Exclude<T, false | null | undefined | 0 | ''>;

export async function until<T>(fn: () => T | Promise<T>, what: string, timeoutMs = 20_000): Promise<Truthy<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: Error | undefined;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as Truthy<T>;
    } catch (e) {
      last = e instanceof Error ? e : new Error(String(e));
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The compiled `edge-central` CLI (run `npm run build` first). */
export const CENTRAL_CLI = path.join(ROOT, 'dist', 'agent', 'central-cli.js');

/** Runs the compiled `edge-central` with `args`; resolves with its exit code and output. */
export function runCentralCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CENTRAL_CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** `edge-central serve` running as its own process (the compiled CLI), as an operator starts it. */
export interface ServedCentral {
  url: string;
  /** What the `edge-central` subcommands need to reach it: EDGE_CENTRAL_URL and EDGE_CENTRAL_TOKEN_FILE. */
  env: NodeJS.ProcessEnv;
  /** Its stdout lines and stderr chunks, as they came. */
  logs: string[];
  stop(): Promise<void>;
}

/** Starts `edge-central serve` on `mqttUrl` with a fresh data dir, the test token and the development key; resolves once it logs its URL. */
export async function serveCentral(mqttUrl: string): Promise<ServedCentral> {
  const dir = tempDir();
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, `${TOKEN}\n`);
  const server = spawn(
    process.execPath,
    [CENTRAL_CLI, 'serve', '--mqtt-url', mqttUrl, '--data-dir', path.join(dir, 'data'), '--token-file', tokenFile, '--trusted-key', DEV_PUB, '--port', '0'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const logs: string[] = [];
  server.stdout.on('data', (d: Buffer) => logs.push(...d.toString().split('\n').filter(Boolean)));
  server.stderr.on('data', (d: Buffer) => logs.push(d.toString()));
  const stop = async (): Promise<void> => {
    if (server.exitCode !== null || server.signalCode !== null) return;
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    await exited;
  };
  try {
    const url = await until(() => {
      for (const l of logs) {
        try {
          const j = JSON.parse(l) as { msg?: string; url?: string };
          if (j.msg === 'central started' && j.url) return j.url;
        } catch {
          /* not JSON */
        }
      }
      return null;
    }, 'central started');
    return { url, env: { EDGE_CENTRAL_URL: url, EDGE_CENTRAL_TOKEN_FILE: tokenFile }, logs, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
