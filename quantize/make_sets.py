"""Calibration and evaluation image folders for edge-quantize, from the training data cache.

models/training/data.py gathers real CT/MR slices from installed Debian/npm packages into
models/training/.cache (upright, decoded to [0,1] like src/decode). This writes them back out as real
image files (16-bit greyscale PNG, lossless for the [0,1] frames to 1/65535) so edge-quantize decodes and
pre-processes them with the agent's own src/ code:

  <out>/calibration/<source>/<volume>-<n>.png   N slices of the TRAIN split (seeded, spread over sources)
  <out>/eval/<source>/<volume>-<n>.png          every slice of the held-out TEST split, upright: use
                                                `--eval-layout rotate` (labels by construction,
                                                numpy.rot90(img, k) = rot{90k}), as evaluate.py does

Calibration never sees a test-split volume (the split is by volume/patient). The folders stay under
.cache (gitignored): some sources (InVesalius GPL, ami.js) are for local use only.

Usage: /usr/bin/python3 quantize/make_sets.py [--out models/training/.cache/quantize] [--calibration 256]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, 'models', 'training', '.cache')


def write_png(path: str, frame: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    v = np.clip(np.rint(frame.astype(np.float64) * 65535), 0, 65535).astype(np.uint16)
    Image.fromarray(v, mode='I;16').save(path, optimize=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(CACHE, 'quantize'))
    ap.add_argument('--calibration', type=int, default=256, help='calibration slices (train split)')
    ap.add_argument('--seed', type=int, default=5)
    args = ap.parse_args()
    index = json.load(open(os.path.join(CACHE, 'index.json')))['items']
    for sub in ('calibration', 'eval'):
        shutil.rmtree(os.path.join(args.out, sub), ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    train = [it for it in index if it['split'] == 'train']
    # spread over sources: round-robin over sources, random order inside each
    by_source: dict[str, list[dict]] = {}
    for it in train:
        by_source.setdefault(it['source'], []).append(it)
    for v in by_source.values():
        rng.shuffle(v)
    picked: list[dict] = []
    while len(picked) < min(args.calibration, len(train)):
        for src in sorted(by_source):
            if by_source[src] and len(picked) < args.calibration:
                picked.append(by_source[src].pop())
    counts: dict[str, int] = {}
    for sub, items in (('calibration', picked), ('eval', [it for it in index if it['split'] == 'test'])):
        for it in items:
            frame = np.load(os.path.join(CACHE, 'slices', it['file']))
            name = f"{it['volume']}-{it['file'].removesuffix('.npy')}.png".replace('/', '_')
            write_png(os.path.join(args.out, sub, it['source'], name), frame)
            counts[sub] = counts.get(sub, 0) + 1
    print(f"make_sets: {counts.get('calibration', 0)} calibration (train split), {counts.get('eval', 0)} eval (test split, upright) -> {args.out}")


if __name__ == '__main__':
    main()
