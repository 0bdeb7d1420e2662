/**
 * Separate subscriber process for bench/e2e: an mqtt.js client subscribed (QoS 1) to the agent's
 * result topic. For every message it prints one JSON line with the arrival time (epoch ms, sub-ms
 * resolution: comparable with the driver's drop times on the same host), the content hash and the
 * result's label and timings. It prints {"ready":true} once the subscription is acknowledged.
 *
 * Usage: node dist/bench/e2e/subscriber.js <mqtt-url> <topic>
 */
import mqtt from 'mqtt';
import { nowEpochMs } from './stats.js';

const [url, topic] = process.argv.slice(2);
if (!url || !topic) {
  process.stderr.write('usage: subscriber.js <mqtt-url> <topic>\n');
  process.exit(2);
}

interface ResultLike {
  resultId?: string;
  label?: string;
  timings?: Record<string, number>;
  input?: { contentHash?: string; fileName?: string };
}

const client = mqtt.connect(url, { clientId: `bench-sub-${process.pid}`, clean: true, protocolVersion: 5, reconnectPeriod: 500 });
client.on('message', (_topic, payload) => {
  const t = nowEpochMs();
  let r: ResultLike;
  try {
    r = JSON.parse(payload.toString('utf8')) as ResultLike;
  } catch {
    process.stdout.write(JSON.stringify({ t, bad: true }) + '\n');
    return;
  }
  const hash = (r.input?.contentHash ?? '').replace(/^sha256:/, '');
  process.stdout.write(JSON.stringify({ t, hash, resultId: r.resultId, label: r.label, timings: r.timings, bytes: payload.length }) + '\n');
});
client.on('error', (err) => process.stderr.write(`subscriber: ${err.message}\n`));
client.on('connect', () => {
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) {
      process.stderr.write(`subscriber: subscribe failed: ${err.message}\n`);
      process.exit(1);
    }
    process.stdout.write(JSON.stringify({ ready: true }) + '\n');
  });
});
process.on('SIGTERM', () => {
  client.end(true, () => process.exit(0));
});
