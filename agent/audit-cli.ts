/**
 * `edge-agent audit export --since <ISO|duration> [--kind result|command|model] [--state-dir DIR | -c FILE]`
 * prints the audit log (src/store/audit.ts) as NDJSON, one entry per line in seq order.
 * `edge-agent audit verify [--file F...]` walks the hash chain of the store or of archived NDJSON files.
 * `edge-agent audit archive --before <ISO|duration> --out FILE` moves the oldest rows to an NDJSON file
 * (written and fsynced first, then deleted; the operator's retention path, never automatic). Wiring only.
 * Exit codes: 0 ok, 1 no store / bad chain / bad --since|--before / file exists, 2 usage.
 */
import Database from 'better-sqlite3';
import { Option, type Command } from 'commander';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { loadConfig, shippedPath } from '../src/config/load.js';
import { AUDIT_KINDS, AuditLog, openAuditReadOnly, parseSince, verifyExported, type AuditKind } from '../src/store/audit.js';

function stateDirOf(opts: { stateDir?: string; config: string }): string {
  if (opts.stateDir) return opts.stateDir;
  return loadConfig(opts.config, { checkFiles: false }).config.stateDir;
}

function die(message: string): never {
  process.stderr.write(`edge-agent audit: ${message}\n`);
  process.exit(1);
}

async function write(line: string): Promise<void> {
  if (!process.stdout.write(line)) await new Promise<void>((resolve) => process.stdout.once('drain', () => resolve()));
}

export function registerAuditCommands(program: Command): void {
  const audit = program.command('audit').description('the append-only audit log of results, commands and model changes');
  const where = (c: Command): Command =>
    c
      .option('-c, --config <file>', 'device config YAML (for its stateDir)', shippedPath('device-configs', 'default.yaml'))
      .option('--state-dir <dir>', 'state directory (overrides the config)');

  where(
    audit
      .command('export')
      .description('print audit entries as NDJSON, oldest first')
      .requiredOption('--since <time>', 'ISO time (2026-01-31T08:00:00Z) or duration back from now (90s, 15m, 12h, 30d, 2w)')
      .addOption(new Option('--kind <kind>', 'only this kind').choices([...AUDIT_KINDS])),
  ).action(async (opts: { since: string; kind?: AuditKind; stateDir?: string; config: string }) => {
    let since: number;
    try {
      since = parseSince(opts.since);
    } catch (err) {
      die((err as Error).message);
    }
    let store: ReturnType<typeof openAuditReadOnly>;
    try {
      store = openAuditReadOnly(stateDirOf(opts));
    } catch (err) {
      die((err as Error).message);
    }
    // `| head` closes the pipe early: stop quietly.
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(0);
      throw err;
    });
    try {
      for (const entry of store.audit.entries(opts.kind ? { since, kind: opts.kind } : { since })) await write(JSON.stringify(entry) + '\n');
    } finally {
      store.close();
    }
  });

  where(
    audit
      .command('verify')
      .description('check the hash chain of the audit log in the store, or of archived/exported NDJSON files (--file, in order); names the first broken row')
      .option('--file <files...>', 'NDJSON files from audit archive/export, oldest first, instead of the store'),
  ).action((opts: { stateDir?: string; config: string; file?: string[] }) => {
    if (opts.file?.length) {
      let prev: { seq: number; hash: string } | undefined;
      for (const f of opts.file) {
        let text: string;
        try {
          text = readFileSync(f, 'utf8');
        } catch (err) {
          die(`cannot read ${f}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        }
        const r = verifyExported(text.split('\n'), prev);
        if (!r.ok) die(`${f}: chain broken at seq ${r.brokenAt} (after ${r.rows} intact rows): a line was changed, inserted or removed`);
        const start = r.startsUnverifiedAt !== null ? ` (starts at seq ${r.startsUnverifiedAt}; give the previous archive first to check that link)` : '';
        process.stdout.write(`${f}: intact, ${r.rows} rows${r.last ? `, last seq ${r.last.seq} hash ${r.last.hash}` : ''}${start}\n`);
        prev = r.last ?? prev;
      }
      return;
    }
    let store: ReturnType<typeof openAuditReadOnly>;
    try {
      store = openAuditReadOnly(stateDirOf(opts));
    } catch (err) {
      die((err as Error).message);
    }
    const r = store.audit.verify();
    const anchor = store.audit.anchor();
    store.close();
    if (!r.ok) die(`chain broken at seq ${r.brokenAt} (after ${r.rows} intact rows): a row was changed, inserted or removed`);
    process.stdout.write(`audit log intact: ${r.rows} rows\n`);
    if (anchor) process.stdout.write(`continues the archived chain after seq ${anchor.seq} (hash ${anchor.hash})\n`);
  });

  where(
    audit
      .command('archive')
      .description('move audit rows older than --before to an NDJSON file (fsynced before they are deleted); the chain stays verifiable')
      .requiredOption('--before <time>', 'ISO time or duration back from now (e.g. 365d): rows before it are archived')
      .requiredOption('--out <file>', 'NDJSON file to create (must not exist)'),
  ).action((opts: { before: string; out: string; stateDir?: string; config: string }) => {
    let before: number;
    try {
      before = parseSince(opts.before);
    } catch (err) {
      die((err as Error).message.replace('--since', '--before'));
    }
    let file: string;
    try {
      file = path.join(stateDirOf(opts), 'agent.db');
    } catch (err) {
      die((err as Error).message);
    }
    if (!existsSync(file)) die(`no state store at ${file}`);
    // Writable, but never migrated or created here: a store without an audit table is refused.
    const db = new Database(file, { fileMustExist: true });
    db.pragma('busy_timeout = 10000');
    if (!db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").get()) {
      db.close();
      die(`state store ${file} has no audit log`);
    }
    let fd: number;
    try {
      fd = openSync(opts.out, 'wx', 0o600);
    } catch (err) {
      db.close();
      die(`cannot create ${opts.out}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    try {
      const r = new AuditLog(db).archive(
        before,
        (line) => writeSync(fd, line),
        () => fsyncSync(fd),
      );
      process.stdout.write(
        r.rows === 0 ? 'nothing to archive\n' : `archived ${r.rows} rows (seq ${r.firstSeq}..${r.lastSeq}) to ${opts.out}\n`,
      );
    } finally {
      closeSync(fd);
      db.close();
    }
  });
}
