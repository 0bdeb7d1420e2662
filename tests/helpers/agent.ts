/**
 * Runs the real agent (compiled CLI, `npm test` builds first) as a separate process, the way a
 * device runs it, with its own inbox/state folders and a generated config.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { parse, stringify } from 'yaml';
import { PUBLISH_TAP_ENV } from '../../src/mqtt/publish-tap.js';
import { findPhi, type PhiHit } from './phi.js';

export const CLI = path.resolve('dist/agent/cli.js');

/**
 * `edge-agent infer --config FILE FILES...` (in process: no worker, no fault hooks), the reference the
 * supervised agent's results are compared with: its exit status, stderr, and the NDJSON results by input file name.
 */
export function inferByFileName<T extends { input: { fileName: string } }>(configFile: string, files: string[]): { status: number | null; stderr: string; results: Map<string, T> } {
  const r = spawnSync(process.execPath, [CLI, 'infer', '--config', configFile, ...files], { encoding: 'utf8' });
  const lines = r.stdout.trim() === '' ? [] : r.stdout.trim().split('\n');
  const results = new Map(lines.map((l) => JSON.parse(l) as T).map((x) => [x.input.fileName, x] as const));
  return { status: r.status, stderr: r.stderr, results };
}

export interface AgentDirs {
  root: string;
  inbox: string;
  stateDir: string;
  doneDir: string;
  quarantineDir: string;
  configFile: string;
}

export function agentDirs(config: Record<string, unknown> = {}): AgentDirs {
  const root = mkdtempSync(path.join(tmpdir(), 'agent-'));
  const dirs = {
    root,
    inbox: path.join(root, 'inbox'),
    stateDir: path.join(root, 'state'),
    doneDir: path.join(root, 'done'),
    quarantineDir: path.join(root, 'quarantine'),
    configFile: path.join(root, 'config.yaml'),
  };
  mkdirSync(dirs.inbox, { recursive: true });
  writeConfig(dirs, config);
  return dirs;
}

export function writeConfig(dirs: AgentDirs, config: Record<string, unknown>): void {
  const base = {
    inbox: dirs.inbox,
    stateDir: dirs.stateDir,
    doneDir: dirs.doneDir,
    quarantineDir: dirs.quarantineDir,
    ingest: { stabilityMs: 200, pollIntervalMs: 50 },
    model: { warmupRuns: 1 },
    logging: { level: 'info' },
    shutdown: { flushTimeoutMs: 3000 },
  };
  writeFileSync(dirs.configFile, stringify(deepMerge(base, config)));
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const av = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && av && typeof av === 'object' && !Array.isArray(av)
        ? deepMerge(av as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

export interface LogLine {
  level: number;
  msg: string;
  component?: string;
  [k: string]: unknown;
}

/** Where an agent started by AgentProcess records everything it publishes (the test-only publish tap). */
export function publishTapFile(dirs: AgentDirs): string {
  return path.join(dirs.root, 'published.ndjson');
}

/** privacy.allowUids in the agent's config file as it is now (raw UIDs may then be published). */
function allowsUids(dirs: AgentDirs): boolean {
  try {
    const c = parse(readFileSync(dirs.configFile, 'utf8')) as { privacy?: { allowUids?: unknown } } | null;
    return c?.privacy?.allowUids === true;
  } catch {
    return false;
  }
}

/** Every agent started in this test file, for the suite-wide PHI check. */
const started = new Set<AgentProcess>();

export class AgentProcess {
  readonly logs: LogLine[] = [];
  readonly stderr: string[] = [];
  exitCode: number | null = null;
  signal: NodeJS.Signals | null = null;
  private readonly exited: Promise<void>;

  private constructor(
    readonly proc: ChildProcess,
    readonly dirs: AgentDirs,
  ) {
    let buf = '';
    proc.stdout!.setEncoding('utf8');
    proc.stdout!.on('data', (chunk: string) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          this.logs.push(JSON.parse(line) as LogLine);
        } catch {
          this.logs.push({ level: 30, msg: line });
        }
      }
    });
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (chunk: string) => this.stderr.push(chunk));
    this.exited = new Promise((resolve) =>
      proc.on('exit', (code, signal) => {
        this.exitCode = code;
        this.signal = signal;
        resolve();
      }),
    );
  }

  /** Starts the agent and waits until it logged 'agent started' (model warm, watcher up). */
  static async start(dirs: AgentDirs, args: string[] = [], env: NodeJS.ProcessEnv = {}, waitForStart = true): Promise<AgentProcess> {
    const proc = spawn(process.execPath, [CLI, 'run', '--config', dirs.configFile, ...args], {
      env: { ...process.env, [PUBLISH_TAP_ENV]: publishTapFile(dirs), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const agent = new AgentProcess(proc, dirs);
    started.add(agent);
    if (waitForStart) await agent.waitForLog(/^agent started$/, 60_000);
    return agent;
  }

  async waitForLog(re: RegExp, timeoutMs = 20_000): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.logs.find((l) => re.test(l.msg));
      if (hit) return hit;
      if (this.exitCode !== null || this.signal !== null) {
        throw new Error(`agent exited (${this.exitCode ?? this.signal}) before logging ${re}: ${this.stderr.join('')} ${this.tail()}`);
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for log ${re}; last lines:\n${this.tail()}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  tail(n = 15): string {
    return this.logs
      .slice(-n)
      .map((l) => JSON.stringify(l))
      .join('\n');
  }

  /**
   * Sends a signal and waits for the exit code. Then checks that nothing the agent published or logged
   * carries a patient identifier from the fixtures (assertNoPhi), and throws if it does.
   */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 30_000): Promise<number | null> {
    if (this.exitCode === null && this.signal === null) this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
    this.assertNoPhi();
    return this.exitCode;
  }

  /** Set once a PHI finding was thrown, so the file-level check does not report it again. */
  private phiReported = false;

  /**
   * The fixtures' patient identifiers found in what this agent published (the publish tap, every topic,
   * the will included) and in its stdout/stderr; UIDs do not count when its config has privacy.allowUids.
   */
  phiFindings(): { where: string; hit: PhiHit }[] {
    const allowUids = allowsUids(this.dirs);
    const out: { where: string; hit: PhiHit }[] = [];
    const tap = publishTapFile(this.dirs);
    const haystacks: { where: string; lines: string[] }[] = [
      { where: 'agent log', lines: this.logs.map((l) => JSON.stringify(l)) },
      { where: 'agent stderr', lines: this.stderr.join('').split('\n') },
    ];
    if (existsSync(tap)) haystacks.unshift({ where: 'published', lines: readFileSync(tap, 'utf8').split('\n') });
    for (const h of haystacks) {
      // Cheap on the whole text first; line by line only to say where.
      if (findPhi(h.lines.join('\n'), { allowUids }).length === 0) continue;
      for (const line of h.lines) {
        const hits = findPhi(line, { allowUids });
        if (hits.length === 0) continue;
        let where = h.where;
        if (h.where === 'published') {
          const m = JSON.parse(line) as { topic: string; will?: boolean };
          where = `published on ${m.topic}${m.will ? ' (last will)' : ''}`;
        } else if (h.where === 'agent log') {
          where = `agent log "${(JSON.parse(line) as LogLine).msg}"`;
        }
        for (const hit of hits) out.push({ where, hit });
      }
    }
    return out;
  }

  /** Throws an assertion error naming where and which kind of identifier leaked (values masked). */
  assertNoPhi(): void {
    const found = this.phiFindings();
    if (found.length === 0) return;
    this.phiReported = true;
    const lines = [...new Set(found.map((f) => `  ${f.where}: ${f.hit.kind} ${f.hit.masked}`))];
    throw new Error(`PHI leak: agent in ${this.dirs.root} published or logged patient identifiers from the test fixtures:\n${lines.slice(0, 30).join('\n')}${lines.length > 30 ? `\n  ... ${lines.length - 30} more` : ''}`);
  }

  /** assertNoPhi() for every agent started in this test file (afterAll-friendly; also runs by itself). */
  static assertNoPhi(): void {
    const errors: string[] = [];
    for (const a of started) {
      if (a.phiReported) continue;
      try {
        a.assertNoPhi();
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    if (errors.length) throw new Error(errors.join('\n'));
  }

  kill(): Promise<number | null> {
    return this.stop('SIGKILL');
  }

  waitForExit(): Promise<void> {
    return this.exited;
  }
}

// Suite-wide: every test file that starts agents through this helper also gets the PHI check after all
// its tests, so agents a test never stopped are covered too (only under vitest: bench/ reuses this file).
if (process.env.VITEST) afterAll(() => AgentProcess.assertNoPhi());
