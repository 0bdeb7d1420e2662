/**
 * `edge-agent model inspect|verify|sign|pack|unpack` and `keygen`, run as a user runs them (the compiled
 * CLI; `npm test` builds first), on real copies of the shipped bundle tampered one way each.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cp, mkdtemp, readFile, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'dist', 'agent', 'cli.js');
const SHIPPED = path.join(ROOT, 'models', 'orientation-qa');
const DEV_PRIVATE = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pem');
const DEV_PUBLIC = path.join(ROOT, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(...args: string[]): Run {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: ROOT, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const temps: string[] = [];
afterEach(async () => {
  await Promise.all(temps.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function tmp(): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), 'model-cli-'));
  temps.push(d);
  return d;
}

async function copyBundle(): Promise<string> {
  const dir = path.join(await tmp(), 'orientation-qa');
  await cp(SHIPPED, dir, { recursive: true });
  return dir;
}

type M = Record<string, unknown> & { files: { path: string; sha256: string }[]; golden: { name: string; logits: number[] }[]; labels: string[] };

async function manifest(dir: string): Promise<M> {
  return JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as M;
}

async function writeSigned(dir: string, m: unknown): Promise<void> {
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
  const r = cli('model', 'sign', dir, '--key', DEV_PRIVATE, '--force');
  expect(r.status, r.stderr).toBe(0);
}

describe('edge-agent model verify', () => {
  it('passes on the shipped bundle: signature, files, golden outputs', () => {
    const r = cli('model', 'verify', SHIPPED);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/ok {3}signature: key [0-9a-f]{16} \(.*DEVELOPMENT-ONLY-signing-key\.pub\.pem\)/);
    // Every model file the bundle carries is golden-checked in its own runtime.
    for (const file of ['model.onnx', 'model_int8.onnx', 'tfjs/model.json', 'tflite/model_fp32.tflite', 'tflite/model_int8.tflite']) {
      expect(r.stdout).toMatch(new RegExp(`ok {3}golden ${file.replace(/\./g, '\\.')} '[^']+': max abs diff`));
    }
    expect(r.stdout).toMatch(/verified: OK\n$/);
  });

  const tamperings: [string, (dir: string) => Promise<void>, RegExp][] = [
    [
      'a tampered model file',
      async (dir) => {
        const f = path.join(dir, 'model.onnx');
        const b = await readFile(f);
        b[200] = (b[200] as number) ^ 0x55;
        await writeFile(f, b);
      },
      /files: hash-mismatch: \/files\/0: 'model\.onnx' sha256 [0-9a-f]{64} does not match the manifest/,
    ],
    [
      'a tampered manifest',
      async (dir) => {
        const m = await manifest(dir);
        m.labels.reverse();
        await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
      },
      /signature: bad-signature: manifest\.sig does not match manifest\.json/,
    ],
    [
      'a wrong key',
      async (dir) => {
        const keys = await tmp();
        expect(cli('keygen', '--out', path.join(keys, 'other')).status).toBe(0);
        expect(cli('model', 'sign', dir, '--key', path.join(keys, 'other.pem')).status).toBe(0);
      },
      /signature: untrusted-key: manifest\.sig is signed by key [0-9a-f]{16}, which is not trusted/,
    ],
    ['an unsigned bundle', (dir) => unlink(path.join(dir, 'manifest.sig')), /signature: unsigned: bundle is unsigned: no manifest\.sig/],
    [
      'path traversal in files[]',
      async (dir) => {
        const m = await manifest(dir);
        m.files[0]!.path = '../../model.onnx';
        await writeSigned(dir, m);
      },
      /files: path-escape: \/files\/0: path '\.\.\/\.\.\/model\.onnx' contains '\.\.' and could escape the bundle/,
    ],
    ['a missing file', (dir) => unlink(path.join(dir, 'model.onnx')), /files: missing-file: \/files\/0: file 'model\.onnx' is missing from the bundle/],
    [
      'a schema error',
      async (dir) => {
        const m = await manifest(dir);
        m.output = { name: 'logits', activation: 'relu' };
        await writeSigned(dir, m);
      },
      /schema: invalid-manifest: \/output\/activation: must be equal to one of the allowed values \(softmax, sigmoid, none\)/,
    ],
    [
      'a golden mismatch (reference output altered, re-signed)',
      async (dir) => {
        const m = await manifest(dir);
        m.golden[0]!.logits[2] = -(m.golden[0]!.logits[2] as number) - 1;
        await writeSigned(dir, m);
      },
      /golden: golden-mismatch: \S+ \((onnx|tfjs|tflite)\/(fp32|int8)\): golden '[^']+': max abs diff \S+ > tolerance/,
    ],
    [
      'a golden mismatch (different weights, re-hashed, re-signed)',
      async (dir) => {
        // every ONNX file (fp32 and int8): verify checks the one the agent would serve
        const m = await manifest(dir);
        for (const entry of m.files.filter((e) => e.path.endsWith('.onnx'))) {
          const f = path.join(dir, entry.path);
          const b = await readFile(f);
          const mid = Math.floor(b.length / 2);
          b.fill(0x3f, mid, mid + 65536);
          await writeFile(f, b);
          entry.sha256 = createHash('sha256').update(b).digest('hex');
        }
        await writeSigned(dir, m);
      },
      /golden: golden-mismatch: \S+ \((onnx|tfjs|tflite)\/(fp32|int8)\): golden '[^']+': max abs diff \S+ > tolerance/,
    ],
  ];

  it.each(tamperings)('fails on %s, exit 1, naming the problem', async (_what, tamper, re) => {
    const dir = await copyBundle();
    await tamper(dir);
    const r = cli('model', 'verify', dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(re);
    expect(r.stdout).toMatch(/REJECTED: \d+ problem\(s\)\n$/);
  });

  it('lists every problem at once (tampered manifest AND a missing golden file)', async () => {
    const dir = await copyBundle();
    const m = (await manifest(dir)) as M & { golden: { input: { path: string } }[] };
    await unlink(path.join(dir, m.golden[0]!.input.path));
    await writeFile(path.join(dir, 'manifest.json'), JSON.stringify({ ...m, version: '9.9.9' }, null, 2));
    const r = cli('model', 'verify', dir, '--json');
    expect(r.status).toBe(1);
    const report = JSON.parse(r.stdout) as { ok: boolean; problems: { check: string; code: string }[] };
    expect(report.ok).toBe(false);
    expect(report.problems.map((p) => `${p.check}:${p.code}`)).toEqual(['signature:bad-signature', 'golden:missing-file']);
  });

  it('trusts the keys given with --key (and only those)', async () => {
    const keys = await tmp();
    const gen = cli('keygen', '--out', path.join(keys, 'prod'));
    expect(gen.status).toBe(0);
    const keyId = /key id ([0-9a-f]{16})/.exec(gen.stdout)![1]!;
    expect((await stat(path.join(keys, 'prod.pem'))).mode & 0o777).toBe(0o600);
    const dir = await copyBundle();
    const s = cli('model', 'sign', dir, '--key', path.join(keys, 'prod.pem'));
    expect(s.stdout).toContain(`with key ${keyId}`);
    expect(cli('model', 'verify', dir, '--key', path.join(keys, 'prod.pub.pem')).status).toBe(0);
    const r = cli('model', 'verify', dir, '--key', DEV_PUBLIC);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`signed by key ${keyId}, which is not trusted`);
    // keygen never overwrites a key
    const again = cli('keygen', '--out', path.join(keys, 'prod'));
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/refusing to overwrite .*prod\.pem/);
  });

  it('sign refuses a bundle whose files do not match its manifest', async () => {
    const dir = await copyBundle();
    await writeFile(path.join(dir, 'model.onnx'), 'not a model');
    const r = cli('model', 'sign', dir, '--key', DEV_PRIVATE);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/refusing to sign .*'model\.onnx' is 11 bytes, manifest says \d+/);
  });
});

describe('edge-agent model inspect', () => {
  it('summarises the bundle, and --json gives the manifest and the signing key id', async () => {
    const m = await manifest(SHIPPED);
    const r = cli('model', 'inspect', SHIPPED);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^orientation-qa ${String(m.version).replace(/\./g, '\\.')} `));
    expect(r.stdout).toContain('labels:     rot0, rot90, rot180, rot270');
    expect(r.stdout).toMatch(/signature: {2}key [0-9a-f]{16}/);
    const j = JSON.parse(cli('model', 'inspect', SHIPPED, '--json').stdout) as { manifest: M; signature: { present: boolean; keyId: string }; schemaErrors: string[] };
    expect(j.manifest).toEqual(m);
    expect(j.signature.present).toBe(true);
    expect(j.schemaErrors).toEqual([]);
  });
});

/** Minimal ustar header for hand-made (malicious) archives. */
function tarHeader(name: string, size: number, type: string, linkname = ''): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(size.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write('        ', 148);
  h.write(type, 156);
  h.write(linkname, 157, 100);
  h.write('ustar\0', 257);
  h.write('00', 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return h;
}

function tarOf(entries: { name: string; data?: Buffer; type?: string; link?: string; claim?: number }[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0);
    parts.push(tarHeader(e.name, e.claim ?? data.length, e.type ?? '0', e.link));
    parts.push(data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

describe('edge-agent model pack / unpack', () => {
  it('round trip: pack, plain tar can list it, unpack, the copy verifies and is byte-identical', async () => {
    const work = await tmp();
    const tarFile = path.join(work, 'oq.tar');
    const p = cli('model', 'pack', SHIPPED, '-o', tarFile);
    expect(p.status, p.stderr).toBe(0);
    const listed = spawnSync('tar', ['-tf', tarFile], { encoding: 'utf8' });
    expect(listed.status).toBe(0);
    expect(listed.stdout.split('\n')).toEqual(expect.arrayContaining(['manifest.json', 'manifest.sig', 'model.onnx', 'golden/']));
    const out = path.join(work, 'unpacked');
    const u = cli('model', 'unpack', tarFile, out);
    expect(u.status, u.stderr).toBe(0);
    for (const f of ['manifest.json', 'manifest.sig', 'model.onnx']) {
      expect((await readFile(path.join(out, f))).equals(await readFile(path.join(SHIPPED, f)))).toBe(true);
    }
    expect((await readdir(path.join(out, 'golden'))).sort()).toEqual((await readdir(path.join(SHIPPED, 'golden'))).sort());
    expect(cli('model', 'verify', out).status).toBe(0);
    // packing is deterministic
    const again = path.join(work, 'again.tar');
    cli('model', 'pack', out, '-o', again);
    expect((await readFile(again)).equals(await readFile(tarFile))).toBe(true);
  });

  const manifestEntry = { name: 'manifest.json', data: Buffer.from('{}') };
  const malicious: [string, Buffer, RegExp, string[]?][] = [
    ['a ../ traversal', tarOf([manifestEntry, { name: '../escaped.txt', data: Buffer.from('x') }]), /member '\.\.\/escaped\.txt' contains '\.\.' \(path traversal\)/, ['escaped.txt']],
    ['a nested traversal', tarOf([manifestEntry, { name: 'golden/../../escaped.txt', data: Buffer.from('x') }]), /contains '\.\.' \(path traversal\)/, ['escaped.txt']],
    ['an absolute path', tarOf([manifestEntry, { name: '/tmp/edge-agent-abs-escape.txt', data: Buffer.from('x') }]), /has an absolute path/],
    ['a symlink', tarOf([manifestEntry, { name: 'model.onnx', type: '2', link: '/etc/passwd' }]), /member 'model\.onnx' is a symbolic link; links are refused/],
    ['a hard link', tarOf([manifestEntry, { name: 'model.onnx', type: '1', link: '/etc/passwd' }]), /member 'model\.onnx' is a hard link; links are refused/],
    ['a size field past the end of the archive', tarOf([manifestEntry, { name: 'model.onnx', claim: 0o7777777777, data: Buffer.from('x') }]), /claims \d+ bytes but the archive ends first/],
  ];

  it.each(malicious)('refuses %s and writes nothing', async (_what, bytes, re, outside = []) => {
    const work = await tmp();
    const tarFile = path.join(work, 'bad.tar');
    await writeFile(tarFile, bytes);
    const dest = path.join(work, 'sub', 'dest');
    const r = cli('model', 'unpack', tarFile, dest);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(re);
    expect(existsSync(dest)).toBe(false);
    expect(await readdir(path.join(work, 'sub')).catch(() => [])).toEqual([]);
    for (const f of outside) {
      expect(existsSync(path.join(work, f))).toBe(false);
      expect(existsSync(path.join(work, 'sub', f))).toBe(false);
    }
    expect(existsSync('/tmp/edge-agent-abs-escape.txt')).toBe(false);
  });

  it('refuses an archive whose content exceeds the size cap (size bomb)', async () => {
    const work = await tmp();
    const tarFile = path.join(work, 'big.tar');
    await writeFile(tarFile, tarOf([manifestEntry, { name: 'model.onnx', data: Buffer.alloc(300_000) }, { name: 'more.bin', data: Buffer.alloc(300_000) }]));
    const r = cli('model', 'unpack', tarFile, path.join(work, 'dest'), '--max-bytes', '500000');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/archive content exceeds the 500000-byte limit \(at member 'more\.bin'\)/);
    expect(existsSync(path.join(work, 'dest'))).toBe(false);
  });

  it('refuses to unpack over a non-empty directory', async () => {
    const work = await tmp();
    const tarFile = path.join(work, 'oq.tar');
    expect(cli('model', 'pack', SHIPPED, '-o', tarFile).status).toBe(0);
    await writeFile(path.join(work, 'keep.txt'), 'mine');
    const r = cli('model', 'unpack', tarFile, work);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/is not empty; unpack into a new directory/);
    expect(await readFile(path.join(work, 'keep.txt'), 'utf8')).toBe('mine');
  });
});

describe('edge-agent infer with a bad bundle', () => {
  it('refuses to load it and says why (exit 1)', async () => {
    const dir = await copyBundle();
    await unlink(path.join(dir, 'manifest.sig'));
    const cfg = path.join(await tmp(), 'c.yaml');
    await writeFile(cfg, `model:\n  bundle: ${dir}\n  trustedKeys: [${DEV_PUBLIC}]\n`);
    const r = cli('infer', '--config', cfg, path.join(ROOT, 'tests/fixtures/dicom/pydicom_CT_small.dcm'));
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/cannot load model .*bundle is unsigned: no manifest\.sig/);
  });
});
