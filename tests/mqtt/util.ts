import net from 'node:net';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import pino, { type Logger } from 'pino';
import type { OutboxRow, OutboxSource } from '../../src/mqtt/types.js';

export function testLogger(): Logger {
  return pino({ level: process.env.LOG_LEVEL ?? 'silent' });
}

export async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** In-memory OutboxSource that records every ack (the real one is SQLite, in src/store). */
export class MemoryOutbox implements OutboxSource {
  rows: OutboxRow[] = [];
  acks: number[] = [];
  private seq = 0;
  add(topic: string, payload: (seq: number) => string): OutboxRow {
    const seq = ++this.seq;
    const row = { seq, topic, payload: payload(seq) };
    this.rows.push(row);
    return row;
  }
  next(afterSeq: number, limit: number): OutboxRow[] {
    return this.rows.filter((r) => r.seq > afterSeq).slice(0, limit).map((r) => ({ ...r }));
  }
  ack(seq: number): void {
    this.acks.push(seq);
    this.rows = this.rows.filter((r) => r.seq !== seq);
  }
}

export interface Received {
  topic: string;
  payload: string;
  retain: boolean;
}

/** A separate MQTT.js client that records what a subscriber sees. */
export class Subscriber {
  readonly messages: Received[] = [];
  /** Incremented after each (re)subscription is acknowledged by the broker. */
  subscriptions = 0;
  private constructor(readonly client: MqttClient) {}

  static async connect(url: string, filter: string, opts: IClientOptions = {}): Promise<Subscriber> {
    const client = mqtt.connect(url, { protocolVersion: 5, reconnectPeriod: 100, resubscribe: false, ...opts });
    const sub = new Subscriber(client);
    client.on('error', () => undefined);
    client.on('message', (topic, payload, packet) => {
      sub.messages.push({ topic, payload: payload.toString(), retain: packet.retain });
    });
    // Subscribe on every connect ourselves so a test can wait for the SUBACK after a broker restart.
    client.on('connect', () => {
      client.subscribe(filter, { qos: 1 }, (err) => {
        if (!err) sub.subscriptions++;
      });
    });
    await until(() => sub.subscriptions > 0, 10_000, `subscription to ${filter} on ${url}`);
    return sub;
  }

  on(topic: string): Received[] {
    return this.messages.filter((m) => m.topic === topic);
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}

/**
 * TCP proxy between a link and its broker, for faults a broker cannot make by itself: `drop()` resets
 * both sides (the broker sees the client vanish, as if its process were killed); while the gate is
 * closed new connections are reset at once (the broker looks down to the link).
 */
export class TcpProxy {
  private readonly server: net.Server;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  gateOpen = true;
  port = 0;

  private constructor(
    private readonly upstreamPort: number,
    private readonly upstreamHost = '127.0.0.1',
  ) {
    this.server = net.createServer((down) => this.accept(down));
  }

  static async start(upstreamPort: number): Promise<TcpProxy> {
    const p = new TcpProxy(upstreamPort);
    await new Promise<void>((resolve) => p.server.listen(0, '127.0.0.1', () => resolve()));
    const addr = p.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('proxy has no address');
    p.port = addr.port;
    return p;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  get connections(): number {
    return this.pairs.size;
  }

  private accept(down: net.Socket): void {
    if (!this.gateOpen) {
      down.resetAndDestroy();
      return;
    }
    const up = net.connect(this.upstreamPort, this.upstreamHost);
    const pair: [net.Socket, net.Socket] = [down, up];
    this.pairs.add(pair);
    const end = (): void => {
      this.pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    down.on('error', end);
    up.on('error', end);
    down.on('close', end);
    up.on('close', end);
    down.pipe(up);
    up.pipe(down);
  }

  /** Abruptly kills every proxied connection (TCP RST on both sides). */
  drop(): void {
    for (const [down, up] of this.pairs) {
      up.resetAndDestroy();
      down.resetAndDestroy();
    }
    this.pairs.clear();
  }

  async close(): Promise<void> {
    this.drop();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
