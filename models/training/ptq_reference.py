"""Reference int8 model: PyTorch's own post-training static quantization of the shipped orientation-qa
CNN, calibrated on the same image folder as edge-quantize, exported to ONNX (QDQ), so
bench/quantize/ can compare accuracy and latency of the two int8 models in ONNX Runtime.

- Debian python3-torch 1.13 (no fbgemm): engine `onednn` (default; per-channel symmetric int8 weights,
  uint8 activations, like edge-quantize) or `qnnpack` (per-tensor weights).
- FX graph mode: prepare_fx fuses Conv+BN+ReLU and inserts observers (default qconfig of the engine:
  HistogramObserver for activations), calibration runs the serving wrapper over every calibration image,
  convert_fx makes the quantized model. Only the CNN is quantized; the 4-view rotation wrapper and the
  log-softmax vote stay float, as in edge-quantize.
- Calibration images: PNG/JPEG files under --calibration (e.g. models/training/.cache/quantize/calibration
  from quantize/make_sets.py), decoded to [0,1] by sample depth and pre-processed with prep.py, the
  Python twin of src/preprocess (parity test tolerance 1e-4).

Usage: /usr/bin/python3 models/training/ptq_reference.py --calibration DIR [--engine onednn] [--out FILE]
Prints one JSON line: {"out", "engine", "calibrationImages", "exportSeconds", ...}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from prep import normalise, resize_stretch  # noqa: E402
from train import CACHE, MEAN, STD, OrientationNet, RotationEquivariant  # noqa: E402


def load_image(path: str) -> np.ndarray:
    im = Image.open(path)
    a = np.asarray(im)
    if a.ndim == 3:  # colour: luma like src/decode would see a grey capture
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return (a / 255.0).astype(np.float32)
    if a.dtype == np.uint16 or im.mode.startswith('I'):
        return (a.astype(np.float64) / 65535.0).astype(np.float32)
    return (a.astype(np.float64) / 255.0).astype(np.float32)


def images(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        for f in files:
            if f.lower().endswith(('.png', '.jpg', '.jpeg')):
                out.append(os.path.join(root, f))
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--calibration', required=True)
    ap.add_argument('--ckpt', default=os.path.join(CACHE, 'model_128.pt'))
    ap.add_argument('--engine', default='onednn', choices=['onednn', 'qnnpack'])
    ap.add_argument('--out', default=os.path.join(CACHE, 'quantize', 'ptq_reference.onnx'))
    args = ap.parse_args()
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = args.engine
    ck = torch.load(args.ckpt, map_location='cpu')
    size = ck['size']
    net = OrientationNet(size)
    net.load_state_dict(ck['state_dict'])
    net.eval()
    files = images(args.calibration)
    if not files:
        sys.exit(f'ptq_reference: no PNG/JPEG image under {args.calibration}')
    xs = [torch.from_numpy(normalise(resize_stretch(load_image(f), size, size), MEAN, STD)[None, None].copy()) for f in files]
    t0 = time.time()
    prepared = prepare_fx(net, get_default_qconfig_mapping(args.engine), (torch.cat([xs[0]] * 4),))
    wrapper = RotationEquivariant(prepared, size).eval()
    with torch.no_grad():
        for x in xs:
            wrapper(x)
    quantized = convert_fx(copy.deepcopy(prepared))
    served = RotationEquivariant(quantized, size).eval()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(served, xs[0], args.out, opset_version=13, input_names=['input'], output_names=['logits'],
                          dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    print(json.dumps({'out': args.out, 'engine': args.engine, 'torch': torch.__version__,
                      'calibrationImages': len(files), 'seconds': round(time.time() - t0, 1),
                      'qconfig': str(get_default_qconfig_mapping(args.engine).global_qconfig)}))


if __name__ == '__main__':
    main()
