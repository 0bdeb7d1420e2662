/**
 * `edge-agent doctor`, run as a user runs it (the compiled CLI; `npm test` builds first). It must tell
 * the truth about THIS machine, so expectations are derived from facts checked here independently of
 * the doctor (are ORT's CUDA provider libraries on disk? is there a GPU device node? did tfjs-node
 * install?), not hard-coded to one box.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { CONFIG_PROVIDERS, type DoctorReport, type ProviderStatus } from '../../src/runtimes/doctor.js';
import { defaultRegistry } from '../../src/runtimes/registry.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'dist', 'agent', 'cli.js');
const require = createRequire(import.meta.url);

function doctor(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'doctor', ...args], { encoding: 'utf8', cwd: ROOT, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** ORT's CUDA/TensorRT EPs need libonnxruntime_providers_{shared,cuda}.so next to the binding (postinstall download). */
function ortCudaLibsPresent(): boolean {
  const bin = path.join(path.dirname(require.resolve('onnxruntime-node')), '..', 'bin');
  const found: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else found.push(e.name);
    }
  };
  if (existsSync(bin)) walk(bin);
  return found.includes('libonnxruntime_providers_cuda.so') && found.includes('libonnxruntime_providers_shared.so');
}

function gpuNodePresent(): boolean {
  if (existsSync('/dev/nvidia0')) return true;
  try {
    return readdirSync('/dev/dri').some((n) => n.startsWith('renderD'));
  } catch {
    return false;
  }
}

function tfjsNodeInstalled(): boolean {
  try {
    require.resolve('@tensorflow/tfjs-node');
    return true;
  } catch {
    return false;
  }
}

let report: DoctorReport;
const provider = (runtime: string, name: string): ProviderStatus | undefined =>
  report.runtimes.find((r) => r.type === runtime)?.providers.find((p) => p.name === name);

beforeAll(() => {
  const r = doctor('--json');
  expect(r.status, r.stderr).toBe(0);
  report = JSON.parse(r.stdout) as DoctorReport;
}, 180_000);

describe('edge-agent doctor --json', () => {
  it('lists every registered runtime (onnx, tfjs, tflite)', () => {
    const types = report.runtimes.map((r) => r.type);
    expect(defaultRegistry().types()).toEqual(expect.arrayContaining(['onnx', 'tfjs', 'tflite']));
    for (const t of defaultRegistry().types()) expect(types).toContain(t);
  });

  it('tflite: LiteRT.js available on wasm (XNNPACK); webgpu/webnn unavailable with the reason; says hardware delegates are not reachable', () => {
    const tflite = report.runtimes.find((r) => r.type === 'tflite');
    expect(tflite).toMatchObject({ available: true, version: expect.stringMatching(/^@litertjs\/core 2\./) as unknown });
    expect(tflite?.note).toMatch(/hardware delegates \(GPU, NNAPI.*\) are not reachable from the WASM build of LiteRT\.js in Node/);
    expect(provider('tflite', 'wasm')).toMatchObject({ available: true, detail: expect.stringMatching(/^XNNPACK on the CPU/) as unknown });
    expect(provider('tflite', 'webgpu')).toMatchObject({ available: false, reason: expect.stringMatching(/no WebGPU in Node/) as unknown });
    expect(provider('tflite', 'webnn')?.available).toBe(false);
  });

  it('lists every execution provider the config accepts, each with available/unavailable and a reason when unavailable', () => {
    const onnx = report.runtimes.find((r) => r.type === 'onnx');
    expect(onnx).toMatchObject({ available: true, version: expect.stringMatching(/^1\.30\./) as unknown });
    expect(onnx?.providers.map((p) => p.name)).toEqual([...CONFIG_PROVIDERS]);
    for (const p of onnx?.providers ?? []) {
      expect(typeof p.available).toBe('boolean');
      if (!p.available) expect(p.reason, p.name).toMatch(/\S{3,}/);
    }
  });

  it('cpu is available; cuda and tensorrt are unavailable with the loader error when their libraries are absent', () => {
    expect(provider('onnx', 'cpu')?.available).toBe(true);
    if (ortCudaLibsPresent() && existsSync('/dev/nvidia0')) return; // a CUDA box: nothing to assert about absence
    for (const ep of ['cuda', 'tensorrt']) {
      const p = provider('onnx', ep);
      expect(p?.available, ep).toBe(false);
      expect(p?.reason).toMatch(/Failed to load shared library/);
      if (!ortCudaLibsPresent()) expect(p?.reason).toMatch(/libonnxruntime_providers_shared\.so: cannot open shared object file/);
      expect(p?.detail).toMatch(/postinstall/);
    }
  });

  it('providers this onnxruntime-node build lacks say so; webgpu without a GPU says it found no adapter', () => {
    for (const ep of ['rocm', 'openvino', 'coreml', 'qnn']) {
      expect(provider('onnx', ep)).toMatchObject({ available: false, detail: expect.stringMatching(/not built into this onnxruntime-node/) as unknown });
    }
    if (!gpuNodePresent()) {
      expect(report.machine.gpus).toEqual([]);
      expect(provider('onnx', 'webgpu')).toMatchObject({ available: false, reason: expect.stringMatching(/Failed to get a WebGPU adapter/) as unknown });
    }
  });

  it('tfjs: which backends load (wasm with its SIMD status, cpu) and why tfjs-node does not when it did not install', () => {
    expect(report.runtimes.find((r) => r.type === 'tfjs')).toMatchObject({ available: true, version: '4.22.0' });
    expect(provider('tfjs', 'wasm')).toMatchObject({ available: true, detail: expect.stringMatching(/^SIMD (yes|no), threads no/) as unknown });
    expect(provider('tfjs', 'cpu')?.available).toBe(true);
    const node = provider('tfjs', 'tfjs-node');
    if (tfjsNodeInstalled()) expect(node?.available).toBe(true);
    else expect(node).toMatchObject({ available: false, reason: expect.stringMatching(/not installed/) as unknown });
  });
});

describe('edge-agent doctor (table)', () => {
  it('prints one row per runtime and provider with its status', () => {
    const r = doctor();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^RUNTIME\s+PROVIDER\s+STATUS\s+REASON \/ DETAIL$/m);
    expect(r.stdout).toMatch(/^onnx\s+-\s+available\s+version 1\.30\./m);
    expect(r.stdout).toMatch(/^\s+cpu\s+available\b/m);
    expect(r.stdout).toMatch(/^\s+wasm\s+available\s+SIMD/m);
    expect(r.stdout).toMatch(/^tflite\s+-\s+available\s+version @litertjs\/core 2\./m);
    expect(r.stdout).toMatch(/hardware delegates .* not reachable/);
    for (const ep of CONFIG_PROVIDERS) expect(r.stdout).toMatch(new RegExp(`^\\s+${ep}\\s+(available|unavailable)\\b`, 'm'));
  }, 180_000);
});
