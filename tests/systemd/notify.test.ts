/**
 * sd_notify against a REAL notify socket: the compiled agent (`dist/agent/cli.js run`, as the unit starts
 * it) with NOTIFY_SOCKET and WATCHDOG_USEC pointing at a unix datagram socket bound by python3, the way
 * systemd's manager listens. READY=1 only once the agent is started AND connected to its broker,
 * WATCHDOG=1 repeatedly, STOPPING=1 on SIGTERM; nothing at all without NOTIFY_SOCKET.
 */
import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { notifySettings } from '../../src/systemd/notify.js';
import { AgentProcess, agentDirs, type LogLine } from '../helpers/agent.js';
import { mosquittoAvailable, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { freePort } from '../helpers/ports.js';
import { until } from '../mqtt/util.js';
import { NotifySocket, python3Available } from './notify-socket.js';

const systemdNotifyAvailable = spawnSync('systemd-notify', ['--version']).status === 0;
if (process.env.CI === 'true' && (!python3Available || !mosquittoAvailable || !systemdNotifyAvailable)) {
  throw new Error('CI=true: python3, mosquitto and systemd-notify (Debian systemd) are required for the sd_notify suite');
}

const WATCHDOG_USEC = '400000'; // 0.4 s: the agent pings every 0.2 s

const cleanup: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

/** Time stamped on a log line. The agent writes logs asynchronously, so the line may reach us after the datagram. */
async function logTime(agent: AgentProcess, re: RegExp): Promise<number> {
  const line: LogLine = await agent.waitForLog(re, 5000);
  return Date.parse(line.time as string);
}

async function start(env: NodeJS.ProcessEnv, config: Record<string, unknown>): Promise<AgentProcess> {
  const dirs = agentDirs(config);
  const agent = await AgentProcess.start(dirs, [], env);
  cleanup.push(() => agent.kill());
  return agent;
}

describe('sd_notify environment', () => {
  it('watchdog interval is half of WATCHDOG_USEC, and only for the PID named in WATCHDOG_PID', () => {
    expect(notifySettings({}, 42)).toEqual({ socket: null, watchdogIntervalMs: null });
    expect(notifySettings({ WATCHDOG_USEC: '30000000' }, 42)).toEqual({ socket: null, watchdogIntervalMs: null });
    expect(notifySettings({ NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '30000000' }, 42)).toEqual({
      socket: '/run/systemd/notify',
      watchdogIntervalMs: 15000,
    });
    expect(notifySettings({ NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42).watchdogIntervalMs).toBe(15000);
    // Inherited from a parent that was the watched process: not ours to ping.
    expect(notifySettings({ NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '41' }, 42).watchdogIntervalMs).toBeNull();
    expect(notifySettings({ NOTIFY_SOCKET: '@sd', WATCHDOG_USEC: 'junk' }, 42)).toEqual({ socket: '@sd', watchdogIntervalMs: null });
  });
});

describe.skipIf(!python3Available || !mosquittoAvailable)('sd_notify with the real agent and a real notify socket', () => {
  it('READY=1 after "agent started" and the broker connection, WATCHDOG=1 repeatedly, STOPPING=1 on SIGTERM', async () => {
    const sock = await NotifySocket.open();
    cleanup.push(() => sock.close());
    const port = await freePort();
    const agent = await start(
      { NOTIFY_SOCKET: sock.address, WATCHDOG_USEC },
      { deviceId: 'dev-sd', mqtt: { url: '', embedded: { host: '127.0.0.1', port } } },
    );
    await until(() => sock.with('READY', '1').length === 1, 20_000, 'READY=1');
    const ready = sock.with('READY', '1')[0]!;
    expect(ready.fields.STATUS).toMatch(/^running: device dev-sd, broker connected$/);
    // The agent stamped these log lines before it sent READY (same clock, ms resolution).
    expect(await logTime(agent, /^agent started$/)).toBeLessThanOrEqual(ready.at);
    expect(await logTime(agent, /^connected to MQTT broker$/)).toBeLessThanOrEqual(ready.at);

    const pingsAtReady = sock.with('WATCHDOG', '1').length;
    await until(() => sock.with('WATCHDOG', '1').length >= pingsAtReady + 4, 10_000, 'four more WATCHDOG=1 pings');
    expect(sock.with('STOPPING')).toHaveLength(0);

    expect(await agent.stop('SIGTERM')).toBe(0);
    const stopping = sock.with('STOPPING', '1');
    expect(stopping).toHaveLength(1);
    expect(stopping[0]!.fields.STATUS).toBe('stopping (SIGTERM)');
    expect(stopping[0]!.at).toBeGreaterThan(ready.at);
    expect(sock.with('READY')).toHaveLength(1); // once
  });

  it('with the broker down at start: started and pinging, but READY=1 only once the broker accepts it', async () => {
    const sock = await NotifySocket.open();
    cleanup.push(() => sock.close());
    const port = await freePort();
    const agent = await start(
      { NOTIFY_SOCKET: sock.address, WATCHDOG_USEC },
      { deviceId: 'dev-sd-late', mqtt: { url: `mqtt://127.0.0.1:${port}`, reconnectPeriodMs: 200 } },
    );
    // 'agent started' is logged (AgentProcess.start waited for it) while nothing listens on the port.
    await until(() => sock.with('STATUS').some((d) => /waiting for the MQTT broker/.test(d.fields.STATUS!)), 10_000, 'waiting STATUS');
    const pings = sock.with('WATCHDOG', '1').length;
    await new Promise((r) => setTimeout(r, 1500));
    expect(sock.with('READY')).toHaveLength(0);
    expect(sock.with('WATCHDOG', '1').length).toBeGreaterThan(pings + 3); // the loop is alive, systemd keeps waiting

    const brokerUpAt = Date.now();
    const broker: Mosquitto = await startMosquitto({ port });
    cleanup.push(() => broker.dispose());
    await until(() => sock.with('READY', '1').length === 1, 30_000, 'READY=1 after the broker came up');
    expect(sock.with('READY', '1')[0]!.at).toBeGreaterThanOrEqual(brokerUpAt);
    await agent.waitForLog(/^connected to MQTT broker$/);
    expect(await agent.stop('SIGTERM')).toBe(0);
    expect(sock.with('STOPPING', '1')).toHaveLength(1);
  });

  it.skipIf(!systemdNotifyAvailable)('an abstract socket (@name) gets the same messages through systemd-notify', async () => {
    const sock = await NotifySocket.open(true);
    cleanup.push(() => sock.close());
    const port = await freePort();
    const agent = await start({ NOTIFY_SOCKET: sock.address, WATCHDOG_USEC }, { mqtt: { url: '', embedded: { host: '127.0.0.1', port } } });
    await until(() => sock.with('READY', '1').length === 1, 20_000, 'READY=1 on the abstract socket');
    await until(() => sock.with('WATCHDOG', '1').length >= 3, 10_000, 'WATCHDOG=1 on the abstract socket');
    expect(await agent.stop('SIGTERM')).toBe(0);
    await until(() => sock.with('STOPPING', '1').length === 1, 5_000, 'STOPPING=1 on the abstract socket');
  });

  it('sends nothing when NOTIFY_SOCKET is unset (WATCHDOG_USEC alone means nothing)', async () => {
    const sock = await NotifySocket.open();
    cleanup.push(() => sock.close());
    const port = await freePort();
    const agent = await start({ NOTIFY_SOCKET: undefined, WATCHDOG_USEC }, { mqtt: { url: '', embedded: { host: '127.0.0.1', port } } });
    await agent.waitForLog(/^connected to MQTT broker$/);
    await new Promise((r) => setTimeout(r, 800)); // four watchdog periods
    expect(await agent.stop('SIGTERM')).toBe(0);
    expect(sock.datagrams).toHaveLength(0);
    expect(agent.logs.filter((l) => l.component === 'systemd')).toHaveLength(0);
  });
});
