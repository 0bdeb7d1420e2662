/**
 * Fleet commands from central (`ping`, `get-config`, `set-config`, `pause`, ...; src/fleet/protocol.ts
 * COMMANDS): a request on `<base>/<device>/request/<cmd>` or `<base>/group/<g>/request/<cmd>`, answered by
 * each agent on its `<base>/<device>/response/<cmd>`. Responses are matched by the `transaction` central
 * puts in the request (works on MQTT 3.1.1 and through any ACL: the agent answers on its own topic).
 *
 * The responses stream is a plain subscription in every central instance (FleetView), never a shared one:
 * the instance that sent a request must see its answer.
 */
import { randomUUID } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { COMMANDS, fleetTopics, type CommandResponse } from '../fleet/protocol.js';
import type { FleetView } from './fleet.js';

export class CommandRequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'CommandRequestError';
  }
}

export interface CommandOutcome {
  cmd: string;
  transaction: string;
  /** One per agent that answered (device: at most one). */
  responses: CommandResponse[];
  /** Agents expected to answer that did not within the timeout (group: members in the fleet view). */
  missing: string[];
}

interface Waiter {
  cmd: string;
  expect: Set<string>;
  got: Map<string, CommandResponse>;
  done: () => void;
}

export class CommandClient {
  private readonly waiters = new Map<string, Waiter>();
  private readonly topics;

  constructor(
    private readonly client: MqttClient,
    private readonly fleet: FleetView,
    baseTopic = 'imaging',
  ) {
    this.topics = fleetTopics(baseTopic);
    fleet.on('response', (deviceId, cmd, payload) => {
      const p = payload as Partial<CommandResponse> | undefined;
      if (!p || typeof p !== 'object' || typeof p.transaction !== 'string') return;
      const w = this.waiters.get(p.transaction);
      if (!w || w.cmd !== cmd) return;
      w.got.set(deviceId, {
        status: p.status === 'ok' ? 'ok' : 'error',
        deviceId,
        transaction: p.transaction,
        data: p.data ?? null,
        error: typeof p.error === 'string' ? p.error : null,
      });
      if (w.expect.size && [...w.expect].every((d) => w.got.has(d))) w.done();
    });
  }

  /**
   * Sends `cmd` to one device or a group and waits for the answers (device: the first; group: every member
   * the fleet view knows, or the timeout, whichever comes first).
   */
  async send(target: { device: string } | { group: string }, cmd: string, data: unknown, timeoutMs = 5000): Promise<CommandOutcome> {
    if (!(COMMANDS as readonly string[]).includes(cmd)) throw new CommandRequestError(400, `unknown command '${cmd}' (known: ${COMMANDS.join(', ')})`);
    const name = 'device' in target ? target.device : target.group;
    if (!name || /[+#/]/.test(name) || name === 'group') throw new CommandRequestError(400, `invalid ${'device' in target ? 'device id' : 'group'} '${name}'`);
    if (!(timeoutMs > 0 && timeoutMs <= 60_000)) throw new CommandRequestError(400, 'timeoutMs must be in (0, 60000]');
    const transaction = `central-${randomUUID()}`;
    const expect = new Set('device' in target ? [target.device] : this.fleet.members(target.group).map((a) => a.deviceId));
    const w: Waiter = { cmd, expect, got: new Map(), done: () => undefined };
    const finished = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      w.done = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.waiters.set(transaction, w);
    try {
      const topic = 'device' in target ? this.topics.request(target.device, cmd) : this.topics.groupRequest(target.group, cmd);
      await this.client.publishAsync(topic, JSON.stringify({ transaction, ...(data === undefined ? {} : { data }) }), {
        qos: 1,
        properties: { userProperties: { sender: 'edge-central' } },
      });
      await finished;
    } finally {
      this.waiters.delete(transaction);
    }
    return {
      cmd,
      transaction,
      responses: [...w.got.values()].sort((a, b) => a.deviceId.localeCompare(b.deviceId)),
      missing: [...expect].filter((d) => !w.got.has(d)).sort(),
    };
  }
}
