/**
 * Chaos: the broker restarted `restarts` times under load.
 *
 * Real mosquitto (persistence on: a graceful restart keeps the subscriber's session and its queued QoS 1
 * messages; persistence off is the bench's second variant, where whatever the broker accepted while no
 * subscriber session existed is gone by MQTT's own rules, not the agent's). Captures are dropped all
 * along; mosquitto is stopped (SIGTERM) and started again on the same port at random moments, down for
 * a random 0-600 ms. The agent is never restarted. Every capture must reach the subscriber with exactly
 * one distinct resultId (repeats of the same resultId are counted: QoS 1 is at-least-once).
 */
import { renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { AgentProcess, agentDirs } from '../../helpers/agent.js';
import type { Mosquitto } from '../../helpers/mosquitto.js';
import { Subscriber } from '../../mqtt/util.js';
import { CHAOS_MODEL, auditStore, filesUnder, makeCaptures, ResultLedger, rng, sleep, type DeliveryAudit, type StoreAudit } from './common.js';

export interface BrokerChaosReport {
  scenario: 'broker-restart';
  seed: number;
  persistence: boolean;
  restarts: number;
  files: number;
  /** Captures dropped while the broker was down. */
  droppedWhileDown: number;
  agentReconnects: number;
  delivery: DeliveryAudit;
  store: StoreAudit;
  inboxLeft: number;
  wallMs: number;
}

export async function runBrokerRestarts(opts: {
  broker: Mosquitto;
  persistence: boolean;
  restarts: number;
  filesPerRestart?: number;
  seed: number;
  log?: (l: string) => void;
}): Promise<BrokerChaosReport> {
  const t0 = Date.now();
  const random = rng(opts.seed);
  const log = opts.log ?? (() => undefined);
  const deviceId = `chaos-broker-${opts.seed}`;
  const dirs = agentDirs({ deviceId, model: CHAOS_MODEL, mqtt: { url: opts.broker.url, reconnectPeriodMs: 100 }, ingest: { stabilityMs: 100, pollIntervalMs: 50 } });
  const captures = makeCaptures(opts.restarts * (opts.filesPerRestart ?? 5), path.join(dirs.root, 'staging'));
  const ledger = new ResultLedger();
  // A persistent session (clean start off, long expiry): what a real consumer of results uses.
  const sub = await Subscriber.connect(opts.broker.url, `imaging/${deviceId}/+`, {
    clientId: `${deviceId}-sub`,
    clean: false,
    properties: { sessionExpiryInterval: 3600 },
  });
  sub.client.on('message', (topic, payload) => {
    if (topic.endsWith('/result')) ledger.addResult(payload.toString());
    else if (topic.endsWith('/error')) ledger.addError(payload.toString());
  });
  const agent = await AgentProcess.start(dirs);
  let next = 0;
  let down = false;
  let droppedWhileDown = 0;
  let dropping = true;
  const dropper = (async () => {
    while (next < captures.length) {
      const c = captures[next++]!;
      renameSync(c.staged, path.join(dirs.inbox, c.name));
      if (down) droppedWhileDown++;
      // Spread over the restart loop (~1.1 s per restart on average).
      await sleep(dropping ? random() * 2 * ((1100 * opts.restarts) / captures.length) : 0);
    }
  })();
  try {
    for (let i = 0; i < opts.restarts; i++) {
      await sleep(200 + random() * 600);
      await opts.broker.stop();
      down = true;
      await sleep(random() * 600);
      await opts.broker.start();
      down = false;
      if ((i + 1) % 5 === 0) log(`broker: ${i + 1}/${opts.restarts} restarts, ${next}/${captures.length} dropped, ${ledger.byHash.size} with a result`);
    }
    dropping = false;
    await dropper;
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline && !(captures.every((c) => ledger.has(c.hash)) && filesUnder(dirs.inbox).length === 0)) await sleep(100);
    await sleep(500); // late repeats get counted
    const code = await agent.stop('SIGTERM');
    if (code !== 0) throw new Error(`agent exited ${code}: ${agent.tail()}`);
  } finally {
    dropping = false;
    await dropper.catch(() => undefined);
    await agent.kill();
    await sub.close();
  }
  const report: BrokerChaosReport = {
    scenario: 'broker-restart',
    seed: opts.seed,
    persistence: opts.persistence,
    restarts: opts.restarts,
    files: captures.length,
    droppedWhileDown,
    agentReconnects: agent.logs.filter((l) => l.msg === 'connected to MQTT broker' && l.component === 'agent' && l.reconnect === true).length,
    delivery: ledger.audit(captures),
    store: auditStore(dirs.stateDir, captures),
    inboxLeft: filesUnder(dirs.inbox).length,
    wallMs: Date.now() - t0,
  };
  rmSync(dirs.root, { recursive: true, force: true });
  return report;
}
