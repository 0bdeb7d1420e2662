/**
 * The fuzzer's seed corpus (tests/fixtures/fuzz-seeds): every seed by file name extension (.dcm DICOM,
 * .png PNG, .jpg/.jpeg JPEG), each routed to its mutator (mutate.ts for DICOM, mutate-image.ts for
 * PNG and JPEG). Case i of run seed S mutates seed i mod N (names sorted), so a case is replayable by
 * index from the harness (parent) and the worker (child) alike.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { loadSeed, mutate } from './mutate.js';
import { imageFormatOf, loadImageSeed, mutateImage } from './mutate-image.js';
import { caseRng } from './rng.js';

export type SeedFormat = 'dicom' | 'png' | 'jpeg';
export const SEED_FORMATS: readonly SeedFormat[] = ['dicom', 'png', 'jpeg'];

export function seedFormatOf(name: string): SeedFormat | undefined {
  if (name.toLowerCase().endsWith('.dcm')) return 'dicom';
  return imageFormatOf(name);
}

/** Seed file names in case order (findings/ and the generator script are not seeds). */
export function seedNames(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile() && seedFormatOf(e.name) !== undefined)
    .map((e) => e.name)
    .sort();
}

export interface CorpusSeed {
  name: string;
  format: SeedFormat;
  mutate(r: () => number): { bytes: Uint8Array; mutations: string[] };
}

export function loadCorpusSeed(dir: string, name: string): CorpusSeed {
  const bytes = new Uint8Array(readFileSync(path.join(dir, name)));
  const format = seedFormatOf(name)!;
  if (format === 'dicom') {
    const seed = loadSeed(name, bytes);
    return { name, format, mutate: (r) => mutate(seed, r) };
  }
  const seed = loadImageSeed(name, bytes);
  return { name, format, mutate: (r) => mutateImage(seed, r) };
}

export function loadCorpus(dir: string): CorpusSeed[] {
  return seedNames(dir).map((n) => loadCorpusSeed(dir, n));
}

/** Case i of a run: which seed, and its mutated bytes. */
export function corpusCase(seeds: readonly CorpusSeed[], runSeed: number, i: number): { seed: CorpusSeed; bytes: Uint8Array; mutations: string[] } {
  const seed = seeds[i % seeds.length]!;
  return { seed, ...seed.mutate(caseRng(runSeed, i)) };
}
