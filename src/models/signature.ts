/**
 * Ed25519 signatures of model bundles (node:crypto, no dependency).
 *
 * `manifest.sig` sits next to `manifest.json` and signs the EXACT bytes of manifest.json (not a
 * re-serialisation: whitespace counts). Since the manifest holds the sha256 and size of every model and
 * golden file, one signature covers the whole bundle. Format (JSON, UTF-8):
 *
 *   { "alg": "ed25519", "keyId": "<first 16 hex of sha256(SPKI DER of the public key)>", "sig": "<base64, 64 bytes>" }
 *
 * Keys are PEM files: PKCS#8 for the private key, SPKI for the public key (`edge-agent keygen`, or
 * `openssl genpkey -algorithm ed25519` + `openssl pkey -pubout`). The agent trusts the public keys listed
 * in `model.trustedKeys`; `model.allowUnsigned: true` lets a bundle WITHOUT manifest.sig load (a bundle
 * with a bad or untrusted signature is refused even then).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { lstat, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BundleError, resolveBundlePath, type ManifestCheck } from './bundle.js';

export const SIGNATURE_FILE = 'manifest.sig';
const MAX_SIG_BYTES = 64 * 1024;

export interface SignatureFile {
  alg: 'ed25519';
  keyId: string;
  /** base64 of the 64-byte Ed25519 signature over manifest.json's bytes. */
  sig: string;
}

export interface TrustedKey {
  keyId: string;
  key: KeyObject;
  /** Where the key came from (file path), for messages. */
  source: string;
}

/** Key id: first 16 hex digits of sha256 over the SPKI DER encoding of the public key. */
export function keyIdOf(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex').slice(0, 16);
}

export interface GeneratedKeyPair {
  privatePem: string;
  publicPem: string;
  keyId: string;
}

export function generateSigningKeyPair(): GeneratedKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    keyId: keyIdOf(publicKey),
  };
}

/** Parses a PEM private key; refuses anything that is not Ed25519. */
export function parsePrivateKey(pem: string | Buffer, source = 'private key'): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (e) {
    throw new Error(`${source}: not a PEM private key (${(e as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new Error(`${source}: is a ${key.asymmetricKeyType ?? 'unknown'} key; bundles are signed with Ed25519`);
  }
  return key;
}

/** Parses a PEM public key (a private key file is refused: trust lists hold public keys only). */
export function parsePublicKey(pem: string | Buffer, source = 'public key'): TrustedKey {
  const text = pem.toString();
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) {
    throw new Error(`${source}: is a PRIVATE key; trust the public key (.pub.pem) instead and keep the private key off devices`);
  }
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (e) {
    throw new Error(`${source}: not a PEM public key (${(e as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new Error(`${source}: is a ${key.asymmetricKeyType ?? 'unknown'} key; bundles are signed with Ed25519`);
  }
  return { keyId: keyIdOf(key), key, source };
}

/** Reads the trusted public keys (PEM files). Throws one error naming every unreadable or wrong file. */
export async function loadTrustedKeys(files: string[]): Promise<TrustedKey[]> {
  const keys: TrustedKey[] = [];
  const problems: string[] = [];
  for (const f of files) {
    try {
      keys.push(parsePublicKey(await readFile(f), f));
    } catch (e) {
      problems.push((e as NodeJS.ErrnoException).code ? `${f}: cannot read (${(e as NodeJS.ErrnoException).code})` : (e as Error).message);
    }
  }
  if (problems.length) throw new Error(`trusted keys: ${problems.join('; ')}`);
  return keys;
}

export function signManifestBytes(manifestBytes: Buffer, privateKey: KeyObject): SignatureFile {
  const sig = sign(null, manifestBytes, privateKey);
  return { alg: 'ed25519', keyId: keyIdOf(createPublicKey(privateKey)), sig: sig.toString('base64') };
}

/** Signs `<dir>/manifest.json` with the private key (PEM) and writes `<dir>/manifest.sig`. */
export async function signBundle(dir: string, privateKeyPem: string | Buffer, source?: string): Promise<SignatureFile> {
  const key = parsePrivateKey(privateKeyPem, source);
  const bytes = await readFile(path.join(dir, 'manifest.json'));
  const sig = signManifestBytes(bytes, key);
  await writeFile(path.join(dir, SIGNATURE_FILE), JSON.stringify(sig) + '\n');
  return sig;
}

/** Parses manifest.sig text; throws BundleError('bad-signature') naming what is wrong. */
export function parseSignatureFile(text: string): SignatureFile {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new BundleError('bad-signature', `${SIGNATURE_FILE} is not valid JSON: ${(e as Error).message}`);
  }
  const o = v as Partial<Record<keyof SignatureFile, unknown>> | null;
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new BundleError('bad-signature', `${SIGNATURE_FILE} must be a JSON object`);
  if (o.alg !== 'ed25519') throw new BundleError('bad-signature', `${SIGNATURE_FILE}: unsupported alg ${JSON.stringify(o.alg)} (expected "ed25519")`);
  if (typeof o.keyId !== 'string' || !/^[0-9a-f]{16}$/.test(o.keyId)) {
    throw new BundleError('bad-signature', `${SIGNATURE_FILE}: keyId must be 16 lowercase hex digits`);
  }
  if (typeof o.sig !== 'string' || Buffer.from(o.sig, 'base64').length !== 64) {
    throw new BundleError('bad-signature', `${SIGNATURE_FILE}: sig must be the base64 of a 64-byte Ed25519 signature`);
  }
  return { alg: 'ed25519', keyId: o.keyId, sig: o.sig };
}

export interface SignatureStatus {
  signed: boolean;
  /** Key that verified the signature (signed bundles). */
  keyId?: string;
  keySource?: string;
}

export interface SignaturePolicy {
  trustedKeys: TrustedKey[];
  /** Accept a bundle with no manifest.sig at all (never one with a bad or untrusted signature). */
  allowUnsigned: boolean;
}

/** Reads `<dirReal>/manifest.sig` (inside the bundle, regular file, bounded) or undefined when absent. */
export async function readSignatureFile(dirReal: string): Promise<string | undefined> {
  const p = path.join(dirReal, SIGNATURE_FILE);
  const l = await lstat(p).catch(() => undefined);
  if (!l) return undefined;
  const real = l.isSymbolicLink() ? await resolveBundlePath(dirReal, SIGNATURE_FILE, SIGNATURE_FILE) : p;
  const st = l.isSymbolicLink() ? await lstat(real) : l;
  if (!st.isFile()) throw new BundleError('bad-signature', `${SIGNATURE_FILE} is not a regular file`);
  if (st.size > MAX_SIG_BYTES) throw new BundleError('bad-signature', `${SIGNATURE_FILE} is ${st.size} bytes (limit ${MAX_SIG_BYTES})`);
  return readFile(real, 'utf8');
}

/**
 * Verifies manifest bytes against a manifest.sig text (undefined: no signature file). Throws BundleError:
 * 'unsigned' (no manifest.sig and allowUnsigned is false), 'untrusted-key' (signed by a key not in the
 * trust list), 'bad-signature' (malformed, or the signature does not match the manifest bytes: tampered).
 */
export function verifyManifestSignature(manifestBytes: Buffer, sigText: string | undefined, policy: SignaturePolicy): SignatureStatus {
  if (sigText === undefined) {
    if (policy.allowUnsigned) return { signed: false };
    throw new BundleError(
      'unsigned',
      `bundle is unsigned: no ${SIGNATURE_FILE}; sign it (edge-agent model sign BUNDLE --key PRIVATE.pem) or set model.allowUnsigned: true (development only)`,
    );
  }
  const sig = parseSignatureFile(sigText);
  const key = policy.trustedKeys.find((k) => k.keyId === sig.keyId);
  if (!key) {
    const trusted = policy.trustedKeys.map((k) => k.keyId).join(', ') || 'none configured';
    throw new BundleError(
      'untrusted-key',
      `${SIGNATURE_FILE} is signed by key ${sig.keyId}, which is not trusted (trusted: ${trusted}); add its public key to model.trustedKeys if you trust it`,
    );
  }
  if (!verify(null, manifestBytes, key.key, Buffer.from(sig.sig, 'base64'))) {
    throw new BundleError(
      'bad-signature',
      `${SIGNATURE_FILE} does not match manifest.json (key ${sig.keyId}): the manifest was modified after signing`,
    );
  }
  return { signed: true, keyId: key.keyId, keySource: key.source };
}

/**
 * A loadBundle `manifestChecks` entry verifying the signature before the manifest is parsed; `onStatus`
 * receives the outcome (e.g. to log which key signed the model, or that it is unsigned).
 */
export function signatureCheck(policy: SignaturePolicy, onStatus?: (s: SignatureStatus) => void): ManifestCheck {
  return async (bytes, dirReal) => {
    const status = verifyManifestSignature(bytes, await readSignatureFile(dirReal), policy);
    onStatus?.(status);
  };
}
