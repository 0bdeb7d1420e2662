/**
 * The web console in a real headless Chromium (Debian chromium + playwright-core): sign in with the
 * token, see the simulated agents appear and change, filter, open an agent's detail, start a rollout
 * from the form and watch it complete; without signing in there is nothing to see.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimFleet, stopSimFleet, type SimAgent } from '../../src/central/sim.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { makeBundle, startTestCentral, TOKEN, upload, type TestCentral } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && process.env.CI === 'true') throw new Error(`${CHROMIUM} not found (apt-get install chromium); CI=true: a missing peer is a failure`);
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

describe.skipIf(skipWithoutMosquitto || !haveChromium)('central web console (Chromium)', () => {
  let broker: Mosquitto;
  let central: TestCentral;
  let browser: Browser;
  let page: Page;
  let sims: SimAgent[] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    central = await startTestCentral(broker.url);
    for (const v of ['1.1.0', '1.2.0']) expect((await upload(central, await makeBundle(v))).status).toBe(201);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
    page = await browser.newPage();
  });
  afterAll(async () => {
    await browser?.close();
    await stopSimFleet(sims);
    await central?.close();
    await broker?.dispose();
  });

  it('needs a sign-in: the console redirects to the login page and a wrong token is refused', async () => {
    await page.goto(central.url + '/');
    expect(new URL(page.url()).pathname).toBe('/login');
    await page.fill('#token', 'not-the-token-at-all');
    await page.click('button[type=submit]');
    await page.waitForURL(/\/login\?error=1/);
    expect(await page.isVisible('#login-error')).toBe(true);
    const api = await page.evaluate(async () => (await fetch('/api/agents')).status);
    expect(api).toBe(401);
  });

  it('signs in and shows agents as they appear, live', async () => {
    await page.fill('#token', TOKEN);
    await page.click('button[type=submit]');
    await page.waitForURL((u) => u.pathname === '/');
    await page.waitForSelector('#live.on');
    expect(await page.locator('[data-testid=agent-row]').count()).toBe(0);
    sims = await startSimFleet({
      url: broker.url,
      count: 5,
      prefix: 'ct',
      groups: (i) => (i < 3 ? ['ward-a'] : ['ward-b']),
      model: { id: 'orientation-qa', version: '1.1.0', sha256: 'x' },
      behaviour: () => ({ download: true, stepDelayMs: 100 }),
    });
    await expectRows(page, 5);
    await waitText(page, '#summary', 'is', '5 agents, 5 online, 0 offline');
    // a state change on an agent shows up without reloading
    sims[4]!.crash();
    await waitText(page, '[data-device="ct-0004"] [data-testid=agent-status]', 'is', 'offline');
    // filters
    await page.selectOption('[data-testid=filter-online]', 'false');
    await expectRows(page, 1);
    await page.selectOption('[data-testid=filter-online]', '');
    await page.selectOption('[data-testid=filter-group]', 'ward-a');
    await expectRows(page, 3);
    await page.selectOption('[data-testid=filter-group]', '');
  });

  it('shows an agent with its recent results and errors', async () => {
    await sims[1]!.publishResult('rot180');
    await sims[1]!.publishError('decode-failed', 'capture-2.dcm: not a DICOM file');
    await page.click('[data-device="ct-0001"]');
    await page.waitForSelector('[data-testid=detail]:not([hidden])');
    await waitCount(page, '[data-testid=detail-errors] tbody tr', 1);
    expect(await page.textContent('#d-id')).toBe('ct-0001');
    await waitText(page, '[data-testid=detail-results] tbody', 'includes', 'rot180');
    expect(await page.textContent('[data-testid=detail-errors] tbody')).toContain('capture-2.dcm: not a DICOM file');
    // the row's last-error column follows from the live stream (its own event, rendered on the next frame)
    await waitText(page, '[data-device="ct-0001"]', 'includes', 'decode-failed');
    // a command from the detail panel goes to the agent and shows its answer
    await page.click('[data-testid=detail-commands] [data-cmd=ping]');
    await waitText(page, '[data-testid=command-output]', 'includes', '"pong": true');
  });

  it('starts a rollout from the form and shows it complete, with every agent on the new version', async () => {
    await page.selectOption('#r-bundle', 'orientation-qa@1.2.0');
    await page.fill('#r-group', 'ward-a');
    await page.fill('#r-canary', '0.34');
    await page.click('#new-rollout button[type=submit]');
    await waitText(page, '[data-testid=rollout-message]', 'startsWith', 'started r-');
    const row = page.locator('[data-testid=rollout-row]').first();
    await waitText(page, '[data-testid=rollout-row] [data-testid=rollout-status]', 'is', 'succeeded', 30_000);
    expect(await row.locator('[data-testid=rollout-progress]').textContent()).toContain('3/3 active, 0 failed');
    await page.selectOption('[data-testid=filter-version]', '1.2.0');
    await expectRows(page, 3);
    const versions = await page.locator('[data-testid=agent-row] [data-testid=agent-version]').allTextContents();
    expect(versions).toEqual(['orientation-qa@1.2.0', 'orientation-qa@1.2.0', 'orientation-qa@1.2.0']);
  });

  it('shows a refused rollout with the server\'s reason', async () => {
    await page.fill('#r-group', 'no-such-group');
    await page.click('#new-rollout button[type=submit]');
    await waitText(page, '[data-testid=rollout-message]', 'includes', 'has no agents');
  });
});

async function expectRows(page: Page, n: number): Promise<void> {
  await waitCount(page, '[data-testid=agent-row]', n);
}

/** The little of the DOM these checks read (the tests compile without the DOM lib). */
interface MiniDocument {
  querySelector(sel: string): { textContent: string | null } | null;
  querySelectorAll(sel: string): { length: number };
}

/** Waits in the page (the console's CSP forbids string eval, so these are functions with arguments). */
async function waitText(page: Page, sel: string, mode: 'is' | 'includes' | 'startsWith', want: string, timeout = 20_000): Promise<void> {
  await page.waitForFunction(
    (a) => {
      const t = (globalThis as unknown as { document: MiniDocument }).document.querySelector(a.sel)?.textContent ?? null;
      return t !== null && (a.mode === 'is' ? t === a.want : a.mode === 'includes' ? t.includes(a.want) : t.startsWith(a.want));
    },
    { sel, mode, want },
    { timeout },
  );
}

async function waitCount(page: Page, sel: string, n: number): Promise<void> {
  await page.waitForFunction((a) => (globalThis as unknown as { document: MiniDocument }).document.querySelectorAll(a.sel).length === a.n, { sel, n });
}
