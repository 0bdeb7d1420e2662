/**
 * Graph rewrites: static quantization to ONNX QDQ, and dynamic quantization.
 *
 * Static (QDQ, the format ONNX Runtime fuses into QLinearConv / QGemm / QLinear* kernels at graph
 * optimisation `extended` or `all`):
 * - weights of Conv, Gemm and MatMul (initializers): int8, symmetric ([-127, 127], zero point 0), one
 *   scale per output channel, stored quantized and read through DequantizeLinear(axis);
 * - bias (Conv, Gemm C): int32, zero point 0, scale = input scale x weight scale of the channel;
 * - activations: uint8 (default) or int8, asymmetric, scale/zero point from the calibrated range; a
 *   QuantizeLinear -> DequantizeLinear pair follows the producer of each quantized tensor;
 * - a Relu right after a quantized Conv/Gemm/MatMul that is its only consumer is folded into the
 *   quantization of its output (range [0, max]: zero point at the lowest level clamps like Relu);
 * - MaxPool, Flatten, Reshape, Transpose, Squeeze, Unsqueeze whose input is quantized are quantized
 *   with their input's scale/zero point (ORT then runs them on 8-bit data); GlobalAveragePool and
 *   AveragePool get their own calibrated output range;
 * - every other op (and any node named by --keep-fp32, by op type or node name) stays fp32: it reads
 *   the dequantized tensor and its output stays float.
 *
 * Dynamic: weights int8 per channel as above; activations quantized at run time
 * (DynamicQuantizeLinear, uint8) into MatMulInteger / ConvInteger, then rescaled to float. No calibration.
 */
import {
  attrInt,
  attrIntValue,
  constantOutputs,
  consumers,
  DataType,
  dims,
  floatData,
  getAttr,
  initializerMap,
  makeNode,
  makeTensor,
  onnx,
  opsetVersion,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx.js';
import type { Range } from './calibrate.js';

export type ActivationType = 'uint8' | 'int8';

const COMPUTE = new Set(['Conv', 'Gemm', 'MatMul']);
const SAME_PARAMS = new Set(['MaxPool', 'Flatten', 'Reshape', 'Transpose', 'Squeeze', 'Unsqueeze']);
const OWN_PARAMS = new Set(['GlobalAveragePool', 'AveragePool']);
/** Ops edge-quantize can quantize (any other op type stays fp32). */
export const QUANTIZABLE_OPS = [...COMPUTE, ...SAME_PARAMS, ...OWN_PARAMS, 'Relu (folded)'];

export interface SkippedNode {
  name: string;
  opType: string;
  reason: string;
}

export interface StaticPlan {
  /** Node name -> how it is quantized. */
  quantized: Map<NodeProto, 'compute' | 'same' | 'own'>;
  /** Relu nodes folded into the preceding compute node's output quantization: relu -> compute node. */
  foldedRelu: Map<NodeProto, NodeProto>;
  /** Activation tensors (fp32 graph names) that need a calibrated range. */
  tensors: string[];
  skipped: SkippedNode[];
}

export interface WeightOnlyParams {
  q: Int8Array;
  scales: Float32Array;
}

function nodeName(n: NodeProto, i: number): string {
  return n.name || `${n.opType ?? 'node'}_${i}`;
}

/** Symmetric per-channel int8 ([-127, 127]) along `axis` of a tensor with shape `shape`. */
export function quantizePerChannel(w: Float32Array, shape: number[], axis: number): WeightOnlyParams {
  const channels = shape[axis] as number;
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const scales = new Float32Array(channels);
  const absMax = new Float64Array(channels);
  for (let i = 0; i < w.length; i++) {
    const c = Math.floor(i / inner) % channels;
    const a = Math.abs(w[i] as number);
    if (a > (absMax[c] as number)) absMax[c] = a;
  }
  for (let c = 0; c < channels; c++) scales[c] = (absMax[c] as number) > 0 ? (absMax[c] as number) / 127 : 1;
  const q = new Int8Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const c = Math.floor(i / inner) % channels;
    q[i] = Math.max(-127, Math.min(127, Math.round((w[i] as number) / (scales[c] as number))));
  }
  return { q, scales };
}

export interface ActParams {
  scale: number;
  zeroPoint: number;
}

/** Asymmetric activation parameters for a range holding 0. */
export function activationParams(r: Range, type: ActivationType): ActParams {
  const min = Math.min(0, r.min);
  const max = Math.max(0, r.max);
  const scale = max > min ? (max - min) / 255 : 1;
  const [qmin, qmax] = type === 'uint8' ? [0, 255] : [-128, 127];
  const zeroPoint = Math.max(qmin, Math.min(qmax, Math.round(qmin - min / scale)));
  return { scale, zeroPoint };
}

function weightInfo(
  node: NodeProto,
  inits: Map<string, TensorProto>,
): { name: string; tensor: TensorProto; axis: number; bias?: string } | string {
  const op = node.opType;
  const wName = node.input?.[1] ?? '';
  const t = inits.get(wName);
  if (!t) return 'weight is not an initializer';
  if (t.dataType !== DataType.FLOAT) return 'weight is not float32';
  const shape = dims(t);
  if (op === 'Conv') {
    if (shape.length < 3) return 'Conv weight rank < 3';
    const bias = node.input?.[2];
    return bias ? { name: wName, tensor: t, axis: 0, bias } : { name: wName, tensor: t, axis: 0 };
  }
  if (shape.length !== 2) return `${op ?? ''} weight is not 2-D`;
  if (op === 'Gemm') {
    const alpha = getAttr(node, 'alpha')?.f ?? 1;
    if (alpha !== 1) return 'Gemm alpha != 1';
    if (attrIntValue(node, 'transA', 0) !== 0) return 'Gemm transA';
    const transB = attrIntValue(node, 'transB', 0);
    const beta = getAttr(node, 'beta')?.f ?? 1;
    const c = node.input?.[2];
    const cT = c ? inits.get(c) : undefined;
    const biasOk = c && cT && beta === 1 && dims(cT).length === 1 && cT.dataType === DataType.FLOAT;
    return biasOk ? { name: wName, tensor: t, axis: transB ? 0 : 1, bias: c } : { name: wName, tensor: t, axis: transB ? 0 : 1 };
  }
  return { name: wName, tensor: t, axis: 1 };
}

/** Which nodes are quantized, which tensors need a range, and why the others stay fp32. */
export function planStatic(model: ModelProto, keepFp32: readonly string[] = []): StaticPlan {
  const g = model.graph as GraphProto;
  if (opsetVersion(model) < 13) throw new Error(`model opset ${opsetVersion(model)} < 13: per-channel DequantizeLinear needs opset 13; re-export the model`);
  const keep = new Set(keepFp32);
  const inits = initializerMap(g);
  const consts = constantOutputs(g);
  const cons = consumers(g);
  const graphOutputs = new Set((g.output ?? []).map((o) => o.name ?? ''));
  const quantized = new Map<NodeProto, 'compute' | 'same' | 'own'>();
  const foldedRelu = new Map<NodeProto, NodeProto>();
  const qTensors = new Set<string>();
  const tensors = new Set<string>();
  const skipped: SkippedNode[] = [];
  const isActivation = (t: string): boolean => Boolean(t) && !inits.has(t) && !consts.has(t);
  (g.node ?? []).forEach((n, i) => {
    const op = n.opType ?? '';
    const name = nodeName(n, i);
    if (op === 'Constant' || foldedRelu.has(n)) return;
    const x = n.input?.[0] ?? '';
    if (keep.has(op) || keep.has(name)) {
      skipped.push({ name, opType: op, reason: '--keep-fp32' });
      return;
    }
    if (COMPUTE.has(op)) {
      const w = weightInfo(n, inits);
      if (typeof w === 'string') {
        skipped.push({ name, opType: op, reason: w });
        return;
      }
      if (!isActivation(x)) {
        skipped.push({ name, opType: op, reason: 'input is a constant' });
        return;
      }
      quantized.set(n, 'compute');
      tensors.add(x);
      qTensors.add(x);
      let y = n.output?.[0] ?? '';
      tensors.add(y);
      const next = cons.get(y) ?? [];
      const relu = next.length === 1 && next[0]?.opType === 'Relu' ? next[0] : undefined;
      if (relu && !graphOutputs.has(y) && !keep.has('Relu') && !keep.has(relu.name ?? '')) {
        foldedRelu.set(relu, n);
        y = relu.output?.[0] ?? '';
        tensors.add(y);
      }
      const after = cons.get(y) ?? [];
      // Conv always gets a quantized output (QLinearConv); Gemm/MatMul only when a consumer is quantizable
      if (op === 'Conv' || foldedRelu.has(relu as NodeProto) || after.some((c) => COMPUTE.has(c.opType ?? '') || SAME_PARAMS.has(c.opType ?? '') || OWN_PARAMS.has(c.opType ?? ''))) {
        qTensors.add(y);
      }
      return;
    }
    if ((SAME_PARAMS.has(op) || OWN_PARAMS.has(op)) && qTensors.has(x)) {
      quantized.set(n, SAME_PARAMS.has(op) ? 'same' : 'own');
      const y = n.output?.[0] ?? '';
      qTensors.add(y);
      if (OWN_PARAMS.has(op)) tensors.add(y);
      return;
    }
    if (SAME_PARAMS.has(op) || OWN_PARAMS.has(op)) {
      skipped.push({ name, opType: op, reason: 'input is not quantized' });
      return;
    }
    if (op === 'Relu') {
      skipped.push({ name, opType: op, reason: 'Relu not directly after a quantized Conv/Gemm/MatMul' });
      return;
    }
    skipped.push({ name, opType: op, reason: `${op} is not an op edge-quantize quantizes` });
  });
  return { quantized, foldedRelu, tensors: [...tensors], skipped };
}

export interface QuantizeResult {
  model: ModelProto;
  /** Op type -> count of quantized nodes (Relu counted as folded). */
  quantizedOps: Record<string, number>;
  skipped: SkippedNode[];
}

/** Applies a plan: returns a new model in QDQ format (the input model is not modified). */
export function quantizeStatic(model: ModelProto, plan: StaticPlan, ranges: Record<string, Range>, actType: ActivationType): QuantizeResult {
  const m = onnx.ModelProto.decode(onnx.ModelProto.encode(model).finish());
  const g = m.graph as GraphProto;
  // the plan holds nodes of the input model: map them by position
  const origNodes = model.graph?.node ?? [];
  const idx = new Map<NodeProto, number>(origNodes.map((n, i) => [n, i]));
  const nodes = g.node ?? [];
  const kindAt = new Map<number, 'compute' | 'same' | 'own'>();
  for (const [n, k] of plan.quantized) kindAt.set(idx.get(n) as number, k);
  const reluAt = new Map<number, number>();
  for (const [r, c] of plan.foldedRelu) reluAt.set(idx.get(c) as number, idx.get(r) as number);
  const foldedIdx = new Set([...reluAt.values()]);

  const inits = initializerMap(g);
  const newInits: TensorProto[] = [];
  const usedWeights = new Map<string, number>();
  for (const n of nodes) for (const i of n.input ?? []) usedWeights.set(i, (usedWeights.get(i) ?? 0) + 1);
  const dropInits = new Set<string>();
  const emitted = new Set<string>();
  const graphOutputs = new Set((g.output ?? []).map((o) => o.name ?? ''));
  const qType = actType === 'uint8' ? DataType.UINT8 : DataType.INT8;

  // tensor -> its QDQ parameter initializers
  const qdq = new Map<string, { scale: string; zp: string; s: number }>();
  const paramsFor = (t: string, from?: string): { scale: string; zp: string; s: number } => {
    const have = qdq.get(t);
    if (have) return have;
    if (from) {
      const p = qdq.get(from);
      if (!p) throw new Error(`internal: '${from}' has no quantization parameters`);
      qdq.set(t, p);
      return p;
    }
    const r = ranges[t];
    if (!r) throw new Error(`no calibrated range for tensor '${t}'`);
    const p = activationParams(r, actType);
    const entry = { scale: `${t}_scale`, zp: `${t}_zero_point`, s: p.scale };
    newInits.push(makeTensor(entry.scale, DataType.FLOAT, [], [p.scale]));
    newInits.push(makeTensor(entry.zp, qType, [], [p.zeroPoint]));
    qdq.set(t, entry);
    return entry;
  };
  const out: NodeProto[] = [];
  const emitQdq = (t: string, src: string, p: { scale: string; zp: string }): void => {
    out.push(makeNode('QuantizeLinear', [src, p.scale, p.zp], [`${t}_QuantizeLinear_Output`], `${t}_QuantizeLinear`));
    out.push(makeNode('DequantizeLinear', [`${t}_QuantizeLinear_Output`, p.scale, p.zp], [t === src ? `${t}_DequantizeLinear_Output` : t], `${t}_DequantizeLinear`));
  };
  const inputRename = new Map<string, string>();
  const counts: Record<string, number> = {};

  const quantizeInput = (t: string): void => {
    if (qdq.has(t)) return;
    // a graph input, or produced earlier by an fp32 node (already emitted): add the pair now and
    // rewire the consumers that follow
    emitQdq(t, t, paramsFor(t));
    inputRename.set(t, `${t}_DequantizeLinear_Output`);
  };

  nodes.forEach((n, i) => {
    if (foldedIdx.has(i)) return;
    const kind = kindAt.get(i);
    const rename = (list: string[]): string[] => list.map((x) => inputRename.get(x) ?? x);
    if (!kind) {
      n.input = rename(n.input ?? []);
      out.push(n);
      return;
    }
    const op = n.opType ?? '';
    counts[op] = (counts[op] ?? 0) + 1;
    const x = n.input?.[0] ?? '';
    if (kind === 'compute') {
      quantizeInput(x);
      const xs = (qdq.get(x) as { s: number }).s;
      const w = weightInfo(model.graph?.node?.[i] as NodeProto, inits);
      if (typeof w === 'string') throw new Error(`internal: ${w}`);
      const wShape = dims(w.tensor);
      const wq = quantizePerChannel(floatData(w.tensor), wShape, w.axis);
      const wName = w.name;
      // a weight shared by several nodes is quantized once (same tensor, same channel axis)
      if (!emitted.has(wName)) {
        emitted.add(wName);
        newInits.push(makeTensor(`${wName}_quantized`, DataType.INT8, wShape, wq.q));
        newInits.push(makeTensor(`${wName}_scale`, DataType.FLOAT, [wq.scales.length], wq.scales));
        newInits.push(makeTensor(`${wName}_zero_point`, DataType.INT8, [wq.scales.length], new Int8Array(wq.scales.length)));
        out.push(makeNode('DequantizeLinear', [`${wName}_quantized`, `${wName}_scale`, `${wName}_zero_point`], [`${wName}_DequantizeLinear_Output`], `${wName}_DequantizeLinear`, [attrInt('axis', w.axis)]));
      }
      // the float weight goes unless a node that stays fp32 (or a graph output) still reads it
      const fp32Reader = nodes.some((m2, j) => kindAt.get(j) !== 'compute' && (m2.input ?? []).includes(wName));
      if (!fp32Reader && !graphOutputs.has(wName)) dropInits.add(wName);
      const inputs = [...(n.input ?? [])];
      inputs[0] = inputRename.get(x) ?? x;
      inputs[1] = `${wName}_DequantizeLinear_Output`;
      if (w.bias) {
        const b = floatData(inits.get(w.bias) as TensorProto);
        if (b.length === wq.scales.length) {
          const bs = new Float32Array(b.length);
          const bq = new Int32Array(b.length);
          for (let c = 0; c < b.length; c++) {
            bs[c] = xs * (wq.scales[c] as number);
            bq[c] = Math.max(-2147483647, Math.min(2147483647, Math.round((b[c] as number) / (bs[c] as number))));
          }
          // the int32 bias depends on this node's input scale: unique per node when shared
          const bName = emitted.has(`bias:${w.bias}`) ? `${w.bias}_${i}` : w.bias;
          emitted.add(`bias:${w.bias}`);
          newInits.push(makeTensor(`${bName}_quantized`, DataType.INT32, [b.length], bq));
          newInits.push(makeTensor(`${bName}_quantized_scale`, DataType.FLOAT, [b.length], bs));
          newInits.push(makeTensor(`${bName}_quantized_zero_point`, DataType.INT32, [b.length], new Int32Array(b.length)));
          out.push(makeNode('DequantizeLinear', [`${bName}_quantized`, `${bName}_quantized_scale`, `${bName}_quantized_zero_point`], [`${bName}_DequantizeLinear_Output`], `${bName}_DequantizeLinear`, [attrInt('axis', 0)]));
          if (usedWeights.get(w.bias) === 1) dropInits.add(w.bias);
          inputs[2] = `${bName}_DequantizeLinear_Output`;
        }
      }
      n.input = inputs;
      // output: the folded Relu's output name, or the node's own
      const ri = reluAt.get(i);
      const y = ri !== undefined ? (nodes[ri]?.output?.[0] ?? '') : (n.output?.[0] ?? '');
      if (ri !== undefined) counts['Relu (folded)'] = (counts['Relu (folded)'] ?? 0) + 1;
      const wantOut = op === 'Conv' || ri !== undefined || consumedByQuantized(plan, y);
      if (wantOut) {
        const p = paramsFor(y);
        n.output = [`${y}_prequant`];
        out.push(n);
        emitQdq(y, `${y}_prequant`, p);
      } else {
        n.output = [y];
        out.push(n);
      }
      return;
    }
    // pools and shape ops: input already quantized (plan guarantees it)
    quantizeInput(x);
    n.input = rename(n.input ?? []);
    const y = n.output?.[0] ?? '';
    const p = kind === 'same' ? paramsFor(y, x) : paramsFor(y);
    n.output = [`${y}_prequant`, ...(n.output ?? []).slice(1)];
    out.push(n);
    emitQdq(y, `${y}_prequant`, p);
  });

  g.node = out;
  g.initializer = [...(g.initializer ?? []).filter((t) => !dropInits.has(t.name ?? '')), ...newInits];
  // value_info of renamed tensors would be stale; ORT re-infers shapes
  g.valueInfo = [];
  m.producerName = 'edge-quantize';
  return { model: m, quantizedOps: counts, skipped: plan.skipped };
}

/** Gemm/MatMul output: quantized when a consumer is itself quantized. */
function consumedByQuantized(plan: StaticPlan, y: string): boolean {
  for (const [n] of plan.quantized) if ((n.input ?? [])[0] === y) return true;
  return false;
}

/**
 * Dynamic quantization: int8 per-channel weights for Conv/Gemm/MatMul, activations quantized per call
 * by DynamicQuantizeLinear (uint8), integer Conv/MatMul, result rescaled (x_scale * w_scale) to float.
 */
export function quantizeDynamic(model: ModelProto, keepFp32: readonly string[] = []): QuantizeResult {
  if (opsetVersion(model) < 13) throw new Error(`model opset ${opsetVersion(model)} < 13; re-export the model`);
  const m = onnx.ModelProto.decode(onnx.ModelProto.encode(model).finish());
  const g = m.graph as GraphProto;
  const inits = initializerMap(g);
  const consts = constantOutputs(g);
  const keep = new Set(keepFp32);
  const used = new Map<string, number>();
  for (const n of g.node ?? []) for (const i of n.input ?? []) used.set(i, (used.get(i) ?? 0) + 1);
  const drop = new Set<string>();
  const newInits: TensorProto[] = [];
  const out: NodeProto[] = [];
  const skipped: SkippedNode[] = [];
  const counts: Record<string, number> = {};
  const dq = new Map<string, string[]>();
  (g.node ?? []).forEach((n, i) => {
    const op = n.opType ?? '';
    const name = nodeName(n, i);
    if (!COMPUTE.has(op) || keep.has(op) || keep.has(name)) {
      if (op !== 'Constant') skipped.push({ name, opType: op, reason: keep.has(op) || keep.has(name) ? '--keep-fp32' : `${op} is not quantized in dynamic mode` });
      out.push(n);
      return;
    }
    const w = weightInfo(n, inits);
    const x = n.input?.[0] ?? '';
    if (typeof w === 'string' || inits.has(x) || consts.has(x)) {
      skipped.push({ name, opType: op, reason: typeof w === 'string' ? w : 'input is a constant' });
      out.push(n);
      return;
    }
    const transB = op === 'Gemm' && attrIntValue(n, 'transB', 0) === 1;
    const wShape = dims(w.tensor);
    let wData = floatData(w.tensor);
    let shape = wShape;
    let axis = w.axis;
    if (transB) {
      // MatMulInteger needs B as [K, N]: transpose once, here
      const [N, K] = wShape as [number, number];
      const t = new Float32Array(wData.length);
      for (let r = 0; r < N; r++) for (let c = 0; c < K; c++) t[c * N + r] = wData[r * K + c] as number;
      wData = t;
      shape = [K, N];
      axis = 1;
    }
    const q = quantizePerChannel(wData, shape, axis);
    const wq = `${w.name}_quantized`;
    // integer kernels take uint8 weights with a zero point everywhere; int8 symmetric + 128 = same grid
    const qu = new Uint8Array(q.q.length);
    for (let k = 0; k < q.q.length; k++) qu[k] = (q.q[k] as number) + 128;
    newInits.push(makeTensor(wq, DataType.UINT8, shape, qu));
    const wzp = `${w.name}_zero_point`;
    // ConvInteger takes a per-tensor weight zero point only; symmetric weights have 128 everywhere
    newInits.push(makeTensor(wzp, DataType.UINT8, [], [128]));
    const channels = q.scales.length;
    const bshape = op === 'Conv' ? [1, channels, ...new Array<number>(wShape.length - 2).fill(1)] : [channels];
    newInits.push(makeTensor(`${w.name}_scale`, DataType.FLOAT, bshape, q.scales));
    if (used.get(w.name) === 1) drop.add(w.name);
    let dqx = dq.get(x);
    if (!dqx) {
      dqx = [`${x}_quantized`, `${x}_scale`, `${x}_zero_point`];
      out.push(makeNode('DynamicQuantizeLinear', [x], dqx, `${x}_DynamicQuantizeLinear`));
      dq.set(x, dqx);
    }
    const y = n.output?.[0] ?? '';
    const integer = `${y}_int32`;
    if (op === 'Conv') {
      out.push(makeNode('ConvInteger', [dqx[0] as string, wq, dqx[2] as string, wzp], [integer], `${name}_ConvInteger`, n.attribute ?? []));
    } else {
      out.push(makeNode('MatMulInteger', [dqx[0] as string, wq, dqx[2] as string, wzp], [integer], `${name}_MatMulInteger`));
    }
    out.push(makeNode('Cast', [integer], [`${y}_float`], `${name}_Cast`, [attrInt('to', DataType.FLOAT)]));
    out.push(makeNode('Mul', [`${y}_float`, dqx[1] as string], [`${y}_xscaled`], `${name}_MulX`));
    const bias = w.bias;
    const scaledName = bias || (op === 'Gemm' && n.input?.[2]) ? `${y}_scaled` : y;
    out.push(makeNode('Mul', [`${y}_xscaled`, `${w.name}_scale`], [scaledName], `${name}_MulW`));
    if (bias) {
      const b = floatData(inits.get(bias) as TensorProto);
      newInits.push(makeTensor(`${bias}_reshaped`, DataType.FLOAT, op === 'Conv' ? bshape : [b.length], b));
      if (used.get(bias) === 1) drop.add(bias);
      out.push(makeNode('Add', [scaledName, `${bias}_reshaped`], [y], `${name}_AddBias`));
    } else if (op === 'Gemm' && n.input?.[2]) {
      // a C that is not a plain bias: beta * C added in float
      const beta = getAttr(n, 'beta')?.f ?? 1;
      out.push(makeNode('Mul', [n.input[2], `${name}_beta`], [`${y}_c`], `${name}_MulBeta`));
      newInits.push(makeTensor(`${name}_beta`, DataType.FLOAT, [], [beta]));
      out.push(makeNode('Add', [scaledName, `${y}_c`], [y], `${name}_AddC`));
    }
    counts[op] = (counts[op] ?? 0) + 1;
  });
  g.node = out;
  g.initializer = [...(g.initializer ?? []).filter((t) => !drop.has(t.name ?? '')), ...newInits];
  g.valueInfo = [];
  m.producerName = 'edge-quantize';
  return { model: m, quantizedOps: counts, skipped };
}
