/**
 * bench/fleet: central against 1,000 simulated agents on loopback (issue 6, "Scale").
 *
 *   npm run bench:fleet [-- --agents 1000 --workers 4 --changes 200 --health-interval-ms 10000]
 *
 * 1. starts Debian mosquitto on a free loopback port (max_connections -1, `ulimit -n` raised for it);
 * 2. forks `--workers` processes that run the simulated agents (src/central/sim.ts: real MQTT clients,
 *    retained state with a last will, retained health every `--health-interval-ms`, desired/model obeyed
 *    with model/state phases; no download, so the rollout time excludes it as the issue asks);
 * 3. starts central as its own process (`edge-central serve`, the compiled CLI) so its CPU and RSS are
 *    its own, and times how long its fleet view takes to hold every agent from the retained topics;
 * 4. state change -> console: flips `--changes` random agents offline/online one at a time (100-300 ms
 *    apart) and times
 *    from just before the agent's publish to the moment the console's event stream (/api/events, what
 *    the web console listens to) carries the new state;
 * 5. rollout: uploads a re-versioned, dev-signed copy of models/orientation-qa and rolls it out to the
 *    whole group (canary 0.1, max failures 0), timing POST -> status succeeded (and the canary wave);
 * 6. samples central's CPU (utime+stime from /proc) and RSS throughout; writes
 *    bench/results/fleet-<UTC time>.json and prints a table.
 */
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { packBundle } from '../../src/models/pack.js';
import { signBundle } from '../../src/models/signature.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '..', '..', '..'); // dist/bench/fleet -> repo
const CLI = path.join(ROOT, 'dist', 'agent', 'central-cli.js');

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}
const AGENTS = arg('agents', 1000);
const WORKERS = arg('workers', 4);
const CHANGES = arg('changes', 200);
const HEALTH_MS = arg('health-interval-ms', 10_000);
const GROUP = 'fleet-bench';
const TOKEN = `bench-${Math.random().toString(16).slice(2)}-token`;

const log = (m: string): void => void process.stderr.write(`[fleet] ${m}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

function pct(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] as number;
}
const round = (n: number, d = 1): number => Math.round(n * 10 ** d) / 10 ** d;

/** utime+stime (s) and RSS (MB) of a process from /proc. */
function procStat(pid: number): { cpuSec: number; rssMb: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]);
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return { cpuSec: ticks / 100, rssMb: rss ? Number(rss[1]) / 1024 : NaN };
}

class Worker {
  private waiters: ((m: Record<string, unknown>) => boolean)[] = [];
  constructor(readonly proc: ChildProcess) {
    proc.on('message', (m: Record<string, unknown>) => {
      if (m.type === 'error') log(`worker error: ${String(m.message)}`);
      this.waiters = this.waiters.filter((w) => !w(m));
    });
  }
  request(msg: Record<string, unknown>, want: string): Promise<Record<string, unknown>> {
    return new Promise((resolve) => {
      this.waiters.push((m) => {
        if (m.type !== want || (msg.deviceId !== undefined && m.deviceId !== msg.deviceId)) return false;
        resolve(m);
        return true;
      });
      this.proc.send(msg);
    });
  }
}

interface SseRow {
  deviceId: string;
  online?: boolean | null;
}

async function main(): Promise<void> {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'bench-fleet-'));
  const children: ChildProcess[] = [];
  const cleanup = (): void => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  };
  process.on('exit', cleanup);
  try {
    // --- bundle: shipped model re-versioned and dev-signed, like a new release ---
    const bdir = path.join(tmp, 'bundle');
    cpSync(path.join(ROOT, 'models', 'orientation-qa'), bdir, { recursive: true });
    rmSync(path.join(bdir, 'MODEL_CARD.md'), { force: true });
    const manifest = JSON.parse(readFileSync(path.join(bdir, 'manifest.json'), 'utf8')) as { id: string; version: string };
    const fromVersion = manifest.version;
    manifest.version = `${fromVersion}-bench.1`;
    writeFileSync(path.join(bdir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    await signBundle(bdir, readFileSync(path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pem')));
    const tar = path.join(tmp, 'bundle.tar');
    await packBundle(bdir, tar);

    // --- mosquitto ---
    const mport = await freePort();
    const mdir = path.join(tmp, 'mosquitto');
    mkdirSync(mdir);
    const conf = [
      ...(process.getuid?.() === 0 ? ['user root'] : []),
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'max_queued_messages 10000',
      'allow_anonymous true',
      `listener ${mport} 127.0.0.1`,
      'max_connections -1',
    ];
    writeFileSync(path.join(mdir, 'mosquitto.conf'), conf.join('\n') + '\n');
    const mosqBin = ['mosquitto', '/usr/sbin/mosquitto'].find((b) => spawnSync(b, ['-h'], { stdio: 'ignore' }).error === undefined);
    if (!mosqBin) throw new Error('mosquitto missing: apt-get install mosquitto');
    const mosqVersion = /mosquitto version (\S+)/.exec(spawnSync(mosqBin, ['-h'], { encoding: 'utf8' }).stdout)?.[1] ?? 'unknown';
    // each agent is one connection: lift the descriptor limit for the broker (as root the hard limit too)
    const broker = spawn('sh', ['-c', `ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); exec ${mosqBin} -c ${path.join(mdir, 'mosquitto.conf')}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(broker);
    let brokerLog = '';
    broker.stderr.on('data', (d: Buffer) => (brokerLog = (brokerLog + d.toString()).slice(-4000)));
    await sleep(500);
    if (broker.exitCode !== null) throw new Error(`mosquitto exited: ${brokerLog}`);
    const mqttUrl = `mqtt://127.0.0.1:${mport}`;
    log(`mosquitto ${mosqVersion} on ${mqttUrl}`);

    // --- simulated agents ---
    const t0 = Date.now();
    const workers: Worker[] = [];
    const per = Math.ceil(AGENTS / WORKERS);
    for (let w = 0; w < WORKERS; w++) {
      const p = fork(path.join(here, 'worker.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      children.push(p);
      workers.push(new Worker(p));
    }
    await Promise.all(
      workers.map((w, i) =>
        w.request(
          { type: 'start', url: mqttUrl, from: i * per, count: Math.max(0, Math.min(per, AGENTS - i * per)), prefix: 'sim', group: GROUP, model: { id: manifest.id, version: fromVersion, sha256: '0'.repeat(64) }, healthIntervalMs: HEALTH_MS },
          'ready',
        ),
      ),
    );
    const agentsUpSec = (Date.now() - t0) / 1000;
    log(`${AGENTS} agents online in ${agentsUpSec.toFixed(1)} s (${WORKERS} processes)`);
    const workerOf = (i: number): Worker => workers[Math.floor(i / per)] as Worker;
    const idOf = (i: number): string => `sim-${String(i).padStart(4, '0')}`;

    // --- central ---
    const dataDir = path.join(tmp, 'central');
    const tokenFile = path.join(tmp, 'token');
    writeFileSync(tokenFile, TOKEN + '\n');
    const tc = Date.now();
    const central = spawn(
      process.execPath,
      [CLI, 'serve', '--mqtt-url', mqttUrl, '--data-dir', dataDir, '--token-file', tokenFile, '--trusted-key', path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem'), '--port', '0'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(central);
    let centralOut = '';
    central.stdout.on('data', (d: Buffer) => (centralOut += d.toString()));
    let url = '';
    while (!url) {
      if (central.exitCode !== null) throw new Error(`central exited: ${centralOut}`);
      const m = /"url":"(http:[^"]+)".*"msg":"central started"|"msg":"central started".*"url":"(http:[^"]+)"/.exec(centralOut);
      if (m) url = (m[1] ?? m[2]) as string;
      else await sleep(20);
    }
    const auth = { authorization: `Bearer ${TOKEN}` };
    const api = async (p: string, init: RequestInit = {}): Promise<Record<string, unknown>> => {
      const r = await fetch(url + p, { ...init, headers: { ...auth, ...(init.headers as Record<string, string>) } });
      const j = (await r.json()) as Record<string, unknown>;
      if (!r.ok) throw new Error(`${p}: ${r.status} ${JSON.stringify(j)}`);
      return j;
    };
    const pid = central.pid as number;
    const samples: { t: number; cpuSec: number; rssMb: number }[] = [];
    const sampler = setInterval(() => samples.push({ t: Date.now(), ...procStat(pid) }), 200);

    // fleet view from retained topics
    for (;;) {
      const f = await api('/api/fleet');
      if (f.agents === AGENTS && (f.versions as Record<string, number>)[`${manifest.id}@${fromVersion}`] === AGENTS) break;
      await sleep(25);
    }
    const syncSec = (Date.now() - tc) / 1000;
    log(`central process start -> all ${AGENTS} agents in its fleet view: ${syncSec.toFixed(2)} s`);

    // --- console event stream ---
    const rowWaiters = new Map<string, { online: boolean; resolve: (t: number) => void }>();
    const on: { rollout: ((r: Record<string, unknown>) => void) | null } = { rollout: null };
    const sse = await fetch(`${url}/api/events`, { headers: auth });
    if (!sse.ok || !sse.body) throw new Error(`event stream: ${sse.status}`);
    void (async () => {
      const dec = new TextDecoder();
      let buf = '';
      for await (const chunk of sse.body as unknown as AsyncIterable<Uint8Array>) {
        const now = Date.now();
        buf += dec.decode(chunk, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = /^event: (\S+)$/m.exec(frame)?.[1];
          const data = /^data: (.*)$/m.exec(frame)?.[1];
          if (!ev || !data) continue;
          if (ev === 'agents') {
            for (const row of JSON.parse(data) as SseRow[]) {
              const w = rowWaiters.get(row.deviceId);
              if (w && row.online === w.online) {
                rowWaiters.delete(row.deviceId);
                w.resolve(now);
              }
            }
          } else if (ev === 'rollout') on.rollout?.(JSON.parse(data) as Record<string, unknown>);
        }
      }
    })().catch(() => undefined);
    await sleep(300);

    // --- idle load: health traffic only ---
    const idleA = procStat(pid);
    const idleT = Date.now();
    await sleep(5000);
    const idleB = procStat(pid);
    const idleCpuPct = (100 * (idleB.cpuSec - idleA.cpuSec)) / ((Date.now() - idleT) / 1000);

    // --- state change -> console ---
    const latencies: number[] = [];
    const stateA = procStat(pid);
    const stateT = Date.now();
    for (let k = 0; k < CHANGES; k++) {
      const i = Math.floor(Math.random() * AGENTS);
      const id = idOf(i);
      for (const online of [false, true]) {
        // independent changes: a random gap, so a change does not always land just after a push
        // (pushes are coalesced to one per 100 ms; a lock-step loop would always wait the full window)
        await sleep(100 + Math.random() * 200);
        const seen = new Promise<number>((resolve) => rowWaiters.set(id, { online, resolve }));
        const r = await workerOf(i).request({ type: 'flip', deviceId: id, online }, 'flipped');
        const t1 = await Promise.race([seen, sleep(10_000).then(() => NaN)]);
        if (online === false) latencies.push(t1 - (r.t0 as number));
      }
    }
    const stateB = procStat(pid);
    const stateCpuPct = (100 * (stateB.cpuSec - stateA.cpuSec)) / ((Date.now() - stateT) / 1000);
    const missed = latencies.filter((x) => Number.isNaN(x)).length;
    const ok = latencies.filter((x) => !Number.isNaN(x));
    log(`state change -> console: p50 ${pct(ok, 50)} ms, p99 ${pct(ok, 99)} ms, max ${Math.max(...ok)} ms (${ok.length} changes, ${missed} not seen in 10 s)`);

    // --- rollout of the whole group ---
    const up = await fetch(`${url}/api/bundles`, { method: 'POST', body: readFileSync(tar), headers: { ...auth, 'content-type': 'application/x-tar' } });
    if (up.status !== 201) throw new Error(`upload: ${up.status} ${await up.text()}`);
    const rollA = procStat(pid);
    const othersA = { broker: procStat(broker.pid as number).cpuSec, sims: workers.reduce((t, w) => t + procStat(w.proc.pid as number).cpuSec, 0) };
    const rollT = Date.now();
    let canarySec = NaN;
    const finished = new Promise<Record<string, unknown>>((resolve) => {
      on.rollout = (r) => {
        if (r.status === 'widening' && Number.isNaN(canarySec)) canarySec = (Date.now() - rollT) / 1000;
        if (r.status === 'succeeded' || r.status === 'rolled-back') resolve(r);
      };
    });
    const created = await api('/api/rollouts', {
      method: 'POST',
      body: JSON.stringify({ bundle: `${manifest.id}@${manifest.version}`, group: GROUP, canary: 0.1, maxFailures: 0, deviceTimeoutSec: 120 }),
      headers: { 'content-type': 'application/json' },
    });
    const timedOut: Record<string, unknown> = { status: 'timeout' };
    const final = await Promise.race([finished, sleep(300_000).then(() => timedOut)]);
    const rolloutSec = (Date.now() - rollT) / 1000;
    const rollB = procStat(pid);
    const rolloutCpuPct = (100 * (rollB.cpuSec - rollA.cpuSec)) / rolloutSec;
    // where the rest of the (shared, 2-core) machine went during the rollout
    const othersPct = {
      mosquitto: round((100 * (procStat(broker.pid as number).cpuSec - othersA.broker)) / rolloutSec),
      simWorkers: round((100 * (workers.reduce((t, w) => t + procStat(w.proc.pid as number).cpuSec, 0) - othersA.sims)) / rolloutSec),
    };
    const serving = (await Promise.all(workers.map((w) => w.request({ type: 'count', version: manifest.version }, 'count')))).reduce((s, m) => s + (m.n as number), 0);
    log(`rollout ${String(created.id)} of ${AGENTS} agents: ${String(final.status)} in ${rolloutSec.toFixed(2)} s (canary wave ${canarySec.toFixed(2)} s); ${serving} agents serving ${manifest.version}`);
    clearInterval(sampler);
    const rssPeak = Math.max(...samples.map((s) => s.rssMb));
    const rssEnd = samples.at(-1)?.rssMb ?? NaN;

    const result = {
      bench: 'fleet',
      at: new Date().toISOString(),
      commit: spawnSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim() || null,
      machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? null, memGb: round(os.totalmem() / 1e9), node: process.version, loadavgStart: os.loadavg() },
      broker: { mosquitto: mosqVersion, loopback: true, maxConnections: -1 },
      config: { agents: AGENTS, workers: WORKERS, changes: CHANGES, healthIntervalMs: HEALTH_MS, canary: 0.1, maxFailures: 0, download: false, consolePushIntervalMs: 100 },
      agentsConnectSec: round(agentsUpSec, 2),
      fleetSyncSec: round(syncSec, 2),
      stateChangeToConsoleMs: { p50: pct(ok, 50), p90: pct(ok, 90), p99: pct(ok, 99), max: Math.max(...ok), n: ok.length, missed },
      rollout: { id: created.id, status: final.status, seconds: round(rolloutSec, 2), canarySeconds: round(canarySec, 2), agentsServingNewVersion: serving, counts: final.counts ?? null, cpuPctOfOthers: othersPct },
      central: {
        cpuPctIdleWithHealth: round(idleCpuPct),
        cpuPctDuringStateChanges: round(stateCpuPct),
        cpuPctDuringRollout: round(rolloutCpuPct),
        rssMbPeak: round(rssPeak),
        rssMbEnd: round(rssEnd),
      },
      targets: { stateChangeVisibleMs: 1000, rolloutSec: 60, met: pct(ok, 99) < 1000 && rolloutSec < 60 && final.status === 'succeeded' },
    };
    const outDir = path.join(ROOT, 'bench', 'results');
    mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `fleet-${result.at.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}.json`);
    writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
    process.stdout.write(
      [
        `| agents | state change -> console p50 / p99 | rollout (canary 10% + rest) | central CPU idle / rollout | central RSS peak |`,
        `|---|---|---|---|---|`,
        `| ${AGENTS} | ${result.stateChangeToConsoleMs.p50} / ${result.stateChangeToConsoleMs.p99} ms | ${result.rollout.seconds} s (canary ${result.rollout.canarySeconds} s) | ${result.central.cpuPctIdleWithHealth}% / ${result.central.cpuPctDuringRollout}% | ${result.central.rssMbPeak} MB |`,
        `result: ${path.relative(ROOT, file)}`,
        '',
      ].join('\n'),
    );
    sse.body?.cancel().catch(() => undefined);
    await Promise.all(workers.map((w) => Promise.race([w.request({ type: 'stop' }, 'stopped'), sleep(10_000)])));
    central.kill('SIGTERM');
    await sleep(300);
  } finally {
    cleanup();
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench/fleet failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
