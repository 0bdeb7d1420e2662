import path from 'node:path';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { OnnxRuntime, loadOrt, ortProviderName, providerPlan, warmUp } from '../../src/runtimes/onnx.js';
import { RuntimeRegistry, defaultRegistry, getRuntime } from '../../src/runtimes/registry.js';
import type { RuntimeLoadOptions } from '../../src/runtimes/types.js';
import { BUNDLE_DIR } from '../models/helpers.js';

const MODEL = path.join(BUNDLE_DIR, 'model.onnx');
const opts = (over: Partial<RuntimeLoadOptions> = {}): RuntimeLoadOptions => ({
  providers: ['cpu'],
  intraOpThreads: 1,
  interOpThreads: 1,
  graphOptimization: 'all',
  ...over,
});

describe('provider names and plan', () => {
  it('maps friendly names to ORT execution provider names', () => {
    expect(ortProviderName('CUDA')).toBe('cuda');
    expect(ortProviderName('TensorRT')).toBe('tensorrt');
    expect(ortProviderName('directml')).toBe('dml');
    expect(ortProviderName('gpu')).toBe('cuda');
    expect(ortProviderName('coreml')).toBe('coreml');
    expect(ortProviderName('openvino')).toBe('openvino');
  });

  it('tries providers one at a time, de-duplicated, with cpu always last', () => {
    expect(providerPlan(['cuda', 'webgpu'])).toEqual(['cuda', 'webgpu', 'cpu']);
    expect(providerPlan(['cpu', 'cuda', 'gpu'])).toEqual(['cuda', 'cpu']);
    expect(providerPlan([])).toEqual(['cpu']);
  });
});

describe('OnnxRuntime on the shipped model', () => {
  it('probes onnxruntime-node as available with its version', async () => {
    const p = await new OnnxRuntime().probe();
    expect(p.available).toBe(true);
    expect(p.version).toMatch(/^1\.30\./);
  });

  it("falls back ['cuda','webgpu','cpu'] one provider at a time and ends on cpu with both failure reasons", async () => {
    const session = await new OnnxRuntime().load(MODEL, opts({ providers: ['cuda', 'webgpu', 'cpu'] }));
    try {
      expect(session.provider).toBe('cpu');
      expect(session.attempts.map((a) => [a.provider, a.ok])).toEqual([
        ['cuda', false],
        ['webgpu', false],
        ['cpu', true],
      ]);
      const [cuda, webgpu] = session.attempts;
      // the reasons ORT gives on a box without CUDA libs / GPU adapter
      expect(cuda?.reason).toMatch(/shared library|cuda/i);
      expect(webgpu?.reason).toMatch(/webgpu|adapter/i);
      const out = await session.run(new Float32Array(128 * 128), [1, 1, 128, 128]);
      expect(out.shape).toEqual([1, 4]);
    } finally {
      await session.dispose();
    }
  });

  it('appends cpu when the preference list lacks it', async () => {
    const session = await new OnnxRuntime().load(MODEL, opts({ providers: ['tensorrt'] }));
    try {
      expect(session.provider).toBe('cpu');
      expect(session.attempts[0]).toMatchObject({ provider: 'tensorrt', ok: false });
      expect(session.attempts[0]?.reason).toBeTruthy();
    } finally {
      await session.dispose();
    }
  });

  it('runs a dynamic batch and gives the same logits at every graph optimisation level and thread count', async () => {
    const x = new Float32Array(3 * 128 * 128);
    for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.001) * 2;
    const results: Float32Array[] = [];
    for (const [graphOptimization, intraOpThreads] of [['disabled', 1], ['basic', 2], ['all', 2]] as const) {
      const s = await new OnnxRuntime().load(MODEL, opts({ graphOptimization, intraOpThreads }));
      try {
        expect(s.inputName).toBe('input');
        expect(s.outputName).toBe('logits');
        const out = await s.run(x, [3, 1, 128, 128]);
        expect(out.shape).toEqual([3, 4]);
        results.push(out.data);
      } finally {
        await s.dispose();
      }
    }
    for (const r of results.slice(1)) for (let i = 0; i < r.length; i++) expect(r[i]).toBeCloseTo(results[0]?.[i] as number, 3);
  });

  it('rejects an input whose length does not match its shape, and a missing graph input name', async () => {
    const rt = new OnnxRuntime();
    const s = await rt.load(MODEL, opts());
    try {
      await expect(s.run(new Float32Array(10), [1, 1, 128, 128])).rejects.toThrow(/10 values/);
    } finally {
      await s.dispose();
    }
    await expect(rt.load(MODEL, opts(), { inputName: 'image' })).rejects.toThrow(/inputs \[input\]/);
  });

  it('reports a model file that does not exist with the path in every attempt', async () => {
    await expect(new OnnxRuntime().load('/nonexistent/model.onnx', opts({ providers: ['cpu'] }))).rejects.toThrow(
      /no execution provider could load \/nonexistent\/model\.onnx \(cpu: /,
    );
  });

  it('warms up with N dummy inferences', async () => {
    const s = await new OnnxRuntime().load(MODEL, opts());
    try {
      const times = await warmUp(s, [1, 1, 128, 128], 4);
      expect(times).toHaveLength(4);
      for (const t of times) expect(t).toBeGreaterThan(0);
    } finally {
      await s.dispose();
    }
  });
});

describe('runtime registry', () => {
  it('has onnx registered and probes it as available', async () => {
    const reg = defaultRegistry();
    expect(reg.types()).toContain('onnx');
    expect(getRuntime('onnx').type).toBe('onnx');
    const probes = await reg.probeAll();
    expect(probes.find((p) => p.type === 'onnx')).toMatchObject({ available: true });
  });

  it('reports a runtime whose native module fails to import as unavailable with the reason, without throwing', async () => {
    // a real import failure: a native package that is not installed here
    const broken = new OnnxRuntime(() => Promise.resolve().then(() => createRequire(import.meta.url)('onnxruntime-node-gpu-not-installed') as Awaited<ReturnType<typeof loadOrt>>));
    const reg = new RuntimeRegistry().register('onnx', () => broken).register('tflite', () => {
      throw new Error('tflite binding not built');
    });
    const onnx = await reg.probe('onnx');
    expect(onnx.available).toBe(false);
    expect(onnx.reason).toMatch(/onnxruntime-node failed to load: .*Cannot find module 'onnxruntime-node-gpu-not-installed'/);
    const tflite = await reg.probe('tflite');
    expect(tflite).toMatchObject({ type: 'tflite', available: false });
    expect(tflite.reason).toMatch(/tflite binding not built/);
    expect(await reg.probe('tfjs')).toMatchObject({ available: false, reason: expect.stringMatching(/unknown runtime 'tfjs'/) as unknown });
    expect(() => reg.get('tfjs')).toThrow(/registered: onnx, tflite/);
  });
});
