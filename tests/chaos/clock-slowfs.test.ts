/**
 * Two environmental faults (issue 7, Chaos), against the real agent and a real mosquitto:
 * - the wall clock jumping backwards (an NTP step, a dead RTC battery fixed at boot): libfaketime
 *   (Debian `faketime`) preloaded into the agent, its offset changed while it runs; Node's timers use the
 *   monotonic clock, which a real step never moves, hence DONT_FAKE_MONOTONIC=1. Results keep unique
 *   resultIds, every capture is delivered once, a kill -9 and restart with the clock still behind
 *   recovers everything, the journal is consistent.
 * - an inbox on a slow filesystem: polling mode, and a writer that puts a real DICOM file in place in
 *   chunks over ~4 s under its final name (no temp name, no rename): it is taken once, complete.
 */
import { createHash } from 'node:crypto';
import { existsSync, openSync, closeSync, readFileSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentProcess, agentDirs } from '../helpers/agent.js';
import { mosquittoAvailable, skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Subscriber } from '../mqtt/util.js';
import { auditStore, CAPTURE_SEEDS, CHAOS_MODEL, dcmtkAvailable, filesUnder, makeCaptures, ResultLedger, sleep } from './lib/common.js';

const LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
const faketimeAvailable = existsSync(LIBFAKETIME);
if (process.env.CI === 'true' && (!faketimeAvailable || !mosquittoAvailable || !dcmtkAvailable)) {
  throw new Error('CI=true: faketime, mosquitto and dcmtk are required peers for the chaos suite');
}

async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

describe.skipIf(skipWithoutMosquitto || !dcmtkAvailable)('chaos: clock and filesystem', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto({ persistence: true });
  });
  afterAll(async () => {
    await broker?.dispose();
  });

  it.skipIf(!faketimeAvailable)('the wall clock jumps back 2 hours while captures flow, then a kill -9: unique resultIds, nothing lost, journal consistent', async () => {
    const deviceId = 'chaos-clock';
    const dirs = agentDirs({ deviceId, model: CHAOS_MODEL, mqtt: { url: broker.url }, ingest: { stabilityMs: 100, pollIntervalMs: 50 } });
    const offsetFile = path.join(dirs.root, 'faketime');
    writeFileSync(offsetFile, '+0');
    const env = { LD_PRELOAD: LIBFAKETIME, FAKETIME_TIMESTAMP_FILE: offsetFile, FAKETIME_NO_CACHE: '1', DONT_FAKE_MONOTONIC: '1' };
    const captures = makeCaptures(30, path.join(dirs.root, 'staging'));
    const ledger = new ResultLedger();
    const createdAt = new Map<string, string>();
    const sub = await Subscriber.connect(broker.url, `imaging/${deviceId}/+`, { clientId: `${deviceId}-sub`, clean: false, properties: { sessionExpiryInterval: 600 } });
    sub.client.on('message', (topic, payload) => {
      if (!topic.endsWith('/result')) return;
      ledger.addResult(payload.toString());
      const r = JSON.parse(payload.toString()) as { input: { contentHash: string }; createdAt: string };
      createdAt.set(r.input.contentHash.replace(/^sha256:/, ''), r.createdAt);
    });
    const drop = (from: number, to: number): void => {
      for (const c of captures.slice(from, to)) renameSync(c.staged, path.join(dirs.inbox, c.name));
    };
    let agent = await AgentProcess.start(dirs, [], env);
    try {
      drop(0, 10);
      await until(() => captures.slice(0, 10).every((c) => ledger.has(c.hash)), 60_000, 'results before the jump');
      writeFileSync(offsetFile, '-2h'); // the clock steps back two hours
      drop(10, 20);
      await until(() => captures.slice(10, 20).every((c) => ledger.has(c.hash)), 60_000, 'results after the jump');
      // Killed with work in flight while the clock is still behind, restarted with it still behind.
      drop(20, 30);
      await sleep(150);
      await agent.kill();
      agent = await AgentProcess.start(dirs, [], env);
      await until(() => captures.every((c) => ledger.has(c.hash)) && filesUnder(dirs.inbox).length === 0, 60_000, 'every result after the restart');
      await sleep(300);
      expect(await agent.stop('SIGTERM')).toBe(0);
    } finally {
      await agent.kill();
      await sub.close();
    }
    // The jump really happened: results made after it are stamped about 2 h earlier.
    const before = Date.parse(createdAt.get(captures[9]!.hash)!);
    const after = Date.parse(createdAt.get(captures[10]!.hash)!);
    expect(before - after).toBeGreaterThan(3_600_000);
    const audit = ledger.audit(captures);
    console.log(`chaos clock: ${JSON.stringify(audit)}`);
    expect(audit.lost).toBe(0);
    expect(audit.conflicting).toBe(0);
    expect(audit.unexpected).toBe(0);
    const ids = [...ledger.byHash.values()].flatMap((m) => [...m.keys()]);
    expect(new Set(ids).size).toBe(captures.length);
    const store = auditStore(dirs.stateDir, captures);
    expect(store.integrity).toBe('ok');
    expect(store.byState).toEqual({ published: captures.length });
    expect(store.outbox).toBe(0);
    expect(filesUnder(dirs.doneDir)).toHaveLength(captures.length);
  }, 240_000);

  it('a file written in slow chunks over ~4 s into a polled inbox is processed once, complete', async () => {
    const deviceId = 'chaos-slowfs';
    const dirs = agentDirs({ deviceId, model: CHAOS_MODEL, mqtt: { url: broker.url }, ingest: { usePolling: true, stabilityMs: 1500, pollIntervalMs: 200 } });
    const bytes = readFileSync(CAPTURE_SEEDS[0]!);
    const hash = createHash('sha256').update(bytes).digest('hex');
    const sub = await Subscriber.connect(broker.url, `imaging/${deviceId}/+`);
    const agent = await AgentProcess.start(dirs);
    try {
      const target = path.join(dirs.inbox, 'slow.dcm');
      const fd = openSync(target, 'w');
      const chunks = 8;
      const size = Math.ceil(bytes.length / chunks);
      for (let i = 0; i < chunks; i++) {
        writeSync(fd, bytes, i * size, Math.min(size, bytes.length - i * size));
        await sleep(500); // each pause shorter than stabilityMs: still being written
      }
      closeSync(fd);
      await until(() => sub.on(`imaging/${deviceId}/result`).length >= 1, 30_000, 'the result of the slowly written file');
      await sleep(2000); // a second, partial take would show up by now
      const results = sub.on(`imaging/${deviceId}/result`).map((m) => JSON.parse(m.payload) as { input: { contentHash: string } });
      expect(results).toHaveLength(1);
      expect(results[0]!.input.contentHash).toBe(`sha256:${hash}`);
      expect(sub.on(`imaging/${deviceId}/error`)).toEqual([]);
      expect(filesUnder(dirs.quarantineDir)).toEqual([]);
      expect(filesUnder(dirs.inbox)).toEqual([]);
      expect(agent.logs.filter((l) => l.msg === 'file quarantined')).toEqual([]);
    } finally {
      await agent.stop('SIGTERM');
      await sub.close();
    }
  }, 120_000);
});
