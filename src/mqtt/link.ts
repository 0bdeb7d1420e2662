/**
 * MqttLink: the agent's one connection to its broker (MQTT.js 5).
 *
 * Availability: the last will is a retained `{"state":"offline"}` on `<root>/state`; `online()` publishes
 * the retained online state and the link republishes it after every reconnect while the agent is online,
 * because a broker restarted without persistence has forgotten it (zigbee2mqtt issue 9629).
 *
 * Results: durable delivery from an outbox the agent owns (SQLite). The outbox is the truth; the link only
 * keeps the rows currently in flight (at most `window`) and calls `source.ack(seq)` on PUBACK.
 *
 * Session choice: clean start (`clean: true`, MQTT 5 session expiry 0), and the link, not MQTT.js, resends
 * after a reconnect.
 *  - MQTT.js keeps unacknowledged QoS 1 PUBLISHes in its in-memory outgoing store and, on the next CONNACK,
 *    resends them one at a time (each waits for its PUBACK) before it even emits `connect`; it does so
 *    whatever `clean` is. That copy is lost with the process (MQTT.js issues 397, 1121), and if the link also
 *    resent from the outbox every in-flight row would go out twice.
 *  - So on every `close` the link removes its PUBLISHes from MQTT.js's store (`removeOutgoingMessage`),
 *    and on every connect it restarts from the oldest unacknowledged outbox row, pipelined up to `window`.
 *    A row is then sent at most once per connection; the only duplicates are rows the broker received but
 *    whose PUBACK was lost with the connection (inherent to QoS 1), and they carry the identical payload.
 *  - A persistent session (`clean: false` + session expiry) would oblige the client to resend those same
 *    packets on resume (MQTT 5 §4.4) and buys nothing for publishing: the broker only queues messages *to*
 *    us. A broker restarted without persistence forgets sessions anyway. Commands arriving while the agent
 *    is offline should not run late either. Clean start keeps one source of truth.
 *
 * Window: at most `window` (default 32) unacknowledged rows, clamped to the broker's MQTT 5 Receive
 * Maximum (mosquitto disconnects a client that exceeds it). Rows go out in seq order on one connection,
 * and a broker acknowledges QoS 1 in order, so subscribers see first arrivals in seq order.
 *
 * Nothing is published while disconnected: MQTT.js would queue it in memory. Errors published while
 * offline wait in a small bounded buffer (oldest dropped, counted): they are in the logs as well.
 *
 * Subscriptions (commands, desired state): `subscribe(filter, handler)` registers a handler per filter.
 * With a clean start the broker forgets subscriptions with the connection, so the link subscribes every
 * registered filter again (QoS 1) on every connect, before `connected` is emitted; a refused filter
 * (SUBACK 0x80+, e.g. an ACL) is logged and emitted as `subscribeRefused`. Inbound payloads are hostile
 * input: each has a size limit (default MAX_REQUEST_BYTES, 64 KiB); a bigger one is dropped with a warning
 * and handed to the subscription's `onOversize` (the command router answers it with an error). On MQTT 5
 * the CONNECT also declares a Maximum Packet Size (1 MiB by default), so the broker never even sends us a
 * larger packet. A handler that throws or rejects is logged, never a crash.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import mqtt from 'mqtt';
import type { IClientOptions, IConnackPacket, IDisconnectPacket, MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import type { IPublishPacket } from 'mqtt';
import { tapPublishes } from './publish-tap.js';
import { assertPublishTopic, deviceTopics, publishTopicProblem, type DeviceTopics } from './topics.js';
import type { OutboxRow, OutboxSource, StatePayload } from './types.js';

export type PemInput = string | Buffer | string[] | Buffer[];

export interface MqttTlsOptions {
  /** CA certificate(s) that signed the broker's certificate (PEM, already read by the caller). */
  ca?: PemInput;
  /** Client certificate for mutual TLS (PEM). */
  cert?: PemInput;
  /** Client private key for mutual TLS (PEM). */
  key?: string | Buffer;
  /** Verify the broker's certificate (default true). Turn off only for a lab broker. */
  rejectUnauthorized?: boolean;
  /** Name to verify the broker's certificate against when it differs from the URL host. */
  servername?: string;
}

export interface MqttLinkOptions {
  /** `mqtt://host:port` or `mqtts://host:port`. */
  url: string;
  deviceId: string;
  /** Default `imaging`. */
  baseTopic?: string;
  /** Default `imaging-edge-agent-<deviceId>`: a stable id, so a second instance is noticed (takeover). */
  clientId?: string;
  username?: string;
  password?: string | Buffer;
  tls?: MqttTlsOptions;
  /** Seconds; default 30. */
  keepaliveSec?: number;
  /** Delay between reconnect attempts in ms; default 2000. */
  reconnectPeriodMs?: number;
  /** Time allowed for TCP/TLS + CONNACK in ms; default 10000. */
  connectTimeoutMs?: number;
  /** MQTT 5 by default; 4 (3.1.1) for brokers that lack 5, such as the embedded aedes. */
  protocolVersion?: 4 | 5;
  /** Errors kept while offline, oldest dropped first; default 100. */
  maxBufferedErrors?: number;
  /** MQTT 5 Maximum Packet Size declared in CONNECT: the broker drops bigger packets meant for us. Default 1 MiB. */
  maxIncomingPacketBytes?: number;
  logger: Logger;
}

/**
 * Default size limit of an inbound payload: the fleet protocol's MAX_REQUEST_BYTES (src/fleet/protocol.ts;
 * tests/mqtt/subscribe.test.ts checks they agree). Kept here so src/mqtt does not depend on src/fleet.
 */
export const DEFAULT_MAX_INBOUND_BYTES = 64 * 1024;

/** A message that arrived on a subscribed filter. */
export interface InboundMessage {
  topic: string;
  /** The raw payload (empty for an oversized message handed to `onOversize`). */
  payload: Buffer;
  /** Size of the payload as received, in bytes. */
  bytes: number;
  retain: boolean;
  /** MQTT 5 Response Topic, when the sender set one. */
  responseTopic?: string;
  /** MQTT 5 Correlation Data, when the sender set it. */
  correlationData?: Buffer;
  /** MQTT 5 User Properties, when present. */
  userProperties?: Record<string, string | string[]>;
  /** sha256 (hex) of the dropped payload, on an oversized message handed to `onOversize` (for the audit log). */
  droppedSha256?: string;
}

export type MessageHandler = (message: InboundMessage) => void | Promise<void>;

export interface SubscribeOptions {
  /** Largest payload accepted; default DEFAULT_MAX_INBOUND_BYTES (64 KiB, the fleet protocol's MAX_REQUEST_BYTES). */
  maxBytes?: number;
  /** Called (instead of the handler) for a payload over `maxBytes`, with an empty `payload`. */
  onOversize?: (message: InboundMessage) => void;
}

export interface PublishOptions {
  retain?: boolean;
  /** MQTT 5 Correlation Data (ignored on MQTT 3.1.1). */
  correlationData?: Buffer;
  /** MQTT 5 Content Type (ignored on MQTT 3.1.1). */
  contentType?: string;
}

interface Subscription {
  filter: string;
  handler: MessageHandler;
  maxBytes: number;
  onOversize: ((message: InboundMessage) => void) | undefined;
}

/** Why `filter` is not a valid subscription filter, or null when it is. */
export function subscriptionFilterProblem(filter: string): string | null {
  if (typeof filter !== 'string' || filter.length === 0) return 'is empty';
  if (filter.includes('\u0000')) return 'contains a NUL character';
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]!;
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) return "uses '#' other than as the whole last level";
    if (level.includes('+') && level !== '+') return "uses '+' other than as a whole level";
  }
  return null;
}

/** True when `topic` matches the subscription `filter` (`+` one level, `#` the rest). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const level = f[i]!;
    if (level === '#') return !(i === 0 && topic.startsWith('$'));
    if (i >= t.length) return false;
    if (level === '+') {
      if (i === 0 && t[0]!.startsWith('$')) return false;
      continue;
    }
    if (level !== t[i]) return false;
  }
  return f.length === t.length;
}

export interface AttachOutboxOptions {
  /** Maximum unacknowledged rows in flight; default 32. */
  window?: number;
}

export type MqttLinkErrorKind = 'refused' | 'tls' | 'network' | 'protocol' | 'rejected';

export class MqttLinkError extends Error {
  override name = 'MqttLinkError';
  constructor(
    message: string,
    readonly kind: MqttLinkErrorKind,
    readonly code?: number | string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface ConnectedEvent {
  /** False for the first connection of this link. */
  reconnect: boolean;
  sessionPresent: boolean;
  /** Effective outbox window on this connection. */
  window: number;
}

export interface DisconnectedEvent {
  reason: string;
}

export interface RejectedEvent {
  seq: number;
  topic: string;
  error: MqttLinkError;
}

export interface MqttLinkEvents {
  connected: [ConnectedEvent];
  disconnected: [DisconnectedEvent];
  /** Connection problems: refused (credentials), TLS, network, protocol. */
  linkError: [MqttLinkError];
  /** The broker refused an outbox row (PUBACK reason >= 0x80) or its topic is invalid; it is retried. */
  rejected: [RejectedEvent];
  /** An error report handed to publishError() (published now or buffered): health shows the last one. */
  errorReport: [Record<string, unknown>];
  /** Every registered filter was (re)subscribed on this connection (SUBACK received). */
  subscribed: [{ filters: string[]; refused: string[] }];
  /** The broker refused a subscription (SUBACK reason >= 0x80, e.g. not allowed by its ACL). */
  subscribeRefused: [{ filter: string; code: number }];
}

export interface MqttLinkStatus {
  connected: boolean;
  url: string;
  clientId: string;
  connectedSince: string | null;
  lastDisconnect: { at: string; reason: string } | null;
  lastError: string | null;
  connects: number;
  outbox: { attached: boolean; inflight: number; window: number; acked: number };
  bufferedErrors: number;
  droppedErrors: number;
}

interface FlushWaiter {
  target: number;
  resolve: (remaining: number) => void;
  timer: NodeJS.Timeout;
}

/** MQTT 5 CONNACK / 3.1.1 return codes that mean "fix the credentials or ACL, retrying will not help". */
const AUTH_REFUSAL_CODES = new Set([4, 5, 134, 135, 138, 140]);

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return '<invalid url>';
  }
}

function errorCode(err: unknown): string | number | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = err.code;
    if (typeof code === 'string' || typeof code === 'number') return code;
  }
  return undefined;
}

function isTlsError(code: string | number | undefined, message: string): boolean {
  if (typeof code === 'string') {
    if (code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_')) return true;
    if (/CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|HOSTNAME_MISMATCH|DEPTH_ZERO/.test(code)) return true;
  }
  return /\bSSL\b|\bTLS\b|certificate/i.test(message);
}

export class MqttLink extends EventEmitter<MqttLinkEvents> {
  readonly topics: DeviceTopics;
  private readonly opts: MqttLinkOptions;
  private readonly log: Logger;
  private readonly clientId: string;
  private client: MqttClient | undefined;

  /** Bumped on every connect and disconnect: callbacks from an older connection are ignored. */
  private generation = 0;
  private isConnected = false;
  private closed = false;
  private connects = 0;
  private connectedSince: Date | null = null;
  private lastDisconnect: { at: string; reason: string } | null = null;
  private lastError: MqttLinkError | null = null;
  /** Last error seen on the current connection attempt, used as the disconnect reason. */
  private pendingReason: string | null = null;
  private lastLoggedError: string | null = null;

  /** The state the agent declared (online()/offline()); republished after every connect. */
  private declaredState: StatePayload | null = null;

  private readonly maxBufferedErrors: number;
  private bufferedErrors: string[] = [];
  private droppedErrors = 0;

  private source: OutboxSource | undefined;
  private configuredWindow = 32;
  private window = 32;
  /** Rows published on the current connection and not yet acknowledged, in seq order. */
  private readonly inflight = new Map<number, OutboxRow>();
  /** Seqs handed out by the source and not yet acknowledged (survives reconnects, bounded by window). */
  private readonly unacked = new Set<number>();
  private handedOutMax = Number.NEGATIVE_INFINITY;
  /** Highest seq published on the current connection. */
  private cursor = 0;
  private acked = 0;
  private pumping = false;
  private pumpAgain = false;
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  private flushWaiters: FlushWaiter[] = [];
  private readonly connectWaiters = new Set<{ resolve: () => void; reject: (err: Error) => void }>();
  private readonly subscriptions = new Map<string, Subscription>();
  private dropped = 0;

  constructor(opts: MqttLinkOptions) {
    super();
    this.opts = opts;
    this.topics = deviceTopics(opts.baseTopic, opts.deviceId);
    this.clientId = opts.clientId ?? `imaging-edge-agent-${opts.deviceId}`;
    this.log = opts.logger.child({ url: redactUrl(opts.url) });
    this.maxBufferedErrors = Math.max(0, opts.maxBufferedErrors ?? 100);
    const protocol = (() => {
      try {
        return new URL(opts.url).protocol;
      } catch {
        return '';
      }
    })();
    if (!['mqtt:', 'mqtts:', 'tcp:', 'ssl:', 'tls:'].includes(protocol)) {
      throw new MqttLinkError(`MQTT url ${JSON.stringify(redactUrl(opts.url))} must start with mqtt:// or mqtts://`, 'protocol');
    }
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /** Starts connecting in the background (a broker that is down is retried every reconnect period). */
  start(): void {
    if (this.client !== undefined) return;
    if (this.closed) throw new MqttLinkError('MQTT link is closed', 'protocol');
    const o = this.opts;
    const will: NonNullable<IClientOptions['will']> = {
      topic: this.topics.state,
      payload: Buffer.from(JSON.stringify({ state: 'offline' } satisfies StatePayload)),
      qos: 1,
      retain: true,
    };
    const options: IClientOptions = {
      protocolVersion: o.protocolVersion ?? 5,
      clientId: this.clientId,
      clean: true,
      keepalive: o.keepaliveSec ?? 30,
      reconnectPeriod: o.reconnectPeriodMs ?? 2000,
      connectTimeout: o.connectTimeoutMs ?? 10_000,
      // A refused CONNACK (e.g. a password not yet rolled out to the broker) is retried like an outage;
      // the refusal is surfaced through `linkError`, status() and waitForConnection().
      reconnectOnConnackError: true,
      // The link subscribes its registered filters itself on every connect (it must know the SUBACKs).
      resubscribe: false,
      will,
    };
    if ((o.protocolVersion ?? 5) === 5) {
      options.properties = { sessionExpiryInterval: 0, maximumPacketSize: o.maxIncomingPacketBytes ?? 1024 * 1024 };
    }
    if (o.username !== undefined) options.username = o.username;
    if (o.password !== undefined) options.password = o.password;
    if (o.tls !== undefined) {
      if (o.tls.ca !== undefined) options.ca = o.tls.ca;
      if (o.tls.cert !== undefined) options.cert = o.tls.cert;
      if (o.tls.key !== undefined) options.key = o.tls.key;
      options.rejectUnauthorized = o.tls.rejectUnauthorized ?? true;
      if (o.tls.servername !== undefined) options.servername = o.tls.servername;
    }
    this.log.info({ clientId: this.clientId, protocolVersion: options.protocolVersion }, 'connecting to MQTT broker');
    const client = mqtt.connect(o.url, options);
    tapPublishes(client, will); // TEST-ONLY: inert unless EDGE_AGENT_TEST_PUBLISH_TAP is set (publish-tap.ts)
    this.client = client;
    client.on('connect', (packet) => this.onConnect(client, packet));
    client.on('close', () => this.onClose(client));
    client.on('error', (err) => this.onError(err));
    client.on('disconnect', (packet) => this.onServerDisconnect(packet));
    client.on('message', (topic, payload, packet) => this.onMessage(client, topic, payload, packet));
  }

  /**
   * Registers `handler` for messages on `filter` (QoS 1) and subscribes now when connected; the link
   * subscribes it again after every reconnect. One handler per filter (a second call replaces it).
   * Returns a function that unsubscribes.
   */
  subscribe(filter: string, handler: MessageHandler, opts: SubscribeOptions = {}): () => void {
    const problem = subscriptionFilterProblem(filter);
    if (problem !== null) throw new MqttLinkError(`invalid MQTT subscription filter ${JSON.stringify(filter)}: it ${problem}`, 'protocol');
    const maxBytes = opts.maxBytes ?? DEFAULT_MAX_INBOUND_BYTES;
    if (!Number.isInteger(maxBytes) || maxBytes < 0) throw new RangeError(`maxBytes must be a non-negative integer, got ${maxBytes}`);
    const sub: Subscription = { filter, handler, maxBytes, onOversize: opts.onOversize };
    const existed = this.subscriptions.has(filter);
    this.subscriptions.set(filter, sub);
    if (!existed && this.isConnected) this.subscribeOn(this.client, [filter]);
    return () => {
      if (this.subscriptions.get(filter) !== sub) return;
      this.subscriptions.delete(filter);
      const client = this.client;
      if (this.isConnected && client !== undefined) {
        client.unsubscribe(filter, (err?: Error) => {
          if (err) this.log.warn({ err, filter }, 'unsubscribe failed');
        });
      }
    };
  }

  /** Filters registered with subscribe(). */
  get subscribedFilters(): string[] {
    return [...this.subscriptions.keys()];
  }

  /** Inbound messages dropped for their size since start. */
  get droppedMessages(): number {
    return this.dropped;
  }

  /**
   * Resolves once connected; rejects when the broker refuses the credentials, TLS fails, or the timeout
   * passes. An outage alone does not reject before the timeout: the link keeps retrying.
   */
  waitForConnection(timeoutMs: number): Promise<void> {
    if (this.isConnected) return Promise.resolve();
    if (this.closed) return Promise.reject(new MqttLinkError('MQTT link is closed', 'network'));
    return new Promise<void>((resolve, reject) => {
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          this.connectWaiters.delete(waiter);
          resolve();
        },
        reject: (err: Error) => {
          clearTimeout(timer);
          this.connectWaiters.delete(waiter);
          reject(err);
        },
      };
      const timer = setTimeout(() => {
        const why = this.lastError !== null ? `: ${this.lastError.message}` : '';
        waiter.reject(new MqttLinkError(`no connection to MQTT broker ${redactUrl(this.opts.url)} within ${timeoutMs} ms${why}`, 'network'));
      }, timeoutMs);
      this.connectWaiters.add(waiter);
    });
  }

  /**
   * Declares the agent online: publishes the retained online state now (if connected) and again after
   * every reconnect. Resolves when the broker acknowledged it, or at once when offline (it goes out on
   * connect). Never rejects: a lost connection is handled by the republish.
   */
  online(extra: Record<string, unknown> = {}): Promise<void> {
    this.declaredState = { ...extra, state: 'online' };
    return this.publishState(this.declaredState);
  }

  /** Declares the agent offline (retained), e.g. while no model can serve; also republished on connect. */
  offline(extra: Record<string, unknown> = {}): Promise<void> {
    this.declaredState = { ...extra, state: 'offline' };
    return this.publishState(this.declaredState);
  }

  /** Publishes an error (QoS 1, not retained). Offline: kept in a small bounded buffer, oldest dropped. */
  publishError(payload: object): void {
    let text: string;
    try {
      text = JSON.stringify(payload);
    } catch (err) {
      this.log.error({ err }, 'error payload is not serialisable to JSON; not published');
      return;
    }
    if (this.listenerCount('errorReport') > 0) this.emit('errorReport', payload as Record<string, unknown>);
    if (this.isConnected && this.client !== undefined) {
      this.send(this.topics.error, text, false, 'error');
      return;
    }
    if (this.maxBufferedErrors === 0) {
      this.droppedErrors++;
      return;
    }
    if (this.bufferedErrors.length >= this.maxBufferedErrors) {
      this.bufferedErrors.shift();
      this.droppedErrors++;
    }
    this.bufferedErrors.push(text);
  }

  /**
   * Publishes the retained health snapshot (QoS 1). Dropped when offline: the next one replaces it.
   * Never rejects (a failure is logged).
   */
  publishHealth(payload: object): Promise<void> {
    return this.publishIfConnected(this.topics.health, JSON.stringify(payload), true).catch((err: unknown) => {
      this.log.warn({ err }, 'health not published');
    });
  }

  /**
   * Publishes one message now (QoS 1). Resolves on PUBACK; rejects when offline (nothing is queued in
   * memory) or when the topic holds a wildcard. For durable messages use the outbox.
   */
  publish(topic: string, payload: string | Buffer, opts: PublishOptions = {}): Promise<void> {
    assertPublishTopic(topic);
    return this.publishIfConnected(topic, payload, opts.retain ?? false, true, opts);
  }

  /** Attaches the durable outbox and starts delivering from its oldest row. */
  attachOutbox(source: OutboxSource, opts: AttachOutboxOptions = {}): void {
    if (this.source !== undefined) throw new Error('an outbox is already attached to this MQTT link');
    const window = opts.window ?? 32;
    if (!Number.isInteger(window) || window < 1 || window > 65_535) {
      throw new RangeError(`outbox window must be an integer in 1..65535, got ${window}`);
    }
    this.source = source;
    this.configuredWindow = window;
    this.window = Math.min(window, this.serverReceiveMaximum());
    this.cursor = 0;
    this.pump();
  }

  /** Tells the link that rows were added to the outbox. Cheap; safe to call often. */
  kick(): void {
    this.pump();
  }

  /**
   * Waits until every row handed out by the outbox so far is acknowledged, or the timeout passed.
   * Rows that fit in the window are handed out first. Resolves with the number still unacknowledged.
   */
  flush(timeoutMs: number): Promise<number> {
    this.pump();
    const target = this.handedOutMax;
    const remaining = this.countUnackedUpTo(target);
    if (remaining === 0 || timeoutMs <= 0) return Promise.resolve(remaining);
    return new Promise<number>((resolve) => {
      const waiter: FlushWaiter = {
        target,
        resolve,
        timer: setTimeout(() => {
          this.flushWaiters = this.flushWaiters.filter((w) => w !== waiter);
          resolve(this.countUnackedUpTo(target));
        }, timeoutMs),
      };
      this.flushWaiters.push(waiter);
    });
  }

  status(): MqttLinkStatus {
    return {
      connected: this.isConnected,
      url: redactUrl(this.opts.url),
      clientId: this.clientId,
      connectedSince: this.connectedSince?.toISOString() ?? null,
      lastDisconnect: this.lastDisconnect,
      lastError: this.lastError?.message ?? null,
      connects: this.connects,
      outbox: { attached: this.source !== undefined, inflight: this.inflight.size, window: this.window, acked: this.acked },
      bufferedErrors: this.bufferedErrors.length,
      droppedErrors: this.droppedErrors,
    };
  }

  /**
   * Publishes the retained offline state (if connected, waiting up to `timeoutMs` for its PUBACK) and
   * ends the connection with a normal DISCONNECT (the broker then discards the will). Idempotent.
   */
  async close(timeoutMs = 5000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.declaredState = null;
    for (const t of this.retryTimers) clearTimeout(t);
    this.retryTimers.clear();
    const client = this.client;
    if (client !== undefined && this.isConnected) {
      const offline = this.publishState({ state: 'offline' });
      const timeout = new Promise<void>((resolve) => setTimeout(resolve, timeoutMs).unref());
      await Promise.race([offline, timeout]);
    }
    if (client !== undefined) {
      // MQTT.js's end() waits for every unacknowledged PUBLISH first. Outbox rows still in flight stay in
      // the outbox (call flush() before close() to wait for them), so drop them and disconnect now.
      this.generation++;
      this.forgetClientPublishes(client);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          client.stream?.destroy();
          resolve();
        }, timeoutMs);
        timer.unref();
        client.end(false, () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    this.isConnected = false;
    this.generation++;
    for (const w of this.flushWaiters) {
      clearTimeout(w.timer);
      w.resolve(this.countUnackedUpTo(w.target));
    }
    this.flushWaiters = [];
    for (const w of [...this.connectWaiters]) w.reject(new MqttLinkError('MQTT link closed', 'network'));
    this.log.info('MQTT link closed');
  }

  // ---------------------------------------------------------------------------------------------------

  private serverReceiveMaximum(): number {
    const rm = this.client?.connected === true ? this.client.serverProperties?.receiveMaximum : undefined;
    return typeof rm === 'number' && rm > 0 ? rm : 65_535;
  }

  private onConnect(client: MqttClient, packet: IConnackPacket): void {
    if (client !== this.client || this.closed) return;
    const reconnect = this.connects > 0;
    this.connects++;
    this.generation++;
    this.isConnected = true;
    this.connectedSince = new Date();
    this.pendingReason = null;
    this.lastError = null;
    this.lastLoggedError = null;
    this.window = Math.min(this.configuredWindow, this.serverReceiveMaximum());
    this.cursor = 0;
    this.inflight.clear();
    this.log.info({ reconnect, sessionPresent: packet.sessionPresent, window: this.window }, 'connected to MQTT broker');
    for (const w of [...this.connectWaiters]) w.resolve();
    // Subscriptions first (a clean start forgot them): the broker handles our packets in order, so whoever
    // sees the retained `online` below can already reach us with a command. Then the retained state, then
    // buffered errors, then the outbox from its oldest row.
    if (this.subscriptions.size > 0) this.subscribeOn(client, [...this.subscriptions.keys()]);
    if (this.declaredState !== null) void this.publishState(this.declaredState);
    const buffered = this.bufferedErrors;
    this.bufferedErrors = [];
    if (this.droppedErrors > 0) this.log.warn({ dropped: this.droppedErrors }, 'errors dropped while the broker was unreachable');
    for (const text of buffered) this.send(this.topics.error, text, false, 'error');
    this.emit('connected', { reconnect, sessionPresent: packet.sessionPresent, window: this.window });
    this.pump();
  }

  private subscribeOn(client: MqttClient | undefined, filters: string[]): void {
    if (client === undefined || filters.length === 0) return;
    const gen = this.generation;
    const request: Record<string, { qos: 1 }> = {};
    for (const f of filters) request[f] = { qos: 1 };
    client.subscribe(request, (err, granted) => {
      if (gen !== this.generation) return; // that connection is gone; the next connect subscribes again
      if (err) {
        this.log.warn({ err, filters }, 'subscribe failed; retried on the next connect');
        return;
      }
      const refused: string[] = [];
      for (const g of granted ?? []) {
        if (g.qos >= 0x80) {
          refused.push(g.topic);
          this.log.error({ filter: g.topic, code: g.qos }, `MQTT broker refused the subscription to ${g.topic} (reason code ${g.qos}; check its ACL)`);
          if (this.listenerCount('subscribeRefused') > 0) this.emit('subscribeRefused', { filter: g.topic, code: g.qos });
        }
      }
      this.log.debug({ filters, refused }, 'subscribed');
      this.emit('subscribed', { filters, refused });
    });
  }

  private onMessage(client: MqttClient, topic: string, payload: Buffer, packet: IPublishPacket): void {
    if (client !== this.client || this.closed) return;
    const props = packet.properties;
    const base = {
      topic,
      bytes: payload.length,
      retain: packet.retain,
      ...(typeof props?.responseTopic === 'string' ? { responseTopic: props.responseTopic } : {}),
      ...(Buffer.isBuffer(props?.correlationData) ? { correlationData: props.correlationData } : {}),
      ...(props?.userProperties !== undefined ? { userProperties: props.userProperties } : {}),
    };
    for (const sub of this.subscriptions.values()) {
      if (!topicMatches(sub.filter, topic)) continue;
      if (payload.length > sub.maxBytes) {
        this.dropped++;
        this.log.warn({ topic, bytes: payload.length, limit: sub.maxBytes }, `inbound message over the ${sub.maxBytes}-byte limit dropped`);
        const droppedSha256 = createHash('sha256').update(payload).digest('hex');
        if (sub.onOversize) this.runHandler(sub, () => sub.onOversize!({ ...base, payload: Buffer.alloc(0), droppedSha256 }));
        continue;
      }
      this.runHandler(sub, () => sub.handler({ ...base, payload }));
    }
  }

  /** Runs a handler so that a throw or a rejection is logged, never an uncaught error. */
  private runHandler(sub: Subscription, fn: () => void | Promise<void>): void {
    try {
      const r = fn();
      if (r instanceof Promise) r.catch((err: unknown) => this.log.error({ err, filter: sub.filter }, 'message handler failed'));
    } catch (err) {
      this.log.error({ err, filter: sub.filter }, 'message handler failed');
    }
  }

  private onClose(client: MqttClient): void {
    if (client !== this.client) return;
    // Make MQTT.js forget our unacknowledged PUBLISHes, so it does not resend them on the next CONNACK:
    // the outbox resends them itself, from the oldest unacknowledged row.
    this.generation++;
    this.forgetClientPublishes(client);
    this.inflight.clear();
    this.cursor = 0;
    for (const t of this.retryTimers) clearTimeout(t);
    this.retryTimers.clear();
    const reason = this.pendingReason ?? 'connection closed by the broker or the network';
    this.pendingReason = null;
    if (this.isConnected) {
      this.isConnected = false;
      this.connectedSince = null;
      this.lastDisconnect = { at: new Date().toISOString(), reason };
      if (!this.closed) this.log.warn({ reason, unacked: this.unacked.size }, 'disconnected from MQTT broker');
      this.emit('disconnected', { reason });
    }
  }

  /** Removes our unacknowledged PUBLISHes from MQTT.js's outgoing store (their callbacks are then stale). */
  private forgetClientPublishes(client: MqttClient): void {
    for (const [id, entry] of Object.entries(client.outgoing)) {
      if (entry.cmd === 'publish') client.removeOutgoingMessage(Number(id));
    }
  }

  private onServerDisconnect(packet: IDisconnectPacket): void {
    const rc = packet.reasonCode ?? 0;
    const text = packet.properties?.reasonString;
    this.pendingReason = `broker sent DISCONNECT (reason code ${rc}${text !== undefined ? `: ${text}` : ''})`;
  }

  private onError(err: Error): void {
    const code = errorCode(err);
    let linkErr: MqttLinkError;
    const url = redactUrl(this.opts.url);
    if (err.name === 'ErrorWithReasonCode' && err.message.startsWith('Connection refused') && typeof code === 'number') {
      const hint = AUTH_REFUSAL_CODES.has(code) ? ' (check the MQTT username, password or client certificate)' : '';
      linkErr = new MqttLinkError(`MQTT broker ${url} refused the connection: ${err.message.replace(/^Connection refused: /, '')} (reason code ${code})${hint}`, 'refused', code, { cause: err });
    } else if (isTlsError(code, err.message)) {
      linkErr = new MqttLinkError(`TLS with MQTT broker ${url} failed: ${err.message.trim()}${code !== undefined ? ` (${code})` : ''}`, 'tls', code, { cause: err });
    } else if (typeof code === 'string') {
      linkErr = new MqttLinkError(`MQTT connection to ${url} failed: ${err.message}`, 'network', code, { cause: err });
    } else {
      linkErr = new MqttLinkError(`MQTT connection to ${url}: ${err.message}`, 'protocol', code, { cause: err });
    }
    this.lastError = linkErr;
    this.pendingReason = linkErr.message;
    // An unreachable broker is retried every few seconds: log each distinct problem once per outage.
    if (linkErr.message !== this.lastLoggedError) {
      this.lastLoggedError = linkErr.message;
      this.log.error({ kind: linkErr.kind, code }, linkErr.message);
    }
    if (linkErr.kind === 'refused' || linkErr.kind === 'tls') {
      for (const w of [...this.connectWaiters]) w.reject(linkErr);
    }
    if (this.listenerCount('linkError') > 0) this.emit('linkError', linkErr);
  }

  private publishState(payload: StatePayload): Promise<void> {
    return this.publishIfConnected(this.topics.state, JSON.stringify(payload), true).catch((err: unknown) => {
      // Connection lost before the PUBACK: the declared state goes out again on the next connect.
      this.log.warn({ err, state: payload.state }, 'state not acknowledged by the broker');
    });
  }

  private publishIfConnected(topic: string, payload: string | Buffer, retain: boolean, rejectOffline = false, extra: PublishOptions = {}): Promise<void> {
    const client = this.client;
    if (!this.isConnected || client === undefined) {
      return rejectOffline ? Promise.reject(new MqttLinkError(`not connected to MQTT broker; ${topic} not published`, 'network')) : Promise.resolve();
    }
    const options: { qos: 1; retain: boolean; properties?: { correlationData?: Buffer; contentType?: string } } = { qos: 1, retain };
    if ((this.opts.protocolVersion ?? 5) === 5 && (extra.correlationData !== undefined || extra.contentType !== undefined)) {
      options.properties = {};
      if (extra.correlationData !== undefined) options.properties.correlationData = extra.correlationData;
      if (extra.contentType !== undefined) options.properties.contentType = extra.contentType;
    }
    return new Promise<void>((resolve, reject) => {
      client.publish(topic, payload, options, (err) => {
        if (err) reject(err);
        else resolve();
      });
    });
  }

  /** Fire-and-forget QoS 1 publish for non-durable messages (errors). */
  private send(topic: string, payload: string, retain: boolean, what: string): void {
    this.client?.publish(topic, payload, { qos: 1, retain }, (err) => {
      if (err) this.log.warn({ err, topic }, `${what} message not acknowledged by the broker`);
    });
  }

  private countUnackedUpTo(target: number): number {
    let n = 0;
    for (const seq of this.unacked) if (seq <= target) n++;
    return n;
  }

  private pump(): void {
    if (this.source === undefined || !this.isConnected || this.closed) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        while (this.isConnected && this.inflight.size < this.window) {
          const want = this.window - this.inflight.size;
          let rows: OutboxRow[];
          try {
            rows = this.source.next(this.cursor, want);
          } catch (err) {
            this.log.error({ err }, 'reading the outbox failed; retrying later');
            this.scheduleRetry(() => this.pump());
            return;
          }
          if (this.cursor === 0) this.forgetVanished(rows[0]?.seq);
          let sent = 0;
          for (const row of rows) if (this.sendRow(row)) sent++;
          if (rows.length < want || sent === 0) break;
        }
      } while (this.pumpAgain && this.isConnected);
    } finally {
      this.pumping = false;
    }
  }

  /**
   * On a fresh pass from the oldest row, anything handed out earlier that now sorts before the oldest row
   * is no longer in the outbox (removed by its owner): stop waiting for it in flush().
   */
  private forgetVanished(oldest: number | undefined): void {
    for (const seq of this.unacked) if (oldest === undefined || seq < oldest) this.unacked.delete(seq);
  }

  private sendRow(row: OutboxRow): boolean {
    if (row.seq <= this.cursor) {
      // A source must return ascending seq > afterSeq; sending this again would break the order.
      this.log.error({ seq: row.seq, after: this.cursor }, 'outbox returned a row out of order; skipped');
      return false;
    }
    this.cursor = row.seq;
    this.inflight.set(row.seq, row);
    this.unacked.add(row.seq);
    if (row.seq > this.handedOutMax) this.handedOutMax = row.seq;
    this.publishRow(row);
    return true;
  }

  private publishRow(row: OutboxRow): void {
    const client = this.client;
    if (client === undefined) return;
    const problem = publishTopicProblem(row.topic);
    if (problem !== null) {
      this.rowRejected(this.generation, row, new MqttLinkError(`outbox row ${row.seq}: refusing to publish to topic ${JSON.stringify(row.topic)}: it ${problem}`, 'rejected'));
      return;
    }
    const gen = this.generation;
    client.publish(row.topic, row.payload, { qos: 1 }, (err) => {
      if (gen !== this.generation || !this.isConnected) return; // connection gone: the outbox resends it
      if (err) {
        const code = errorCode(err);
        this.rowRejected(gen, row, new MqttLinkError(`broker rejected outbox row ${row.seq} on ${row.topic}: ${err.message}`, 'rejected', code, { cause: err }));
        return;
      }
      this.rowAcked(row);
    });
  }

  private rowAcked(row: OutboxRow): void {
    this.inflight.delete(row.seq);
    this.unacked.delete(row.seq);
    this.acked++;
    try {
      this.source?.ack(row.seq);
    } catch (err) {
      // The row stays in the outbox and goes out again after a restart: a duplicate, never a loss.
      this.log.error({ err, seq: row.seq }, 'outbox ack failed');
    }
    if (this.flushWaiters.length > 0) {
      this.flushWaiters = this.flushWaiters.filter((w) => {
        const remaining = this.countUnackedUpTo(w.target);
        if (remaining > 0) return true;
        clearTimeout(w.timer);
        w.resolve(0);
        return false;
      });
    }
    this.pump();
  }

  /** A refused row keeps its window slot and is retried later; the outbox keeps it meanwhile. */
  private rowRejected(gen: number, row: OutboxRow, error: MqttLinkError): void {
    this.log.error({ seq: row.seq, topic: row.topic, code: error.code }, error.message);
    if (this.listenerCount('rejected') > 0) this.emit('rejected', { seq: row.seq, topic: row.topic, error });
    this.scheduleRetry(() => {
      if (gen === this.generation && this.isConnected && this.inflight.has(row.seq)) this.publishRow(row);
    });
  }

  private scheduleRetry(fn: () => void): void {
    const delay = Math.max(1000, this.opts.reconnectPeriodMs ?? 2000);
    const timer = setTimeout(() => {
      this.retryTimers.delete(timer);
      fn();
    }, delay);
    timer.unref();
    this.retryTimers.add(timer);
  }
}

