/**
 * Power-loss simulation for the state store (issue 7, Chaos): SIGKILL of a writer of journal/outbox
 * transactions at random moments (a share during WAL checkpoints), and crash-consistent copies of
 * agent.db + agent.db-wal taken mid-write, half of them with the WAL's unsynced tail cut off. The store
 * opens, `PRAGMA integrity_check` is ok, every committed job is there, the journal/outbox invariants
 * hold. Why synchronous=NORMAL: docs/RELIABILITY.md. Seed: CHAOS_SEED (printed).
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { chaosSeed } from './lib/common.js';
import { runStoreChaos, STORE_WRITER } from './lib/store.js';

const KILLS = Number(process.env.CHAOS_STORE_KILLS ?? 60);
const SNAPSHOTS = Number(process.env.CHAOS_STORE_SNAPSHOTS ?? 20);

describe('chaos: state store power loss', () => {
  it(`${KILLS} kills (some mid-checkpoint) and ${SNAPSHOTS} power-cut copies: opens, integrity ok, nothing committed lost`, async () => {
    expect(existsSync(STORE_WRITER), 'run `npm run build` first (npm test does)').toBe(true);
    const seed = chaosSeed();
    console.log(`chaos store: seed ${seed} (replay with CHAOS_SEED=${seed})`);
    const r = await runStoreChaos({ kills: KILLS, snapshots: SNAPSHOTS, seed, log: (l) => console.log(l) });
    console.log(`chaos store: ${JSON.stringify(r)}`);
    expect(r.kills.total).toBe(KILLS);
    expect(r.kills.duringCheckpoint, 'some kills must land inside a checkpoint').toBeGreaterThan(0);
    expect(r.kills.integrityFailures).toBe(0);
    expect(r.kills.missing, 'a committed transaction lost to kill -9').toBe(0);
    expect(r.kills.violations).toEqual([]);
    expect(r.kills.jobsAtEnd).toBeGreaterThan(KILLS * 10);
    expect(r.snapshots.total).toBe(SNAPSHOTS);
    expect(r.snapshots.torn).toBeGreaterThan(0);
    expect(r.snapshots.integrityFailures).toBe(0);
    expect(r.snapshots.missing, 'a commit older than the last checkpoint lost to a power cut').toBe(0);
    expect(r.snapshots.violations).toEqual([]);
  }, 300_000);
});
