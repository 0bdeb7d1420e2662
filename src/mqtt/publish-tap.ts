/**
 * TEST-ONLY PUBLISH TAP. Inert unless the agent's environment has `EDGE_AGENT_TEST_PUBLISH_TAP=<file>`
 * (production never sets it): then every PUBLISH the MQTT link hands to its client (state, health,
 * results from the outbox, errors, responses, model state, retained or not) and the last will as
 * configured are appended to that file, one JSON line each: `{"topic","payload","retain","will"?}`
 * (payload as UTF-8 text). Synchronous appends, so a line is on disk before the packet is sent and
 * survives a kill -9. The end-to-end tests (tests/helpers/agent.ts) scan the file for the patient
 * identifiers of the fixtures.
 */
import { appendFileSync } from 'node:fs';
import type { MqttClient } from 'mqtt';

export const PUBLISH_TAP_ENV = 'EDGE_AGENT_TEST_PUBLISH_TAP';

interface Will {
  topic: string;
  payload: Buffer | string;
  retain?: boolean;
}

function record(file: string, topic: unknown, payload: unknown, retain: boolean, will = false): void {
  const text = Buffer.isBuffer(payload) ? payload.toString('utf8') : String(payload);
  try {
    appendFileSync(file, `${JSON.stringify({ topic: String(topic), payload: text, retain, ...(will ? { will: true } : {}) })}\n`);
  } catch {
    // A test-only record must never change what the agent does.
  }
}

/** Wraps `client.publish` and records the will when the tap is enabled; does nothing otherwise. */
export function tapPublishes(client: MqttClient, will: Will, env: NodeJS.ProcessEnv = process.env): void {
  const file = env[PUBLISH_TAP_ENV];
  if (!file) return;
  record(file, will.topic, will.payload, will.retain ?? false, true);
  const original = client.publish.bind(client) as (...args: unknown[]) => MqttClient;
  (client as unknown as { publish: (...args: unknown[]) => MqttClient }).publish = (...args: unknown[]) => {
    const opts = typeof args[2] === 'object' && args[2] !== null ? (args[2] as { retain?: boolean }) : {};
    record(file, args[0], args[1], opts.retain ?? false);
    return original(...args);
  };
}
