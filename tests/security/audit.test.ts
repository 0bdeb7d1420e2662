/**
 * The audit log end to end: the real agent records the model it starts with, every result it
 * publishes (same resultId as on the broker) and a SIGHUP model reload; `edge-agent audit export`
 * prints them as NDJSON while the agent keeps running, filters by time and kind, and `audit verify`
 * checks the chain.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentProcess, CLI, agentDirs, type AgentDirs } from '../helpers/agent.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Subscriber, until } from '../mqtt/util.js';

const CT = path.resolve('tests/fixtures/dicom/pydicom_CT_small.dcm');

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const ndjson = (s: string) =>
  s
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe.skipIf(skipWithoutMosquitto)('audit log: the running agent, edge-agent audit export/verify', () => {
  let mosq: Mosquitto;
  let sub: Subscriber;
  let agent: AgentProcess;
  let dirs: AgentDirs;
  const started = new Date();

  beforeAll(async () => {
    mosq = await startMosquitto();
    sub = await Subscriber.connect(mosq.url, 'imaging/audit-1/result');
    dirs = agentDirs({ deviceId: 'audit-1', mqtt: { url: mosq.url }, model: { runtime: 'onnx' } });
    agent = await AgentProcess.start(dirs);
    copyFileSync(CT, path.join(dirs.inbox, 'ct.dcm'));
    await until(() => sub.on('imaging/audit-1/result').length === 1, 120_000, 'result');
    agent.proc.kill('SIGHUP');
    await agent.waitForLog(/^model reloaded$/, 120_000);
  }, 300_000);

  afterAll(async () => {
    await agent?.stop();
    await sub?.close();
    await mosq?.dispose();
  });

  it('export (agent still running): the start model, the published result, the SIGHUP reload, in order', () => {
    const r = cli(['audit', 'export', '--since', '1h', '--state-dir', dirs.stateDir]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const entries = ndjson(r.stdout);
    expect(entries.map((e) => e.kind)).toEqual(['model', 'result', 'model']);
    const published = JSON.parse(sub.on('imaging/audit-1/result')[0]!.payload) as {
      resultId: string;
      model: { id: string; version: string; sha256: string };
      input: { contentHash: string };
    };
    const [start, result, reload] = entries;
    expect(start).toMatchObject({ seq: 1, kind: 'model', from: null, to: { id: published.model.id, version: published.model.version }, reason: 'start', actor: 'operator' });
    expect(result).toMatchObject({
      seq: 2,
      kind: 'result',
      resultId: published.resultId,
      model: { id: published.model.id, version: published.model.version, sha256: published.model.sha256 },
      inputSha256: published.input.contentHash.replace(/^sha256:/, ''),
      frame: 0,
    });
    expect(reload).toMatchObject({ seq: 3, kind: 'model', reason: 'sighup-reload', actor: 'operator', to: { version: published.model.version } });
    for (const e of entries) {
      expect(Date.parse(e.at as string)).toBeGreaterThanOrEqual(started.getTime() - 1000);
      expect(e.hash).toMatch(/^[0-9a-f]{64}$/);
    }
  });

  it('--kind and --since filter; a time in the future exports nothing', () => {
    expect(ndjson(cli(['audit', 'export', '--since', '1h', '--kind', 'result', '--state-dir', dirs.stateDir]).stdout).map((e) => e.kind)).toEqual(['result']);
    const future = cli(['audit', 'export', '--since', new Date(Date.now() + 3_600_000).toISOString(), '--state-dir', dirs.stateDir]);
    expect(future.status).toBe(0);
    expect(future.stdout).toBe('');
  });

  it('usage errors and a missing store say so and exit non-zero', () => {
    const bad = cli(['audit', 'export', '--since', 'last tuesday', '--state-dir', dirs.stateDir]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--since "last tuesday": expected an ISO time .* or a duration/);
    const kind = cli(['audit', 'export', '--since', '1h', '--kind', 'everything', '--state-dir', dirs.stateDir]);
    expect(kind.status).toBe(2);
    const none = cli(['audit', 'export', '--since', '1h', '--state-dir', path.join(dirs.root, 'nowhere')]);
    expect(none.status).toBe(1);
    expect(none.stderr).toMatch(/no state store at/);
  });

  it('verify: the chain is intact', () => {
    const r = cli(['audit', 'verify', '--state-dir', dirs.stateDir]);
    expect(r.stdout).toBe('audit log intact: 3 rows\n');
    expect(r.status).toBe(0);
  });

  it('archive: rows move to an NDJSON file, the live agent keeps appending and the chain still verifies', { timeout: 180_000 }, async () => {
    const out = path.join(dirs.root, 'audit-archive.ndjson');
    const r = cli(['audit', 'archive', '--before', new Date(Date.now() + 60_000).toISOString(), '--out', out, '--state-dir', dirs.stateDir]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`archived 3 rows (seq 1..3) to ${out}\n`);
    expect(ndjson(readFileSync(out, 'utf8')).map((e) => e.kind)).toEqual(['model', 'result', 'model']);
    expect(cli(['audit', 'export', '--since', '1h', '--state-dir', dirs.stateDir]).stdout).toBe('');
    // Never overwrites an archive.
    const again = cli(['audit', 'archive', '--before', '1s', '--out', out, '--state-dir', dirs.stateDir]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/EEXIST/);
    // The running agent's next result links to the archived chain.
    copyFileSync(path.resolve('tests/fixtures/dicom/pydicom_MR_small.dcm'), path.join(dirs.inbox, 'mr.dcm'));
    await until(() => sub.on('imaging/audit-1/result').length === 2, 120_000, 'second result');
    const next = ndjson(cli(['audit', 'export', '--since', '1h', '--state-dir', dirs.stateDir]).stdout);
    expect(next).toMatchObject([{ seq: 4, kind: 'result' }]);
    const verified = cli(['audit', 'verify', '--state-dir', dirs.stateDir]).stdout;
    expect(verified).toMatch(/^audit log intact: 1 rows\ncontinues the archived chain after seq 3 \(hash ([0-9a-f]{64})\)\n$/);
    // The archive file verifies on its own and ends exactly where the store's chain continues.
    const archiveCheck = cli(['audit', 'verify', '--file', out]);
    expect(archiveCheck.status).toBe(0);
    const lastHash = /hash ([0-9a-f]{64})/.exec(verified)![1]!;
    expect(archiveCheck.stdout).toBe(`${out}: intact, 3 rows, last seq 3 hash ${lastHash}\n`);
    // An archive edited afterwards (a result's resultId changed) is caught.
    const forged = path.join(dirs.root, 'forged.ndjson');
    writeFileSync(forged, readFileSync(out, 'utf8').replace(/"resultId":"[0-9a-f]{32}"/, `"resultId":"${'0'.repeat(32)}"`));
    const bad = cli(['audit', 'verify', '--file', forged]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/chain broken at seq 2/);
  });
});
