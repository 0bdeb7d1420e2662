/**
 * Chaos: the state disk fills up.
 *
 * The agent's state dir is a real, small filesystem (tmpfs mounted with `size=`; needs root / mount
 * permission). The agent processes a few captures, then the filesystem is filled to the last byte by a
 * filler file, captures keep arriving, and later the filler is removed. Expected: one clear error
 * (logged and published once on `error`, code `state-store-full`), intake paused (the files stay in the
 * inbox, none quarantined, none lost), and, once space returns, intake resumes by itself and every
 * capture gets exactly one resultId; the store passes `PRAGMA integrity_check`.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, renameSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { AgentProcess, agentDirs } from '../../helpers/agent.js';
import type { Mosquitto } from '../../helpers/mosquitto.js';
import { Subscriber } from '../../mqtt/util.js';
import { CHAOS_MODEL, auditStore, filesUnder, makeCaptures, ResultLedger, sleep, type DeliveryAudit, type StoreAudit } from './common.js';

/** Mounts a tmpfs of `sizeKiB` on `dir`; returns a reason string when this machine does not allow it. */
export function mountTmpfs(dir: string, sizeKiB: number): string | null {
  mkdirSync(dir, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeKiB}k,mode=0755`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.error) return `mount not runnable: ${r.error.message}`;
  if (r.status !== 0) return `mount -t tmpfs failed (needs root and CAP_SYS_ADMIN): ${r.stderr.trim()}`;
  return null;
}

export function unmount(dir: string): void {
  spawnSync('umount', ['-l', dir]);
}

/** Writes zeros to `file` until the filesystem says ENOSPC; returns the bytes written. */
export function fillUp(file: string): number {
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(64 * 1024);
  let total = 0;
  try {
    for (;;) {
      try {
        total += writeSync(fd, chunk, 0, chunk.length);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
        break;
      }
    }
    // The last partial blocks too.
    for (let size = 4096; size >= 1; size = size >> 1) {
      for (;;) {
        try {
          total += writeSync(fd, chunk, 0, size);
        } catch {
          break;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

export interface DiskFullReport {
  scenario: 'diskfull';
  files: { before: number; whileFull: number };
  fillerBytes: number;
  /** Captures still in the inbox after the pause window (all of the while-full ones, or intake did not pause). */
  inboxWhileFull: number;
  resultsWhileFull: number;
  storeFullErrors: number;
  otherErrors: string[];
  pausedLog: boolean;
  resumedLog: boolean;
  delivery: DeliveryAudit;
  store: StoreAudit;
  inboxLeft: number;
  quarantined: number;
  exitCode: number | null;
}

export async function runDiskFull(opts: { broker: Mosquitto; sizeKiB?: number; before?: number; whileFull?: number; log?: (l: string) => void }): Promise<DiskFullReport | { skipped: string }> {
  const log = opts.log ?? (() => undefined);
  const deviceId = 'chaos-diskfull';
  const dirs = agentDirs({ deviceId, model: CHAOS_MODEL, mqtt: { url: opts.broker.url }, ingest: { stabilityMs: 100, pollIntervalMs: 50 } });
  const root = dirs.root;
  const why = mountTmpfs(dirs.stateDir, opts.sizeKiB ?? 8192);
  if (why) {
    rmSync(root, { recursive: true, force: true });
    return { skipped: why };
  }
  const nBefore = opts.before ?? 5;
  const nFull = opts.whileFull ?? 40;
  const captures = makeCaptures(nBefore + nFull, path.join(root, 'staging'));
  const ledger = new ResultLedger();
  const sub = await Subscriber.connect(opts.broker.url, `imaging/${deviceId}/+`);
  sub.client.on('message', (topic, payload) => {
    if (topic.endsWith('/result')) ledger.addResult(payload.toString());
    else if (topic.endsWith('/error')) ledger.addError(payload.toString());
  });
  const filler = path.join(dirs.stateDir, 'filler');
  let agent: AgentProcess | undefined;
  try {
    agent = await AgentProcess.start(dirs);
    for (const c of captures.slice(0, nBefore)) renameSync(c.staged, path.join(dirs.inbox, c.name));
    await until(() => captures.slice(0, nBefore).every((c) => ledger.has(c.hash)), 30_000, 'results before the disk fills');
    const fillerBytes = fillUp(filler);
    log(`diskfull: state filesystem filled (${fillerBytes} bytes of filler)`);
    const full = captures.slice(nBefore);
    for (const c of full) renameSync(c.staged, path.join(dirs.inbox, c.name));
    // The agent must notice and say so; then nothing more happens while the disk stays full.
    await agent.waitForLog(/state store is full/, 30_000);
    const pausedLog = true;
    await sleep(1500);
    const resultsWhileFull = full.filter((c) => ledger.has(c.hash)).length;
    const inboxWhileFull = filesUnder(dirs.inbox).length;
    log(`diskfull: paused with ${inboxWhileFull} files in the inbox, ${resultsWhileFull} results while full; removing the filler`);
    unlinkSync(filler);
    await until(() => captures.every((c) => ledger.has(c.hash)) && filesUnder(dirs.inbox).length === 0, 60_000, 'every result after space returned');
    const resumedLog = agent.logs.some((l) => /state store has space again/.test(l.msg));
    await sleep(300);
    const exitCode = await agent.stop('SIGTERM');
    return {
      scenario: 'diskfull',
      files: { before: nBefore, whileFull: nFull },
      fillerBytes,
      inboxWhileFull,
      resultsWhileFull,
      storeFullErrors: ledger.errors.filter((e) => e.code === 'state-store-full').length,
      otherErrors: ledger.errors.filter((e) => e.code !== 'state-store-full').map((e) => `${e.code}: ${e.message}`),
      pausedLog,
      resumedLog,
      delivery: ledger.audit(captures),
      store: auditStore(dirs.stateDir, captures),
      inboxLeft: filesUnder(dirs.inbox).length,
      quarantined: filesUnder(dirs.quarantineDir).length,
      exitCode,
    };
  } catch (err) {
    const du = spawnSync('du', ['-ab', dirs.stateDir], { encoding: 'utf8' }).stdout;
    if (agent) (err as Error).message += `\nstate dir:\n${du}\nagent log tail:\n${agent.tail(200)}\n${agent.stderr.join('')}`;
    throw err;
  } finally {
    await agent?.kill();
    await sub.close();
    unmount(dirs.stateDir);
    rmSync(root, { recursive: true, force: true });
  }
}

async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}
