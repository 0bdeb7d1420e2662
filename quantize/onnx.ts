/**
 * ONNX protobuf I/O and graph helpers for edge-quantize, on the official onnx.proto compiled for
 * protobufjs (npm `onnx-proto`). Only what quantization needs: read/write a ModelProto, read float
 * initializers (float_data or raw_data, little-endian), build tensors/nodes/attributes, count consumers.
 */
import { createRequire } from 'node:module';
import type { onnx as OnnxNs } from 'onnx-proto';

const require = createRequire(import.meta.url);
// onnx-proto is a CommonJS static protobufjs module
export const onnx = (require('onnx-proto') as { onnx: typeof OnnxNs }).onnx;
export type ModelProto = OnnxNs.ModelProto;
export type GraphProto = OnnxNs.IGraphProto;
export type NodeProto = OnnxNs.INodeProto;
export type TensorProto = OnnxNs.ITensorProto;
export type AttributeProto = OnnxNs.IAttributeProto;

export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
} as const;

/** int64 fields come back as number or Long (when the `long` package is present). */
export function toNum(v: unknown): number {
  if (v === null || v === undefined) return 0;
  if (typeof v === 'number') return v;
  if (typeof v === 'object' && typeof (v as { toNumber?: unknown }).toNumber === 'function') return (v as { toNumber(): number }).toNumber();
  return Number(v);
}

export class OnnxFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OnnxFormatError';
  }
}

export function decodeModel(bytes: Uint8Array): ModelProto {
  let m: ModelProto;
  try {
    m = onnx.ModelProto.decode(bytes);
  } catch (e) {
    throw new OnnxFormatError(`not an ONNX model (protobuf decode failed: ${(e as Error).message})`);
  }
  if (!m.graph || !m.graph.node?.length) throw new OnnxFormatError('not an ONNX model (no graph or no nodes)');
  return m;
}

export function encodeModel(m: ModelProto): Uint8Array {
  return onnx.ModelProto.encode(m).finish();
}

/** Deep copy through the wire format (quantization never mutates the caller's model). */
export function cloneModel(m: ModelProto): ModelProto {
  return onnx.ModelProto.decode(encodeModel(m));
}

export function dims(t: TensorProto): number[] {
  return (t.dims ?? []).map((d: unknown) => toNum(d));
}

/** Float values of a FLOAT initializer (float_data or little-endian raw_data). */
export function floatData(t: TensorProto): Float32Array {
  if (t.dataType !== DataType.FLOAT) throw new OnnxFormatError(`initializer '${t.name ?? ''}' is not float (data_type ${t.dataType ?? 0})`);
  if (t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL) {
    throw new OnnxFormatError(`initializer '${t.name ?? ''}' uses external data; give the model with weights inside the file`);
  }
  const n = dims(t).reduce((a, b) => a * b, 1);
  if (t.rawData && t.rawData.length) {
    if (t.rawData.length !== n * 4) throw new OnnxFormatError(`initializer '${t.name ?? ''}' raw_data has ${t.rawData.length} bytes, expected ${n * 4}`);
    const copy = new Uint8Array(t.rawData.length);
    copy.set(t.rawData);
    const view = new DataView(copy.buffer);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }
  const fd = t.floatData ?? [];
  if (fd.length !== n) throw new OnnxFormatError(`initializer '${t.name ?? ''}' has ${fd.length} values, expected ${n}`);
  return Float32Array.from(fd);
}

function rawLE(values: ArrayLike<number>, kind: 'f32' | 'i32' | 'i8' | 'u8' | 'i64'): Uint8Array {
  const n = values.length;
  const size = kind === 'f32' || kind === 'i32' ? 4 : kind === 'i64' ? 8 : 1;
  const buf = new Uint8Array(n * size);
  const view = new DataView(buf.buffer);
  for (let i = 0; i < n; i++) {
    const v = values[i] as number;
    if (kind === 'f32') view.setFloat32(4 * i, v, true);
    else if (kind === 'i32') view.setInt32(4 * i, v, true);
    else if (kind === 'i64') view.setBigInt64(8 * i, BigInt(v), true);
    else if (kind === 'i8') view.setInt8(i, v);
    else view.setUint8(i, v);
  }
  return buf;
}

const KIND: Record<number, 'f32' | 'i32' | 'i8' | 'u8' | 'i64'> = {
  [DataType.FLOAT]: 'f32',
  [DataType.INT32]: 'i32',
  [DataType.INT8]: 'i8',
  [DataType.UINT8]: 'u8',
  [DataType.INT64]: 'i64',
};

export function makeTensor(name: string, dataType: number, shape: number[], values: ArrayLike<number>): TensorProto {
  const kind = KIND[dataType];
  if (!kind) throw new Error(`makeTensor: unsupported data type ${dataType}`);
  return onnx.TensorProto.create({ name, dataType, dims: shape, rawData: rawLE(values, kind) });
}

export function attrInt(name: string, i: number): AttributeProto {
  return onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INT, i });
}

export function attrFloat(name: string, f: number): AttributeProto {
  return onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.FLOAT, f });
}

export function getAttr(node: NodeProto, name: string): AttributeProto | undefined {
  return (node.attribute ?? []).find((a) => a.name === name);
}

export function attrIntValue(node: NodeProto, name: string, dflt: number): number {
  const a = getAttr(node, name);
  return a ? toNum(a.i as unknown) : dflt;
}

export function makeNode(opType: string, inputs: string[], outputs: string[], name: string, attrs: AttributeProto[] = [], domain = ''): NodeProto {
  return onnx.NodeProto.create({ opType, input: inputs, output: outputs, name, attribute: attrs, domain });
}

/** Graph output for a float tensor without a fixed shape (exposes an intermediate activation). */
export function floatValueInfo(name: string): OnnxNs.IValueInfoProto {
  return onnx.ValueInfoProto.create({
    name,
    type: onnx.TypeProto.create({ tensorType: onnx.TypeProto.Tensor.create({ elemType: DataType.FLOAT }) }),
  });
}

/** Initializers by name. */
export function initializerMap(g: GraphProto): Map<string, TensorProto> {
  const m = new Map<string, TensorProto>();
  for (const t of g.initializer ?? []) if (t.name) m.set(t.name, t);
  return m;
}

/** Outputs of Constant nodes, so they are treated like initializers (never activations). */
export function constantOutputs(g: GraphProto): Set<string> {
  const s = new Set<string>();
  for (const n of g.node ?? []) if (n.opType === 'Constant') for (const o of n.output ?? []) s.add(o);
  return s;
}

/** tensor name -> nodes consuming it. */
export function consumers(g: GraphProto): Map<string, NodeProto[]> {
  const m = new Map<string, NodeProto[]>();
  for (const n of g.node ?? []) {
    for (const i of n.input ?? []) {
      if (!i) continue;
      const list = m.get(i) ?? [];
      list.push(n);
      m.set(i, list);
    }
  }
  return m;
}

/** tensor name -> node producing it. */
export function producers(g: GraphProto): Map<string, NodeProto> {
  const m = new Map<string, NodeProto>();
  for (const n of g.node ?? []) for (const o of n.output ?? []) if (o) m.set(o, n);
  return m;
}

/** The default-domain opset version the model imports. */
export function opsetVersion(m: ModelProto): number {
  const o = (m.opsetImport ?? []).find((x) => !x.domain || x.domain === 'ai.onnx');
  return o ? toNum(o.version as unknown) : 0;
}
