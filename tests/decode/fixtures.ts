/** Shared fixture paths for the decode tests. */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const DICOM_DIR = join(here, '../fixtures/dicom');
export const IMAGE_DIR = join(here, '../fixtures/images');

export function dicomPath(name: string): string {
  return join(DICOM_DIR, name);
}

export function imagePath(name: string): string {
  return join(IMAGE_DIR, name);
}

export function readDicom(name: string): Uint8Array {
  const b = readFileSync(dicomPath(name));
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}
