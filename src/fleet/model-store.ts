/**
 * The agent's installed model versions, under `<stateDir>/models/`:
 *
 *   <id>/<version>/            an unpacked bundle that passed verification (manifest, files, manifest.sig)
 *   index.json                 { active, previous, installed: [{id, version, installedAt, sha256}] }
 *   rollout.json               the rollout in progress (its desired document and step), for restarts
 *   .downloads/<sha256>.tar    downloaded bundle archives (`.part` while incomplete)
 *   .tmp/                      unpack staging; emptied on open
 *
 * Never a half-installed model: a bundle is unpacked into `.tmp/`, verified there, then renamed to
 * `<id>/<version>/` (one rename, atomic on one filesystem). index.json and rollout.json are written to a
 * temp file, fsynced and renamed over the old one (then the directory is fsynced), so after a crash at any
 * point each holds the old or the new content, never a torn one. On open the index is reconciled with the
 * directories that exist (a crash between the rename and the index write leaves a whole, unindexed
 * version: it is indexed; a version dir that vanished is dropped).
 *
 * Pruning keeps the `keep` most recently installed versions and never deletes the active or the previous
 * one (the rollback target).
 */
import { fsyncDir, writeFileAtomic } from '../store/atomic-file.js';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { unpackBundle } from '../models/pack.js';

export interface ModelRef {
  id: string;
  version: string;
}

export interface InstalledEntry extends ModelRef {
  installedAt: string;
  /** sha256 of the .tar it came from (null when unknown, e.g. reconciled after a crash). */
  sha256: string | null;
}

export interface InstalledModel extends InstalledEntry {
  dir: string;
  active: boolean;
  previous: boolean;
}

interface StoreIndex {
  active: ModelRef | null;
  previous: ModelRef | null;
  installed: InstalledEntry[];
}

export class ModelStoreError extends Error {
  override name = 'ModelStoreError';
  constructor(
    readonly code: 'bad-ref' | 'mismatch' | 'not-installed' | 'corrupt',
    message: string,
  ) {
    super(message);
  }
}

/** Same rules as the manifest schema (src/models/schema.ts): safe as one path segment each. */
const ID_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const VERSION_RE = /^[0-9A-Za-z][0-9A-Za-z.+-]{0,127}$/;

export function assertRef(ref: ModelRef): void {
  if (!ID_RE.test(ref.id) || ref.id.includes('..')) throw new ModelStoreError('bad-ref', `model id ${JSON.stringify(ref.id)} is not a valid bundle id`);
  if (!VERSION_RE.test(ref.version) || ref.version.includes('..')) {
    throw new ModelStoreError('bad-ref', `model version ${JSON.stringify(ref.version)} is not a valid bundle version`);
  }
}

export function sameRef(a: ModelRef | null | undefined, b: ModelRef | null | undefined): boolean {
  return !!a && !!b && a.id === b.id && a.version === b.version;
}

export function refString(r: ModelRef): string {
  return `${r.id}@${r.version}`;
}

async function readJson<T>(file: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ModelStoreError('corrupt', `${file} is not valid JSON`);
  }
}

export interface ModelStoreOptions {
  /** Versions kept on disk (config fleet.keepVersions); the active and previous are never deleted. */
  keep: number;
  /** Largest unpacked bundle accepted (bytes). */
  maxUnpackedBytes?: number;
}

/** Verifies an unpacked bundle directory (signature, schema, hashes); throws to refuse it. */
export type VerifyBundle = (dir: string) => Promise<void>;

export class ModelStore {
  private index: StoreIndex = { active: null, previous: null, installed: [] };
  /** Problems found while opening (a lost index, a vanished version): the agent logs them. */
  readonly warnings: string[] = [];

  constructor(
    readonly root: string,
    private readonly opts: ModelStoreOptions,
  ) {}

  get downloadsDir(): string {
    return path.join(this.root, '.downloads');
  }

  private get tmpDir(): string {
    return path.join(this.root, '.tmp');
  }

  private get indexFile(): string {
    return path.join(this.root, 'index.json');
  }

  private get rolloutFile(): string {
    return path.join(this.root, 'rollout.json');
  }

  /** Creates the layout, removes staging leftovers of a crash, reconciles the index with the disk. */
  async open(): Promise<this> {
    await mkdir(this.root, { recursive: true });
    await rm(this.tmpDir, { recursive: true, force: true });
    await mkdir(this.tmpDir, { recursive: true });
    await mkdir(this.downloadsDir, { recursive: true });
    let idx: StoreIndex | undefined;
    try {
      idx = await readJson<StoreIndex>(this.indexFile);
    } catch (e) {
      this.warnings.push(`${(e as Error).message}; rebuilt from the installed versions (active version forgotten)`);
    }
    const onDisk = await this.scan();
    const installed: InstalledEntry[] = [];
    for (const ref of onDisk) {
      const known = idx?.installed?.find((e) => sameRef(e, ref));
      if (known) installed.push(known);
      else {
        const st = await stat(this.dirOf(ref));
        installed.push({ ...ref, installedAt: st.mtime.toISOString(), sha256: null });
      }
    }
    for (const e of idx?.installed ?? []) {
      if (!onDisk.some((r) => sameRef(r, e))) this.warnings.push(`installed version ${refString(e)} is missing from ${this.root}; forgotten`);
    }
    installed.sort((a, b) => a.installedAt.localeCompare(b.installedAt));
    const present = (r: ModelRef | null | undefined): ModelRef | null => (r && onDisk.some((d) => sameRef(d, r)) ? { id: r.id, version: r.version } : null);
    this.index = { active: present(idx?.active), previous: present(idx?.previous), installed };
    if (idx?.active && !this.index.active) this.warnings.push(`active version ${refString(idx.active)} is missing; not served`);
    if (JSON.stringify(idx) !== JSON.stringify(this.index)) await this.saveIndex();
    return this;
  }

  private async scan(): Promise<ModelRef[]> {
    const out: ModelRef[] = [];
    for (const id of await readdir(this.root)) {
      if (id.startsWith('.') || !ID_RE.test(id)) continue;
      const idDir = path.join(this.root, id);
      if (!(await stat(idDir)).isDirectory()) continue;
      for (const version of await readdir(idDir)) {
        if (!VERSION_RE.test(version)) continue;
        const st = await stat(path.join(idDir, version, 'manifest.json')).catch(() => undefined);
        if (st?.isFile()) out.push({ id, version });
      }
    }
    return out;
  }

  private async saveIndex(): Promise<void> {
    await writeFileAtomic(this.indexFile, JSON.stringify(this.index, null, 2) + '\n');
  }

  dirOf(ref: ModelRef): string {
    assertRef(ref);
    return path.join(this.root, ref.id, ref.version);
  }

  get active(): ModelRef | null {
    return this.index.active;
  }

  get previous(): ModelRef | null {
    return this.index.previous;
  }

  has(ref: ModelRef): boolean {
    return this.index.installed.some((e) => sameRef(e, ref));
  }

  /** Installed versions, oldest first. */
  list(): InstalledModel[] {
    return this.index.installed.map((e) => ({
      ...e,
      dir: this.dirOf(e),
      active: sameRef(e, this.index.active),
      previous: sameRef(e, this.index.previous),
    }));
  }

  /** Where the download of a bundle with this sha256 goes. */
  downloadPath(sha256: string): string {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new ModelStoreError('bad-ref', 'sha256 must be 64 lowercase hex digits');
    return path.join(this.downloadsDir, `${sha256}.tar`);
  }

  /**
   * Installs a bundle .tar as `expected`: unpack into staging, check that its manifest names the same id
   * and version, run `verify` on the staged copy, then rename it into place (replacing an older copy of
   * the same version). Throws (nothing installed, staging removed) on any problem.
   */
  async install(tarFile: string, expected: ModelRef, verify: VerifyBundle, sha256: string | null = null): Promise<InstalledModel> {
    assertRef(expected);
    const staging = path.join(this.tmpDir, `${expected.id}-${expected.version}-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await unpackBundle(tarFile, staging, { maxTotalBytes: this.opts.maxUnpackedBytes ?? 4 * 1024 ** 3 });
      let manifest: Partial<ModelRef>;
      try {
        manifest = JSON.parse(await readFile(path.join(staging, 'manifest.json'), 'utf8')) as Partial<ModelRef>;
      } catch (e) {
        throw new ModelStoreError('corrupt', `manifest.json in the archive is not valid JSON: ${(e as Error).message}`);
      }
      if (manifest.id !== expected.id || manifest.version !== expected.version) {
        throw new ModelStoreError(
          'mismatch',
          `the archive holds ${String(manifest.id)}@${String(manifest.version)}, the desired state names ${refString(expected)}`,
        );
      }
      await verify(staging);
      const final = this.dirOf(expected);
      await mkdir(path.dirname(final), { recursive: true });
      const old = await stat(final).catch(() => undefined);
      if (old) {
        if (sameRef(expected, this.index.active)) throw new ModelStoreError('mismatch', `${refString(expected)} is the active version; not replaced`);
        const trash = path.join(this.tmpDir, `old-${randomBytes(4).toString('hex')}`);
        await rename(final, trash);
        await rename(staging, final);
        await rm(trash, { recursive: true, force: true });
      } else {
        await rename(staging, final);
      }
      await fsyncDir(path.dirname(final));
      this.index.installed = this.index.installed.filter((e) => !sameRef(e, expected));
      this.index.installed.push({ ...expected, installedAt: new Date().toISOString(), sha256 });
      await this.saveIndex();
      return this.list().find((m) => sameRef(m, expected))!;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /**
   * Makes `ref` the active version (persisted before this resolves); the version active until now becomes
   * the previous one (the rollback target). `previous` overrides that choice (a rollback keeps pointing
   * at the version it left). `null` as ref: serve the shipped model again.
   */
  async setActive(ref: ModelRef | null, previous?: ModelRef | null): Promise<void> {
    if (ref) {
      assertRef(ref);
      if (!this.has(ref)) throw new ModelStoreError('not-installed', `${refString(ref)} is not installed`);
    }
    const prev = previous !== undefined ? previous : sameRef(ref, this.index.active) ? this.index.previous : this.index.active;
    this.index.active = ref ? { id: ref.id, version: ref.version } : null;
    this.index.previous = prev ? { id: prev.id, version: prev.version } : null;
    await this.saveIndex();
  }

  /** Deletes the oldest installed versions beyond `keep`, never the active or previous one. Returns what was removed. */
  async prune(): Promise<ModelRef[]> {
    const keep = Math.max(1, this.opts.keep);
    const removable = this.index.installed.filter((e) => !sameRef(e, this.index.active) && !sameRef(e, this.index.previous));
    let excess = this.index.installed.length - keep;
    const removed: ModelRef[] = [];
    for (const e of removable) {
      if (excess <= 0) break;
      await this.remove(e);
      removed.push({ id: e.id, version: e.version });
      excess--;
    }
    return removed;
  }

  /** Deletes one installed version (index first, so a crash leaves an unindexed dir that open() re-adopts). */
  async remove(ref: ModelRef): Promise<void> {
    if (sameRef(ref, this.index.active)) throw new ModelStoreError('mismatch', `${refString(ref)} is active; not removed`);
    const dir = this.dirOf(ref);
    this.index.installed = this.index.installed.filter((e) => !sameRef(e, ref));
    if (sameRef(ref, this.index.previous)) this.index.previous = null;
    await this.saveIndex();
    const trash = path.join(this.tmpDir, `rm-${randomBytes(4).toString('hex')}`);
    await rename(dir, trash).catch(() => undefined);
    await rm(trash, { recursive: true, force: true });
  }

  /** Deletes downloaded archives except those named (a rollout in progress keeps its partial file). */
  async cleanDownloads(keepSha256: string[] = []): Promise<void> {
    for (const f of await readdir(this.downloadsDir)) {
      if (keepSha256.some((s) => f.startsWith(s))) continue;
      await rm(path.join(this.downloadsDir, f), { force: true });
    }
  }

  /** The persisted rollout record (see rollout.ts), or undefined. A torn or unreadable one reads as none. */
  async loadRollout<T>(): Promise<T | undefined> {
    try {
      return await readJson<T>(this.rolloutFile);
    } catch (e) {
      this.warnings.push(`${(e as Error).message}; ignored`);
      return undefined;
    }
  }

  async saveRollout(record: unknown): Promise<void> {
    if (record === null || record === undefined) await rm(this.rolloutFile, { force: true });
    else await writeFileAtomic(this.rolloutFile, JSON.stringify(record, null, 2) + '\n');
  }
}
