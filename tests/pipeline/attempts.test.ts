/**
 * ingest.maxAttempts and agent deaths: a job whose earlier try did not finish runs alone, and a death
 * counts against a file only when it ran alone. The journal states below are what kill -9 leaves (a job
 * row with its attempts counted and no outcome); they are written into a real SQLite store because the
 * kill itself cannot be placed at an exact moment (tests/chaos/kill9.test.ts does it at random, for real).
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import type { ImageFrame } from '../../src/decode/types.js';
import { shippedPath } from '../../src/config/load.js';
import { BundleClassifier, type Classifier, type ClassifyOutput } from '../../src/pipeline/classifier.js';
import { hashFile } from '../../src/pipeline/pipeline.js';
import { StateStore } from '../../src/store/index.js';
import { testPipeline } from './helpers.js';

const cleanup: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
});

/** The real shipped model, recording when each call ran and on which image (by width). */
class Recording implements Classifier {
  readonly calls: { width: number; start: number; end: number }[] = [];
  constructor(private readonly inner: BundleClassifier) {}
  get info() {
    return this.inner.info;
  }
  get labels() {
    return this.inner.labels;
  }
  get attempts() {
    return this.inner.attempts;
  }
  async classify(frames: ImageFrame[]): Promise<ClassifyOutput> {
    const start = performance.now();
    const out = await this.inner.classify(frames);
    this.calls.push({ width: frames[0]!.width, start, end: performance.now() });
    return out;
  }
  dispose(): Promise<void> {
    return this.inner.dispose();
  }
}

async function png(file: string, width: number, seed: number): Promise<void> {
  const px = Buffer.alloc(width * 96);
  for (let i = 0; i < px.length; i++) px[i] = (i * (seed + 5) + seed * 31) % 256;
  await sharp(px, { raw: { width, height: 96, channels: 1 } }).png().toFile(file);
}

describe('attempts: an agent death counts against a file only when the file ran alone', () => {
  it('a suspect runs alone; three deaths beside other jobs cost it nothing; three deaths alone quarantine it', async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'attempts-'));
    const inbox = path.join(root, 'inbox');
    mkdirSync(inbox);
    const inner = await BundleClassifier.load(shippedPath('models', 'orientation-qa'), {
      runtime: 'onnx',
      precision: 'fp32',
      providers: ['cpu'],
      intraOpThreads: 1,
      interOpThreads: 1,
      graphOptimization: 'all',
      warmupRuns: 1,
      trustedKeys: [shippedPath('models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem')],
      allowUnsigned: false,
    });
    const classifier = new Recording(inner);
    cleanup.push(() => classifier.dispose());
    const store = StateStore.open(path.join(root, 'state'));
    cleanup.push(() => store.close());

    // Six fresh captures (64 px wide), a suspect interrupted 3 times while others ran (80 px), and a
    // file the agent died on 3 times while it ran alone (96 px): the journal as kill -9 left it.
    const files: { name: string; width: number }[] = [
      ...['a', 'b', 'c', 'd', 'e', 'f'].map((n) => ({ name: `${n}.png`, width: 64 })),
      { name: 'suspect.png', width: 80 },
      { name: 'killer.png', width: 96 },
    ];
    const hashes = new Map<string, string>();
    for (const [i, f] of files.entries()) {
      const p = path.join(inbox, f.name);
      await png(p, f.width, i);
      const hash = await hashFile(p);
      hashes.set(f.name, hash);
      store.journal.accept({ hash, name: f.name, path: p, size: statSync(p).size });
    }
    const setAttempts = store.db.prepare('UPDATE jobs SET attempts = ?, solo_attempts = ? WHERE hash = ?');
    setAttempts.run(3, 0, hashes.get('suspect.png'));
    setAttempts.run(4, 3, hashes.get('killer.png'));

    const failures: string[] = [];
    const pipeline = testPipeline(root, inbox, store, classifier, failures);
    cleanup.push(() => pipeline.stop());
    await pipeline.recover();
    await pipeline.idle();

    // The suspect was classified (its three deaths happened beside other jobs) and ran with nothing beside it.
    const suspect = store.journal.get(hashes.get('suspect.png')!)!;
    expect(suspect.state).toBe('inferred'); // result committed to the outbox (no broker here to acknowledge it)
    expect(suspect.results).toBe(1);
    expect(suspect.soloAttempts).toBe(1);
    const alone = classifier.calls.find((c) => c.width === 80)!;
    expect(alone).toBeDefined();
    const overlapping = classifier.calls.filter((c) => c !== alone && c.start < alone.end && c.end > alone.start);
    expect(overlapping).toEqual([]);
    // Every fresh capture was classified too.
    const fresh = classifier.calls.filter((c) => c.width === 64);
    expect(fresh).toHaveLength(6);

    // The file the agent died on three times while it ran alone is quarantined, with the reason.
    const killer = store.journal.get(hashes.get('killer.png')!)!;
    expect(killer.state).toBe('failed');
    expect(killer.errorCode).toBe('too-many-attempts');
    expect(killer.error).toMatch(/interrupted 4 times, 3 of them while it ran alone/);
    expect(failures).toEqual(['too-many-attempts']);
    expect(classifier.calls.some((c) => c.width === 96)).toBe(false);
    await pipeline.stop();
    // The quarantined file is kept with its sidecar.
    expect(existsSync(path.join(root, 'quarantine', 'killer.png'))).toBe(true);
    expect(readdirSync(path.join(root, 'quarantine'))).toContain('killer.png.json');
  });
});
