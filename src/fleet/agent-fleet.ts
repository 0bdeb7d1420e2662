/**
 * The agent's fleet side in one place (issue 6), so agent/agent.ts only wires it: retained health, the
 * command router with the agent's own commands, remote config (state-dir overrides, live apply) and the
 * persistent ingest pause. The rollout (src/fleet/rollout.ts) registers `models` / `activate` /
 * `rollback` on `commands`.
 */
import type { Logger } from 'pino';
import type { LoadedConfig } from '../config/load.js';
import type { AgentConfig } from '../config/schema.js';
import type { MqttLink } from '../mqtt/link.js';
import type { PipelineLiveOptions } from '../pipeline/pipeline.js';
import type { Job, StateStore } from '../store/index.js';
import { registerAgentCommands } from './agent-commands.js';
import { CommandRouter } from './commands.js';
import { BrokerSettingsGuard, ConfigStore, needsRestart, settingPaths } from './config-store.js';
import { HealthReporter, healthModel, selectionNotes } from './health.js';
import { IngestControl } from './ingest-control.js';

/** Settings applied live, by what applies them. Every schema setting without `x-restart` must be here (tested). */
export const LIVE_SETTINGS: Readonly<Record<string, readonly ('pipeline' | 'watcher' | 'health' | 'read-at-use')[]>> = {
  configId: ['read-at-use'],
  'ingest.stabilityMs': ['watcher'],
  'ingest.pollIntervalMs': ['watcher'],
  'ingest.ignore': ['watcher'],
  'ingest.queueCapacity': ['pipeline', 'watcher'],
  'ingest.maxFileBytes': ['pipeline'],
  'ingest.afterPublish': ['pipeline'],
  'ingest.maxAttempts': ['pipeline'],
  'decode.framePolicy': ['pipeline'],
  'decode.maxFrames': ['pipeline'],
  'decode.preferFileWindow': ['pipeline'],
  'decode.windowing': ['pipeline'],
  'pipeline.concurrency': ['pipeline'],
  'privacy.allowUids': ['pipeline'],
  'shutdown.flushTimeoutMs': ['read-at-use'],
  'fleet.healthIntervalSec': ['health'],
};

/** Schema settings that are neither `x-restart` nor applied live (should be none). */
export function unhandledLiveSettings(): string[] {
  return settingPaths().filter((p) => !needsRestart(p) && !(p in LIVE_SETTINGS));
}

export interface AgentFleetOptions {
  /** The running config (mutated in place by live set-config). */
  config: AgentConfig;
  /** How it was loaded, and how to load it again with other overrides; absent: set-config is unavailable. */
  source?: { loaded: LoadedConfig; load(overrides: Record<string, unknown>): LoadedConfig } | undefined;
  link: MqttLink;
  store: StateStore;
  version: string;
  startedAt: number;
  /** The serving classifier (read defensively). */
  classifier(): unknown;
  pipeline(): { stats: { processed: number; failed: number; inMemory: number }; updateOptions(p: PipelineLiveOptions): void; requeue(hash: string, file: string): boolean } | undefined;
  /** Pipeline options derived from the running config (after a live change). */
  pipelineOptions(config: AgentConfig): PipelineLiveOptions;
  /** Replaces the inbox watcher with one built from the running config. */
  restartWatcher(): Promise<void>;
  /** Graceful stop, then exit 75 (restart command). */
  restart(reason: string): void;
  log: Logger;
}

export class AgentFleet {
  readonly ingest: IngestControl;
  readonly health: HealthReporter;
  readonly commands: CommandRouter;
  readonly configStore: ConfigStore | undefined;
  private modelKey = '';
  private modelTimer: NodeJS.Timeout | undefined;
  private quarantinedCache: { at: number; n: number } = { at: 0, n: 0 };
  private guard: BrokerSettingsGuard | undefined;

  constructor(private readonly o: AgentFleetOptions) {
    const c = o.config;
    this.ingest = new IngestControl(c.stateDir);
    this.health = new HealthReporter({
      intervalSec: c.fleet.healthIntervalSec,
      window: c.fleet.latencyWindow,
      startedAt: o.startedAt,
      log: o.log,
      publish: (p) => o.link.publishHealth(p),
      sources: {
        deviceId: c.deviceId,
        groups: c.fleet.groups,
        agentVersion: o.version,
        stateDir: c.stateDir,
        configId: () => this.configId(),
        model: () => healthModel(o.classifier()),
        notes: () => selectionNotes(o.classifier()),
        paused: () => this.ingest.paused,
        queueDepth: () => o.pipeline()?.stats.inMemory ?? 0,
        counts: () => {
          const s = o.pipeline()?.stats;
          return { processed: s?.processed ?? 0, failed: s?.failed ?? 0, quarantined: this.quarantined() };
        },
      },
    });
    this.commands = new CommandRouter({ deviceId: c.deviceId, baseTopic: c.mqtt.baseTopic, groups: c.fleet.groups, log: o.log, audit: o.store.audit });
    const source = o.source;
    if (source) {
      this.configStore = new ConfigStore({ running: c, loaded: source.loaded, load: (ov) => source.load(ov), apply: (paths) => this.applyLive(paths), log: o.log });
    }
    o.link.on('connected', () => this.health.changed('connected'));
    // Errors the agent reports itself (model rejected, runtime failed, state store full...) are health's last error too.
    o.link.on('errorReport', (e) => {
      const code = typeof e.code === 'string' ? e.code : 'error';
      this.health.recordError(code, typeof e.message === 'string' ? e.message : code);
    });
  }

  /** Registers the agent's commands, subscribes (unless fleet.commands.enabled is false) and starts health. */
  start(): void {
    const o = this.o;
    const store = this.configStore;
    registerAgentCommands(this.commands, {
      version: o.version,
      startedAt: o.startedAt,
      model: () => {
        const m = healthModel(o.classifier());
        return m ? { id: m.id, version: m.version } : null;
      },
      config: store ?? unavailableConfigStore(),
      ingest: this.ingest,
      inbox: o.config.inbox,
      afterPublish: () => o.config.ingest.afterPublish,
      job: (hash) => o.store.journal.get(hash),
      requeue: (hash, file) => o.pipeline()?.requeue(hash, file) ?? false,
      restart: (reason) => o.restart(reason),
      changed: (reason) => this.health.changed(reason),
    });
    if (o.config.fleet.commands.enabled) this.commands.start(o.link);
    else o.log.info('fleet commands disabled (fleet.commands.enabled: false)');
    this.health.start();
    if (o.source) {
      const link = o.link;
      this.guard = new BrokerSettingsGuard({
        stateDir: o.config.stateDir,
        overrides: o.source.loaded.overrides,
        confirmConnectSec: o.config.fleet.confirmConnectSec,
        connected: () => (link.connected ? Promise.resolve() : new Promise((resolve) => link.once('connected', () => resolve()))),
        publishError: (report) => link.publishError({ deviceId: o.config.deviceId, ...report }),
        restart: (reason) => o.restart(reason),
        log: o.log,
      });
      this.guard.start();
    }
    // Any model swap (reload, rollout, runtime fallback) changes what health shows: publish at once.
    this.modelKey = this.currentModelKey();
    this.modelTimer = setInterval(() => {
      const key = this.currentModelKey();
      if (key !== this.modelKey) {
        this.modelKey = key;
        this.health.changed('model');
      }
    }, 1000);
    this.modelTimer.unref();
  }

  stop(): void {
    this.guard?.stop();
    this.commands.stop();
    this.health.stop();
    if (this.modelTimer) clearInterval(this.modelTimer);
  }

  /** Pipeline event: every result of a job acknowledged by the broker. */
  onPublished(job: Job): void {
    this.health.recordLatency(Date.now() - job.createdAt);
  }

  /** Pipeline event: a capture was quarantined. */
  onFailure(code: string, job: Job): void {
    this.health.recordError(code, job.error ?? code);
  }

  /** Never throws (it runs on a timer: a throw there would be an uncaught exception). */
  private currentModelKey(): string {
    try {
      const c = this.o.classifier();
      return JSON.stringify([healthModel(c), selectionNotes(c)]);
    } catch {
      return this.modelKey;
    }
  }

  private configId(): string {
    return this.o.config.configId;
  }

  /** Captures quarantined on this device now (journal, cached for a few seconds). */
  private quarantined(): number {
    const now = Date.now();
    if (now - this.quarantinedCache.at > 5000) {
      this.quarantinedCache = { at: now, n: this.o.store.journal.counts().failed };
    }
    return this.quarantinedCache.n;
  }

  /** Applies settings whose new values are already in the running config; returns those it could not. */
  private async applyLive(paths: string[]): Promise<string[]> {
    const o = this.o;
    const by = new Set<string>();
    const notLive: string[] = [];
    for (const p of paths) {
      const how = LIVE_SETTINGS[p];
      if (!how) notLive.push(p);
      else for (const h of how) by.add(h);
    }
    if (by.has('pipeline')) o.pipeline()?.updateOptions(o.pipelineOptions(o.config));
    if (by.has('watcher')) await o.restartWatcher();
    if (by.has('health')) this.health.setIntervalSec(o.config.fleet.healthIntervalSec);
    return notLive;
  }
}

function unavailableConfigStore(): ConfigStore {
  const fail = (): never => {
    throw new Error('remote config is not available: this agent was started without a config source');
  };
  return { get: fail, set: fail } as unknown as ConfigStore;
}
