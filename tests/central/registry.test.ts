/**
 * The model registry as an operator and an agent use it over HTTP: signed bundles are accepted and
 * listed with the sha256/size agents verify; unsigned, tampered, untrusted or corrupt ones are refused
 * with a clear 4xx; downloads support byte ranges (resume) with the sha256 as ETag; the API needs the token.
 */
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalDiskStorage } from '../../src/central/storage.js';
import { generateSigningKeyPair } from '../../src/models/signature.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { makeBundle, sha256, startTestCentral, tempDir, upload, type MadeBundle, type TestCentral } from './helpers.js';

describe.skipIf(skipWithoutMosquitto)('central model registry', () => {
  let broker: Mosquitto;
  let central: TestCentral;
  let good: MadeBundle;

  beforeAll(async () => {
    broker = await startMosquitto();
    central = await startTestCentral(broker.url);
    good = await makeBundle('1.2.0');
  });
  afterAll(async () => {
    await central?.close();
    await broker?.dispose();
  });

  it('accepts a signed bundle and lists it with the sha256 and size of the uploaded archive', async () => {
    const res = await upload(central, good);
    expect(res.status, await res.clone().text()).toBe(201);
    const rec = (await res.json()) as Record<string, unknown>;
    expect(rec).toMatchObject({ id: 'orientation-qa', version: '1.2.0', sha256: good.sha256, size: good.size });
    const list = (await (await central.api('/api/bundles')).json()) as { bundles: Record<string, unknown>[] };
    expect(list.bundles).toHaveLength(1);
    expect(list.bundles[0]).toMatchObject({ id: 'orientation-qa', version: '1.2.0', sha256: good.sha256, size: good.size });
    expect(list.bundles[0]?.keyId).toMatch(/^[0-9a-f]{16}$/);
    // the same bytes again are fine (idempotent); other bytes under the same version are not
    expect((await upload(central, good)).status).toBe(200);
    const other = await makeBundle('1.2.0', { edit: (_d, m) => (m.description = 'changed') });
    const conflict = await upload(central, other);
    expect(conflict.status).toBe(409);
    expect(((await conflict.json()) as { error: string }).error).toMatch(/already in the registry with different content/);
  });

  it('refuses an unsigned bundle', async () => {
    const b = await makeBundle('2.0.0-unsigned', { key: null });
    const res = await upload(central, b);
    expect(res.status).toBe(403);
    const body = (await res.json()) as { error: string; code: string };
    expect(body.code).toBe('unsigned');
    expect(body.error).toMatch(/unsigned/);
  });

  it('refuses a bundle whose manifest was changed after signing', async () => {
    const b = await makeBundle('2.0.0-tampered', {
      afterSign: (dir) => {
        const p = path.join(dir, 'manifest.json');
        writeFileSync(p, readFileSync(p, 'utf8').replace('"task"', '"description2": "x", "task"'));
      },
    });
    const res = await upload(central, b);
    expect(res.status).toBe(403);
    expect(((await res.json()) as { code: string }).code).toBe('bad-signature');
  });

  it('refuses a bundle signed by a key central does not trust', async () => {
    const kp = generateSigningKeyPair();
    const keyFile = path.join(tempDir(), 'other.pem');
    writeFileSync(keyFile, kp.privatePem);
    const res = await upload(central, await makeBundle('2.0.0-untrusted', { key: keyFile }));
    expect(res.status).toBe(403);
    const body = (await res.json()) as { code: string; error: string };
    expect(body.code).toBe('untrusted-key');
    expect(body.error).toContain(kp.keyId);
  });

  it('refuses a signed bundle whose model file does not match the manifest hash', async () => {
    const b = await makeBundle('2.0.0-corrupt', { afterSign: (dir) => appendFileSync(path.join(dir, 'model.onnx'), Buffer.from([0])) });
    const res = await upload(central, b);
    expect(res.status).toBe(422);
    const body = (await res.json()) as { code: string; error: string };
    expect(body.code).toBe('size-mismatch');
    expect(body.error).toMatch(/model\.onnx/);
  });

  it('refuses something that is not a bundle archive', async () => {
    const res = await central.api('/api/bundles', { method: 'POST', body: Buffer.from('hello, not a tar'), headers: { 'content-type': 'application/x-tar' } });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toMatch(/not a valid bundle archive/);
    const list = (await (await central.api('/api/bundles')).json()) as { bundles: { version: string }[] };
    expect(list.bundles.map((b) => b.version)).toEqual(['1.2.0']);
  });

  it('serves downloads with byte ranges and the sha256 as ETag', async () => {
    const url = `${central.url}/registry/bundles/orientation-qa/1.2.0/bundle.tar`;
    const bytes = readFileSync(good.tar);
    const full = await fetch(url);
    expect(full.status).toBe(200);
    expect(full.headers.get('etag')).toBe(`"${good.sha256}"`);
    expect(full.headers.get('accept-ranges')).toBe('bytes');
    expect(sha256(Buffer.from(await full.arrayBuffer()))).toBe(good.sha256);

    const part = await fetch(url, { headers: { range: 'bytes=100-1123' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 100-1123/${bytes.length}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(100, 1124))).toBe(true);

    // resume from an offset to the end, guarded by If-Range
    const resume = await fetch(url, { headers: { range: `bytes=${bytes.length - 5000}-`, 'if-range': `"${good.sha256}"` } });
    expect(resume.status).toBe(206);
    expect(Buffer.from(await resume.arrayBuffer()).equals(bytes.subarray(bytes.length - 5000))).toBe(true);
    // a stale validator gets the whole (current) file instead of a wrong splice
    const stale = await fetch(url, { headers: { range: 'bytes=0-9', 'if-range': '"0000"' } });
    expect(stale.status).toBe(200);
    expect(Number(stale.headers.get('content-length'))).toBe(bytes.length);
    await stale.arrayBuffer();

    const suffix = await fetch(url, { headers: { range: 'bytes=-16' } });
    expect(suffix.status).toBe(206);
    expect(Buffer.from(await suffix.arrayBuffer()).equals(bytes.subarray(bytes.length - 16))).toBe(true);

    const beyond = await fetch(url, { headers: { range: `bytes=${bytes.length}-` } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${bytes.length}`);

    expect((await fetch(url, { headers: { 'if-none-match': `"${good.sha256}"` } })).status).toBe(304);
    expect((await fetch(`${central.url}/registry/bundles/orientation-qa/9.9.9/bundle.tar`)).status).toBe(404);
  });

  it('deletes a bundle: gone from the listing, the storage and downloads', async () => {
    const b = await makeBundle('0.9.0');
    expect((await upload(central, b)).status).toBe(201);
    const storage = new LocalDiskStorage(path.join(central.dataDir, 'bundles'));
    expect((await storage.list()).map((o) => o.key)).toContain('orientation-qa/0.9.0.tar');
    expect((await storage.stat('orientation-qa/0.9.0.tar'))?.size).toBe(b.size);
    const del = await central.api('/api/bundles/orientation-qa/0.9.0', { method: 'DELETE' });
    expect(del.status).toBe(200);
    expect((await storage.list()).map((o) => o.key)).not.toContain('orientation-qa/0.9.0.tar');
    expect((await fetch(`${central.url}/registry/bundles/orientation-qa/0.9.0/bundle.tar`)).status).toBe(404);
    expect((await central.api('/api/bundles/orientation-qa/0.9.0', { method: 'DELETE' })).status).toBe(404);
    // storage keys are made by the registry, but never leave the storage root
    await expect(storage.get('../central.db')).rejects.toThrow(/invalid storage key/);
  });

  it('requires the token for the API (downloads stay open to agents: bundles are signed)', async () => {
    const none = await fetch(`${central.url}/api/bundles`);
    expect(none.status).toBe(401);
    expect(((await none.json()) as { error: string }).error).toMatch(/Bearer/);
    expect((await fetch(`${central.url}/api/bundles`, { headers: { authorization: 'Bearer wrong-token-wrong-token' } })).status).toBe(401);
    const b = await makeBundle('3.0.0');
    const anon = await fetch(`${central.url}/api/bundles`, { method: 'POST', body: readFileSync(b.tar), headers: { 'content-type': 'application/x-tar' } });
    expect(anon.status).toBe(401);
    const list = (await (await central.api('/api/bundles')).json()) as { bundles: { version: string }[] };
    expect(list.bundles.map((x) => x.version)).not.toContain('3.0.0');
  });
});
