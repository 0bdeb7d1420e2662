/**
 * `edge-central` as an operator runs it (the compiled CLI, `npm test` builds first): `serve` on real
 * mosquitto, `bundle upload`, `rollout create --wait` moving simulated agents to a new version (exit 0),
 * a canary failure rolled back (exit 1, with the agent's reason), `rollout status`, and refusals.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimFleet, stopSimFleet, type SimAgent } from '../../src/central/sim.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { makeBundle, runCentralCli, serveCentral, tempDir, until, type MadeBundle, type ServedCentral } from './helpers.js';
import { writeFileSync } from 'node:fs';

const run = runCentralCli;

describe.skipIf(skipWithoutMosquitto)('edge-central CLI', () => {
  let broker: Mosquitto;
  let central: ServedCentral;
  let url = '';
  let env: NodeJS.ProcessEnv;
  let sims: SimAgent[] = [];
  let good: MadeBundle;
  let bad: MadeBundle;

  beforeAll(async () => {
    broker = await startMosquitto();
    central = await serveCentral(broker.url);
    ({ url, env } = central);
    [good, bad] = await Promise.all([makeBundle('1.2.0'), makeBundle('1.3.0')]);
    sims = await startSimFleet({
      url: broker.url,
      count: 4,
      prefix: 'dev',
      groups: () => ['ct-room'],
      model: { id: 'orientation-qa', version: '1.1.0', sha256: 'x' },
      behaviour: (i) => ({ download: true, failVersions: i === 0 ? ['1.3.0'] : [] }),
    });
  });
  afterAll(async () => {
    await stopSimFleet(sims);
    await central?.stop();
    await broker?.dispose();
  });

  it('uploads bundles (a directory is packed first) and refuses an unsigned one', async () => {
    const up = await run(['bundle', 'upload', good.dir], env);
    expect(up.code, up.stderr).toBe(0);
    expect(JSON.parse(up.stdout)).toMatchObject({ id: 'orientation-qa', version: '1.2.0' });
    expect((await run(['bundle', 'upload', bad.tar], env)).code).toBe(0);
    const unsigned = await makeBundle('1.4.0', { key: null });
    const refused = await run(['bundle', 'upload', unsigned.tar], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/bundle refused \(unsigned\)/);
    const list = await run(['bundle', 'list'], env);
    expect(list.stdout.split('\n').filter(Boolean).map((l) => l.split('\t')[0])).toEqual(['orientation-qa@1.3.0', 'orientation-qa@1.2.0']);
  });

  it('rollout create --wait moves the group to the new version and exits 0', async () => {
    await until(async () => ((await run(['rollout', 'status'], env)).code === 0 ? true : null), 'api up');
    const r = await run(['rollout', 'create', '--bundle', 'orientation-qa@1.2.0', '--group', 'ct-room', '--canary', '0.25', '--wait'], env);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^r-\S+ orientation-qa@1\.2\.0 -> ct-room: canary;/);
    expect(lines.at(-1)).toMatch(/: succeeded; 4\/4 active, 0 failed/);
    expect(sims.every((s) => s.serving?.version === '1.2.0')).toBe(true);
    const id = lines[0]!.split(' ')[0]!;
    const st = await run(['rollout', 'status', id], env);
    expect(st.stdout).toMatch(/dev-0000\tcanary\tsucceeded\tactive/);
    expect(st.stdout).toMatch(/dev-0003\trest\tsucceeded\tactive/);
  });

  it('a bundle that fails on the canary is rolled back: exit 1 with the agent\'s reason', async () => {
    const r = await run(['rollout', 'create', '--bundle', 'orientation-qa@1.3.0', '--group', 'ct-room', '--canary', '0.25', '--wait'], env);
    expect(r.code).toBe(1);
    expect(r.stdout.trim().split('\n').at(-1)).toMatch(/rolled-back; .*dev-0000: golden check failed/);
    expect(sims.every((s) => s.serving?.version === '1.2.0')).toBe(true);
    const id = r.stdout.split(' ')[0]!;
    const halt = await run(['rollout', 'halt', id], env);
    expect(halt.code).toBe(1);
    expect(halt.stderr).toMatch(/already rolled-back/);
  });

  it('refuses without a token, and with a wrong one', async () => {
    const none = await run(['rollout', 'status'], { EDGE_CENTRAL_URL: url, EDGE_CENTRAL_TOKEN_FILE: '' });
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/--token-file/);
    const f = path.join(tempDir(), 'wrong');
    writeFileSync(f, 'wrong-token-wrong-token\n');
    const wrong = await run(['rollout', 'status', '--token-file', f], { EDGE_CENTRAL_URL: url });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/authentication required/);
  });
});
