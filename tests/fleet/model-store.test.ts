/**
 * The installed-model store on a real filesystem with real signed bundle archives: verified installs
 * only, an atomic active pointer that survives a reopen, pruning that spares the active and previous
 * versions, and recovery from the leftovers of a crash.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelStore, ModelStoreError } from '../../src/fleet/model-store.js';
import { writeFileAtomic } from '../../src/store/atomic-file.js';
import { loadBundle, BundleError } from '../../src/models/bundle.js';
import { loadTrustedKeys, signatureCheck } from '../../src/models/signature.js';
import { DEV_PUBLIC, makeVersion, packTar, type PackedBundle } from './helpers.js';

let dir: string;
const tars: Record<string, PackedBundle> = {};
let badSig: PackedBundle;

const verify = async (d: string): Promise<void> => {
  const trustedKeys = await loadTrustedKeys([DEV_PUBLIC]);
  await loadBundle(d, { manifestChecks: [signatureCheck({ trustedKeys, allowUnsigned: false })] });
};

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'store-'));
  for (const v of ['2.0.0', '2.1.0', '2.2.0', '2.3.0', '2.4.0']) {
    tars[v] = await packTar(await makeVersion(path.join(dir, `src-${v}`), v), path.join(dir, `${v}.tar`));
  }
  badSig = await packTar(await makeVersion(path.join(dir, 'src-bad'), '9.0.0', { sign: false }), path.join(dir, 'bad.tar'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const ref = (version: string) => ({ id: 'orientation-qa', version });

async function freshStore(keep = 3): Promise<ModelStore> {
  return new ModelStore(await mkdtemp(path.join(dir, 'models-')), { keep }).open();
}

describe('model store', () => {
  it('installs a verified bundle under <id>/<version>, and the active pointer survives a reopen', async () => {
    const store = await freshStore();
    const m = await store.install(tars['2.0.0']!.file, ref('2.0.0'), verify, tars['2.0.0']!.sha256);
    expect(m.dir).toBe(path.join(store.root, 'orientation-qa', '2.0.0'));
    await expect(verify(m.dir)).resolves.toBeUndefined();
    expect(store.active).toBeNull();
    await store.setActive(ref('2.0.0'));
    await store.install(tars['2.1.0']!.file, ref('2.1.0'), verify);
    await store.setActive(ref('2.1.0'));
    const again = await new ModelStore(store.root, { keep: 3 }).open();
    expect(again.active).toEqual(ref('2.1.0'));
    expect(again.previous).toEqual(ref('2.0.0'));
    expect(again.list().map((x) => [x.version, x.active, x.previous])).toEqual([
      ['2.0.0', false, true],
      ['2.1.0', true, false],
    ]);
    expect(again.list()[0]!.sha256).toBe(tars['2.0.0']!.sha256);
    const index = JSON.parse(await readFile(path.join(store.root, 'index.json'), 'utf8')) as { active: unknown };
    expect(index.active).toEqual(ref('2.1.0'));
  });

  it('refuses a bundle with a bad signature, or one that is not the version asked for; nothing is left installed', async () => {
    const store = await freshStore();
    const err = await store.install(badSig.file, ref('9.0.0'), verify).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BundleError);
    expect((err as BundleError).code).toBe('bad-signature');
    const mismatch = await store.install(tars['2.0.0']!.file, ref('2.9.9'), verify).catch((e: unknown) => e);
    expect(mismatch).toBeInstanceOf(ModelStoreError);
    expect((mismatch as Error).message).toMatch(/archive holds orientation-qa@2\.0\.0, the desired state names orientation-qa@2\.9\.9/);
    expect(store.list()).toEqual([]);
    expect(existsSync(path.join(store.root, 'orientation-qa', '9.0.0'))).toBe(false);
    expect(await readdir(path.join(store.root, '.tmp'))).toEqual([]);
    await expect(store.setActive(ref('9.0.0'))).rejects.toThrow(/not installed/);
  });

  it('a truncated archive is refused without a trace', async () => {
    const store = await freshStore();
    const cut = path.join(dir, 'cut.tar');
    await writeFile(cut, (await readFile(tars['2.0.0']!.file)).subarray(0, 1_500_000));
    await expect(store.install(cut, ref('2.0.0'), verify)).rejects.toThrow(/truncated|ends first/);
    expect(store.list()).toEqual([]);
    expect(existsSync(path.join(store.root, 'orientation-qa', '2.0.0'))).toBe(false);
  });

  it('keeps the last K versions and never deletes the active or the previous one', async () => {
    const store = await freshStore(2);
    for (const v of ['2.0.0', '2.1.0', '2.2.0', '2.3.0']) await store.install(tars[v]!.file, ref(v), verify);
    // active = the oldest, previous = the second oldest: both stay although K = 2
    await store.setActive(ref('2.1.0'));
    await store.setActive(ref('2.0.0'));
    expect(store.previous).toEqual(ref('2.1.0'));
    const removed = await store.prune();
    expect(removed.map((r) => r.version)).toEqual(['2.2.0', '2.3.0']);
    expect(store.list().map((m) => m.version)).toEqual(['2.0.0', '2.1.0']);
    expect(existsSync(path.join(store.root, 'orientation-qa', '2.2.0'))).toBe(false);
    // a new version: the oldest not active/previous goes
    await store.install(tars['2.4.0']!.file, ref('2.4.0'), verify);
    await store.setActive(ref('2.4.0'));
    // 2.4.0 active, 2.0.0 previous (the version it replaced): 2.1.0 goes
    expect((await store.prune()).map((r) => r.version)).toEqual(['2.1.0']);
    expect(store.list().map((m) => m.version).sort()).toEqual(['2.0.0', '2.4.0']);
  });

  it('recovers from a crash: staging leftovers removed, an unindexed whole version adopted, a vanished one forgotten', async () => {
    const store = await freshStore();
    await store.install(tars['2.0.0']!.file, ref('2.0.0'), verify);
    await store.install(tars['2.1.0']!.file, ref('2.1.0'), verify);
    await store.setActive(ref('2.1.0'));
    // crash leftovers: a half-unpacked staging dir; a version renamed into place but not yet indexed
    await mkdir(path.join(store.root, '.tmp', 'orientation-qa-2.2.0-1234-abcd'), { recursive: true });
    await writeFile(path.join(store.root, '.tmp', 'orientation-qa-2.2.0-1234-abcd', 'model.onnx'), 'half');
    const side = await freshStore();
    await side.install(tars['2.2.0']!.file, ref('2.2.0'), verify);
    await rename(path.join(side.root, 'orientation-qa', '2.2.0'), path.join(store.root, 'orientation-qa', '2.2.0'));
    // and the active version's directory vanished (disk trouble, operator)
    await rm(path.join(store.root, 'orientation-qa', '2.1.0'), { recursive: true });
    const again = await new ModelStore(store.root, { keep: 3 }).open();
    expect(await readdir(path.join(store.root, '.tmp'))).toEqual([]);
    expect(again.list().map((m) => m.version)).toEqual(['2.0.0', '2.2.0']);
    expect(again.active).toBeNull();
    expect(again.warnings.join('\n')).toMatch(/active version orientation-qa@2\.1\.0 is missing/);
    await expect(verify(again.dirOf(ref('2.2.0')))).resolves.toBeUndefined();
  });

  it('the pointer file is replaced atomically: a torn temp file never becomes the index', async () => {
    const store = await freshStore();
    await store.install(tars['2.0.0']!.file, ref('2.0.0'), verify);
    await store.setActive(ref('2.0.0'));
    // a crash mid-write leaves only the temp file; the index is the old, whole one
    await writeFile(path.join(store.root, '.index.json.999.dead.tmp'), '{"active": {"id": "orienta');
    const again = await new ModelStore(store.root, { keep: 3 }).open();
    expect(again.active).toEqual(ref('2.0.0'));
    // writeFileAtomic leaves no temp files behind
    const f = path.join(dir, 'atomic.json');
    await writeFileAtomic(f, '{"a":1}');
    await writeFileAtomic(f, '{"a":2}');
    expect(await readFile(f, 'utf8')).toBe('{"a":2}');
    expect((await readdir(dir)).filter((n) => n.startsWith('.atomic.json'))).toEqual([]);
  });

  it('refuses ids and versions that are not one safe path segment', async () => {
    const store = await freshStore();
    expect(() => store.dirOf({ id: '../etc', version: '1.0.0' })).toThrow(ModelStoreError);
    expect(() => store.dirOf({ id: 'orientation-qa', version: '../../x' })).toThrow(/not a valid bundle version/);
  });
});
