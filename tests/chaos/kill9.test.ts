/**
 * kill -9 at random moments under load (issue 7, Chaos): 100 SIGKILLs of the real agent while real
 * DICOM captures keep arriving, one real mosquitto and subscriber throughout. Zero captures lost, zero
 * results lost, repeated deliveries only with an identical resultId. Seed: CHAOS_SEED (printed).
 * Longer runs: `node dist/bench/chaos/run.js kill9 --iterations N` (bench/chaos/README.md).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mosquittoAvailable, skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { chaosSeed, dcmtkAvailable } from './lib/common.js';
import { runKill9 } from './lib/kill9.js';

if (process.env.CI === 'true' && (!dcmtkAvailable || !mosquittoAvailable)) {
  throw new Error('CI=true: dcmtk and mosquitto are required peers for the chaos suite');
}

const ITERATIONS = Number(process.env.CHAOS_KILL_ITERATIONS ?? 100);

describe.skipIf(skipWithoutMosquitto || !dcmtkAvailable)('chaos: kill -9 under load', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto({ persistence: true });
  });
  afterAll(async () => {
    await broker?.dispose();
  });

  it(`${ITERATIONS} random SIGKILLs: every capture has exactly one resultId at the subscriber, inbox empty, journal consistent`, async () => {
    const seed = chaosSeed();
    console.log(`chaos kill9: seed ${seed} (replay with CHAOS_SEED=${seed})`);
    const r = await runKill9({ iterations: ITERATIONS, seed, broker, log: (l) => console.log(l) });
    console.log(`chaos kill9: ${JSON.stringify(r)}`);
    expect(r.kills.total).toBe(ITERATIONS);
    // The kills must have hit work in progress, or this test proves nothing.
    expect(r.kills.afterStart).toBeGreaterThan(ITERATIONS / 2);
    expect(r.kills.withFilesInInbox).toBeGreaterThan(ITERATIONS / 4);
    expect(r.recovered.restartsWithWork).toBeGreaterThan(0);
    expect(r.delivery.lost, `lost: ${r.delivery.lostNames.join(', ')}`).toBe(0);
    expect(r.delivery.conflicting).toBe(0);
    expect(r.delivery.unexpected).toBe(0);
    expect(r.delivery.errors).toBe(0);
    expect(r.inboxLeft).toBe(0);
    expect(r.quarantined).toBe(0);
    expect(r.done).toBe(r.files);
    expect(r.store.integrity).toBe('ok');
    expect(r.store.missingJobs).toBe(0);
    expect(r.store.jobs).toBe(r.files);
    expect(r.store.byState).toEqual({ published: r.files });
    expect(r.store.notFinalized).toBe(0);
    expect(r.store.outbox).toBe(0);
  }, 600_000);
});
