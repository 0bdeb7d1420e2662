/**
 * Bundle transport: a plain POSIX ustar `.tar` of the bundle directory (readable by any `tar -xf`), and a
 * safe reader for it. Entries are relative to the bundle root (manifest.json, model.onnx, golden/…),
 * written in sorted order with mtime 0, uid/gid 0, mode 0644/0755, so packing the same bundle twice gives
 * the same bytes.
 *
 * Unpacking trusts nothing in the archive (it is input from outside): only regular files and directories
 * (symlinks, hard links, devices, pax/GNU extension headers are refused), names must be relative without
 * `..`, backslashes, NUL or a drive letter, duplicate names are refused, a header whose size runs past the
 * end of the archive is refused, and entry count and total size are capped. Extraction goes into a fresh
 * sibling directory renamed to the destination only when everything was extracted, so a refused archive
 * leaves nothing behind. The signature and hashes are NOT checked here: `model verify` / loading does that.
 */
import { lstat, mkdir, open, readdir, rename, rm, rmdir, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

const BLOCK = 512;

export class PackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PackError';
  }
}

interface Entry {
  name: string;
  abs: string;
  type: 'file' | 'dir';
  size: number;
}

async function walk(root: string, rel = ''): Promise<Entry[]> {
  const out: Entry[] = [];
  const names = (await readdir(path.join(root, rel))).sort();
  for (const n of names) {
    const r = rel ? `${rel}/${n}` : n;
    const abs = path.join(root, r);
    const st = await lstat(abs);
    if (st.isSymbolicLink()) throw new PackError(`'${r}' is a symbolic link; a bundle to pack holds regular files only`);
    if (st.isDirectory()) {
      out.push({ name: `${r}/`, abs, type: 'dir', size: 0 });
      out.push(...(await walk(root, r)));
    } else if (st.isFile()) {
      out.push({ name: r, abs, type: 'file', size: st.size });
    } else {
      throw new PackError(`'${r}' is not a regular file or directory`);
    }
  }
  return out;
}

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

function header(name: string, size: number, type: 'file' | 'dir'): Buffer {
  const h = Buffer.alloc(BLOCK);
  let prefix = '';
  let base = name;
  if (Buffer.byteLength(name) > 100) {
    // split at a '/' so that name <= 100 and prefix <= 155 bytes
    const cut = name.lastIndexOf('/', name.length - 2);
    prefix = cut > 0 ? name.slice(0, cut) : '';
    base = cut > 0 ? name.slice(cut + 1) : name;
    if (Buffer.byteLength(base) > 100 || Buffer.byteLength(prefix) > 155) throw new PackError(`path too long for ustar: '${name}'`);
  }
  h.write(base, 0, 100, 'utf8');
  h.write(octal(type === 'dir' ? 0o755 : 0o644, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii');
  h.write(octal(0, 8), 116, 'ascii');
  if (size > 0o77777777777) throw new PackError(`'${name}' is too large for ustar (${size} bytes)`);
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(0, 12), 136, 'ascii');
  h.write('        ', 148, 'ascii');
  h.write(type === 'dir' ? '5' : '0', 156, 'ascii');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return h;
}

/** Writes `dir` as a ustar archive to `outFile`. Returns the entries written. */
export async function packBundle(dir: string, outFile: string): Promise<{ entries: number; bytes: number }> {
  const st = await lstat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new PackError(`'${dir}' is not a directory`);
  const entries = await walk(dir);
  if (!entries.some((e) => e.name === 'manifest.json')) throw new PackError(`'${dir}' has no manifest.json; not a bundle`);
  const out = await open(outFile, 'w');
  let bytes = 0;
  try {
    const put = async (b: Buffer): Promise<void> => {
      await out.write(b);
      bytes += b.length;
    };
    for (const e of entries) {
      await put(header(e.name, e.size, e.type));
      if (e.type === 'dir') continue;
      const f = await open(e.abs, 'r');
      try {
        let left = e.size;
        const buf = Buffer.alloc(1 << 20);
        while (left > 0) {
          const { bytesRead } = await f.read(buf, 0, Math.min(buf.length, left), null);
          if (bytesRead === 0) throw new PackError(`'${e.name}' shrank while packing`);
          await put(buf.subarray(0, bytesRead));
          left -= bytesRead;
        }
      } finally {
        await f.close();
      }
      const pad = (BLOCK - (e.size % BLOCK)) % BLOCK;
      if (pad) await put(Buffer.alloc(pad));
    }
    await put(Buffer.alloc(2 * BLOCK));
  } finally {
    await out.close();
  }
  return { entries: entries.length, bytes };
}

export interface UnpackOptions {
  /** Total bytes of file content accepted (default 2 GiB). */
  maxTotalBytes?: number;
  /** Entries accepted (default 10000). */
  maxEntries?: number;
}

function field(h: Buffer, start: number, len: number): string {
  const raw = h.subarray(start, start + len);
  const nul = raw.indexOf(0);
  return raw.subarray(0, nul < 0 ? len : nul).toString('utf8');
}

function parseOctal(h: Buffer, start: number, len: number, what: string): number {
  const s = field(h, start, len).trim();
  if (!/^[0-7]+$/.test(s)) throw new PackError(`bad ${what} field in tar header`);
  return parseInt(s, 8);
}

/** Checks an archive member name; returns the normalised relative path (no trailing '/'). */
export function safeMemberName(name: string): string {
  if (name.includes('\0') || name.includes('\\')) throw new PackError(`member '${name}' contains a forbidden character`);
  if (name.startsWith('/') || /^[A-Za-z]:/.test(name)) throw new PackError(`member '${name}' has an absolute path`);
  const segs = name.split('/').filter((s) => s !== '' && s !== '.');
  if (segs.some((s) => s === '..')) throw new PackError(`member '${name}' contains '..' (path traversal)`);
  if (segs.length === 0) throw new PackError(`member '${name}' has an empty name`);
  return segs.join('/');
}

/**
 * Extracts a ustar archive into `destDir` (which must not exist, or be an empty directory). Refuses (and
 * writes nothing) on any unsafe or malformed member; see the file comment.
 */
export async function unpackBundle(tarFile: string, destDir: string, options: UnpackOptions = {}): Promise<{ files: number; bytes: number }> {
  const maxTotal = options.maxTotalBytes ?? 2 * 1024 ** 3;
  const maxEntries = options.maxEntries ?? 10_000;
  const dest = path.resolve(destDir);
  const existing = await lstat(dest).catch(() => undefined);
  if (existing) {
    if (!existing.isDirectory() || existing.isSymbolicLink()) throw new PackError(`'${destDir}' exists and is not a directory`);
    if ((await readdir(dest)).length > 0) throw new PackError(`'${destDir}' is not empty; unpack into a new directory`);
  }
  await mkdir(path.dirname(dest), { recursive: true });
  const staging = `${dest}.unpack-${process.pid}-${Date.now()}`;
  await mkdir(staging, { recursive: false });
  const tar = await open(tarFile, 'r');
  try {
    const r = await extract(tar, staging, maxTotal, maxEntries);
    if (existing) await rmdir(dest);
    await rename(staging, dest);
    return r;
  } catch (e) {
    await rm(staging, { recursive: true, force: true });
    throw e;
  } finally {
    await tar.close();
  }
}

async function extract(tar: FileHandle, root: string, maxTotal: number, maxEntries: number): Promise<{ files: number; bytes: number }> {
  const fileSize = (await tar.stat()).size;
  const seen = new Set<string>();
  const h = Buffer.alloc(BLOCK);
  let pos = 0;
  let total = 0;
  let files = 0;
  let ended = false;
  while (pos + BLOCK <= fileSize) {
    await tar.read(h, 0, BLOCK, pos);
    pos += BLOCK;
    if (h.every((b) => b === 0)) {
      ended = true;
      break;
    }
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : (h[i] as number);
    if (parseOctal(h, 148, 8, 'checksum') !== sum) throw new PackError(`corrupt tar header at byte ${pos - BLOCK} (checksum)`);
    const type = String.fromCharCode(h[156] as number);
    const prefix = field(h, 345, 155);
    const rawName = (prefix ? `${prefix}/` : '') + field(h, 0, 100);
    const size = parseOctal(h, 124, 12, 'size');
    if (type === '2' || type === '1') throw new PackError(`member '${rawName}' is a ${type === '2' ? 'symbolic' : 'hard'} link; links are refused`);
    if (type !== '0' && type !== '\0' && type !== '5') {
      throw new PackError(`member '${rawName}' has unsupported type '${type}' (only regular files and directories)`);
    }
    const name = safeMemberName(rawName);
    if (seen.has(name)) throw new PackError(`member '${name}' appears twice`);
    seen.add(name);
    if (seen.size > maxEntries) throw new PackError(`archive has more than ${maxEntries} entries`);
    const target = path.join(root, name);
    const rel = path.relative(root, target);
    if (rel.startsWith('..') || path.isAbsolute(rel)) throw new PackError(`member '${name}' resolves outside the destination`);
    if (type === '5') {
      await mkdir(target, { recursive: true });
      continue;
    }
    if (size > fileSize - pos) throw new PackError(`member '${name}' claims ${size} bytes but the archive ends first (truncated or forged)`);
    total += size;
    if (total > maxTotal) throw new PackError(`archive content exceeds the ${maxTotal}-byte limit (at member '${name}')`);
    await mkdir(path.dirname(target), { recursive: true });
    const out = await open(target, 'wx', 0o644);
    try {
      const buf = Buffer.alloc(1 << 20);
      let left = size;
      let at = pos;
      while (left > 0) {
        const { bytesRead } = await tar.read(buf, 0, Math.min(buf.length, left), at);
        if (bytesRead === 0) throw new PackError(`member '${name}' is truncated`);
        await out.write(buf.subarray(0, bytesRead));
        left -= bytesRead;
        at += bytesRead;
      }
    } finally {
      await out.close();
    }
    files++;
    pos += size + ((BLOCK - (size % BLOCK)) % BLOCK);
  }
  if (!ended) throw new PackError('archive has no end-of-archive marker (truncated)');
  if (!seen.has('manifest.json')) throw new PackError('archive has no manifest.json at its root; not a bundle');
  return { files, bytes: total };
}
