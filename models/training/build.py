"""One command that reproduces models/orientation-qa/ from scratch:
    nice /usr/bin/python3 models/training/build.py
= data.py (gather + split real images) -> train.py (seeded) -> evaluate.py (held-out test + ood reports) -> export.py
-> to_tfjs.py -> sign_dev.mjs (DEVELOPMENT-ONLY key; see models/keys/README.md).
Same seed and same data give the same weights on the same machine (CPU torch is deterministic here).
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = os.environ.get('SIZE', '128')
STEPS = os.environ.get('STEPS', '1500')
FOLD = os.environ.setdefault('FOLD', 'B')
SEED = os.environ.get('SEED', '7')
VERSION = os.environ.get('VERSION', '1.1.0')
PY = sys.executable


def run(*args: str) -> None:
    print('+', ' '.join(args), flush=True)
    subprocess.run([PY, *args], cwd=HERE, check=True)


run('data.py')
run('train.py', '--size', SIZE, '--steps', STEPS, '--seed', SEED)
CKPT = os.path.join(HERE, '.cache', f'model_{SIZE}.pt')
for split in ('test', 'ood'):  # held-out report (+ JSON for the model card), shipped 4-view model and plain CNN
    run('evaluate.py', '--ckpt', CKPT, '--split', split, '--json', os.path.join(HERE, '.cache', f'eval_{split}.json'))
    run('evaluate.py', '--ckpt', CKPT, '--split', split, '--plain',
        '--json', os.path.join(HERE, '.cache', f'eval_{split}_plain.json'))
run('export.py', '--ckpt', os.path.join(HERE, '.cache', f'model_{SIZE}.pt'), '--version', VERSION)
run('to_tfjs.py')  # TF.js copy of model.onnx in the bundle (export.py lists the ONNX file only)
print('+ node sign_dev.mjs', flush=True)
subprocess.run(['node', 'sign_dev.mjs'], cwd=HERE, check=True)
