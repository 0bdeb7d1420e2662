/**
 * Inbox file names are data from outside: modalities and PACS exports often name files after the SOP
 * Instance UID (`1.2.840.113619....dcm`) or the patient (`DOE_JOHN_12345.dcm`). A name may appear in
 * logs and published error reports only when it carries nothing from the file's own header.
 *
 * The check works without a successful decode (a corrupt file's error report needs it too): every
 * token of the name (4+ characters, split at anything but letters, digits and dots, plus the whole
 * stem) is looked for, case-insensitively, in the first bytes of the file, where a DICOM header with
 * the patient module and the UIDs lives. A token found there means the name repeats header data, and
 * the content hash stands in for it. A harmless name (`IM0001.dcm`, `scan.png`) stays readable; a false
 * hit only costs readability, never privacy.
 */
import { open } from 'node:fs/promises';
import path from 'node:path';

/** How much of the file is searched: the DICOM meta header and data set up to the pixel data fit in it. */
export const HEADER_PROBE_BYTES = 256 * 1024;

/** The parts of a (relative) file name that could repeat header values. */
export function nameTokens(name: string): string[] {
  const out = new Set<string>();
  for (const segment of name.split(/[\\/]/)) {
    const ext = path.extname(segment);
    const stem = ext.length > 0 && ext.length <= 6 ? segment.slice(0, -ext.length) : segment;
    if (stem.length >= 4) out.add(stem.toLowerCase());
    for (const t of stem.split(/[^A-Za-z0-9.]+/)) {
      const token = t.replace(/^\.+|\.+$/g, '');
      if (token.length >= 4) out.add(token.toLowerCase());
    }
  }
  return [...out];
}

/** True when some token of `name` occurs in `header` (bytes read as latin1, case-insensitive). */
export function nameRepeatsHeader(name: string, header: Uint8Array): boolean {
  const tokens = nameTokens(name);
  if (tokens.length === 0) return false;
  const text = Buffer.from(header.buffer, header.byteOffset, header.byteLength).toString('latin1').toLowerCase();
  return tokens.some((t) => text.includes(t));
}

/** The content-hash stand-in for a name: `<16 hex>.<ext>`. */
export function hashedName(name: string, contentHash: string): string {
  const ext = path.extname(name);
  return `${contentHash.replace(/^sha256:/, '').slice(0, 16)}${ext && ext.length <= 6 ? ext : ''}`;
}

/**
 * The name to show for a file outside the process (logs, error reports). `allowIdentifiers` (config
 * privacy.allowUids) keeps every name as it is. A file that cannot be read is shown by its hash.
 */
export async function shownFileName(filePath: string, name: string, contentHash: string | null, allowIdentifiers: boolean): Promise<string> {
  if (allowIdentifiers) return name;
  const fallback = contentHash ? hashedName(name, contentHash) : `[file${path.extname(name).length <= 6 ? path.extname(name) : ''}]`;
  if (nameTokens(name).length === 0) return name;
  let header: Buffer;
  try {
    const fh = await open(filePath, 'r');
    try {
      const buf = Buffer.alloc(HEADER_PROBE_BYTES);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      header = buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } catch {
    return fallback;
  }
  return nameRepeatsHeader(name, header) ? fallback : name;
}
