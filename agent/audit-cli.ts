/**
 * `edge-agent audit export --since <ISO|duration> [--kind result|command|model] [--state-dir DIR | -c FILE]`
 * prints the audit log (src/store/audit.ts) as NDJSON, one entry per line in seq order.
 * `edge-agent audit verify` walks the hash chain. Wiring only.
 * Exit codes: 0 ok, 1 no store / bad chain / bad --since, 2 usage.
 */
import { Option, type Command } from 'commander';
import { loadConfig, shippedPath } from '../src/config/load.js';
import { AUDIT_KINDS, openAuditReadOnly, parseSince, type AuditKind } from '../src/store/audit.js';

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

  where(audit.command('verify').description('check the hash chain of the whole audit log; names the first broken row')).action(
    (opts: { stateDir?: string; config: string }) => {
      let store: ReturnType<typeof openAuditReadOnly>;
      try {
        store = openAuditReadOnly(stateDirOf(opts));
      } catch (err) {
        die((err as Error).message);
      }
      const r = store.audit.verify();
      store.close();
      if (!r.ok) die(`chain broken at seq ${r.brokenAt} (after ${r.rows} intact rows): a row was changed, inserted or removed`);
      process.stdout.write(`audit log intact: ${r.rows} rows\n`);
    },
  );
}
