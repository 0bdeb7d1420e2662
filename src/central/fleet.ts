/**
 * The fleet view: what central knows about every agent, built only from what agents publish (no
 * polling). Retained topics (state, health, model/state, desired/model) give the full picture the
 * moment central subscribes, so a restarted central, or a second instance, needs no other source.
 *
 * Subscriptions:
 *   plain      <base>/+/state  <base>/+/health  <base>/+/model/state  <base>/+/desired/model
 *              <base>/group/+/desired/model
 *   streams    <base>/+/result  <base>/+/error (shareable)  <base>/+/response/+ (always plain)
 * Retained messages are delivered to plain subscriptions only; MQTT 5 shared subscriptions
 * (`$share/<name>/<filter>`) never deliver retained messages and give each message to ONE member of the
 * share group. So retained topics are always plain subscriptions (every central instance must see every
 * agent's state), and with `shareGroup` set results and errors go through `$share/<shareGroup>/...` so N
 * central instances split that load instead of each processing all of it. Command responses stay plain:
 * the instance that sent a request must see its answer.
 *
 * Anything malformed on the wire (not JSON, wrong shape, oversized) is counted and ignored; nothing an
 * agent sends can throw out of here.
 */
import { EventEmitter } from 'node:events';
import type { MqttClient } from 'mqtt';
import { fleetTopics, MAX_REQUEST_BYTES, type DesiredModel, type HealthPayload, type ModelState } from '../fleet/protocol.js';

const MAX_PAYLOAD = Math.max(MAX_REQUEST_BYTES, 256 * 1024);
export const RECENT_KEEP = 20;

export interface AgentError {
  code: string;
  message: string;
  at: string;
}

export interface AgentResult {
  resultId: string | null;
  label: string | null;
  score: number | null;
  model: string | null;
  at: string;
}

export interface AgentView {
  deviceId: string;
  /** From the retained state topic; null until one was seen. */
  online: boolean | null;
  /** When the state last changed (central's clock). */
  stateChangedAt: string | null;
  groups: string[];
  health: HealthPayload | null;
  modelState: ModelState | null;
  /** Retained desired/model for this device (as the broker holds it), null when none. */
  desired: DesiredModel | null;
  errors: AgentError[];
  results: AgentResult[];
  resultCount: number;
  errorCount: number;
  /** Last time anything arrived from this agent (central's clock). */
  lastSeen: string;
}

/** The row a fleet table shows. */
export interface AgentSummary {
  deviceId: string;
  online: boolean | null;
  groups: string[];
  model: string | null;
  version: string | null;
  phase: string | null;
  rolloutId: string | null;
  agentVersion: string | null;
  queueDepth: number | null;
  processed: number | null;
  failed: number | null;
  p50: number | null;
  p99: number | null;
  lastError: AgentError | null;
  resultCount: number;
  lastSeen: string;
  stateChangedAt: string | null;
}

export interface AgentFilter {
  group?: string;
  version?: string;
  online?: boolean;
}

export interface FleetViewOptions {
  baseTopic?: string;
  /** Share name for the non-retained streams (results, errors, responses); unset: plain subscriptions. */
  shareGroup?: string;
}

export type FleetEvent =
  | { kind: 'state' | 'health' | 'model-state' | 'desired' | 'error' | 'result'; deviceId: string }
  | { kind: 'group-desired'; group: string };

function obj(v: unknown): Record<string, unknown> | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
}
function str(v: unknown): string | null {
  return typeof v === 'string' ? v : null;
}

export class FleetView extends EventEmitter<{ change: [FleetEvent]; response: [string, string, unknown] }> {
  readonly agents = new Map<string, AgentView>();
  readonly groupDesired = new Map<string, DesiredModel>();
  /** Messages ignored because they were malformed. */
  malformed = 0;
  private readonly base: string;
  private readonly topics;
  private client: MqttClient | null = null;
  private readonly onMessage = (topic: string, payload: Buffer): void => this.handle(topic, payload);

  constructor(private readonly opts: FleetViewOptions = {}) {
    super();
    this.base = opts.baseTopic ?? 'imaging';
    this.topics = fleetTopics(this.base);
  }

  /** Filters this view subscribes to: [retained (plain), streams (maybe shared)]. */
  subscriptions(): { retained: string[]; streams: string[] } {
    const share = (f: string): string => (this.opts.shareGroup ? `$share/${this.opts.shareGroup}/${f}` : f);
    return {
      retained: [this.topics.all.state, this.topics.all.health, this.topics.all.modelState, `${this.base}/+/desired/model`, this.topics.groupDesiredModel('+')],
      // responses stay plain: the instance that sent a command must see the answer (src/central/commands.ts)
      streams: [...[`${this.base}/+/result`, this.topics.all.errors].map(share), this.topics.all.responses],
    };
  }

  /** Subscribes on an already created client (also re-done by mqtt.js on reconnect, as it resubscribes). */
  async attach(client: MqttClient): Promise<void> {
    this.client = client;
    client.on('message', this.onMessage);
    const { retained, streams } = this.subscriptions();
    await client.subscribeAsync(Object.fromEntries([...retained, ...streams].map((f) => [f, { qos: 1 as const }])));
  }

  detach(): void {
    this.client?.off('message', this.onMessage);
    this.client = null;
  }

  private agent(deviceId: string): AgentView {
    let a = this.agents.get(deviceId);
    if (!a) {
      a = {
        deviceId,
        online: null,
        stateChangedAt: null,
        groups: [],
        health: null,
        modelState: null,
        desired: null,
        errors: [],
        results: [],
        resultCount: 0,
        errorCount: 0,
        lastSeen: new Date().toISOString(),
      };
      this.agents.set(deviceId, a);
    }
    return a;
  }

  /** Feeds one MQTT message (exposed for the server's own client and for tests of malformed input). */
  handle(topic: string, payload: Buffer): void {
    try {
      this.route(topic, payload);
    } catch {
      this.malformed++;
    }
  }

  private route(topic: string, payload: Buffer): void {
    if (!topic.startsWith(`${this.base}/`)) return;
    const levels = topic.slice(this.base.length + 1).split('/');
    const [first, ...rest] = levels;
    if (!first) return;
    const tail = rest.join('/');
    if (first === 'group') {
      if (rest.length === 3 && rest[1] === 'desired' && rest[2] === 'model' && rest[0]) this.onGroupDesired(rest[0], payload);
      return;
    }
    if (payload.length > MAX_PAYLOAD) {
      this.malformed++;
      return;
    }
    const deviceId = first;
    switch (tail) {
      case 'state':
        return this.onState(deviceId, payload);
      case 'health':
        return this.onHealth(deviceId, payload);
      case 'model/state':
        return this.onModelState(deviceId, payload);
      case 'desired/model':
        return this.onDesired(deviceId, payload);
      case 'result':
        return this.onResult(deviceId, payload);
      case 'error':
        return this.onError(deviceId, payload);
      default:
        if (rest.length === 2 && rest[0] === 'response' && rest[1]) {
          this.emit('response', deviceId, rest[1], parseJson(payload));
        }
    }
  }

  private parseObj(payload: Buffer): Record<string, unknown> | null {
    const o = obj(parseJson(payload));
    if (!o) this.malformed++;
    return o;
  }

  private onState(deviceId: string, payload: Buffer): void {
    if (payload.length === 0) {
      // retained state cleared: the agent was decommissioned
      this.agents.delete(deviceId);
      this.emit('change', { kind: 'state', deviceId });
      return;
    }
    const o = this.parseObj(payload);
    if (!o) return;
    const a = this.agent(deviceId);
    const online = o.state === 'online' ? true : o.state === 'offline' ? false : null;
    if (a.online !== online) a.stateChangedAt = new Date().toISOString();
    a.online = online;
    a.lastSeen = new Date().toISOString();
    this.emit('change', { kind: 'state', deviceId });
  }

  private onHealth(deviceId: string, payload: Buffer): void {
    if (payload.length === 0) return;
    const o = this.parseObj(payload);
    if (!o) return;
    const h = o as unknown as HealthPayload;
    const a = this.agent(deviceId);
    a.health = h;
    a.groups = Array.isArray(h.groups) ? h.groups.filter((g): g is string => typeof g === 'string') : [];
    a.lastSeen = new Date().toISOString();
    this.emit('change', { kind: 'health', deviceId });
  }

  private onModelState(deviceId: string, payload: Buffer): void {
    if (payload.length === 0) return;
    const o = this.parseObj(payload);
    if (!o || typeof o.phase !== 'string') return;
    const a = this.agent(deviceId);
    a.modelState = o as unknown as ModelState;
    a.lastSeen = new Date().toISOString();
    this.emit('change', { kind: 'model-state', deviceId });
  }

  private onDesired(deviceId: string, payload: Buffer): void {
    const a = this.agents.get(deviceId);
    const doc = payload.length === 0 ? null : (this.parseObj(payload) as DesiredModel | null);
    if (a) a.desired = doc;
    else if (doc) this.agent(deviceId).desired = doc;
    this.emit('change', { kind: 'desired', deviceId });
  }

  private onGroupDesired(group: string, payload: Buffer): void {
    if (payload.length === 0) this.groupDesired.delete(group);
    else {
      const o = this.parseObj(payload);
      if (!o) return;
      this.groupDesired.set(group, o as unknown as DesiredModel);
    }
    this.emit('change', { kind: 'group-desired', group });
  }

  private onResult(deviceId: string, payload: Buffer): void {
    const o = this.parseObj(payload);
    if (!o) return;
    const a = this.agent(deviceId);
    const scores = obj(o.scores);
    const label = str(o.label);
    const model = obj(o.model);
    const entry: AgentResult = {
      resultId: str(o.resultId),
      label,
      score: label && scores && typeof scores[label] === 'number' ? scores[label] : null,
      model: model ? `${str(model.id) ?? '?'}@${str(model.version) ?? '?'}` : null,
      at: str(o.createdAt) ?? str(o.at) ?? new Date().toISOString(),
    };
    a.results.unshift(entry);
    if (a.results.length > RECENT_KEEP) a.results.length = RECENT_KEEP;
    a.resultCount++;
    a.lastSeen = new Date().toISOString();
    this.emit('change', { kind: 'result', deviceId });
  }

  private onError(deviceId: string, payload: Buffer): void {
    const o = this.parseObj(payload);
    if (!o) return;
    const a = this.agent(deviceId);
    a.errors.unshift({
      code: str(o.code) ?? 'error',
      message: str(o.message) ?? str(o.reason) ?? JSON.stringify(o).slice(0, 500),
      at: str(o.createdAt) ?? str(o.at) ?? new Date().toISOString(),
    });
    if (a.errors.length > RECENT_KEEP) a.errors.length = RECENT_KEEP;
    a.errorCount++;
    a.lastSeen = new Date().toISOString();
    this.emit('change', { kind: 'error', deviceId });
  }

  /** Agents that belong to `group` (from their retained health). */
  members(group: string): AgentView[] {
    return [...this.agents.values()].filter((a) => a.groups.includes(group));
  }

  summary(a: AgentView): AgentSummary {
    const h = a.health;
    const lastErr = a.errors[0] ?? (h?.lastError ? { code: h.lastError.code, message: h.lastError.message, at: h.lastError.at } : null);
    return {
      deviceId: a.deviceId,
      online: a.online,
      groups: a.groups,
      model: h?.model?.id ?? a.modelState?.serving?.id ?? null,
      version: h?.model?.version ?? a.modelState?.serving?.version ?? null,
      phase: a.modelState?.phase ?? null,
      rolloutId: a.modelState?.rolloutId ?? null,
      agentVersion: h?.agentVersion ?? null,
      queueDepth: h?.ingest?.queueDepth ?? null,
      processed: h?.counts?.processed ?? null,
      failed: h?.counts?.failed ?? null,
      p50: h?.latencyMs?.p50 ?? null,
      p99: h?.latencyMs?.p99 ?? null,
      lastError: lastErr,
      resultCount: a.resultCount,
      lastSeen: a.lastSeen,
      stateChangedAt: a.stateChangedAt,
    };
  }

  list(filter: AgentFilter = {}): AgentSummary[] {
    const out: AgentSummary[] = [];
    for (const a of this.agents.values()) {
      const s = this.summary(a);
      if (filter.group !== undefined && !s.groups.includes(filter.group)) continue;
      if (filter.version !== undefined && s.version !== filter.version) continue;
      if (filter.online !== undefined && (s.online === true) !== filter.online) continue;
      out.push(s);
    }
    return out.sort((x, y) => x.deviceId.localeCompare(y.deviceId));
  }

  counts(): { agents: number; online: number; offline: number; groups: Record<string, number>; versions: Record<string, number> } {
    const groups: Record<string, number> = {};
    const versions: Record<string, number> = {};
    let online = 0;
    for (const a of this.agents.values()) {
      if (a.online) online++;
      for (const g of a.groups) groups[g] = (groups[g] ?? 0) + 1;
      const v = a.health?.model ? `${a.health.model.id}@${a.health.model.version}` : 'none';
      versions[v] = (versions[v] ?? 0) + 1;
    }
    return { agents: this.agents.size, online, offline: this.agents.size - online, groups, versions };
  }
}

function parseJson(payload: Buffer): unknown {
  try {
    return JSON.parse(payload.toString('utf8'));
  } catch {
    return undefined;
  }
}
