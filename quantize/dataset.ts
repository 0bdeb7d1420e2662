/**
 * Calibration and evaluation images, decoded and pre-processed by the agent's own src/decode and
 * src/preprocess (the same code as src/pipeline/classifier.ts: decodeFile -> preprocess -> toBatch), so
 * the quantizer sees exactly what the agent will feed the model in production.
 *
 * Files are found recursively and recognised by content (DICOM, PNG, JPEG; anything else is skipped
 * with a note). A file that does not decode is skipped and counted, never fatal; a set with no usable
 * image is an error.
 *
 * Evaluation layouts (`--eval-layout`):
 * - `folders`: one subfolder per label (named exactly like a manifest label), images inside are that label;
 * - `rotate`: every image is upright (label = the first label) and is tested in the four rotations made by
 *   construction, numpy.rot90(img, k) (k quarter turns counter-clockwise) labelled `labels[k]`; for
 *   models whose labels are rotations (orientation-qa: rot0, rot90, rot180, rot270);
 * - `auto` (default): `folders` when at least one subfolder is named like a label, else `rotate` when the
 *   model has exactly 4 labels, else an error.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { decodeFile, defaultDecodeOptions, type DecodeOptions, type ImageFrame } from '../src/decode/index.js';
import { preprocess, toBatch } from '../src/preprocess/index.js';
import type { Manifest } from '../src/models/types.js';
import type { Progress } from './progress.js';

export interface ImageFile {
  path: string;
  rel: string;
}

export async function listFiles(dir: string): Promise<ImageFile[]> {
  const root = path.resolve(dir);
  const st = await stat(root).catch(() => undefined);
  if (!st?.isDirectory()) throw new Error(`'${dir}' is not a directory`);
  const out: ImageFile[] = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(path.join(root, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) out.push({ path: path.join(root, r), rel: r });
    }
  };
  await walk('');
  return out;
}

/** Decode options the agent would use for this model (the manifest's per-modality windows). */
export function decodeOptionsFor(manifest: Manifest): DecodeOptions {
  const o = defaultDecodeOptions();
  if (manifest.input.windowing) o.windowByModality = { ...o.windowByModality, ...manifest.input.windowing };
  return o;
}

export interface SetSummary {
  files: number;
  used: number;
  skipped: { file: string; reason: string }[];
  /** sha256 over the sorted `relative path NUL sha256(file)` lines of the files used. */
  sha256: string;
}

/** Decodes every file once; returns frames per file and the set hash. */
export async function loadFrames(
  dir: string,
  manifest: Manifest,
  progress?: Progress,
  label = 'decode',
): Promise<{ items: { file: ImageFile; frames: ImageFrame[] }[]; summary: SetSummary; total: number }> {
  const files = await listFiles(dir);
  progress?.start(`${label} ${path.basename(path.resolve(dir))}/ (src/decode)`, files.length);
  const opts = decodeOptionsFor(manifest);
  const items: { file: ImageFile; frames: ImageFrame[] }[] = [];
  const skipped: { file: string; reason: string }[] = [];
  const lines: string[] = [];
  for (const f of files) {
    try {
      const cap = await decodeFile(f.path, opts);
      items.push({ file: f, frames: cap.frames });
      lines.push(`${f.rel}\0${createHash('sha256').update(await readFile(f.path)).digest('hex')}`);
    } catch (e) {
      skipped.push({ file: f.rel, reason: (e as Error).message });
    }
    progress?.tick();
  }
  progress?.done();
  lines.sort();
  const sha256 = createHash('sha256').update(lines.join('\n')).digest('hex');
  return { items, summary: { files: files.length, used: items.length, skipped, sha256 }, total: files.length };
}

/** numpy.rot90(img, k): k quarter turns counter-clockwise. */
export function rot90(frame: ImageFrame, k: number): ImageFrame {
  const kk = ((k % 4) + 4) % 4;
  if (kk === 0) return frame;
  const { width: W, height: H, channels: C, data } = frame;
  const outW = kk === 2 ? W : H;
  const outH = kk === 2 ? H : W;
  const out = new Float32Array(data.length);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      // source pixel for destination (y, x)
      let sy: number;
      let sx: number;
      if (kk === 1) {
        sy = x;
        sx = W - 1 - y;
      } else if (kk === 2) {
        sy = H - 1 - y;
        sx = W - 1 - x;
      } else {
        sy = H - 1 - x;
        sx = y;
      }
      for (let c = 0; c < C; c++) out[(y * outW + x) * C + c] = data[(sy * W + sx) * C + c] as number;
    }
  }
  return { index: frame.index, width: outW, height: outH, channels: C, data: out };
}

export interface EvalCase {
  /** Input tensor (batch of 1). */
  input: { data: Float32Array; shape: number[] };
  label: number;
  name: string;
}

export type EvalLayout = 'auto' | 'folders' | 'rotate';

export interface EvalSet {
  layout: 'folders' | 'rotate';
  cases: EvalCase[];
  summary: SetSummary;
}

/** One pre-processed tensor (batch 1) per frame, exactly as the classifier builds it. */
export function toInput(frame: ImageFrame, manifest: Manifest): { data: Float32Array; shape: number[] } {
  return toBatch([preprocess(frame, manifest.input)], manifest.input);
}

export async function loadEvalSet(dir: string, manifest: Manifest, layout: EvalLayout, progress?: Progress): Promise<EvalSet> {
  const labels = manifest.labels;
  const root = path.resolve(dir);
  const subdirs = (await readdir(root, { withFileTypes: true }).catch(() => {
    throw new Error(`evaluation set '${dir}' is not a readable directory`);
  }))
    .filter((e) => e.isDirectory())
    .map((e) => e.name);
  let chosen: 'folders' | 'rotate';
  if (layout === 'auto') {
    if (subdirs.some((d) => labels.includes(d))) chosen = 'folders';
    else if (labels.length === 4) chosen = 'rotate';
    else throw new Error(`evaluation set '${dir}' has no subfolder named like a label (${labels.join(', ')}); use one subfolder per label`);
  } else chosen = layout;
  if (chosen === 'rotate' && labels.length !== 4) throw new Error(`--eval-layout rotate needs a model with 4 rotation labels; this one has ${labels.length}`);
  if (chosen === 'folders') {
    const unknown = subdirs.filter((d) => !labels.includes(d));
    if (unknown.length) throw new Error(`evaluation set '${dir}': subfolder(s) ${unknown.map((u) => `'${u}'`).join(', ')} are not labels of the model (${labels.join(', ')})`);
  }
  const { items, summary } = await loadFrames(dir, manifest, progress);
  const cases: EvalCase[] = [];
  for (const it of items) {
    if (chosen === 'folders') {
      const top = it.file.rel.split('/')[0] ?? '';
      const label = labels.indexOf(top);
      if (label < 0) {
        summary.skipped.push({ file: it.file.rel, reason: 'not inside a label subfolder' });
        continue;
      }
      it.frames.forEach((f, fi) => cases.push({ input: toInput(f, manifest), label, name: `${it.file.rel}#${fi}` }));
    } else {
      it.frames.forEach((f, fi) => {
        for (let k = 0; k < 4; k++) cases.push({ input: toInput(rot90(f, k), manifest), label: k, name: `${it.file.rel}#${fi}@rot${k}` });
      });
    }
  }
  if (!cases.length) throw new Error(`evaluation set '${dir}' has no usable labelled image (${summary.files} files, ${summary.skipped.length} skipped)`);
  return { layout: chosen, cases, summary };
}
