/**
 * Where the registry keeps bundle archives (.tar): one small interface, so a fleet that outgrows a
 * local disk can put blobs in object storage without touching the registry or the HTTP layer.
 *
 * Keys are relative, slash-separated names made by the registry (`<id>/<version>.tar`); the registry's
 * index (id, version, sha256, size, signer) lives in central's SQLite database, not in the storage, so
 * listing bundles never has to scan a bucket.
 *
 * An S3 / MinIO implementation maps one-to-one (see docs/CENTRAL.md, "Storage"):
 *   put(key, file)          -> PutObject (or multipart Upload for large files) of the verified temp file
 *   get(key, {start, end})  -> GetObject with `Range: bytes=start-end`, returning the Body stream
 *   stat(key)               -> HeadObject (ContentLength)
 *   list(prefix)            -> ListObjectsV2 with Prefix (paginated)
 *   delete(key)             -> DeleteObject
 * Agents still download from central (the URL in DesiredModel points at central's registry), so range
 * requests, ETags and size caps stay the same whatever the backend; a deployment that wants agents to
 * fetch straight from the bucket can put a pre-signed URL in DesiredModel.url instead.
 */
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';

export interface StoredObject {
  key: string;
  size: number;
}

export interface ByteRange {
  /** First byte, inclusive. */
  start: number;
  /** Last byte, inclusive. */
  end: number;
}

export interface BundleStorage {
  /** Stores the (already verified) local file under `key`, replacing nothing: a key is written once. */
  put(key: string, file: string): Promise<StoredObject>;
  /** Streams the object, or the inclusive byte range of it. Rejects with StorageNotFound when absent. */
  get(key: string, range?: ByteRange): Promise<Readable>;
  /** Size of the object, or null when absent. */
  stat(key: string): Promise<StoredObject | null>;
  /** Objects whose key starts with `prefix` (all when empty). */
  list(prefix?: string): Promise<StoredObject[]>;
  /** Removes the object; absent is not an error. */
  delete(key: string): Promise<void>;
}

export class StorageNotFound extends Error {
  constructor(readonly key: string) {
    super(`no stored object '${key}'`);
    this.name = 'StorageNotFound';
  }
}

/** Refuses keys that could leave the storage root (they are made by the registry, but be strict). */
export function checkKey(key: string): string {
  if (key === '' || key.includes('\0') || key.includes('\\') || key.startsWith('/')) throw new Error(`invalid storage key '${key}'`);
  const segs = key.split('/');
  if (segs.some((s) => s === '' || s === '.' || s === '..')) throw new Error(`invalid storage key '${key}'`);
  return key;
}

/** Blobs as files under a root directory (`<dataDir>/bundles`). Writes are atomic (temp + rename). */
export class LocalDiskStorage implements BundleStorage {
  constructor(readonly root: string) {}

  private file(key: string): string {
    return path.join(this.root, ...checkKey(key).split('/'));
  }

  async put(key: string, file: string): Promise<StoredObject> {
    const dest = this.file(key);
    await mkdir(path.dirname(dest), { recursive: true });
    const tmp = `${dest}.tmp-${process.pid}-${Date.now()}`;
    try {
      await copyFile(file, tmp);
      await rename(tmp, dest);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
    const st = await stat(dest);
    return { key, size: st.size };
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const f = this.file(key);
    const st = await stat(f).catch(() => null);
    if (!st?.isFile()) throw new StorageNotFound(key);
    return createReadStream(f, range ? { start: range.start, end: range.end } : {});
  }

  async stat(key: string): Promise<StoredObject | null> {
    const st = await stat(this.file(key)).catch(() => null);
    return st?.isFile() ? { key, size: st.size } : null;
  }

  async list(prefix = ''): Promise<StoredObject[]> {
    const out: StoredObject[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const e of entries) {
        const key = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(path.join(dir, e.name), key);
        else if (e.isFile() && !e.name.includes('.tmp-') && key.startsWith(prefix)) {
          out.push({ key, size: (await stat(path.join(dir, e.name))).size });
        }
      }
    };
    await walk(this.root, '');
    return out.sort((a, b) => a.key.localeCompare(b.key));
  }

  async delete(key: string): Promise<void> {
    await rm(this.file(key), { force: true });
  }
}
