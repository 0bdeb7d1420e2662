/**
 * Broker restarted 20 times under load (issue 7, Chaos): real mosquitto with persistence, stopped and
 * started again at random moments while captures keep arriving; the agent runs throughout. Every
 * capture delivered with exactly one distinct resultId. Seed: CHAOS_SEED (printed). The bench
 * (bench/chaos) also runs it with persistence off.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mosquittoAvailable, skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { runBrokerRestarts } from './lib/broker.js';
import { chaosSeed, dcmtkAvailable } from './lib/common.js';

if (process.env.CI === 'true' && (!dcmtkAvailable || !mosquittoAvailable)) {
  throw new Error('CI=true: dcmtk and mosquitto are required peers for the chaos suite');
}

const RESTARTS = Number(process.env.CHAOS_BROKER_RESTARTS ?? 20);

describe.skipIf(skipWithoutMosquitto || !dcmtkAvailable)('chaos: broker restarts under load', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto({ persistence: true });
  });
  afterAll(async () => {
    await broker?.dispose();
  });

  it(`${RESTARTS} mosquitto restarts (persistence on): every result delivered, once per resultId`, async () => {
    const seed = chaosSeed();
    console.log(`chaos broker: seed ${seed} (replay with CHAOS_SEED=${seed})`);
    const r = await runBrokerRestarts({ broker, persistence: true, restarts: RESTARTS, seed, log: (l) => console.log(l) });
    console.log(`chaos broker: ${JSON.stringify(r)}`);
    expect(r.agentReconnects).toBeGreaterThanOrEqual(RESTARTS / 2);
    expect(r.droppedWhileDown).toBeGreaterThan(0);
    expect(r.delivery.lost, `lost: ${r.delivery.lostNames.join(', ')}`).toBe(0);
    expect(r.delivery.conflicting).toBe(0);
    expect(r.delivery.unexpected).toBe(0);
    expect(r.delivery.errors).toBe(0);
    expect(r.inboxLeft).toBe(0);
    expect(r.store.integrity).toBe('ok');
    expect(r.store.byState).toEqual({ published: r.files });
    expect(r.store.outbox).toBe(0);
  }, 300_000);
});
