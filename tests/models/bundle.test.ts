import { cp, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BundleError, loadBundle, selectModelFile } from '../../src/models/bundle.js';
import type { LoadedBundle, Manifest } from '../../src/models/types.js';
import { BUNDLE_DIR } from './helpers.js';

const temps: string[] = [];
afterEach(async () => {
  await Promise.all(temps.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

/** A writable copy of the shipped bundle. */
async function copyBundle(): Promise<string> {
  const root = await mkdtemp(path.join(tmpdir(), 'bundle-test-'));
  temps.push(root);
  const dir = path.join(root, 'orientation-qa');
  await cp(BUNDLE_DIR, dir, { recursive: true });
  return dir;
}

async function readManifest(dir: string): Promise<Manifest> {
  return JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
}

async function writeManifest(dir: string, m: unknown): Promise<void> {
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2));
}

async function rejection(p: Promise<unknown>): Promise<BundleError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(BundleError);
    return e as BundleError;
  }
  throw new Error('expected loadBundle to reject');
}

describe('loadBundle on the shipped orientation-qa bundle', () => {
  it('loads and verifies it', async () => {
    const b = await loadBundle(BUNDLE_DIR);
    expect(b.manifest.id).toBe('orientation-qa');
    expect(b.manifest.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(b.manifest.labels).toEqual(['rot0', 'rot90', 'rot180', 'rot270']);
    expect(b.manifestSha256).toMatch(/^[0-9a-f]{64}$/);
    // int8 is preferred when the bundle has both (edge-quantize's model_int8.onnx); fp32 on request
    expect(selectModelFile(b, 'onnx')).toMatchObject({ path: 'model_int8.onnx', precision: 'int8' });
    expect(selectModelFile(b, 'onnx', 'fp32')).toMatchObject({ path: 'model.onnx', precision: 'fp32' });
  });

  it('records provenance: training code revision, data sources with licences, split and metrics', async () => {
    const p = (await loadBundle(BUNDLE_DIR)).manifest.provenance as Record<string, Record<string, unknown>>;
    expect(p.trainingCode?.gitRevision).toMatch(/^[0-9a-f]{40}$/);
    const sources = p.dataSources as unknown as { source: string; licence: string }[];
    expect(sources.length).toBeGreaterThan(3);
    for (const s of sources) expect(s.licence).toBeTruthy();
    expect(Object.keys(p.split ?? {})).toEqual(expect.arrayContaining(['train', 'val', 'test']));
    expect((p.metrics?.test as { accuracy: number }).accuracy).toBeGreaterThan(0);
  });

  it('says clearly when a format or precision is not in the bundle', async () => {
    const b = await loadBundle(BUNDLE_DIR);
    expect(() => selectModelFile(b, 'tfjs', 'int8')).toThrow(/has no tfjs\/int8 model file \(has: .*onnx\/fp32.*\)/);
    expect(() => selectModelFile(b, 'tfjs', 'int8')).toThrow(BundleError);
  });
});

describe('loadBundle rejects bad bundles with a clear error', () => {
  it('a tampered model file (same size, one byte changed): sha256 mismatch', async () => {
    const dir = await copyBundle();
    const file = path.join(dir, 'model.onnx');
    const bytes = await readFile(file);
    const i = Math.floor(bytes.length / 2);
    bytes[i] = (bytes[i] as number) ^ 0xff;
    await writeFile(file, bytes);
    const e = await rejection(loadBundle(dir));
    expect(e.code).toBe('hash-mismatch');
    expect(e.message).toMatch(/model\.onnx' sha256 [0-9a-f]{64} does not match the manifest/);
  });

  it('a truncated model file: size mismatch', async () => {
    const dir = await copyBundle();
    const file = path.join(dir, 'model.onnx');
    const bytes = await readFile(file);
    await writeFile(file, bytes.subarray(0, bytes.length - 100));
    const e = await rejection(loadBundle(dir));
    expect(e.code).toBe('size-mismatch');
    expect(e.message).toContain(`is ${bytes.length - 100} bytes, manifest says ${bytes.length}`);
  });

  it('a missing model file', async () => {
    const dir = await copyBundle();
    await rm(path.join(dir, 'model.onnx'));
    const e = await rejection(loadBundle(dir));
    expect(e.code).toBe('missing-file');
    expect(e.message).toMatch(/'model\.onnx' is missing/);
  });

  for (const [what, p] of [
    ['a parent-directory path', '../../etc/passwd'],
    ['a nested parent-directory path', 'golden/../../outside.onnx'],
    ['an absolute path', '/etc/passwd'],
  ] as const) {
    it(`${what} in files[] is refused before anything is read`, async () => {
      const dir = await copyBundle();
      const m = await readManifest(dir);
      (m.files[0] as { path: string }).path = p;
      await writeManifest(dir, m);
      const e = await rejection(loadBundle(dir));
      expect(e.code).toBe('path-escape');
      expect(e.message).toContain(`'${p}'`);
    });
  }

  it('a symlink pointing outside the bundle is refused', async () => {
    const dir = await copyBundle();
    const outside = path.join(path.dirname(dir), 'outside.onnx');
    await cp(path.join(dir, 'model.onnx'), outside);
    await rm(path.join(dir, 'model.onnx'));
    await symlink(outside, path.join(dir, 'model.onnx'));
    const e = await rejection(loadBundle(dir));
    expect(e.code).toBe('path-escape');
    expect(e.message).toMatch(/symlink that resolves outside the bundle/);
  });

  it('a symlink that stays inside the bundle is accepted', async () => {
    const dir = await copyBundle();
    await cp(path.join(dir, 'model.onnx'), path.join(dir, 'golden', 'real.onnx'));
    await rm(path.join(dir, 'model.onnx'));
    await symlink(path.join('golden', 'real.onnx'), path.join(dir, 'model.onnx'));
    await expect(loadBundle(dir)).resolves.toMatchObject({ manifest: { id: 'orientation-qa' } });
  });

  it('a manifest failing the schema lists every problem as `path: message`', async () => {
    const dir = await copyBundle();
    const m = (await readManifest(dir)) as unknown as Record<string, unknown>;
    delete m.labels;
    m.version = 'v1';
    (m.input as Record<string, unknown>).layout = 'CHW';
    (m.files as Record<string, unknown>[])[0]!.sha256 = 'not-a-hash';
    await writeManifest(dir, m);
    const e = await rejection(loadBundle(dir));
    expect(e.code).toBe('invalid-manifest');
    expect(e.problems).toEqual(
      expect.arrayContaining([
        "/: must have property 'labels'",
        expect.stringMatching(/^\/version: must match pattern/) as unknown,
        expect.stringMatching(/^\/input\/layout: must be equal to one of the allowed values \(NCHW, NHWC\)/) as unknown,
        expect.stringMatching(/^\/files\/0\/sha256: must match pattern/) as unknown,
      ]),
    );
    expect(e.message).toMatch(/manifest\.json in .* is invalid: /);
  });

  it('cross-field errors: channel dimension vs channels, normalisation length', async () => {
    const dir = await copyBundle();
    const m = await readManifest(dir);
    m.input.shape = [-1, 3, 128, 128];
    await writeManifest(dir, m);
    const e = await rejection(loadBundle(dir));
    expect(e.problems).toEqual(expect.arrayContaining(['/input/shape: channel dimension 3 does not match channels 1']));
  });

  it('a manifest that is not JSON, and a directory without one', async () => {
    const dir = await copyBundle();
    await writeFile(path.join(dir, 'manifest.json'), '{"id": "orientation-qa",');
    const e = await rejection(loadBundle(dir));
    expect(e.code).toBe('bad-json');
    expect(e.message).toMatch(/is not valid JSON/);
    await rm(path.join(dir, 'manifest.json'));
    expect((await rejection(loadBundle(dir))).code).toBe('not-found');
    expect((await rejection(loadBundle(path.join(dir, 'nope')))).message).toMatch(/does not exist/);
  });

  it('extra checks (signature / golden, later) run after integrity and can reject', async () => {
    const e = await rejection(
      loadBundle(BUNDLE_DIR, {
        checks: [
          async (b: LoadedBundle) => {
            await Promise.resolve();
            throw new Error(`golden mismatch on ${b.manifest.id}`);
          },
        ],
      }),
    );
    expect(e.code).toBe('check-failed');
    expect(e.message).toMatch(/golden mismatch on orientation-qa/);
  });
});
