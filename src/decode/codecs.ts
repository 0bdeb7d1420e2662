/**
 * Lazy, once-only loading of the pixel codecs (emscripten WASM builds from @cornerstonejs and the pure-JS
 * jpeg-lossless-decoder-js), with a typed facade so no `any` leaks out of this file.
 *
 * The emscripten modules are CommonJS factories: `factory(moduleArg) -> Promise<Module>`. Each factory
 * mutates the object it is given into the Module, so every call gets a fresh options object. Their `print`
 * and `printErr` default to console.log / console.error; openjpeg prints INFO lines through them. The
 * `infer` CLI writes NDJSON on stdout, so both are routed to `codecLog` (default: dropped), never to stdout.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export interface FrameInfo {
  width: number;
  height: number;
  bitsPerSample: number;
  componentCount: number;
  isSigned?: boolean;
}

/** The decoder classes all follow chafey's codec API. */
interface WasmDecoder {
  getEncodedBuffer(length: number): Uint8Array;
  getDecodedBuffer(): Uint8Array;
  decode(): void;
  getFrameInfo(): FrameInfo;
  delete(): void;
}

interface HTJ2KEncoderInstance {
  getDecodedBuffer(info: FrameInfo & { isUsingColorTransform: boolean }): Uint8Array;
  getEncodedBuffer(): Uint8Array;
  encode(): void;
  setQuality(reversible: boolean, quantizationStep: number): void;
  setDecompositions(n: number): void;
  delete(): void;
}

/** The slice of the WebAssembly JS API used here (lib ES2023 + @types/node 20 do not declare it). */
interface WasmInstance { exports: Record<string, unknown> }
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => WasmInstance;
  RuntimeError: new (...args: unknown[]) => Error;
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

interface EmscriptenOptions {
  print: (s: string) => void;
  printErr: (s: string) => void;
  onAbort?: (what: unknown) => void;
  instantiateWasm?: (
    imports: object,
    receive: (instance: WasmInstance) => unknown,
  ) => Record<string, unknown>;
}

type Factory = (opts: EmscriptenOptions) => Promise<unknown>;

interface OpenJpegModule { J2KDecoder: new () => WasmDecoder }
interface CharlsModule { JpegLSDecoder: new () => WasmDecoder }
interface TurboModule { JPEGDecoder: new () => WasmDecoder }
interface OpenJphModule {
  HTJ2KDecoder: new () => WasmDecoder;
  HTJ2KEncoder: new () => HTJ2KEncoderInstance;
}

/** Where codec chatter goes. Tests and the daemon may set it; it must never write to stdout. */
let codecLog: (line: string) => void = () => undefined;
export function setCodecLogger(fn: (line: string) => void): void {
  codecLog = fn;
}

/**
 * Instantiate an emscripten module synchronously, once, on first use.
 *
 * `instantiateWasm` hands emscripten a synchronously compiled instance, so the runtime (and the embind
 * classes it registers on the options object) is ready when the factory returns. That keeps
 * `decodeDicomRaw(...).rawFrame(i)` synchronous. Node has no size limit on synchronous compilation.
 */
function lazyModule<M>(jsSpecifier: string, wasmSpecifier: string, probe: keyof M): { get(): M; reset(): void } {
  let mod: M | undefined;
  let compiled: object | undefined;
  return {
    get(): M {
      if (mod) return mod;
      const exported = require(jsSpecifier) as Factory | { default: Factory };
      const factory = typeof exported === 'function' ? exported : exported.default;
      compiled ??= new WA.Module(readFileSync(require.resolve(wasmSpecifier)));
      const wasm = compiled;
      const opts: EmscriptenOptions = {
        print: (s: string) => codecLog(s),
        printErr: (s: string) => codecLog(s),
        onAbort: (what: unknown) => codecLog(`codec abort: ${String(what)}`),
        instantiateWasm: (imports, receive) => {
          const instance = new WA.Instance(wasm, imports);
          receive(instance);
          return instance.exports;
        },
      };
      const ready = factory(opts);
      ready.catch((e: unknown) => codecLog(`codec init failed: ${String(e)}`));
      const m = opts as unknown as M;
      if (!(probe in (m as object))) throw new Error(`codec ${jsSpecifier} did not initialise`);
      mod = m;
      return m;
    },
    reset(): void {
      mod = undefined;
    },
  };
}

const openjpeg = lazyModule<OpenJpegModule>(
  '@cornerstonejs/codec-openjpeg/decodewasmjs',
  '@cornerstonejs/codec-openjpeg/decodewasm',
  'J2KDecoder',
);
const charls = lazyModule<CharlsModule>(
  '@cornerstonejs/codec-charls/decodewasmjs',
  '@cornerstonejs/codec-charls/decodewasm',
  'JpegLSDecoder',
);
const turbo = lazyModule<TurboModule>(
  '@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasmjs',
  '@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasm',
  'JPEGDecoder',
);
const openjph = lazyModule<OpenJphModule>(
  '@cornerstonejs/codec-openjph/wasmjs',
  '@cornerstonejs/codec-openjph/wasm',
  'HTJ2KDecoder',
);

export interface CodecOutput {
  info: FrameInfo;
  /** A copy of the decoded bytes (native little-endian samples of bitsPerSample rounded up to 8/16). */
  bytes: Uint8Array;
  /** JPEG-LS only: 0 = planar (ILV none), 1 = line, 2 = sample interleaved. */
  interleaveMode?: number;
}

/**
 * Run one decode. A WASM trap (RuntimeError: out of bounds, unreachable, abort) leaves an emscripten
 * module unusable, so the module is dropped and re-created on next use.
 */
function runWasm(lib: { get(): unknown; reset(): void }, make: () => WasmDecoder, encoded: Uint8Array): CodecOutput {
  let decoder: WasmDecoder | undefined;
  try {
    decoder = make();
    const input = decoder.getEncodedBuffer(encoded.length);
    input.set(encoded);
    decoder.decode();
    const info = decoder.getFrameInfo();
    const out = decoder.getDecodedBuffer();
    // The view points into WASM memory, which the next decode reuses: copy it out.
    const bytes = new Uint8Array(out.length);
    bytes.set(out);
    const withMode = decoder as WasmDecoder & { getInterleaveMode?: () => number };
    const interleaveMode = typeof withMode.getInterleaveMode === 'function' ? withMode.getInterleaveMode() : undefined;
    return { info: { ...info }, bytes, interleaveMode };
  } catch (e) {
    if (e instanceof WA.RuntimeError) lib.reset();
    throw e instanceof Error ? e : new Error(typeof e === 'number' ? 'the codec rejected the stream (native exception)' : String(e));
  } finally {
    try {
      decoder?.delete();
    } catch {
      // the module aborted; nothing left to free
    }
  }
}

export function decodeJ2K(encoded: Uint8Array): CodecOutput {
  return runWasm(openjpeg, () => new (openjpeg.get().J2KDecoder)(), encoded);
}

export function decodeHTJ2K(encoded: Uint8Array): CodecOutput {
  return runWasm(openjph, () => new (openjph.get().HTJ2KDecoder)(), encoded);
}

export function decodeJpegLS(encoded: Uint8Array): CodecOutput {
  return runWasm(charls, () => new (charls.get().JpegLSDecoder)(), encoded);
}

export function decodeJpegBaseline8(encoded: Uint8Array): CodecOutput {
  return runWasm(turbo, () => new (turbo.get().JPEGDecoder)(), encoded);
}

/** HTJ2K encoder, used only by the fixture generator (tests/fixtures/dicom/make-htj2k.ts). */
export function encodeHTJ2K(pixels: Uint8Array, info: FrameInfo, reversible = true): Uint8Array {
  const enc = new (openjph.get().HTJ2KEncoder)();
  try {
    const input = enc.getDecodedBuffer({ ...info, isSigned: info.isSigned ?? false, isUsingColorTransform: false });
    input.set(pixels);
    enc.setQuality(reversible, 0);
    enc.encode();
    return Uint8Array.from(enc.getEncodedBuffer());
  } finally {
    enc.delete();
  }
}

interface LosslessDecoder {
  decode(buffer: ArrayBuffer, offset: number, length: number, numBytes: number): Uint8Array | Uint16Array;
  frame: { dimX: number; dimY: number; numComp: number; precision: number };
}
interface LosslessModule { Decoder: new () => LosslessDecoder }
let lossless: LosslessModule | undefined;

/** JPEG lossless, process 14 (any selection value 1-7), pure JS. */
export function decodeJpegLossless(
  encoded: Uint8Array,
  bytesPerSample: number,
): { data: Uint8Array | Uint16Array; width: number; height: number; components: number; precision: number } {
  lossless ??= require('jpeg-lossless-decoder-js') as LosslessModule;
  const dec = new lossless.Decoder();
  const copy = encoded.slice();
  const data = dec.decode(copy.buffer, 0, copy.byteLength, bytesPerSample);
  return {
    data,
    width: dec.frame.dimX,
    height: dec.frame.dimY,
    components: dec.frame.numComp,
    precision: dec.frame.precision,
  };
}
