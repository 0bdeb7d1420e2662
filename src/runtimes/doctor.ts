/**
 * What this machine can actually run: every registered runtime, and for each one its execution
 * providers / backends, with `available` or `unavailable` and the reason found by TRYING (never by
 * guessing from the platform):
 *  - onnx: one tiny session (a 1-op Relu model) per execution provider ALONE, each in its own child
 *    process, so a provider that aborts in native code cannot take the caller down and ORT's native
 *    log lines (e.g. which shared library is missing) can be read back as part of the reason;
 *  - tfjs: each backend is initialised (tfjs-node, tfjs-node-gpu, wasm with its SIMD/threads status,
 *    webgpu, cpu);
 *  - tflite: LiteRT.js's WASM module is loaded and each accelerator reported (wasm/XNNPACK with the
 *    build it picked, webgpu, webnn); hardware delegates are not reachable from Node's WASM build.
 * Used by `edge-agent doctor` (agent/doctor-cli.ts).
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { OnnxRuntime } from './onnx.js';
import type { RuntimeRegistry } from './registry.js';
import { TfjsRuntime } from './tfjs.js';
import { HARDWARE_DELEGATES_NOTE, TfliteRuntime } from './tflite.js';

/** Every execution provider name the device config accepts (model.providers), in the schema's order. */
export const CONFIG_PROVIDERS = ['tensorrt', 'cuda', 'rocm', 'migraphx', 'openvino', 'dml', 'coreml', 'qnn', 'xnnpack', 'webgpu', 'cpu'] as const;

export interface ProviderStatus {
  name: string;
  available: boolean;
  reason?: string;
  /** Extra facts (e.g. wasm SIMD) or what would make an unavailable provider work. */
  detail?: string;
}

export interface RuntimeStatus {
  type: string;
  available: boolean;
  version?: string;
  reason?: string;
  /** onnx: execution providers; tfjs: backends; tflite: LiteRT.js accelerators. */
  providers: ProviderStatus[];
  note?: string;
}

export interface MachineFacts {
  platform: string;
  arch: string;
  cpus: number;
  cpuModel: string;
  memoryMb: number;
  node: string;
  /** GPU devices the kernel exposes (NVIDIA driver entries, DRM render nodes); empty: none. */
  gpus: string[];
}

export interface DoctorReport {
  machine: MachineFacts;
  runtimes: RuntimeStatus[];
}

/** A valid ONNX model (opset 13, IR 7): y = Relu(x), x/y float32 [1,4]. Generated with onnx.helper; 92 bytes. */
const PROBE_MODEL_B64 = 'CAcSEWVkZ2UtYWdlbnQtZG9jdG9yOj8KDAoBeBIBeSIEUmVsdRIFcHJvYmVaEwoBeBIOCgwIARIICgIIAQoCCARiEwoBeRIOCgwIARIICgIIAQoCCARCBAoAEA0=';

/** Runs in a child: create a session with ONE provider, run it once, print one JSON line. */
const PROBE_SCRIPT = `
const [ortPath, ep, b64] = process.argv.slice(1);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
(async () => {
  let ort;
  try { ort = require(ortPath); } catch (e) { out({ ok: false, stage: 'import', message: String(e && e.message || e) }); return; }
  try {
    const s = await ort.InferenceSession.create(new Uint8Array(Buffer.from(b64, 'base64')), { executionProviders: [ep] });
    const r = await s.run({ x: new ort.Tensor('float32', Float32Array.from([-1, 2, -3, 4]), [1, 4]) });
    const y = Array.from(r.y.data);
    await s.release();
    out(y.join(',') === '0,2,0,4' ? { ok: true } : { ok: false, stage: 'run', message: 'wrong result ' + y.join(',') });
  } catch (e) { out({ ok: false, stage: 'session', message: String(e && e.message || e) }); }
})();
`;

function oneLine(s: string, max = 400): string {
  const t = s.replace(/\u001b\[[0-9;]*m/g, '').replace(/\s+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 3)}...` : t;
}

/** The most telling native log line ORT printed (missing library, missing device), if any. */
function nativeCause(stderr: string): string | undefined {
  const lines = stderr.split('\n').map((l) => oneLine(l, 1000)).filter(Boolean);
  const so = lines.map((l) => /([\w.+-]+\.so(?:\.\d+)*): cannot open shared object file/.exec(l)).find(Boolean);
  if (so) return `${so[1]}: cannot open shared object file`;
  const vk = lines.find((l) => /Couldn't load Vulkan/.test(l));
  if (vk) return oneLine(vk.replace(/\s+at operator\(\).*$/, ''), 160);
  return undefined;
}

function probeEpInChild(ortPath: string, ep: string, timeoutMs: number): Promise<{ ok: boolean; message?: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', PROBE_SCRIPT, ortPath, ep, PROBE_MODEL_B64], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const line = stdout.trim().split('\n').pop() ?? '';
      try {
        const r = JSON.parse(line) as { ok: boolean; message?: string };
        resolve({ ...r, stderr });
      } catch {
        const how = signal === 'SIGKILL' ? `did not answer within ${timeoutMs} ms` : signal ? `crashed (${signal})` : `exited ${code}`;
        resolve({ ok: false, message: `session creation ${how}${stderr ? `: ${oneLine(stderr, 200)}` : ''}`, stderr });
      }
    });
  });
}

/** Why an unavailable ORT provider is unavailable, in words an operator can act on. */
function ortHint(ep: string, builtIn: { name: string; bundled: boolean }[]): string | undefined {
  const b = builtIn.find((x) => x.name === ep);
  if (!b) {
    return `not built into this onnxruntime-node (${os.platform()}/${os.arch()} build has: ${builtIn.map((x) => x.name + (x.bundled ? '' : '*')).join(', ')}; * = provider libraries installed separately)`;
  }
  if (!b.bundled) {
    return `its provider libraries are downloaded by onnxruntime-node's postinstall (skipped here by .npmrc onnxruntime-node-install=skip) and need an NVIDIA GPU with CUDA 12 + cuDNN 9${ep === 'tensorrt' ? ' + TensorRT 10' : ''}`;
  }
  if (ep === 'webgpu') return 'bundled, but needs a GPU adapter through Vulkan (Linux) / D3D12 (Windows) / Metal (macOS)';
  return undefined;
}

async function onnxStatus(timeoutMs: number): Promise<RuntimeStatus> {
  const rt = new OnnxRuntime();
  const p = await rt.probe();
  const status: RuntimeStatus = { type: 'onnx', available: p.available, providers: [] };
  if (p.version) status.version = p.version;
  if (!p.available) {
    if (p.reason) status.reason = p.reason;
    status.providers = CONFIG_PROVIDERS.map((name) => ({ name, available: false, reason: p.reason ?? 'onnxruntime-node does not load' }));
    return status;
  }
  const builtIn = await rt.supportedProviders();
  const ortPath = createRequire(import.meta.url).resolve('onnxruntime-node');
  for (const ep of CONFIG_PROVIDERS) {
    const r = await probeEpInChild(ortPath, ep, timeoutMs);
    if (r.ok) {
      const s: ProviderStatus = { name: ep, available: true };
      if (ep === 'cpu') s.detail = 'always the last resort';
      status.providers.push(s);
      continue;
    }
    const cause = nativeCause(r.stderr);
    // ORT prefixes some errors with its source location and the failed assertion: keep the message.
    const message = oneLine(r.message ?? 'failed').replace(/^\/onnxruntime_src\/.*? was false\. /, '');
    const s: ProviderStatus = { name: ep, available: false, reason: message + (cause ? ` (${cause})` : '') };
    const hint = ortHint(ep, builtIn);
    if (hint) s.detail = hint;
    status.providers.push(s);
  }
  return status;
}

async function tfjsStatus(): Promise<RuntimeStatus> {
  const rt = new TfjsRuntime();
  const p = await rt.probe();
  const status: RuntimeStatus = { type: 'tfjs', available: p.available, providers: [] };
  if (p.version) status.version = p.version;
  if (p.reason) status.reason = p.reason;
  for (const b of await rt.backends()) {
    const s: ProviderStatus = { name: b.name, available: b.available };
    if (b.reason) s.reason = b.reason;
    if (b.detail) s.detail = b.detail;
    status.providers.push(s);
  }
  status.note = 'backend order: tfjs-node, wasm, cpu (first that loads); the backend in use is each result\'s model.provider';
  return status;
}

async function tfliteStatus(): Promise<RuntimeStatus> {
  const rt = new TfliteRuntime();
  const p = await rt.probe();
  const status: RuntimeStatus = { type: 'tflite', available: p.available, providers: [] };
  if (p.version) status.version = `@litertjs/core ${p.version}`;
  if (p.reason) status.reason = p.reason;
  for (const a of await rt.accelerators()) {
    const s: ProviderStatus = { name: a.name, available: a.available };
    if (a.reason) s.reason = a.reason;
    if (a.detail) s.detail = a.detail;
    status.providers.push(s);
  }
  status.note = HARDWARE_DELEGATES_NOTE;
  return status;
}

function gpuDevices(): string[] {
  const gpus: string[] = [];
  try {
    for (const id of readdirSync('/proc/driver/nvidia/gpus')) {
      const info = readFileSync(`/proc/driver/nvidia/gpus/${id}/information`, 'utf8');
      gpus.push(`NVIDIA ${/Model:\s*(.+)/.exec(info)?.[1]?.trim() ?? id}`);
    }
  } catch {
    // no NVIDIA driver
  }
  try {
    for (const n of readdirSync('/dev/dri')) if (n.startsWith('renderD')) gpus.push(`/dev/dri/${n}`);
  } catch {
    // no DRM devices
  }
  if (!gpus.length && existsSync('/dev/nvidia0')) gpus.push('/dev/nvidia0');
  return gpus;
}

export function machineFacts(): MachineFacts {
  const cpus = os.cpus();
  return {
    platform: os.platform(),
    arch: os.arch(),
    cpus: os.availableParallelism(),
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryMb: Math.round(os.totalmem() / 2 ** 20),
    node: process.version,
    gpus: gpuDevices(),
  };
}

/** Probes every runtime in `registry` (and says so when tflite is not registered). Never throws. */
export async function diagnose(registry: RuntimeRegistry, opts: { providerTimeoutMs?: number } = {}): Promise<DoctorReport> {
  const runtimes: RuntimeStatus[] = [];
  for (const type of registry.types()) {
    if (type === 'onnx') runtimes.push(await onnxStatus(opts.providerTimeoutMs ?? 20_000));
    else if (type === 'tfjs') runtimes.push(await tfjsStatus());
    else if (type === 'tflite') runtimes.push(await tfliteStatus());
    else {
      const p = await registry.probe(type);
      const s: RuntimeStatus = { type, available: p.available, providers: [] };
      if (p.version) s.version = p.version;
      if (p.reason) s.reason = p.reason;
      runtimes.push(s);
    }
  }
  if (!registry.has('tflite')) {
    runtimes.push({
      type: 'tflite',
      available: false,
      reason: 'not registered in this registry',
      providers: [],
      note: HARDWARE_DELEGATES_NOTE,
    });
  }
  return { machine: machineFacts(), runtimes };
}
