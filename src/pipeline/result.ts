/**
 * Builds the published result and error documents. This is the privacy boundary: nothing that
 * identifies a patient goes out. DICOM UIDs are published only as salted hashes unless the config
 * allows them; patient name/ID/birth date are never read into a result; a file name that carries an
 * identifier from its own header is replaced by its content hash.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { CaptureMeta, SourceKind } from '../decode/types.js';

export interface ModelInfo {
  id: string;
  version: string;
  sha256: string;
  runtime: string;
  provider: string;
}

export interface ResultInput {
  fileName: string;
  contentHash: string;
  kind: SourceKind;
  modality: string;
  frame: number;
  frames: number;
  width: number;
  height: number;
  transferSyntaxUid?: string;
  sopClassUid?: string;
  studyInstanceUid?: string;
  seriesInstanceUid?: string;
  sopInstanceUid?: string;
}

export interface InferenceResult {
  resultId: string;
  deviceId: string;
  label: string;
  score: number;
  scores: Record<string, number>;
  model: ModelInfo;
  input: ResultInput;
  timings: Record<string, number>;
  createdAt: string;
}

export interface PrivacyOptions {
  allowUids: boolean;
  salt: string;
}

/** Deterministic per (content, frame, model): a replay of the same capture yields the same id. */
export function resultIdOf(contentHash: string, frame: number, model: { id: string; version: string }): string {
  return createHash('sha256').update(`${contentHash}\n${frame}\n${model.id}\n${model.version}`).digest('hex').slice(0, 32);
}

export function hashUid(uid: string, salt: string): string {
  return 'h:' + createHash('sha256').update(salt).update('\0').update(uid).digest('hex').slice(0, 32);
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Turns logits into probabilities per the manifest's output activation. */
export function activate(values: Float32Array, activation: 'softmax' | 'sigmoid' | 'none'): number[] {
  const out = Array.from(values);
  if (activation === 'softmax') {
    const max = Math.max(...out);
    const exps = out.map((v) => Math.exp(v - max));
    const sum = exps.reduce((a, b) => a + b, 0);
    return exps.map((e) => e / sum);
  }
  if (activation === 'sigmoid') return out.map((v) => 1 / (1 + Math.exp(-v)));
  return out;
}

function round(v: number, digits = 6): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** The file name as published: kept unless it contains an identifier from the file's own header. */
export function publishableFileName(name: string, contentHash: string, identifiers: string[]): string {
  const base = path.posix.basename(name);
  const hit = identifiers.some((id) => id.length >= 4 && base.includes(id));
  if (!hit) return name;
  const ext = path.posix.extname(base);
  return `${contentHash.slice(0, 16)}${ext && ext.length <= 6 ? ext : ''}`;
}

export function buildInput(
  fileName: string,
  contentHash: string,
  kind: SourceKind,
  meta: CaptureMeta,
  frame: { index: number; width: number; height: number },
  privacy: PrivacyOptions,
): ResultInput {
  const uid = (v: string | undefined): string | undefined =>
    v === undefined || v === '' ? undefined : privacy.allowUids ? v : hashUid(v, privacy.salt);
  const identifiers = [meta.studyInstanceUid, meta.seriesInstanceUid, meta.sopInstanceUid, ...(meta.identifiers ?? [])].filter(
    (v): v is string => typeof v === 'string' && v.length > 0,
  );
  const input: ResultInput = {
    fileName: privacy.allowUids ? fileName : publishableFileName(fileName, contentHash, identifiers),
    contentHash: `sha256:${contentHash}`,
    kind,
    modality: meta.modality,
    frame: frame.index,
    frames: meta.numberOfFrames,
    width: frame.width,
    height: frame.height,
  };
  if (meta.transferSyntaxUid) input.transferSyntaxUid = meta.transferSyntaxUid;
  if (meta.sopClassUid) input.sopClassUid = meta.sopClassUid;
  const study = uid(meta.studyInstanceUid);
  const series = uid(meta.seriesInstanceUid);
  const sop = uid(meta.sopInstanceUid);
  if (study) input.studyInstanceUid = study;
  if (series) input.seriesInstanceUid = series;
  if (sop) input.sopInstanceUid = sop;
  return input;
}

export function buildResult(args: {
  deviceId: string;
  labels: string[];
  probabilities: number[];
  model: ModelInfo;
  input: ResultInput;
  timings: Record<string, number>;
  now?: Date;
}): InferenceResult {
  const scores: Record<string, number> = {};
  let best = 0;
  args.probabilities.forEach((p, i) => {
    scores[args.labels[i] ?? `class_${i}`] = round(p);
    if (p > (args.probabilities[best] ?? -Infinity)) best = i;
  });
  const timings: Record<string, number> = {};
  for (const [k, v] of Object.entries(args.timings)) timings[k] = round(v, 3);
  return {
    resultId: resultIdOf(args.input.contentHash.replace(/^sha256:/, ''), args.input.frame, args.model),
    deviceId: args.deviceId,
    label: args.labels[best] ?? `class_${best}`,
    score: round(args.probabilities[best] ?? 0),
    scores,
    model: args.model,
    input: args.input,
    timings,
    createdAt: (args.now ?? new Date()).toISOString(),
  };
}

export interface ErrorReport {
  deviceId: string;
  code: string;
  message: string;
  stage: string;
  input?: { fileName: string; contentHash: string };
  quarantinedAs?: string;
  createdAt: string;
}
