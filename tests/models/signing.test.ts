/**
 * Signed bundles, loaded the way the agent loads them (BundleClassifier.load: signature -> schema ->
 * paths/hashes -> runtime session -> golden inputs). Every bad bundle here is a real copy of the shipped
 * orientation-qa bundle, tampered one way.
 */
import { cp, mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { BundleError, loadBundle } from '../../src/models/bundle.js';
import {
  generateSigningKeyPair,
  keyIdOf,
  loadTrustedKeys,
  parsePublicKey,
  signBundle,
  signatureCheck,
  verifyManifestSignature,
} from '../../src/models/signature.js';
import type { Manifest } from '../../src/models/types.js';
import { BundleClassifier, type ClassifierOptions } from '../../src/pipeline/classifier.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SHIPPED = path.join(ROOT, 'models', 'orientation-qa');
const DEV_PRIVATE = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pem');
const DEV_PUBLIC = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem');

const temps: string[] = [];
afterEach(async () => {
  await Promise.all(temps.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function copyBundle(): Promise<string> {
  const root = await mkdtemp(path.join(tmpdir(), 'signing-test-'));
  temps.push(root);
  const dir = path.join(root, 'orientation-qa');
  await cp(SHIPPED, dir, { recursive: true });
  return dir;
}

async function readManifest(dir: string): Promise<Manifest & { golden: { name: string; logits: number[]; input: { path: string } }[] }> {
  return JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as never;
}

/** Writes a changed manifest and signs it again with the development key (a "validly signed" bad bundle). */
async function resign(dir: string, m: unknown): Promise<void> {
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
  await signBundle(dir, await readFile(DEV_PRIVATE));
}

/**
 * Overwrites 64 KiB in the middle of model.onnx (inside the weight data) with 0x3f bytes: still a valid
 * ONNX graph of the same shape that computes different numbers. Re-hashes and re-signs the manifest, so
 * only the golden check can catch it.
 */
async function perturbWeights(dir: string): Promise<void> {
  const m = await readManifest(dir);
  // every ONNX file (fp32 model.onnx and int8 model_int8.onnx), whichever the agent picks to serve
  for (const entry of m.files.filter((f) => f.format === 'onnx')) {
    const file = path.join(dir, entry.path);
    const bytes = await readFile(file);
    const mid = Math.floor(bytes.length / 2);
    bytes.fill(0x3f, mid, mid + 65536);
    await writeFile(file, bytes);
    entry.sha256 = createHash('sha256').update(bytes).digest('hex');
  }
  await resign(dir, m);
}

const opts: ClassifierOptions = {
  runtime: 'onnx',
  providers: ['cpu'],
  intraOpThreads: 1,
  interOpThreads: 1,
  graphOptimization: 'all',
  warmupRuns: 0,
  trustedKeys: [DEV_PUBLIC],
  allowUnsigned: false,
};

async function refused(dir: string, o: Partial<ClassifierOptions> = {}): Promise<BundleError> {
  try {
    const c = await BundleClassifier.load(dir, { ...opts, ...o });
    await c.dispose();
  } catch (e) {
    expect(e).toBeInstanceOf(BundleError);
    return e as BundleError;
  }
  throw new Error(`expected ${dir} to be refused`);
}

describe('the shipped bundle', () => {
  it('is signed with the development key, and its golden inputs reproduce the reference outputs', async () => {
    const c = await BundleClassifier.load(SHIPPED, opts);
    try {
      expect(c.signature).toMatchObject({ signed: true, keyId: keyIdOf(parsePublicKey(await readFile(DEV_PUBLIC)).key), keySource: DEV_PUBLIC });
      expect(c.golden.length).toBeGreaterThanOrEqual(3);
      for (const g of c.golden) {
        expect(g.ok).toBe(true);
        expect(g.maxAbsDiff).toBeLessThanOrEqual(g.tolerance);
      }
    } finally {
      await c.dispose();
    }
  });
});

describe('every bad bundle is refused with a clear error', () => {
  it('a tampered model file: hash mismatch naming the file', async () => {
    const dir = await copyBundle();
    const f = path.join(dir, 'model.onnx');
    const b = await readFile(f);
    b[b.length - 100] = (b[b.length - 100] as number) ^ 0xff;
    await writeFile(f, b);
    const e = await refused(dir);
    expect(e.code).toBe('hash-mismatch');
    expect(e.message).toMatch(/'model\.onnx' sha256 [0-9a-f]{64} does not match the manifest/);
  });

  it('a tampered manifest (label order swapped, not re-signed): signature does not match', async () => {
    const dir = await copyBundle();
    const m = await readManifest(dir);
    m.labels = [m.labels[1]!, m.labels[0]!, ...m.labels.slice(2)];
    await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
    const e = await refused(dir);
    expect(e.code).toBe('bad-signature');
    expect(e.message).toMatch(/manifest\.sig does not match manifest\.json .*modified after signing/);
  });

  it('one changed byte of whitespace in the manifest is tampering too', async () => {
    const dir = await copyBundle();
    const text = await readFile(path.join(dir, 'manifest.json'), 'utf8');
    await writeFile(path.join(dir, 'manifest.json'), text + ' ');
    expect((await refused(dir)).code).toBe('bad-signature');
  });

  it('signed by a key the agent does not trust', async () => {
    const dir = await copyBundle();
    const other = generateSigningKeyPair();
    await signBundle(dir, other.privatePem);
    const e = await refused(dir);
    expect(e.code).toBe('untrusted-key');
    expect(e.message).toContain(`signed by key ${other.keyId}, which is not trusted`);
  });

  it('unsigned (no manifest.sig): refused by default, loads only with allowUnsigned', async () => {
    const dir = await copyBundle();
    await unlink(path.join(dir, 'manifest.sig'));
    const e = await refused(dir);
    expect(e.code).toBe('unsigned');
    expect(e.message).toMatch(/bundle is unsigned: no manifest\.sig/);
    const c = await BundleClassifier.load(dir, { ...opts, allowUnsigned: true });
    expect(c.signature).toEqual({ signed: false });
    await c.dispose();
  });

  it('allowUnsigned never excuses a bad or untrusted signature', async () => {
    const dir = await copyBundle();
    await signBundle(dir, generateSigningKeyPair().privatePem);
    expect((await refused(dir, { allowUnsigned: true })).code).toBe('untrusted-key');
    await writeFile(path.join(dir, 'manifest.sig'), '{"alg":"rsa","keyId":"x","sig":""}');
    const e = await refused(dir, { allowUnsigned: true });
    expect(e.code).toBe('bad-signature');
    expect(e.message).toMatch(/unsupported alg "rsa"/);
  });

  it.each([
    ['a parent-directory path', '../outside.onnx', /contains '\.\.' and could escape the bundle/],
    ['an absolute path', '/etc/passwd', /is absolute; bundle paths must be relative/],
  ])('path traversal in files[] (%s), validly signed: path-escape', async (_what, p, re) => {
    const dir = await copyBundle();
    const m = await readManifest(dir);
    m.files[0]!.path = p;
    await resign(dir, m);
    const e = await refused(dir);
    expect(e.code).toBe('path-escape');
    expect(e.message).toMatch(re);
  });

  it('path traversal in a golden input path, validly signed: path-escape', async () => {
    const dir = await copyBundle();
    const m = await readManifest(dir);
    m.golden[0]!.input.path = '../../../etc/hostname';
    await resign(dir, m);
    const e = await refused(dir);
    expect(e.code).toBe('path-escape');
    expect(e.message).toMatch(/\/golden\/0\/input: path '\.\.\/\.\.\/\.\.\/etc\/hostname' contains '\.\.'/);
  });

  it('a missing model file', async () => {
    const dir = await copyBundle();
    await unlink(path.join(dir, 'model.onnx'));
    const e = await refused(dir);
    expect(e.code).toBe('missing-file');
    expect(e.message).toMatch(/file 'model\.onnx' is missing from the bundle/);
  });

  it('a missing golden input', async () => {
    const dir = await copyBundle();
    const m = await readManifest(dir);
    await unlink(path.join(dir, m.golden[0]!.input.path));
    const e = await refused(dir);
    expect(e.code).toBe('missing-file');
    expect(e.message).toContain(`file '${m.golden[0]!.input.path}' is missing from the bundle`);
  });

  it('a manifest failing the schema, validly signed: every problem named', async () => {
    const dir = await copyBundle();
    const m = (await readManifest(dir)) as unknown as Record<string, unknown>;
    m.version = 'one';
    delete m.labels;
    await resign(dir, m);
    const e = await refused(dir);
    expect(e.code).toBe('invalid-manifest');
    expect(e.problems.length).toBeGreaterThanOrEqual(2);
    expect(e.message).toMatch(/\/version: must match pattern/);
    expect(e.message).toMatch(/must have property 'labels'/);
  });

  it('golden mismatch: a golden reference output altered in a validly signed manifest', async () => {
    const dir = await copyBundle();
    const m = await readManifest(dir);
    // fp32 only: an int8 file is held to the same logits within its own, wider goldenTolerance
    m.files = m.files.filter((f) => !(f.format === 'onnx' && f.precision === 'int8'));
    m.golden[1]!.logits[0] = (m.golden[1]!.logits[0] as number) + 0.5;
    await resign(dir, m);
    const e = await refused(dir);
    expect(e.code).toBe('golden-mismatch');
    expect(e.message).toContain(`golden '${m.golden[1]!.name}': max abs diff 0.500 > tolerance 0.00100`);
    expect(e.problems).toHaveLength(1);
  });

  it('golden mismatch: model weights swapped for different ones, re-hashed and re-signed (only the golden run can tell)', async () => {
    const dir = await copyBundle();
    await perturbWeights(dir);
    // the bundle itself is consistent: signature, schema and hashes pass
    await expect(loadBundle(dir)).resolves.toBeDefined();
    const e = await refused(dir);
    expect(e.code).toBe('golden-mismatch');
    expect(e.message).toMatch(/computes wrong outputs on its golden inputs: golden '[^']+': max abs diff \S+ > tolerance/);
  });
});

describe('signature primitives', () => {
  it('signs the exact bytes; verify accepts them and refuses any other bytes', async () => {
    const pair = generateSigningKeyPair();
    const dir = await copyBundle();
    const sig = await signBundle(dir, pair.privatePem);
    expect(sig.keyId).toBe(pair.keyId);
    expect(JSON.parse(await readFile(path.join(dir, 'manifest.sig'), 'utf8'))).toEqual({ alg: 'ed25519', keyId: pair.keyId, sig: sig.sig });
    const bytes = await readFile(path.join(dir, 'manifest.json'));
    const policy = { trustedKeys: [parsePublicKey(pair.publicPem, 'k.pub')], allowUnsigned: false };
    expect(verifyManifestSignature(bytes, JSON.stringify(sig), policy)).toEqual({ signed: true, keyId: pair.keyId, keySource: 'k.pub' });
    const changed = Buffer.from(bytes);
    changed[10] = (changed[10] as number) ^ 1;
    expect(() => verifyManifestSignature(changed, JSON.stringify(sig), policy)).toThrow(/does not match manifest\.json/);
    // loadBundle's manifestChecks hook runs it before the manifest is parsed
    await expect(loadBundle(dir, { manifestChecks: [signatureCheck(policy)] })).resolves.toBeDefined();
  });

  it('a private key or a non-Ed25519 key in the trust list is refused', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'keys-'));
    temps.push(root);
    const { generateKeyPairSync } = await import('node:crypto');
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' });
    await writeFile(path.join(root, 'ec.pub.pem'), ec);
    await expect(loadTrustedKeys([DEV_PRIVATE])).rejects.toThrow(/is a PRIVATE key; trust the public key/);
    await expect(loadTrustedKeys([path.join(root, 'ec.pub.pem')])).rejects.toThrow(/is a ec key; bundles are signed with Ed25519/);
    await expect(loadTrustedKeys([path.join(root, 'missing.pem')])).rejects.toThrow(/missing\.pem: cannot read \(ENOENT\)/);
  });
});
