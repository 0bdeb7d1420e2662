/**
 * Contract of the decode part. Everything outside src/decode sees captures only through these types.
 *
 * Two levels:
 * - RawFrame: stored pixel values exactly as the transfer syntax encodes them (after decompression,
 *   sign handling and planar-configuration interleave; before any LUT). Used to prove lossless decodes
 *   bit-exact against a reference decoder.
 * - ImageFrame: what a model sees before model-specific preprocessing: modality LUT (rescale), VOI
 *   window, MONOCHROME1 inversion, palette/YBR -> RGB applied, values scaled to [0, 1].
 */

export type SourceKind = 'dicom' | 'png' | 'jpeg';

export interface RawFrame {
  index: number;
  width: number;
  height: number;
  samplesPerPixel: 1 | 3;
  bitsAllocated: number;
  bitsStored: number;
  pixelRepresentation: 0 | 1;
  photometric: string;
  /** Interleaved (pixel-major) samples; signed values are sign-extended. */
  data: Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array;
}

export interface ImageFrame {
  /** 0-based frame number within the source (0 for single-frame files and PNG/JPEG). */
  index: number;
  width: number;
  height: number;
  channels: 1 | 3;
  /** HWC interleaved, each value in [0, 1]. */
  data: Float32Array;
}

export interface WindowSpec {
  center: number;
  width: number;
}

export type FramePolicy = 'first' | 'middle' | 'all';

export interface DecodeOptions {
  framePolicy: FramePolicy;
  /** Upper bound on frames decoded from one file under policy 'all' (protects memory). */
  maxFrames: number;
  /** Window per modality (e.g. CT -> {center: 40, width: 400}); used when the file has none, or always if preferFile is false. */
  windowByModality: Record<string, WindowSpec>;
  /** When true (default) a window stored in the file wins over the configured one. */
  preferFileWindow: boolean;
  /** Largest file accepted, in bytes. */
  maxFileBytes: number;
}

/** Header facts the pipeline may use. Identifying values never leave src/ without hashing (see pipeline). */
export interface CaptureMeta {
  modality: string;
  transferSyntaxUid?: string;
  sopClassUid?: string;
  sopInstanceUid?: string;
  studyInstanceUid?: string;
  seriesInstanceUid?: string;
  rows: number;
  columns: number;
  numberOfFrames: number;
  photometric?: string;
  bitsStored?: number;
  /**
   * Identifying header values (patient name, patient ID, accession number), read only so the
   * pipeline can scrub them from anything published (e.g. a file named after the patient).
   * Never published or logged.
   */
  identifiers?: string[];
}

export interface DecodedCapture {
  kind: SourceKind;
  meta: CaptureMeta;
  /** Frames selected by the frame policy, in order. */
  frames: ImageFrame[];
}

/** A per-file failure: the file is quarantined with `code` and `message`; never thrown for anything but bad input. */
export class DecodeError extends Error {
  constructor(
    readonly code:
      | 'not-dicom'
      | 'no-pixel-data'
      | 'unsupported-syntax'
      | 'truncated'
      | 'corrupt'
      | 'constant-image'
      | 'too-large'
      | 'unsupported-format'
      | 'empty-file'
      /** Decoding ran past the per-file limit and was stopped (DecodePool, pool.ts). */
      | 'decode-timeout',
    message: string,
  ) {
    super(message);
    this.name = 'DecodeError';
  }
}
