/**
 * The one schema of the device config: it gives the defaults, the validation and (through
 * docs/CONFIG.md) the reference. Every object carries `default: {}` so Ajv's `useDefaults` fills the
 * nested defaults of a config that leaves a whole section out.
 *
 * `x-restart: true` marks settings that cannot be applied live; on an object it covers every setting in it.
 * Remote `set-config` (src/fleet/config-store.ts) applies the others at once and answers `restartRequired`
 * for these; a test checks that every setting without the mark is one the agent can apply live.
 */

export type FramePolicy = 'first' | 'middle' | 'all';

export interface WindowConfig {
  center: number;
  width: number;
}

export interface AgentConfig {
  /** Identifies this agent on MQTT; default: the host name. */
  deviceId: string;
  /** Id of the device config (e.g. `ct-scanner`), reported in health. */
  configId: string;
  /** Groups this agent belongs to (fleet commands to a group). */
  groups: string[];
  inbox: string;
  stateDir: string;
  doneDir: string;
  quarantineDir: string;
  ingest: {
    stabilityMs: number;
    pollIntervalMs: number;
    usePolling: boolean;
    ignore: string[];
    queueCapacity: number;
    maxFileBytes: number;
    afterPublish: 'move' | 'delete';
    maxAttempts: number;
  };
  decode: {
    framePolicy: FramePolicy;
    maxFrames: number;
    preferFileWindow: boolean;
    windowing: Record<string, WindowConfig>;
  };
  model: {
    bundle: string;
    /** `auto` (on-device benchmark, cached), one runtime, or runtimes in preference order (src/runtimes/select.ts). */
    runtime: RuntimePreference;
    /** `auto` (int8 only where it is faster here), one precision, or precisions in preference order. */
    precision: PrecisionPreference;
    /** What `auto` ranks by: batch-1 latency, or images/s over a backlog (latency / workers). */
    optimiseFor: OptimiseFor;
    providers: string[];
    intraOpThreads: number;
    interOpThreads: number;
    graphOptimization: 'disabled' | 'basic' | 'extended' | 'all';
    warmupRuns: number;
    /** PEM files of the Ed25519 public keys trusted to sign model bundles (manifest.sig). */
    trustedKeys: string[];
    /** Load a bundle without manifest.sig (development only). */
    allowUnsigned: boolean;
    /** Where inference runs: supervised child processes (default), worker threads, or the main thread. */
    isolation: 'process' | 'thread' | 'none';
    /** Inference workers; 0 = one per two cores. */
    workers: number;
    inferenceTimeoutMs: number;
    maxWorkerRssMb: number;
    restartLimit: { count: number; windowSec: number };
  };
  pipeline: {
    concurrency: number;
  };
  mqtt: {
    /** mqtt://, mqtts://, ws://; empty means: start the embedded broker. */
    url: string;
    embedded: { host: string; port: number };
    baseTopic: string;
    clientId: string;
    username: string;
    passwordFile: string;
    password: string;
    tls: {
      caFile: string;
      certFile: string;
      keyFile: string;
      rejectUnauthorized: boolean;
    };
    keepaliveSec: number;
    reconnectPeriodMs: number;
    connectTimeoutMs: number;
    inflightWindow: number;
  };
  privacy: {
    /** Publish DICOM UIDs as they are instead of salted hashes. */
    allowUids: boolean;
    /** File holding the salt for UID hashes; default: generated once in the state dir. */
    uidSaltFile: string;
  };
  logging: {
    level: LogLevel;
    components: Record<string, LogLevel>;
  };
  shutdown: {
    flushTimeoutMs: number;
  };
  fleet: {
    /** Groups whose requests (and group desired state) this agent follows; the top-level `groups` is merged in. */
    groups: string[];
    healthIntervalSec: number;
    latencyWindow: number;
    commands: { enabled: boolean };
    /** Seconds broker settings changed by set-config get to connect after a restart before they are reverted. */
    confirmConnectSec: number;
    /** Installed model versions kept on disk (model rollout); the active and previous are never deleted. */
    keepVersions: number;
    /** Model bundle downloads from the central registry (desired/model). */
    download: { maxBytes: number; timeoutMs: number; caFile: string };
  };
}

/** Runtime types a bundle file can be served by (the registry's `type`s; src/runtimes/registry.ts). */
export type RuntimeName = 'onnx' | 'tflite' | 'tfjs';
export type RuntimePreference = 'auto' | RuntimeName | RuntimeName[];
export type PrecisionName = 'fp32' | 'int8';
export type PrecisionPreference = 'auto' | PrecisionName | PrecisionName[];
export type OptimiseFor = 'latency' | 'throughput';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

const logLevel = { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] };
const topicLevel = {
  type: 'string',
  minLength: 1,
  maxLength: 128,
  pattern: '^[^+#/\\u0000]+$',
  description: 'one MQTT topic level, without "/", "+" or "#"',
};

export const configSchema = {
  $id: 'https://imaging-edge-agent/device-config.json',
  type: 'object',
  additionalProperties: false,
  properties: {
    deviceId: { ...topicLevel, minLength: 0, pattern: '^[^+#/\\u0000]*$', description: 'one MQTT topic level without "/", "+" or "#" (default: the host name); `group` is reserved', default: '', 'x-restart': true },
    configId: { type: 'string', default: 'default', description: 'id of the device config, reported in health' },
    groups: { type: 'array', items: topicLevel, default: [], description: 'fleet groups (deprecated: use fleet.groups; both are merged)', 'x-restart': true },
    inbox: { type: 'string', minLength: 1, default: './var/inbox', 'x-restart': true },
    stateDir: { type: 'string', minLength: 1, default: './var/state', 'x-restart': true },
    doneDir: { type: 'string', default: '', description: 'default: <inbox>/../done', 'x-restart': true },
    quarantineDir: { type: 'string', default: '', description: 'default: <inbox>/../quarantine', 'x-restart': true },
    ingest: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        stabilityMs: {
          type: 'integer', minimum: 50, maximum: 600000, default: 1000,
          description: 'a file is taken once its size and mtime stayed unchanged this long',
        },
        pollIntervalMs: { type: 'integer', minimum: 10, maximum: 60000, default: 250 },
        usePolling: { type: 'boolean', default: false, description: 'poll the inbox (network/slow filesystems)', 'x-restart': true },
        ignore: {
          type: 'array', items: { type: 'string' },
          default: ['.*', '*.tmp', '*.part', '*.partial', '*.crdownload', '*.filepart', '*~', '*.swp'],
          description: 'file-name globs never taken (temporary and hidden names)',
        },
        queueCapacity: { type: 'integer', minimum: 1, maximum: 100000, default: 64, description: 'jobs held in memory; beyond it intake pauses' },
        maxFileBytes: { type: 'integer', minimum: 1024, default: 2147483648 },
        afterPublish: { type: 'string', enum: ['move', 'delete'], default: 'move' },
        maxAttempts: { type: 'integer', minimum: 1, maximum: 100, default: 3, description: 'tries before a file is quarantined (too-many-attempts / processing-failed). A file whose try did not finish runs alone next; an agent death counts against it only then, so a kill while several files run costs none of them a try' },
      },
    },
    decode: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        framePolicy: { type: 'string', enum: ['first', 'middle', 'all'], default: 'middle' },
        maxFrames: { type: 'integer', minimum: 1, maximum: 10000, default: 64 },
        preferFileWindow: { type: 'boolean', default: true },
        windowing: {
          type: 'object',
          default: {},
          propertyNames: { pattern: '^[A-Z]{2,4}$' },
          additionalProperties: {
            type: 'object',
            additionalProperties: false,
            required: ['center', 'width'],
            properties: { center: { type: 'number' }, width: { type: 'number', exclusiveMinimum: 0 } },
          },
        },
      },
    },
    model: {
      type: 'object',
      additionalProperties: false,
      default: {},
      // every model setting needs a restart (remote set-config answers restartRequired; src/fleet/config-store.ts)
      'x-restart': true,
      properties: {
        bundle: { type: 'string', default: '', description: 'bundle directory; default: the shipped models/orientation-qa' },
        runtime: {
          type: ['string', 'array'], default: 'auto',
          pattern: '^(auto|onnx|tflite|tfjs)$', minItems: 1, uniqueItems: true,
          items: { type: 'string', enum: ['onnx', 'tflite', 'tfjs'] },
          description:
            'auto, one of onnx, tflite, tfjs, or a list of them in preference order (e.g. [onnx, tflite, tfjs]). ' +
            'auto: a short on-device benchmark of every runtime x precision file the bundle carries (golden-checked) picks the fastest; ' +
            'the result is cached in the state dir per model file sha256 and machine. A runtime that fails to load or is marked failed ' +
            '(model.restartLimit) is replaced by the next one in this order (error published). tfjs: backend tfjs-node when installed, ' +
            'else wasm (SIMD), else cpu; the backend in use is the result\'s model.provider',
        },
        precision: {
          type: ['string', 'array'], default: 'auto',
          pattern: '^(auto|fp32|int8)$', minItems: 1, uniqueItems: true,
          items: { type: 'string', enum: ['fp32', 'int8'] },
          description:
            'auto, fp32, int8, or a list in preference order. auto: int8 is served only where the on-device benchmark finds it faster ' +
            'than fp32 (at least 5%); otherwise fp32, with a note in health ("int8 slower than fp32 here: x vs y ms")',
        },
        optimiseFor: {
          type: 'string', enum: ['latency', 'throughput'], default: 'latency',
          description:
            'what the auto benchmark ranks by. latency: the lowest batch-1 time per capture (one image at a time: a detector, a ' +
            'radiograph). throughput: the most captures per second over a backlog (a CT series arriving at once): batch-1 time ' +
            'divided by the workers the candidate serves with, so 1 thread x cores workers usually wins. Both use the same ' +
            'cached measurements (docs/PERFORMANCE.md, bench/runtimes)',
        },
        providers: {
          type: 'array', minItems: 1, default: ['cpu'],
          items: { type: 'string', enum: ['tensorrt', 'cuda', 'rocm', 'migraphx', 'openvino', 'dml', 'coreml', 'qnn', 'xnnpack', 'webgpu', 'cpu'] },
          description: 'execution providers in preference order; cpu is always the last resort',
        },
        intraOpThreads: { type: 'integer', minimum: 0, maximum: 256, default: 0, description: '0: ORT default (cores)' },
        interOpThreads: { type: 'integer', minimum: 0, maximum: 256, default: 1 },
        graphOptimization: { type: 'string', enum: ['disabled', 'basic', 'extended', 'all'], default: 'all' },
        warmupRuns: { type: 'integer', minimum: 0, maximum: 100, default: 3 },
        trustedKeys: {
          type: 'array', default: [], items: { type: 'string', minLength: 1 },
          description:
            'PEM files of the Ed25519 public keys whose signature (manifest.sig) a bundle must carry; ${EDGE_AGENT_PACKAGE} = the installed package. Empty: the shipped DEVELOPMENT-ONLY key, and only for the shipped bundle',
        },
        allowUnsigned: {
          type: 'boolean', default: false,
          description: 'load a bundle that has no manifest.sig (development only; a bad or untrusted signature is refused anyway)',
        },
        isolation: {
          type: 'string', enum: ['process', 'thread', 'none'], default: 'process', 'x-restart': true,
          description:
            'where inference runs: supervised child processes (a runtime crash kills only the worker), worker threads (a native crash kills the agent), or none (main thread); see docs/ARCHITECTURE.md "Inference isolation"',
        },
        workers: {
          type: 'integer', minimum: 0, maximum: 64, default: 0, 'x-restart': true,
          description: 'inference workers in the pool; 0: one per two cores (at least one). With intraOpThreads 0, each worker gets cores / workers threads',
        },
        inferenceTimeoutMs: {
          type: 'integer', minimum: 100, maximum: 3600000, default: 10000,
          description: 'a call running longer is a hang: its worker is killed and replaced, the call retried once',
        },
        maxWorkerRssMb: {
          type: 'integer', minimum: 0, maximum: 1048576, default: 1024,
          description: 'a worker process whose resident memory grows past this is replaced (checked after calls and every 5 s); 0: no limit',
        },
        restartLimit: {
          type: 'object',
          additionalProperties: false,
          default: {},
          description: 'more than count worker restarts within windowSec marks the runtime failed (error published, calls refused)',
          properties: {
            count: { type: 'integer', minimum: 0, maximum: 1000, default: 5, description: 'worker restarts allowed within the window (restarts caused by a proven poison input do not count)' },
            windowSec: { type: 'integer', minimum: 1, maximum: 86400, default: 60, description: 'sliding window for restartLimit.count, seconds' },
          },
        },
      },
    },
    pipeline: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        concurrency: { type: 'integer', minimum: 1, maximum: 64, default: 2, description: 'jobs decoded/inferred at once' },
      },
    },
    mqtt: {
      type: 'object',
      additionalProperties: false,
      default: {},
      // every mqtt setting needs a restart (remote set-config answers restartRequired; src/fleet/config-store.ts)
      'x-restart': true,
      properties: {
        url: { type: 'string', default: '', pattern: '^$|^(mqtts?|wss?|tcp|ssl)://', description: 'a broker URL (mqtt://, mqtts://, ws://, wss://) or empty for the embedded broker' },
        embedded: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: {
            host: { type: 'string', default: '127.0.0.1' },
            port: { type: 'integer', minimum: 0, maximum: 65535, default: 1883 },
          },
        },
        baseTopic: {
          type: 'string', minLength: 1, maxLength: 256, default: 'imaging',
          pattern: '^(?!/)(?!.*//)(?!.*/$)[^+#\\u0000]+$',
          description: 'topic prefix without wildcards (+ #) or empty levels',
        },
        clientId: { type: 'string', default: '', description: 'default: edge-agent-<deviceId>' },
        username: { type: 'string', default: '' },
        passwordFile: { type: 'string', default: '', description: 'file holding the MQTT password (secret; not inline)' },
        password: { type: 'string', default: '', description: 'prefer passwordFile; env EDGE_AGENT_MQTT__PASSWORD also works' },
        tls: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: {
            caFile: { type: 'string', default: '' },
            certFile: { type: 'string', default: '' },
            keyFile: { type: 'string', default: '' },
            rejectUnauthorized: { type: 'boolean', default: true },
          },
        },
        keepaliveSec: { type: 'integer', minimum: 0, maximum: 65535, default: 30 },
        reconnectPeriodMs: { type: 'integer', minimum: 100, maximum: 600000, default: 2000 },
        connectTimeoutMs: { type: 'integer', minimum: 100, maximum: 600000, default: 10000 },
        inflightWindow: { type: 'integer', minimum: 1, maximum: 65535, default: 32 },
      },
    },
    privacy: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        allowUids: { type: 'boolean', default: false },
        uidSaltFile: { type: 'string', default: '', 'x-restart': true },
      },
    },
    logging: {
      type: 'object',
      additionalProperties: false,
      default: {},
      // every logging setting needs a restart (remote set-config answers restartRequired; src/fleet/config-store.ts)
      'x-restart': true,
      properties: {
        level: { ...logLevel, default: 'info' },
        components: { type: 'object', default: {}, additionalProperties: logLevel },
      },
    },
    shutdown: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        flushTimeoutMs: { type: 'integer', minimum: 0, maximum: 600000, default: 5000 },
      },
    },
    fleet: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description: 'fleet management over MQTT (docs/MQTT.md "Health" and "Commands")',
      properties: {
        groups: {
          type: 'array', items: topicLevel, default: [], uniqueItems: true, 'x-restart': true,
          description: 'groups this agent answers group requests (<base>/group/<g>/request/<cmd>) and follows group desired state for',
        },
        healthIntervalSec: {
          type: 'integer', minimum: 1, maximum: 86400, default: 30,
          description: 'retained health is published this often, and at once on a change (model, pause/resume, error, rollout step)',
        },
        latencyWindow: {
          type: 'integer', minimum: 1, maximum: 100000, default: 500, 'x-restart': true,
          description: 'health latencyMs p50/p99 are over this many most recent results (file seen -> result acknowledged by the broker)',
        },
        commands: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: {
            enabled: {
              type: 'boolean', default: true, 'x-restart': true,
              description: 'answer fleet commands on <base>/<device>/request/<cmd> (and group requests); false: no subscription at all',
            },
          },
        },
        confirmConnectSec: {
          type: 'integer', minimum: 2, maximum: 86400, default: 300, 'x-restart': true,
          description:
            'after set-config changed mqtt.* (or deviceId) and the agent restarted, the new settings must reach the broker within this many seconds; otherwise they are reverted and the agent restarts (exit 75) with the previous ones',
        },
        keepVersions: {
          type: 'integer', minimum: 2, maximum: 100, default: 3, 'x-restart': true,
          description: 'model versions kept installed in <stateDir>/models (model rollout, docs/MQTT.md "Model rollout"); the active and the previous one are never deleted',
        },
        download: {
          type: 'object',
          additionalProperties: false,
          default: {},
          'x-restart': true,
          description: 'model bundle downloads from the central registry (desired/model url)',
          properties: {
            maxBytes: {
              type: 'integer', minimum: 1024, default: 1073741824,
              description: 'hard cap on a bundle download in bytes, whatever size the desired document states (that size is a cap too)',
            },
            timeoutMs: {
              type: 'integer', minimum: 1000, maximum: 3600000, default: 60000,
              description: 'no data for this long ends a download attempt; the next attempt resumes with a Range request (5 attempts)',
            },
            caFile: { type: 'string', default: '', description: 'PEM CA that signed the registry\'s https certificate (default: the system CAs)' },
          },
        },
      },
    },
  },
} as const;
