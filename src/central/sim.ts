/**
 * Lightweight simulated agents for central's tests and bench/fleet: each one is a REAL MQTT client
 * speaking src/fleet/protocol.ts exactly as an agent does (retained state with an offline last will,
 * retained health, errors, results, desired/model obeyed with model/state phases), without decoding
 * images or running a model. What it cannot do (inference, golden outputs) it is told by `behaviour`:
 * e.g. "fail the golden check for version 9.9.9", so the controller's reactions can be tested.
 *
 * It follows the agent's precedence rules: a device-level desired/model wins over any group document;
 * among its groups' documents the newest `issuedAt` wins; an empty retained payload clears a document.
 */
import { createHash } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { fleetTopics, type DesiredModel, type HealthPayload, type ModelPhase, type ModelState } from '../fleet/protocol.js';

export interface SimModel {
  id: string;
  version: string;
  sha256: string;
}

export interface SimBehaviour {
  /** Versions whose golden check "fails" (the agent rolls back with a reason). */
  failVersions?: string[];
  /** Versions the agent never finishes (stays in `downloading`): a hung device. */
  hangVersions?: string[];
  /** Pause between phases (ms, default 0). */
  stepDelayMs?: number;
  /** Really download the bundle URL and check its sha256 and size (default false). */
  download?: boolean;
  /** Publish health every N ms as well as on change (default 0: on change only). */
  healthIntervalMs?: number;
}

export interface SimAgentOptions {
  url: string;
  deviceId: string;
  groups: string[];
  model: SimModel | null;
  baseTopic?: string;
  behaviour?: SimBehaviour;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class SimAgent {
  readonly deviceId: string;
  serving: SimModel | null;
  phase: ModelPhase = 'idle';
  online = false;
  readonly phases: { rolloutId: string | null; phase: ModelPhase }[] = [];
  private client: MqttClient | null = null;
  private readonly topics;
  private deviceDoc: DesiredModel | null = null;
  private readonly groupDocs = new Map<string, DesiredModel>();
  private handled: string | null = null;
  private generation = 0;
  private processed = 0;
  private readonly startedAt = Date.now();
  private healthTimer: NodeJS.Timeout | null = null;
  private lastError: HealthPayload['lastError'] = null;

  constructor(private readonly opts: SimAgentOptions) {
    this.deviceId = opts.deviceId;
    this.serving = opts.model;
    this.topics = fleetTopics(opts.baseTopic ?? 'imaging');
  }

  get behaviour(): SimBehaviour {
    return this.opts.behaviour ?? {};
  }

  async start(): Promise<void> {
    const client = await mqtt.connectAsync(this.opts.url, {
      clientId: `sim-${this.deviceId}`,
      protocolVersion: 5,
      clean: true,
      reconnectPeriod: 1000,
      keepalive: 30,
      will: { topic: this.topics.state(this.deviceId), payload: Buffer.from(JSON.stringify({ state: 'offline' })), qos: 1, retain: true },
    });
    this.client = client;
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
    client.on('error', () => undefined);
    const subs = [
      this.topics.desiredModel(this.deviceId),
      ...this.opts.groups.map((g) => this.topics.groupDesiredModel(g)),
      this.topics.request(this.deviceId, '+'),
      ...this.opts.groups.map((g) => this.topics.groupRequest(g, '+')),
    ];
    await client.subscribeAsync(Object.fromEntries(subs.map((s) => [s, { qos: 1 as const }])));
    await this.setOnline(true);
    await this.publishHealth();
    if (this.behaviour.healthIntervalMs) {
      this.healthTimer = setInterval(() => void this.publishHealth().catch(() => undefined), this.behaviour.healthIntervalMs);
    }
  }

  /** Publishes the retained availability state (what an agent does on start / shutdown). */
  async setOnline(online: boolean): Promise<void> {
    this.online = online;
    await this.client?.publishAsync(this.topics.state(this.deviceId), JSON.stringify({ state: online ? 'online' : 'offline', at: new Date().toISOString() }), { qos: 1, retain: true });
  }

  health(): HealthPayload {
    return {
      deviceId: this.deviceId,
      groups: this.opts.groups,
      agentVersion: 'sim',
      uptimeSec: Math.round((Date.now() - this.startedAt) / 1000),
      configId: 'sim',
      model: this.serving ? { ...this.serving, runtime: 'sim', provider: 'cpu' } : null,
      ingest: { paused: false, queueDepth: 0 },
      counts: { processed: this.processed, failed: 0, quarantined: 0 },
      latencyMs: { p50: 1, p99: 2, window: this.processed },
      rssMb: 1,
      diskFreeBytes: 1e12,
      lastError: this.lastError,
      at: new Date().toISOString(),
    };
  }

  async publishHealth(): Promise<void> {
    await this.client?.publishAsync(this.topics.health(this.deviceId), JSON.stringify(this.health()), { qos: 1, retain: true });
  }

  async publishResult(label = 'rot0'): Promise<void> {
    this.processed++;
    const result = {
      resultId: `${this.deviceId}-${this.processed}`,
      label,
      scores: { [label]: 0.97 },
      model: this.serving ? { ...this.serving, runtime: 'sim', provider: 'cpu' } : null,
      timings: { totalMs: 1 },
      input: { file: `capture-${this.processed}.dcm`, sha256: createHash('sha256').update(String(this.processed)).digest('hex'), modality: 'CT', frame: 0 },
      createdAt: new Date().toISOString(),
    };
    await this.client?.publishAsync(`${this.opts.baseTopic ?? 'imaging'}/${this.deviceId}/result`, JSON.stringify(result), { qos: 1 });
  }

  async publishError(code: string, message: string): Promise<void> {
    const at = new Date().toISOString();
    this.lastError = { code, message, at };
    await this.client?.publishAsync(`${this.opts.baseTopic ?? 'imaging'}/${this.deviceId}/error`, JSON.stringify({ deviceId: this.deviceId, code, message, createdAt: at }), { qos: 1 });
  }

  /** Clean shutdown: offline state, then disconnect. */
  async stop(): Promise<void> {
    if (this.healthTimer) clearInterval(this.healthTimer);
    this.generation++;
    if (!this.client) return;
    await this.setOnline(false).catch(() => undefined);
    await this.client.endAsync().catch(() => undefined);
    this.client = null;
  }

  /** Abrupt loss (power cut): the broker publishes the last will. */
  crash(): void {
    if (this.healthTimer) clearInterval(this.healthTimer);
    this.generation++;
    this.client?.stream.destroy();
    this.client?.end(true);
    this.client = null;
  }

  private onMessage(topic: string, payload: Buffer): void {
    if (topic.includes('/request/')) {
      this.onRequest(topic.slice(topic.lastIndexOf('/') + 1), payload);
      return;
    }
    let doc: DesiredModel | null = null;
    if (payload.length) {
      try {
        doc = JSON.parse(payload.toString('utf8')) as DesiredModel;
      } catch {
        return;
      }
    }
    if (topic === this.topics.desiredModel(this.deviceId)) this.deviceDoc = doc;
    else {
      const g = topic.split('/').at(-3) as string;
      if (doc) this.groupDocs.set(g, doc);
      else this.groupDocs.delete(g);
    }
    const eff = this.effective();
    if (!eff) return;
    const key = `${eff.rolloutId}|${eff.id}@${eff.version}`;
    if (key === this.handled) return;
    this.handled = key;
    void this.install(eff).catch(() => undefined);
  }

  private onRequest(cmd: string, payload: Buffer): void {
    let tx: string | null = null;
    try {
      tx = (JSON.parse(payload.toString('utf8')) as { transaction?: string }).transaction ?? null;
    } catch {
      /* answered below as an error */
    }
    const ok = cmd === 'ping' || cmd === 'rollback';
    void this.client
      ?.publishAsync(
        this.topics.response(this.deviceId, cmd),
        JSON.stringify({ status: ok ? 'ok' : 'error', deviceId: this.deviceId, transaction: tx, data: ok ? { pong: cmd === 'ping' } : null, error: ok ? null : `unknown command '${cmd}'` }),
        { qos: 1 },
      )
      .catch(() => undefined);
  }

  effective(): DesiredModel | null {
    if (this.deviceDoc) return this.deviceDoc;
    let best: DesiredModel | null = null;
    for (const d of this.groupDocs.values()) if (!best || d.issuedAt > best.issuedAt) best = d;
    return best;
  }

  private async report(doc: DesiredModel, phase: ModelPhase, reason: string | null, previous: SimModel | null): Promise<void> {
    this.phase = phase;
    this.phases.push({ rolloutId: doc.rolloutId, phase });
    const state: ModelState = {
      deviceId: this.deviceId,
      rolloutId: doc.rolloutId,
      phase,
      serving: this.serving,
      target: { id: doc.id, version: doc.version },
      previous: previous ? { id: previous.id, version: previous.version } : null,
      reason,
      at: new Date().toISOString(),
    };
    await this.client?.publishAsync(this.topics.modelState(this.deviceId), JSON.stringify(state), { qos: 1, retain: true });
  }

  private async install(doc: DesiredModel): Promise<void> {
    const gen = ++this.generation;
    const b = this.behaviour;
    const step = async (): Promise<boolean> => {
      if (b.stepDelayMs) await sleep(b.stepDelayMs);
      return gen === this.generation;
    };
    const before = this.serving;
    if (before && before.id === doc.id && before.version === doc.version) {
      await this.report(doc, 'active', 'already serving this version', null);
      return;
    }
    await this.report(doc, 'downloading', null, before);
    if (b.hangVersions?.includes(doc.version)) return;
    if (b.download) {
      const problem = await this.download(doc);
      if (gen !== this.generation) return;
      if (problem) {
        await this.report(doc, 'failed', `download: ${problem}`, before);
        return;
      }
    }
    if (!(await step())) return;
    await this.report(doc, 'verifying', null, before);
    if (!(await step())) return;
    await this.report(doc, 'golden', null, before);
    if (!(await step())) return;
    if (b.failVersions?.includes(doc.version)) {
      await this.report(doc, 'rolled-back', `golden check failed: ${doc.id}@${doc.version} output differs from the manifest's golden outputs (simulated)`, before);
      return;
    }
    await this.report(doc, 'activating', null, before);
    if (!(await step())) return;
    this.serving = { id: doc.id, version: doc.version, sha256: doc.sha256 };
    await this.report(doc, 'active', null, before);
    await this.publishHealth();
  }

  private async download(doc: DesiredModel): Promise<string | null> {
    try {
      const res = await fetch(doc.url);
      if (!res.ok) return `HTTP ${res.status}`;
      const buf = Buffer.from(await res.arrayBuffer());
      if (buf.length !== doc.size) return `size ${buf.length} != ${doc.size}`;
      const sha = createHash('sha256').update(buf).digest('hex');
      return sha === doc.sha256 ? null : `sha256 ${sha} != ${doc.sha256}`;
    } catch (e) {
      return (e as Error).message;
    }
  }
}

export interface SimFleetOptions {
  url: string;
  count: number;
  prefix?: string;
  baseTopic?: string;
  /** Groups of agent i (default ['ward-a']). */
  groups?: (i: number) => string[];
  model: SimModel | null;
  behaviour?: (i: number) => SimBehaviour;
  /** Connections opened at once (default 50). */
  concurrency?: number;
}

/** Starts `count` simulated agents (`<prefix>-0000`...) and resolves when all are online. */
export async function startSimFleet(o: SimFleetOptions): Promise<SimAgent[]> {
  const agents: SimAgent[] = [];
  for (let i = 0; i < o.count; i++) {
    agents.push(
      new SimAgent({
        url: o.url,
        deviceId: `${o.prefix ?? 'sim'}-${String(i).padStart(4, '0')}`,
        groups: o.groups?.(i) ?? ['ward-a'],
        model: o.model,
        baseTopic: o.baseTopic,
        behaviour: o.behaviour?.(i),
      }),
    );
  }
  const conc = o.concurrency ?? 50;
  for (let i = 0; i < agents.length; i += conc) await Promise.all(agents.slice(i, i + conc).map((a) => a.start()));
  return agents;
}

export async function stopSimFleet(agents: SimAgent[]): Promise<void> {
  await Promise.all(agents.map((a) => a.stop()));
}
