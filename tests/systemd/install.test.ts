/**
 * systemd/install.sh as a release engineer uses it: `npm pack` makes the release, install.sh installs it
 * (staged under --root, so the test never touches this machine's /opt, /etc or users) with production
 * dependencies from the npm cache only (--offline), the installed agent runs and tells a real notify
 * socket READY/STOPPING, an upgrade keeps the edited config, --uninstall keeps config and state,
 * --purge removes them.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { freePort } from '../helpers/ports.js';
import { until } from '../mqtt/util.js';
import { NotifySocket, python3Available } from './notify-socket.js';

const built = existsSync('dist/agent/cli.js');
if (process.env.CI === 'true' && (!built || !python3Available)) throw new Error('CI=true: the install test needs dist/ (npm run build) and python3');

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const mode = (p: string): string => (statSync(p).mode & 0o7777).toString(8);

describe.skipIf(!built || !python3Available)('systemd/install.sh with a release made by npm pack', () => {
  it('installs offline, runs under a notify socket, upgrades keeping the config, uninstalls and purges', { timeout: 600_000 }, async () => {
    const work = mkdtempSync(path.join(tmpdir(), 'release-'));
    // --ignore-scripts: dist/ is built already (npm test builds first); rebuilding it here would race the
    // other suites that run the compiled agent.
    const packed = JSON.parse(sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work])) as { filename: string; files: { path: string }[] }[];
    const tarball = path.join(work, packed[0]!.filename);
    const files = packed[0]!.files.map((f) => f.path);
    expect(files).toContain('dist/agent/cli.js');
    expect(files).toContain('systemd/imaging-edge-agent.service');
    expect(files).toContain('models/orientation-qa/model.onnx');
    // No sources, tests, training code or private keys; the central console's static web files are the
    // one part of src/ that ships as is (HTML/JS/CSS served by edge-central, nothing to compile).
    expect(files.filter((f) => (/^(tests|bench|models\/training|src)\//.test(f) && !/^src\/central\/console\/[\w.-]+\.(html|js|css)$/.test(f)) || /signing-key\.pem$/.test(f))).toEqual([]);
    expect(files).toContain('src/central/console/index.html');

    const root = path.join(work, 'root');
    mkdirSync(root);
    const out = sh('bash', ['systemd/install.sh', '--offline', '--root', root, tarball]);
    expect(out).toMatch(/staged under/);
    const opt = path.join(root, 'opt/imaging-edge-agent');
    const etc = path.join(root, 'etc/imaging-edge-agent');
    const unit = path.join(root, 'etc/systemd/system/imaging-edge-agent.service');
    expect(readFileSync(unit, 'utf8')).toMatch(/^ExecStart=\S*node \/opt\/imaging-edge-agent\/dist\/agent\/cli\.js run --config \/etc\/imaging-edge-agent\/agent\.yaml$/m);
    expect(existsSync(path.join(root, 'usr/lib/sysusers.d/imaging-edge-agent.conf'))).toBe(true);
    expect(existsSync(path.join(root, 'usr/lib/tmpfiles.d/imaging-edge-agent.conf'))).toBe(true);
    expect(readFileSync(path.join(etc, 'agent.yaml'), 'utf8')).toBe(readFileSync('systemd/agent.yaml', 'utf8'));
    expect(mode(path.join(etc, 'credentials'))).toBe('700');
    expect(mode(path.join(etc, 'credentials/mqtt-password'))).toBe('600');
    expect(readdirSync(opt)).not.toContain('tests');
    expect(existsSync(path.join(opt, 'node_modules/typescript'))).toBe(false); // production dependencies only
    expect(existsSync(path.join(opt, 'node_modules/unix-dgram/build/Release/unix_dgram.node'))).toBe(true);

    // The installed agent (not the checkout) runs and speaks sd_notify.
    const sock = await NotifySocket.open();
    const dirs = path.join(work, 'var');
    const config = path.join(work, 'agent.yaml');
    const port = await freePort();
    writeFileSync(
      config,
      stringify({
        deviceId: 'dev-installed',
        inbox: path.join(dirs, 'inbox'),
        stateDir: path.join(dirs, 'state'),
        doneDir: path.join(dirs, 'done'),
        quarantineDir: path.join(dirs, 'quarantine'),
        mqtt: { url: '', embedded: { host: '127.0.0.1', port } },
        model: { warmupRuns: 1 },
      }),
    );
    const agent = spawn(process.execPath, [path.join(opt, 'dist/agent/cli.js'), 'run', '--config', config], {
      env: { ...process.env, NOTIFY_SOCKET: sock.address, WATCHDOG_USEC: '1000000' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => agent.on('exit', (code) => resolve(code)));
    try {
      await until(() => sock.with('READY', '1').length === 1, 60_000, 'READY=1 from the installed agent');
      await until(() => sock.with('WATCHDOG', '1').length >= 2, 10_000, 'WATCHDOG=1 from the installed agent');
      agent.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(sock.with('STOPPING', '1')).toHaveLength(1);
    } finally {
      agent.kill('SIGKILL');
      sock.close();
    }

    // Upgrade: the edited config stays; --config replaces it and keeps a .bak.
    writeFileSync(path.join(etc, 'agent.yaml'), 'configId: edited\n');
    sh('bash', ['systemd/install.sh', '--offline', '--root', root, opt]); // a bundled directory this time
    expect(readFileSync(path.join(etc, 'agent.yaml'), 'utf8')).toBe('configId: edited\n');
    sh('bash', ['systemd/install.sh', '--offline', '--root', root, '--config', 'device-configs/ct-scanner.yaml', opt]);
    expect(readFileSync(path.join(etc, 'agent.yaml'), 'utf8')).toBe(readFileSync('device-configs/ct-scanner.yaml', 'utf8'));
    expect(readFileSync(path.join(etc, 'agent.yaml.bak'), 'utf8')).toBe('configId: edited\n');

    // Uninstall keeps config, credentials and state; purge removes them.
    const journal = path.join(root, 'var/lib/imaging-edge-agent/state/agent.db');
    mkdirSync(path.dirname(journal), { recursive: true });
    writeFileSync(journal, 'journal');
    sh('bash', ['systemd/install.sh', '--uninstall', '--root', root]);
    for (const gone of [opt, unit, path.join(root, 'usr/lib/sysusers.d/imaging-edge-agent.conf'), path.join(root, 'usr/lib/tmpfiles.d/imaging-edge-agent.conf')]) {
      expect(existsSync(gone), gone).toBe(false);
    }
    expect(existsSync(path.join(etc, 'agent.yaml'))).toBe(true);
    expect(existsSync(path.join(etc, 'credentials/mqtt-password'))).toBe(true);
    expect(readFileSync(journal, 'utf8')).toBe('journal');
    sh('bash', ['systemd/install.sh', '--uninstall', '--purge', '--root', root]);
    expect(existsSync(etc)).toBe(false);
    expect(existsSync(path.join(root, 'var/lib/imaging-edge-agent'))).toBe(false);
  });

  it('refuses what is not a release', () => {
    const r = spawnSync('bash', ['systemd/install.sh', '--root', mkdtempSync(path.join(tmpdir(), 'root-')), 'README.md'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/not a tarball from npm pack/);
  });
});
