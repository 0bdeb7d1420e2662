/**
 * bench/e2e: end-to-end benchmark of the running agent on 512x512 16-bit CT DICOM (a benchmark, not a test).
 *
 *   npm run build && npm run bench:e2e [-- --copies 4 --steady 108 --rate 20 --variants default,c1,t1]
 *
 * What it does, all on loopback, in one run (< 5 min on a 2-core machine):
 * 1. makes 512x512 CT DICOM files from real CT pixels into a temp dir (bench/e2e/make_ct.py: Debian
 *    invesalius-examples head CT, upsampled 2x, written with pydicom; nothing is committed);
 * 2. starts Debian mosquitto on a free loopback port and a separate subscriber process (mqtt.js, QoS 1)
 *    on `imaging/<deviceId>/result`;
 * 3. per agent variant (device-config settings only, no code changes): starts the built agent
 *    (`node dist/agent/cli.js run --config FILE`), drops files into its inbox by rename from a staging
 *    dir on the same filesystem, first at a steady rate, then all the rest at once (burst), and
 *    measures per file the latency from the rename to the result's arrival at the subscriber, the
 *    burst throughput, the per-stage timings carried in each result, the agent's CPU time and its
 *    peak RSS (/proc/<pid>/status VmHWM, plus VmRSS sampled every 50 ms);
 * 4. baseline (a), the upper bound: the same model in a bare onnxruntime-node loop on pre-decoded,
 *    pre-processed tensors (bench/e2e/bare.ts);
 * 5. baseline (b): a plain Python loop with Debian's pydicom + torch on the same files
 *    (bench/e2e/python_loop.py, /usr/bin/python3);
 * 6. prints Markdown tables and writes everything to bench/results/e2e-<UTC timestamp>.json.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, linkSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { mean, nowEpochMs, percentile, round } from './stats.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const PY = '/usr/bin/python3';
const DEVICE_ID = 'bench';
const TOPIC = `imaging/${DEVICE_ID}/result`;
const SHIPPED_BUNDLE = path.join(ROOT, 'models', 'orientation-qa');

interface Variant {
  name: string;
  what: string;
  settings: { concurrency?: number; intraOpThreads?: number; stabilityMs?: number; pollIntervalMs?: number; queueCapacity?: number };
  /** Run the agent under `node --cpu-prof` (for the breakdown only: its speed is not a result). */
  profile?: boolean;
}

/** Device-config variants: `default` is the shipped default.yaml's settings (only paths and broker changed). */
const VARIANTS: Record<string, Variant> = {
  default: { name: 'default', what: 'shipped defaults: pipeline.concurrency 2, model.intraOpThreads 0 (ORT: all cores), ingest.stabilityMs 1000, pollIntervalMs 250', settings: {} },
  c1: { name: 'c1', what: 'pipeline.concurrency 1', settings: { concurrency: 1 } },
  t1: { name: 't1', what: 'model.intraOpThreads 1', settings: { intraOpThreads: 1 } },
  c1t1: { name: 'c1t1', what: 'pipeline.concurrency 1, model.intraOpThreads 1', settings: { concurrency: 1, intraOpThreads: 1 } },
  fast: { name: 'fast', what: 'defaults + ingest.stabilityMs 50, ingest.pollIntervalMs 25 (write-then-rename producers)', settings: { stabilityMs: 50, pollIntervalMs: 25 } },
  fastt1: { name: 'fastt1', what: 'model.intraOpThreads 1 + ingest.stabilityMs 50, pollIntervalMs 25', settings: { intraOpThreads: 1, stabilityMs: 50, pollIntervalMs: 25 } },
  fastq: { name: 'fastq', what: 'ingest.stabilityMs 50, pollIntervalMs 25, ingest.queueCapacity 1024 (a burst never refills through an inbox rescan)', settings: { stabilityMs: 50, pollIntervalMs: 25, queueCapacity: 1024 } },
  fastqt1: { name: 'fastqt1', what: 'as fastq + model.intraOpThreads 1', settings: { stabilityMs: 50, pollIntervalMs: 25, queueCapacity: 1024, intraOpThreads: 1 } },
  q: { name: 'q', what: 'defaults + ingest.queueCapacity 1024', settings: { queueCapacity: 1024 } },
  profile: { name: 'profile', what: 'shipped defaults, agent under node --cpu-prof (where the main thread spends its time; its speed is not a result)', settings: {}, profile: true },
};

const { values: opt } = parseArgs({
  options: {
    copies: { type: 'string', default: '4' },
    steady: { type: 'string', default: '108' },
    rate: { type: 'string', default: '20' },
    variants: { type: 'string', default: 'default,c1,t1,c1t1,fast,fastt1,fastqt1,profile' },
    bundle: { type: 'string', default: SHIPPED_BUNDLE },
    out: { type: 'string', default: path.join(ROOT, 'bench', 'results') },
    'bare-seconds': { type: 'string', default: '4' },
    keep: { type: 'boolean', default: false },
  },
});

function log(msg: string): void {
  process.stderr.write(`[bench:e2e ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.max(0, ms)));
}

async function waitUntil(pred: () => boolean, timeoutMs: number, what: string, stepMs = 5): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) {
      log(`timeout after ${timeoutMs} ms waiting for ${what}`);
      return false;
    }
    await sleep(stepMs);
  }
  return true;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function which(bins: string[]): string | null {
  for (const b of bins) if (spawnSync(b, ['-h'], { stdio: 'ignore' }).error === undefined) return b;
  return null;
}

/** Runs a command to completion and returns its stdout; throws with stderr on failure. */
function runJson<T>(cmd: string, args: string[], what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) {
        reject(new Error(`${what} failed (exit ${code}): ${err.slice(-2000)}`));
        return;
      }
      try {
        const last = out.trim().split('\n').pop() ?? '';
        resolve(JSON.parse(last) as T);
      } catch (e) {
        reject(new Error(`${what}: bad output: ${(e as Error).message}: ${out.slice(-500)} ${err.slice(-500)}`));
      }
    });
  });
}

interface ProcSample {
  vmRssKb: number;
  vmHwmKb: number;
  cpuTicks: number;
}

function readProc(pid: number): ProcSample | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // after "(comm) ": field 3 is index 0, so utime (14) is index 11 and stime (15) index 12
    const cpuTicks = Number(fields[11]) + Number(fields[12]);
    return { vmRssKb: kb('VmRSS'), vmHwmKb: kb('VmHWM'), cpuTicks };
  } catch {
    return null;
  }
}

/** Samples a process's memory every 50 ms; keeps the peaks and the last sample. */
class ProcSampler {
  maxRssKb = 0;
  hwmKb = 0;
  last: ProcSample | null = null;
  private timer: NodeJS.Timeout;
  constructor(private readonly pid: number) {
    this.timer = setInterval(() => this.sample(), 50);
    this.sample();
  }
  sample(): ProcSample | null {
    const s = readProc(this.pid);
    if (s) {
      this.last = s;
      if (s.vmRssKb > this.maxRssKb) this.maxRssKb = s.vmRssKb;
      if (s.vmHwmKb > this.hwmKb) this.hwmKb = s.vmHwmKb;
    }
    return s;
  }
  stop(): void {
    clearInterval(this.timer);
  }
}

const TICKS_PER_SEC = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

interface Arrival {
  t: number;
  label?: string;
  timings?: Record<string, number>;
  bytes?: number;
}

/** Subscriber child; routes arrivals by content hash into the current sink. */
class Subscriber {
  readonly arrivals = new Map<string, Arrival>();
  extra = 0;
  ready = false;
  constructor(readonly child: ChildProcess) {
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      let m: { ready?: boolean; t?: number; hash?: string; label?: string; timings?: Record<string, number>; bytes?: number };
      try {
        m = JSON.parse(line) as typeof m;
      } catch {
        return;
      }
      if (m.ready) {
        this.ready = true;
        return;
      }
      if (m.hash && m.t !== undefined) {
        if (this.arrivals.has(m.hash)) this.extra++;
        else this.arrivals.set(m.hash, { t: m.t, label: m.label, timings: m.timings, bytes: m.bytes });
      }
    });
    child.stderr!.on('data', (d: Buffer) => log(`subscriber: ${d.toString().trim()}`));
  }
  reset(): void {
    this.arrivals.clear();
    this.extra = 0;
  }
}

interface DataFile {
  path: string;
  name: string;
  hash: string;
}

function yamlConfig(dir: string, port: number, bundle: string, v: Variant): string {
  const s = v.settings;
  const lines = [
    `# bench/e2e agent config, variant '${v.name}': ${v.what}`,
    `deviceId: ${DEVICE_ID}`,
    `configId: bench-e2e-${v.name}`,
    `inbox: ${path.join(dir, 'inbox')}`,
    `stateDir: ${path.join(dir, 'state')}`,
    `doneDir: ${path.join(dir, 'done')}`,
    `quarantineDir: ${path.join(dir, 'quarantine')}`,
    'ingest:',
    `  stabilityMs: ${s.stabilityMs ?? 1000}`,
    `  pollIntervalMs: ${s.pollIntervalMs ?? 250}`,
    `  queueCapacity: ${s.queueCapacity ?? 64}`,
    'mqtt:',
    `  url: mqtt://127.0.0.1:${port}`,
    '  baseTopic: imaging',
    'model:',
    // the shipped bundle exactly as device-configs/default.yaml loads it (signed, development key);
    // another bundle (--bundle, e.g. a candidate model) is loaded unsigned: bench only
    ...(bundle === SHIPPED_BUNDLE
      ? ['  trustedKeys: ["${EDGE_AGENT_PACKAGE}/models/keys/DEVELOPMENT-ONLY-signing-key.pub.pem"]', '  allowUnsigned: false']
      : [`  bundle: ${bundle}`, '  allowUnsigned: true']),
    '  runtime: onnx',
    '  providers: [cpu]',
    `  intraOpThreads: ${s.intraOpThreads ?? 0}`,
    'pipeline:',
    `  concurrency: ${s.concurrency ?? 2}`,
    'decode:',
    '  framePolicy: middle',
    'logging:',
    '  level: info',
  ];
  return lines.join('\n') + '\n';
}

interface PhaseResult {
  files: number;
  received: number;
  missing: number;
  latencyMs: { p50: number; p99: number; max: number; mean: number };
  /** files / (last arrival - first drop) */
  dropToLastPerSec: number;
  /** (n - 1) / (last arrival - first arrival): the processing rate once results flow */
  throughputPerSec: number;
  seconds: number;
  agentCpuPercent: number;
  stageMeanMs: Record<string, number>;
  /** mean of (drop->arrival latency - timings.total - timings.queue): ingest wait, hashing, journal, outbox, MQTT */
  outsideTimingsMeanMs: number;
}

interface VariantResult {
  variant: Variant;
  config: string;
  startupMs: number;
  idleRssMb: number;
  peakRssMb: number;
  maxSampledRssMb: number;
  steady: PhaseResult;
  burst: PhaseResult;
  labels: Record<string, number>;
  /** per file name; used for the agent-vs-Python agreement, left out of the JSON */
  labelByName: Record<string, string>;
  cpuProfile?: unknown;
  doneFiles: number;
  quarantined: number;
  duplicateDeliveries: number;
  agentExit: number | string | null;
}

function phaseStats(files: DataFile[], drops: Map<string, number>, sub: Subscriber, cpu0: number, cpu1: number, t0: number, t1: number): PhaseResult {
  const lat: number[] = [];
  const arrivals: number[] = [];
  const outside: number[] = [];
  const stageSums = new Map<string, number[]>();
  for (const f of files) {
    const a = sub.arrivals.get(f.hash);
    const d = drops.get(f.hash);
    if (!a || d === undefined) continue;
    lat.push(a.t - d);
    arrivals.push(a.t);
    for (const [k, v] of Object.entries(a.timings ?? {})) {
      if (!stageSums.has(k)) stageSums.set(k, []);
      stageSums.get(k)!.push(v);
    }
    if (a.timings?.total !== undefined) outside.push(a.t - d - a.timings.total - (a.timings.queue ?? 0));
  }
  const firstDrop = Math.min(...files.map((f) => drops.get(f.hash) ?? Infinity));
  const firstArr = Math.min(...arrivals);
  const lastArr = Math.max(...arrivals);
  const stageMeanMs: Record<string, number> = {};
  for (const [k, v] of stageSums) stageMeanMs[k] = round(mean(v), 2);
  const wall = (t1 - t0) / 1000;
  return {
    files: files.length,
    received: lat.length,
    missing: files.length - lat.length,
    latencyMs: { p50: round(percentile(lat, 50)), p99: round(percentile(lat, 99)), max: round(Math.max(...lat)), mean: round(mean(lat)) },
    dropToLastPerSec: round(lat.length / ((lastArr - firstDrop) / 1000), 1),
    throughputPerSec: round((arrivals.length - 1) / ((lastArr - firstArr) / 1000), 1),
    seconds: round(wall, 2),
    agentCpuPercent: round(((cpu1 - cpu0) / TICKS_PER_SEC / wall) * 100, 0),
    stageMeanMs,
    outsideTimingsMeanMs: round(mean(outside), 2),
  };
}

async function runVariant(v: Variant, data: DataFile[], steadyN: number, rate: number, tmp: string, port: number, bundle: string, sub: Subscriber): Promise<VariantResult> {
  const dir = path.join(tmp, `agent-${v.name}`);
  const stage = path.join(dir, 'stage');
  const inbox = path.join(dir, 'inbox');
  for (const d of [stage, inbox]) mkdirSync(d, { recursive: true });
  for (const f of data) linkSync(f.path, path.join(stage, f.name));
  const config = yamlConfig(dir, port, bundle, v);
  const cfgPath = path.join(dir, 'config.yaml');
  writeFileSync(cfgPath, config);
  sub.reset();

  const logFile = createWriteStream(path.join(dir, 'agent.log'));
  const t0 = Date.now();
  const profDir = path.join(dir, 'cpuprof');
  const nodeFlags = v.profile ? ['--cpu-prof', '--cpu-prof-dir', profDir] : [];
  const agent = spawn(process.execPath, [...nodeFlags, path.join(ROOT, 'dist', 'agent', 'cli.js'), 'run', '--config', cfgPath], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let exit: number | string | null | undefined;
  const exited = new Promise<void>((resolve) =>
    agent.on('exit', (code, signal) => {
      exit = code ?? signal;
      resolve();
    }),
  );
  let started = false;
  createInterface({ input: agent.stdout }).on('line', (line) => {
    logFile.write(line + '\n');
    if (line.includes('"agent started"')) started = true;
  });
  agent.stderr.on('data', (d: Buffer) => logFile.write(d));
  const sampler = new ProcSampler(agent.pid!);
  const ok = await waitUntil(() => started || exit !== undefined, 60_000, `agent ${v.name} to start`, 20);
  if (!ok || !started) {
    sampler.stop();
    agent.kill('SIGKILL');
    throw new Error(`agent variant ${v.name} did not start (exit ${String(exit)}); log: ${readFileSync(path.join(dir, 'agent.log'), 'utf8').slice(-2000)}`);
  }
  const startupMs = Date.now() - t0;
  await sleep(500);
  const idle = sampler.sample();

  // steady: one file every 1/rate s, by rename (the file is complete when it appears in the inbox)
  const steady = data.slice(0, steadyN);
  const burst = data.slice(steadyN);
  const drops = new Map<string, number>();
  let cpuA = readProc(agent.pid!)?.cpuTicks ?? 0;
  let tA = nowEpochMs();
  for (let i = 0; i < steady.length; i++) {
    await sleep(tA + (i * 1000) / rate - nowEpochMs());
    const f = steady[i]!;
    renameSync(path.join(stage, f.name), path.join(inbox, f.name));
    drops.set(f.hash, nowEpochMs());
  }
  await waitUntil(() => steady.every((f) => sub.arrivals.has(f.hash)), 60_000, `${v.name} steady results`);
  let tB = nowEpochMs();
  let cpuB = readProc(agent.pid!)?.cpuTicks ?? 0;
  const steadyRes = phaseStats(steady, drops, sub, cpuA, cpuB, tA, tB);
  log(`${v.name} steady: ${steadyRes.received}/${steadyRes.files} p50 ${steadyRes.latencyMs.p50} ms p99 ${steadyRes.latencyMs.p99} ms`);

  // burst: every remaining file at once
  await sleep(300);
  cpuA = readProc(agent.pid!)?.cpuTicks ?? 0;
  tA = nowEpochMs();
  for (const f of burst) {
    renameSync(path.join(stage, f.name), path.join(inbox, f.name));
    drops.set(f.hash, nowEpochMs());
  }
  await waitUntil(() => burst.every((f) => sub.arrivals.has(f.hash)), 120_000, `${v.name} burst results`);
  tB = nowEpochMs();
  cpuB = readProc(agent.pid!)?.cpuTicks ?? 0;
  const burstRes = phaseStats(burst, drops, sub, cpuA, cpuB, tA, tB);
  log(`${v.name} burst: ${burstRes.received}/${burstRes.files} ${burstRes.throughputPerSec} img/s, p50 ${burstRes.latencyMs.p50} ms p99 ${burstRes.latencyMs.p99} ms`);

  await sleep(1500); // let the agent move the published files to done/
  const before = sampler.sample();
  sampler.stop();
  agent.kill('SIGTERM');
  const timeout = setTimeout(() => agent.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timeout);
  logFile.end();

  const labels: Record<string, number> = {};
  const labelByName: Record<string, string> = {};
  for (const f of data) {
    const l = sub.arrivals.get(f.hash)?.label ?? '?';
    labels[l] = (labels[l] ?? 0) + 1;
    labelByName[f.name] = l;
  }
  const count = (d: string) => (existsSync(d) ? readdirSync(d).filter((n) => !n.endsWith('.json')).length : 0);
  return {
    variant: v,
    config,
    startupMs,
    idleRssMb: round((idle?.vmRssKb ?? NaN) / 1024, 1),
    peakRssMb: round(Math.max(sampler.hwmKb, before?.vmHwmKb ?? 0) / 1024, 1),
    maxSampledRssMb: round(sampler.maxRssKb / 1024, 1),
    steady: steadyRes,
    burst: burstRes,
    labels,
    labelByName,
    doneFiles: count(path.join(dir, 'done')),
    quarantined: count(path.join(dir, 'quarantine')),
    duplicateDeliveries: sub.extra,
    agentExit: exit ?? null,
    ...(v.profile ? { cpuProfile: summariseProfiles(profDir) } : {}),
  };
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Which part of the agent a profile frame belongs to. */
function category(url: string, fn: string): string {
  if (fn === '(garbage collector)') return 'GC';
  if (fn === '(program)' || fn === '(root)') return 'native/program';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return `npm:${nm[1]}`;
  const own = /\/dist\/(src\/[^/]+|agent)\//.exec(url);
  if (own) return own[1]!;
  if (url.startsWith('node:')) return 'node internals';
  return url ? 'other' : 'native/program';
}

/** Self time by category and top functions over the agent's whole life (start, steady, burst, stop). */
function summariseProfiles(dir: string): unknown {
  if (!existsSync(dir)) return { error: 'no profile written' };
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  const byCat = new Map<string, number>();
  const byFn = new Map<string, number>();
  let busy = 0;
  let idle = 0;
  for (const f of files) {
    const prof = JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as CpuProfile;
    const nodes = new Map(prof.nodes.map((n) => [n.id, n]));
    prof.samples.forEach((id, i) => {
      const n = nodes.get(id);
      const dt = (prof.timeDeltas[i] ?? 0) / 1000;
      if (!n) return;
      if (n.callFrame.functionName === '(idle)') {
        idle += dt;
        return;
      }
      busy += dt;
      const cat = category(n.callFrame.url, n.callFrame.functionName);
      byCat.set(cat, (byCat.get(cat) ?? 0) + dt);
      const key = `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, '$1/')}:${n.callFrame.lineNumber + 1}`;
      byFn.set(key, (byFn.get(key) ?? 0) + dt);
    });
  }
  const top = (m: Map<string, number>, k: number) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, k)
      .map(([name, ms]) => ({ name, ms: round(ms, 0), percentOfBusy: round((ms / busy) * 100, 1) }));
  return { mainThreadBusyMs: round(busy, 0), mainThreadIdleMs: round(idle, 0), byCategory: top(byCat, 14), topFunctions: top(byFn, 15) };
}

interface BareResult {
  intraOpThreads: number;
  images: number;
  seconds: number;
  imagesPerSec: number;
  inferMs: { p50: number; p99: number; mean: number };
  perImageOutsideLoopMs: { read: number; decode: number; preprocess: number };
  ortVersion: string;
}

interface PythonResult {
  images: number;
  seconds: number;
  imagesPerSec: number;
  latencyMs: { p50: number; p99: number; mean: number };
  stageMeanMs: { readDecode: number; preprocess: number; infer: number };
  torchThreads: number;
  torch: string;
  pydicom: string;
  weights: { convs: number; bnFolded: boolean };
  goldenMaxAbsDiff: number | null;
  labels: Record<string, string>;
}

async function main(): Promise<void> {
  const copies = Number(opt.copies);
  const steadyN = Number(opt.steady);
  const rate = Number(opt.rate);
  const bundle = path.resolve(opt.bundle);
  const variantNames = opt.variants.split(',').map((s) => s.trim()).filter(Boolean);
  for (const n of variantNames) if (!VARIANTS[n]) throw new Error(`unknown variant '${n}' (known: ${Object.keys(VARIANTS).join(', ')})`);

  // preflight: everything the run needs, with what to install
  const problems: string[] = [];
  if (!existsSync(path.join(ROOT, 'dist', 'agent', 'cli.js'))) problems.push('dist/agent/cli.js missing: run `npm run build`');
  if (!existsSync(path.join(bundle, 'manifest.json'))) problems.push(`${bundle}/manifest.json missing: the model bundle is not there (models/training/build.py makes it)`);
  if (!existsSync(PY)) problems.push(`${PY} missing (Debian python3 with python3-pydicom, python3-torch, python3-onnx, python3-scipy)`);
  const mosq = which(['mosquitto', '/usr/sbin/mosquitto']);
  if (!mosq) problems.push('mosquitto missing: apt-get install mosquitto');
  if (!existsSync('/usr/share/doc/invesalius-examples/examples/Cranium.inv3')) problems.push('apt-get install invesalius-examples (the CT source)');
  if (problems.length) throw new Error(`cannot run:\n - ${problems.join('\n - ')}`);

  const manifest = JSON.parse(readFileSync(path.join(bundle, 'manifest.json'), 'utf8')) as {
    id: string;
    version: string;
    files: { path: string; format: string; precision: string; sha256: string; size: number }[];
    input: { shape: number[] };
  };
  const modelFile = manifest.files.find((f) => f.format === 'onnx');
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'bench-e2e-'));
  const cleanup: (() => void)[] = [];
  const t00 = Date.now();
  const loadAtStart = os.loadavg().map((l) => round(l, 2));
  try {
    log(`temp dir ${tmp}; making 512x512 CT DICOM (${copies} copies of each InVesalius slice)`);
    const made = await runJson<{ files: string[]; slices: number; copies: number; bytesPerFile: number; seconds: number; source: string; pydicom: string }>(
      PY,
      [path.join(ROOT, 'bench', 'e2e', 'make_ct.py'), '--out', path.join(tmp, 'src'), '--copies', String(copies)],
      'make_ct.py',
    );
    const data: DataFile[] = made.files.map((p) => ({ path: p, name: path.basename(p), hash: createHash('sha256').update(readFileSync(p)).digest('hex') }));
    // interleave copies so steady and burst both see every part of the head
    data.sort((a, b) => a.name.slice(5).localeCompare(b.name.slice(5)) || a.name.localeCompare(b.name));
    if (new Set(data.map((d) => d.hash)).size !== data.length) throw new Error('generated files are not all distinct');
    if (steadyN >= data.length) throw new Error(`--steady ${steadyN} leaves no files for the burst (${data.length} files)`);
    const listFile = path.join(tmp, 'files.json');
    writeFileSync(listFile, JSON.stringify(data.map((d) => d.path)));
    log(`${data.length} files (${made.bytesPerFile} bytes each) in ${made.seconds} s`);

    // broker
    const port = await freePort();
    const mdir = path.join(tmp, 'mosquitto');
    mkdirSync(mdir);
    const conf = [...(process.getuid?.() === 0 ? ['user root'] : []), `listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'log_dest stderr', 'log_type error', 'log_type warning'];
    writeFileSync(path.join(mdir, 'mosquitto.conf'), conf.join('\n') + '\n');
    const broker = spawn(mosq!, ['-c', path.join(mdir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let brokerLog = '';
    broker.stderr.on('data', (d: Buffer) => (brokerLog += d.toString()));
    cleanup.push(() => broker.kill('SIGTERM'));
    let up = false;
    for (let i = 0; i < 100 && !up; i++) {
      up = await canConnect(port);
      if (!up) await sleep(50);
    }
    if (!up) throw new Error(`mosquitto did not listen on ${port}: ${brokerLog}`);
    const mosqVersion = spawnSync(mosq!, ['-h'], { encoding: 'utf8' }).stdout.split('\n')[0] ?? '';
    log(`mosquitto on 127.0.0.1:${port} (${mosqVersion})`);

    const subChild = spawn(process.execPath, [path.join(ROOT, 'dist', 'bench', 'e2e', 'subscriber.js'), `mqtt://127.0.0.1:${port}`, TOPIC], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    cleanup.push(() => subChild.kill('SIGTERM'));
    const sub = new Subscriber(subChild);
    if (!(await waitUntil(() => sub.ready, 10_000, 'subscriber'))) throw new Error('subscriber did not subscribe');

    const variants: VariantResult[] = [];
    for (const n of variantNames) {
      log(`agent variant ${n}: ${VARIANTS[n]!.what}`);
      variants.push(await runVariant(VARIANTS[n]!, data, steadyN, rate, tmp, port, bundle, sub));
    }

    log('baseline (a): bare onnxruntime-node loop');
    const bareThreads = [...new Set(variants.map((v) => v.variant.settings.intraOpThreads ?? 0).concat([0, 1]))].sort();
    const bare: BareResult[] = [];
    for (const t of bareThreads) {
      bare.push(await runJson<BareResult>(process.execPath, [path.join(ROOT, 'dist', 'bench', 'e2e', 'bare.js'), bundle, listFile, String(t), opt['bare-seconds']], 'bare loop'));
      log(`bare intraOp ${t}: ${round(bare.at(-1)!.imagesPerSec)} img/s`);
    }

    log('baseline (b): Python pydicom + torch loop');
    const python: PythonResult[] = [];
    for (const t of [0, os.cpus().length]) {
      python.push(
        await runJson<PythonResult>(PY, [path.join(ROOT, 'bench', 'e2e', 'python_loop.py'), '--bundle', bundle, '--files', listFile, '--threads', String(t), '--max-seconds', '20'], 'python loop'),
      );
      log(`python threads ${python.at(-1)!.torchThreads}: ${round(python.at(-1)!.imagesPerSec)} img/s`);
    }

    const report = buildReport({ made, data, variants, bare, python, manifest, modelFile, port, mosqVersion, rate, steadyN, seconds: (Date.now() - t00) / 1000, loadAtStart });
    mkdirSync(opt.out, { recursive: true });
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    const outFile = path.join(opt.out, `e2e-${stamp}.json`);
    writeFileSync(outFile, JSON.stringify(report.json, null, 2) + '\n');
    process.stdout.write(report.markdown + `\nJSON: ${path.relative(ROOT, outFile)}\n`);
  } finally {
    for (const c of cleanup.reverse()) c();
    if (!opt.keep) rmSync(tmp, { recursive: true, force: true });
    else log(`kept ${tmp}`);
  }
}

function machine(): Record<string, unknown> {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? 'unknown';
  const flags = /^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '';
  const load = os.loadavg().map((l) => round(l, 2));
  return {
    nproc: os.cpus().length,
    cpuModel: model,
    avx512vnni: flags.includes('avx512_vnni'),
    memTotalMb: round(os.totalmem() / 1048576, 0),
    kernel: os.release(),
    node: process.version,
    loadavgAtEnd: load,
  };
}

interface ReportInput {
  made: { slices: number; copies: number; bytesPerFile: number; source: string; pydicom: string };
  data: DataFile[];
  variants: VariantResult[];
  bare: BareResult[];
  python: PythonResult[];
  manifest: { id: string; version: string; input: { shape: number[] } };
  modelFile: { sha256: string; size: number; precision: string } | undefined;
  port: number;
  mosqVersion: string;
  rate: number;
  steadyN: number;
  seconds: number;
  loadAtStart: number[];
}

function buildReport(r: ReportInput): { json: unknown; markdown: string } {
  const measured = r.variants.filter((v) => !v.variant.profile);
  const head = measured[0]!;
  const bareBest = r.bare.reduce((a, b) => (b.imagesPerSec > a.imagesPerSec ? b : a));
  const bareSame = r.bare.find((b) => b.intraOpThreads === (head.variant.settings.intraOpThreads ?? 0)) ?? bareBest;
  const pyBest = r.python.reduce((a, b) => (b.imagesPerSec > a.imagesPerSec ? b : a));
  const bestAgent = measured.reduce((a, b) => (b.burst.throughputPerSec > a.burst.throughputPerSec ? b : a));
  const f = (v: number, d = 1) => (Number.isFinite(v) ? round(v, d).toFixed(d) : '-');
  const md: string[] = [];
  md.push(`### bench:e2e: ${r.data.length} CT files 512x512 int16, model ${r.manifest.id} ${r.manifest.version} (input ${r.manifest.input.shape.join('x')})`);
  md.push('');
  md.push('| runner | config | images/s | latency p50 / p99 (ms) | peak RSS (MB) |');
  md.push('|---|---|---:|---:|---:|');
  for (const v of r.variants) {
    md.push(
      `| agent, burst of ${v.burst.files} | \`${v.variant.name}\` | ${f(v.burst.throughputPerSec)} (drop->last: ${f(v.burst.dropToLastPerSec)}) | ${f(v.burst.latencyMs.p50, 0)} / ${f(v.burst.latencyMs.p99, 0)} | ${f(v.peakRssMb)} |`,
    );
    md.push(`| agent, steady ${r.rate}/s x ${v.steady.files} | \`${v.variant.name}\` | - | ${f(v.steady.latencyMs.p50, 0)} / ${f(v.steady.latencyMs.p99, 0)} | (same run) |`);
  }
  for (const b of r.bare) {
    md.push(`| (a) bare onnxruntime-node loop, pre-processed tensors | intraOpThreads ${b.intraOpThreads} | ${f(b.imagesPerSec)} | ${f(b.inferMs.p50, 2)} / ${f(b.inferMs.p99, 2)} (run only) | - |`);
  }
  for (const p of r.python) {
    md.push(`| (b) Python pydicom + torch loop | torch threads ${p.torchThreads} | ${f(p.imagesPerSec)} | ${f(p.latencyMs.p50, 1)} / ${f(p.latencyMs.p99, 1)} (per file, in-loop) | - |`);
  }
  md.push('');
  md.push('Agent latency: rename into the inbox -> result message at a separate QoS 1 subscriber. images/s (burst) = (n-1) / (last - first result arrival); drop->last = n / (last arrival - first rename).');
  md.push('');
  const ratioBare = head.burst.throughputPerSec / bareSame.imagesPerSec;
  const ratioBareBest = bestAgent.burst.throughputPerSec / bareBest.imagesPerSec;
  const ratioPy = head.burst.throughputPerSec / pyBest.imagesPerSec;
  const targets = [
    { target: 'agent throughput >= 80% of the bare loop', value: `${f(ratioBare * 100, 0)}% (\`${head.variant.name}\` vs bare intraOp ${bareSame.intraOpThreads}); best variant \`${bestAgent.variant.name}\` ${f(ratioBareBest * 100, 0)}% of the best bare loop`, met: ratioBare >= 0.8 },
    { target: 'agent throughput >= 3x the Python loop', value: `${f(ratioPy, 2)}x (\`${head.variant.name}\` vs Python at its best thread count, ${pyBest.torchThreads})`, met: ratioPy >= 3 },
    { target: 'agent peak RSS < 250 MB', value: `${f(head.peakRssMb)} MB (VmHWM, \`${head.variant.name}\`); max over variants ${f(Math.max(...r.variants.map((v) => v.peakRssMb)))} MB`, met: Math.max(...measured.map((v) => v.peakRssMb)) < 250 },
  ];
  md.push('| target | measured | met |');
  md.push('|---|---|---|');
  for (const t of targets) md.push(`| ${t.target} | ${t.value} | ${t.met ? 'yes' : 'NO'} |`);
  md.push('');
  const stages = ['queue', 'read', 'decode', 'preprocess', 'infer', 'total'];
  md.push('Per-image stage means in the agent (ms, from each result\'s `timings`; burst phase unless noted), and what lies outside them:');
  md.push('');
  md.push(`| variant | phase | ${stages.join(' | ')} | outside timings* | agent CPU %** |`);
  md.push(`|---|---|${stages.map(() => '---:').join('|')}|---:|---:|`);
  for (const v of r.variants) {
    for (const [name, ph] of [
      ['steady', v.steady],
      ['burst', v.burst],
    ] as const) {
      md.push(`| \`${v.variant.name}\` | ${name} | ${stages.map((s) => f(ph.stageMeanMs[s] ?? NaN, 2)).join(' | ')} | ${f(ph.outsideTimingsMeanMs, 1)} | ${f(ph.agentCpuPercent, 0)} |`);
    }
  }
  md.push('');
  md.push('\\* latency - queue - total: inbox stability wait, hashing, journal/outbox (SQLite), MQTT publish and delivery. \\*\\* all threads of the agent process (utime+stime from /proc), 100 = one core.');
  md.push('');
  const bo = bareSame.perImageOutsideLoopMs;
  md.push(`Same stages outside the agent (bare.ts, one thread, mean ms/image): read ${f(bo.read, 2)}, decode ${f(bo.decode, 2)}, preprocess ${f(bo.preprocess, 2)}; ORT run ${f(bareSame.inferMs.mean, 2)} (intraOp ${bareSame.intraOpThreads}).`);
  md.push(`Python loop stages (mean ms/image, torch threads ${pyBest.torchThreads}): pydicom read+decode ${f(pyBest.stageMeanMs.readDecode, 2)}, window+resize ${f(pyBest.stageMeanMs.preprocess, 2)}, torch forward ${f(pyBest.stageMeanMs.infer, 2)}.`);

  for (const v of r.variants) {
    const p = v.cpuProfile as { mainThreadBusyMs: number; mainThreadIdleMs: number; byCategory: { name: string; ms: number; percentOfBusy: number }[]; topFunctions: { name: string; ms: number; percentOfBusy: number }[] } | undefined;
    if (!p?.byCategory) continue;
    md.push('');
    md.push(`Agent main thread under \`node --cpu-prof\` (variant \`${v.variant.name}\`, whole life: start, ${v.steady.files} steady + ${v.burst.files} burst files, stop): busy ${f(p.mainThreadBusyMs / 1000, 2)} s, idle ${f(p.mainThreadIdleMs / 1000, 2)} s. Self time by part:`);
    md.push('');
    md.push('| part | self ms | % of busy |');
    md.push('|---|---:|---:|');
    for (const c of p.byCategory) md.push(`| ${c.name} | ${c.ms} | ${f(c.percentOfBusy)} |`);
    md.push('');
    md.push('| top functions (self) | ms | % |');
    md.push('|---|---:|---:|');
    for (const c of p.topFunctions.slice(0, 10)) md.push(`| \`${c.name}\` | ${c.ms} | ${f(c.percentOfBusy)} |`);
  }
  md.push('');
  // sanity: same model, same files -> (nearly) the same labels from the agent and the Python loop
  const py = r.python[0]!;
  const names = Object.keys(head.labelByName).filter((n) => py.labels[n] !== undefined);
  const agree = names.filter((n) => py.labels[n] === head.labelByName[n]).length;
  const agreement = { files: names.length, sameLabel: agree, agentLabels: head.labels, pythonLabels: countLabels(Object.values(py.labels)), pythonGoldenMaxAbsDiff: py.goldenMaxAbsDiff, pythonWeights: py.weights };
  md.push(`Sanity: agent (\`${head.variant.name}\`) and Python loop give the same label on ${agree}/${names.length} files; torch-with-ONNX-weights vs golden logits max |diff| ${py.goldenMaxAbsDiff === null ? 'n/a' : py.goldenMaxAbsDiff.toExponential(2)}. Files processed: ${r.variants.map((v) => `\`${v.variant.name}\` ${v.doneFiles} done / ${v.quarantined} quarantined`).join(', ')}.`);
  const json = {
    bench: 'e2e',
    command: 'npm run bench:e2e' + (process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''),
    date: new Date().toISOString(),
    seconds: round(r.seconds, 1),
    machine: { ...machine(), loadavgAtStart: r.loadAtStart },
    model: { id: r.manifest.id, version: r.manifest.version, input: r.manifest.input.shape, file: r.modelFile },
    data: {
      files: r.data.length,
      made: 'bench/e2e/make_ct.py: InVesalius Cranium.inv3 head CT (108 x 256 x 256 int16 HU), each axial slice flipped to display orientation, upsampled 2x in-plane (linear) to 512x512, written by pydicom as CT Image Storage, Explicit VR LE, 16-bit signed, stored = HU + 1024 with RescaleIntercept -1024, Window 40/400; copies differ in UIDs',
      ...r.made,
    },
    broker: { mosquitto: r.mosqVersion, port: r.port, loopback: true },
    steady: { files: r.steadyN, ratePerSec: r.rate },
    variants: r.variants.map((v) => ({ ...v, labelByName: undefined })),
    agreement,
    bare: r.bare,
    python: r.python.map((p) => ({ ...p, labels: undefined, labelCounts: countLabels(Object.values(p.labels)) })),
    targets,
  };
  return { json, markdown: md.join('\n') + '\n' };
}

function countLabels(labels: string[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const l of labels) c[l] = (c[l] ?? 0) + 1;
  return c;
}

main().catch((err: unknown) => {
  log((err as Error).stack ?? String(err));
  process.exit(1);
});
