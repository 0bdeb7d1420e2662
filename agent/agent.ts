/**
 * Composition root of the daemon: builds the parts from the config and starts them in order; stops
 * them in the reverse order, once. Wiring only; behaviour lives in src/.
 *
 * Start: state store -> model (warm-up) -> broker link (+ embedded broker) -> pipeline recovery ->
 * inbox watcher -> `online`. Stop: intake -> running jobs -> outbox flush -> `offline` -> store -> logs.
 */
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { AgentConfig } from '../src/config/schema.js';
import { defaultDecodeOptions } from '../src/decode/index.js';
import { InboxWatcher } from '../src/ingest/watcher.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../src/mqtt/broker.js';
import { MqttLink, type MqttLinkOptions } from '../src/mqtt/link.js';
import { deviceTopics } from '../src/mqtt/topics.js';
import { BundleError } from '../src/models/bundle.js';
import type { Classifier } from '../src/pipeline/classifier.js';
import { ServingModel, type FallbackEvent } from '../src/pipeline/serving.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { StateStore } from '../src/store/index.js';
import type { IsolationOptions } from '../src/runtimes/worker/supervisor.js';
import type { AgentLogger } from '../src/log.js';
import { AGENT_VERSION } from './version.js';
import { rolloutTrustedKeys, type LoadedConfig } from '../src/config/load.js';
import { AgentFleet } from '../src/fleet/agent-fleet.js';
import { RESTART_EXIT_CODE } from '../src/fleet/agent-commands.js';
import { ModelStore, refString } from '../src/fleet/model-store.js';
import { RolloutManager, registerRolloutCommands } from '../src/fleet/rollout.js';

export function classifierOptions(config: AgentConfig) {
  return {
    runtime: config.model.runtime,
    precision: config.model.precision,
    optimiseFor: config.model.optimiseFor,
    stateDir: config.stateDir,
    providers: config.model.providers,
    intraOpThreads: config.model.intraOpThreads,
    interOpThreads: config.model.interOpThreads,
    graphOptimization: config.model.graphOptimization,
    warmupRuns: config.model.warmupRuns,
    trustedKeys: config.model.trustedKeys,
    allowUnsigned: config.model.allowUnsigned,
  };
}

export function decodeOptions(config: AgentConfig) {
  return {
    ...defaultDecodeOptions(),
    framePolicy: config.decode.framePolicy,
    maxFrames: config.decode.maxFrames,
    preferFileWindow: config.decode.preferFileWindow,
    windowByModality: config.decode.windowing,
    maxFileBytes: config.ingest.maxFileBytes,
  };
}

export type ReloadOutcome = { ok: true; model: Classifier['info'] } | { ok: false; error: string; reason?: string };

export class Agent {
  private store: StateStore | undefined;
  private classifier: Classifier | undefined;
  private broker: EmbeddedBroker | undefined;
  private link: MqttLink | undefined;
  private pipeline: Pipeline | undefined;
  private watcher: InboxWatcher | undefined;
  private stopping: Promise<void> | undefined;
  private reloading: Promise<ReloadOutcome> | undefined;
  private readonly log: Logger;
  private fleet: AgentFleet | undefined;
  /** Installed model versions (<stateDir>/models) and the rollout that fills it (src/fleet/). */
  private models: ModelStore | undefined;
  private rollout: RolloutManager | undefined;
  /** Bundle directory of the serving model: the store's active version, else config.model.bundle. */
  private modelDir: string;
  private readonly startedAt = Date.now();
  /** Set by the CLI: the `restart` command asks for a graceful stop and exit RESTART_EXIT_CODE (75). */
  onRestartRequested: ((reason: string, exitCode: number) => void) | undefined;

  constructor(
    readonly config: AgentConfig,
    private readonly logger: AgentLogger,
    /** How the config was loaded (fleet set-config loads it again with new overrides); absent: no set-config. */
    private readonly source?: { loaded: LoadedConfig; load(overrides: Record<string, unknown>): LoadedConfig },
  ) {
    this.log = logger.component('agent');
    this.modelDir = config.model.bundle;
  }

  get mqttUrl(): string | undefined {
    return this.broker?.url ?? (this.config.mqtt.url || undefined);
  }

  async start(): Promise<void> {
    const c = this.config;
    for (const dir of [c.inbox, c.stateDir, c.doneDir, c.quarantineDir]) await mkdir(dir, { recursive: true });
    this.store = StateStore.open(c.stateDir);

    this.models = await new ModelStore(path.join(c.stateDir, 'models'), { keep: c.fleet.keepVersions }).open();
    const classifier = await this.loadServing(this.models);
    this.classifier = classifier;
    this.logModel(classifier);
    // A bundle swapped while the agent was down is a model change too: audit it on the first start that serves it.
    const audited = this.store.audit.lastModel();
    if (audited?.sha256 !== classifier.info.sha256) {
      this.store.audit.modelChange({ from: audited, to: classifier.info, reason: 'start', actor: 'operator' });
    }

    let url = c.mqtt.url;
    let protocolVersion: 4 | 5 = 5;
    if (!url) {
      this.broker = await startEmbeddedBroker({ host: c.mqtt.embedded.host, port: c.mqtt.embedded.port });
      url = this.broker.url;
      protocolVersion = this.broker.protocolVersion;
      this.log.info({ url }, 'no broker configured: embedded MQTT broker started');
    }
    const linkOpts: MqttLinkOptions = {
      url,
      deviceId: c.deviceId,
      baseTopic: c.mqtt.baseTopic,
      clientId: c.mqtt.clientId,
      keepaliveSec: c.mqtt.keepaliveSec,
      reconnectPeriodMs: c.mqtt.reconnectPeriodMs,
      connectTimeoutMs: c.mqtt.connectTimeoutMs,
      protocolVersion,
      logger: this.logger.component('mqtt'),
    };
    if (c.mqtt.username) linkOpts.username = c.mqtt.username;
    if (c.mqtt.password) linkOpts.password = c.mqtt.password;
    if (c.mqtt.tls.caFile || c.mqtt.tls.certFile || !c.mqtt.tls.rejectUnauthorized) {
      linkOpts.tls = { rejectUnauthorized: c.mqtt.tls.rejectUnauthorized };
      if (c.mqtt.tls.caFile) linkOpts.tls.ca = await readFile(c.mqtt.tls.caFile);
      if (c.mqtt.tls.certFile) linkOpts.tls.cert = await readFile(c.mqtt.tls.certFile);
      if (c.mqtt.tls.keyFile) linkOpts.tls.key = await readFile(c.mqtt.tls.keyFile);
    }
    const link = new MqttLink(linkOpts);
    this.link = link;
    link.on('connected', (e) => this.log.info({ reconnect: e.reconnect }, 'connected to MQTT broker'));
    link.on('disconnected', (e) => {
      if (this.stopping) return; // our own close at shutdown
      this.log.warn({ reason: e.reason }, 'disconnected from MQTT broker; results wait in the outbox');
    });
    link.on('linkError', (err) => this.log.error({ kind: err.kind, err: err.message }, 'MQTT connection problem'));
    link.attachOutbox(this.store.outbox, { window: c.mqtt.inflightWindow });
    link.start();
    const fleet = new AgentFleet({
      config: c,
      source: this.source,
      link,
      store: this.store,
      version: AGENT_VERSION,
      startedAt: this.startedAt,
      classifier: () => this.classifier,
      pipeline: () => this.pipeline,
      pipelineOptions: (cfg) => this.pipelineLiveOptions(cfg),
      restartWatcher: () => this.restartWatcher(),
      restart: (reason) => this.onRestartRequested?.(reason, RESTART_EXIT_CODE),
      log: this.logger.component('fleet'),
    });
    this.fleet = fleet;

    const topics = deviceTopics(c.mqtt.baseTopic, c.deviceId);
    this.pipeline = new Pipeline(
      {
        deviceId: c.deviceId,
        inbox: c.inbox,
        doneDir: c.doneDir,
        quarantineDir: c.quarantineDir,
        ...this.pipelineLiveOptions(c),
        topics: { result: topics.result, error: topics.error },
      },
      this.store,
      this.classifier,
      this.logger.component('pipeline'),
      {
        onOutbox: () => link.kick(),
        // The pipeline pauses intake and logs; the fleet hears it once per episode on `error`.
        onStoreFull: (err) =>
          link.publishError({
            deviceId: c.deviceId,
            code: 'state-store-full',
            message: `state store is full (${err.message}): intake paused, captures wait in the inbox; it resumes by itself when space returns`,
            stage: 'store',
            createdAt: new Date().toISOString(),
          }),
        // A commanded pause (fleet `pause`, persistent) outlasts backpressure.
        onRoom: () => (fleet.ingest.paused ? undefined : this.watcher?.resume()),
        onPublished: (job) => fleet.onPublished(job),
        onFailure: (code, job) => {
          fleet.onFailure(code, job);
          this.rollout?.onFailure(code);
        },
        onClassified: (e) => this.rollout?.onClassified(e),
      },
    );
    await this.pipeline.recover();
    const rollout = await this.startRollout(link, fleet, this.models);

    this.watcher = this.createWatcher(this.pipeline);
    fleet.ingest.attach(this.watcher);
    if (fleet.ingest.paused) this.log.warn({ pause: fleet.ingest.state }, 'intake paused by a fleet command; `resume` lifts it');
    await this.watcher.start();
    // Commands subscribed before `online` goes out: whoever sees the agent online can command it.
    fleet.start();
    await link.online({ version: AGENT_VERSION, model: this.classifier.info });
    await rollout.start();
    this.log.info(
      { deviceId: c.deviceId, inbox: c.inbox, mqtt: this.mqttUrl, topics: { result: topics.result, state: topics.state } },
      'agent started',
    );
  }

  private createWatcher(pipeline: Pipeline): InboxWatcher {
    const c = this.config;
    return new InboxWatcher(
      {
        inbox: c.inbox,
        stabilityMs: c.ingest.stabilityMs,
        pollIntervalMs: c.ingest.pollIntervalMs,
        usePolling: c.ingest.usePolling,
        ignore: c.ingest.ignore,
        maxTracked: Math.max(4 * c.ingest.queueCapacity, 256),
      },
      (file) => pipeline.offer(file),
      this.logger.component('ingest'),
      (p) => pipeline.holds(p),
    );
  }

  /** Live ingest settings (fleet set-config): a new watcher from the running config; files in flight stay held. */
  private async restartWatcher(): Promise<void> {
    if (this.stopping || !this.pipeline || !this.fleet) return;
    await this.watcher?.stop();
    const next = this.createWatcher(this.pipeline);
    this.watcher = next;
    this.fleet.ingest.attach(next);
    await next.start();
  }

  private pipelineLiveOptions(c: AgentConfig) {
    return {
      afterPublish: c.ingest.afterPublish,
      queueCapacity: c.ingest.queueCapacity,
      concurrency: c.pipeline.concurrency,
      maxAttempts: c.ingest.maxAttempts,
      maxFileBytes: c.ingest.maxFileBytes,
      decode: decodeOptions(c),
      privacy: { allowUids: c.privacy.allowUids, salt: this.store!.uidSalt(c.privacy.uidSaltFile) },
    };
  }

  /**
   * Inference isolation (config model.isolation ...; src/runtimes/worker/supervisor.ts): worker restarts
   * are logged; a runtime marked failed (restart storm) is logged and published on `error` (code
   * 'runtime-failed'). Falling back to the next runtime in the preference list hooks in here too.
   */
  private isolation(): IsolationOptions {
    const m = this.config.model;
    const log = this.logger.component('inference');
    return {
      mode: m.isolation,
      workers: m.workers,
      inferenceTimeoutMs: m.inferenceTimeoutMs,
      maxWorkerRssMb: m.maxWorkerRssMb,
      restartLimit: m.restartLimit,
      onRestart: (e) => log.warn(e, `inference worker restarting (${e.reason}): ${e.detail}`),
      // The serving model falls back to the next runtime (src/pipeline/serving.ts); onFallback publishes.
      onRuntimeFailed: (e) => log.error(e, `runtime '${e.runtime}' marked failed after ${e.restarts} worker restarts in ${e.windowSec} s`),
    };
  }

  /** The model with runtime selection and fallback (src/runtimes/select.ts, src/pipeline/serving.ts). */
  private loadModel(dir = this.modelDir): Promise<ServingModel> {
    const opts = { ...classifierOptions(this.config), isolation: this.isolation() };
    const model: Promise<ServingModel> = ServingModel.load(dir, opts, { onFallback: (e) => void this.onFallback(e, model) });
    return model;
  }

  /** At start: the store's active version (a rolled-out model survives restarts), else its previous one, else the shipped bundle. */
  private async loadServing(store: ModelStore): Promise<ServingModel> {
    for (const w of store.warnings) this.log.warn(w);
    for (const ref of [store.active, store.previous]) {
      if (!ref) continue;
      try {
        const model = await this.loadModel(store.dirOf(ref));
        this.modelDir = store.dirOf(ref);
        return model;
      } catch (err) {
        this.log.error({ model: refString(ref), err: (err as Error).message }, 'installed model version cannot be loaded; trying the next one');
      }
    }
    this.modelDir = this.config.model.bundle;
    return this.loadModel(this.modelDir);
  }

  /**
   * Model rollout (src/fleet/rollout.ts): follows desired/model (device and group), reports model/state
   * (again after every reconnect), swaps models through swapModel, adds models/activate/rollback commands.
   */
  private async startRollout(link: MqttLink, fleet: AgentFleet, store: ModelStore): Promise<RolloutManager> {
    const c = this.config;
    const log = this.logger.component('rollout');
    const publishState = (topic: string, state: unknown): Promise<void> => {
      fleet.health.changed('rollout step'); // health goes out with every model/state step
      return link.publish(topic, JSON.stringify(state), { retain: true }).catch((err: unknown) => {
        log.debug({ err: (err as Error).message }, 'model/state not published now; it is sent again on connect');
      });
    };
    const rollout = new RolloutManager(
      {
        deviceId: c.deviceId,
        baseTopic: c.mqtt.baseTopic,
        groups: c.fleet.groups,
        shippedBundle: c.model.bundle,
        trustedKeys: rolloutTrustedKeys(c),
        download: {
          maxBytes: c.fleet.download.maxBytes,
          timeoutMs: c.fleet.download.timeoutMs,
          ...(c.fleet.download.caFile ? { ca: await readFile(c.fleet.download.caFile) } : {}),
        },
      },
      store,
      {
        serving: () => this.classifier?.info ?? null,
        load: (dir) => this.loadModel(dir),
        swap: (next, cause) => this.swapModel(next as ServingModel, cause),
        publishState,
        audit: (change) => this.store?.audit.modelChange(change),
      },
      log,
    );
    this.rollout = rollout;
    registerRolloutCommands(fleet.commands, rollout);
    for (const filter of rollout.filters) {
      link.subscribe(filter, (m) => rollout.onMessage(m.topic, m.payload), {
        onOversize: (m) => void rollout.refuse(m.topic, `document is ${m.bytes} bytes, over the limit`),
      });
    }
    link.on('connected', () => {
      if (rollout.state) void publishState(rollout.stateTopic, rollout.state);
    });
    return rollout;
  }

  /** Serves `next` at once (jobs running on the old model finish on it, then it is freed); audited. */
  private async swapModel(next: ServingModel, cause: { reason: string; actor: string }): Promise<void> {
    const old = this.classifier;
    if (!this.pipeline || !old || this.stopping) {
      await next.dispose();
      throw new Error('agent is not running');
    }
    this.classifier = next;
    this.modelDir = next.bundle.dir;
    this.pipeline.setClassifier(next);
    this.logModel(next);
    this.store?.audit.modelChange({ from: old.info, to: next.info, reason: cause.reason, actor: cause.actor });
    this.log.info({ previous: old.info, model: next.info, reason: cause.reason }, 'model swapped');
    await this.link?.online({ version: AGENT_VERSION, model: next.info });
    await old.dispose();
  }

  /** A runtime failed while serving: say which, why and what serves now (error + state), audit the change. */
  private async onFallback(e: FallbackEvent, model: Promise<ServingModel>): Promise<void> {
    this.log.error({ failed: e.failed, now: e.now ?? null, error: e.error }, e.message);
    this.store?.audit.modelChange({ from: e.previous, to: e.now ?? null, reason: `runtime-fallback: ${e.message}`, actor: 'agent' });
    this.link?.publishError({
      deviceId: this.config.deviceId,
      code: 'runtime-failed',
      message: e.message,
      stage: 'inference',
      runtime: e.failed.runtime,
      reason: e.failed.reason,
      fallback: e.now ? { runtime: e.now.runtime, precision: e.now.precision, provider: e.now.provider } : null,
      createdAt: new Date().toISOString(),
    });
    if (e.now && (await model) === this.classifier) await this.link?.online({ version: AGENT_VERSION, model: e.now });
  }

  private logModel(classifier: ServingModel): void {
    for (const a of classifier.attempts.filter((x) => !x.ok)) {
      this.log.warn({ provider: a.provider, reason: a.reason }, 'execution provider unavailable; trying the next one');
    }
    const sig = classifier.signature;
    if (!sig.signed) this.log.warn({ bundle: classifier.bundle.dir }, 'model bundle is UNSIGNED (model.allowUnsigned: true); development only');
    else if (/DEVELOPMENT-ONLY/.test(sig.keySource ?? '')) {
      this.log.warn({ keyId: sig.keyId, key: sig.keySource }, 'model bundle is signed with the DEVELOPMENT-ONLY key; trust a production key in model.trustedKeys on real devices');
    }
    this.log.info(
      { model: classifier.info, signedBy: sig.keyId ?? null, golden: classifier.golden.map((g) => ({ name: g.name, maxAbsDiff: g.maxAbsDiff })) },
      'model loaded and warm',
    );
    this.log.info({ selection: classifier.selection }, `runtime: ${classifier.describe()}`);
  }

  /**
   * Loads the bundle at config.model.bundle again into a NEW classifier with every check (signature,
   * schema, hashes, golden outputs). On success it replaces the serving model (jobs already running finish
   * on the old one, which is then freed); on failure the current model keeps serving, and the reason is
   * logged and published on `error`. One reload at a time (SIGHUP in `edge-agent run`). `cause` goes into
   * the audit log, for a refused reload too (default: an operator's SIGHUP).
   */
  reloadModel(cause: { reason: string; actor: string } = { reason: 'sighup-reload', actor: 'operator' }): Promise<ReloadOutcome> {
    this.reloading ??= this.doReload(cause).finally(() => (this.reloading = undefined));
    return this.reloading;
  }

  private async doReload(cause: { reason: string; actor: string }): Promise<ReloadOutcome> {
    const c = this.config;
    const old = this.classifier;
    if (!this.pipeline || !old || this.stopping) return { ok: false, error: 'agent is not running' };
    this.log.info({ bundle: this.modelDir }, 'reloading model');
    let next: ServingModel;
    try {
      next = await this.loadModel();
    } catch (err) {
      const e = err as Error;
      const reason = err instanceof BundleError ? err.code : 'load-failed';
      const problems = err instanceof BundleError ? err.problems : [e.message];
      this.log.error(
        { bundle: c.model.bundle, reason, problems, serving: old.info },
        `model reload refused, the current model keeps serving: ${e.message}`,
      );
      this.store?.audit.modelChange({ from: old.info, to: null, reason: `${cause.reason} refused (${reason})`, actor: cause.actor });
      this.link?.publishError({
        deviceId: c.deviceId,
        code: 'model-rejected',
        reason,
        message: e.message,
        problems,
        stage: 'model',
        bundle: c.model.bundle,
        serving: old.info,
        createdAt: new Date().toISOString(),
      });
      return { ok: false, error: e.message, reason };
    }
    if (this.stopping) {
      await next.dispose();
      return { ok: false, error: 'agent is stopping' };
    }
    this.classifier = next;
    this.pipeline.setClassifier(next);
    this.logModel(next);
    this.store?.audit.modelChange({ from: old.info, to: next.info, reason: cause.reason, actor: cause.actor });
    this.log.info({ previous: old.info, model: next.info }, 'model reloaded');
    await this.link?.online({ version: AGENT_VERSION, model: next.info });
    await old.dispose();
    return { ok: true, model: next.info };
  }

  /**
   * systemd integration (agent/cli.ts sends READY=1 on it): resolves once the broker link is connected,
   * at once if it already is; never rejects (a broker down at start only delays it).
   */
  whenBrokerConnected(): Promise<void> {
    const link = this.link;
    if (!link || link.connected) return Promise.resolve();
    return new Promise((resolve) => link.once('connected', () => resolve()));
  }

  /** Stops once, in order; safe to call from several signal handlers. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.log.info('stopping: intake closed, finishing running jobs');
    this.fleet?.stop();
    await this.rollout?.stop();
    await this.watcher?.stop();
    await this.pipeline?.stop();
    if (this.link) {
      const left = await this.link.flush(this.config.shutdown.flushTimeoutMs);
      if (left > 0) this.log.warn({ left }, 'results still waiting for the broker; they stay in the outbox for the next start');
      await this.link.close();
    }
    await this.broker?.close();
    await this.classifier?.dispose();
    this.store?.close();
    this.log.info('stopped');
  }
}
