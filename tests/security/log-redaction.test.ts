/**
 * The agent's logger (src/log.ts, the one `edge-agent run` writes to journald) redacts patient
 * identifiers and secrets by key, at any depth a log record plausibly has, in every component's child
 * logger; ordinary fields stay readable.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, REDACT_KEYS } from '../../src/log.js';

function capture(): { stream: Writable; lines: () => Record<string, unknown>[]; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  const text = () => chunks.join('');
  return {
    stream,
    text,
    lines: () =>
      text()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

const PHI = {
  name: 'Oyelaran^Adaeze^Temitope',
  id: 'MRN-88317452',
  birth: '19721103',
  accession: 'ACC20260117X',
  study: '1.2.826.0.1.3680043.9.7777.1',
  sop: '1.2.826.0.1.3680043.9.7777.1.1.1',
  password: 's3cret-broker-pw',
};

describe('log redaction (src/log.ts)', () => {
  it('redacts PHI and secrets under DICOM keyword and camelCase names, nested and in arrays, in every component', async () => {
    const out = capture();
    const logger = createLogger({ level: 'debug', components: { pipeline: 'debug' }, stream: out.stream });
    const log = logger.component('pipeline');
    log.info(
      {
        PatientName: PHI.name,
        patientId: PHI.id,
        meta: { patientBirthDate: PHI.birth, AccessionNumber: PHI.accession, modality: 'CT', identifiers: [PHI.name, PHI.id] },
        capture: { meta: { dicom: { StudyInstanceUID: PHI.study, sopInstanceUid: PHI.sop } } },
        files: [{ patientName: PHI.name, size: 100 }],
        mqtt: { username: 'ct-room-2', password: PHI.password },
        hash: 'ab12',
      },
      'classified',
    );
    logger.component('agent').warn({ config: { mqtt: { tls: { privateKey: 'PEM' } } }, OtherPatientIDs: PHI.id }, 'started');
    await logger.flush();
    const text = out.text();
    for (const v of Object.values(PHI)) expect(text, v).not.toContain(v);
    expect(text).not.toContain('PEM');
    const [first, second] = out.lines();
    expect(first).toMatchObject({
      msg: 'classified',
      component: 'pipeline',
      PatientName: '[redacted]',
      patientId: '[redacted]',
      meta: { patientBirthDate: '[redacted]', AccessionNumber: '[redacted]', modality: 'CT', identifiers: '[redacted]' },
      capture: { meta: { dicom: { StudyInstanceUID: '[redacted]', sopInstanceUid: '[redacted]' } } },
      files: [{ patientName: '[redacted]', size: 100 }],
      mqtt: { username: 'ct-room-2', password: '[redacted]' },
      hash: 'ab12',
    });
    expect(second).toMatchObject({ component: 'agent', OtherPatientIDs: '[redacted]', config: { mqtt: { tls: { privateKey: '[redacted]' } } } });
  });

  it('covers the patient module and visit identifiers in both spellings', () => {
    for (const k of ['PatientName', 'patientName', 'PatientID', 'patientId', 'PatientBirthDate', 'patientBirthDate', 'AccessionNumber', 'accessionNumber',
      'OtherPatientIDs', 'otherPatientIds', 'StudyInstanceUID', 'studyInstanceUid', 'SeriesInstanceUID', 'seriesInstanceUid', 'SOPInstanceUID', 'sopInstanceUid']) {
      expect(REDACT_KEYS, k).toContain(k);
    }
  });
});
