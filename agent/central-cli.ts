#!/usr/bin/env node
/**
 * edge-central CLI: wiring only (the server lives in src/central/).
 *   edge-central serve --mqtt-url URL --data-dir DIR --token-file FILE --trusted-key PEM... [--port N]
 *   edge-central bundle upload FILE.tar|DIR | bundle list
 *   edge-central rollout create --bundle ID@VERSION --group G [--canary 0.1] [--max-failures N] [--wait]
 *   edge-central rollout status [ID] | rollout halt ID
 *   edge-central command CMD --device ID | --group G [--data JSON]
 * Client commands talk to a running server's HTTP API: --server URL (env EDGE_CENTRAL_URL, default
 * http://127.0.0.1:8787) with the token from --token-file (env EDGE_CENTRAL_TOKEN_FILE).
 * Exit codes: 0 ok, 1 refused / failed / rolled back, 2 usage.
 */
import { Command } from 'commander';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readTokenFile } from '../src/central/auth.js';
import type { RolloutView } from '../src/central/rollout.js';
import { startCentral } from '../src/central/server.js';
import { createLogger } from '../src/log.js';
import { packBundle } from '../src/models/pack.js';
import { AGENT_VERSION } from './version.js';

const DEFAULT_PORT = 8787;

function fail(message: string, code = 1): never {
  process.stderr.write(`edge-central: ${message}\n`);
  process.exit(code);
}

interface ClientOpts {
  server?: string;
  tokenFile?: string;
}

function client(o: ClientOpts): { base: string; token: string } {
  const base = (o.server ?? process.env.EDGE_CENTRAL_URL ?? `http://127.0.0.1:${DEFAULT_PORT}`).replace(/\/+$/, '');
  const file = o.tokenFile ?? process.env.EDGE_CENTRAL_TOKEN_FILE;
  if (!file) fail('give the API token file: --token-file FILE (or EDGE_CENTRAL_TOKEN_FILE)', 2);
  try {
    return { base, token: readTokenFile(file) };
  } catch (e) {
    fail((e as Error).message);
  }
}

/** One HTTP call; the body is JSON, or a file streamed as-is. */
function call(c: { base: string; token: string }, method: string, p: string, body?: { json: unknown } | { file: string; size: number }): Promise<{ status: number; body: Record<string, unknown> }> {
  const u = new URL(c.base + p);
  const headers: Record<string, string | number> = { authorization: `Bearer ${c.token}`, accept: 'application/json' };
  let payload: Buffer | undefined;
  if (body && 'json' in body) {
    payload = Buffer.from(JSON.stringify(body.json));
    headers['content-type'] = 'application/json';
    headers['content-length'] = payload.length;
  } else if (body) {
    headers['content-type'] = 'application/x-tar';
    headers['content-length'] = body.size;
  }
  return new Promise((resolve, reject) => {
    const req = (u.protocol === 'https:' ? httpsRequest : request)(u, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: Record<string, unknown> = {};
        try {
          parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
        } catch {
          parsed = { error: text };
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('error', (e) => reject(new Error(`cannot reach central at ${c.base}: ${e.message}`)));
    if (payload) req.end(payload);
    else if (body && 'file' in body) createReadStream(body.file).pipe(req);
    else req.end();
  });
}

async function ok(p: Promise<{ status: number; body: Record<string, unknown> }>): Promise<Record<string, unknown>> {
  let r;
  try {
    r = await p;
  } catch (e) {
    fail((e as Error).message);
  }
  if (r.status >= 400) {
    const problems = Array.isArray(r.body.problems) && r.body.problems.length > 1 ? `\n  ${(r.body.problems as string[]).join('\n  ')}` : '';
    fail(`${typeof r.body.error === 'string' ? r.body.error : `HTTP ${r.status}`}${problems}`);
  }
  return r.body;
}

function progressLine(v: RolloutView): string {
  const c = v.counts;
  return `${v.id} ${v.bundle.id}@${v.bundle.version} -> ${v.group}: ${v.status}; ${c.succeeded}/${c.total} active, ${c.failed + c['timed-out']} failed, ${c.offline} offline, ${c.reverted} reverted${v.reason ? `; ${v.reason}` : ''}`;
}

const program = new Command()
  .name('edge-central')
  .description('Central server for the edge-agent fleet: model registry, rollouts, fleet view and web console')
  .version(AGENT_VERSION)
  .exitOverride((err) => {
    process.exit(err.code === 'commander.helpDisplayed' || err.code === 'commander.help' || err.code === 'commander.version' ? 0 : 2);
  });

const collect = (v: string, prev: string[]): string[] => [...prev, v];

program
  .command('serve')
  .description('run the central server (HTTP API + console + registry + rollout controller)')
  .requiredOption('--mqtt-url <url>', 'broker the fleet uses (mqtt://, mqtts://)')
  .requiredOption('--data-dir <dir>', 'registry blobs and central.db')
  .requiredOption('--token-file <file>', 'API/console token (one line, >= 16 chars)')
  .option('--trusted-key <pem>', 'public key whose bundle signatures are accepted (repeatable)', collect, [])
  .option('--port <n>', 'HTTP port', String(DEFAULT_PORT))
  .option('--host <addr>', 'HTTP listen address', '127.0.0.1')
  .option('--public-url <url>', 'URL agents reach this server at (bundle downloads); default http://HOST:PORT')
  .option('--base-topic <topic>', 'MQTT base topic', 'imaging')
  .option('--share-group <name>', 'share results/errors with other central instances via $share/<name>/...')
  .option('--mqtt-username <user>')
  .option('--mqtt-password-file <file>')
  .option('--max-upload-mb <n>', 'largest bundle archive accepted', '1024')
  .action(
    async (o: {
      mqttUrl: string;
      dataDir: string;
      tokenFile: string;
      trustedKey: string[];
      port: string;
      host: string;
      publicUrl?: string;
      baseTopic: string;
      shareGroup?: string;
      mqttUsername?: string;
      mqttPasswordFile?: string;
      maxUploadMb: string;
    }) => {
      const logger = createLogger({ level: 'info' });
      const log = logger.component('central');
      if (o.trustedKey.length === 0) fail('give at least one --trusted-key PUBLIC.pem: the registry refuses bundles it cannot verify', 2);
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port: not a port: ${o.port}`, 2);
      let server;
      try {
        server = await startCentral({
          mqttUrl: o.mqttUrl,
          dataDir: path.resolve(o.dataDir),
          tokenFile: o.tokenFile,
          trustedKeys: o.trustedKey.map((k) => path.resolve(k)),
          port,
          host: o.host,
          publicUrl: o.publicUrl,
          baseTopic: o.baseTopic,
          shareGroup: o.shareGroup,
          mqttUsername: o.mqttUsername,
          mqttPassword: o.mqttPasswordFile ? (await readFile(o.mqttPasswordFile, 'utf8')).trim() : undefined,
          maxUploadBytes: Number(o.maxUploadMb) * 1024 * 1024,
          log: (msg, extra) => log.info(extra ?? {}, msg),
        });
      } catch (e) {
        fail((e as Error).message);
      }
      log.info({ url: server.url }, 'central started');
      let stopping = false;
      const stop = (sig: string): void => {
        if (stopping) return;
        stopping = true;
        log.info({ signal: sig }, 'central stopping');
        void server
          .close()
          .then(() => logger.flush())
          .then(() => process.exit(0));
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    },
  );

const withClient = (cmd: Command): Command =>
  cmd.option('--server <url>', 'central URL (env EDGE_CENTRAL_URL)').option('--token-file <file>', 'API token file (env EDGE_CENTRAL_TOKEN_FILE)');

const bundle = program.command('bundle').description('model registry');
withClient(bundle.command('upload <bundle>').description('upload a signed bundle (.tar, or a bundle directory that is packed first)')).action(async (file: string, o: ClientOpts) => {
  const c = client(o);
  const st = await stat(file).catch(() => fail(`${file}: not found`));
  let tar = file;
  let tmp: string | undefined;
  if (st.isDirectory()) {
    tmp = await mkdtemp(path.join(tmpdir(), 'edge-central-'));
    tar = path.join(tmp, 'bundle.tar');
    await packBundle(file, tar);
  }
  try {
    const size = (await stat(tar)).size;
    const rec = await ok(call(c, 'POST', '/api/bundles', { file: tar, size }));
    process.stdout.write(`${JSON.stringify(rec)}\n`);
  } finally {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
});
withClient(bundle.command('list').description('bundles in the registry')).action(async (o: ClientOpts) => {
  const r = await ok(call(client(o), 'GET', '/api/bundles'));
  for (const b of r.bundles as { id: string; version: string; size: number; sha256: string; keyId: string }[]) {
    process.stdout.write(`${b.id}@${b.version}\t${b.size}\t${b.sha256}\t${b.keyId}\n`);
  }
});

const rollout = program.command('rollout').description('model rollouts');
withClient(
  rollout
    .command('create')
    .description('roll a registry bundle out to a group, canary first')
    .requiredOption('--bundle <id@version>', 'bundle in the registry')
    .requiredOption('--group <group>', 'agent group')
    .option('--canary <fraction>', 'fraction of the group that goes first', '0.1')
    .option('--max-failures <n>', 'failed devices tolerated before halting and rolling back', '0')
    .option('--max-failure-rate <fraction>', 'failure rate above which a completed wave halts')
    .option('--device-timeout <sec>', 'a device with no result in this time counts as failed', '600')
    .option('--shadow-images <n>', "agent policy: run the candidate beside the current model on the next N live images first")
    .option('--min-agreement <fraction>', 'agent policy: shadow label agreement needed to activate (agent default 0.9)')
    .option('--observe-images <n>', 'agent policy: after activation, watch this many images')
    .option('--max-error-rate <fraction>', 'agent policy: error rate over the observed images that rolls the agent back')
    .option('--wait', 'wait until the rollout succeeds (exit 0) or is rolled back (exit 1), printing progress'),
).action(
  async (
    o: ClientOpts & {
      bundle: string;
      group: string;
      canary: string;
      maxFailures: string;
      maxFailureRate?: string;
      deviceTimeout: string;
      shadowImages?: string;
      minAgreement?: string;
      observeImages?: string;
      maxErrorRate?: string;
      wait?: boolean;
    },
  ) => {
  const c = client(o);
  const body: Record<string, unknown> = {
    bundle: o.bundle,
    group: o.group,
    canary: Number(o.canary),
    maxFailures: Number(o.maxFailures),
    deviceTimeoutSec: Number(o.deviceTimeout),
  };
  if (o.maxFailureRate !== undefined) body.maxFailureRate = Number(o.maxFailureRate);
  const policy: Record<string, number> = {};
  if (o.shadowImages !== undefined) policy.shadowImages = Number(o.shadowImages);
  if (o.minAgreement !== undefined) policy.minAgreement = Number(o.minAgreement);
  if (o.observeImages !== undefined) policy.observeImages = Number(o.observeImages);
  if (o.maxErrorRate !== undefined) policy.maxErrorRate = Number(o.maxErrorRate);
  if (Object.keys(policy).length) body.policy = policy;
  let v = (await ok(call(c, 'POST', '/api/rollouts', { json: body }))) as unknown as RolloutView;
  process.stdout.write(`${progressLine(v)}\n`);
  if (!o.wait) return;
  let last = '';
  while (v.status === 'canary' || v.status === 'widening') {
    await new Promise((r) => setTimeout(r, 500));
    v = (await ok(call(c, 'GET', `/api/rollouts/${encodeURIComponent(v.id)}`))) as unknown as RolloutView;
    const line = progressLine(v);
    if (line !== last) process.stdout.write(`${line}\n`);
    last = line;
  }
  process.exit(v.status === 'succeeded' ? 0 : 1);
  },
);
withClient(rollout.command('status [id]').description('one rollout with its devices, or the recent ones').option('--json', 'print JSON')).action(
  async (id: string | undefined, o: ClientOpts & { json?: boolean }) => {
    const c = client(o);
    if (id) {
      const v = (await ok(call(c, 'GET', `/api/rollouts/${encodeURIComponent(id)}`))) as unknown as RolloutView;
      if (o.json) return void process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
      process.stdout.write(`${progressLine(v)}\n`);
      for (const d of v.devices) process.stdout.write(`  ${d.deviceId}\t${d.wave}\t${d.status}\t${d.phase ?? ''}\t${d.reason ?? ''}\n`);
      return;
    }
    const r = await ok(call(c, 'GET', '/api/rollouts'));
    if (o.json) return void process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    for (const v of r.rollouts as RolloutView[]) process.stdout.write(`${progressLine(v)}\n`);
  },
);
withClient(rollout.command('halt <id>').description('stop a rollout and revert the devices it reached')).action(async (id: string, o: ClientOpts) => {
  const v = (await ok(call(client(o), 'POST', `/api/rollouts/${encodeURIComponent(id)}/halt`))) as unknown as RolloutView;
  process.stdout.write(`${progressLine(v)}\n`);
});

withClient(
  program
    .command('command <cmd>')
    .description('send a fleet command (ping, get-config, set-config, pause, resume, ...) to one agent or a group and print the responses')
    .option('--device <id>', 'one agent')
    .option('--group <group>', 'every agent in a group (responses collected until all members answered or the timeout)')
    .option('--data <json>', 'command arguments (JSON)')
    .option('--timeout <ms>', 'how long to wait for responses', '5000'),
).action(async (cmd: string, o: ClientOpts & { device?: string; group?: string; data?: string; timeout: string }) => {
  if (!o.device === !o.group) fail('give exactly one of --device ID or --group G', 2);
  let data: unknown;
  if (o.data !== undefined) {
    try {
      data = JSON.parse(o.data);
    } catch (e) {
      fail(`--data: not JSON (${(e as Error).message})`, 2);
    }
  }
  const p = o.device ? `/api/agents/${encodeURIComponent(o.device)}/commands/${encodeURIComponent(cmd)}` : `/api/groups/${encodeURIComponent(o.group!)}/commands/${encodeURIComponent(cmd)}`;
  const r = await ok(call(client(o), 'POST', p, { json: { data, timeoutMs: Number(o.timeout) } }));
  process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  const responses = r.responses as { status: string }[];
  const missing = r.missing as string[];
  process.exit(responses.every((x) => x.status === 'ok') && missing.length === 0 ? 0 : 1);
});

await program.parseAsync(process.argv);
