/**
 * Loads a device config: YAML file -> state-dir overrides (remote set-config, `run` only) -> env overrides
 * -> CLI overrides -> schema (defaults + validation) -> semantic checks (files that must exist) -> resolved
 * paths and secrets.
 *
 * Precedence, lowest first: defaults < config file < state-dir overrides < environment < CLI flags. The
 * overrides file (`<stateDir>/config-overrides.json`, written atomically by the fleet `set-config`
 * command, src/fleet/config-store.ts) sits above the file because it is the newer, remote decision for
 * this one device; env and flags stay above it because they are how the operator on the box (systemd
 * unit, shell) pins a value, and a remote change must not silently beat them (set-config reports such a
 * setting as `pinned`). The overrides cannot move `stateDir` (they live in it).
 *
 * Every problem is collected, never just the first: a bad config refuses to start with the full list,
 * each as `path: message` (with the YAML line when the value came from the file).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ErrorObject } from 'ajv';
import { LineCounter, parseDocument, isMap, isSeq, isScalar, parse as parseYaml, type Node as YamlNode } from 'yaml';
import { configSchema, type AgentConfig } from './schema.js';

export const ENV_PREFIX = 'EDGE_AGENT_';

/** File in the state dir holding the remote config overrides (fleet `set-config`). */
export const OVERRIDES_FILE = 'config-overrides.json';

/** The shipped development signing key (public half), relative to the package root. NOT for production. */
export const DEVELOPMENT_KEY = ['models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem'] as const;

/**
 * Configs whose model.trustedKeys was left empty and so holds the shipped DEVELOPMENT-ONLY key implicitly:
 * that key is trusted for the shipped bundle only, never for a model pushed by a rollout.
 */
const impliedDevelopmentKey = new WeakSet<object>();

/** The keys a rollout may trust: model.trustedKeys as configured (empty when only the implied development key is there). */
export function rolloutTrustedKeys(config: AgentConfig): string[] {
  return impliedDevelopmentKey.has(config) ? [] : config.model.trustedKeys;
}

export class ConfigError extends Error {
  constructor(
    readonly problems: string[],
    readonly source: string,
  ) {
    super(`invalid config ${source}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** CLI flags that override the file (the documented contract of `edge-agent run`). */
export interface CliOverrides {
  inbox?: string;
  stateDir?: string;
  mqttUrl?: string;
  deviceId?: string;
}

export interface LoadOptions {
  env?: NodeJS.ProcessEnv;
  cli?: CliOverrides;
  /** Directory relative paths resolve against (default: process.cwd()). */
  cwd?: string;
  /**
   * Check that referenced files (secrets, certificates, model bundle) exist and read the secrets
   * (default true). False validates a config meant for another machine (`validate-config --offline`).
   */
  checkFiles?: boolean;
  /**
   * Apply the state dir's remote overrides (`<stateDir>/config-overrides.json`); `edge-agent run` does,
   * `validate-config` and `infer` check the file alone. Default false.
   */
  stateOverrides?: boolean;
  /** Use these overrides instead of reading the file (set-config validating a candidate). Implies stateOverrides. */
  overrides?: Record<string, unknown>;
}

export interface LoadedConfig {
  config: AgentConfig;
  /** Where each value came from is not tracked; this is the file (or '<defaults>'). */
  source: string;
  /** The state-dir overrides applied ({} when none), and their file (null when not read). */
  overrides: Record<string, unknown>;
  overridesFile: string | null;
  /** Settings (dotted paths) set by the environment or CLI flags: they win over the overrides. */
  pinned: string[];
}

/** Root of the installed package (holds models/, device-configs/). */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const packageRootFromSrc = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export function shippedPath(...segments: string[]): string {
  // Compiled code lives in dist/src/config, sources in src/config: find the folder that has package.json.
  for (const root of [packageRoot, packageRootFromSrc]) {
    if (existsSync(path.join(root, 'package.json'))) return path.join(root, ...segments);
  }
  return path.join(packageRootFromSrc, ...segments);
}

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: true, allowUnionTypes: true, verbose: true });
ajv.addKeyword({ keyword: 'x-restart', schemaType: 'boolean' });
const validate = ajv.compile<AgentConfig>(configSchema);

interface SchemaNode {
  /** A list for settings that take one value or a list (model.runtime, model.precision). */
  type?: string | readonly string[];
  properties?: Record<string, SchemaNode>;
  additionalProperties?: unknown;
  items?: SchemaNode;
}

function toEnvSegment(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

/** Every settable leaf of the schema with its env name: EDGE_AGENT_MQTT__TLS__CA_FILE -> mqtt.tls.caFile. */
export function envVariables(): { name: string; path: string[]; type: string }[] {
  const out: { name: string; path: string[]; type: string }[] = [];
  const walk = (node: SchemaNode, at: string[]): void => {
    if (node.type === 'object' && node.properties && Object.keys(node.properties).length > 0) {
      for (const [k, child] of Object.entries(node.properties)) walk(child, [...at, k]);
      return;
    }
    const type = typeof node.type === 'string' ? node.type : node.type ? node.type.join('|') : 'string';
    out.push({ name: ENV_PREFIX + at.map(toEnvSegment).join('__'), path: at, type });
  };
  walk(configSchema, []);
  return out;
}

function setPath(target: Record<string, unknown>, at: string[], value: unknown): void {
  let cur = target;
  for (const key of at.slice(0, -1)) {
    const next = cur[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) cur[key] = {};
    cur = cur[key] as Record<string, unknown>;
  }
  cur[at[at.length - 1]!] = value;
}

function envValue(raw: string, type: string): unknown {
  if (type === 'string') return raw;
  if (type === 'array' && !raw.trim().startsWith('[')) {
    return raw.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  }
  if (type === 'string|array' && !raw.trim().startsWith('[')) {
    // one value or a list: `onnx` stays a string, `onnx,tfjs` becomes a list
    const items = raw.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
    return items.length === 1 ? items[0] : items;
  }
  try {
    return parseYaml(raw) as unknown;
  } catch {
    return raw; // the schema reports the type mismatch
  }
}

/** Finds the YAML line of a JSON pointer like /mqtt/tls/caFile (best effort). */
function lineOf(doc: ReturnType<typeof parseDocument>, counter: LineCounter, pointer: string): number | undefined {
  const segs = pointer.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  let node: unknown = doc.contents;
  let last: YamlNode | undefined;
  for (const seg of segs) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === seg);
      if (!pair) break;
      last = pair.key as YamlNode;
      node = pair.value;
    } else if (isSeq(node)) {
      const item = node.items[Number(seg)];
      if (item === undefined) break;
      last = item as YamlNode;
      node = item;
    } else break;
  }
  const range = last?.range;
  return range ? counter.linePos(range[0]).line : undefined;
}

function describe(e: ErrorObject): { at: string; message: string } {
  let at = e.instancePath || '';
  let message = e.message ?? 'invalid';
  if (e.keyword === 'additionalProperties') {
    const extra = (e.params as { additionalProperty: string }).additionalProperty;
    at = `${at}/${extra}`;
    message = 'unknown setting';
  } else if (e.keyword === 'enum') {
    message = `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map(String).join(', ')}`;
  } else if (e.keyword === 'required') {
    at = `${at}/${(e.params as { missingProperty: string }).missingProperty}`;
    message = 'is required';
  } else if (e.keyword === 'pattern') {
    const description = (e.parentSchema as { description?: string } | undefined)?.description;
    message = `${JSON.stringify(e.data)} is not valid${description ? `: ${description}` : ` (${message})`}`;
  } else if (e.keyword === 'propertyNames') {
    message = `has an invalid key ${JSON.stringify((e.params as { propertyName: string }).propertyName)}`;
  }
  return { at, message };
}

function pointerToPath(pointer: string): string {
  const p = pointer.split('/').slice(1).join('.');
  return p === '' ? '(root)' : p;
}

function expandVars(value: string, env: NodeJS.ProcessEnv): string {
  return value.replace(/\$\{([A-Z0-9_]+)\}|\$([A-Z0-9_]+)/g, (_m, a: string | undefined, b: string | undefined) => env[(a ?? b)!] ?? '');
}

/**
 * Loads and validates. Throws ConfigError listing every problem; never returns a half-valid config.
 * `file` undefined means: defaults only (used by `infer` without --config).
 */
export function loadConfig(file: string | undefined, options: LoadOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const source = file ?? '<defaults>';
  const cli = options.cli ?? {};
  const problems: string[] = [];
  let raw: Record<string, unknown> = {};
  let doc: ReturnType<typeof parseDocument> | undefined;
  const counter = new LineCounter();

  if (file !== undefined) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError([`(file): cannot read ${file}: ${(err as Error).message}`], source);
    }
    doc = parseDocument(text, { lineCounter: counter, prettyErrors: false, uniqueKeys: true });
    if (doc.errors.length > 0) {
      throw new ConfigError(
        doc.errors.map((e) => {
          const pos = counter.linePos(e.pos[0]);
          return `(yaml) line ${pos.line}:${pos.col}: ${e.message.split('\n')[0]}`;
        }),
        source,
      );
    }
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) raw = {};
    else if (typeof value === 'object' && !Array.isArray(value)) raw = value as Record<string, unknown>;
    else throw new ConfigError(['(root): must be a mapping of settings'], source);
  }

  // State-dir overrides go between the file and the environment. Which state dir: the one the file, env
  // and flags name (the overrides themselves cannot move it).
  let overrides: Record<string, unknown> = {};
  let overridesFile: string | null = null;
  const fromOverrides = new Set<string>();
  if (options.stateOverrides === true || options.overrides !== undefined) {
    const envStateDir = env[`${ENV_PREFIX}STATE_DIR`];
    const stateDir = cli.stateDir ?? envStateDir ?? (typeof raw.stateDir === 'string' && raw.stateDir ? raw.stateDir : configSchema.properties.stateDir.default);
    overridesFile = path.resolve(cwd, stateDir, OVERRIDES_FILE);
    if (options.overrides !== undefined) overrides = options.overrides;
    else {
      const read = readOverridesFile(overridesFile);
      if (typeof read === 'string') throw new ConfigError([read], source);
      overrides = read;
    }
    if ('stateDir' in overrides) throw new ConfigError([`stateDir: cannot be set by the state-dir overrides (${overridesFile})`], source);
    for (const p of leafPaths(overrides)) fromOverrides.add('/' + p.join('/'));
    raw = mergeDeep(raw, overrides);
  }

  const fromEnv = new Set<string>();
  for (const v of envVariables()) {
    const value = env[v.name];
    if (value === undefined) continue;
    setPath(raw, v.path, envValue(value, v.type));
    fromEnv.add('/' + v.path.join('/'));
  }
  if (cli.inbox !== undefined) setPath(raw, ['inbox'], cli.inbox);
  if (cli.stateDir !== undefined) setPath(raw, ['stateDir'], cli.stateDir);
  if (cli.mqttUrl !== undefined) setPath(raw, ['mqtt', 'url'], cli.mqttUrl);
  if (cli.deviceId !== undefined) setPath(raw, ['deviceId'], cli.deviceId);
  const pinned = [...fromEnv].map((p) => p.slice(1).replace(/\//g, '.'));
  for (const [flag, at] of [['inbox', 'inbox'], ['stateDir', 'stateDir'], ['mqttUrl', 'mqtt.url'], ['deviceId', 'deviceId']] as const) {
    if (cli[flag] !== undefined && !pinned.includes(at)) pinned.push(at);
  }

  if (!validate(raw)) {
    for (const e of validate.errors ?? []) {
      const { at, message } = describe(e);
      const where = fromEnv.has(at)
        ? ' (from environment)'
        : fromOverrides.has(at) || [...fromOverrides].some((o) => o.startsWith(`${at}/`))
          ? options.overrides !== undefined
            ? ' (from the requested overrides)'
            : ` (from ${overridesFile ?? 'state-dir overrides'})`
          : doc
            ? lineSuffix(doc, counter, at)
            : '';
      problems.push(`${pointerToPath(at)}: ${message}${where}`);
    }
    throw new ConfigError(dedupe(problems), source);
  }
  const config = raw as unknown as AgentConfig;

  // Derived defaults and resolved paths.
  if (config.deviceId === '') {
    config.deviceId = hostname().replace(/[^A-Za-z0-9._-]/g, '-') || 'edge-agent';
  }
  if (config.deviceId === 'group') problems.push('deviceId: "group" is reserved by the fleet topics (<base>/group/<group>/...)');
  // The top-level `groups` (deprecated) and fleet.groups are one list; both fields show it.
  config.fleet.groups = [...new Set([...config.fleet.groups, ...config.groups])];
  config.groups = config.fleet.groups;
  config.inbox = path.resolve(cwd, config.inbox);
  config.stateDir = path.resolve(cwd, config.stateDir);
  config.doneDir = config.doneDir ? path.resolve(cwd, config.doneDir) : path.join(path.dirname(config.inbox), 'done');
  config.quarantineDir = config.quarantineDir
    ? path.resolve(cwd, config.quarantineDir)
    : path.join(path.dirname(config.inbox), 'quarantine');
  const shippedBundle = !config.model.bundle;
  config.model.bundle = config.model.bundle ? path.resolve(cwd, config.model.bundle) : shippedPath('models', 'orientation-qa');
  // Trusted signing keys: ${EDGE_AGENT_PACKAGE} (the installed package) and env variables expand, then
  // paths resolve like the others. Empty: the shipped development key, only for the shipped bundle.
  const keyVars = { ...env, EDGE_AGENT_PACKAGE: shippedPath() };
  config.model.trustedKeys = config.model.trustedKeys.map((k) => path.resolve(cwd, expandVars(k, keyVars)));
  if (config.model.trustedKeys.length === 0 && shippedBundle) {
    config.model.trustedKeys = [shippedPath(...DEVELOPMENT_KEY)];
    impliedDevelopmentKey.add(config);
  } else if (config.model.trustedKeys.length === 0 && !config.model.allowUnsigned) {
    problems.push('model.trustedKeys: list the public key(s) that sign this bundle (or set model.allowUnsigned: true, development only)');
  }
  if (config.mqtt.clientId === '') config.mqtt.clientId = `edge-agent-${config.deviceId}`;

  for (const [name, dir] of [['doneDir', config.doneDir], ['quarantineDir', config.quarantineDir], ['stateDir', config.stateDir]] as const) {
    if (isInside(dir, config.inbox)) problems.push(`${name}: must not be inside the inbox (${config.inbox})`);
  }
  const checkFiles = options.checkFiles ?? true;
  if (checkFiles) {
    config.model.trustedKeys.forEach((k, i) => {
      try {
        if (!statSync(k).isFile()) throw new Error('not a regular file');
      } catch (err) {
        problems.push(`model.trustedKeys.${i}: cannot read ${k}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    });
  }
  if (checkFiles && !existsSync(path.join(config.model.bundle, 'manifest.json'))) {
    problems.push(`model.bundle: no manifest.json in ${config.model.bundle}`);
  }

  // Secrets from files (systemd LoadCredential= puts them under $CREDENTIALS_DIRECTORY).
  const fileSetting = (at: string, value: string): string | undefined => {
    if (!value || !checkFiles) return undefined;
    const resolved = path.resolve(cwd, expandVars(value, env));
    try {
      if (!statSync(resolved).isFile()) throw new Error('not a regular file');
      return resolved;
    } catch (err) {
      problems.push(`${at}: cannot read ${resolved}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return undefined;
    }
  };
  const pw = fileSetting('mqtt.passwordFile', config.mqtt.passwordFile);
  if (pw) config.mqtt.password = readFileSync(pw, 'utf8').replace(/\r?\n$/, '');
  if (pw) config.mqtt.passwordFile = pw;
  for (const k of ['caFile', 'certFile', 'keyFile'] as const) {
    const resolved = fileSetting(`mqtt.tls.${k}`, config.mqtt.tls[k]);
    if (resolved) config.mqtt.tls[k] = resolved;
  }
  if (Boolean(config.mqtt.tls.certFile) !== Boolean(config.mqtt.tls.keyFile)) {
    problems.push('mqtt.tls: certFile and keyFile go together (mutual TLS needs both)');
  }
  if (config.mqtt.password && !config.mqtt.username) problems.push('mqtt.username: required when a password is set');
  if (config.fleet.download.caFile) {
    const ca = fileSetting('fleet.download.caFile', config.fleet.download.caFile);
    if (ca) config.fleet.download.caFile = ca;
  }
  if (config.privacy.uidSaltFile) {
    const salt = fileSetting('privacy.uidSaltFile', config.privacy.uidSaltFile);
    if (salt) config.privacy.uidSaltFile = salt;
  }
  if (problems.length > 0) throw new ConfigError(problems, source);
  return { config, source, overrides, overridesFile, pinned };
}

/** The overrides in `file`: {} when there is none, a problem (string) when it cannot be used. */
export function readOverridesFile(file: string): Record<string, unknown> | string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    return `(overrides): cannot read ${file}: ${(err as Error).message}`;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return `(overrides): ${file} is not valid JSON (${(err as Error).message}); fix or remove it`;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return `(overrides): ${file} must hold a JSON object`;
  return value as Record<string, unknown>;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `b` over `a`, objects merged key by key, everything else (lists too) replaced. Returns a new object. */
export function mergeDeep(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const av = out[k];
    out[k] = isPlainObject(v) && isPlainObject(av) ? mergeDeep(av, v) : structuredClone(v);
  }
  return out;
}

/** Paths of the non-object values in `obj` (an empty object counts as a value). */
export function leafPaths(obj: Record<string, unknown>, at: string[] = []): string[][] {
  const out: string[][] = [];
  for (const [k, v] of Object.entries(obj)) {
    if (isPlainObject(v) && Object.keys(v).length > 0) out.push(...leafPaths(v, [...at, k]));
    else out.push([...at, k]);
  }
  return out;
}

function lineSuffix(doc: ReturnType<typeof parseDocument>, counter: LineCounter, at: string): string {
  const line = lineOf(doc, counter, at);
  return line !== undefined ? ` (line ${line})` : '';
}

function dedupe(items: string[]): string[] {
  return [...new Set(items)];
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** A copy safe to show (get-config, logs): secrets replaced. */
export function redactConfig(config: AgentConfig): AgentConfig {
  const copy = structuredClone(config);
  if (copy.mqtt.password) copy.mqtt.password = '***';
  return copy;
}
