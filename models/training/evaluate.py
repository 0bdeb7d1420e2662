"""Accuracy on the held-out split, per source and per modality, with the confusion matrix.

Every held-out slice is tested in all four rotations, preprocessed exactly as the agent does
(prep.preprocess; no augmentation).

Usage: /usr/bin/python3 models/training/evaluate.py [--ckpt .cache/model_128.pt] [--split test]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import CACHE, LABELS, OrientationNet, RotationEquivariant, eval_tensors, load_split  # noqa: E402


def load_model(ckpt_path: str):
    ck = torch.load(ckpt_path, map_location='cpu')
    model = OrientationNet(ck['size'])
    model.load_state_dict(ck['state_dict'])
    model.eval()
    return model, ck


@torch.no_grad()
def evaluate(model, size: int, split: str = 'test') -> dict:
    items, frames = load_split(split)
    x, y = eval_tensors(frames, size)
    pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()
    y = y.numpy()
    conf = np.zeros((4, 4), dtype=int)
    for t, p in zip(y, pred):
        conf[t, p] += 1
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        for key in (f"modality:{it['modality']}", f"source:{it['source']}", f"volume:{it['volume']}",
                    f"plane:{it['modality']}-{it['plane']}"):
            groups.setdefault(key, []).extend(range(4 * i, 4 * i + 4))
    per = {k: {'n': len(v), 'accuracy': float((pred[v] == y[v]).mean())} for k, v in sorted(groups.items())}
    return {'split': split, 'slices': len(items), 'cases': int(len(y)),
            'accuracy': float((pred == y).mean()), 'groups': per,
            'confusion': {'labels': LABELS, 'rows_true_cols_pred': conf.tolist()}}


def print_report(r: dict) -> None:
    print(f"{r['split']}: {r['slices']} slices x 4 rotations = {r['cases']} cases, accuracy {r['accuracy']:.4f}")
    for k, v in r['groups'].items():
        print(f"  {k:40s} n={v['n']:4d}  acc={v['accuracy']:.4f}")
    print('confusion (rows true, cols predicted):', ' '.join(f'{l:>7s}' for l in LABELS))
    for l, row in zip(LABELS, r['confusion']['rows_true_cols_pred']):
        print(f'  {l:>7s}', ' '.join(f'{v:7d}' for v in row))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--ckpt', default=os.path.join(CACHE, 'model_128.pt'))
    ap.add_argument('--split', default='test')
    ap.add_argument('--json', default=None, help='also write the report as JSON here')
    ap.add_argument('--plain', action='store_true', help='the bare CNN instead of the shipped rotation-equivariant wrapper')
    args = ap.parse_args()
    model, ck = load_model(args.ckpt)
    if not args.plain:
        model = RotationEquivariant(model, ck['size']).eval()
    r = evaluate(model, ck['size'], args.split)
    print_report(r)
    if args.json:
        import json
        with open(args.json, 'w') as f:
            json.dump(r, f, indent=1)


if __name__ == '__main__':
    main()
