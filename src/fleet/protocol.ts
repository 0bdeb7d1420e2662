/**
 * The fleet protocol: what agents and the central server (central/) say to each other over MQTT.
 * Both sides import these types and topic builders, so the two cannot drift apart. docs/MQTT.md is
 * the human-readable version; change both together (and add a migration note there when a field
 * changes meaning).
 *
 * Topics, under `<base>` (config mqtt.baseTopic, default `imaging`):
 *
 *   <base>/<device>/state                 retained  {"state":"online"|"offline", ...}   (agent; last will offline)
 *   <base>/<device>/health                retained  HealthPayload                        (agent, every N s and on change)
 *   <base>/<device>/result                QoS 1     classification result                (agent)
 *   <base>/<device>/error                 QoS 1     error report                         (agent)
 *   <base>/<device>/request/<cmd>         QoS 1     CommandRequest                       (central -> one agent)
 *   <base>/group/<group>/request/<cmd>    QoS 1     CommandRequest                       (central -> every agent in group)
 *   <base>/<device>/response/<cmd>        QoS 1     CommandResponse                      (agent; also for group requests)
 *   <base>/<device>/desired/model         retained  DesiredModel | empty payload (clear)  (central)
 *   <base>/group/<group>/desired/model    retained  DesiredModel | empty payload (clear)  (central)
 *   <base>/<device>/model/state           retained  ModelState                           (agent, every rollout step)
 *
 * `group` is therefore a reserved device id. A device-level desired/model wins over any group-level one;
 * among groups, the document with the newest `issuedAt` wins.
 * MQTT 5 request/response: when a request carries a Response Topic and Correlation Data, the agent
 * answers there too (with the same correlation data); the `transaction` field works on MQTT 3.1.1.
 */

/** Device ids the fleet topics reserve. */
export const RESERVED_DEVICE_IDS = ['group'] as const;

/** Largest payload accepted on any subscribed topic (requests, desired state); bigger ones are refused. */
export const MAX_REQUEST_BYTES = 64 * 1024;

export const COMMANDS = [
  'ping',
  'get-config',
  'set-config',
  'pause',
  'resume',
  'reprocess',
  'models',
  'activate',
  'rollback',
  'restart',
] as const;
export type CommandName = (typeof COMMANDS)[number];

export interface FleetTopics {
  health(deviceId: string): string;
  state(deviceId: string): string;
  request(deviceId: string, cmd: string): string;
  groupRequest(group: string, cmd: string): string;
  response(deviceId: string, cmd: string): string;
  desiredModel(deviceId: string): string;
  groupDesiredModel(group: string): string;
  modelState(deviceId: string): string;
  /** Wildcards central subscribes to. */
  all: {
    health: string;
    state: string;
    modelState: string;
    responses: string;
    errors: string;
  };
}

export function fleetTopics(base = 'imaging'): FleetTopics {
  return {
    health: (d) => `${base}/${d}/health`,
    state: (d) => `${base}/${d}/state`,
    request: (d, cmd) => `${base}/${d}/request/${cmd}`,
    groupRequest: (g, cmd) => `${base}/group/${g}/request/${cmd}`,
    response: (d, cmd) => `${base}/${d}/response/${cmd}`,
    desiredModel: (d) => `${base}/${d}/desired/model`,
    groupDesiredModel: (g) => `${base}/group/${g}/desired/model`,
    modelState: (d) => `${base}/${d}/model/state`,
    all: {
      health: `${base}/+/health`,
      state: `${base}/+/state`,
      modelState: `${base}/+/model/state`,
      responses: `${base}/+/response/+`,
      errors: `${base}/+/error`,
    },
  };
}

/** Retained on `<device>/health`. */
export interface HealthPayload {
  deviceId: string;
  groups: string[];
  agentVersion: string;
  /** Seconds since the agent started. */
  uptimeSec: number;
  /** Device config identity: config `configId` (the device config's name, e.g. `ct-scanner`; default `default`). */
  configId: string;
  model: { id: string; version: string; sha256: string; runtime: string; provider: string; precision?: string } | null;
  /** Why a precision/runtime was chosen or refused on this hardware (e.g. "int8 slower than fp32 here: 1.3 vs 1.1 ms"). */
  notes?: string[];
  ingest: { paused: boolean; queueDepth: number };
  counts: { processed: number; failed: number; quarantined: number };
  /** End-to-end latency (ms) over the last `window` results. */
  latencyMs: { p50: number | null; p99: number | null; window: number };
  rssMb: number;
  /** Free bytes on the state directory's filesystem. */
  diskFreeBytes: number;
  lastError: { code: string; message: string; at: string } | null;
  /** ISO time this snapshot was made. */
  at: string;
}

/** Payload of `request/<cmd>`. Anything else (not JSON, not an object, unknown field types) is refused. */
export interface CommandRequest {
  /** Echoed in the response so the sender can match it (MQTT 3.1.1 has no correlation data). */
  transaction?: string;
  /** Command arguments; the schema per command lives in src/fleet/commands.ts. */
  data?: unknown;
}

export interface CommandResponse {
  status: 'ok' | 'error';
  deviceId: string;
  transaction: string | null;
  data: unknown;
  error: string | null;
}

/** Retained on `desired/model` by central: the model version this device or group should serve. */
export interface DesiredModel {
  /** Rollout identity (central's), echoed in every ModelState. */
  rolloutId: string;
  id: string;
  version: string;
  /** Bundle .tar on the central registry (http/https). */
  url: string;
  /** sha256 of the .tar file. */
  sha256: string;
  /** Size of the .tar in bytes (download cap). */
  size: number;
  /** ISO time central issued this document (newest wins among groups). */
  issuedAt: string;
  policy?: {
    /** Run the candidate beside the current model on the next N live images before activating (0: no shadow). */
    shadowImages?: number;
    /** Minimum label agreement in shadow (0..1) to activate. Default 0.9. */
    minAgreement?: number;
    /** After activation, watch this many images; an error rate above maxErrorRate rolls back. */
    observeImages?: number;
    maxErrorRate?: number;
  };
}

export type ModelPhase =
  | 'idle'
  | 'downloading'
  | 'verifying'
  | 'golden'
  | 'shadow'
  | 'activating'
  | 'observing'
  | 'active'
  | 'rolled-back'
  | 'failed';

/** Retained on `model/state` by the agent at every rollout step. */
export interface ModelState {
  deviceId: string;
  rolloutId: string | null;
  phase: ModelPhase;
  /** Version now serving. */
  serving: { id: string; version: string; sha256: string } | null;
  /** Version being installed (the desired one), if any. */
  target: { id: string; version: string } | null;
  /** Version rolled back to / kept, when phase is rolled-back or failed. */
  previous: { id: string; version: string } | null;
  /** Why (failure reason for rolled-back / failed; step detail otherwise). */
  reason: string | null;
  /** Shadow agreement so far (0..1) and images compared. */
  shadow?: { compared: number; agreement: number } | null;
  /** Download progress in bytes. */
  progress?: { bytes: number; total: number } | null;
  /** rolled-back / failed: the step that failed (`idle` for a document refused before any step). */
  failedPhase?: ModelPhase;
  /** rolled-back / failed: machine-readable cause, e.g. `hash-mismatch`, `bad-signature`, `golden-mismatch`, `low-agreement`, `error-rate`. */
  code?: string;
  at: string;
}

/** Terminal phases: a rollout step ends in one of these for a device. */
export const TERMINAL_PHASES: readonly ModelPhase[] = ['active', 'rolled-back', 'failed'];
