/**
 * Hostile files (issue 7, Chaos): mutated real DICOM, PNG and JPEG from the seeds in
 * tests/fixtures/fuzz-seeds (tests/chaos/fuzz/corpus.ts). DICOM by tests/chaos/fuzz/mutate.ts (bit
 * flips, truncation, bogus / huge / undefined lengths, bad VRs, bad transfer syntax UIDs, pixel data
 * length mismatches, broken geometry, sequence lengths, splices); PNG and JPEG, which sharp/libvips
 * decodes in native code, by tests/chaos/fuzz/mutate-image.ts (chunk and marker lengths, CRCs, IHDR and
 * SOF geometry, Huffman / quantisation tables, SOS fields, truncated or damaged image data, missing
 * IEND / EOI, bogus restart markers, hostile EXIF / ICC, reordered segments, blind damage).
 *
 * 1. 10,000 cases (CHAOS_FUZZ_CASES) through the agent's decode + preprocess path in a watched child
 *    process: no crash, no case beyond the per-file timeout (the pipeline's decode pool stops a decode
 *    at 5 s here: 'decode-timeout'), every failure a DecodeError with a code and a message (what the
 *    pipeline quarantines by), memory bounded; all of it for each seed format, reported per format.
 * 2. A batch end to end through the running agent, DICOM and image cases: each file either classified
 *    (result) or quarantined with a sidecar naming the same code the decoder gives in-process, and an
 *    `error` message; the agent stays up and the inbox ends empty.
 * Seed: CHAOS_SEED (printed). Longer runs: `node dist/bench/chaos/run.js fuzz --fuzz-cases N`.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeBuffer, DecodeError, defaultDecodeOptions } from '../../src/decode/index.js';
import { AgentProcess, agentDirs } from '../helpers/agent.js';
import { mosquittoAvailable, skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Subscriber } from '../mqtt/util.js';
import { CHAOS_MODEL, chaosSeed, filesUnder, sleep } from './lib/common.js';
import { SEED_FORMATS, type SeedFormat } from './fuzz/corpus.js';
import { fuzzCase, FUZZ_WORKER, runFuzz } from './fuzz/harness.js';

const CASES = Number(process.env.CHAOS_FUZZ_CASES ?? 10_000);
const E2E_CASES = Number(process.env.CHAOS_FUZZ_E2E_CASES ?? 60);

if (process.env.CI === 'true' && !mosquittoAvailable) throw new Error('CI=true: mosquitto is a required peer for the chaos suite');

describe('chaos: decode fuzzer', () => {
  it(`${CASES} mutated real DICOM, PNG and JPEG files: no crash, no hang, every failure a coded DecodeError, memory bounded`, async () => {
    expect(existsSync(FUZZ_WORKER), 'run `npm run build` first (npm test does)').toBe(true);
    const seed = chaosSeed();
    console.log(`chaos fuzz: seed ${seed} (replay with CHAOS_SEED=${seed})`);
    const r = await runFuzz({ cases: CASES, seed, decodeTimeoutMs: 5_000, timeoutMs: 20_000, log: (l) => console.log(l) });
    console.log(`chaos fuzz: ${JSON.stringify({ ...r, byFormat: undefined, findings: r.findings.slice(0, 10) })}`);
    for (const f of SEED_FORMATS) console.log(`chaos fuzz ${f}: ${JSON.stringify(r.byFormat[f])}`);
    const total = Object.values(r.outcomes).reduce((a, b) => a + b, 0);
    expect(total + r.hangs + r.crashes).toBe(CASES);
    expect(r.crashes, JSON.stringify(r.findings)).toBe(0);
    expect(r.hangs, JSON.stringify(r.findings)).toBe(0);
    expect(r.bugs, JSON.stringify(r.findings)).toBe(0);
    expect(r.emptyReasons).toBe(0);
    // Both kinds of outcome occur, or the mutator is not doing its job.
    expect(r.outcomes.ok ?? 0).toBeGreaterThan(CASES / 50);
    expect(total - (r.outcomes.ok ?? 0)).toBeGreaterThan(CASES / 2);
    // The same guarantees for each format, and each format's mutator both breaks files and leaves some decodable.
    for (const f of SEED_FORMATS) {
      const p = r.byFormat[f];
      const n = Object.values(p.outcomes).reduce((a, b) => a + b, 0);
      const what = `${f}: ${JSON.stringify(p)}`;
      expect(p.seeds, what).toBeGreaterThan(0);
      expect(p.cases, what).toBeGreaterThan(CASES / 10);
      expect(p.crashes + p.hangs + p.bugs + p.emptyReasons, what).toBe(0);
      expect(p.outcomes.ok ?? 0, what).toBeGreaterThan(n / 50);
      expect(n - (p.outcomes.ok ?? 0), what).toBeGreaterThan(n / 2);
    }
    // Bounded: the worker's RSS does not keep growing with the number of files. The first half is
    // warm-up (WASM codec heaps, which never shrink; glibc's per-thread arenas, which keep what libvips'
    // threads freed), after which it wanders but holds (docs/RELIABILITY.md: the named 10,000-case run grew
    // 243 MiB from the middle to the end; over 200,000 cases it was lower at the end than at the middle).
    expect(r.rssMiB.peak).toBeLessThan(1024);
    expect(r.rssMiB.end - r.rssMiB.mid).toBeLessThan(384);
  }, 600_000);
});

describe.skipIf(skipWithoutMosquitto)('chaos: mutated files through the running agent', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker?.dispose();
  });

  it(`${E2E_CASES} mutated files: each classified, or quarantined with the decoder's reason in a sidecar and an error message`, async () => {
    const seed = chaosSeed();
    console.log(`chaos fuzz e2e: seed ${seed}`);
    const deviceId = 'chaos-fuzz';
    const dirs = agentDirs({ deviceId, model: CHAOS_MODEL, mqtt: { url: broker.url }, ingest: { stabilityMs: 100, pollIntervalMs: 50 } });
    const sub = await Subscriber.connect(broker.url, `imaging/${deviceId}/+`);
    const agent = await AgentProcess.start(dirs);
    try {
      // What the decoder says in-process about each case, then the same bytes into the inbox.
      const expected = new Map<string, string>();
      // Results are matched by content hash: a published fileName may be a content-hash name when the file's
      // header repeats a token of its name (src/pipeline/names.ts), which a mutated header can do.
      const hashOf = new Map<string, string>();
      const opts = defaultDecodeOptions();
      const seen = new Set<string>();
      const formats = new Map<string, SeedFormat>();
      const EXT: Record<SeedFormat, string> = { dicom: 'dcm', png: 'png', jpeg: 'jpg' };
      // E2E_CASES files, and more if needed until every format has a file the decoder refuses in-process.
      const refused = new Set<SeedFormat>();
      for (let i = 0; expected.size < E2E_CASES || refused.size < SEED_FORMATS.length; i++) {
        const c = fuzzCase(seed, i);
        const key = Buffer.from(c.bytes).toString('base64');
        if (c.bytes.length === 0 || seen.has(key)) continue; // an empty or repeated file is a different test
        seen.add(key);
        let outcome = 'ok';
        try {
          await decodeBuffer(c.bytes, opts);
        } catch (err) {
          outcome = err instanceof DecodeError ? err.code : 'other';
        }
        const name = `fuzz-${String(i).padStart(5, '0')}.${EXT[c.format]}`;
        expected.set(name, outcome);
        formats.set(name, c.format);
        if (outcome !== 'ok') refused.add(c.format);
        hashOf.set(name, `sha256:${createHash('sha256').update(c.bytes).digest('hex')}`);
        const tmp = path.join(dirs.root, name);
        writeFileSync(tmp, c.bytes);
        writeFileSync(path.join(dirs.inbox, name), readFileSync(tmp));
      }
      const deadline = Date.now() + 120_000;
      while (Date.now() < deadline && filesUnder(dirs.inbox).length > 0) await sleep(100);
      await sleep(500);
      expect(filesUnder(dirs.inbox)).toEqual([]);
      expect(agent.exitCode).toBeNull();

      const results = sub.on(`imaging/${deviceId}/result`).map((m) => JSON.parse(m.payload) as { input: { fileName: string; contentHash: string } });
      const errors = sub.on(`imaging/${deviceId}/error`).map((m) => JSON.parse(m.payload) as { code: string; message: string; input?: { fileName?: string } });
      const quarantined = filesUnder(dirs.quarantineDir).filter((f) => f.endsWith('.json'));
      const sidecars = new Map(
        quarantined.map((f) => {
          const s = JSON.parse(readFileSync(path.join(dirs.quarantineDir, f), 'utf8')) as { originalName: string; code: string; reason: string };
          return [s.originalName, s];
        }),
      );
      const classified = new Set(results.map((r) => r.input.contentHash));
      let ok = 0;
      let bad = 0;
      const perFormat: Record<string, { ok: number; quarantined: number }> = {};
      for (const [name, outcome] of expected) {
        const pf = (perFormat[formats.get(name)!] ??= { ok: 0, quarantined: 0 });
        if (outcome === 'ok') pf.ok++;
        else pf.quarantined++;
        if (outcome === 'ok') {
          ok++;
          // A decodable file gets a result (or, if the model cannot take it, a clear quarantine).
          if (!classified.has(hashOf.get(name)!)) expect(sidecars.get(name)?.reason, `${name} decodes in-process but got neither result nor reason`).toBeTruthy();
        } else {
          bad++;
          const s = sidecars.get(name);
          expect(s, `${name} (${outcome}) was not quarantined`).toBeDefined();
          expect(s!.code, `${name}: ${s!.reason}`).toBe(outcome);
          expect(s!.reason.length).toBeGreaterThan(5);
          expect(classified.has(hashOf.get(name)!)).toBe(false);
        }
      }
      console.log(`chaos fuzz e2e: ${expected.size} files, ${ok} decodable, ${bad} quarantined, ${results.length} results, ${errors.length} error messages; per format ${JSON.stringify(perFormat)}`);
      expect(bad).toBeGreaterThan(E2E_CASES / 3);
      // Image cases went through the agent too, and some of them were refused.
      for (const f of SEED_FORMATS) expect(perFormat[f]?.quarantined ?? 0, `${f} cases quarantined`).toBeGreaterThan(0);
      expect(errors.length).toBe(sidecars.size);
      for (const e of errors) expect(e.message.length).toBeGreaterThan(5);
      expect(await agent.stop('SIGTERM')).toBe(0);
    } finally {
      await agent.kill();
      await sub.close();
    }
  }, 240_000);
});
