"""Baseline (b) of bench/e2e: what a user would otherwise write, a plain Python loop with Debian's
pydicom + torch (run with /usr/bin/python3) over the same DICOM files as the agent.

Per file: pydicom.dcmread -> pixel_array -> HU (RescaleSlope/Intercept) -> window from the file
(WindowCenter/WindowWidth, clip to [0,1]) -> torch area resize to the model input (512 -> 128 is an
exact 4x4 box average, the same maths as src/preprocess) -> (x - mean) / std from the manifest ->
the network in torch -> softmax -> argmax.

The network: the OrientationNet class of models/training/train.py (the module the shipped model was
trained as), with its weights taken from the ONNX initializers of the shipped model.onnx, so both
runtimes run the very same weights. torch.onnx.export folded each BatchNorm into the preceding
Conv (the ONNX graph has Conv(W, b) + Relu), so the i-th ONNX Conv's W goes into the i-th Conv2d, and
its bias b into the following BatchNorm2d set to the identity plus b (gamma 1, running mean 0, running
var 1 - eps, beta b). The Gemm goes into the final Linear. An unfused graph (explicit
BatchNormalization nodes) is mapped directly. When the manifest names the serving wrapper
RotationEquivariant (train.py: the CNN run on the 4 rotations of the input, log-softmax votes
combined), the loaded CNN is wrapped in that same class. The load is checked on the manifest's golden inputs:
torch logits vs the golden logits written at export (max abs diff reported).

Usage: /usr/bin/python3 bench/e2e/python_loop.py --bundle models/orientation-qa --files LIST.json
       [--threads 0] [--warmup 5] [--max-seconds 30]
LIST.json: a JSON array of file paths. Prints one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
import pydicom
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'models', 'training'))
import train  # noqa: E402
from train import OrientationNet  # noqa: E402


def load_onnx_into_torch(onnx_path: str, size: int) -> tuple[nn.Module, dict]:
    m = onnx.load(onnx_path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    alias = {}
    for n in m.graph.node:
        if n.op_type == 'Identity' and n.input[0] in inits:
            alias[n.output[0]] = n.input[0]

    def get(name: str) -> np.ndarray:
        return inits[alias.get(name, name)]

    convs = [n for n in m.graph.node if n.op_type == 'Conv']
    bns = [n for n in m.graph.node if n.op_type == 'BatchNormalization']
    gemms = [n for n in m.graph.node if n.op_type in ('Gemm', 'MatMul')]
    model = OrientationNet(size)
    t_convs = [mod for mod in model.modules() if isinstance(mod, nn.Conv2d)]
    t_bns = [mod for mod in model.modules() if isinstance(mod, nn.BatchNorm2d)]
    t_lin = [mod for mod in model.modules() if isinstance(mod, nn.Linear)]
    if len(convs) != len(t_convs) or len(gemms) != len(t_lin):
        raise SystemExit(f'ONNX graph has {len(convs)} Conv / {len(gemms)} Gemm; OrientationNet has '
                         f'{len(t_convs)} / {len(t_lin)}: not the same architecture')
    with torch.no_grad():
        for i, (node, conv, bn) in enumerate(zip(convs, t_convs, t_bns)):
            conv.weight.copy_(torch.from_numpy(get(node.input[1]).copy()))
            if bns:  # unfused export: BatchNormalization(x, scale, B, mean, var)
                b = bns[i]
                bn.weight.copy_(torch.from_numpy(get(b.input[1]).copy()))
                bn.bias.copy_(torch.from_numpy(get(b.input[2]).copy()))
                bn.running_mean.copy_(torch.from_numpy(get(b.input[3]).copy()))
                bn.running_var.copy_(torch.from_numpy(get(b.input[4]).copy()))
                for a in b.attribute:
                    if a.name == 'epsilon':
                        bn.eps = a.f
            else:  # BN folded into the conv: identity BN carrying the conv bias
                bias = get(node.input[2]) if len(node.input) > 2 else np.zeros(conv.out_channels, np.float32)
                bn.weight.fill_(1.0)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.bias.copy_(torch.from_numpy(bias.copy()))
        g = gemms[0]
        w = get(g.input[1])
        trans_b = next((a.i for a in g.attribute if a.name == 'transB'), 0) if g.op_type == 'Gemm' else 0
        t_lin[0].weight.copy_(torch.from_numpy((w if trans_b else w.T).copy()))
        t_lin[0].bias.copy_(torch.from_numpy(get(g.input[2]).copy()))
    model.eval()
    return model, {'convs': len(convs), 'bnFolded': not bns}


def check_goldens(model: nn.Module, bundle: str, manifest: dict) -> float | None:
    worst = None
    for g in manifest.get('golden', []) or []:
        inp = g.get('input')
        if not inp:
            continue
        x = np.fromfile(os.path.join(bundle, inp['path']), dtype='<f4').reshape(inp['shape'])
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()[0]
        d = float(np.max(np.abs(logits - np.asarray(g['logits'], np.float32))))
        worst = d if worst is None else max(worst, d)
    return worst


def pct(v: list[float], p: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, max(0, int(np.ceil(p / 100 * len(s))) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--bundle', required=True)
    ap.add_argument('--files', required=True)
    ap.add_argument('--threads', type=int, default=0, help='torch.set_num_threads; 0 keeps torch\'s default')
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--max-seconds', type=float, default=30.0, help='stop the loop early after this long (bounded bench)')
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    manifest = json.load(open(os.path.join(args.bundle, 'manifest.json')))
    spec = manifest['input']
    size = int(spec['shape'][2])
    mean = float(spec['normalisation']['mean'][0])
    std = float(spec['normalisation']['std'][0])
    onnx_file = next(f for f in manifest['files'] if f['format'] == 'onnx')
    model, how = load_onnx_into_torch(os.path.join(args.bundle, onnx_file['path']), size)
    arch = str(((manifest.get('provenance') or {}).get('architecture') or {}).get('name', ''))
    if 'RotationEquivariant' in arch:  # the serving wrapper: the CNN on the 4 rotations, votes combined
        model = train.RotationEquivariant(model, size).eval()
        how['wrapper'] = 'RotationEquivariant'
    golden_diff = check_goldens(model, args.bundle, manifest)
    labels = manifest['labels']
    files = json.load(open(args.files))

    def one(path: str) -> tuple[str, float, float, float]:
        t0 = time.perf_counter()
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        t1 = time.perf_counter()
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        x = np.clip((hu - (c - w / 2)) / w, 0.0, 1.0)
        t = torch.from_numpy(x)[None, None]
        t = F.interpolate(t, size=(size, size), mode='area')
        t = (t - mean) / std
        t2 = time.perf_counter()
        with torch.no_grad():
            p = torch.softmax(model(t), dim=1)[0]
        t3 = time.perf_counter()
        return labels[int(p.argmax())], (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3

    for f in files[:args.warmup]:
        one(f)
    per, read, prep, infer = [], [], [], []
    out_labels: dict[str, str] = {}
    t_start = time.perf_counter()
    for f in files:
        a = time.perf_counter()
        label, r, pr, i = one(f)
        per.append((time.perf_counter() - a) * 1e3)
        read.append(r)
        prep.append(pr)
        infer.append(i)
        out_labels[os.path.basename(f)] = label
        if time.perf_counter() - t_start > args.max_seconds:
            break
    wall = time.perf_counter() - t_start
    print(json.dumps({
        'images': len(per), 'seconds': wall, 'imagesPerSec': len(per) / wall,
        'latencyMs': {'p50': pct(per, 50), 'p99': pct(per, 99), 'mean': float(np.mean(per))},
        'stageMeanMs': {'readDecode': float(np.mean(read)), 'preprocess': float(np.mean(prep)), 'infer': float(np.mean(infer))},
        'torchThreads': torch.get_num_threads(), 'torch': torch.__version__, 'pydicom': pydicom.__version__,
        'weights': how, 'goldenMaxAbsDiff': golden_diff, 'labels': out_labels,
    }))


if __name__ == '__main__':
    main()
