/**
 * bench/chaos: the chaos scenarios of tests/chaos at any size, with the figures written to
 * bench/results/chaos-<UTC timestamp>.json (docs/RELIABILITY.md quotes them).
 *
 *   npm run build && node dist/bench/chaos/run.js [scenarios] [--iterations N] [--seed S] ...
 *
 * Scenarios (default: all): kill9, store, broker, broker-nopersist, diskfull, fuzz.
 *   --iterations N   kill9: SIGKILLs (default 100); --max-attempts N: the agent's ingest.maxAttempts (default 100)
 *   --store-kills N  store: writer kills (default 200); --snapshots N (default 50)
 *   --restarts N     broker: mosquitto restarts (default 20)
 *   --fuzz-cases N   fuzz: mutated files (default 10000); --fuzz-timeout-ms T (the decode limit, default 5000)
 *   --seed S         one seed for every scenario (default: random, printed and recorded)
 *   --out DIR        default bench/results
 * Needs mosquitto and dcmtk (Debian) for kill9/broker/diskfull, and root (tmpfs mount) for diskfull.
 */
import { execSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startMosquitto } from '../../tests/helpers/mosquitto.js';
import { runBrokerRestarts } from '../../tests/chaos/lib/broker.js';
import { chaosSeed } from '../../tests/chaos/lib/common.js';
import { runDiskFull } from '../../tests/chaos/lib/diskfull.js';
import { runKill9 } from '../../tests/chaos/lib/kill9.js';
import { runStoreChaos } from '../../tests/chaos/lib/store.js';
import { runFuzz } from '../../tests/chaos/fuzz/harness.js';

const ALL = ['kill9', 'store', 'broker', 'broker-nopersist', 'diskfull', 'fuzz'];

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    iterations: { type: 'string', default: '100' },
    'max-attempts': { type: 'string', default: '100' },
    'store-kills': { type: 'string', default: '200' },
    snapshots: { type: 'string', default: '50' },
    restarts: { type: 'string', default: '20' },
    'fuzz-cases': { type: 'string', default: '10000' },
    'fuzz-timeout-ms': { type: 'string', default: '5000' },
    seed: { type: 'string' },
    out: { type: 'string', default: 'bench/results' },
  },
});
const scenarios = positionals.length > 0 ? positionals : ALL;
for (const s of scenarios) if (!ALL.includes(s)) throw new Error(`unknown scenario ${s}; one of ${ALL.join(', ')}`);
const seed = values.seed !== undefined ? Number(values.seed) : chaosSeed();
const log = (l: string): void => console.log(`[${new Date().toISOString()}] ${l}`);

const sh = (cmd: string): string => {
  try {
    return execSync(cmd, { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
};
const started = new Date();
const run = {
  bench: 'chaos',
  startedAt: started.toISOString(),
  command: `node dist/bench/chaos/run.js ${process.argv.slice(2).join(' ')}`.trim(),
  seed,
  // CHAOS_COMMIT: when run from an exported tree (git archive of a commit) that has no .git.
  commit: process.env.CHAOS_COMMIT ?? sh('git rev-parse --short HEAD'),
  dirty: process.env.CHAOS_COMMIT ? false : sh('git status --porcelain --untracked-files=no') !== '',
  machine: { host: os.hostname(), cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? 'unknown', memGiB: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), node: process.version, loadavg: os.loadavg() },
  // glibc allocator setting the children inherit (the fuzz worker's RSS depends on it: libvips threads' arenas).
  env: { MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? null },
  results: {} as Record<string, unknown>,
  wallMs: 0,
};
log(`chaos bench: seed ${seed}, scenarios ${scenarios.join(', ')}`);

const outDir = path.resolve(values.out);
mkdirSync(outDir, { recursive: true });
const file = path.join(outDir, `chaos-${started.toISOString().replace(/[:.]/g, '-').replace(/-\d\d\dZ$/, 'Z')}.json`);
const write = (): void => {
  run.wallMs = Date.now() - started.getTime();
  writeFileSync(file, JSON.stringify(run, null, 2) + '\n');
};

for (const s of scenarios) {
  log(`-- ${s}`);
  try {
    if (s === 'kill9' || s === 'broker' || s === 'broker-nopersist' || s === 'diskfull') {
      const persistence = s !== 'broker-nopersist';
      const broker = await startMosquitto({ persistence });
      try {
        if (s === 'kill9') run.results[s] = await runKill9({ iterations: Number(values.iterations), seed, broker, log, maxAttempts: Number(values['max-attempts']) });
        else if (s === 'diskfull') run.results[s] = await runDiskFull({ broker, log });
        else run.results[s] = await runBrokerRestarts({ broker, persistence, restarts: Number(values.restarts), seed, log });
      } finally {
        await broker.dispose();
      }
    } else if (s === 'store') {
      run.results[s] = await runStoreChaos({ kills: Number(values['store-kills']), snapshots: Number(values.snapshots), seed, log });
    } else if (s === 'fuzz') {
      run.results[s] = await runFuzz({ cases: Number(values['fuzz-cases']), seed, decodeTimeoutMs: Number(values['fuzz-timeout-ms']), saveDir: path.join(outDir, `fuzz-findings-${seed}`), log });
    }
  } catch (err) {
    run.results[s] = { error: (err as Error).message.slice(0, 4000) };
  }
  log(`${s}: ${JSON.stringify(run.results[s])}`);
  write();
}
write();
log(`written ${path.relative(process.cwd(), file)}`);
