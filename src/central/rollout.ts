/**
 * Rollout controller: moves a group of agents to a bundle version, canary first, and backs out on its
 * own when the canary (or the rest) misbehaves.
 *
 * Desired state is published PER DEVICE (`<base>/<device>/desired/model`, retained), not as one group
 * document, while a rollout runs:
 *  - a canary needs per-device documents anyway (a group document reaches every member at once);
 *  - the target set is fixed when the rollout is created (the group's members in the fleet view then),
 *    so progress has a known denominator and a halt knows exactly whom to revert;
 *  - reverting one device never touches another, and a device-level document wins over a group-level
 *    one by protocol (src/fleet/protocol.ts), so a later group document cannot undo a halt by accident.
 * When a rollout succeeds, central ALSO publishes the same document on `<base>/group/<G>/desired/model`,
 * so an agent that joins G later converges on the version the group runs (retained, no central needed).
 * The cost (one retained message per device) is trivial for a broker: 1,000 devices = 1,000 small
 * retained messages.
 *
 * Criteria: `maxFailures` (a device that reports `rolled-back`/`failed` for this rollout, or reaches no
 * terminal phase within `deviceTimeoutSec` of its document, is a failure; one that stayed offline and never
 * started is `offline`, not a failure, since its retained document waits for it): more than that halts at once;
 * `maxFailureRate` (0..1) is checked when a wave completes (failures / devices issued so far).
 * Halting re-issues every issued device's previous desired document (its own, else its group's, else one
 * for the version it served when the rollout started if the registry has it) under the rollout id
 * `<id>~rollback`; with none of those it clears the device document and sends the agent a `rollback`
 * command. Every step is persisted (SQLite) before it is published, so a restarted central resumes:
 * it re-publishes the (identical, idempotent) documents of issued devices and re-evaluates from the
 * agents' retained model/state.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { MqttClient } from 'mqtt';
import { fleetTopics, TERMINAL_PHASES, type DesiredModel, type ModelState } from '../fleet/protocol.js';
import type { CentralDb } from './db.js';
import type { AgentView, FleetEvent, FleetView } from './fleet.js';
import type { BundleRecord, Registry } from './registry.js';

export type RolloutStatus = 'canary' | 'widening' | 'succeeded' | 'rolled-back';
/**
 * `offline`: the agent was offline and never started on its document within the timeout. Not a failure:
 * the document is retained, so the agent converges when it reconnects (or reports why it cannot).
 */
export type DeviceStatus = 'pending' | 'issued' | 'in-progress' | 'succeeded' | 'failed' | 'timed-out' | 'offline' | 'reverted';

export interface RolloutSpec {
  bundle: { id: string; version: string };
  group: string;
  /** Fraction (0..1] of the group that goes first. */
  canary: number;
  /** More failed devices than this halts the rollout (default 0). */
  maxFailures?: number;
  /** Failure rate (0..1) above which a completed wave halts (default 1: off). */
  maxFailureRate?: number;
  /** A device with no terminal phase this long after its document counts as failed (default 600). */
  deviceTimeoutSec?: number;
  policy?: DesiredModel['policy'];
  /** Who asked (for the audit trail). */
  createdBy?: string;
}

export interface RolloutDoc {
  id: string;
  group: string;
  bundle: { id: string; version: string; sha256: string; size: number };
  canary: number;
  maxFailures: number;
  maxFailureRate: number;
  deviceTimeoutSec: number;
  /** The document every target device gets. */
  desired: DesiredModel;
  status: RolloutStatus;
  /** Why it halted (criteria, timeout, operator), or null. */
  reason: string | null;
  createdBy: string | null;
  createdAt: string;
  updatedAt: string;
  finishedAt: string | null;
}

export interface RolloutDevice {
  deviceId: string;
  wave: 'canary' | 'rest';
  status: DeviceStatus;
  phase: string | null;
  reason: string | null;
  /** What to restore on halt. */
  previous: { doc: DesiredModel | null; serving: { id: string; version: string } | null } | null;
  issuedAt: string | null;
  updatedAt: string;
}

export interface RolloutView extends RolloutDoc {
  counts: Record<DeviceStatus | 'total', number>;
  devices: RolloutDevice[];
}

export class RolloutError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'RolloutError';
  }
}

export interface RolloutControllerOptions {
  db: CentralDb;
  fleet: FleetView;
  registry: Registry;
  client: MqttClient;
  baseTopic?: string;
  /** Base URL agents download bundles from (central's public URL). */
  publicUrl: string;
  /** How often deadlines are checked (ms, default 1000). */
  tickMs?: number;
  log?: (msg: string, extra?: Record<string, unknown>) => void;
}

interface Active {
  doc: RolloutDoc;
  devices: Map<string, RolloutDevice>;
}

const ACTIVE: RolloutStatus[] = ['canary', 'widening'];
const FAILED: DeviceStatus[] = ['failed', 'timed-out'];
const DONE: DeviceStatus[] = ['succeeded', 'failed', 'timed-out', 'offline'];

/** The agent's rollout policy (src/fleet/protocol.ts DesiredModel.policy), checked before it goes out. */
function checkPolicy(p: unknown): DesiredModel['policy'] | undefined {
  if (p === undefined || p === null) return undefined;
  if (typeof p !== 'object' || Array.isArray(p)) throw new RolloutError(400, 'policy must be an object');
  const o = p as Record<string, unknown>;
  const out: NonNullable<DesiredModel['policy']> = {};
  const rules: Record<string, { int: boolean; max: number }> = {
    shadowImages: { int: true, max: 100_000 },
    observeImages: { int: true, max: 100_000 },
    minAgreement: { int: false, max: 1 },
    maxErrorRate: { int: false, max: 1 },
  };
  for (const [k, v] of Object.entries(o)) {
    const r = rules[k];
    if (!r) throw new RolloutError(400, `policy.${k} is not a rollout policy field (${Object.keys(rules).join(', ')})`);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > r.max || (r.int && !Number.isInteger(v))) {
      throw new RolloutError(400, `policy.${k} must be ${r.int ? 'an integer' : 'a number'} in [0, ${r.max}], got ${JSON.stringify(v)}`);
    }
    (out as Record<string, number>)[k] = v;
  }
  return out;
}

export function bundleUrl(publicUrl: string, id: string, version: string): string {
  return `${publicUrl.replace(/\/+$/, '')}/registry/bundles/${encodeURIComponent(id)}/${encodeURIComponent(version)}/bundle.tar`;
}

function newId(): string {
  const t = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return `r-${t}-${randomBytes(3).toString('hex')}`;
}

export class RolloutController extends EventEmitter<{ change: [string] }> {
  private readonly active = new Map<string, Active>();
  /** deviceId -> active rollout id. */
  private readonly byDevice = new Map<string, string>();
  private readonly topics;
  private timer: NodeJS.Timeout | null = null;
  private readonly onFleet = (e: FleetEvent): void => {
    if (e.kind === 'group-desired') return;
    const id = this.byDevice.get(e.deviceId);
    if (id) this.evaluate(id, e.deviceId);
  };

  constructor(private readonly opts: RolloutControllerOptions) {
    super();
    this.topics = fleetTopics(opts.baseTopic ?? 'imaging');
  }

  /** Loads unfinished rollouts, re-publishes their issued documents and starts watching. */
  async start(): Promise<void> {
    const rows = this.opts.db
      .prepare(`SELECT doc FROM rollouts WHERE status IN (${ACTIVE.map(() => '?').join(',')})`)
      .all(...ACTIVE) as { doc: string }[];
    for (const r of rows) {
      const doc = JSON.parse(r.doc) as RolloutDoc;
      const devices = new Map(this.loadDevices(doc.id).map((d) => [d.deviceId, d]));
      this.active.set(doc.id, { doc, devices });
      for (const d of devices.values()) this.byDevice.set(d.deviceId, doc.id);
      this.log(`resuming rollout ${doc.id} (${doc.status})`);
      const issued = [...devices.values()].filter((d) => d.status === 'issued' || d.status === 'in-progress');
      await Promise.all(issued.map((d) => this.publishDesired(d.deviceId, doc.desired)));
    }
    this.opts.fleet.on('change', this.onFleet);
    this.timer = setInterval(() => {
      for (const id of [...this.active.keys()]) this.evaluate(id);
    }, this.opts.tickMs ?? 1000);
    this.timer.unref();
    for (const id of [...this.active.keys()]) this.evaluate(id);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.opts.fleet.off('change', this.onFleet);
  }

  private log(msg: string, extra?: Record<string, unknown>): void {
    this.opts.log?.(msg, extra);
  }

  async create(spec: RolloutSpec): Promise<RolloutView> {
    const canary = spec.canary;
    if (!(typeof canary === 'number' && canary > 0 && canary <= 1)) throw new RolloutError(400, `canary must be a fraction in (0, 1], got ${String(canary)}`);
    const maxFailures = spec.maxFailures ?? 0;
    if (!Number.isInteger(maxFailures) || maxFailures < 0) throw new RolloutError(400, `maxFailures must be an integer >= 0, got ${String(maxFailures)}`);
    const maxFailureRate = spec.maxFailureRate ?? 1;
    if (!(maxFailureRate >= 0 && maxFailureRate <= 1)) throw new RolloutError(400, `maxFailureRate must be in [0, 1], got ${String(maxFailureRate)}`);
    const deviceTimeoutSec = spec.deviceTimeoutSec ?? 600;
    if (!(deviceTimeoutSec > 0)) throw new RolloutError(400, `deviceTimeoutSec must be > 0, got ${String(deviceTimeoutSec)}`);
    if (typeof spec.group !== 'string' || spec.group === '' || /[+#/]/.test(spec.group)) throw new RolloutError(400, `group must be a group name, got ${JSON.stringify(spec.group)}`);
    const policy = checkPolicy(spec.policy);
    const rec: BundleRecord | null = this.opts.registry.get(spec.bundle?.id, spec.bundle?.version);
    if (!rec) throw new RolloutError(404, `bundle ${spec.bundle?.id}@${spec.bundle?.version} is not in the registry; upload it first`);
    for (const a of this.active.values()) {
      if (a.doc.group === spec.group) throw new RolloutError(409, `rollout ${a.doc.id} to group '${spec.group}' is still ${a.doc.status}; wait for it or halt it first`);
    }
    const members = this.opts.fleet.members(spec.group);
    if (members.length === 0) throw new RolloutError(400, `group '${spec.group}' has no agents in the fleet view (agents list their groups in their health)`);
    const busy = members.filter((m) => this.byDevice.has(m.deviceId));
    if (busy.length) throw new RolloutError(409, `agents ${busy.map((b) => b.deviceId).join(', ')} are in another running rollout`);

    // online agents first so the canary can answer; stable order otherwise
    const ordered = [...members].sort((a, b) => Number(b.online === true) - Number(a.online === true) || a.deviceId.localeCompare(b.deviceId));
    const nCanary = Math.max(1, Math.ceil(canary * ordered.length));
    const now = new Date().toISOString();
    const id = newId();
    const desired: DesiredModel = {
      rolloutId: id,
      id: rec.id,
      version: rec.version,
      url: bundleUrl(this.opts.publicUrl, rec.id, rec.version),
      sha256: rec.sha256,
      size: rec.size,
      issuedAt: now,
      ...(policy ? { policy } : {}),
    };
    const doc: RolloutDoc = {
      id,
      group: spec.group,
      bundle: { id: rec.id, version: rec.version, sha256: rec.sha256, size: rec.size },
      canary,
      maxFailures,
      maxFailureRate,
      deviceTimeoutSec,
      desired,
      status: 'canary',
      reason: null,
      createdBy: spec.createdBy ?? null,
      createdAt: now,
      updatedAt: now,
      finishedAt: null,
    };
    const devices = new Map<string, RolloutDevice>();
    ordered.forEach((m, i) => {
      devices.set(m.deviceId, {
        deviceId: m.deviceId,
        wave: i < nCanary ? 'canary' : 'rest',
        status: 'pending',
        phase: null,
        reason: null,
        previous: this.previousOf(m, spec.group),
        issuedAt: null,
        updatedAt: now,
      });
    });
    const insertDev = this.opts.db.prepare(
      `INSERT INTO rollout_devices (rollout_id, device_id, wave, status, phase, reason, previous, issued_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.opts.db.transaction(() => {
      this.opts.db.prepare('INSERT INTO rollouts (id, doc, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?)').run(id, JSON.stringify(doc), doc.status, now, now);
      for (const d of devices.values()) insertDev.run(id, d.deviceId, d.wave, d.status, null, null, JSON.stringify(d.previous), null, now);
    })();
    const act: Active = { doc, devices };
    this.active.set(id, act);
    for (const d of devices.values()) this.byDevice.set(d.deviceId, id);
    this.log(`rollout ${id}: ${rec.id}@${rec.version} to group ${spec.group} (${ordered.length} agents, canary ${nCanary})`);
    await this.issue(act, 'canary');
    this.evaluate(id);
    return this.view(id) as RolloutView;
  }

  /** What a device would go back to: its own desired doc, else its group's, else what it serves now. */
  private previousOf(a: AgentView, group: string): RolloutDevice['previous'] {
    const doc = a.desired ?? this.opts.fleet.groupDesired.get(group) ?? null;
    const s = a.health?.model ?? a.modelState?.serving ?? null;
    return { doc, serving: s ? { id: s.id, version: s.version } : null };
  }

  private async issue(act: Active, wave: 'canary' | 'rest'): Promise<void> {
    const now = new Date().toISOString();
    const targets = [...act.devices.values()].filter((d) => d.wave === wave && d.status === 'pending');
    const upd = this.opts.db.prepare('UPDATE rollout_devices SET status = ?, issued_at = ?, updated_at = ? WHERE rollout_id = ? AND device_id = ?');
    this.opts.db.transaction(() => {
      for (const d of targets) {
        d.status = 'issued';
        d.issuedAt = now;
        d.updatedAt = now;
        upd.run(d.status, now, now, act.doc.id, d.deviceId);
      }
    })();
    await Promise.all(targets.map((d) => this.publishDesired(d.deviceId, act.doc.desired)));
    this.emit('change', act.doc.id);
  }

  private async publishDesired(deviceId: string, doc: DesiredModel | null): Promise<void> {
    try {
      await this.opts.client.publishAsync(this.topics.desiredModel(deviceId), doc ? JSON.stringify(doc) : '', { qos: 1, retain: true });
    } catch (e) {
      // the client queues while disconnected; a failure here is logged and the deadline still applies
      this.log(`publishing desired/model for ${deviceId} failed: ${(e as Error).message}`);
    }
  }

  /**
   * Folds the fleet's view of the devices (one device on a fleet event, all of them on the deadline tick)
   * into their rollout status and moves the rollout on.
   */
  private evaluate(id: string, onlyDevice?: string): void {
    const act = this.active.get(id);
    if (!act) return;
    const { doc } = act;
    const now = Date.now();
    const changed: RolloutDevice[] = [];
    const one = onlyDevice === undefined ? undefined : act.devices.get(onlyDevice);
    for (const d of one ? [one] : act.devices.values()) {
      if (d.status === 'pending' || d.status === 'reverted') continue;
      const a = this.opts.fleet.agents.get(d.deviceId);
      const ms: ModelState | null = a?.modelState ?? null;
      let status = d.status;
      let phase = d.phase;
      let reason = d.reason;
      if (ms && ms.rolloutId === doc.id) {
        phase = ms.phase;
        if (ms.phase === 'active' && (!ms.serving || ms.serving.version === doc.bundle.version)) status = 'succeeded';
        else if (ms.phase === 'rolled-back' || ms.phase === 'failed') {
          status = 'failed';
          reason = ms.reason ?? `agent reported ${ms.phase}`;
        } else if (!TERMINAL_PHASES.includes(ms.phase)) status = 'in-progress';
      } else if (
        a?.health?.model?.id === doc.bundle.id &&
        a.health.model.version === doc.bundle.version &&
        (!ms || TERMINAL_PHASES.includes(ms.phase)) &&
        (d.status === 'issued' || d.status === 'in-progress')
      ) {
        // already serving this version (no new model/state needed)
        status = 'succeeded';
        phase = 'active';
      }
      if ((status === 'issued' || status === 'in-progress') && d.issuedAt && now - Date.parse(d.issuedAt) > doc.deviceTimeoutSec * 1000) {
        if (status === 'issued' && phase === null && a?.online === false) {
          // powered off (a scanner at night): never started, so nothing failed; the retained document waits
          status = 'offline';
          reason = `offline since before its document; it applies ${doc.bundle.version} when it reconnects`;
        } else {
          status = 'timed-out';
          reason = `no terminal phase within ${doc.deviceTimeoutSec} s (last phase: ${phase ?? 'none'}${a?.online === false ? ', agent offline' : ''})`;
        }
      }
      if (status !== d.status || phase !== d.phase || reason !== d.reason) {
        d.status = status;
        d.phase = phase;
        d.reason = reason;
        d.updatedAt = new Date().toISOString();
        changed.push(d);
      }
    }
    if (changed.length) {
      const upd = this.opts.db.prepare('UPDATE rollout_devices SET status = ?, phase = ?, reason = ?, updated_at = ? WHERE rollout_id = ? AND device_id = ?');
      this.opts.db.transaction(() => {
        for (const d of changed) upd.run(d.status, d.phase, d.reason, d.updatedAt, id, d.deviceId);
      })();
      this.emit('change', id);
    }
    if ((changed.length || onlyDevice === undefined) && ACTIVE.includes(doc.status)) void this.advance(act).catch((e: unknown) => this.log(`rollout ${id}: ${(e as Error).message}`));
  }

  /** Rollouts whose advance() is running -> whether another pass was asked for meanwhile. */
  private readonly advancing = new Map<string, boolean>();

  private async advance(act: Active): Promise<void> {
    const { doc } = act;
    if (this.advancing.has(doc.id)) {
      this.advancing.set(doc.id, true);
      return;
    }
    this.advancing.set(doc.id, false);
    try {
      const all = [...act.devices.values()];
      const failures = all.filter((d) => FAILED.includes(d.status));
      if (failures.length > doc.maxFailures) {
        const first = failures.map((f) => `${f.deviceId}: ${f.reason ?? f.status}`).slice(0, 3).join('; ');
        await this.rollback(act, `${failures.length} failed (max ${doc.maxFailures}) in the ${doc.status === 'canary' ? 'canary' : 'rollout'}: ${first}`);
        return;
      }
      const wave = doc.status === 'canary' ? 'canary' : 'rest';
      const inWave = all.filter((d) => d.wave === wave);
      if (!inWave.every((d) => DONE.includes(d.status))) return;
      const issued = all.filter((d) => d.status !== 'pending');
      const rate = issued.length ? failures.length / issued.length : 0;
      if (rate > doc.maxFailureRate) {
        await this.rollback(act, `failure rate ${(rate * 100).toFixed(1)}% above ${(doc.maxFailureRate * 100).toFixed(1)}% after the ${wave} wave`);
        return;
      }
      if (doc.status === 'canary' && all.some((d) => d.wave === 'rest')) {
        this.setStatus(act, 'widening', null);
        this.log(`rollout ${doc.id}: canary passed, widening to the rest of ${doc.group}`);
        await this.issue(act, 'rest');
        return;
      }
      // every device done within the criteria: the group document makes late joiners converge
      await this.opts.client.publishAsync(this.topics.groupDesiredModel(doc.group), JSON.stringify(doc.desired), { qos: 1, retain: true });
      const offline = all.filter((d) => d.status === 'offline').length;
      const notes = [
        ...(failures.length ? [`${failures.length} device(s) failed within the allowed ${doc.maxFailures}`] : []),
        ...(offline ? [`${offline} device(s) offline: their retained document applies when they reconnect`] : []),
      ];
      this.setStatus(act, 'succeeded', notes.length ? notes.join('; ') : null);
      this.log(`rollout ${doc.id}: succeeded`);
      this.finish(act);
    } finally {
      const again = this.advancing.get(doc.id) === true;
      this.advancing.delete(doc.id);
      if (again && this.active.has(doc.id)) await this.advance(act);
    }
  }

  private setStatus(act: Active, status: RolloutStatus, reason: string | null): void {
    const now = new Date().toISOString();
    act.doc.status = status;
    act.doc.reason = reason;
    act.doc.updatedAt = now;
    if (!ACTIVE.includes(status)) act.doc.finishedAt = now;
    this.opts.db.prepare('UPDATE rollouts SET doc = ?, status = ?, updated_at = ? WHERE id = ?').run(JSON.stringify(act.doc), status, now, act.doc.id);
    this.emit('change', act.doc.id);
  }

  private finish(act: Active): void {
    this.active.delete(act.doc.id);
    for (const d of act.devices.keys()) if (this.byDevice.get(d) === act.doc.id) this.byDevice.delete(d);
  }

  /** Halts and reverts every issued device (see the file comment). */
  private async rollback(act: Active, reason: string): Promise<void> {
    const { doc } = act;
    this.log(`rollout ${doc.id}: halting and rolling back: ${reason}`);
    this.setStatus(act, 'rolled-back', reason);
    this.finish(act);
    const rollbackId = `${doc.id}~rollback`;
    const now = new Date().toISOString();
    const upd = this.opts.db.prepare('UPDATE rollout_devices SET status = ?, reason = ?, updated_at = ? WHERE rollout_id = ? AND device_id = ?');
    const jobs: Promise<void>[] = [];
    for (const d of act.devices.values()) {
      if (d.status === 'pending') continue;
      let target: DesiredModel | null = null;
      const prev = d.previous;
      if (prev?.doc) target = { ...prev.doc, rolloutId: rollbackId, issuedAt: now };
      else if (prev?.serving) {
        const rec = this.opts.registry.get(prev.serving.id, prev.serving.version);
        if (rec) {
          target = { rolloutId: rollbackId, id: rec.id, version: rec.version, url: bundleUrl(this.opts.publicUrl, rec.id, rec.version), sha256: rec.sha256, size: rec.size, issuedAt: now };
        }
      }
      if (d.status !== 'failed') {
        d.reason = target ? `reverted to ${target.id}@${target.version}` : 'desired state cleared; rollback command sent';
        d.status = 'reverted';
      } else d.reason = `${d.reason ?? 'failed'}; reverted`;
      d.updatedAt = now;
      upd.run(d.status, d.reason, now, doc.id, d.deviceId);
      jobs.push(this.publishDesired(d.deviceId, target));
      if (!target && prev?.serving) {
        jobs.push(
          this.opts.client
            .publishAsync(this.topics.request(d.deviceId, 'rollback'), JSON.stringify({ transaction: rollbackId, data: { version: prev.serving.version } }), { qos: 1 })
            .then(() => undefined)
            .catch(() => undefined),
        );
      }
    }
    await Promise.all(jobs);
    this.emit('change', doc.id);
  }

  /** The running rollout that ships this bundle, if any (a bundle agents may still download). */
  usedBy(id: string, version: string): string | null {
    for (const a of this.active.values()) if (a.doc.bundle.id === id && a.doc.bundle.version === version) return a.doc.id;
    return null;
  }

  /** Operator halt: stops the rollout and reverts the devices it touched. */
  async halt(id: string, by = 'operator'): Promise<RolloutView> {
    const act = this.active.get(id);
    if (!act) {
      const v = this.view(id);
      if (!v) throw new RolloutError(404, `no rollout '${id}'`);
      throw new RolloutError(409, `rollout ${id} already ${v.status}`);
    }
    await this.rollback(act, `halted by ${by}`);
    return this.view(id) as RolloutView;
  }

  private loadDevices(id: string): RolloutDevice[] {
    const rows = this.opts.db.prepare('SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY wave, device_id').all(id) as {
      device_id: string;
      wave: 'canary' | 'rest';
      status: DeviceStatus;
      phase: string | null;
      reason: string | null;
      previous: string | null;
      issued_at: string | null;
      updated_at: string;
    }[];
    return rows.map((r) => ({
      deviceId: r.device_id,
      wave: r.wave,
      status: r.status,
      phase: r.phase,
      reason: r.reason,
      previous: r.previous ? (JSON.parse(r.previous) as RolloutDevice['previous']) : null,
      issuedAt: r.issued_at,
      updatedAt: r.updated_at,
    }));
  }

  view(id: string): RolloutView | null {
    const act = this.active.get(id);
    let doc: RolloutDoc;
    let devices: RolloutDevice[];
    if (act) {
      doc = act.doc;
      devices = [...act.devices.values()];
    } else {
      const r = this.opts.db.prepare('SELECT doc FROM rollouts WHERE id = ?').get(id) as { doc: string } | undefined;
      if (!r) return null;
      doc = JSON.parse(r.doc) as RolloutDoc;
      devices = this.loadDevices(id);
    }
    const counts: RolloutView['counts'] = { total: devices.length, pending: 0, issued: 0, 'in-progress': 0, succeeded: 0, failed: 0, 'timed-out': 0, offline: 0, reverted: 0 };
    for (const d of devices) counts[d.status]++;
    devices.sort((a, b) => (a.wave === b.wave ? a.deviceId.localeCompare(b.deviceId) : a.wave === 'canary' ? -1 : 1));
    return { ...doc, counts, devices };
  }

  list(limit = 50): RolloutView[] {
    const rows = this.opts.db.prepare('SELECT id FROM rollouts ORDER BY created_at DESC, id DESC LIMIT ?').all(limit) as { id: string }[];
    return rows.map((r) => this.view(r.id)).filter((v): v is RolloutView => v !== null);
  }
}
