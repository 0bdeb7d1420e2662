/**
 * One bench/fleet worker process: runs a slice of the simulated agents (src/central/sim.ts, real MQTT
 * clients) and does what the coordinator (run.ts) asks over IPC: flip an agent's state (timestamped just
 * before the publish), count agents serving a version, stop.
 */
import { SimAgent } from '../../src/central/sim.js';

type Msg =
  | { type: 'start'; url: string; from: number; count: number; prefix: string; group: string; model: { id: string; version: string; sha256: string }; healthIntervalMs: number }
  | { type: 'flip'; deviceId: string; online: boolean }
  | { type: 'count'; version: string }
  | { type: 'stop' };

const agents = new Map<string, SimAgent>();
const reply = (m: Record<string, unknown>): void => {
  process.send?.(m);
};

process.on('message', (m: Msg) => {
  void (async () => {
    switch (m.type) {
      case 'start': {
        const list: SimAgent[] = [];
        for (let i = m.from; i < m.from + m.count; i++) {
          const a = new SimAgent({
            url: m.url,
            deviceId: `${m.prefix}-${String(i).padStart(4, '0')}`,
            groups: [m.group],
            model: m.model,
            behaviour: { download: false, healthIntervalMs: m.healthIntervalMs },
          });
          list.push(a);
          agents.set(a.deviceId, a);
        }
        for (let i = 0; i < list.length; i += 25) await Promise.all(list.slice(i, i + 25).map((a) => a.start()));
        reply({ type: 'ready', count: list.length });
        break;
      }
      case 'flip': {
        const a = agents.get(m.deviceId);
        const t0 = Date.now();
        await a?.setOnline(m.online);
        reply({ type: 'flipped', deviceId: m.deviceId, t0 });
        break;
      }
      case 'count': {
        let n = 0;
        for (const a of agents.values()) if (a.serving?.version === m.version && a.phase === 'active') n++;
        reply({ type: 'count', n });
        break;
      }
      case 'stop':
        await Promise.all([...agents.values()].map((a) => a.stop()));
        reply({ type: 'stopped' });
        process.exit(0);
    }
  })().catch((e: unknown) => reply({ type: 'error', message: (e as Error).message }));
});
reply({ type: 'hello' });
