/**
 * `edge-agent model inspect|verify|sign|pack|unpack` and `edge-agent keygen`: wiring only (the bundle
 * format, signatures, golden check and tar live in src/models/). Exit codes: 0 ok, 1 a problem (every
 * problem is printed, one per line, on stderr), 2 usage.
 */
import type { Command } from 'commander';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, loadConfig } from '../src/config/load.js';
import { BundleError, loadBundle, modelFiles } from '../src/models/bundle.js';
import type { LoadedBundle } from '../src/models/types.js';
import { runGolden, type GoldenResult } from '../src/models/golden.js';
import { PackError, packBundle, unpackBundle } from '../src/models/pack.js';
import { validateManifest } from '../src/models/schema.js';
import {
  generateSigningKeyPair,
  loadTrustedKeys,
  parseSignatureFile,
  readSignatureFile,
  signBundle,
  verifyManifestSignature,
  type SignatureStatus,
} from '../src/models/signature.js';
import { getRuntime, runtimeRegistry } from '../src/runtimes/registry.js';

function die(message: string, code = 1): never {
  process.stderr.write(`edge-agent: ${message}\n`);
  process.exit(code);
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

interface VerifyReport {
  bundle: string;
  ok: boolean;
  id?: string;
  version?: string;
  trustedKeys: string[];
  signature?: SignatureStatus;
  golden: (GoldenResult & { file: string })[];
  /** Model files whose golden check could not run on this machine (runtime unavailable). */
  skipped: { file: string; reason: string }[];
  problems: { check: string; code: string; message: string }[];
}

async function verifyBundle(dir: string, opts: { key?: string[]; config?: string; allowUnsigned?: boolean; golden: boolean }): Promise<VerifyReport> {
  let config;
  try {
    config = loadConfig(opts.config, { checkFiles: false }).config;
  } catch (e) {
    if (e instanceof ConfigError) die(e.message);
    throw e;
  }
  const keyFiles = opts.key?.length ? opts.key.map((k) => path.resolve(k)) : config.model.trustedKeys;
  const report: VerifyReport = { bundle: dir, ok: false, trustedKeys: keyFiles, golden: [], skipped: [], problems: [] };
  const problem = (check: string, err: unknown): void => {
    const add = (code: string, message: string): void => {
      // One problem shared by several model files (e.g. a missing golden input) is listed once.
      if (!report.problems.some((x) => x.check === check && x.code === code && x.message === message)) report.problems.push({ check, code, message });
    };
    if (err instanceof BundleError) for (const p of err.problems) add(err.code, p);
    else add('error', messageOf(err));
  };

  // 1. signature over the exact manifest bytes
  try {
    const keys = await loadTrustedKeys(keyFiles);
    const bytes = await readFile(path.join(dir, 'manifest.json'));
    report.signature = verifyManifestSignature(bytes, await readSignatureFile(path.resolve(dir)), {
      trustedKeys: keys,
      allowUnsigned: opts.allowUnsigned ?? config.model.allowUnsigned,
    });
  } catch (e) {
    problem('signature', (e as NodeJS.ErrnoException).code === 'ENOENT' ? new BundleError('not-found', `no manifest.json in '${dir}'`) : e);
  }
  // 2. schema, paths, sizes, hashes
  let bundle: LoadedBundle | undefined;
  try {
    bundle = await loadBundle(dir);
    report.id = bundle.manifest.id;
    report.version = bundle.manifest.version;
  } catch (e) {
    problem(e instanceof BundleError && (e.code === 'invalid-manifest' || e.code === 'bad-json') ? 'schema' : 'files', e);
  }
  // 3. golden inputs through every model file the bundle carries (format x precision), each in the
  //    runtime of its format: a device may serve any of them (model.runtime auto / preference list).
  if (bundle && opts.golden) {
    for (const file of modelFiles(bundle)) {
      const runtime = file.format; // runtime types are named after the formats they load
      const label = `${file.path} (${runtime}/${file.precision})`;
      const probe = await runtimeRegistry().probe(runtime);
      if (!probe.available) {
        report.skipped.push({ file: file.path, reason: `runtime '${runtime}' unavailable here: ${probe.reason ?? 'unknown'}` });
        continue;
      }
      try {
        const session = await getRuntime(runtime).load(path.join(bundle.dir, file.path), {
          providers: config.model.providers,
          intraOpThreads: config.model.intraOpThreads,
          interOpThreads: config.model.interOpThreads,
          graphOptimization: config.model.graphOptimization,
        });
        try {
          const results = (await runGolden(bundle, file, session)).map((g) => ({ ...g, file: file.path }));
          report.golden.push(...results);
          for (const g of results.filter((r) => !r.ok)) {
            report.problems.push({ check: 'golden', code: 'golden-mismatch', message: `${label}: golden '${g.name}': ${g.problem ?? 'mismatch'}` });
          }
          if (!results.length) report.problems.push({ check: 'golden', code: 'golden-mismatch', message: `${label}: no golden inputs apply to this file` });
        } finally {
          await session.dispose();
        }
      } catch (e) {
        problem('golden', e instanceof BundleError ? e : new Error(`${label}: ${messageOf(e)}`));
      }
    }
  }
  report.ok = report.problems.length === 0;
  return report;
}

export function registerModelCommands(program: Command): void {
  const model = program.command('model').description('model bundles: inspect, verify, sign, pack, unpack');

  model
    .command('inspect')
    .description('summarise a bundle (manifest, files, golden inputs, signature key id) without verifying it')
    .argument('<bundle>', 'bundle directory')
    .option('--json', 'print the manifest and signature info as JSON')
    .action(async (dir: string, opts: { json?: boolean }) => {
      let text: string;
      try {
        text = await readFile(path.join(dir, 'manifest.json'), 'utf8');
      } catch (e) {
        die(`${dir}: cannot read manifest.json (${(e as NodeJS.ErrnoException).code ?? messageOf(e)})`);
      }
      let manifest: Record<string, unknown>;
      try {
        manifest = JSON.parse(text) as Record<string, unknown>;
      } catch (e) {
        die(`${dir}: manifest.json is not valid JSON: ${messageOf(e)}`);
      }
      const schema = validateManifest(manifest);
      let signature: { present: boolean; keyId?: string; error?: string } = { present: false };
      try {
        const sigText = await readSignatureFile(path.resolve(dir));
        if (sigText !== undefined) signature = { present: true, keyId: parseSignatureFile(sigText).keyId };
      } catch (e) {
        signature = { present: true, error: messageOf(e) };
      }
      if (opts.json) {
        process.stdout.write(JSON.stringify({ bundle: dir, manifest, schemaErrors: schema.ok ? [] : schema.errors, signature }, null, 2) + '\n');
        return;
      }
      const m = manifest as {
        id?: string; version?: string; task?: string; labels?: string[]; minAgentVersion?: string;
        input?: { name?: string; layout?: string; shape?: number[]; resize?: string; normalisation?: unknown };
        output?: { name?: string; activation?: string };
        files?: { path: string; format: string; precision: string; size: number; sha256: string }[];
        golden?: { name?: string; modality?: string; label?: string }[];
        provenance?: { metrics?: { test?: { accuracy?: number; cases?: number } }; trainingCode?: { gitRevision?: string } };
      };
      const lines = [
        `${m.id ?? '?'} ${m.version ?? '?'}  (${m.task ?? '?'})`,
        `labels:     ${(m.labels ?? []).join(', ')}`,
        `input:      ${m.input?.name ?? '?'} ${m.input?.layout ?? '?'} [${(m.input?.shape ?? []).join(',')}] resize ${m.input?.resize ?? '?'} normalisation ${JSON.stringify(m.input?.normalisation)}`,
        `output:     ${m.output?.name ?? '?'} (${m.output?.activation ?? '?'})`,
        'files:',
        ...(m.files ?? []).map((f) => `  ${f.path}  ${f.format}/${f.precision}  ${f.size} bytes  sha256 ${f.sha256}`),
        `golden:     ${(m.golden ?? []).length} input(s)${(m.golden ?? []).length ? ': ' + (m.golden ?? []).map((g) => `${g.name ?? '?'}${g.modality ? ` (${g.modality})` : ''}`).join(', ') : ''}`,
      ];
      const acc = m.provenance?.metrics?.test?.accuracy;
      if (acc !== undefined) lines.push(`test:       accuracy ${acc} on ${m.provenance?.metrics?.test?.cases ?? '?'} cases`);
      if (m.provenance?.trainingCode?.gitRevision) lines.push(`trained at: ${m.provenance.trainingCode.gitRevision}`);
      if (m.minAgentVersion) lines.push(`minAgent:   ${m.minAgentVersion}`);
      lines.push(
        `signature:  ${signature.present ? (signature.error ? `unreadable (${signature.error})` : `key ${signature.keyId ?? '?'} (not verified here: use model verify)`) : 'NONE (unsigned)'}`,
        `schema:     ${schema.ok ? 'ok' : `INVALID: ${schema.errors.join('; ')}`}`,
      );
      process.stdout.write(lines.join('\n') + '\n');
    });

  model
    .command('verify')
    .description('check signature, schema, paths, file hashes and golden outputs; exit 1 listing every problem')
    .argument('<bundle>', 'bundle directory')
    .option('-k, --key <pub...>', 'trusted public key PEM file(s) (default: model.trustedKeys of the config)')
    .option('-c, --config <file>', 'device config whose model settings (trusted keys, runtime, providers) to use')
    .option('--allow-unsigned', 'accept a bundle without manifest.sig')
    .option('--no-golden', 'skip running the golden inputs')
    .option('--json', 'print the report as JSON')
    .action(async (dir: string, opts: { key?: string[]; config?: string; allowUnsigned?: boolean; golden: boolean; json?: boolean }) => {
      const r = await verifyBundle(dir, opts);
      if (opts.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else {
        const out: string[] = [`bundle ${dir}${r.id ? `: ${r.id} ${r.version ?? ''}` : ''}`];
        if (r.signature) out.push(r.signature.signed ? `  ok   signature: key ${r.signature.keyId ?? '?'} (${r.signature.keySource ?? '?'})` : '  ok   signature: unsigned (allowed)');
        if (r.id) out.push('  ok   schema, paths, sizes and sha256 of every file');
        for (const g of r.golden.filter((x) => x.ok)) out.push(`  ok   golden ${g.file} '${g.name}': max abs diff ${g.maxAbsDiff.toPrecision(3)} <= ${g.tolerance}`);
        for (const k of r.skipped) out.push(`  skip golden ${k.file}: ${k.reason}`);
        process.stdout.write(out.join('\n') + '\n');
        for (const p of r.problems) process.stderr.write(`edge-agent: ${dir}: ${p.check}: ${p.code}: ${p.message}\n`);
        process.stdout.write(r.ok ? 'verified: OK\n' : `REJECTED: ${r.problems.length} problem(s)\n`);
      }
      process.exitCode = r.ok ? 0 : 1;
    });

  model
    .command('sign')
    .description('sign a bundle: writes manifest.sig (Ed25519 over manifest.json) after checking its files')
    .argument('<bundle>', 'bundle directory')
    .requiredOption('-k, --key <private.pem>', 'Ed25519 private key (PKCS#8 PEM)')
    .option('--force', 'sign even when the manifest or files fail verification')
    .action(async (dir: string, opts: { key: string; force?: boolean }) => {
      if (!opts.force) {
        try {
          await loadBundle(dir);
        } catch (e) {
          die(`refusing to sign ${dir}: ${messageOf(e)}`);
        }
      }
      let pem: Buffer;
      try {
        pem = await readFile(opts.key);
      } catch (e) {
        die(`cannot read key ${opts.key}: ${(e as NodeJS.ErrnoException).code ?? messageOf(e)}`);
      }
      try {
        const sig = await signBundle(dir, pem, opts.key);
        process.stdout.write(`signed ${path.join(dir, 'manifest.sig')} with key ${sig.keyId}\n`);
      } catch (e) {
        die(messageOf(e));
      }
    });

  model
    .command('pack')
    .description('write the bundle directory as a plain ustar .tar for transport')
    .argument('<bundle>', 'bundle directory')
    .option('-o, --out <file.tar>', 'output file (default: <bundle dir name>.tar)')
    .action(async (dir: string, opts: { out?: string }) => {
      const out = opts.out ?? `${path.basename(path.resolve(dir))}.tar`;
      try {
        const r = await packBundle(dir, out);
        process.stdout.write(`packed ${r.entries} entries into ${out} (${r.bytes} bytes)\n`);
      } catch (e) {
        die(messageOf(e));
      }
    });

  model
    .command('unpack')
    .description('extract a bundle .tar into a new directory (refuses traversal, links and oversize archives); then run model verify')
    .argument('<file>', 'bundle .tar')
    .argument('<dir>', 'destination directory (must not exist or be empty)')
    .option('--max-bytes <n>', 'largest total content accepted', (v) => Number.parseInt(v, 10), 2 * 1024 ** 3)
    .action(async (file: string, dir: string, opts: { maxBytes: number }) => {
      try {
        const r = await unpackBundle(file, dir, { maxTotalBytes: opts.maxBytes });
        process.stdout.write(`unpacked ${r.files} files (${r.bytes} bytes) into ${dir}; check it with: edge-agent model verify ${dir}\n`);
      } catch (e) {
        die(`${file}: ${e instanceof PackError ? 'refused: ' : ''}${messageOf(e)}`);
      }
    });

  program
    .command('keygen')
    .description('generate an Ed25519 key pair for signing bundles: PREFIX.pem (private, 0600) and PREFIX.pub.pem')
    .requiredOption('-o, --out <prefix>', 'output path prefix')
    .action(async (opts: { out: string }) => {
      const pair = generateSigningKeyPair();
      const priv = `${opts.out}.pem`;
      const pub = `${opts.out}.pub.pem`;
      try {
        await writeFile(priv, pair.privatePem, { flag: 'wx', mode: 0o600 });
        await chmod(priv, 0o600);
        await writeFile(pub, pair.publicPem, { flag: 'wx' });
      } catch (e) {
        die(`${(e as NodeJS.ErrnoException).code === 'EEXIST' ? 'refusing to overwrite' : 'cannot write'} ${(e as NodeJS.ErrnoException).path ?? opts.out}`);
      }
      process.stdout.write(`key id ${pair.keyId}\nprivate: ${priv} (keep it on the signing server)\npublic:  ${pub} (list it in model.trustedKeys)\n`);
    });
}
