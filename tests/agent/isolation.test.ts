/**
 * Inference isolation end to end: the compiled agent (`npm test` builds first) on its embedded broker,
 * model.isolation 'process', files flowing into its inbox, and its inference worker process killed
 * with SIGKILL (twice) while they flow. Every file must still yield exactly one result, with the same
 * scores `edge-agent infer` (in-process inference) gives for that file; nothing is quarantined.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentProcess, agentDirs, inferByFileName } from '../helpers/agent.js';
import { freePort } from '../helpers/ports.js';
import { Subscriber, until } from '../mqtt/util.js';

const MODEL = path.resolve('tests/fixtures/runtimes/tiny-cnn.onnx');
const LABELS = ['up', 'right', 'down', 'left'];

/** An unsigned bundle around the tiny test CNN (the shipped bundle may still be in training). */
function tinyBundle(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'bundle-'));
  copyFileSync(MODEL, path.join(dir, 'model.onnx'));
  const bytes = readFileSync(MODEL);
  const manifest = {
    id: 'tiny-cnn',
    version: '0.0.1',
    task: 'test classification',
    labels: LABELS,
    input: {
      name: 'input',
      layout: 'NCHW',
      shape: [1, 1, 224, 224],
      dtype: 'float32',
      channels: 1,
      normalisation: { mean: [0.5], std: [0.25] },
      resize: 'stretch',
    },
    output: { name: 'logits', activation: 'softmax' },
    files: [{ path: 'model.onnx', format: 'onnx', precision: 'fp32', sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length }],
  };
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
  return dir;
}

/** n distinct grey PNGs (gradients with different slopes and offsets: distinct content, distinct scores). */
async function pngs(n: number, dir: string): Promise<string[]> {
  const files: string[] = [];
  for (let k = 0; k < n; k++) {
    const w = 96;
    const px = Buffer.alloc(w * w);
    for (let y = 0; y < w; y++) for (let x = 0; x < w; x++) px[y * w + x] = (x * (1 + (k % 5)) + y * (k % 7) + 13 * k) % 256;
    const f = path.join(dir, `cap${String(k).padStart(3, '0')}.png`);
    await sharp(px, { raw: { width: w, height: w, channels: 1 } }).png().toFile(f);
    files.push(f);
  }
  return files;
}

/** Child processes of `pid` whose command line runs the inference worker entry. */
function workerPids(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid && readFileSync(`/proc/${d}/cmdline`, 'utf8').includes('runtimes/worker/entry.js')) out.push(Number(d));
    } catch {
      // the process went away while we looked
    }
  }
  return out;
}

interface Result {
  label: string;
  scores: Record<string, number>;
  model: { runtime: string; provider: string };
  input: { fileName: string };
}

const agents: AgentProcess[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.kill()));
});

describe('agent with inference isolation', () => {
  it('SIGKILL of its inference worker while files flow: every file still yields one result, nothing quarantined', async () => {
    const N = 40;
    const bundle = tinyBundle();
    const staging = mkdtempSync(path.join(tmpdir(), 'iso-staging-'));
    const files = await pngs(N, staging);
    const copies = path.join(staging, 'copies');
    mkdirSync(copies);
    for (const f of files) copyFileSync(f, path.join(copies, path.basename(f)));

    const port = await freePort();
    const deviceId = 'dev-isolation';
    const dirs = agentDirs({
      deviceId,
      mqtt: { url: '', embedded: { host: '127.0.0.1', port } },
      model: { bundle, allowUnsigned: true, isolation: 'process', workers: 1, inferenceTimeoutMs: 5000 },
      ingest: { stabilityMs: 100, pollIntervalMs: 25 },
    });
    const agent = await AgentProcess.start(dirs);
    agents.push(agent);
    const sub = await Subscriber.connect(`mqtt://127.0.0.1:${port}`, `imaging/${deviceId}/#`, { protocolVersion: 4 });
    const results = (): Result[] => sub.on(`imaging/${deviceId}/result`).map((m) => JSON.parse(m.payload) as Result);
    try {
      const agentPid = agent.proc.pid!;
      const first = workerPids(agentPid);
      expect(first).toHaveLength(1);
      expect(first[0]).not.toBe(agentPid);

      // First half in; kill the worker once results are flowing; second half in; kill the new worker too.
      for (const f of files.slice(0, N / 2)) renameSync(f, path.join(dirs.inbox, path.basename(f)));
      await until(() => results().length >= 3, 30_000, 'first results');
      const seenAtFirstKill = results().length;
      process.kill(first[0]!, 'SIGKILL');
      for (const f of files.slice(N / 2)) renameSync(f, path.join(dirs.inbox, path.basename(f)));
      await until(() => workerPids(agentPid).some((p) => p !== first[0]), 30_000, 'a replacement worker');
      const second = workerPids(agentPid).find((p) => p !== first[0])!;
      await until(() => results().length >= N / 2 + 3, 30_000, 'results from the second half');
      const seenAtSecondKill = results().length;
      process.kill(second, 'SIGKILL');

      await until(() => results().length >= N, 60_000, `${N} results`);
      await new Promise((r) => setTimeout(r, 500)); // anything extra (a duplicate) would arrive now
      expect(seenAtFirstKill).toBeLessThan(N);
      expect(seenAtSecondKill).toBeLessThan(N);

      const got = results();
      expect(got).toHaveLength(N);
      expect(new Set(got.map((r) => r.input.fileName))).toEqual(new Set(files.map((f) => path.basename(f))));
      expect(sub.on(`imaging/${deviceId}/error`)).toEqual([]);
      expect(readdirSync(dirs.quarantineDir)).toEqual([]);
      const restarts = agent.logs.filter((l) => /^inference worker restarting \(exit\)/.test(l.msg));
      expect(restarts.length).toBeGreaterThanOrEqual(2);
      expect(restarts.map((l) => l.pid)).toEqual(expect.arrayContaining([first[0], second]));
      expect(agent.exitCode).toBeNull(); // the agent itself never went down

      // Same scores as in-process inference (`edge-agent infer` keeps the in-process path).
      const r = inferByFileName<Result>(dirs.configFile, files.map((f) => path.join(copies, path.basename(f))));
      expect(r.status, r.stderr).toBe(0);
      const reference = r.results;
      expect(reference.size).toBe(N);
      for (const res of got) {
        const ref = reference.get(res.input.fileName)!;
        expect(res.label).toBe(ref.label);
        expect(res.scores).toEqual(ref.scores);
        expect(res.model).toMatchObject({ runtime: 'onnx', provider: 'cpu' });
      }
      expect(new Set(got.map((x) => JSON.stringify(x.scores))).size).toBeGreaterThan(N / 2); // the inputs really differ

      await agent.stop();
      expect(agent.exitCode).toBe(0);
      expect(workerPids(agentPid)).toEqual([]);
    } finally {
      await sub.close();
    }
  });
});
