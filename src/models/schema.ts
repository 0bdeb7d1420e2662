/**
 * JSON Schema (draft-07, Ajv) for a bundle's manifest.json. Mirrors `Manifest` in ./types.ts.
 * Unknown top-level keys are allowed (forward compatible: later issues add `signature` etc.), but every
 * known key is checked strictly.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { Manifest } from './types.js';

const windowSpec = {
  type: 'object',
  required: ['center', 'width'],
  additionalProperties: false,
  properties: { center: { type: 'number' }, width: { type: 'number', exclusiveMinimum: 0 } },
} as const;

/** files[].provenance written by edge-quantize (quantize/run.ts); extra keys allowed. */
const quantizeProvenance = {
  type: 'object',
  required: ['quantizedFrom', 'mode', 'evaluation', 'speedup', 'machine', 'gate'],
  properties: {
    quantizedFrom: {
      type: 'object',
      required: ['path', 'sha256'],
      properties: { path: { type: 'string', minLength: 1 }, sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' } },
    },
    mode: { enum: ['static', 'dynamic'] },
    method: { enum: ['minmax', 'percentile', 'entropy', null] },
    calibration: {
      type: ['object', 'null'],
      required: ['files', 'inputs', 'sha256'],
      properties: { files: { type: 'integer', minimum: 0 }, inputs: { type: 'integer', minimum: 1 }, sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' } },
    },
    evaluation: {
      type: 'object',
      required: ['cases', 'fp32Accuracy', 'int8Accuracy', 'accuracyDeltaPoints', 'labelAgreement'],
      properties: {
        cases: { type: 'integer', minimum: 1 },
        fp32Accuracy: { type: 'number', minimum: 0, maximum: 1 },
        int8Accuracy: { type: 'number', minimum: 0, maximum: 1 },
        accuracyDeltaPoints: { type: 'number' },
        labelAgreement: { type: 'number', minimum: 0, maximum: 1 },
      },
    },
    speedup: { type: 'number', exclusiveMinimum: 0 },
    machine: { type: 'object' },
    gate: {
      type: 'object',
      required: ['passed', 'failures', 'forced'],
      properties: { passed: { type: 'boolean' }, failures: { type: 'array', items: { type: 'string' } }, forced: { type: 'boolean' } },
    },
  },
} as const;

export const manifestSchema = {
  $id: 'https://imaging-edge-agent/schemas/manifest.json',
  type: 'object',
  required: ['id', 'version', 'task', 'labels', 'input', 'output', 'files'],
  properties: {
    id: { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' },
    version: {
      type: 'string',
      // semver 2.0.0
      pattern:
        '^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)(?:-((?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\\.(?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\\+([0-9a-zA-Z-]+(?:\\.[0-9a-zA-Z-]+)*))?$',
    },
    task: { type: 'string', minLength: 1 },
    description: { type: 'string' },
    labels: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', minLength: 1 } },
    input: {
      type: 'object',
      required: ['name', 'layout', 'shape', 'dtype', 'channels', 'normalisation', 'resize'],
      additionalProperties: false,
      properties: {
        name: { type: 'string', minLength: 1 },
        layout: { enum: ['NCHW', 'NHWC'] },
        shape: {
          type: 'array',
          minItems: 4,
          maxItems: 4,
          items: [{ type: 'integer', minimum: -1, not: { const: 0 } }, { type: 'integer', minimum: 1 }, { type: 'integer', minimum: 1 }, { type: 'integer', minimum: 1 }],
        },
        dtype: { const: 'float32' },
        channels: { enum: [1, 3] },
        normalisation: {
          type: 'object',
          required: ['mean', 'std'],
          additionalProperties: false,
          properties: {
            mean: { type: 'array', minItems: 1, maxItems: 3, items: { type: 'number' } },
            std: { type: 'array', minItems: 1, maxItems: 3, items: { type: 'number', exclusiveMinimum: 0 } },
          },
        },
        resize: { enum: ['stretch', 'letterbox', 'crop'] },
        windowing: { type: 'object', additionalProperties: windowSpec },
      },
    },
    output: {
      type: 'object',
      required: ['name', 'activation'],
      additionalProperties: false,
      properties: { name: { type: 'string', minLength: 1 }, activation: { enum: ['softmax', 'sigmoid', 'none'] } },
    },
    files: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['path', 'format', 'precision', 'sha256', 'size'],
        additionalProperties: false,
        properties: {
          path: { type: 'string', minLength: 1 },
          format: { enum: ['onnx', 'tflite', 'tfjs'] },
          precision: { enum: ['fp32', 'int8'] },
          sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
          size: { type: 'integer', minimum: 1 },
          // Max abs difference this file's outputs may have from the golden logits (./golden.ts), e.g. an
          // int8 file checked against fp32 references; and how the file was made (converter, ranges).
          goldenTolerance: { type: 'number', exclusiveMinimum: 0 },
          provenance: { type: 'object' },
        },
        // A file made by edge-quantize (quantize/) carries the figures that justify it: how it was
        // calibrated, accuracy against its fp32 source, speedup, machine, and the gate's verdict.
        if: { required: ['provenance'], properties: { provenance: { required: ['tool'], properties: { tool: { const: 'edge-quantize' } } } } },
        then: { properties: { provenance: quantizeProvenance } },
      },
    },
    // Golden checks (./golden.ts): a real pre-processed input tensor (raw little-endian float32 file in
    // the bundle) and the reference raw model output. Extra keys (frame, label, source...) are allowed.
    golden: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'input', 'logits'],
        properties: {
          name: { type: 'string', minLength: 1 },
          input: {
            type: 'object',
            required: ['path', 'shape', 'sha256', 'size'],
            properties: {
              path: { type: 'string', minLength: 1 },
              shape: { type: 'array', minItems: 1, items: { type: 'integer', minimum: 1 } },
              dtype: { const: 'float32-le' },
              sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
              size: { type: 'integer', minimum: 4 },
            },
          },
          logits: { type: 'array', minItems: 1, items: { type: 'number' } },
          /** Max abs difference allowed per output value (default: see golden.ts). */
          tolerance: { type: 'number', exclusiveMinimum: 0 },
        },
      },
    },
    /** Default golden tolerance for entries without their own. */
    goldenTolerance: { type: 'number', exclusiveMinimum: 0 },
    provenance: { type: 'object' },
    minAgentVersion: { type: 'string' },
  },
} as const;

let validator: ValidateFunction | undefined;

function compiled(): ValidateFunction {
  validator ??= new Ajv({ allErrors: true, strict: false }).compile(manifestSchema);
  return validator;
}

/** `path: message` for one Ajv error (path is the JSON pointer, `/` for the root). */
export function formatAjvError(e: ErrorObject): string {
  const at = e.instancePath || '/';
  const params = e.params as Record<string, unknown>;
  if (e.keyword === 'required') return `${at}: must have property '${String(params.missingProperty)}'`;
  if (e.keyword === 'additionalProperties') return `${at}: unknown property '${String(params.additionalProperty)}'`;
  if (e.keyword === 'enum') return `${at}: ${e.message ?? 'invalid'} (${(params.allowedValues as unknown[]).map(String).join(', ')})`;
  return `${at}: ${e.message ?? 'invalid'}`;
}

/** Validates a parsed manifest. Returns every problem, or [] when valid. */
export function validateManifest(value: unknown): { ok: true; manifest: Manifest } | { ok: false; errors: string[] } {
  const v = compiled();
  if (v(value)) {
    const m = value as Manifest;
    const errors = semanticErrors(m);
    return errors.length ? { ok: false, errors } : { ok: true, manifest: m };
  }
  const errors = (v.errors ?? []).map(formatAjvError);
  return { ok: false, errors: [...new Set(errors)] };
}

/** Cross-field rules JSON Schema cannot say simply. */
function semanticErrors(m: Manifest): string[] {
  const errors: string[] = [];
  const { input } = m;
  const c = input.layout === 'NCHW' ? input.shape[1] : input.shape[3];
  if (c !== input.channels) errors.push(`/input/shape: channel dimension ${String(c)} does not match channels ${input.channels}`);
  if (input.normalisation.mean.length !== input.channels) {
    errors.push(`/input/normalisation/mean: needs ${input.channels} values, has ${input.normalisation.mean.length}`);
  }
  if (input.normalisation.std.length !== input.channels) {
    errors.push(`/input/normalisation/std: needs ${input.channels} values, has ${input.normalisation.std.length}`);
  }
  const seen = new Set<string>();
  m.files.forEach((f, i) => {
    if (seen.has(f.path)) errors.push(`/files/${i}/path: duplicate path '${f.path}'`);
    seen.add(f.path);
  });
  return errors;
}
