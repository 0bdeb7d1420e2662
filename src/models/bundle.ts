/**
 * Model bundle = a directory with manifest.json + the files it lists.
 *
 * loadBundle() rejects (BundleError, one clear message listing every problem found) a bundle whose
 * manifest is not valid JSON or fails the schema, whose file paths escape the bundle directory
 * (absolute, `..`, or a symlink resolving outside), or whose files differ in size or sha256 from the
 * manifest. Later checks (signature, golden outputs) plug in as extra `BundleCheck`s run after these.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { validateManifest } from './schema.js';
import type { LoadedBundle, Manifest, ModelFileEntry } from './types.js';

export type BundleErrorCode =
  | 'not-found'
  | 'bad-json'
  | 'invalid-manifest'
  | 'path-escape'
  | 'missing-file'
  | 'size-mismatch'
  | 'hash-mismatch'
  | 'no-model-file'
  // no candidate runtime x precision could load and pass its checks (src/runtimes/select.ts)
  | 'no-runtime'
  | 'check-failed'
  // signature (./signature.ts) and golden (./golden.ts) checks
  | 'unsigned'
  | 'untrusted-key'
  | 'bad-signature'
  | 'golden-mismatch';

export class BundleError extends Error {
  constructor(
    readonly code: BundleErrorCode,
    message: string,
    /** Every individual problem (for invalid-manifest: `path: message` per schema error). */
    readonly problems: string[] = [message],
  ) {
    super(message);
    this.name = 'BundleError';
  }
}

/** An extra verification step (signature, golden check...). Throw BundleError to reject. */
export type BundleCheck = (bundle: LoadedBundle) => Promise<void>;

/**
 * A check of the raw manifest.json bytes, run before they are parsed (signature verification: the
 * bytes checked are exactly the bytes then parsed). `dirReal` is the resolved bundle directory.
 */
export type ManifestCheck = (manifestBytes: Buffer, dirReal: string) => Promise<void>;

export interface LoadBundleOptions {
  /** Checks of the manifest bytes before anything else trusts them (signature), in order. */
  manifestChecks?: ManifestCheck[];
  /** Extra checks run after the manifest and file integrity are verified, in order. */
  checks?: BundleCheck[];
  /** Largest manifest accepted (bytes). */
  maxManifestBytes?: number;
}

const MANIFEST = 'manifest.json';

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

function isInside(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * Resolves a manifest-relative path inside the bundle, refusing absolute paths, `..` segments,
 * backslashes/NUL, and anything (including symlinks at any level) that resolves outside the bundle.
 * Returns the absolute path of the file.
 */
export async function resolveBundlePath(dirReal: string, rel: string, field: string): Promise<string> {
  if (rel.includes('\0') || rel.includes('\\')) {
    throw new BundleError('path-escape', `${field}: path '${rel}' contains a forbidden character`);
  }
  if (path.isAbsolute(rel) || path.posix.isAbsolute(rel) || /^[A-Za-z]:/.test(rel)) {
    throw new BundleError('path-escape', `${field}: path '${rel}' is absolute; bundle paths must be relative`);
  }
  if (rel.split('/').some((seg) => seg === '..')) {
    throw new BundleError('path-escape', `${field}: path '${rel}' contains '..' and could escape the bundle`);
  }
  const abs = path.resolve(dirReal, rel);
  if (!isInside(dirReal, abs)) {
    throw new BundleError('path-escape', `${field}: path '${rel}' resolves outside the bundle`);
  }
  let real: string;
  try {
    real = await realpath(abs);
  } catch {
    // lstat distinguishes a dangling symlink (still reported as an escape if it points outside)
    const l = await lstat(abs).catch(() => undefined);
    if (l?.isSymbolicLink()) {
      throw new BundleError('path-escape', `${field}: path '${rel}' is a symlink whose target does not exist`);
    }
    throw new BundleError('missing-file', `${field}: file '${rel}' is missing from the bundle`);
  }
  if (!isInside(dirReal, real)) {
    throw new BundleError('path-escape', `${field}: path '${rel}' is a symlink that resolves outside the bundle (${real})`);
  }
  return real;
}

/** Checks one listed file: inside the bundle, a regular file, right size, right sha256. */
async function verifyFile(dirReal: string, entry: ModelFileEntry, index: number): Promise<void> {
  const field = `/files/${index}`;
  const real = await resolveBundlePath(dirReal, entry.path, field);
  const st = await stat(real);
  if (!st.isFile()) throw new BundleError('missing-file', `${field}: '${entry.path}' is not a regular file`);
  if (st.size !== entry.size) {
    throw new BundleError('size-mismatch', `${field}: '${entry.path}' is ${st.size} bytes, manifest says ${entry.size}`);
  }
  const digest = await sha256File(real);
  if (digest !== entry.sha256) {
    throw new BundleError(
      'hash-mismatch',
      `${field}: '${entry.path}' sha256 ${digest} does not match the manifest (${entry.sha256}); the file was modified or corrupted`,
    );
  }
}

export async function loadBundle(dir: string, options: LoadBundleOptions = {}): Promise<LoadedBundle> {
  let dirReal: string;
  try {
    dirReal = await realpath(dir);
    if (!(await stat(dirReal)).isDirectory()) throw new Error('not a directory');
  } catch {
    throw new BundleError('not-found', `bundle directory '${dir}' does not exist or is not a directory`);
  }
  const manifestPath = path.join(dirReal, MANIFEST);
  const l = await lstat(manifestPath).catch(() => undefined);
  if (!l) throw new BundleError('not-found', `bundle '${dir}' has no ${MANIFEST}`);
  if (l.isSymbolicLink()) await resolveBundlePath(dirReal, MANIFEST, MANIFEST);
  const max = options.maxManifestBytes ?? 4 * 1024 * 1024;
  if (l.size > max) throw new BundleError('invalid-manifest', `${MANIFEST} is ${l.size} bytes (limit ${max})`);

  const bytes = await readFile(manifestPath);
  for (const check of options.manifestChecks ?? []) await check(bytes, dirReal);
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new BundleError('bad-json', `${MANIFEST} in '${dir}' is not valid JSON: ${(e as Error).message}`);
  }
  const v = validateManifest(parsed);
  if (!v.ok) {
    throw new BundleError('invalid-manifest', `${MANIFEST} in '${dir}' is invalid: ${v.errors.join('; ')}`, v.errors);
  }
  const manifest: Manifest = v.manifest;

  // integrity: collect every file problem, so one rejection names all of them
  const problems: BundleError[] = [];
  for (const [i, f] of manifest.files.entries()) {
    try {
      await verifyFile(dirReal, f, i);
    } catch (e) {
      if (e instanceof BundleError) problems.push(e);
      else throw e;
    }
  }
  if (problems.length) {
    const first = problems[0] as BundleError;
    const code = problems.some((p) => p.code === 'path-escape') ? 'path-escape' : first.code;
    throw new BundleError(
      code,
      `bundle '${dir}' rejected: ${problems.map((p) => p.message).join('; ')}`,
      problems.map((p) => p.message),
    );
  }

  const bundle: LoadedBundle = {
    dir: dirReal,
    manifest,
    manifestSha256: createHash('sha256').update(bytes).digest('hex'),
  };
  for (const check of options.checks ?? []) {
    try {
      await check(bundle);
    } catch (e) {
      if (e instanceof BundleError) throw e;
      throw new BundleError('check-failed', `bundle '${dir}' failed a check: ${(e as Error).message}`);
    }
  }
  return bundle;
}

/**
 * A format stored as several files lists each of them (so each is hash-checked and signed); only one is
 * what a runtime loads. TF.js: model.json is the entry point, its weight shards are the other `tfjs` entries.
 */
function isEntryPoint(f: ModelFileEntry): boolean {
  return f.format !== 'tfjs' || f.path.endsWith('.json');
}

/** The model files a runtime can load (one per format x precision; TF.js weight shards left out). */
export function modelFiles(bundle: LoadedBundle): ModelFileEntry[] {
  return bundle.manifest.files.filter(isEntryPoint);
}

/**
 * The model file for a runtime format. With `precision`, exactly that precision; without, int8 is
 * preferred over fp32 (the quantized model is what the fleet ships for speed) when both exist.
 */
export function selectModelFile(bundle: LoadedBundle, format: ModelFileEntry['format'], precision?: ModelFileEntry['precision']): ModelFileEntry {
  const candidates = bundle.manifest.files.filter((f) => f.format === format && isEntryPoint(f) && (!precision || f.precision === precision));
  const pick = candidates.find((f) => f.precision === 'int8') ?? candidates[0];
  if (!pick) {
    const have = [...new Set(bundle.manifest.files.filter(isEntryPoint).map((f) => `${f.format}/${f.precision}`))].join(', ');
    throw new BundleError(
      'no-model-file',
      `bundle '${bundle.manifest.id}' has no ${format}${precision ? `/${precision}` : ''} model file (has: ${have})`,
    );
  }
  return pick;
}

/** Absolute path of a listed file (already verified by loadBundle). */
export function bundleFilePath(bundle: LoadedBundle, entry: ModelFileEntry): string {
  return path.join(bundle.dir, entry.path);
}
