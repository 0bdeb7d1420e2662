/**
 * The patient identifiers that the test fixtures carry, and a scanner that finds them in text.
 *
 * Every DICOM file under tests/fixtures (dicom/, fuzz-seeds/, models/, ...) is parsed once with
 * dicom-parser, the way src/decode reads it (part 10, data sets without a preamble or meta header,
 * deflated; a truncated file gives what it has), sequences included (OtherPatientIDsSequence items).
 * Collected: PatientName, PatientID, OtherPatientIDs, PatientBirthDate, AccessionNumber,
 * ReferringPhysicianName, InstitutionName, and the raw Study/Series/SOP Instance UIDs.
 *
 * What is left out, on purpose, because it would only raise false alarms:
 *  - values shorter than 4 characters ("ID1", "^^^^" once the separators are gone);
 *  - placeholders and ordinary words that appear in any log or message for other reasons ("Anon",
 *    "Anonymized", "Here", name components like "First"/"Last"): ORDINARY below;
 *  - all-digit IDs shorter than 6 digits ("1234", "99000"): a process id, a port or a byte count can be
 *    exactly that number. Dates (8 digits), accession numbers and UIDs are long enough to be kept.
 * Matching is by whole token (a value is not matched inside a longer word, hash or UID): names case-
 * insensitively (a name is still the name in capitals) and also with `^` shown as spaces and by
 * component (a component of 5+ characters that is not an ordinary word); IDs, dates (also as
 * YYYY-MM-DD) and UIDs exactly.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { inflateRawSync } from 'node:zlib';
import type * as DicomParserNs from 'dicom-parser';
import type { DataSet } from 'dicom-parser';
import { parserInput } from '../../src/decode/dicom.js';

const require = createRequire(import.meta.url);
const dicomParser = require('dicom-parser') as typeof DicomParserNs;

export const FIXTURES_DIR = path.resolve('tests/fixtures');

export type PhiKind =
  | 'PatientName'
  | 'PatientID'
  | 'OtherPatientIDs'
  | 'PatientBirthDate'
  | 'AccessionNumber'
  | 'ReferringPhysicianName'
  | 'InstitutionName'
  | 'StudyInstanceUID'
  | 'SeriesInstanceUID'
  | 'SOPInstanceUID';

const TAGS: Record<string, PhiKind> = {
  x00100010: 'PatientName',
  x00100020: 'PatientID',
  x00101000: 'OtherPatientIDs',
  x00100030: 'PatientBirthDate',
  x00080050: 'AccessionNumber',
  x00080090: 'ReferringPhysicianName',
  x00080080: 'InstitutionName',
  x0020000d: 'StudyInstanceUID',
  x0020000e: 'SeriesInstanceUID',
  x00080018: 'SOPInstanceUID',
};

const UID_KINDS = new Set<PhiKind>(['StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID']);
const NAME_KINDS = new Set<PhiKind>(['PatientName', 'ReferringPhysicianName', 'InstitutionName']);

/** Placeholders and ordinary words (lower case): never identifiers on their own. */
const ORDINARY = new Set([
  'anon', 'anonymized', 'anonymised', 'anonymous', 'unknown', 'none', 'null', 'test', 'demo', 'here',
  'patient', 'name', 'first', 'last', 'firstname', 'lastname', 'middle', 'phantom', 'hospital', 'clinic',
]);

export function isUidKind(kind: PhiKind): boolean {
  return UID_KINDS.has(kind);
}

export interface PhiIdentifier {
  kind: PhiKind;
  value: string;
}

interface Needle extends PhiIdentifier {
  re: RegExp;
}

export interface PhiHit extends PhiIdentifier {
  /** The value with most of it hidden (safe to print in a test failure). */
  masked: string;
}

/** "CompressedSamples^CT1" -> "Co…(21)": enough to tell which one, not the identifier. */
export function maskValue(v: string): string {
  return `${v.slice(0, 2)}…(${v.length})`;
}

function parseFixture(bytes: Uint8Array): DataSet | undefined {
  const prepared = parserInput(bytes);
  if (!prepared) return undefined;
  const { input, options } = prepared;
  (options as { inflater?: unknown }).inflater = (arr: Uint8Array, position: number): Uint8Array => {
    const inflated = inflateRawSync(arr.subarray(position));
    const full = new Uint8Array(position + inflated.length);
    full.set(arr.subarray(0, position), 0);
    full.set(inflated, position);
    return full;
  };
  try {
    return dicomParser.parseDicom(input, options);
  } catch (e) {
    // A truncated or mangled file: dicom-parser hands back what it parsed so far.
    return (e as { dataSet?: DataSet } | undefined)?.dataSet;
  }
}

function collect(ds: DataSet, out: PhiIdentifier[]): void {
  for (const [tag, el] of Object.entries(ds.elements)) {
    const kind = TAGS[tag];
    if (kind) {
      let v: string | undefined;
      try {
        v = ds.string(tag);
      } catch {
        v = undefined;
      }
      // Multi-valued (OtherPatientIDs): each value on its own.
      for (const one of (v ?? '').split('\\')) if (one.trim()) out.push({ kind, value: one.trim() });
    }
    for (const item of el.items ?? []) if (item.dataSet) collect(item.dataSet, out);
  }
}

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

/** Every identifier the DICOM fixtures carry (raw, before the false-alarm filter), deduplicated. */
export function fixtureIdentifiers(dir = FIXTURES_DIR): PhiIdentifier[] {
  const seen = new Map<string, PhiIdentifier>();
  for (const file of walk(dir)) {
    const bytes = new Uint8Array(readFileSync(file));
    const ds = parseFixture(bytes);
    if (!ds) continue;
    const ids: PhiIdentifier[] = [];
    collect(ds, ids);
    for (const id of ids) seen.set(`${id.kind}\0${id.value}`, id);
  }
  return [...seen.values()];
}

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function tokenRe(value: string, flags: string): RegExp {
  // Not inside a longer word or number; for UIDs, not the prefix of a longer UID either (".<digit>").
  return new RegExp(`(?<![A-Za-z0-9])${esc(value)}(?![A-Za-z0-9]|\\.[0-9])`, flags);
}

function worthScanning(kind: PhiKind, value: string): boolean {
  if (value.replace(/[\^\s]/g, '').length < 4) return false;
  if (ORDINARY.has(value.toLowerCase())) return false;
  if (!isUidKind(kind) && kind !== 'PatientBirthDate' && kind !== 'AccessionNumber' && /^\d{1,5}$/.test(value)) return false;
  return true;
}

function needlesFor(ids: PhiIdentifier[]): Needle[] {
  const out = new Map<string, Needle>();
  const add = (kind: PhiKind, value: string, flags = ''): void => {
    if (!worthScanning(kind, value)) return;
    const key = `${kind}\0${value.toLowerCase()}`;
    if (!out.has(key)) out.set(key, { kind, value, re: tokenRe(value, flags) });
  };
  for (const { kind, value } of ids) {
    if (NAME_KINDS.has(kind)) {
      add(kind, value, 'i');
      if (value.includes('^')) {
        add(kind, value.replace(/\^+/g, ' ').trim(), 'i');
        for (const part of value.split('^')) if (part.trim().length >= 5) add(kind, part.trim(), 'i');
      }
    } else if (kind === 'PatientBirthDate') {
      add(kind, value);
      if (/^\d{8}$/.test(value)) add(kind, `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}`);
    } else {
      add(kind, value);
    }
  }
  return [...out.values()];
}

let cached: Needle[] | undefined;

/** The identifiers that are scanned for (after the false-alarm filter), computed once. */
export function phiNeedles(): readonly PhiIdentifier[] {
  cached ??= needlesFor(fixtureIdentifiers());
  return cached;
}

/** Every fixture identifier found in `text` (UIDs left out with allowUids: privacy.allowUids lets them out). */
export function findPhi(text: string, opts: { allowUids?: boolean } = {}): PhiHit[] {
  phiNeedles();
  const hits: PhiHit[] = [];
  for (const n of cached!) {
    if (opts.allowUids && isUidKind(n.kind)) continue;
    if (n.re.test(text)) hits.push({ kind: n.kind, value: n.value, masked: maskValue(n.value) });
  }
  return hits;
}

/** The fixture identifiers found in `text`, as "<kind> <masked value>" (never the value in full). */
export function scanForPhi(text: string, opts: { allowUids?: boolean } = {}): string[] {
  return findPhi(text, opts).map((h) => `${h.kind} ${h.masked}`);
}
