import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI } from '../helpers/agent.js';

function run(args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
}

describe('edge-agent validate-config', () => {
  it('accepts every shipped device config (offline for the ones meant for other machines)', () => {
    const dir = path.resolve('device-configs');
    const r = run(['validate-config', path.join(dir, 'default.yaml')]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/default\.yaml: ok/);
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.yaml'))) {
      expect(run(['validate-config', '--offline', path.join(dir, f)]).status, f).toBe(0);
    }
  });

  it('lists every problem with path and line, exit 1, without starting anything', () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'vc-')), 'bad.yaml');
    writeFileSync(file, 'pipeline:\n  concurrency: 0\nmodel:\n  graphOptimization: max\n  providers: []\nprivacy:\n  allowUids: "no"\n');
    const r = run(['validate-config', file]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/pipeline\.concurrency: must be >= 1 \(line 2\)/);
    expect(r.stderr).toMatch(/model\.graphOptimization: must be one of disabled, basic, extended, all \(line 4\)/);
    expect(r.stderr).toMatch(/model\.providers: must NOT have fewer than 1 items \(line 5\)/);
    expect(r.stderr).toMatch(/privacy\.allowUids: must be boolean \(line 7\)/);
  });

  it('a config for another machine fails on its missing files unless --offline', () => {
    const r = run(['validate-config', path.resolve('device-configs/ct-scanner.yaml')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/mqtt\.tls\.caFile: cannot read \/etc\/imaging-edge-agent\/hospital-ca\.pem: ENOENT/);
  });
});
