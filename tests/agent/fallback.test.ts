/**
 * Runtime fallback end to end: the compiled agent serving the shipped bundle with model.runtime
 * [onnx, tfjs] on its embedded broker, inference in supervised worker processes. While files flow, the
 * onnx runtime starts crashing on every call (the worker's test fault hook: with EDGE_AGENT_TEST_FAULTS=1
 * and the file `edge-agent-crash-runtime-onnx` in the fault dir, every onnx call aborts its worker
 * with SIGABRT, zero-input canaries included, so the supervisor blames the runtime, not an input).
 * The supervisor marks onnx failed after its restart limit; the agent must fall back to tfjs, say so on
 * `error` naming both runtimes, announce the new model in `state`, and every dropped file must still
 * yield exactly one result (the ones refused by the failed runtime run again on tfjs), none quarantined.
 */
import { mkdirSync, mkdtempSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { CRASH_RUNTIME_PREFIX, FAULT_DIR_ENV, FAULT_ENV } from '../../src/runtimes/worker/protocol.js';
import { AgentProcess, agentDirs, inferByFileName } from '../helpers/agent.js';
import { freePort } from '../helpers/ports.js';
import { Subscriber, until } from '../mqtt/util.js';

const PLANES = ['axial', 'coronal', 'sagittal'].map((p) => path.resolve(`tests/fixtures/models/colin27-${p}.png`));

/** 24 distinct real images: the three Colin27 planes, rotated by 0/90/180/270 degrees, plain and mirrored. */
async function captures(dir: string): Promise<string[]> {
  const files: string[] = [];
  for (const [i, src] of PLANES.entries()) {
    for (const angle of [0, 90, 180, 270]) {
      for (const flop of [false, true]) {
        const f = path.join(dir, `cap-${i}-${angle}-${flop ? 'm' : 'p'}.png`);
        let img = sharp(src).rotate(angle);
        if (flop) img = img.flop();
        await img.png().toFile(f);
        files.push(f);
      }
    }
  }
  return files;
}

interface Result {
  label: string;
  scores: Record<string, number>;
  model: { runtime: string; provider: string; sha256: string };
  input: { fileName: string };
}

interface ErrorMessage {
  code: string;
  message: string;
  runtime?: string;
  reason?: string;
  fallback?: { runtime: string; precision: string; provider: string } | null;
}

const agents: AgentProcess[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.kill()));
});

describe('runtime fallback', () => {
  it('the preferred runtime crashing on every call is marked failed; the agent falls back to the next, says so, and loses no file', async () => {
    const staging = mkdtempSync(path.join(tmpdir(), 'fallback-staging-'));
    const copies = path.join(staging, 'copies');
    mkdirSync(copies);
    const files = await captures(staging);
    for (const f of files) await sharp(f).toFile(path.join(copies, path.basename(f)));
    const N = files.length;
    const faultDir = mkdtempSync(path.join(tmpdir(), 'fallback-faults-'));

    const port = await freePort();
    const deviceId = 'dev-fallback';
    const dirs = agentDirs({
      deviceId,
      mqtt: { url: '', embedded: { host: '127.0.0.1', port } },
      model: { runtime: ['onnx', 'tfjs'], precision: 'fp32', isolation: 'process', workers: 1, restartLimit: { count: 2, windowSec: 60 } },
      ingest: { stabilityMs: 100, pollIntervalMs: 25 },
    });
    const agent = await AgentProcess.start(dirs, [], { [FAULT_ENV]: '1', [FAULT_DIR_ENV]: faultDir });
    agents.push(agent);
    const sub = await Subscriber.connect(`mqtt://127.0.0.1:${port}`, `imaging/${deviceId}/#`, { protocolVersion: 4 });
    const results = (): Result[] => sub.on(`imaging/${deviceId}/result`).map((m) => JSON.parse(m.payload) as Result);
    const errors = (): ErrorMessage[] => sub.on(`imaging/${deviceId}/error`).map((m) => JSON.parse(m.payload) as ErrorMessage);
    try {
      expect(agent.logs.find((l) => /^runtime: onnx\/fp32 \(cpu\) preference order/.test(l.msg))).toBeDefined();

      // A third of the files in; once onnx has served some, it starts crashing on every call; the rest in.
      const first = N / 3;
      for (const f of files.slice(0, first)) renameSync(f, path.join(dirs.inbox, path.basename(f)));
      await until(() => results().length >= 3, 60_000, 'first results');
      expect(results().every((r) => r.model.runtime === 'onnx')).toBe(true);
      writeFileSync(path.join(faultDir, CRASH_RUNTIME_PREFIX + 'onnx'), '');
      for (const f of files.slice(first)) renameSync(f, path.join(dirs.inbox, path.basename(f)));

      await until(() => results().length >= N, 120_000, `${N} results`);
      await new Promise((r) => setTimeout(r, 500)); // anything extra (a duplicate) would arrive now

      // onnx was marked failed by the supervisor after its restart limit, with the crashes as the reason
      const failedLog = agent.logs.find((l) => /^runtime 'onnx' marked failed after 3 worker restarts/.test(l.msg));
      expect(failedLog).toBeDefined();
      expect(agent.logs.filter((l) => /^inference worker restarting \(exit\): worker killed by SIGABRT/.test(l.msg)).length).toBeGreaterThanOrEqual(2);

      // one error naming both runtimes and the reason
      const fallbackErrors = errors().filter((e) => e.code === 'runtime-failed');
      expect(fallbackErrors).toHaveLength(1);
      const err = fallbackErrors[0]!;
      expect(err).toMatchObject({ runtime: 'onnx', fallback: { runtime: 'tfjs', precision: 'fp32', provider: 'wasm' } });
      expect(err.message).toMatch(/^runtime 'onnx' \(onnx\/fp32\) failed: 3 worker restarts within 60 s \(last: .*SIGABRT.*\); fell back to 'tfjs' \(tfjs\/fp32, provider wasm\)$/);
      expect(errors().filter((e) => e.code !== 'runtime-failed')).toEqual([]); // no file failed

      // every file exactly one result; the later ones from tfjs
      const got = results();
      expect(got).toHaveLength(N);
      expect(new Set(got.map((r) => r.input.fileName))).toEqual(new Set(files.map((f) => path.basename(f))));
      const byRuntime = (rt: string) => got.filter((r) => r.model.runtime === rt).length;
      expect(byRuntime('onnx')).toBeGreaterThanOrEqual(3);
      expect(byRuntime('tfjs')).toBeGreaterThanOrEqual(N - first);
      expect(got.filter((r) => r.model.runtime === 'tfjs').every((r) => r.model.provider === 'wasm')).toBe(true);
      expect(readdirSync(dirs.quarantineDir)).toEqual([]);
      expect(agent.exitCode).toBeNull();

      // the retained state announces the model now serving
      const states = sub.on(`imaging/${deviceId}/state`).map((m) => JSON.parse(m.payload) as { state: string; model?: { runtime: string } });
      expect(states.at(-1)).toMatchObject({ state: 'online', model: { runtime: 'tfjs' } });

      // same labels as in-process onnx inference (`edge-agent infer`, no fault hook there)
      const r = inferByFileName<Result>(dirs.configFile, files.map((f) => path.join(copies, path.basename(f))));
      expect(r.status, r.stderr).toBe(0);
      const reference = r.results;
      for (const res of got) expect(res.label, res.input.fileName).toBe(reference.get(res.input.fileName)!.label);

      await agent.stop();
      expect(agent.exitCode).toBe(0);
    } finally {
      await sub.close();
    }
  }, 180_000);
});
