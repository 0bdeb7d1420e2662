/**
 * A model bundle corrupted on its way (issue 7, Chaos). The shipped bundle packed as the central
 * server ships it (`model pack`, ustar), then damaged at random (seeded): truncated at a random byte or
 * with random bits flipped.
 * - Corrupted in flight (the document's sha256 is the good file's): downloadBundle (src/fleet/download.ts)
 *   from a real HTTP server refuses it and leaves nothing at the destination.
 * - Corrupted before it was hashed (the worst case: the sha256 matches the damaged bytes): the download
 *   succeeds, and then `edge-agent model unpack` or `edge-agent model verify` (signature, file hashes,
 *   golden outputs) refuses it with a reason; when both pass, the damage was in tar padding and every
 *   unpacked file is byte-identical to the original.
 * That a refused bundle leaves the serving model serving is tested by tests/fleet/rollout.test.ts and
 * tests/agent/reload.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DownloadError, downloadBundle } from '../../src/fleet/download.js';
import { packBundle } from '../../src/models/pack.js';
import { CLI } from '../helpers/agent.js';
import { chaosSeed, rng } from './lib/common.js';

const CASES = Number(process.env.CHAOS_BUNDLE_CASES ?? 8);
const SHIPPED = path.resolve('models/orientation-qa');
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function filesOf(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    out.set(path.relative(dir, p), sha(readFileSync(p)));
  }
  return out;
}

describe('chaos: model bundle corrupted during download', () => {
  let root: string;
  let good: Buffer;
  let served: Buffer = Buffer.alloc(0);
  let server: http.Server;
  let url: string;
  beforeAll(async () => {
    root = mkdtempSync(path.join(tmpdir(), 'chaos-bundle-'));
    await packBundle(SHIPPED, path.join(root, 'good.tar'));
    good = readFileSync(path.join(root, 'good.tar'));
    server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-tar', 'content-length': served.length });
      res.end(served);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/bundle.tar`;
  });
  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    rmSync(root, { recursive: true, force: true });
  });

  it(`${CASES} random truncations and bit flips: refused in flight by sha256, at the source by unpack/verify`, async () => {
    const seed = chaosSeed();
    console.log(`chaos bundle: seed ${seed}`);
    const random = rng(seed);
    const tally = { truncated: 0, flipped: 0, refusedInFlight: 0, refusedByUnpack: 0, refusedByVerify: 0, harmlessPadding: 0 };
    const reasons = new Set<string>();
    for (let i = 0; i < CASES; i++) {
      const bad = Buffer.from(good);
      let damaged: Buffer;
      if (i % 2 === 0) {
        damaged = bad.subarray(0, Math.floor(random() * bad.length));
        tally.truncated++;
      } else {
        const n = 1 + Math.floor(random() * 4);
        for (let k = 0; k < n; k++) bad[Math.floor(random() * bad.length)]! ^= 1 << Math.floor(random() * 8);
        damaged = bad;
        tally.flipped++;
      }
      if (sha(damaged) === sha(good)) continue; // a flip that flipped back: nothing to test
      served = damaged;

      // In flight: the document names the good file.
      const dest = path.join(root, `inflight-${i}.tar`);
      const err = await downloadBundle({ url, dest, sha256: sha(good), size: good.length, maxBytes: 2 * good.length, timeoutMs: 2000, attempts: 2 }).catch((e: unknown) => e);
      expect(err, `case ${i}: a damaged download was accepted`).toBeInstanceOf(DownloadError);
      expect(existsSync(dest)).toBe(false);
      tally.refusedInFlight++;

      // At the source: the document names the damaged file itself.
      const srcDest = path.join(root, `source-${i}.tar`);
      await downloadBundle({ url, dest: srcDest, sha256: sha(damaged), size: damaged.length, maxBytes: 2 * good.length, timeoutMs: 2000 });
      const dir = path.join(root, `unpacked-${i}`);
      const unpack = spawnSync(process.execPath, [CLI, 'model', 'unpack', srcDest, dir], { encoding: 'utf8' });
      if (unpack.status !== 0) {
        expect(unpack.stderr.trim().length, `case ${i}: unpack failed without a reason`).toBeGreaterThan(10);
        reasons.add(unpack.stderr.trim().split('\n')[0]!.replace(/^.*?: /, '').slice(0, 80));
        tally.refusedByUnpack++;
        continue;
      }
      const verify = spawnSync(process.execPath, [CLI, 'model', 'verify', dir], { encoding: 'utf8' });
      if (verify.status !== 0) {
        expect(`${verify.stdout}${verify.stderr}`).toMatch(/FAIL|refused|mismatch|signature|sha256|error/i);
        tally.refusedByVerify++;
        continue;
      }
      // Both passed: the damage can only have been in tar padding or unused header bytes.
      expect(filesOf(dir), `case ${i}: a damaged bundle verified with different content`).toEqual(filesOf(SHIPPED));
      tally.harmlessPadding++;
    }
    console.log(`chaos bundle: ${JSON.stringify(tally)} reasons: ${[...reasons].join(' | ')}`);
    expect(tally.refusedInFlight).toBeGreaterThan(0);
    expect(tally.refusedByUnpack + tally.refusedByVerify).toBeGreaterThan(0);
    writeFileSync(path.join(root, 'done'), '');
  }, 240_000);
});
