/**
 * Remote configuration (fleet `get-config` / `set-config`, issue 6).
 *
 * `set-config {set?, unset?, dryRun?}` changes this device's state-dir overrides
 * (`<stateDir>/config-overrides.json`, read by `edge-agent run` at every start; precedence in
 * src/config/load.ts: defaults < config file < overrides < env < CLI flags):
 *
 *  1. the new overrides are the old ones with `set` merged in and the `unset` paths removed;
 *  2. the whole config is loaded again with them, by the same loader and checks as a start (schema,
 *     referenced files), so what is accepted now is what the next start accepts; any problem refuses the
 *     request with the full list and changes nothing;
 *  3. settings that changed are applied live when the schema allows it (no `x-restart`), in the running
 *     agent, before anything is written; a live apply that fails is undone and nothing is written;
 *  4. the overrides are written atomically (temp file, fsync, rename, fsync of the dir): a power cut
 *     leaves the old file or the new one, never a torn one;
 *  5. the answer lists `applied`, `restartRequired` (stored, effective at the next start: `restart`
 *     command or service restart) and `pinned` (set, but env/CLI flags win over it on this device).
 *
 * Never settable remotely: `stateDir` (the overrides live there) and `mqtt.password` (secrets come from
 * files; an override file is not a secret store).
 *
 * Broker settings are guarded: a change to `mqtt.*` or `deviceId` could cut the agent off from the only
 * channel that can undo it. Such a change leaves `<stateDir>/config-overrides.unconfirmed.json` holding
 * the overrides the agent last connected with. The next start that runs with the new overrides must
 * connect within `fleet.confirmConnectSec`; then the marker is deleted (confirmed). Otherwise the previous
 * overrides are written back, the agent restarts (exit 75), and once connected it publishes a
 * `config-reverted` error naming the settings (BrokerSettingsGuard).
 */
import { writeFileAtomic as writeAtomic } from '../store/atomic-file.js';
import { readFileSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { ConfigError, OVERRIDES_FILE, leafPaths, mergeDeep, redactConfig, type LoadedConfig } from '../config/load.js';
import { configSchema, type AgentConfig } from '../config/schema.js';
import { CommandError } from './commands.js';

export interface SetConfigRequest {
  set?: Record<string, unknown>;
  /** Dotted paths whose override is removed (the file/default value applies again). */
  unset?: string[];
  /** Validate and report what would change; change nothing. */
  dryRun?: boolean;
}

const PATH = '^[A-Za-z][A-Za-z0-9]*(\\.[A-Za-z0-9_-]+)*$';

/** JSON Schema of the `set-config` request data (the config itself is checked by the config schema). */
export const setConfigSchema = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    set: { type: 'object' },
    unset: { type: 'array', maxItems: 100, uniqueItems: true, items: { type: 'string', maxLength: 200, pattern: PATH } },
    dryRun: { type: 'boolean' },
  },
} as const;

/** Settings a remote request may never set. */
export const NOT_REMOTE = ['stateDir', 'mqtt.password'] as const;

export interface SetConfigOutcome {
  dryRun: boolean;
  /** Settings this request changed that now run with their new value. */
  applied: string[];
  /** Settings this request changed that take effect at the next start. */
  restartRequired: string[];
  /** Every setting stored but not yet running (this and earlier requests): what a restart would change. */
  pendingRestart: string[];
  /** Settings the request sets that env variables or CLI flags override on this device. */
  pinned: string[];
  /** The overrides now stored (after this request). */
  overrides: Record<string, unknown>;
  overridesFile: string;
}

interface SchemaNode {
  properties?: Record<string, SchemaNode>;
  'x-restart'?: boolean;
}

/** Every setting of the schema (its leaves), as dotted paths. */
export function settingPaths(): string[] {
  const out: string[] = [];
  const walk = (node: SchemaNode, at: string[]): void => {
    if (node.properties && Object.keys(node.properties).length > 0) {
      for (const [k, child] of Object.entries(node.properties)) walk(child, [...at, k]);
      return;
    }
    out.push(at.join('.'));
  };
  walk(configSchema as unknown as SchemaNode, []);
  return out;
}

/** True when the setting at `dotted` (or anything above it) is marked `x-restart`. */
export function needsRestart(dotted: string): boolean {
  let node: SchemaNode | undefined = configSchema as unknown as SchemaNode;
  for (const key of dotted.split('.')) {
    if (node?.['x-restart'] === true) return true;
    node = node?.properties?.[key];
    if (node === undefined) return false;
  }
  return node?.['x-restart'] === true;
}

function get(obj: unknown, dotted: string): unknown {
  let cur: unknown = obj;
  for (const k of dotted.split('.')) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}

function set(obj: Record<string, unknown>, dotted: string, value: unknown): void {
  const keys = dotted.split('.');
  let cur = obj;
  for (const k of keys.slice(0, -1)) {
    const next = cur[k];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) cur[k] = {};
    cur = cur[k] as Record<string, unknown>;
  }
  cur[keys[keys.length - 1]!] = structuredClone(value);
}

/** Removes a dotted path and the objects it leaves empty. */
function remove(obj: Record<string, unknown>, keys: string[]): void {
  const [head, ...rest] = keys;
  if (head === undefined || !(head in obj)) return;
  if (rest.length === 0) {
    delete obj[head];
    return;
  }
  const child = obj[head];
  if (typeof child !== 'object' || child === null || Array.isArray(child)) return;
  remove(child as Record<string, unknown>, rest);
  if (Object.keys(child).length === 0) delete obj[head];
}

/** Settings whose value differs between two configs. */
export function changedSettings(a: AgentConfig, b: AgentConfig): string[] {
  return settingPaths().filter((p) => JSON.stringify(get(a, p)) !== JSON.stringify(get(b, p)));
}

/** Config overrides may carry secrets: new files are 0600. */
export function writeFileAtomic(file: string, data: string): Promise<void> {
  return writeAtomic(file, data, 0o600);
}

export interface ConfigStoreOptions {
  /** The config the agent runs (mutated in place for settings applied live). */
  running: AgentConfig;
  /** The load result the agent started with. */
  loaded: LoadedConfig;
  /** Loads the whole config again with these overrides (src/config/load.ts; throws ConfigError). */
  load(overrides: Record<string, unknown>): LoadedConfig;
  /**
   * Applies settings live in the running agent (after `running` holds their new values). Resolves with
   * the settings it could not apply (they are then reported restartRequired); throws when applying failed.
   */
  apply(paths: string[]): Promise<string[]>;
  log: Logger;
}

export class ConfigStore {
  private overrides: Record<string, unknown>;
  /** The config as stored (running values + those waiting for a restart). */
  private stored: AgentConfig;
  private readonly file: string;
  private pinned: string[];

  constructor(private readonly opts: ConfigStoreOptions) {
    this.overrides = structuredClone(opts.loaded.overrides);
    this.stored = structuredClone(opts.loaded.config);
    this.file = opts.loaded.overridesFile ?? path.join(opts.running.stateDir, OVERRIDES_FILE);
    this.pinned = opts.loaded.pinned;
  }

  /** `get-config`: the running config (secrets redacted), the stored overrides and what waits for a restart. */
  get(): { config: AgentConfig; overrides: Record<string, unknown>; overridesFile: string; pendingRestart: string[]; pinned: string[] } {
    const overrides = structuredClone(this.overrides);
    if (get(overrides, 'mqtt.password') !== undefined) set(overrides, 'mqtt.password', '***');
    return {
      config: redactConfig(this.opts.running),
      overrides,
      overridesFile: this.file,
      pendingRestart: changedSettings(this.opts.running, this.stored),
      pinned: [...this.pinned],
    };
  }

  async set(req: SetConfigRequest): Promise<SetConfigOutcome> {
    if (req.set === undefined && req.unset === undefined) throw new CommandError('set-config needs `set` (settings to change) and/or `unset` (setting paths to reset)');
    const setPaths = leafPaths(req.set ?? {}).map((p) => p.join('.'));
    const forbidden = [...setPaths, ...(req.unset ?? [])].filter((p) => NOT_REMOTE.some((n) => p === n || p.startsWith(`${n}.`)));
    if (forbidden.length > 0) {
      throw new CommandError(`set-config refused: ${forbidden.join(', ')} cannot be changed remotely`, { problems: forbidden.map((p) => `${p}: cannot be changed remotely`) });
    }
    let next = mergeDeep(this.overrides, req.set ?? {});
    next = structuredClone(next);
    for (const p of req.unset ?? []) remove(next, p.split('.'));

    let candidate: LoadedConfig;
    try {
      candidate = this.opts.load(next);
    } catch (err) {
      if (err instanceof ConfigError) {
        throw new CommandError(`set-config refused, nothing changed: ${err.problems.join('; ')}`, { problems: err.problems });
      }
      throw err;
    }
    const changed = changedSettings(this.stored, candidate.config);
    const live = changed.filter((p) => !needsRestart(p) && JSON.stringify(get(this.opts.running, p)) !== JSON.stringify(get(candidate.config, p)));
    let restartRequired = changed.filter((p) => needsRestart(p));
    const pinned = setPaths.filter((p) => this.pinned.some((q) => p === q || p.startsWith(`${q}.`) || q.startsWith(`${p}.`)));
    const outcome = (applied: string[], pending: AgentConfig): SetConfigOutcome => ({
      dryRun: req.dryRun === true,
      applied,
      restartRequired,
      pendingRestart: changedSettings(this.opts.running, pending),
      pinned,
      overrides: next,
      overridesFile: this.file,
    });
    if (req.dryRun === true) return outcome([], candidate.config);

    // Live first (undone on failure), then the file: a refused live change leaves nothing behind.
    const before = new Map(live.map((p) => [p, structuredClone(get(this.opts.running, p))]));
    for (const p of live) set(this.opts.running as unknown as Record<string, unknown>, p, get(candidate.config, p));
    let notLive: string[] = [];
    try {
      notLive = live.length > 0 ? await this.opts.apply(live) : [];
      // What the agent could not apply keeps its running value and waits for the restart.
      for (const p of notLive) set(this.opts.running as unknown as Record<string, unknown>, p, before.get(p));
      await writeFileAtomic(this.file, JSON.stringify(next, null, 2) + '\n');
    } catch (err) {
      await this.undo(before);
      throw new CommandError(`set-config failed, nothing changed: ${(err as Error).message}`);
    }
    restartRequired = [...restartRequired, ...notLive];
    const risky = restartRequired.filter(isBrokerSetting);
    if (risky.length > 0) {
      try {
        await markUnconfirmed(this.opts.running.stateDir, this.opts.loaded.overrides, next, risky);
      } catch (err) {
        this.opts.log.error({ err }, 'could not write the broker-settings guard; the change is stored without it');
      }
    }
    this.overrides = next;
    this.stored = candidate.config;
    this.opts.log.info({ applied: live.filter((p) => !notLive.includes(p)), restartRequired, file: this.file }, 'config overrides changed (set-config)');
    return outcome(
      live.filter((p) => !notLive.includes(p)),
      candidate.config,
    );
  }

  private async undo(before: Map<string, unknown>): Promise<void> {
    const paths = [...before.keys()];
    for (const [p, v] of before) set(this.opts.running as unknown as Record<string, unknown>, p, v);
    try {
      if (paths.length > 0) await this.opts.apply(paths);
    } catch (err) {
      this.opts.log.error({ err, paths }, 'could not restore settings after a failed set-config');
    }
  }
}

/** Settings that decide whether the agent can reach the broker (and so be told to undo a change). */
export function isBrokerSetting(dotted: string): boolean {
  return dotted === 'deviceId' || dotted.startsWith('mqtt.');
}

export const UNCONFIRMED_FILE = 'config-overrides.unconfirmed.json';
export const REVERTED_FILE = 'config-overrides.reverted.json';

interface Unconfirmed {
  /** The overrides the agent last ran (and connected) with. */
  previous: Record<string, unknown>;
  /** The overrides that must prove they connect. */
  next: Record<string, unknown>;
  paths: string[];
  at: string;
}

function readJson<T>(file: string): T | null {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

async function markUnconfirmed(stateDir: string, running: Record<string, unknown>, next: Record<string, unknown>, paths: string[]): Promise<void> {
  const file = path.join(stateDir, UNCONFIRMED_FILE);
  // Several changes before a restart: the fallback stays what the agent last connected with.
  const earlier = readJson<Unconfirmed>(file);
  const record: Unconfirmed = {
    previous: earlier?.previous ?? running,
    next,
    paths: [...new Set([...(earlier?.paths ?? []), ...paths])],
    at: new Date().toISOString(),
  };
  await writeFileAtomic(file, JSON.stringify(record, null, 2) + '\n');
}

export interface GuardHost {
  stateDir: string;
  /** The overrides this run started with. */
  overrides: Record<string, unknown>;
  confirmConnectSec: number;
  /** Resolves on the next (or current) broker connection. */
  connected(): Promise<void>;
  publishError(report: Record<string, unknown>): void;
  restart(reason: string): void;
  log: Logger;
}

/** Confirms or reverts broker settings changed by set-config (see the header). */
export class BrokerSettingsGuard {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly h: GuardHost) {}

  start(): void {
    const file = path.join(this.h.stateDir, UNCONFIRMED_FILE);
    const reverted = readJson<{ paths: string[]; at: string; reason: string }>(path.join(this.h.stateDir, REVERTED_FILE));
    if (reverted) {
      void this.h.connected().then(async () => {
        if (this.stopped) return;
        this.h.publishError({ code: 'config-reverted', message: reverted.reason, settings: reverted.paths, stage: 'config', createdAt: new Date().toISOString() });
        await unlink(path.join(this.h.stateDir, REVERTED_FILE)).catch(() => undefined);
      });
    }
    const pending = readJson<Unconfirmed>(file);
    // Only a run that uses the new overrides can confirm them (not the run that stored them).
    if (!pending || JSON.stringify(pending.next) !== JSON.stringify(this.h.overrides)) return;
    this.h.log.warn({ settings: pending.paths, withinSec: this.h.confirmConnectSec }, 'broker settings changed by set-config: they must connect or they are reverted');
    this.timer = setTimeout(() => void this.revert(pending), this.h.confirmConnectSec * 1000);
    void this.h.connected().then(async () => {
      if (this.stopped || this.timer === undefined) return;
      clearTimeout(this.timer);
      this.timer = undefined;
      await unlink(file).catch(() => undefined);
      this.h.log.info({ settings: pending.paths }, 'broker settings changed by set-config confirmed: connected');
    });
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private async revert(pending: Unconfirmed): Promise<void> {
    this.timer = undefined;
    if (this.stopped) return;
    const reason = `broker settings set remotely (${pending.paths.join(', ')}) did not connect within ${this.h.confirmConnectSec} s; reverted to the previous ones`;
    this.h.log.error({ settings: pending.paths }, reason);
    try {
      await writeFileAtomic(path.join(this.h.stateDir, OVERRIDES_FILE), JSON.stringify(pending.previous, null, 2) + '\n');
      await writeFileAtomic(path.join(this.h.stateDir, REVERTED_FILE), JSON.stringify({ paths: pending.paths, at: new Date().toISOString(), reason }) + '\n');
      await unlink(path.join(this.h.stateDir, UNCONFIRMED_FILE)).catch(() => undefined);
    } catch (err) {
      this.h.log.error({ err }, 'could not revert the broker settings');
      return;
    }
    this.h.restart(reason);
  }
}
