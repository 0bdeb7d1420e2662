/**
 * Fleet commands (issue 6): `<base>/<device>/request/<cmd>` and `<base>/group/<group>/request/<cmd>` in,
 * `<base>/<device>/response/<cmd>` out, with `{status, deviceId, transaction, data, error}`
 * (CommandResponse, src/fleet/protocol.ts; docs/MQTT.md "Commands").
 *
 * Requests are hostile input (issue 7): every payload is size-limited by the link (MAX_REQUEST_BYTES),
 * parsed as JSON and validated by the command's own JSON Schema (Ajv) before its handler runs. An unknown
 * command, a payload that is not JSON, too big, or fails the schema gets an error response and changes
 * nothing; a handler that throws gets an error response too. Nothing a sender can put in a request makes
 * the agent crash.
 *
 * Concurrency: commands that change state (`exclusive`, the default) run one at a time in arrival order;
 * read-only ones (ping, get-config, models) answer at once. At most `maxPending` requests wait; beyond that
 * a request is answered `busy` at once (a flood cannot grow memory).
 *
 * MQTT 5 request/response: when a request carries a Response Topic, the response also goes there, with
 * the request's Correlation Data. The `transaction` field (echoed) is what works on MQTT 3.1.1.
 *
 * Audit: every request, answered or refused, is recorded through `audit.command()` (src/store/audit.ts)
 * with the sha256 of its raw payload, never the payload itself.
 */
import { createHash } from 'node:crypto';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { Logger } from 'pino';
import { publishTopicProblem } from '../mqtt/topics.js';
import type { InboundMessage, MessageHandler, PublishOptions, SubscribeOptions } from '../mqtt/link.js';
import { MAX_REQUEST_BYTES, fleetTopics, type CommandResponse } from './protocol.js';

/** Who sent a request and how it arrived; passed to every handler. */
export interface CommandContext {
  cmd: string;
  /** The topic the request arrived on (a device or a group topic). */
  topic: string;
  /** The group, for a group request; null for a request to this device. */
  group: string | null;
  transaction: string | null;
  /**
   * Sender identity when the broker provides it (MQTT 5 user property `sender`, set by a broker plugin or
   * the central server), else null. Informational (audit); authorisation is the broker's ACL.
   */
  sender: string | null;
  /** Set by a handler to run something once the response went out (e.g. `restart`). */
  afterResponse?: () => void;
}

/** A handler's result is the response's `data`; throwing answers `status: "error"` with the message. */
export type CommandHandler = (data: unknown, ctx: CommandContext) => unknown;

/** An error answered with a message and, optionally, `data` (e.g. the list of problems). */
export class CommandError extends Error {
  override name = 'CommandError';
  constructor(
    message: string,
    readonly data: unknown = null,
  ) {
    super(message);
  }
}

/** The part of MqttLink the router uses. */
export interface CommandLink {
  subscribe(filter: string, handler: MessageHandler, opts?: SubscribeOptions): () => void;
  publish(topic: string, payload: string | Buffer, opts?: PublishOptions): Promise<void>;
}

/** The part of the audit log (src/store/audit.ts) the router uses. */
export interface CommandAudit {
  command(c: { cmd: string; sender: string | null; payloadSha256: string; outcome: string; transaction?: string | null; topic?: string | null }): unknown;
}

export interface CommandRouterOptions {
  deviceId: string;
  baseTopic: string;
  /** Groups whose requests this agent answers (config fleet.groups). */
  groups: string[];
  log: Logger;
  audit?: CommandAudit | undefined;
  /** Requests waiting for an exclusive command to finish; beyond it `busy`. Default 32. */
  maxPending?: number;
  /** Largest payload accepted; default MAX_REQUEST_BYTES. */
  maxBytes?: number;
}

export interface RegisterOptions {
  /** Runs one at a time with the other exclusive commands (default true). False for read-only commands. */
  exclusive?: boolean;
}

interface Registered {
  name: string;
  validate: ValidateFunction;
  handler: CommandHandler;
  exclusive: boolean;
}

const TRANSACTION = { type: 'string', maxLength: 128 } as const;
/** Names: one topic level, lower-case words. */
const COMMAND_NAME = /^[a-z][a-z0-9-]{0,63}$/;

const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
ajv.addKeyword({ keyword: 'x-restart', schemaType: 'boolean' });

/** Ajv errors as one line: `/data/hash: must match pattern ...; /data: must have required property 'x'`. */
export function schemaProblems(errors: ErrorObject[] | null | undefined): string[] {
  return (errors ?? []).map((e) => {
    let at = e.instancePath || '/';
    let message = e.message ?? 'is invalid';
    if (e.keyword === 'additionalProperties') {
      at = `${e.instancePath}/${(e.params as { additionalProperty: string }).additionalProperty}`;
      message = 'is not allowed';
    }
    return `${at}: ${message}`;
  });
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export class CommandRouter {
  private readonly commands = new Map<string, Registered>();
  private readonly log: Logger;
  private readonly maxPending: number;
  private readonly maxBytes: number;
  private readonly base: string;
  private unsubscribers: (() => void)[] = [];
  private chain: Promise<void> = Promise.resolve();
  private pending = 0;
  private link: CommandLink | undefined;
  private audit: CommandAudit | undefined;

  constructor(private readonly opts: CommandRouterOptions) {
    this.log = opts.log;
    this.maxPending = opts.maxPending ?? 32;
    this.maxBytes = opts.maxBytes ?? MAX_REQUEST_BYTES;
    this.base = opts.baseTopic;
    this.audit = opts.audit;
  }

  /**
   * Registers a command. `dataSchema` is the JSON Schema of the request's `data` (a missing `data` is
   * validated as `{}`); the envelope (`transaction`, `data`, nothing else) is the router's.
   */
  register(name: string, dataSchema: object, handler: CommandHandler, opts: RegisterOptions = {}): void {
    if (!COMMAND_NAME.test(name)) throw new Error(`invalid command name ${JSON.stringify(name)}`);
    if (this.commands.has(name)) throw new Error(`command ${name} is already registered`);
    const validate = ajv.compile({
      type: 'object',
      additionalProperties: false,
      properties: { transaction: TRANSACTION, data: dataSchema },
    });
    this.commands.set(name, { name, validate, handler, exclusive: opts.exclusive ?? true });
  }

  /** Registered command names. */
  get names(): string[] {
    return [...this.commands.keys()].sort();
  }

  /** Sets (or replaces) the audit sink, e.g. once the audit log is open. */
  setAudit(audit: CommandAudit | undefined): void {
    this.audit = audit;
  }

  /** Subscribes this device's request topic and each group's (the link resubscribes after reconnects). */
  start(link: CommandLink): void {
    this.stop();
    this.link = link;
    const t = fleetTopics(this.base);
    const filters: { filter: string; group: string | null }[] = [
      { filter: t.request(this.opts.deviceId, '+'), group: null },
      ...this.opts.groups.map((g) => ({ filter: t.groupRequest(g, '+'), group: g })),
    ];
    for (const { filter, group } of filters) {
      this.unsubscribers.push(
        link.subscribe(filter, (m) => this.onRequest(m, group), {
          maxBytes: this.maxBytes,
          onOversize: (m) => this.onOversize(m, group),
        }),
      );
    }
    this.log.info({ filters: filters.map((f) => f.filter), commands: this.names }, 'fleet commands enabled');
  }

  stop(): void {
    for (const u of this.unsubscribers.splice(0)) u();
  }

  /** Resolves when every accepted request has been answered (shutdown, tests). */
  async idle(): Promise<void> {
    await this.chain;
  }

  private onOversize(m: InboundMessage, group: string | null): void {
    const cmd = m.topic.split('/').pop() ?? '';
    const ctx = this.context(m, cmd, group, null);
    const error = `request refused: payload is ${m.bytes} bytes, over the ${this.maxBytes}-byte limit`;
    this.record(ctx, `refused: payload too large (${m.bytes} bytes)`, m.droppedSha256 ?? '');
    void this.respond(m, ctx, { status: 'error', deviceId: this.opts.deviceId, transaction: null, data: null, error });
  }

  private onRequest(m: InboundMessage, group: string | null): Promise<void> {
    const cmd = m.topic.split('/').pop() ?? '';
    const payloadSha = sha256(m.payload);
    let parsed: unknown = {};
    let parseError: string | null = null;
    const text = m.payload.toString('utf8');
    if (text.trim().length > 0) {
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        parseError = `request refused: payload is not JSON (${(err as Error).message})`;
      }
    }
    // Echo a well-formed transaction even when the rest of the request is refused, so the sender can match it.
    const tx = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as { transaction?: unknown }).transaction : undefined;
    const transaction = typeof tx === 'string' && tx.length <= TRANSACTION.maxLength ? tx : null;
    const ctx = this.context(m, cmd, group, transaction);
    const reply = (status: 'ok' | 'error', data: unknown, error: string | null): Promise<void> =>
      this.respond(m, ctx, { status, deviceId: this.opts.deviceId, transaction, data, error });

    if (parseError !== null) {
      this.record(ctx, 'refused: not JSON', payloadSha);
      return reply('error', null, parseError);
    }
    const command = this.commands.get(cmd);
    if (command === undefined) {
      this.record(ctx, 'refused: unknown command', payloadSha);
      return reply('error', { commands: this.names }, `unknown command ${JSON.stringify(cmd)}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      this.record(ctx, 'refused: not an object', payloadSha);
      return reply('error', null, 'request refused: payload must be a JSON object {"transaction"?, "data"?}');
    }
    const request = parsed as { transaction?: unknown; data?: unknown };
    if (request.data === undefined) request.data = {};
    if (!command.validate(request)) {
      const problems = schemaProblems(command.validate.errors);
      this.record(ctx, `refused: invalid payload`, payloadSha);
      return reply('error', { problems }, `invalid ${cmd} request: ${problems.join('; ')}`);
    }
    if (this.pending >= this.maxPending) {
      this.record(ctx, 'refused: busy', payloadSha);
      return reply('error', null, `busy: ${this.pending} commands are waiting; try again later`);
    }
    const run = async (): Promise<void> => {
      // The audit record is written before the answer goes out: a sender that saw the answer finds the record.
      let outcome: string;
      try {
        const data = await command.handler(request.data, ctx);
        outcome = 'ok';
        this.record(ctx, outcome, payloadSha);
        await reply('ok', data ?? null, null);
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        outcome = `error: ${message}`.slice(0, 500);
        if (!(err instanceof CommandError)) this.log.warn({ err, cmd }, `command ${cmd} failed`);
        this.record(ctx, outcome, payloadSha);
        await reply('error', err instanceof CommandError ? err.data : null, message);
      }
      if (outcome === 'ok' && ctx.afterResponse) {
        try {
          ctx.afterResponse();
        } catch (err) {
          this.log.error({ err, cmd }, 'after-response action failed');
        }
      }
    };
    if (!command.exclusive) return run();
    this.pending++;
    const p = this.chain.then(run).finally(() => this.pending--);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private context(m: InboundMessage, cmd: string, group: string | null, transaction: string | null): CommandContext {
    const raw = m.userProperties?.sender;
    const sender = typeof raw === 'string' ? raw.slice(0, 256) : Array.isArray(raw) && typeof raw[0] === 'string' ? raw[0].slice(0, 256) : null;
    return { cmd, topic: m.topic, group, transaction: transaction ?? (m.correlationData ? `corr:${m.correlationData.toString('hex').slice(0, 128)}` : null), sender };
  }

  private record(ctx: CommandContext, outcome: string, payloadSha256: string): void {
    if (outcome !== 'ok') this.log.info({ cmd: ctx.cmd.slice(0, 64), topic: ctx.topic.slice(0, 256), outcome }, 'fleet command refused or failed');
    else this.log.info({ cmd: ctx.cmd, group: ctx.group, transaction: ctx.transaction }, 'fleet command done');
    if (!this.audit) return;
    try {
      this.audit.command({ cmd: ctx.cmd.slice(0, 128), sender: ctx.sender, payloadSha256, outcome, transaction: ctx.transaction, topic: ctx.topic.slice(0, 512) });
    } catch (err) {
      this.log.error({ err }, 'could not record the command in the audit log');
    }
  }

  private async respond(m: InboundMessage, ctx: CommandContext, response: CommandResponse): Promise<void> {
    const link = this.link;
    if (!link) return;
    let payload: string;
    try {
      payload = JSON.stringify(response);
    } catch (err) {
      payload = JSON.stringify({ ...response, status: 'error', data: null, error: `response not serialisable: ${(err as Error).message}` });
    }
    const targets: { topic: string; opts: PublishOptions }[] = [];
    const own = fleetTopics(this.base).response(this.opts.deviceId, ctx.cmd);
    if (publishTopicProblem(own) === null && ctx.cmd.length > 0 && ctx.cmd.length <= 128 && !ctx.cmd.startsWith('$')) targets.push({ topic: own, opts: {} });
    if (m.responseTopic !== undefined) {
      if (publishTopicProblem(m.responseTopic) === null && !m.responseTopic.startsWith('$')) {
        targets.push({ topic: m.responseTopic, opts: m.correlationData ? { correlationData: m.correlationData } : {} });
      } else this.log.warn({ responseTopic: m.responseTopic.slice(0, 256) }, 'request has an invalid response topic; not answered there');
    }
    if (targets.length === 0) this.log.warn({ topic: m.topic.slice(0, 256) }, 'request on a topic that cannot be answered (command name)');
    await Promise.all(
      targets.map((t) =>
        link.publish(t.topic, payload, t.opts).catch((err: unknown) => {
          this.log.warn({ err: (err as Error).message, topic: t.topic }, 'command response not delivered');
        }),
      ),
    );
  }
}
