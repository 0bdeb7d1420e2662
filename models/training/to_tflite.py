"""Convert the bundle's ONNX model into TFLite flatbuffers (fp32 and full-integer int8) and list them in
the bundle's manifest.

Run after export.py (which rewrites model.onnx and manifest.json), then sign:
    /usr/bin/python3 models/training/to_tflite.py [--bundle models/orientation-qa] [--ranges FILE]
    npm run build && node dist/agent/cli.js model sign models/orientation-qa --key models/keys/DEVELOPMENT-ONLY-signing-key.pem

Writes <bundle>/tflite/model_fp32.tflite and <bundle>/tflite/model_int8.tflite and replaces the
manifest's `format: "tflite"` files[] entries with one entry per file (precision fp32 / int8, sha256,
size; the int8 entry carries `provenance` with the quantization scheme and every activation range used,
and `goldenTolerance`, the max abs difference its outputs may have from the fp32 golden logits).
Re-running it with the same inputs gives byte-identical files; it never touches other files[] entries.

No TensorFlow (PyPI is not reachable): the flatbuffer is written from a JSON description of the model
with `flatc` (Debian flatbuffers-compiler) and models/training/tflite/schema.fbs (the subset of TFLite's
public schema that this script emits; see its header for origin and licence). Needs python3-onnx and
python3-numpy only.

Conversion, op by op (unsupported ops or attributes stop it with a message):
  - batch is fixed to 1 (the TFLite runtime runs a batch of N as N invokes); the ONNX shape arithmetic
    that depends on the batch (Shape/Gather/Mul/Unsqueeze feeding Slice) is folded into constants;
  - activations are NHWC inside; the manifest's NCHW input is kept (RESHAPE when C == 1, else TRANSPOSE);
    axes/perms of ops on 4-D activations are remapped; weights go OIHW -> OHWI;
  - Conv with symmetric pads equal to TFLite SAME is SAME; any other padding is an explicit PAD then a
    VALID conv. TFLite SAME at stride 2 on an even input pads (0 before, 1 after) where PyTorch's
    padding=1 pads (1, 1): writing SAME there would shift every output pixel (FIELD-NOTES.md);
  - Conv + Relu fuse (fused_activation_function RELU); GlobalAveragePool is AVERAGE_POOL_2D over the
    whole plane; Gemm is FULLY_CONNECTED; LogSoftmax is LOG_SOFTMAX on the last axis.

int8 (TFLite's int8 quantization spec): weights int8 symmetric, per output channel for CONV_2D
(quantized_dimension 0), per tensor for FULLY_CONNECTED (per-channel FC needs newer kernels than the
WASM runtimes ship); biases int32 with scale = input_scale * weight_scale; activations int8 asymmetric
from min/max ranges. The graph stays float at the edges: the input and the four-rotation data movement
(Gather/Transpose/Concat, no arithmetic) run in float, QUANTIZE enters int8 before the first conv,
DEQUANTIZE leaves it after the last FULLY_CONNECTED. The 4-view log-softmax vote after it (16 values)
stays float on purpose: int8 LOG_SOFTMAX has a fixed output range of [-16, 0] (scale 16/256) and this
model's log-probabilities reach -24 (golden colin27-coronal), so it would clip them.
Activation ranges come from `--ranges FILE` (JSON {"<onnx tensor name>": {"min": x, "max": y}} over the
fp32 ONNX graph's tensor names, e.g. written by the quantize tool; for a fused Conv+Relu output the file
may name either tensor, and a tensor reached only through data movement, e.g. the rotated input batch,
takes the range of the tensor it moves, e.g. `input`); tensors the file does not name, or
all of them without the file, get min/max calibration: this script runs the fp32 ONNX graph in numpy on
the bundle's golden input tensors and records each tensor's min and max. Which ranges were used, and
where they came from, is written into the int8 file's manifest provenance.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bundle_io import sha256, write_manifest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
SCHEMA = os.path.join(HERE, 'tflite', 'schema.fbs')

# TFLite BuiltinOperator codes (upstream schema.fbs enum BuiltinOperator) and the BuiltinOptions union
# member each op's options table is (upstream positions; our schema.fbs declares the same numbers).
BUILTIN = {
    'ADD': 0, 'AVERAGE_POOL_2D': 1, 'CONCATENATION': 2, 'CONV_2D': 3, 'DEQUANTIZE': 6, 'FULLY_CONNECTED': 9,
    'MAX_POOL_2D': 17, 'RESHAPE': 22, 'PAD': 34, 'GATHER': 36, 'TRANSPOSE': 39, 'LOG_SOFTMAX': 50,
    'SLICE': 65, 'QUANTIZE': 114,
}
OPTIONS_TABLE = {
    'ADD': 'AddOptions', 'AVERAGE_POOL_2D': 'Pool2DOptions', 'CONCATENATION': 'ConcatenationOptions',
    'CONV_2D': 'Conv2DOptions', 'DEQUANTIZE': 'DequantizeOptions', 'FULLY_CONNECTED': 'FullyConnectedOptions',
    'MAX_POOL_2D': 'Pool2DOptions', 'RESHAPE': 'ReshapeOptions', 'PAD': 'PadOptions', 'GATHER': 'GatherOptions',
    'TRANSPOSE': 'TransposeOptions', 'LOG_SOFTMAX': 'LogSoftmaxOptions', 'SLICE': 'SliceOptions',
    'QUANTIZE': 'QuantizeOptions',
}

TO_NHWC = [0, 3, 1, 2]   # NCHW axis -> NHWC axis
NHWC_PERM = [0, 2, 3, 1]  # NHWC axis j holds NCHW axis NHWC_PERM[j]
TFLITE_SCHEMA_VERSION = 3


class Unsupported(Exception):
    pass


# ------------------------------------------------------------------------------------------------------
# numpy reference of the ONNX ops in the graph: constant folding (batch fixed to 1) and calibration
# ------------------------------------------------------------------------------------------------------
def attrs_of(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def conv_nchw(x, w, b, pads, strides, dilations, group):
    if group != 1 or any(d != 1 for d in dilations):
        raise Unsupported('Conv: only group=1, dilation 1')
    pt, pl, pb, pr = pads
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = w.shape[2], w.shape[3]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    y = np.einsum('nchwij,ocij->nohw', win, w, optimize=True)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y.astype(np.float32)


def eval_node(op: str, ins: list, a: dict):
    """One ONNX node in numpy (float32 activations, int64 shapes)."""
    if op == 'Constant':
        return numpy_helper.to_array(a['value'])
    if op == 'Shape':
        return np.array(ins[0].shape, dtype=np.int64)
    if op == 'Gather':
        return np.take(ins[0], ins[1], axis=a.get('axis', 0))
    if op == 'Transpose':
        return np.transpose(ins[0], a['perm'])
    if op == 'Concat':
        return np.concatenate(ins, axis=a['axis'])
    if op == 'Unsqueeze':
        axes = [int(v) for v in (ins[1] if len(ins) > 1 else a['axes'])]
        y = ins[0]
        for ax in sorted(axes):
            y = np.expand_dims(y, ax)
        return y
    if op in ('Mul', 'Add'):
        return ins[0] * ins[1] if op == 'Mul' else ins[0] + ins[1]
    if op == 'Slice':
        data, starts, ends = ins[0], ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 else np.arange(len(starts))
        steps = ins[4] if len(ins) > 4 else np.ones(len(starts), dtype=np.int64)
        sl = [slice(None)] * data.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            sl[int(ax)] = slice(int(s), int(e), int(st))
        return data[tuple(sl)]
    if op == 'Conv':
        k = a.get('kernel_shape')
        return conv_nchw(ins[0], ins[1], ins[2] if len(ins) > 2 else None, a.get('pads', [0, 0, 0, 0]),
                         a.get('strides', [1, 1]), a.get('dilations', [1, 1]), a.get('group', 1)) if k else None
    if op == 'Relu':
        return np.maximum(ins[0], 0)
    if op == 'MaxPool':
        kh, kw = a['kernel_shape']
        sh, sw = a.get('strides', [1, 1])
        if any(a.get('pads', [0, 0, 0, 0])) or a.get('ceil_mode', 0):
            raise Unsupported('MaxPool: only pads 0, ceil_mode 0')
        win = np.lib.stride_tricks.sliding_window_view(ins[0], (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        return win.max(axis=(4, 5))
    if op == 'GlobalAveragePool':
        return ins[0].mean(axis=(2, 3), keepdims=True)
    if op == 'Flatten':
        ax = a.get('axis', 1)
        return ins[0].reshape(int(np.prod(ins[0].shape[:ax])), -1)
    if op == 'Gemm':
        A = ins[0].T if a.get('transA', 0) else ins[0]
        B = ins[1].T if a.get('transB', 0) else ins[1]
        y = a.get('alpha', 1.0) * (A @ B)
        if len(ins) > 2:
            y = y + a.get('beta', 1.0) * ins[2]
        return y.astype(np.float32)
    if op == 'LogSoftmax':
        x = ins[0]
        ax = a.get('axis', -1)
        m = x.max(axis=ax, keepdims=True)
        return (x - m - np.log(np.exp(x - m).sum(axis=ax, keepdims=True))).astype(np.float32)
    raise Unsupported(f'no numpy reference for ONNX op {op}')


class OnnxGraph:
    def __init__(self, model: onnx.ModelProto, batch: int = 1):
        self.g = model.graph
        if len(self.g.input) != 1 or len(self.g.output) != 1:
            raise Unsupported('exactly one graph input and one output are supported')
        self.input_name = self.g.input[0].name
        self.output_name = self.g.output[0].name
        dims = self.g.input[0].type.tensor_type.shape.dim
        self.input_shape = [batch if i == 0 else d.dim_value for i, d in enumerate(dims)]
        self.inits = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        self.nodes = list(self.g.node)
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        # Constant folding with the batch fixed: a node is constant when all its inputs are, or when it
        # is Shape of an activation whose (static) shape is known.
        self.const = dict(self.inits)
        self.shapes = {self.input_name: list(self.input_shape)}
        zero = np.zeros(self.input_shape, dtype=np.float32)
        vals = {self.input_name: zero, **self.inits}
        for n in self.nodes:
            out = eval_node(n.op_type, [vals[i] for i in n.input if i], attrs_of(n))
            vals[n.output[0]] = out
            self.shapes[n.output[0]] = list(np.shape(out))
            if n.op_type == 'Constant' or n.op_type == 'Shape' or all((i in self.const) for i in n.input if i):
                self.const[n.output[0]] = out

    def run(self, x: np.ndarray) -> dict:
        """All tensor values for one input (the fp32 reference)."""
        vals = {self.input_name: x.astype(np.float32), **self.inits}
        for n in self.nodes:
            vals[n.output[0]] = eval_node(n.op_type, [vals[i] for i in n.input if i], attrs_of(n))
        return vals


# ------------------------------------------------------------------------------------------------------
# TFLite graph building
# ------------------------------------------------------------------------------------------------------
class Q:
    """Quantization of one tensor: per-tensor (scale, zero_point) or per-axis scales (zero point 0)."""

    def __init__(self, scale, zero_point, axis: int = 0, lo=None, hi=None):
        self.scale = [float(s) for s in np.atleast_1d(scale)]
        self.zero_point = [int(z) for z in np.atleast_1d(zero_point)]
        self.axis = axis
        self.lo, self.hi = lo, hi

    def json(self) -> dict:
        d = {'scale': self.scale, 'zero_point': self.zero_point, 'quantized_dimension': self.axis}
        if self.lo is not None:
            d['min'], d['max'] = [float(self.lo)], [float(self.hi)]
        return d


def act_quant(lo: float, hi: float) -> Q:
    """int8 asymmetric activation quantization for the real range [lo, hi] (widened to contain 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    zp = int(round(-128 - lo / scale))
    zp = max(-128, min(127, zp))
    return Q(scale, zp, lo=lo, hi=hi)


class TT:
    """A TFLite tensor being built."""

    def __init__(self, idx: int, shape: list, dtype: str, nhwc: bool, q: Q | None):
        self.idx, self.shape, self.dtype, self.nhwc, self.q = idx, shape, dtype, nhwc, q


class Builder:
    def __init__(self, graph: OnnxGraph, precision: str, given: dict, calibrated: dict):
        self.gr = graph
        self.precision = precision
        self.given = given            # from --ranges (may name other tensors than the ones we quantize)
        self.calibrated = calibrated  # min/max of every float tensor over the golden inputs
        self.tensors: list[dict] = []
        self.buffers: list[dict] = [{}]  # buffer 0: the empty sentinel
        self.ops: list[dict] = []
        self.opcodes: list[tuple[str, int]] = []
        self.t: dict[str, TT] = {}
        self.used_ranges: dict[str, dict] = {}
        self.names: set[str] = set()

    # -- tensors ---------------------------------------------------------------------------------------
    def tensor(self, name: str, shape, dtype: str, data: np.ndarray | None = None, q: Q | None = None, nhwc=False) -> TT:
        base, k = name, 1
        while name in self.names:
            name = f'{base}_{k}'
            k += 1
        self.names.add(name)
        d = {'shape': [int(s) for s in shape], 'type': dtype.upper(), 'name': name}
        if data is not None:
            np_dtype = {'float32': '<f4', 'int32': '<i4', 'int8': 'i1'}[dtype]
            raw = np.ascontiguousarray(np.asarray(data).astype(np_dtype)).tobytes()
            self.buffers.append({'data': list(raw)})
            d['buffer'] = len(self.buffers) - 1
        else:
            # every tensor owns a buffer index; non-constant tensors point at an empty one
            self.buffers.append({})
            d['buffer'] = len(self.buffers) - 1
        if q is not None:
            d['quantization'] = q.json()
        self.tensors.append(d)
        return TT(len(self.tensors) - 1, [int(s) for s in shape], dtype, nhwc, q)

    def const_i32(self, name: str, values) -> TT:
        arr = np.asarray(values, dtype=np.int32)
        return self.tensor(name, arr.shape, 'int32', arr)

    def op(self, kind: str, inputs: list, outputs: list, options: dict | None = None, version: int = 1) -> None:
        key = (kind, version)
        if key not in self.opcodes:
            self.opcodes.append(key)
        o = {'opcode_index': self.opcodes.index(key), 'inputs': [t.idx for t in inputs], 'outputs': [t.idx for t in outputs]}
        o['builtin_options_type'] = OPTIONS_TABLE[kind]
        o['builtin_options'] = options or {}
        self.ops.append(o)

    # -- quantization helpers --------------------------------------------------------------------------
    def movement_sources(self, name: str) -> list[str]:
        """Tensors upstream of `name` through data movement only (same values, so the same range)."""
        out: list[str] = []
        todo = [name]
        while todo:
            n = todo.pop(0)
            prod = next((x for x in self.gr.nodes if n in x.output), None)
            if prod is None or prod.op_type not in ('Concat', 'Transpose', 'Gather', 'Reshape', 'Flatten', 'MaxPool'):
                continue
            for i in prod.input:
                if i and i not in self.gr.const and i not in out:
                    out.append(i)
                    todo.append(i)
        return out

    def rng(self, onnx_name: str, alternates: list[str] | None = None, non_negative: bool = False) -> tuple[float, float]:
        """The range for `onnx_name`: the ranges file's (for it, else for an equivalent tensor), else calibration."""
        for n in [onnx_name, *(alternates or [])]:
            if n in self.given:
                r, src = self.given[n], 'ranges-file' + ('' if n == onnx_name else f' ({n})')
                break
        else:
            r, src = self.calibrated.get(onnx_name), 'min-max calibration'
        if r is None:
            raise Unsupported(f'no activation range for ONNX tensor {onnx_name!r}')
        lo, hi = float(r['min']), float(r['max'])
        if non_negative:
            lo = max(lo, 0.0)
        self.used_ranges[onnx_name] = {'min': lo, 'max': hi, 'source': src}
        return lo, hi

    def as_int8(self, t: TT, onnx_name: str) -> TT:
        if t.dtype == 'int8':
            return t
        q = act_quant(*self.rng(onnx_name, self.movement_sources(onnx_name)))
        out = self.tensor(f'{onnx_name}/quantized', t.shape, 'int8', q=q, nhwc=t.nhwc)
        self.op('QUANTIZE', [t], [out], version=2)
        return out

    def as_float(self, t: TT, onnx_name: str) -> TT:
        if t.dtype == 'float32':
            return t
        out = self.tensor(f'{onnx_name}/dequantized', t.shape, 'float32', nhwc=t.nhwc)
        self.op('DEQUANTIZE', [t], [out], version=2)
        return out

    def act(self, onnx_name: str) -> TT:
        if onnx_name not in self.t:
            raise Unsupported(f'tensor {onnx_name!r} is a constant or unknown where an activation was expected')
        return self.t[onnx_name]

    def cval(self, onnx_name: str) -> np.ndarray:
        if onnx_name not in self.gr.const:
            raise Unsupported(f'{onnx_name!r} must be a constant (after folding the batch to 1)')
        return self.gr.const[onnx_name]

    # -- conversion ------------------------------------------------------------------------------------
    def build(self) -> dict:
        gr = self.gr
        shape = gr.input_shape
        x = self.tensor(gr.input_name, shape, 'float32')
        self.inputs = [x]
        if len(shape) == 4:
            n, c, h, w = shape
            if c == 1:
                y = self.tensor(f'{gr.input_name}/nhwc', [n, h, w, c], 'float32', nhwc=True)
                self.op('RESHAPE', [x, self.const_i32('nhwc_shape', [n, h, w, c])], [y], {'new_shape': [n, h, w, c]})
            else:
                y = self.tensor(f'{gr.input_name}/nhwc', [n, h, w, c], 'float32', nhwc=True)
                self.op('TRANSPOSE', [x, self.const_i32('nhwc_perm', NHWC_PERM)], [y])
            self.t[gr.input_name] = y
        else:
            self.t[gr.input_name] = x
        fused: set[str] = set()
        for node in gr.nodes:
            out = node.output[0]
            if out in gr.const or out in fused:
                continue
            a = attrs_of(node)
            fn = getattr(self, f'op_{node.op_type}', None)
            if fn is None:
                raise Unsupported(f'ONNX op {node.op_type} ({node.name}) has no TFLite mapping here')
            fn(node, a, fused)
        y = self.as_float(self.act(gr.output_name), gr.output_name)
        if y.nhwc:
            raise Unsupported('4-D graph outputs are not supported')
        self.outputs = [y]
        self.tensors[y.idx]['name'] = gr.output_name
        return self.model_json()

    def op_Gather(self, node, a, fused):
        x = self.as_float(self.act(node.input[0]), node.input[0])
        idx = self.cval(node.input[1])
        if idx.ndim != 1:
            raise Unsupported('Gather: only 1-D constant indices')
        axis = a.get('axis', 0) % len(x.shape)
        if x.nhwc:
            axis = TO_NHWC[axis]
        shape = list(x.shape)
        shape[axis] = len(idx)
        y = self.tensor(node.output[0], shape, 'float32', nhwc=x.nhwc)
        self.op('GATHER', [x, self.const_i32(f'{node.output[0]}/indices', idx)], [y], {'axis': axis})
        self.t[node.output[0]] = y

    def op_Transpose(self, node, a, fused):
        x = self.as_float(self.act(node.input[0]), node.input[0])
        p = list(a['perm'])
        if x.nhwc:
            perm = [TO_NHWC[p[NHWC_PERM[j]]] for j in range(4)]
        else:
            perm = p
        shape = [x.shape[i] for i in perm]
        y = self.tensor(node.output[0], shape, 'float32', nhwc=x.nhwc)
        self.op('TRANSPOSE', [x, self.const_i32(f'{node.output[0]}/perm', perm)], [y])
        self.t[node.output[0]] = y

    def op_Concat(self, node, a, fused):
        xs = [self.as_float(self.act(i), i) for i in node.input]
        if len({x.nhwc for x in xs}) != 1:
            raise Unsupported('Concat: mixed layouts')
        axis = a['axis'] % len(xs[0].shape)
        if xs[0].nhwc:
            axis = TO_NHWC[axis]
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        y = self.tensor(node.output[0], shape, 'float32', nhwc=xs[0].nhwc)
        self.op('CONCATENATION', xs, [y], {'axis': axis, 'fused_activation_function': 'NONE'})
        self.t[node.output[0]] = y

    def op_Conv(self, node, a, fused):
        w = self.cval(node.input[1]).astype(np.float32)
        b = self.cval(node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
        if a.get('group', 1) != 1 or any(d != 1 for d in a.get('dilations', [1, 1])):
            raise Unsupported(f'{node.name}: only group=1 and dilation 1 convolutions')
        if a.get('auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET'):
            raise Unsupported(f'{node.name}: auto_pad is not supported, only explicit pads')
        x = self.act(node.input[0])
        if not x.nhwc:
            raise Unsupported(f'{node.name}: conv input must be a 4-D activation')
        sh, sw = a.get('strides', [1, 1])
        kh, kw = w.shape[2], w.shape[3]
        pt, pl, pb, pr = a.get('pads', [0, 0, 0, 0])
        _, h, wd, _ = x.shape
        oh, ow = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1

        def same_pads(n, k, s):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            return out, total // 2, total - total // 2

        soh, st, sb = same_pads(h, kh, sh)
        sow, sl, sr = same_pads(wd, kw, sw)
        relu = None
        cons = self.gr.consumers.get(node.output[0], [])
        if len(cons) == 1 and cons[0].op_type == 'Relu':
            relu = cons[0]
        out_name = relu.output[0] if relu else node.output[0]
        q8 = self.precision == 'int8'
        if q8:
            x = self.as_int8(x, node.input[0])
        if (pt, pb, pl, pr) == (0, 0, 0, 0):
            padding = 'VALID'
        elif (soh, sow) == (oh, ow) and (pt, pb, pl, pr) == (st, sb, sl, sr):
            padding = 'SAME'
        else:
            # The SAME-padding trap: explicit PAD (zero in float; the zero point in int8), then VALID.
            padded = self.tensor(f'{node.output[0]}/padded', [x.shape[0], h + pt + pb, wd + pl + pr, x.shape[3]], x.dtype, q=x.q, nhwc=True)
            pads = self.const_i32(f'{node.output[0]}/paddings', [[0, 0], [pt, pb], [pl, pr], [0, 0]])
            self.op('PAD', [x, pads], [padded], version=2 if q8 else 1)
            x = padded
            padding = 'VALID'
        w_ohwi = np.transpose(w, (0, 2, 3, 1))
        oshape = [x.shape[0], oh, ow, w.shape[0]]
        if q8:
            wmax = np.abs(w_ohwi).reshape(w.shape[0], -1).max(axis=1)
            wscale = np.where(wmax > 0, wmax / 127.0, 1.0).astype(np.float64)
            wq = np.clip(np.round(w_ohwi / wscale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
            wt = self.tensor(f'{node.input[1]}/int8', w_ohwi.shape, 'int8', wq, q=Q(wscale, [0] * len(wscale), axis=0))
            bscale = x.q.scale[0] * wscale
            bq = np.round(b / bscale).astype(np.int64)
            bt = self.tensor(f'{node.input[2]}/int32', b.shape, 'int32', np.clip(bq, -2**31, 2**31 - 1), q=Q(bscale, [0] * len(bscale), axis=0))
            # a fused ReLU's output; a ranges file may name the conv's own (pre-ReLU) output instead
            yq = act_quant(*self.rng(out_name, [node.output[0]] if relu else [], non_negative=bool(relu)))
            y = self.tensor(out_name, oshape, 'int8', q=yq, nhwc=True)
        else:
            wt = self.tensor(node.input[1], w_ohwi.shape, 'float32', w_ohwi)
            bt = self.tensor(node.input[2] if len(node.input) > 2 else f'{node.output[0]}/bias', b.shape, 'float32', b)
            y = self.tensor(out_name, oshape, 'float32', nhwc=True)
        self.op('CONV_2D', [x, wt, bt], [y], {
            'padding': padding, 'stride_w': sw, 'stride_h': sh,
            'fused_activation_function': 'RELU' if relu else 'NONE', 'dilation_w_factor': 1, 'dilation_h_factor': 1,
        }, version=3 if q8 else 1)
        self.t[out_name] = y
        if relu:
            fused.add(relu.output[0])
            self.t[node.output[0]] = y  # not read by anything else (single consumer)

    def op_Relu(self, node, a, fused):
        raise Unsupported(f'{node.name}: Relu is only supported fused after Conv')

    def op_MaxPool(self, node, a, fused):
        x = self.act(node.input[0])
        if not x.nhwc or any(a.get('pads', [0, 0, 0, 0])) or a.get('ceil_mode', 0) or any(d != 1 for d in a.get('dilations', [1, 1])):
            raise Unsupported(f'{node.name}: only unpadded 4-D MaxPool')
        kh, kw = a['kernel_shape']
        sh, sw = a.get('strides', [1, 1])
        n, h, w, c = x.shape
        y = self.tensor(node.output[0], [n, (h - kh) // sh + 1, (w - kw) // sw + 1, c], x.dtype, q=x.q, nhwc=True)
        self.op('MAX_POOL_2D', [x], [y], {'padding': 'VALID', 'stride_w': sw, 'stride_h': sh, 'filter_width': kw,
                                          'filter_height': kh, 'fused_activation_function': 'NONE'},
                version=2 if x.dtype == 'int8' else 1)
        self.t[node.output[0]] = y

    def op_GlobalAveragePool(self, node, a, fused):
        x = self.act(node.input[0])
        n, h, w, c = x.shape
        # int8 AVERAGE_POOL_2D keeps the input's scale/zero point (TFLite int8 spec)
        y = self.tensor(node.output[0], [n, 1, 1, c], x.dtype, q=x.q, nhwc=True)
        self.op('AVERAGE_POOL_2D', [x], [y], {'padding': 'VALID', 'stride_w': 1, 'stride_h': 1, 'filter_width': w,
                                              'filter_height': h, 'fused_activation_function': 'NONE'},
                version=2 if x.dtype == 'int8' else 1)
        self.t[node.output[0]] = y

    def op_Flatten(self, node, a, fused):
        x = self.act(node.input[0])
        if a.get('axis', 1) != 1 or len(x.shape) != 4 or (x.nhwc and (x.shape[1] != 1 or x.shape[2] != 1)):
            raise Unsupported(f'{node.name}: only Flatten(axis=1) of an [N,C,1,1] tensor')
        shape = [x.shape[0], int(np.prod(x.shape[1:]))]
        y = self.tensor(node.output[0], shape, x.dtype, q=x.q)
        self.op('RESHAPE', [x, self.const_i32(f'{node.output[0]}/shape', shape)], [y], {'new_shape': shape})
        self.t[node.output[0]] = y

    def op_Gemm(self, node, a, fused):
        if a.get('transA', 0) or a.get('alpha', 1.0) != 1.0 or a.get('beta', 1.0) != 1.0:
            raise Unsupported(f'{node.name}: only Gemm with transA=0, alpha=beta=1')
        w = self.cval(node.input[1]).astype(np.float32)
        w = w if a.get('transB', 0) else w.T  # FULLY_CONNECTED weights are [out, in]
        b = self.cval(node.input[2]).astype(np.float32) if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
        x = self.act(node.input[0])
        if x.nhwc or len(x.shape) != 2:
            raise Unsupported(f'{node.name}: Gemm input must be 2-D')
        oshape = [x.shape[0], w.shape[0]]
        if self.precision == 'int8':
            x = self.as_int8(x, node.input[0])
            ws = max(float(np.abs(w).max()) / 127.0, 1e-12)
            wt = self.tensor(f'{node.input[1]}/int8', w.shape, 'int8', np.clip(np.round(w / ws), -127, 127), q=Q(ws, 0))
            bs = x.q.scale[0] * ws
            bt = self.tensor(f'{node.input[2]}/int32', b.shape, 'int32', np.round(b / bs), q=Q(bs, 0))
            y = self.tensor(node.output[0], oshape, 'int8', q=act_quant(*self.rng(node.output[0])))
            version = 4
        else:
            wt = self.tensor(node.input[1], w.shape, 'float32', w)
            bt = self.tensor(node.input[2], b.shape, 'float32', b)
            y = self.tensor(node.output[0], oshape, 'float32')
            version = 1
        self.op('FULLY_CONNECTED', [x, wt, bt], [y], {'fused_activation_function': 'NONE'}, version=version)
        self.t[node.output[0]] = y

    def op_LogSoftmax(self, node, a, fused):
        x = self.as_float(self.act(node.input[0]), node.input[0])
        if x.nhwc or a.get('axis', -1) % len(x.shape) != len(x.shape) - 1:
            raise Unsupported(f'{node.name}: LogSoftmax only on the last axis of a plain tensor')
        y = self.tensor(node.output[0], x.shape, 'float32')
        self.op('LOG_SOFTMAX', [x], [y])
        self.t[node.output[0]] = y

    def op_Slice(self, node, a, fused):
        x = self.as_float(self.act(node.input[0]), node.input[0])
        if x.nhwc:
            raise Unsupported(f'{node.name}: Slice of a 4-D activation')
        starts, ends = self.cval(node.input[1]), self.cval(node.input[2])
        axes = self.cval(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
        steps = self.cval(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(len(starts), np.int64)
        begin = [0] * len(x.shape)
        size = list(x.shape)
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if int(st) != 1:
                raise Unsupported(f'{node.name}: Slice steps other than 1')
            ax = int(ax) % len(x.shape)
            r = range(x.shape[ax])[slice(int(s), int(e))]
            begin[ax], size[ax] = (r.start if len(r) else 0), len(r)
        y = self.tensor(node.output[0], size, 'float32')
        self.op('SLICE', [x, self.const_i32(f'{node.output[0]}/begin', begin), self.const_i32(f'{node.output[0]}/size', size)], [y])
        self.t[node.output[0]] = y

    def op_Add(self, node, a, fused):
        xs = [self.as_float(self.act(i), i) for i in node.input]
        if xs[0].shape != xs[1].shape or xs[0].nhwc or xs[1].nhwc:
            raise Unsupported(f'{node.name}: Add of two plain tensors of the same shape only')
        y = self.tensor(node.output[0], xs[0].shape, 'float32')
        self.op('ADD', xs, [y], {'fused_activation_function': 'NONE'})
        self.t[node.output[0]] = y

    # -- output -----------------------------------------------------------------------------------------
    def model_json(self) -> dict:
        opcodes = [{'deprecated_builtin_code': BUILTIN[k] if BUILTIN[k] < 127 else 127, 'builtin_code': BUILTIN[k], 'version': v}
                   for k, v in self.opcodes]
        sub = {
            'tensors': self.tensors,
            'inputs': [t.idx for t in self.inputs],
            'outputs': [t.idx for t in self.outputs],
            'operators': self.ops,
            'name': 'main',
        }
        sig = {
            'inputs': [{'name': self.gr.input_name, 'tensor_index': self.inputs[0].idx}],
            'outputs': [{'name': self.gr.output_name, 'tensor_index': self.outputs[0].idx}],
            'signature_key': 'serving_default',
            'subgraph_index': 0,
        }
        return {
            'version': TFLITE_SCHEMA_VERSION,
            'operator_codes': opcodes,
            'subgraphs': [sub],
            'description': f'edge-agent to_tflite.py ({self.precision})',
            'buffers': self.buffers,
            'signature_defs': [sig],
        }


def write_tflite(model_json: dict, out_path: str) -> None:
    flatc = shutil.which('flatc')
    if not flatc:
        sys.exit('to_tflite: flatc not found (apt-get install flatbuffers-compiler)')
    with tempfile.TemporaryDirectory() as tmp:
        name = os.path.splitext(os.path.basename(out_path))[0]
        jpath = os.path.join(tmp, name + '.json')
        with open(jpath, 'w') as f:
            json.dump(model_json, f, separators=(',', ':'))
        subprocess.run([flatc, '-b', '-o', tmp, SCHEMA, jpath], check=True)
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        shutil.move(os.path.join(tmp, name + '.tflite'), out_path)  # schema.fbs: file_extension "tflite"


# ------------------------------------------------------------------------------------------------------
# calibration, manifest
# ------------------------------------------------------------------------------------------------------
def read_f32(path: str, shape) -> np.ndarray:
    return np.fromfile(path, dtype='<f4').reshape(shape)


def golden_inputs(bundle: str, manifest: dict) -> list[tuple[str, np.ndarray]]:
    out = []
    for g in manifest.get('golden', []):
        shape = g['input']['shape']
        out.append((g['name'], read_f32(os.path.join(bundle, g['input']['path']), shape)))
    return out


def minmax_ranges(graph: OnnxGraph, inputs: list[tuple[str, np.ndarray]]) -> dict:
    r: dict[str, dict] = {}
    for _, x in inputs:
        vals = graph.run(x.reshape(graph.input_shape))
        for k, v in vals.items():
            if k in graph.const or not isinstance(v, np.ndarray) or v.dtype.kind != 'f':
                continue
            lo, hi = float(v.min()), float(v.max())
            if k in r:
                r[k] = {'min': min(r[k]['min'], lo), 'max': max(r[k]['max'], hi)}
            else:
                r[k] = {'min': lo, 'max': hi}
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--bundle', default=os.path.join(ROOT, 'models', 'orientation-qa'))
    ap.add_argument('--ranges', help='JSON {"<onnx tensor>": {"min": x, "max": y}} activation ranges (else min/max over the golden inputs)')
    ap.add_argument('--int8-golden-tolerance', type=float, default=None,
                    help='goldenTolerance of the int8 file: max abs difference of its logits from the fp32 golden logits '
                         '(default: the value already in the manifest, else 0.5; LiteRT.js measured 0.30 for the shipped 1.1.0)')
    args = ap.parse_args()

    bundle = os.path.abspath(args.bundle)
    mpath = os.path.join(bundle, 'manifest.json')
    with open(mpath) as f:
        manifest = json.load(f)
    onnx_entry = next((e for e in manifest['files'] if e['format'] == 'onnx' and e['precision'] == 'fp32'), None)
    if not onnx_entry:
        sys.exit('to_tflite: the manifest lists no fp32 ONNX file')
    onnx_path = os.path.join(bundle, onnx_entry['path'])
    graph = OnnxGraph(onnx.load(onnx_path), batch=1)

    # the numpy reference must reproduce the golden logits, or its ranges mean nothing
    goldens = golden_inputs(bundle, manifest)
    for (name, x), g in zip(goldens, manifest.get('golden', [])):
        ref = graph.run(x.reshape(graph.input_shape))[graph.output_name].reshape(-1)
        diff = float(np.abs(ref - np.asarray(g['logits'], dtype=np.float32)).max())
        if diff > 1e-3:
            sys.exit(f'to_tflite: numpy reference differs from golden {name} by {diff:.3g}')

    calibrated = minmax_ranges(graph, goldens)
    given: dict = {}
    if args.ranges:
        with open(args.ranges) as f:
            given = json.load(f)
        for k, v in given.items():
            if not (isinstance(v, dict) and isinstance(v.get('min'), (int, float)) and isinstance(v.get('max'), (int, float)) and v['min'] <= v['max']):
                sys.exit(f'to_tflite: {args.ranges}: range for {k!r} must be {{"min": number, "max": number}} with min <= max')

    tdir = os.path.join(bundle, 'tflite')
    outs = {}
    used = {}
    for precision in ('fp32', 'int8'):
        b = Builder(graph, precision, given, calibrated)
        mj = b.build()
        path = os.path.join(tdir, f'model_{precision}.tflite')
        write_tflite(mj, path)
        outs[precision] = path
        used[precision] = b.used_ranges
        print(f'to_tflite: wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes, {len(b.ops)} ops)')

    # The int8 file's deviation from the fp32 logits is measured by the agent's golden check in a real TFLite
    # interpreter (this script has none); the tolerance is set from the argument or kept from a previous run.
    old = {e['path']: e for e in manifest['files'] if e['format'] == 'tflite'}
    int8_rel = os.path.relpath(outs['int8'], bundle)
    tol = args.int8_golden_tolerance if args.int8_golden_tolerance is not None else old.get(int8_rel, {}).get('goldenTolerance', 0.5)

    calibrated_used = any(v['source'] == 'min-max calibration' for v in used['int8'].values())
    rel_ranges = ''
    if given:
        ra = os.path.abspath(args.ranges)
        rel_ranges = os.path.relpath(ra, bundle) if ra.startswith(bundle + os.sep) else os.path.relpath(ra, ROOT)
    entries = []
    for precision in ('fp32', 'int8'):
        path = outs[precision]
        e = {
            'path': os.path.relpath(path, bundle),
            'format': 'tflite',
            'precision': precision,
            'sha256': sha256(path),
            'size': os.path.getsize(path),
        }
        if precision == 'int8':
            e['goldenTolerance'] = tol
            e['provenance'] = {
                'convertedFrom': {'path': onnx_entry['path'], 'sha256': onnx_entry['sha256']},
                'tool': 'models/training/to_tflite.py',
                'scheme': 'TFLite int8: conv weights int8 symmetric per output channel, fully-connected weights int8 symmetric per tensor, '
                          'int32 biases, int8 asymmetric activations; float input, rotations and 4-view log-softmax vote '
                          '(QUANTIZE before the first conv, DEQUANTIZE after the last fully-connected)',
                'activationRanges': {
                    'method': '; '.join(m for m in (
                        ('from the ranges file (--ranges ' + rel_ranges + ')') if given else '',
                        ('min/max of each tensor of the fp32 ONNX graph (numpy) over the bundle golden inputs' +
                         (' for the tensors the ranges file does not name' if given else '')) if calibrated_used else '',
                    ) if m),
                    **({'rangesFile': {'path': rel_ranges, 'sha256': sha256(args.ranges)}} if given else {}),
                    **({'calibrationInputs': [name for name, _ in goldens]} if calibrated_used else {}),
                    'tensors': {k: {'min': round(v['min'], 6), 'max': round(v['max'], 6), 'source': v['source']}
                                for k, v in used['int8'].items()},
                },
            }
        else:
            e['provenance'] = {'convertedFrom': {'path': onnx_entry['path'], 'sha256': onnx_entry['sha256']}, 'tool': 'models/training/to_tflite.py'}
        entries.append(e)

    # re-read right before writing (the manifest is shared with other tools), replace only tflite entries
    with open(mpath) as f:
        manifest = json.load(f)
    # keep the tflite entries where they were (other tools append their own files), add missing ones at the end
    files, pending = [], list(entries)
    for e in manifest['files']:
        if e['format'] != 'tflite':
            files.append(e)
        elif pending:
            files.append(pending.pop(0))
    manifest['files'] = files + pending
    write_manifest(mpath, manifest)
    print(f'to_tflite: {os.path.relpath(mpath, ROOT)} lists {", ".join(e["path"] for e in entries)}; re-sign the bundle')


if __name__ == '__main__':
    try:
        main()
    except Unsupported as e:
        sys.exit(f'to_tflite: unsupported: {e}')
