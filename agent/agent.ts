/**
 * Composition root of the daemon: builds the parts from the config and starts them in order; stops
 * them in the reverse order, once. Wiring only; behaviour lives in src/.
 *
 * Start: state store -> model (warm-up) -> broker link (+ embedded broker) -> pipeline recovery ->
 * inbox watcher -> `online`. Stop: intake -> running jobs -> outbox flush -> `offline` -> store -> logs.
 */
import { mkdir, readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { AgentConfig } from '../src/config/schema.js';
import { defaultDecodeOptions } from '../src/decode/index.js';
import { InboxWatcher } from '../src/ingest/watcher.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../src/mqtt/broker.js';
import { MqttLink, type MqttLinkOptions } from '../src/mqtt/link.js';
import { deviceTopics } from '../src/mqtt/topics.js';
import { BundleClassifier, type Classifier } from '../src/pipeline/classifier.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { StateStore } from '../src/store/index.js';
import type { AgentLogger } from '../src/log.js';
import { AGENT_VERSION } from './version.js';

export function classifierOptions(config: AgentConfig) {
  return {
    runtime: config.model.runtime,
    providers: config.model.providers,
    intraOpThreads: config.model.intraOpThreads,
    interOpThreads: config.model.interOpThreads,
    graphOptimization: config.model.graphOptimization,
    warmupRuns: config.model.warmupRuns,
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

export class Agent {
  private store: StateStore | undefined;
  private classifier: Classifier | undefined;
  private broker: EmbeddedBroker | undefined;
  private link: MqttLink | undefined;
  private pipeline: Pipeline | undefined;
  private watcher: InboxWatcher | undefined;
  private stopping: Promise<void> | undefined;
  private readonly log: Logger;

  constructor(
    readonly config: AgentConfig,
    private readonly logger: AgentLogger,
  ) {
    this.log = logger.component('agent');
  }

  get mqttUrl(): string | undefined {
    return this.broker?.url ?? (this.config.mqtt.url || undefined);
  }

  async start(): Promise<void> {
    const c = this.config;
    for (const dir of [c.inbox, c.stateDir, c.doneDir, c.quarantineDir]) await mkdir(dir, { recursive: true });
    this.store = StateStore.open(c.stateDir);

    this.classifier = await BundleClassifier.load(c.model.bundle, classifierOptions(c));
    const failedProviders = this.classifier.attempts.filter((a) => !a.ok);
    for (const a of failedProviders) {
      this.log.warn({ provider: a.provider, reason: a.reason }, 'execution provider unavailable; trying the next one');
    }
    this.log.info({ model: this.classifier.info }, 'model loaded and warm');

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
    link.on('disconnected', (e) => this.log.warn({ reason: e.reason }, 'disconnected from MQTT broker; results wait in the outbox'));
    link.on('linkError', (err) => this.log.error({ kind: err.kind, err: err.message }, 'MQTT connection problem'));
    link.attachOutbox(this.store.outbox, { window: c.mqtt.inflightWindow });
    link.start();

    const topics = deviceTopics(c.mqtt.baseTopic, c.deviceId);
    this.pipeline = new Pipeline(
      {
        deviceId: c.deviceId,
        inbox: c.inbox,
        doneDir: c.doneDir,
        quarantineDir: c.quarantineDir,
        afterPublish: c.ingest.afterPublish,
        queueCapacity: c.ingest.queueCapacity,
        concurrency: c.pipeline.concurrency,
        maxAttempts: c.ingest.maxAttempts,
        maxFileBytes: c.ingest.maxFileBytes,
        decode: decodeOptions(c),
        privacy: { allowUids: c.privacy.allowUids, salt: this.store.uidSalt(c.privacy.uidSaltFile) },
        topics: { result: topics.result, error: topics.error },
      },
      this.store,
      this.classifier,
      this.logger.component('pipeline'),
      {
        onOutbox: () => link.kick(),
        onRoom: () => this.watcher?.resume(),
      },
    );
    await this.pipeline.recover();

    const pipeline = this.pipeline;
    this.watcher = new InboxWatcher(
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
    await this.watcher.start();
    await link.online({ version: AGENT_VERSION, model: this.classifier.info });
    this.log.info(
      { deviceId: c.deviceId, inbox: c.inbox, mqtt: this.mqttUrl, topics: { result: topics.result, state: topics.state } },
      'agent started',
    );
  }

  /** Stops once, in order; safe to call from several signal handlers. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.log.info('stopping: intake closed, finishing running jobs');
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
