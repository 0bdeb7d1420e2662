"""Export untrained OrientationNet at several input sizes for the latency sweep (weights do not change
latency). Usage: /usr/bin/python3 models/training/sweep_export.py 96 128 160 224"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import CACHE, OrientationNet, macs  # noqa: E402

out = os.path.join(CACHE, 'sweep')
os.makedirs(out, exist_ok=True)
for s in [int(a) for a in sys.argv[1:]]:
    m = OrientationNet(s).eval()
    p = os.path.join(out, f'size_{s}.onnx')
    torch.onnx.export(m, torch.zeros(1, 1, s, s), p, opset_version=13, input_names=['input'], output_names=['logits'],
                      dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    print(p, f'{macs(s) / 1e6:.0f} MMACs')
