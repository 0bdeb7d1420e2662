/** The fuzzer's per-case RNG: case i of run seed S is always the same file (replayable by index). */
import { rng } from '../lib/common.js';

export function caseRng(runSeed: number, i: number): () => number {
  return rng((Math.imul(runSeed >>> 0, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0);
}
