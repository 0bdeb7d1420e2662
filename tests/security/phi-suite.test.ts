/**
 * The suite-wide PHI scan can fail, and does not cry wolf.
 *
 * Every agent the end-to-end tests start through tests/helpers/agent.ts records everything it publishes
 * (the test-only publish tap, EDGE_AGENT_TEST_PUBLISH_TAP) and is checked on stop(), and once more after
 * each test file, for the patient identifiers of every DICOM fixture (tests/helpers/phi.ts). Here the
 * real agent (embedded broker, no peers needed) classifies a real CT that carries a patient name, IDs
 * and UIDs: with privacy.allowUids the tap holds the raw Study/Series/SOP Instance UIDs on the result
 * topic and the check names them (so it would fail a leak); with the defaults it finds nothing.
 */
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentProcess, agentDirs, publishTapFile, type AgentDirs } from '../helpers/agent.js';
import { findPhi, fixtureIdentifiers, phiNeedles, scanForPhi } from '../helpers/phi.js';
import { freePort } from '../helpers/ports.js';
import { until } from '../mqtt/util.js';

const CT = path.resolve('tests/fixtures/dicom/pydicom_CT_small.dcm');

interface Published {
  topic: string;
  payload: string;
  retain: boolean;
  will?: boolean;
}

function published(dirs: AgentDirs): Published[] {
  const file = publishTapFile(dirs);
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Published);
}

/** Runs the agent on its embedded broker over the CT fixture until its result is published. */
async function classifyCt(deviceId: string, config: Record<string, unknown>): Promise<{ agent: AgentProcess; dirs: AgentDirs }> {
  const port = await freePort();
  const dirs = agentDirs({ deviceId, mqtt: { url: '', embedded: { host: '127.0.0.1', port } }, model: { runtime: 'onnx' }, logging: { level: 'debug' }, ...config });
  const agent = await AgentProcess.start(dirs);
  copyFileSync(CT, path.join(dirs.inbox, 'ct.dcm'));
  await until(() => published(dirs).some((m) => m.topic === `imaging/${deviceId}/result`), 60_000, 'a result on the publish tap');
  return { agent, dirs };
}

describe('fixture identifiers', () => {
  it('are read from the DICOM fixtures themselves: names, IDs, birth dates, an accession number, UIDs', () => {
    const raw = fixtureIdentifiers();
    const values = (kind: string) => raw.filter((i) => i.kind === kind).map((i) => i.value);
    expect(values('PatientName')).toEqual(expect.arrayContaining(['CompressedSamples^CT1', 'Rubo DEMO', 'Lestrade^G']));
    // ABCD1234 is a PatientID inside an OtherPatientIDsSequence item: sequences are read too.
    expect(values('PatientID')).toEqual(expect.arrayContaining(['1CT1', '556342B', '1234ABCD', 'ABCD1234']));
    expect(values('PatientBirthDate')).toEqual(expect.arrayContaining(['19951025']));
    expect(values('AccessionNumber').length).toBeGreaterThan(0);
    expect(values('ReferringPhysicianName')).toEqual(expect.arrayContaining(['Moriarty^James']));
    expect(values('SOPInstanceUID').length).toBeGreaterThan(20);
    expect(values('StudyInstanceUID').length).toBeGreaterThan(5);
  });

  it('finds them as a whole token, in the forms a message or log could show, and prints them masked', () => {
    expect(scanForPhi('{"patient":"CompressedSamples^CT1"}')).toContain('PatientName Co…(21)');
    expect(scanForPhi('name COMPRESSEDSAMPLES CT1 seen')).toEqual(expect.arrayContaining(['PatientName Co…(21)', 'PatientName Co…(17)']));
    expect(scanForPhi('born 1995-10-25')).toEqual(['PatientBirthDate 19…(10)']);
    expect(scanForPhi('patient 556342B')).toEqual(['PatientID 55…(7)']);
    for (const hit of scanForPhi('{"patient":"CompressedSamples^CT1","id":"556342B"}')) {
      expect(hit).not.toMatch(/CompressedSamples|556342B/);
    }
    const uid = fixtureIdentifiers().find((i) => i.kind === 'SOPInstanceUID')!.value;
    expect(findPhi(`"sop":"${uid}"`).map((h) => h.kind)).toContain('SOPInstanceUID');
    expect(findPhi(`"sop":"${uid}"`, { allowUids: true })).toEqual([]);
  });

  it('does not cry wolf: placeholders, short values, numbers a pid or port can be, or a value inside a longer token', () => {
    const scanned = phiNeedles().map((n) => n.value.toLowerCase());
    for (const v of ['anon', 'anonymized', 'here', 'id1', '1234', '99000']) expect(scanned).not.toContain(v);
    expect(scanForPhi('{"pid":1234,"port":41234,"msg":"Anonymized input"}')).toEqual([]);
    expect(scanForPhi('sha256:a1ct1b 21CT1 x1CT1')).toEqual([]);
  });
});

describe('the publish tap and the stop-time check', () => {
  it('with privacy.allowUids the raw UIDs are published on the result topic, and the check names them (it can fail)', async () => {
    const deviceId = 'phi-suite-uids';
    const { agent, dirs } = await classifyCt(deviceId, { privacy: { allowUids: true } });
    const msgs = published(dirs);
    // The tap saw the will and the retained state as well as the result.
    expect(msgs.find((m) => m.will)).toMatchObject({ topic: `imaging/${deviceId}/state`, retain: true });
    expect(msgs.some((m) => m.topic === `imaging/${deviceId}/state` && m.retain && /online/.test(m.payload))).toBe(true);
    const result = msgs.find((m) => m.topic === `imaging/${deviceId}/result`)!;
    expect(findPhi(result.payload).map((h) => h.kind)).toEqual(expect.arrayContaining(['StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID']));
    // Names and IDs are not let out by allowUids.
    expect(findPhi(result.payload, { allowUids: true })).toEqual([]);

    // allowUids is honoured: stop() passes.
    expect(await agent.stop()).toBe(0);

    // The same published data under a config that does not allow UIDs: the check fails, naming the topic
    // and the kind, never the UID itself.
    const config = readFileSync(dirs.configFile, 'utf8');
    writeFileSync(dirs.configFile, config.replace(/allowUids: true/, 'allowUids: false'));
    let message = '';
    try {
      agent.assertNoPhi();
    } catch (e) {
      message = (e as Error).message;
    } finally {
      writeFileSync(dirs.configFile, config);
    }
    expect(message).toMatch(new RegExp(`published on imaging/${deviceId}/result: SOPInstanceUID`));
    expect(message).toMatch(/StudyInstanceUID/);
    const uids = findPhi(result.payload).map((h) => h.value);
    for (const uid of uids) expect(message).not.toContain(uid);
  }, 120_000);

  it('with the defaults nothing the agent published or logged carries an identifier', async () => {
    const deviceId = 'phi-suite-default';
    const { agent, dirs } = await classifyCt(deviceId, {});
    expect(await agent.stop()).toBe(0);
    const msgs = published(dirs);
    expect(msgs.map((m) => m.topic)).toEqual(expect.arrayContaining([`imaging/${deviceId}/state`, `imaging/${deviceId}/result`]));
    expect(agent.logs.length).toBeGreaterThan(10);
    expect(agent.phiFindings()).toEqual([]);
    expect(scanForPhi(readFileSync(publishTapFile(dirs), 'utf8'))).toEqual([]);
  }, 120_000);
});
