/**
 * `edge-agent infer FILE...`: the one-shot contract. NDJSON on stdout (one line per classified
 * image/frame), reasons on stderr, exit 0 only when every file was classified.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI } from '../helpers/agent.js';

const DICOM_DIR = path.resolve('tests/fixtures/dicom');
const IMAGES_DIR = path.resolve('tests/fixtures/images');

/** Fixtures that are bad input on purpose (no pixel data, truncated, constant). */
const NEGATIVE = /truncated|constant|rtplan|reportsi|nopixel|garbage|empty/i;

interface InferResult {
  resultId: string;
  label: string;
  input: { fileName: string; contentHash: string; kind: string; modality: string; transferSyntaxUid?: string; sopInstanceUid?: string };
}

function infer(files: string[], extra: string[] = []) {
  const r = spawnSync(process.execPath, [CLI, 'infer', ...files, ...extra], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const lines = r.stdout.split('\n').filter((l) => l.length > 0);
  return { status: r.status, lines, results: lines.map((l) => JSON.parse(l) as InferResult), stderr: r.stderr };
}

describe('edge-agent infer', () => {
  const dicom = readdirSync(DICOM_DIR)
    .filter((f) => f.endsWith('.dcm') && !NEGATIVE.test(f))
    .map((f) => path.join(DICOM_DIR, f));

  it('classifies real DICOM of every transfer syntax, one JSON line each, exit 0', () => {
    const { status, results, stderr } = infer(dicom);
    expect(stderr).toBe('');
    expect(status).toBe(0);
    const files = new Set(results.map((r) => r.input.fileName));
    expect(files.size).toBe(dicom.length);
    const syntaxes = new Set(results.map((r) => r.input.transferSyntaxUid));
    for (const ts of [
      '1.2.840.10008.1.2', '1.2.840.10008.1.2.1', '1.2.840.10008.1.2.2', '1.2.840.10008.1.2.1.99', '1.2.840.10008.1.2.5',
      '1.2.840.10008.1.2.4.50', '1.2.840.10008.1.2.4.51', '1.2.840.10008.1.2.4.57', '1.2.840.10008.1.2.4.70',
      '1.2.840.10008.1.2.4.80', '1.2.840.10008.1.2.4.81', '1.2.840.10008.1.2.4.90', '1.2.840.10008.1.2.4.91',
      '1.2.840.10008.1.2.4.201', '1.2.840.10008.1.2.4.202', '1.2.840.10008.1.2.4.203',
    ]) {
      expect(syntaxes, `transfer syntax ${ts}`).toContain(ts);
    }
    const modalities = new Set(results.map((r) => r.input.modality));
    for (const m of ['CT', 'MR', 'XA', 'US']) expect(modalities, `modality ${m}`).toContain(m);
    for (const r of results) {
      expect(r.label).toMatch(/^rot(0|90|180|270)$/);
      expect(r.resultId).toMatch(/^[0-9a-f]{32}$/);
      expect(r.input.contentHash).toMatch(/^sha256:[0-9a-f]{64}$/);
      if (r.input.sopInstanceUid) expect(r.input.sopInstanceUid).toMatch(/^h:[0-9a-f]{32}$/);
    }
  });

  it('classifies PNG (8/16-bit) and JPEG', () => {
    const images = readdirSync(IMAGES_DIR)
      .filter((f) => /\.(png|jpe?g)$/i.test(f) && !NEGATIVE.test(f))
      .map((f) => path.join(IMAGES_DIR, f));
    expect(images.length).toBeGreaterThan(0);
    const { status, results } = infer(images);
    expect(status).toBe(0);
    expect(new Set(results.map((r) => r.input.kind))).toEqual(new Set(['png', 'jpeg']));
  });

  it('exit 1 with the reason per bad file on stderr; good files still printed', () => {
    const bad = readdirSync(DICOM_DIR)
      .filter((f) => NEGATIVE.test(f))
      .map((f) => path.join(DICOM_DIR, f));
    expect(bad.length).toBeGreaterThan(2);
    const good = dicom[0]!;
    const { status, results, stderr } = infer([bad[0]!, good, ...bad.slice(1), '/nonexistent/x.dcm']);
    expect(status).toBe(1);
    expect(results).toHaveLength(1);
    expect(results[0]!.input.fileName).toBe(path.basename(good));
    const lines = stderr.trim().split('\n');
    expect(lines).toHaveLength(bad.length + 1);
    for (const b of bad) expect(stderr).toContain(`${b}: `);
    expect(stderr).toContain('/nonexistent/x.dcm: no such file');
  });
});
