/**
 * Child process of the state-store power-loss chaos (tests/chaos/lib/store.ts): writes journal and
 * outbox transactions through the agent's own StateStore as fast as it can, forever, with explicit
 * WAL checkpoints in a loop, and reports on stdout (synchronously, after each commit returned):
 *
 *   inferred <hash>   accept + complete committed (job `inferred`, 2 outbox rows)
 *   published <hash>  the job's last outbox row acknowledged (job `published`, rows deleted)
 *   failed <hash>     fail committed (job `failed`, 1 error row)
 *   ckpt-begin <mode> / ckpt-end <mode> <busy> <log> <checkpointed>
 *
 *   node dist/bench/chaos/store-writer.js STATE_DIR [agent|torn]
 *
 * `agent`: the store exactly as the agent opens it (WAL, synchronous=NORMAL, auto-checkpoint on) plus
 * explicit checkpoints of every mode. `torn`: auto-checkpoint off and only TRUNCATE checkpoints, so that
 * every frame in the WAL between checkpoints is one no checkpoint has copied yet: cutting the WAL at any
 * byte is then a state a power cut can leave (with NORMAL, the WAL is fsynced only at checkpoints).
 */
import { createHash } from 'node:crypto';
import { StateStore } from '../../src/store/index.js';
import { writeLine } from './line-out.js';

const [dir, mode = 'agent'] = process.argv.slice(2);
if (!dir) {
  process.stderr.write('usage: store-writer.js STATE_DIR [agent|torn]\n');
  process.exit(2);
}
const store = StateStore.open(dir);
if (mode === 'torn') store.db.pragma('wal_autocheckpoint = 0');
const out = writeLine;
store.outbox.onJobPublished = (hash) => out(`published ${hash}`);

// Continue the numbering of an earlier (killed) run on the same store.
let i = (store.db.prepare('SELECT COUNT(*) AS n FROM jobs').get() as { n: number }).n + 1000 * Number(process.env.WRITER_GENERATION ?? 0);
const payload = (n: number): string => JSON.stringify({ n, pad: 'p'.repeat(1500 + (n % 7) * 300) });
const unacked: number[] = [];
const modes = mode === 'torn' ? ['TRUNCATE'] : ['PASSIVE', 'FULL', 'RESTART', 'TRUNCATE'];
let round = 0;
out(`start ${mode}`);
for (;;) {
  const hash = createHash('sha256').update(`job-${process.pid}-${i}`).digest('hex');
  store.journal.accept({ hash, name: `f${i}.dcm`, path: `/inbox/f${i}.dcm`, size: 1000 + i });
  store.journal.beginAttempt(hash);
  if (i % 10 === 9) {
    store.journal.fail(hash, 'chaos', 'chaos failure', { resultId: null, topic: 't/error', payload: payload(i) });
    out(`failed ${hash}`);
  } else {
    store.journal.markDecoded(hash, { modality: 'CT', frames: 2 });
    const seqs = store.journal.complete(hash, [
      { resultId: `r${i}a`, topic: 't/result', payload: payload(i) },
      { resultId: `r${i}b`, topic: 't/result', payload: payload(i + 1) },
    ]);
    out(`inferred ${hash}`);
    unacked.push(...seqs);
  }
  // PUBACKs arrive a few jobs behind, one row at a time, as from the broker.
  while (unacked.length > 8) store.outbox.ack(unacked.shift()!);
  if (i % 20 === 0) {
    const m = modes[round++ % modes.length]!;
    out(`ckpt-begin ${m}`);
    const r = store.db.pragma(`wal_checkpoint(${m})`) as { busy: number; log: number; checkpointed: number }[];
    out(`ckpt-end ${m} ${r[0]?.busy} ${r[0]?.log} ${r[0]?.checkpointed}`);
  }
  i++;
}
