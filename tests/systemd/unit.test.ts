/**
 * The shipped unit as systemd reads it: `systemd-analyze verify` (no warnings, with and without the GPU
 * drop-in) and `systemd-analyze security --offline=yes` (exposure score under the budget in
 * docs/DEPLOYMENT.md), plus the promises the unit makes to the device configs (credential names, paths).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const analyze = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
const analyzeVersion = analyze.status === 0 ? Number(/systemd (\d+)/.exec(analyze.stdout)?.[1] ?? 0) : 0;
if (process.env.CI === 'true' && analyzeVersion < 252) {
  throw new Error('CI=true: systemd-analyze >= 252 (Debian 12 package systemd) is required for the unit tests');
}

const UNIT = path.resolve('systemd/imaging-edge-agent.service');
const GPU_DROPIN = path.resolve('systemd/drop-ins/gpu-nvidia.conf');
/** Budget for the exposure score (0 = locked down, 10 = unprotected); the reasoning is in docs/DEPLOYMENT.md. */
const EXPOSURE_BUDGET = 2.0;

/**
 * A copy of the unit (and drop-ins) in a fresh directory. verify checks that ExecStart's binary exists:
 * the unit names /usr/bin/node (as install.sh writes it on Debian); where node lives elsewhere the copy
 * names this node instead, as install.sh does.
 */
function unitDir(dropIns: string[] = []): { dir: string; unit: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'unit-'));
  const unit = path.join(dir, 'imaging-edge-agent.service');
  let text = readFileSync(UNIT, 'utf8');
  if (spawnSync('test', ['-x', '/usr/bin/node']).status !== 0) text = text.replace('ExecStart=/usr/bin/node ', `ExecStart=${process.execPath} `);
  writeFileSync(unit, text);
  if (dropIns.length > 0) {
    mkdirSync(`${unit}.d`);
    for (const d of dropIns) copyFileSync(d, path.join(`${unit}.d`, path.basename(d)));
  }
  return { dir, unit };
}

function verify(dir: string, unit: string): { status: number | null; output: string } {
  // SYSTEMD_UNIT_PATH makes systemd-analyze read the drop-in directory beside the copy.
  const r = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8', env: { ...process.env, SYSTEMD_UNIT_PATH: `${dir}:` } });
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

function exposure(args: string[]): { score: number; label: string; output: string } {
  const r = spawnSync('systemd-analyze', ['security', '--offline=yes', '--no-pager', ...args], { encoding: 'utf8' });
  const output = `${r.stdout}${r.stderr}`;
  const m = /Overall exposure level for imaging-edge-agent\.service: (\d+\.\d+) (\w+)/.exec(output);
  if (!m) throw new Error(`no exposure score in systemd-analyze output:\n${output}`);
  return { score: Number(m[1]), label: m[2]!, output };
}

describe.skipIf(analyzeVersion < 252)('systemd unit (systemd-analyze)', () => {
  it('verify passes without a single warning', () => {
    const { dir, unit } = unitDir();
    expect(verify(dir, unit)).toEqual({ status: 0, output: '' });
  });

  it('verify passes with the NVIDIA GPU drop-in, and reads the drop-in', () => {
    const { dir, unit } = unitDir([GPU_DROPIN]);
    expect(verify(dir, unit)).toEqual({ status: 0, output: '' });
    // The drop-in directory is really read: a bad key in it is reported.
    writeFileSync(path.join(`${unit}.d`, 'zz-typo.conf'), '[Service]\nDeviceAlow=/dev/nvidia0 rw\n');
    expect(verify(dir, unit).output).toMatch(/Unknown key 'DeviceAlow'/);
  });

  it(`security --offline scores the unit below ${EXPOSURE_BUDGET} and keeps V8's JIT allowed`, () => {
    const { unit } = unitDir();
    const { score, output } = exposure([unit]);
    expect(score).toBeLessThan(EXPOSURE_BUDGET);
    // Spot checks of what the score stands on (a dropped line would show here as ✗).
    for (const ok of ['NoNewPrivileges=', 'ProtectSystem=', 'ProtectHome=', 'PrivateTmp=', 'SystemCallFilter=~@privileged', 'PrivateDevices=', 'RestrictNamespaces=~user']) {
      expect(output).toMatch(new RegExp(`✓ ${ok.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    }
    // MemoryDenyWriteExecute=yes would kill node at its first JIT-compiled function.
    expect(output).toMatch(/✗ MemoryDenyWriteExecute=/);
    expect(readFileSync(UNIT, 'utf8')).not.toMatch(/^MemoryDenyWriteExecute=/m);
  });

  it(`security --offline with the GPU drop-in stays below ${EXPOSURE_BUDGET}`, () => {
    const root = mkdtempSync(path.join(tmpdir(), 'unitroot-'));
    const sys = path.join(root, 'etc/systemd/system');
    mkdirSync(path.join(sys, 'imaging-edge-agent.service.d'), { recursive: true });
    copyFileSync(UNIT, path.join(sys, 'imaging-edge-agent.service'));
    copyFileSync(GPU_DROPIN, path.join(sys, 'imaging-edge-agent.service.d', 'gpu-nvidia.conf'));
    const { score, output } = exposure([`--root=${root}`, 'imaging-edge-agent.service']);
    expect(score).toBeLessThan(EXPOSURE_BUDGET);
    expect(output).toMatch(/✗ PrivateDevices=/); // the drop-in did apply
    expect(output).toMatch(/char-nvidia-frontend:rw/);
  });
});

describe('systemd unit and the device configs agree', () => {
  const unitText = readFileSync(UNIT, 'utf8');
  const credentials = [...unitText.matchAll(/^LoadCredential=([^:]+):/gm)].map((m) => m[1]);
  const configs = [
    ...readdirSync('device-configs')
      .filter((f) => f.endsWith('.yaml'))
      .map((f) => path.join('device-configs', f)),
    'systemd/agent.yaml',
  ];

  it('every ${CREDENTIALS_DIRECTORY}/<name> a device config reads is loaded by LoadCredential=', () => {
    const used = new Set<string>();
    for (const f of configs) {
      for (const m of readFileSync(f, 'utf8').matchAll(/^[^#\n]*\$\{CREDENTIALS_DIRECTORY\}\/([\w.-]+)/gm)) used.add(m[1]!);
    }
    expect(used.size).toBeGreaterThan(0);
    for (const name of used) expect(credentials).toContain(name);
  });

  it('every device config that lives in /var/lib keeps its state and inbox inside the writable StateDirectory', () => {
    expect(unitText).toMatch(/^StateDirectory=imaging-edge-agent$/m);
    expect(unitText).toMatch(/^ReadWritePaths=\/var\/lib\/imaging-edge-agent$/m);
    for (const f of configs) {
      const c = parse(readFileSync(f, 'utf8')) as Record<string, string | undefined>;
      if (!c.stateDir?.startsWith('/')) continue; // default.yaml: ./var, for `npm start`
      for (const key of ['inbox', 'stateDir', 'doneDir', 'quarantineDir']) {
        if (c[key] !== undefined) expect(`${f}: ${c[key]}`).toMatch(/: \/var\/lib\/imaging-edge-agent\/[a-z]+$/);
      }
    }
  });
});
