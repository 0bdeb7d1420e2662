/**
 * Chaos: kill -9 at random moments under load.
 *
 * Real captures are dropped into the inbox in bursts all along (rename from a staging dir) while the built
 * agent (`dist/agent/cli.js run`) is started and SIGKILLed at random moments, `iterations` times:
 * some kills land during start-up (store open, model warm-up, journal recovery), the rest at a random
 * time after "agent started" (hashing, decoding, inference, outbox commit, PUBACK, the move to done/).
 * Then one last agent runs until every capture is accounted for and is stopped cleanly.
 *
 * What must hold at the end: every dropped capture has exactly one distinct resultId at a real MQTT
 * subscriber (a repeated delivery must carry the identical resultId; they are counted), nothing is
 * left in the inbox, everything is in done/ (nothing quarantined), and the journal is intact: every
 * capture has a `published`, finalized row and the outbox is empty.
 */
import { renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { AgentProcess, agentDirs } from '../../helpers/agent.js';
import type { Mosquitto } from '../../helpers/mosquitto.js';
import { Subscriber } from '../../mqtt/util.js';
import { CHAOS_MODEL, auditStore, filesUnder, makeCaptures, ResultLedger, rng, sleep, type DeliveryAudit, type StoreAudit } from './common.js';

export interface Kill9Options {
  iterations: number;
  seed: number;
  /** Captures dropped per iteration on average (default 3). */
  filesPerIteration?: number;
  broker: Mosquitto;
  log?: (line: string) => void;
  /** Keep the temp dir (inbox, state, done) for a post-mortem. */
  keep?: boolean;
  /** ingest.maxAttempts of the agent (default 100 here, the schema's maximum; the product default is 3). */
  maxAttempts?: number;
}

export interface Kill9Report {
  scenario: 'kill9';
  seed: number;
  iterations: number;
  files: number;
  maxAttempts: number;
  kills: { total: number; duringStartup: number; afterStart: number; withFilesInInbox: number };
  /** Summed over restarts, from the agent's "recovered unfinished work" log line. */
  recovered: { resumedJobs: number; finalizedMoves: number; restartsWithWork: number };
  delivery: DeliveryAudit;
  store: StoreAudit;
  inboxLeft: number;
  done: number;
  quarantined: number;
  wallMs: number;
}

export async function runKill9(opts: Kill9Options): Promise<Kill9Report> {
  const t0 = Date.now();
  const log = opts.log ?? (() => undefined);
  const random = rng(opts.seed);
  const perIter = opts.filesPerIteration ?? 3;
  const deviceId = `chaos-kill-${opts.seed}`;
  const dirs = agentDirs({
    deviceId,
    model: CHAOS_MODEL,
    mqtt: { url: opts.broker.url, reconnectPeriodMs: 200 },
    // maxAttempts (default 3) also counts runs that died with the job in flight, to quarantine a file
    // that kills the agent. Killed every second or two, an innocent capture can be in flight that often
    // (the oldest unfinished job starts first after every restart); this run measures what the journal,
    // outbox and PUBACK handling lose, not that policy, whose figure docs/RELIABILITY.md gives apart.
    ingest: { stabilityMs: 100, pollIntervalMs: 50, maxAttempts: opts.maxAttempts ?? 100 },
    logging: { level: 'info' },
  });
  const captures = makeCaptures(opts.iterations * perIter, path.join(dirs.root, 'staging'));
  const ledger = new ResultLedger();
  const sub = await Subscriber.connect(opts.broker.url, `imaging/${deviceId}/+`, { clientId: `${deviceId}-sub`, clean: false, properties: { sessionExpiryInterval: 3600 } });
  sub.client.on('message', (topic, payload) => {
    if (topic.endsWith('/result')) ledger.addResult(payload.toString());
    else if (topic.endsWith('/error')) ledger.addError(payload.toString());
  });

  // Captures arrive in bursts of 0..2*perIter, some spaced a few ms apart, so that kills land while
  // files are being stabilised, hashed, decoded, classified, published and moved.
  let next = 0;
  const dropBurst = async (): Promise<void> => {
    const n = Math.min(captures.length - next, Math.round(random() * 2 * perIter));
    for (let k = 0; k < n; k++) {
      const c = captures[next++]!;
      renameSync(c.staged, path.join(dirs.inbox, c.name));
      if (random() < 0.5) await sleep(random() * 40);
    }
  };

  const kills = { total: 0, duringStartup: 0, afterStart: 0, withFilesInInbox: 0 };
  const recovered = { resumedJobs: 0, finalizedMoves: 0, restartsWithWork: 0 };
  const noteRecovery = (a: AgentProcess): void => {
    const line = a.logs.find((l) => l.msg === 'recovered unfinished work from the journal');
    if (line) {
      recovered.restartsWithWork++;
      recovered.resumedJobs += Number(line.resumed ?? 0);
      recovered.finalizedMoves += Number(line.finalized ?? 0);
    }
  };
  try {
    for (let i = 0; i < opts.iterations; i++) {
      const agent = await AgentProcess.start(dirs, [], {}, false);
      const duringStartup = random() < 0.2;
      if (duringStartup) {
        await dropBurst();
        await sleep(random() * 700);
      } else {
        await agent.waitForLog(/^agent started$/, 60_000);
        await sleep(random() * 200);
        await dropBurst();
        await sleep(random() ** 2 * 400); // skewed short: most kills land within the files' first 100 ms
      }
      const started = agent.logs.some((l) => l.msg === 'agent started');
      const inInbox = filesUnder(dirs.inbox).length;
      await agent.kill();
      if (inInbox > 0) kills.withFilesInInbox++;
      if (agent.signal !== 'SIGKILL') throw new Error(`iteration ${i}: agent exited by itself (${agent.exitCode}) before the kill:\n${agent.stderr.join('')}\n${agent.tail()}`);
      noteRecovery(agent);
      kills.total++;
      if (started) kills.afterStart++;
      else kills.duringStartup++;
      if ((i + 1) % 10 === 0) log(`kill9: ${i + 1}/${opts.iterations} kills, ${next}/${captures.length} dropped, ${ledger.byHash.size} captures with a result`);
    }
    // Whatever the bursts left undropped arrives now, at once.
    for (; next < captures.length; next++) renameSync(captures[next]!.staged, path.join(dirs.inbox, captures[next]!.name));

    // The last run: no kill; it must account for every capture.
    const agent = await AgentProcess.start(dirs);
    noteRecovery(agent);
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      const allIn = captures.every((c) => ledger.has(c.hash));
      if (allIn && filesUnder(dirs.inbox).length === 0) break;
      await sleep(100);
    }
    await sleep(300); // late duplicate deliveries, if any, get counted
    const code = await agent.stop('SIGTERM');
    if (code !== 0) throw new Error(`final agent exited ${code}:\n${agent.stderr.join('')}\n${agent.tail()}`);
  } finally {
    await sub.close();
  }

  const report: Kill9Report = {
    scenario: 'kill9',
    seed: opts.seed,
    iterations: opts.iterations,
    maxAttempts: opts.maxAttempts ?? 100,
    files: captures.length,
    kills,
    recovered,
    delivery: ledger.audit(captures),
    store: auditStore(dirs.stateDir, captures),
    inboxLeft: filesUnder(dirs.inbox).length,
    done: filesUnder(dirs.doneDir).length,
    quarantined: filesUnder(dirs.quarantineDir).filter((f) => !f.endsWith('.json')).length,
    wallMs: Date.now() - t0,
  };
  if (!opts.keep) rmSync(dirs.root, { recursive: true, force: true });
  else log(`kill9: kept ${dirs.root}`);
  return report;
}
