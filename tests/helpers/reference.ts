/**
 * Reference decoding for bit-exact checks: an independent decoder (dcmtk or gdcm) decompresses the file to
 * Explicit VR Little Endian, then pydicom (Debian's /usr/bin/python3) reads the stored values. Nothing
 * here shares code with src/decode.
 *
 * Missing tools: in CI (CI=true) that is a failure, never a skip; locally the dependent tests skip.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PYTHON = '/usr/bin/python3';

export interface ReferencePixels {
  rows: number;
  columns: number;
  frames: number;
  samplesPerPixel: number;
  photometric: string;
  bitsStored: number;
  /** frames x rows x columns x samples, interleaved; stored values (masked / sign-extended to BitsStored). */
  values: Float64Array;
}

const toolCache = new Map<string, boolean>();
function hasTool(cmd: string): boolean {
  let ok = toolCache.get(cmd);
  if (ok === undefined) {
    try {
      execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
      ok = cmd !== PYTHON || pydicomWorks();
    } catch {
      ok = false;
    }
    toolCache.set(cmd, ok);
  }
  return ok;
}

function pydicomWorks(): boolean {
  try {
    execFileSync(PYTHON, ['-c', 'import pydicom, numpy'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const TOOLS_BY_SYNTAX: Record<string, string[]> = {
  '1.2.840.10008.1.2': ['dcmconv', '+te'],
  '1.2.840.10008.1.2.1': ['dcmconv', '+te'],
  '1.2.840.10008.1.2.1.99': ['dcmconv', '+te'],
  '1.2.840.10008.1.2.2': ['dcmconv', '+te'],
  '1.2.840.10008.1.2.5': ['dcmdrle'],
  '1.2.840.10008.1.2.4.50': ['dcmdjpeg'],
  '1.2.840.10008.1.2.4.51': ['dcmdjpeg'],
  '1.2.840.10008.1.2.4.57': ['dcmdjpeg'],
  '1.2.840.10008.1.2.4.70': ['dcmdjpeg'],
  '1.2.840.10008.1.2.4.80': ['dcmdjpls'],
  '1.2.840.10008.1.2.4.81': ['dcmdjpls'],
  '1.2.840.10008.1.2.4.90': ['gdcmconv', '--raw'],
  '1.2.840.10008.1.2.4.91': ['gdcmconv', '--raw'],
};

/** The command that decompresses a syntax, or undefined when no reference tool handles it (HTJ2K). */
export function referenceToolFor(transferSyntax: string): string[] | undefined {
  return TOOLS_BY_SYNTAX[transferSyntax];
}

/**
 * Whether the reference for `transferSyntax` can run here. Throws in CI when a tool is missing, so the
 * test fails with the reason instead of silently skipping.
 */
export function referenceAvailable(transferSyntax: string | undefined): boolean {
  const tool = transferSyntax === undefined ? ['dcmconv'] : referenceToolFor(transferSyntax);
  const needed = [PYTHON, ...(tool ? [tool[0]!] : [])];
  const missing = needed.filter((t) => !hasTool(t));
  if (missing.length === 0) return true;
  if (process.env.CI === 'true') {
    throw new Error(`reference decoder missing in CI: ${missing.join(', ')} (install dcmtk, libgdcm-tools, python3-pydicom)`);
  }
  return false;
}

const READ_STORED = String.raw`
import sys, json
import numpy as np
import pydicom
ds = pydicom.dcmread(sys.argv[1])
arr = ds.pixel_array
n = int(ds.get('NumberOfFrames', 1) or 1)
spp = int(ds.SamplesPerPixel)
arr = np.asarray(arr).reshape(n, int(ds.Rows), int(ds.Columns), spp).astype(np.int64)
bs, ba, pr = int(ds.BitsStored), int(ds.BitsAllocated), int(ds.PixelRepresentation)
if 1 < bs < ba:
    arr &= (1 << bs) - 1
    if pr == 1:
        sign = 1 << (bs - 1)
        arr = (arr ^ sign) - sign
arr.astype('<f8').tofile(sys.argv[2])
print(json.dumps({'rows': int(ds.Rows), 'columns': int(ds.Columns), 'frames': n, 'samplesPerPixel': spp,
                  'photometric': str(ds.PhotometricInterpretation), 'bitsStored': bs}))
`;

/** Stored values of a native (uncompressed) file, read by pydicom. */
export function readStoredWithPydicom(nativePath: string): ReferencePixels {
  const dir = mkdtempSync(join(tmpdir(), 'ref-read-'));
  try {
    const out = join(dir, 'values.f64');
    const header = execFileSync(PYTHON, ['-c', READ_STORED, nativePath, out], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const meta = JSON.parse(header.trim().split('\n').pop() ?? '{}') as Omit<ReferencePixels, 'values'>;
    const buf = readFileSync(out);
    const values = new Float64Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
    return { ...meta, values };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Decompress `path` (of `transferSyntax`) with dcmtk/gdcm to a native file, then read it with pydicom.
 * For HTJ2K (no tool here decodes it) pass the native file it was encoded from instead.
 */
export function referenceDecode(path: string, transferSyntax: string): ReferencePixels {
  const tool = referenceToolFor(transferSyntax);
  if (!tool) throw new Error(`no reference decoder for transfer syntax ${transferSyntax}`);
  const dir = mkdtempSync(join(tmpdir(), 'ref-dec-'));
  try {
    const native = join(dir, 'native.dcm');
    execFileSync(tool[0]!, [...tool.slice(1), path, native], { stdio: ['ignore', 'ignore', 'pipe'] });
    if (!existsSync(native)) throw new Error(`${tool.join(' ')} produced no output for ${path}`);
    return readStoredWithPydicom(native);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
