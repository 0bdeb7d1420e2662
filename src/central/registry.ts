/**
 * The model registry: signed bundle archives in, verified; listed with sha256 and size; streamed out
 * (with byte ranges) to agents.
 *
 * Upload: the request body is streamed to a temp file (size-capped, sha256 computed on the way), the
 * archive is unpacked with src/models/pack.ts (links, traversal, bombs refused) into a temp directory,
 * and the bundle is loaded with the same checks an agent applies: the Ed25519 signature over the exact
 * manifest bytes against central's trusted keys (unsigned is always refused here), the manifest schema,
 * and every listed file's size and sha256. Only then is the .tar stored and indexed. The stored bytes
 * are exactly the uploaded bytes, so the sha256 in the listing is the one agents verify.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { BundleError, loadBundle } from '../models/bundle.js';
import { PackError, unpackBundle } from '../models/pack.js';
import { signatureCheck, type SignatureStatus, type TrustedKey } from '../models/signature.js';
import type { CentralDb } from './db.js';
import type { BundleStorage } from './storage.js';

export interface BundleRecord {
  id: string;
  version: string;
  sha256: string;
  size: number;
  /** sha256 of manifest.json (identifies the exact signed content). */
  manifestSha256: string;
  /** Key that signed it. */
  keyId: string;
  task: string | null;
  labels: string[];
  uploadedAt: string;
}

export class RegistryError extends Error {
  constructor(
    /** HTTP status to answer with. */
    readonly status: number,
    readonly code: string,
    message: string,
    readonly problems: string[] = [message],
  ) {
    super(message);
    this.name = 'RegistryError';
  }
}

export interface RegistryOptions {
  db: CentralDb;
  storage: BundleStorage;
  trustedKeys: TrustedKey[];
  /** Scratch space for uploads (`<dataDir>/tmp`). */
  tmpDir: string;
  /** Largest archive accepted (default 1 GiB). */
  maxUploadBytes?: number;
}

interface Row {
  id: string;
  version: string;
  storage_key: string;
  sha256: string;
  size: number;
  manifest_sha: string;
  key_id: string;
  task: string | null;
  labels: string;
  uploaded_at: string;
}

function toRecord(r: Row): BundleRecord {
  return {
    id: r.id,
    version: r.version,
    sha256: r.sha256,
    size: r.size,
    manifestSha256: r.manifest_sha,
    keyId: r.key_id,
    task: r.task,
    labels: JSON.parse(r.labels) as string[],
    uploadedAt: r.uploaded_at,
  };
}

/** Compares dotted versions numerically where both parts are numbers (1.10.0 > 1.9.0), else as text. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.+-]/);
  const pb = b.split(/[.+-]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    if (x === y) continue;
    const nx = /^\d+$/.test(x) ? Number(x) : NaN;
    const ny = /^\d+$/.test(y) ? Number(y) : NaN;
    if (!Number.isNaN(nx) && !Number.isNaN(ny)) return nx - ny;
    return x < y ? -1 : 1;
  }
  return 0;
}

/** (a function so TS does not narrow the callback-assigned status to `undefined`) */
function readKeyId(s: SignatureStatus | undefined): string {
  return s?.keyId ?? 'unsigned';
}

export class Registry {
  private readonly maxUpload: number;

  constructor(private readonly opts: RegistryOptions) {
    this.maxUpload = opts.maxUploadBytes ?? 1024 ** 3;
  }

  list(): BundleRecord[] {
    const rows = this.opts.db.prepare('SELECT * FROM bundles').all() as Row[];
    return rows.map(toRecord).sort((a, b) => a.id.localeCompare(b.id) || compareVersions(b.version, a.version));
  }

  get(id: string, version: string): BundleRecord | null {
    const r = this.opts.db.prepare('SELECT * FROM bundles WHERE id = ? AND version = ?').get(id, version) as Row | undefined;
    return r ? toRecord(r) : null;
  }

  storageKey(id: string, version: string): string {
    return `${id}/${version}.tar`;
  }

  /** Streams the stored archive (or a byte range of it). */
  open(rec: BundleRecord, range?: { start: number; end: number }): Promise<Readable> {
    return this.opts.storage.get(this.storageKey(rec.id, rec.version), range);
  }

  async delete(id: string, version: string): Promise<boolean> {
    const rec = this.get(id, version);
    if (!rec) return false;
    this.opts.db.prepare('DELETE FROM bundles WHERE id = ? AND version = ?').run(id, version);
    await this.opts.storage.delete(this.storageKey(id, version));
    return true;
  }

  /**
   * Verifies and stores an uploaded archive. `declaredLength` (Content-Length) lets an oversized upload be
   * refused before reading it. Throws RegistryError (4xx) for anything wrong with the bundle.
   */
  async upload(body: Readable, declaredLength?: number): Promise<{ record: BundleRecord; created: boolean }> {
    if (declaredLength !== undefined && declaredLength > this.maxUpload) {
      throw new RegistryError(413, 'too-large', `bundle archive is ${declaredLength} bytes; the registry accepts at most ${this.maxUpload}`);
    }
    await mkdir(this.opts.tmpDir, { recursive: true });
    const work = path.join(this.opts.tmpDir, `upload-${randomUUID()}`);
    await mkdir(work);
    const tarFile = path.join(work, 'bundle.tar');
    try {
      const { sha256, size } = await this.receive(body, tarFile);
      if (size === 0) throw new RegistryError(400, 'empty', 'empty upload: send the bundle .tar as the request body (edge-agent model pack DIR OUT.tar)');
      const dir = path.join(work, 'bundle');
      try {
        await unpackBundle(tarFile, dir, { maxTotalBytes: this.maxUpload * 4 });
      } catch (e) {
        if (e instanceof PackError) throw new RegistryError(400, 'bad-archive', `not a valid bundle archive: ${e.message}`);
        throw e;
      }
      let sig: SignatureStatus | undefined;
      let bundle;
      try {
        bundle = await loadBundle(dir, {
          manifestChecks: [signatureCheck({ trustedKeys: this.opts.trustedKeys, allowUnsigned: false }, (s) => (sig = s))],
        });
      } catch (e) {
        if (e instanceof BundleError) {
          const status = e.code === 'unsigned' || e.code === 'untrusted-key' || e.code === 'bad-signature' ? 403 : 422;
          throw new RegistryError(status, e.code, `bundle refused (${e.code}): ${e.message}`, e.problems);
        }
        throw e;
      }
      const m = bundle.manifest;
      const existing = this.get(m.id, m.version);
      if (existing) {
        if (existing.sha256 === sha256) return { record: existing, created: false };
        throw new RegistryError(
          409,
          'version-exists',
          `${m.id}@${m.version} is already in the registry with different content (sha256 ${existing.sha256.slice(0, 12)}…); a version is immutable: publish a new version`,
        );
      }
      await this.opts.storage.put(this.storageKey(m.id, m.version), tarFile);
      const record: BundleRecord = {
        id: m.id,
        version: m.version,
        sha256,
        size,
        manifestSha256: bundle.manifestSha256,
        keyId: readKeyId(sig),
        task: m.task,
        labels: m.labels,
        uploadedAt: new Date().toISOString(),
      };
      try {
        this.opts.db
          .prepare(
            `INSERT INTO bundles (id, version, storage_key, sha256, size, manifest_sha, key_id, task, labels, uploaded_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          )
          .run(m.id, m.version, this.storageKey(m.id, m.version), sha256, size, record.manifestSha256, record.keyId, record.task, JSON.stringify(m.labels), record.uploadedAt);
      } catch (e) {
        // two uploads of the same version at once: the first one's index row wins
        if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
          const won = this.get(m.id, m.version);
          if (won?.sha256 === sha256) return { record: won, created: false };
          throw new RegistryError(409, 'version-exists', `${m.id}@${m.version} was uploaded concurrently with different content; a version is immutable`);
        }
        throw e;
      }
      return { record, created: true };
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  private receive(body: Readable, file: string): Promise<{ sha256: string; size: number }> {
    return new Promise((resolve, reject) => {
      const hash = createHash('sha256');
      const out = createWriteStream(file);
      let size = 0;
      let failed = false;
      const fail = (e: Error): void => {
        if (failed) return;
        failed = true;
        body.unpipe(out);
        body.resume(); // drain the rest so the client gets our answer
        out.destroy();
        reject(e);
      };
      body.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > this.maxUpload) {
          fail(new RegistryError(413, 'too-large', `bundle archive exceeds ${this.maxUpload} bytes`));
          return;
        }
        hash.update(chunk);
      });
      body.on('error', (e) => fail(e));
      // a client that disconnects mid-upload: no 'end' will come
      body.on('close', () => {
        if (!body.readableEnded) fail(new RegistryError(400, 'aborted', 'upload aborted before the end of the body'));
      });
      out.on('error', (e) => fail(e));
      out.on('finish', () => {
        if (!failed) resolve({ sha256: hash.digest('hex'), size });
      });
      body.pipe(out);
    });
  }
}
