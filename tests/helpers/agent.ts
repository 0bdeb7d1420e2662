/**
 * Runs the real agent (compiled CLI, `npm test` builds first) as a separate process, the way a
 * device runs it, with its own inbox/state folders and a generated config.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';

export const CLI = path.resolve('dist/agent/cli.js');

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
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const agent = new AgentProcess(proc, dirs);
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

  /** Sends a signal and waits for the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 30_000): Promise<number | null> {
    if (this.exitCode === null && this.signal === null) this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
    return this.exitCode;
  }

  kill(): Promise<number | null> {
    return this.stop('SIGKILL');
  }

  waitForExit(): Promise<void> {
    return this.exited;
  }
}
