/**
 * Small state files (config overrides, ingest pause, the model store's index and rollout record) written
 * so that a crash or power cut leaves either the old content or the new one, never a torn file.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import path from 'node:path';

/**
 * Writes `file` atomically and durably: a temp file in the same directory, fsync, rename over `file`,
 * fsync of the directory. `mode` applies to a newly created file (0o600 for files that may hold secrets).
 */
export async function writeFileAtomic(file: string, data: string, mode = 0o644): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await fsyncDir(dir);
}

/** Makes a rename or create in `dir` durable. Some filesystems refuse fsync on a directory: the rename is still atomic. */
export async function fsyncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r').catch(() => undefined);
  if (!d) return;
  try {
    await d.sync();
  } catch {
    // see above
  } finally {
    await d.close();
  }
}
