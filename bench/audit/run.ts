/**
 * Audit log size and cost: how many bytes one audit row adds to the state store (per kind), how long
 * an append takes, and how fast `audit export` streams. Figures for docs/SECURITY.md ("Audit log").
 *
 *   npm run build && node dist/bench/audit/run.js [--rows N] [--out DIR]
 *
 * Rows are realistic: 64-hex model sha256 and input hashes, 32-hex resultIds, the shipped model's id.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { StateStore } from '../../src/store/index.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : dflt;
}

const rows = Number(arg('rows', '100000'));
const outDir = arg('out', 'bench/results');
const dir = mkdtempSync(path.join(tmpdir(), 'audit-bench-'));
const store = StateStore.open(dir);
const file = path.join(dir, 'agent.db');
const hex = (n: number) => randomBytes(n).toString('hex');
const model = { id: 'orientation-qa', version: '1.1.0', sha256: hex(32) };

function size(): number {
  store.db.pragma('wal_checkpoint(TRUNCATE)');
  return statSync(file).size;
}

function measure(kind: string, add: (i: number) => void): { kind: string; rows: number; bytesPerRow: number; appendUs: { mean: number } } {
  const before = size();
  const t0 = process.hrtime.bigint();
  // One transaction per row, as in the agent (a result's rows commit with its outbox rows).
  for (let i = 0; i < rows; i++) add(i);
  const ns = Number(process.hrtime.bigint() - t0);
  const after = size();
  return { kind, rows, bytesPerRow: Math.round(((after - before) / rows) * 10) / 10, appendUs: { mean: Math.round(ns / rows / 100) / 10 } };
}

const kinds = [
  measure('result', () => store.audit.result({ resultId: hex(16), model, inputSha256: hex(32), frame: 0 })),
  measure('command', (i) =>
    store.audit.command({ cmd: 'set-config', sender: 'central', payloadSha256: hex(32), outcome: 'ok', transaction: `tx-${i}`, topic: 'imaging/ct-room-2/request/set-config' }),
  ),
  measure('model', () => store.audit.modelChange({ from: model, to: { ...model, version: '1.2.0', sha256: hex(32) }, reason: 'rollout r-2026-01: activated', actor: 'central' })),
];

const t0 = process.hrtime.bigint();
let exported = 0;
let ndjsonBytes = 0;
for (const e of store.audit.entries({ since: 0 })) {
  exported++;
  ndjsonBytes += Buffer.byteLength(JSON.stringify(e)) + 1;
}
const exportS = Number(process.hrtime.bigint() - t0) / 1e9;
const t1 = process.hrtime.bigint();
const verify = store.audit.verify();
const verifyS = Number(process.hrtime.bigint() - t1) / 1e9;
const total = size();
store.close();
rmSync(dir, { recursive: true, force: true });

const result = {
  bench: 'audit',
  command: `node dist/bench/audit/run.js --rows ${rows}`,
  at: new Date().toISOString(),
  machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version },
  kinds,
  export: { rows: exported, seconds: Math.round(exportS * 100) / 100, rowsPerSecond: Math.round(exported / exportS), ndjsonBytesPerRow: Math.round(ndjsonBytes / exported) },
  verify: { ok: verify.ok, rows: verify.rows, seconds: Math.round(verifyS * 100) / 100 },
  storeBytes: total,
};
mkdirSync(outDir, { recursive: true });
const out = path.join(outDir, `audit-${result.at.replace(/[:.]/g, '-')}.json`);
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
process.stdout.write(JSON.stringify(result, null, 2) + `\nwritten to ${out}\n`);
