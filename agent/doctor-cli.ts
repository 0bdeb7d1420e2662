/**
 * `edge-agent doctor [--json]`: which runtimes, execution providers and backends work on THIS machine,
 * found by trying each one (src/runtimes/doctor.ts). Wiring and rendering only.
 * Exit codes: 0 at least one runtime can serve a model, 1 none can, 2 usage.
 */
import type { Command } from 'commander';
import { diagnose, type DoctorReport } from '../src/runtimes/doctor.js';
import { runtimeRegistry } from '../src/runtimes/registry.js';

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ').trimEnd()).join('\n') + '\n';
}

export function renderDoctor(report: DoctorReport): string {
  const m = report.machine;
  let out = `machine: ${m.platform}/${m.arch}, ${m.cpus} cores (${m.cpuModel}), ${m.memoryMb} MiB, node ${m.node}\n`;
  out += `gpu devices: ${m.gpus.length ? m.gpus.join(', ') : 'none found (no /proc/driver/nvidia, no /dev/dri render node)'}\n\n`;
  const rows: string[][] = [['RUNTIME', 'PROVIDER', 'STATUS', 'REASON / DETAIL']];
  for (const rt of report.runtimes) {
    rows.push([rt.type, '-', rt.available ? 'available' : 'unavailable', [rt.version ? `version ${rt.version}` : '', rt.reason ?? ''].filter(Boolean).join('; ')]);
    for (const p of rt.providers) {
      rows.push(['', p.name, p.available ? 'available' : 'unavailable', [p.reason, p.detail].filter(Boolean).join(' | ')]);
    }
  }
  out += table(rows);
  const notes = report.runtimes.filter((r) => r.note).map((r) => `- ${r.type}: ${r.note!}`);
  if (notes.length) out += `\nnotes:\n${notes.join('\n')}\n`;
  return out;
}

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description('list every runtime and execution provider with available/unavailable and the reason, found by trying each on this machine')
    .option('--json', 'print the report as JSON')
    .action(async (opts: { json?: boolean }) => {
      const report = await diagnose(runtimeRegistry());
      process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : renderDoctor(report));
      process.exitCode = report.runtimes.some((r) => r.available) ? 0 : 1;
    });
}
