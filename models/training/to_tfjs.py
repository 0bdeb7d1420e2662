"""Convert the bundle's ONNX model into a TensorFlow.js graph model and list it in the bundle's manifest.

Run after export.py (which rewrites model.onnx and manifest.json), then sign:
    /usr/bin/python3 models/training/to_tfjs.py [--bundle models/orientation-qa]
    npm run build && node dist/agent/cli.js model sign models/orientation-qa --key models/keys/DEVELOPMENT-ONLY-signing-key.pem

Writes <bundle>/tfjs/model.json (format "graph-model": GraphDef-style nodes + weightsManifest) and
<bundle>/tfjs/weights.bin (all constants, little-endian), and replaces the manifest's `format: "tfjs"`
files[] entries with two entries: model.json first (the entry point a runtime loads) and weights.bin
(listed so its sha256 is verified and covered by the signature like every other file). Re-running it is
idempotent; it never touches the other files[] entries or anything else in the manifest.

Needs only Debian's python3-onnx and python3-numpy (no TensorFlow, no PyPI). Each ONNX op is mapped to
ops the tfjs graph executor implements. Activations are kept NHWC inside the graph (TF.js convolutions
are NHWC-only on the CPU/WASM backends): a Transpose after the Placeholder keeps the manifest's NCHW
input, conv weights go OIHW -> HWIO, and every axis/perm of an op on a 4-D activation is remapped.
Unsupported ops or attributes stop the conversion with a clear message rather than producing a model
that computes something else. The agent's parity test (tests/runtimes/tfjs.test.ts) and the golden check
hold the result to the ONNX model's outputs.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bundle_io import sha256, write_manifest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))

# NCHW axis -> NHWC axis, and the inverse
TO_NHWC = [0, 3, 1, 2]
NHWC_PERM = [0, 2, 3, 1]  # transpose NCHW -> NHWC
NCHW_PERM = [0, 3, 1, 2]  # transpose NHWC -> NCHW
I32_MAX = 2**31 - 1
I32_MIN = -(2**31)


class Unsupported(Exception):
    pass


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def ilist(v) -> dict:
    return {'list': {'i': [str(int(x)) for x in v]}}


def dtype_attr(dt: str) -> dict:
    return {'type': {'float32': 'DT_FLOAT', 'int32': 'DT_INT32'}[dt]}


class T:
    """An ONNX tensor as seen in the TF graph."""

    def __init__(self, node: str | None, rank: int, dtype: str, layout: str | None = None,
                 const: np.ndarray | None = None, shape: list | None = None, nchw_alias: str | None = None):
        self.node = node  # TF node name producing it (None: a constant not yet emitted)
        self.rank = rank
        self.dtype = dtype  # 'float32' | 'int32'
        self.layout = layout  # 'NHWC' when a 4-D NCHW ONNX tensor is held transposed, else None
        self.const = const
        self.shape = shape  # ONNX-order static shape (None for unknown dims) when known
        self.nchw_alias = nchw_alias  # TF node with the same tensor in NCHW (the Placeholder)


class Converter:
    def __init__(self, model: onnx.ModelProto):
        self.model = shape_inference.infer_shapes(model)
        self.g = self.model.graph
        self.nodes: list[dict] = []
        self.weights: list[tuple[str, np.ndarray]] = []
        self.names: set[str] = set()
        self.t: dict[str, T] = {}
        self.static_shapes: dict[str, list] = {}
        for vi in list(self.g.value_info) + list(self.g.input) + list(self.g.output):
            tt = vi.type.tensor_type
            if tt.HasField('shape'):
                self.static_shapes[vi.name] = [d.dim_value if d.HasField('dim_value') else None for d in tt.shape.dim]
        consumers: dict[str, int] = {}
        for n in self.g.node:
            for i in n.input:
                consumers[i] = consumers.get(i, 0) + 1
        self.consumers = consumers
        self.names.update(o.name for o in self.g.output)  # intermediate nodes must not take an output's name

    # -- graph building -------------------------------------------------------------------------------
    def uniq(self, base: str) -> str:
        name = ''.join(c if c.isalnum() or c in '_./-' else '_' for c in base).strip('/') or 'node'
        out, k = name, 1
        while out in self.names:
            out = f'{name}_{k}'
            k += 1
        self.names.add(out)
        return out

    def emit(self, op: str, name: str, inputs: list[str], attr: dict | None = None) -> str:
        nm = self.uniq(name)
        self.nodes.append({'name': nm, 'op': op, 'input': inputs, 'attr': attr or {}})
        return nm

    def const(self, value, dtype: str, name: str) -> str:
        arr = np.asarray(value)
        if dtype == 'int32':
            arr = np.clip(arr.astype(np.int64), I32_MIN, I32_MAX).astype('<i4')
        else:
            arr = arr.astype('<f4')
        nm = self.uniq(name)
        self.weights.append((nm, arr))
        self.nodes.append({'name': nm, 'op': 'Const', 'attr': {
            'value': {'tensor': {'dtype': dtype_attr(dtype)['type'],
                                 'tensorShape': {'dim': [{'size': str(d)} for d in arr.shape]} if arr.shape else {}}},
            'dtype': dtype_attr(dtype)}})
        return nm

    def tf(self, name: str, hint: str) -> str:
        """TF node name for ONNX tensor `name`, emitting a Const for a constant on first use."""
        t = self.t[name]
        if t.node is None:
            assert t.const is not None
            t.node = self.const(t.const, t.dtype, f'{hint}/const')
        return t.node

    def as_nhwc(self, name: str, hint: str) -> str:
        t = self.t[name]
        if t.layout == 'NHWC':
            return self.tf(name, hint)
        if t.rank != 4:
            raise Unsupported(f'{hint}: expected a 4-D tensor, got rank {t.rank}')
        return self.emit('Transpose', f'{hint}/to_nhwc', [self.tf(name, hint), self.const(NHWC_PERM, 'int32', f'{hint}/perm')])

    def as_plain(self, name: str, hint: str) -> str:
        """The tensor in ONNX (NCHW) layout."""
        t = self.t[name]
        if t.layout != 'NHWC':
            return self.tf(name, hint)
        if t.nchw_alias:
            return t.nchw_alias
        return self.emit('Transpose', f'{hint}/to_nchw', [self.tf(name, hint), self.const(NCHW_PERM, 'int32', f'{hint}/perm')])

    def shape_of(self, name: str) -> list | None:
        return self.static_shapes.get(name)

    # -- conversion -----------------------------------------------------------------------------------
    def convert(self) -> tuple[dict, bytes]:
        inits = {i.name for i in self.g.initializer}
        for init in self.g.initializer:
            a = numpy_helper.to_array(init)
            self.t[init.name] = T(None, a.ndim, 'float32' if a.dtype.kind == 'f' else 'int32', const=a)
        graph_inputs = [i for i in self.g.input if i.name not in inits]
        if len(graph_inputs) != 1:
            raise Unsupported(f'expected one graph input, found {[i.name for i in graph_inputs]}')
        inp = graph_inputs[0]
        elem = inp.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            raise Unsupported(f'input {inp.name} is not float32')
        dims = [d.dim_value if d.HasField('dim_value') else -1 for d in inp.type.tensor_type.shape.dim]
        ph = self.emit('Placeholder', inp.name, [], {
            'dtype': dtype_attr('float32'),
            'shape': {'shape': {'dim': [{'size': str(d)} for d in dims]}}})
        if ph != inp.name:
            raise Unsupported(f'input name {inp.name!r} is not a valid TF node name')
        if len(dims) == 4:
            nhwc = self.emit('Transpose', f'{inp.name}/nhwc', [ph, self.const(NHWC_PERM, 'int32', f'{inp.name}/nhwc/perm')])
            self.t[inp.name] = T(nhwc, 4, 'float32', 'NHWC', shape=self.shape_of(inp.name), nchw_alias=ph)
        else:
            self.t[inp.name] = T(ph, len(dims), 'float32', shape=self.shape_of(inp.name))

        for n in self.g.node:
            handler = getattr(self, f'op_{n.op_type}', None)
            if handler is None:
                raise Unsupported(f'ONNX op {n.op_type} (node {n.name or n.output[0]}) has no TF.js mapping in to_tfjs.py')
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            handler(n, attrs)

        outputs = []
        for o in self.g.output:
            src = self.as_plain(o.name, o.name)
            self.names.discard(o.name)  # reserved in __init__: the graph output keeps its ONNX name
            outputs.append(self.emit('Identity', o.name, [src], {'T': dtype_attr(self.t[o.name].dtype)}))
        if outputs != [o.name for o in self.g.output]:
            raise Unsupported(f'output names changed: {outputs}')

        weights_bin = b''.join(a.tobytes() for _, a in self.weights)
        manifest_weights = [{'name': nm, 'shape': list(a.shape), 'dtype': 'float32' if a.dtype.kind == 'f' else 'int32'}
                            for nm, a in self.weights]
        # Drop nodes no output depends on (e.g. constants only used for folding)
        needed: set[str] = set()
        by_name = {nd['name']: nd for nd in self.nodes}
        stack = list(outputs)
        while stack:
            nm = stack.pop()
            if nm in needed:
                continue
            needed.add(nm)
            stack.extend(i.split(':')[0] for i in by_name[nm].get('input', []))
        dead = {nd['name'] for nd in self.nodes} - needed
        if dead:
            self.nodes = [nd for nd in self.nodes if nd['name'] in needed]
            kept = [(nm, a) for nm, a in self.weights if nm in needed]
            weights_bin = b''.join(a.tobytes() for _, a in kept)
            manifest_weights = [w for w in manifest_weights if w['name'] in needed]
        return {'nodes': self.nodes, 'weights': manifest_weights}, weights_bin

    # -- op handlers (ONNX opset 13 semantics) --------------------------------------------------------
    def out(self, n, node: str | None, rank: int, dtype: str, layout=None, const=None):
        self.t[n.output[0]] = T(node, rank, dtype, layout, const, self.shape_of(n.output[0]))

    def op_Constant(self, n, a):
        if 'value' not in a:
            raise Unsupported(f'Constant {n.output[0]}: only the `value` attribute is supported')
        v = numpy_helper.to_array(a['value'])
        self.out(n, None, v.ndim, 'float32' if v.dtype.kind == 'f' else 'int32', const=v)

    def op_Identity(self, n, a):
        self.t[n.output[0]] = self.t[n.input[0]]

    def op_Gather(self, n, a):
        x, idx = self.t[n.input[0]], self.t[n.input[1]]
        axis = int(a.get('axis', 0))
        if axis < 0:
            axis += x.rank
        if idx.const is None:
            raise Unsupported(f'Gather {n.output[0]}: dynamic indices')
        if x.const is not None:
            self.out(n, None, x.rank - 1 + idx.const.ndim, x.dtype, const=np.take(x.const, idx.const, axis=axis))
            return
        ind = idx.const.astype(np.int64)
        dim = x.shape[axis] if x.shape else None  # ONNX-order static shape, ONNX axis
        layout = x.layout
        if layout == 'NHWC':
            if ind.ndim != 1:
                raise Unsupported(f'Gather {n.output[0]}: non 1-D indices on a 4-D activation')
            axis = TO_NHWC[axis]
        src = self.tf(n.input[0], n.output[0])
        if ind.ndim == 1 and dim is not None and len(ind) == dim and np.array_equal(np.mod(ind, dim), np.arange(dim)[::-1]):
            node = self.emit('ReverseV2', n.output[0], [src, self.const([axis], 'int32', f'{n.output[0]}/axis')])
        else:
            node = self.emit('GatherV2', n.output[0], [src, self.const(ind, 'int32', f'{n.output[0]}/indices'),
                                                        self.const(axis, 'int32', f'{n.output[0]}/axis')],
                             {'batch_dims': {'i': '0'}})
        self.out(n, node, x.rank - 1 + ind.ndim, x.dtype, layout)

    def op_Transpose(self, n, a):
        x = self.t[n.input[0]]
        perm = list(a.get('perm', list(range(x.rank))[::-1]))
        if x.const is not None:
            self.out(n, None, x.rank, x.dtype, const=np.transpose(x.const, perm))
            return
        if x.layout == 'NHWC':
            p2 = [TO_NHWC[perm[NHWC_PERM[i]]] for i in range(4)]
            src = self.tf(n.input[0], n.output[0])
            node = src if p2 == [0, 1, 2, 3] else self.emit('Transpose', n.output[0], [src, self.const(p2, 'int32', f'{n.output[0]}/perm')])
            self.out(n, node, 4, x.dtype, 'NHWC')
        else:
            node = self.emit('Transpose', n.output[0], [self.tf(n.input[0], n.output[0]), self.const(perm, 'int32', f'{n.output[0]}/perm')])
            self.out(n, node, x.rank, x.dtype)

    def op_Shape(self, n, a):
        x = self.t[n.input[0]]
        if x.shape and all(d is not None for d in x.shape):
            self.out(n, None, 1, 'int32', const=np.array(x.shape, dtype=np.int64))
            return
        src = self.as_plain(n.input[0], n.output[0])
        node = self.emit('Shape', n.output[0], [src], {'out_type': dtype_attr('int32'), 'T': dtype_attr(x.dtype)})
        self.out(n, node, 1, 'int32')

    def op_Concat(self, n, a):
        ins = [self.t[i] for i in n.input]
        axis = int(a['axis'])
        rank = ins[0].rank
        if axis < 0:
            axis += rank
        if all(t.const is not None for t in ins):
            self.out(n, None, rank, ins[0].dtype, const=np.concatenate([t.const for t in ins], axis=axis))
            return
        nhwc = rank == 4 and any(t.layout == 'NHWC' for t in ins)
        srcs = [self.as_nhwc(i, n.output[0]) if nhwc else self.as_plain(i, n.output[0]) for i in n.input]
        node = self.emit('ConcatV2', n.output[0], srcs + [self.const(TO_NHWC[axis] if nhwc else axis, 'int32', f'{n.output[0]}/axis')],
                         {'N': {'i': str(len(srcs))}, 'T': dtype_attr(ins[0].dtype)})
        self.out(n, node, rank, ins[0].dtype, 'NHWC' if nhwc else None)

    def op_Conv(self, n, a):
        w = self.t[n.input[1]].const
        if w is None or w.ndim != 4:
            raise Unsupported(f'Conv {n.output[0]}: weights must be a constant 2-D kernel')
        if int(a.get('group', 1)) != 1:
            raise Unsupported(f'Conv {n.output[0]}: grouped convolution')
        if a.get('auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET'):
            raise Unsupported(f'Conv {n.output[0]}: auto_pad')
        strides = list(a.get('strides', [1, 1]))
        dil = list(a.get('dilations', [1, 1]))
        pads = list(a.get('pads', [0, 0, 0, 0]))  # [top, left, bottom, right]
        x = self.as_nhwc(n.input[0], n.output[0])
        filt = self.const(np.transpose(w, (2, 3, 1, 0)), 'float32', f'{n.output[0]}/filter')  # OIHW -> HWIO
        attr = {'strides': ilist([1, strides[0], strides[1], 1]), 'dilations': ilist([1, dil[0], dil[1], 1]),
                'data_format': {'s': b64('NHWC')}, 'T': dtype_attr('float32')}
        if any(pads):
            attr['padding'] = {'s': b64('EXPLICIT')}
            attr['explicit_paddings'] = ilist([0, 0, pads[0], pads[2], pads[1], pads[3], 0, 0])
        else:
            attr['padding'] = {'s': b64('VALID')}
        node = self.emit('Conv2D', n.output[0], [x, filt], attr)
        if len(n.input) > 2 and n.input[2]:
            b = self.t[n.input[2]].const
            if b is None:
                raise Unsupported(f'Conv {n.output[0]}: dynamic bias')
            node = self.emit('BiasAdd', f'{n.output[0]}/bias', [node, self.const(b, 'float32', f'{n.output[0]}/bias_value')],
                             {'data_format': {'s': b64('NHWC')}, 'T': dtype_attr('float32')})
        self.out(n, node, 4, 'float32', 'NHWC')

    def op_Relu(self, n, a):
        x = self.t[n.input[0]]
        node = self.emit('Relu', n.output[0], [self.tf(n.input[0], n.output[0])], {'T': dtype_attr('float32')})
        self.out(n, node, x.rank, 'float32', x.layout)

    def op_MaxPool(self, n, a):
        if int(a.get('ceil_mode', 0)) or any(a.get('pads', [0, 0, 0, 0])) or any(d != 1 for d in a.get('dilations', [1, 1])):
            raise Unsupported(f'MaxPool {n.output[0]}: only ceil_mode=0, no padding, no dilation')
        k = list(a['kernel_shape'])
        s = list(a.get('strides', [1, 1]))
        node = self.emit('MaxPool', n.output[0], [self.as_nhwc(n.input[0], n.output[0])], {
            'ksize': ilist([1, k[0], k[1], 1]), 'strides': ilist([1, s[0], s[1], 1]),
            'padding': {'s': b64('VALID')}, 'data_format': {'s': b64('NHWC')}, 'T': dtype_attr('float32')})
        self.out(n, node, 4, 'float32', 'NHWC')

    def op_GlobalAveragePool(self, n, a):
        node = self.emit('Mean', n.output[0], [self.as_nhwc(n.input[0], n.output[0]), self.const([1, 2], 'int32', f'{n.output[0]}/axes')],
                         {'keep_dims': {'b': True}, 'T': dtype_attr('float32'), 'Tidx': dtype_attr('int32')})
        self.out(n, node, 4, 'float32', 'NHWC')

    def op_Flatten(self, n, a):
        x = self.t[n.input[0]]
        axis = int(a.get('axis', 1))
        shp = self.shape_of(n.input[0])
        if axis != 1 or not shp or any(d is None for d in shp[1:]):
            raise Unsupported(f'Flatten {n.output[0]}: only axis=1 with static non-batch dims')
        inner = int(np.prod(shp[1:]))
        if x.layout == 'NHWC' and shp[2] * shp[3] == 1:
            src = self.tf(n.input[0], n.output[0])  # [N,1,1,C]: NHWC and NCHW orders agree
        else:
            src = self.as_plain(n.input[0], n.output[0])
        node = self.emit('Reshape', n.output[0], [src, self.const([-1, inner], 'int32', f'{n.output[0]}/shape')], {'T': dtype_attr('float32')})
        self.out(n, node, 2, 'float32')

    def op_Gemm(self, n, a):
        if int(a.get('transA', 0)):
            raise Unsupported(f'Gemm {n.output[0]}: transA')
        b = self.t[n.input[1]].const
        if b is None:
            raise Unsupported(f'Gemm {n.output[0]}: dynamic B')
        if int(a.get('transB', 0)):
            b = b.T
        b = b * float(a.get('alpha', 1.0))
        node = self.emit('MatMul', n.output[0], [self.as_plain(n.input[0], n.output[0]), self.const(b, 'float32', f'{n.output[0]}/weight')],
                         {'transpose_a': {'b': False}, 'transpose_b': {'b': False}, 'T': dtype_attr('float32')})
        if len(n.input) > 2 and n.input[2]:
            c = self.t[n.input[2]].const
            if c is None or c.ndim != 1:
                raise Unsupported(f'Gemm {n.output[0]}: C must be a constant vector')
            node = self.emit('BiasAdd', f'{n.output[0]}/bias', [node, self.const(c * float(a.get('beta', 1.0)), 'float32', f'{n.output[0]}/bias_value')],
                             {'T': dtype_attr('float32')})
        self.out(n, node, 2, 'float32')

    def op_LogSoftmax(self, n, a):
        x = self.t[n.input[0]]
        axis = int(a.get('axis', -1))
        if axis < 0:
            axis += x.rank
        if x.layout == 'NHWC' or axis != x.rank - 1:
            raise Unsupported(f'LogSoftmax {n.output[0]}: only over the last axis of a non-image tensor')
        node = self.emit('LogSoftmax', n.output[0], [self.tf(n.input[0], n.output[0])], {'T': dtype_attr('float32')})
        self.out(n, node, x.rank, 'float32')

    def op_Unsqueeze(self, n, a):
        x = self.t[n.input[0]]
        axes_t = self.t[n.input[1]] if len(n.input) > 1 else None
        axes = list(axes_t.const.reshape(-1)) if axes_t is not None and axes_t.const is not None else list(a.get('axes', []))
        if not axes:
            raise Unsupported(f'Unsqueeze {n.output[0]}: dynamic axes')
        r = x.rank + len(axes)
        axes = sorted(int(ax) + r if ax < 0 else int(ax) for ax in axes)
        if x.const is not None:
            v = x.const
            for ax in axes:
                v = np.expand_dims(v, ax)
            self.out(n, None, r, x.dtype, const=v)
            return
        if x.layout == 'NHWC':
            raise Unsupported(f'Unsqueeze {n.output[0]}: on a 4-D activation')
        node = self.tf(n.input[0], n.output[0])
        for ax in axes:
            node = self.emit('ExpandDims', n.output[0], [node, self.const(ax, 'int32', f'{n.output[0]}/dim')], {'T': dtype_attr(x.dtype)})
        self.out(n, node, r, x.dtype)

    def binary(self, n, tf_op: str, fn):
        x, y = self.t[n.input[0]], self.t[n.input[1]]
        dtype = 'float32' if 'float32' in (x.dtype, y.dtype) else 'int32'
        if x.const is not None and y.const is not None:
            self.out(n, None, max(x.rank, y.rank), dtype, const=fn(x.const, y.const))
            return
        nhwc = any(t.layout == 'NHWC' for t in (x, y))
        srcs = []
        for name, t in ((n.input[0], x), (n.input[1], y)):
            if nhwc and t.layout != 'NHWC':
                if t.const is not None and t.const.size == 1:
                    srcs.append(self.const(t.const.reshape(()), dtype, f'{n.output[0]}/scalar'))
                elif t.const is not None:
                    c = t.const.reshape((1,) * (4 - t.const.ndim) + t.const.shape)
                    srcs.append(self.const(np.transpose(c, NHWC_PERM), dtype, f'{n.output[0]}/operand'))
                else:
                    srcs.append(self.as_nhwc(name, n.output[0]))
            elif t.const is not None:
                srcs.append(self.const(t.const, dtype, f'{n.output[0]}/operand'))
            else:
                srcs.append(self.tf(name, n.output[0]))
        node = self.emit(tf_op, n.output[0], srcs, {'T': dtype_attr(dtype)})
        self.out(n, node, max(x.rank, y.rank), dtype, 'NHWC' if nhwc else None)

    def op_Add(self, n, a):
        self.binary(n, 'AddV2', np.add)

    def op_Mul(self, n, a):
        self.binary(n, 'Mul', np.multiply)

    def op_Slice(self, n, a):
        x = self.t[n.input[0]]
        starts, ends = self.t[n.input[1]], self.t[n.input[2]]
        axes_t = self.t[n.input[3]] if len(n.input) > 3 and n.input[3] else None
        steps_t = self.t[n.input[4]] if len(n.input) > 4 and n.input[4] else None
        if (axes_t is not None and axes_t.const is None) or (steps_t is not None and steps_t.const is None):
            raise Unsupported(f'Slice {n.output[0]}: dynamic axes or steps')
        nsl = (starts.const.size if starts.const is not None else None) or (ends.const.size if ends.const is not None else None) \
            or (len(axes_t.const) if axes_t is not None else None)
        axes = [int(v) for v in axes_t.const.reshape(-1)] if axes_t is not None else list(range(nsl or 0))
        if not axes:
            raise Unsupported(f'Slice {n.output[0]}: cannot tell which axes are sliced')
        steps = [int(v) for v in steps_t.const.reshape(-1)] if steps_t is not None else [1] * len(axes)
        if any(s <= 0 for s in steps):
            raise Unsupported(f'Slice {n.output[0]}: non-positive steps')
        r = x.rank
        axes = [ax + r if ax < 0 else ax for ax in axes]
        if x.const is not None and starts.const is not None and ends.const is not None:
            sl = [slice(None)] * r
            for j, ax in enumerate(axes):
                sl[ax] = slice(int(starts.const[j]), int(ends.const[j]), steps[j])
            self.out(n, None, r, x.dtype, const=x.const[tuple(sl)])
            return
        nhwc = x.layout == 'NHWC'
        tf_axes = [TO_NHWC[ax] for ax in axes] if nhwc else axes
        src = self.tf(n.input[0], n.output[0]) if nhwc else self.as_plain(n.input[0], n.output[0])
        mask = 0
        for i in range(r):
            if i not in tf_axes:
                mask |= 1 << i

        def vector(t: T, name: str, what: str) -> str:
            if t.const is not None:
                full = [0] * r
                for j, ax in enumerate(tf_axes):
                    full[ax] = int(np.clip(int(t.const.reshape(-1)[j]), I32_MIN, I32_MAX))
                return self.const(full, 'int32', f'{n.output[0]}/{what}')
            dyn = self.tf(name, n.output[0])
            pieces = []
            for i in range(r):
                if i in tf_axes:
                    j = tf_axes.index(i)
                    pieces.append(dyn if len(tf_axes) == 1 else self.emit(
                        'GatherV2', f'{n.output[0]}/{what}_{i}', [dyn, self.const([j], 'int32', f'{n.output[0]}/{what}_{i}/idx'),
                                                                 self.const(0, 'int32', f'{n.output[0]}/{what}_{i}/axis')],
                        {'batch_dims': {'i': '0'}}))
                else:
                    pieces.append(self.const([0], 'int32', f'{n.output[0]}/{what}_{i}'))
            if len(pieces) == 1:
                return pieces[0]
            return self.emit('ConcatV2', f'{n.output[0]}/{what}', pieces + [self.const(0, 'int32', f'{n.output[0]}/{what}/axis')],
                             {'N': {'i': str(len(pieces))}, 'T': dtype_attr('int32')})

        begin = vector(starts, n.input[1], 'begin')
        end = vector(ends, n.input[2], 'end')
        full_steps = [1] * r
        for j, ax in enumerate(tf_axes):
            full_steps[ax] = steps[j]
        node = self.emit('StridedSlice', n.output[0], [src, begin, end, self.const(full_steps, 'int32', f'{n.output[0]}/strides')], {
            'begin_mask': {'i': str(mask)}, 'end_mask': {'i': str(mask)}, 'ellipsis_mask': {'i': '0'},
            'new_axis_mask': {'i': '0'}, 'shrink_axis_mask': {'i': '0'}, 'T': dtype_attr(x.dtype), 'Index': dtype_attr('int32')})
        self.out(n, node, r, x.dtype, 'NHWC' if nhwc else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--bundle', default=os.path.join(ROOT, 'models', 'orientation-qa'))
    ap.add_argument('--onnx', default=None, help='ONNX file inside the bundle (default: the manifest\'s onnx fp32 entry)')
    ap.add_argument('--out', default='tfjs', help='folder inside the bundle for model.json + weights.bin')
    args = ap.parse_args()
    bundle = os.path.abspath(args.bundle)
    manifest_path = os.path.join(bundle, 'manifest.json')
    with open(manifest_path, encoding='utf-8') as f:
        manifest = json.load(f)
    src_rel = args.onnx or next(e['path'] for e in manifest['files'] if e['format'] == 'onnx' and e['precision'] == 'fp32')
    src = os.path.join(bundle, src_rel)
    model = onnx.load(src)
    onnx.checker.check_model(model)
    try:
        graph, weights_bin = Converter(model).convert()
    except Unsupported as e:
        print(f'to_tfjs: cannot convert {src}: {e}', file=sys.stderr)
        return 1

    out_dir = os.path.join(bundle, args.out)
    os.makedirs(out_dir, exist_ok=True)
    weights_name = 'weights.bin'
    model_json = {
        'format': 'graph-model',
        'generatedBy': f'onnx {onnx.__version__} opset {model.opset_import[0].version}',
        'convertedBy': 'models/training/to_tfjs.py',
        'modelTopology': {'node': graph['nodes'], 'library': {}, 'versions': {'producer': 1}},
        'weightsManifest': [{'paths': [weights_name], 'weights': graph['weights']}],
        'userDefinedMetadata': {'source': {'path': src_rel, 'sha256': sha256(src)}},
    }
    json_path = os.path.join(out_dir, 'model.json')
    with open(json_path, 'w', encoding='utf-8') as f:
        json.dump(model_json, f, indent=1)
        f.write('\n')
    bin_path = os.path.join(out_dir, weights_name)
    with open(bin_path, 'wb') as f:
        f.write(weights_bin)

    entries = []
    for p in (json_path, bin_path):
        entries.append({'path': os.path.relpath(p, bundle).replace(os.sep, '/'), 'format': 'tfjs', 'precision': 'fp32',
                        'sha256': sha256(p), 'size': os.path.getsize(p)})
    manifest['files'] = [e for e in manifest['files'] if e['format'] != 'tfjs'] + entries
    write_manifest(manifest_path, manifest)
    ops = sorted({nd['op'] for nd in graph['nodes']})
    print(f'to_tfjs: {src_rel} -> {entries[0]["path"]} ({len(graph["nodes"])} nodes: {", ".join(ops)}) + '
          f'{entries[1]["path"]} ({len(weights_bin)} bytes); manifest files[] updated, re-sign the bundle')
    return 0


if __name__ == '__main__':
    sys.exit(main())
