// Signs models/orientation-qa/manifest.json with the committed DEVELOPMENT-ONLY key (models/keys/), in the
// format of src/models/signature.ts (Ed25519 over the exact manifest bytes; keyId = first 16 hex of
// sha256(SPKI DER)). Same result as `npx edge-agent model sign --key ...` without needing a build.
// Production bundles are signed on the central server with the production key instead.
import { createHash, createPrivateKey, createPublicKey, sign } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const dir = process.argv[2] ?? path.join(root, 'models', 'orientation-qa');
const key = createPrivateKey(readFileSync(path.join(root, 'models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pem')));
const bytes = readFileSync(path.join(dir, 'manifest.json'));
const der = createPublicKey(key).export({ type: 'spki', format: 'der' });
const keyId = createHash('sha256').update(der).digest('hex').slice(0, 16);
const sig = { alg: 'ed25519', keyId, sig: sign(null, bytes, key).toString('base64') };
writeFileSync(path.join(dir, 'manifest.sig'), JSON.stringify(sig) + '\n');
console.log(`signed ${dir}/manifest.json with DEVELOPMENT-ONLY key ${keyId}`);
