/**
 * Topic layout under `<baseTopic>/<deviceId>/`.
 *
 * Every topic the agent publishes to is built here, from a base and a device id validated once, so a
 * wildcard or an empty level can never reach the broker (a `+` or `#` in a PUBLISH topic is a protocol
 * error that makes the broker drop the connection; an empty level silently creates a different topic).
 */

export const DEFAULT_BASE_TOPIC = 'imaging';

/** MQTT limits a topic to 65535 bytes of UTF-8. */
const MAX_TOPIC_BYTES = 65_535;

export class TopicError extends Error {
  override name = 'TopicError';
}

/** Why `topic` is not a valid topic *name* for PUBLISH, or null when it is. */
export function publishTopicProblem(topic: string): string | null {
  if (typeof topic !== 'string' || topic.length === 0) return 'is empty';
  if (topic.includes('\u0000')) return 'contains a NUL character';
  if (topic.includes('+')) return "contains the wildcard '+'";
  if (topic.includes('#')) return "contains the wildcard '#'";
  if (Buffer.byteLength(topic, 'utf8') > MAX_TOPIC_BYTES) return `is longer than ${MAX_TOPIC_BYTES} bytes`;
  return null;
}

/** Throws a TopicError unless `topic` can be published to. */
export function assertPublishTopic(topic: string): void {
  const problem = publishTopicProblem(topic);
  if (problem !== null) throw new TopicError(`refusing to publish to MQTT topic ${JSON.stringify(topic)}: it ${problem}`);
}

function levelsProblem(value: string, allowSlash: boolean): string | null {
  if (typeof value !== 'string' || value.length === 0) return 'is empty';
  if (value.includes('\u0000')) return 'contains a NUL character';
  if (value.includes('+')) return "contains the wildcard '+'";
  if (value.includes('#')) return "contains the wildcard '#'";
  if (!allowSlash && value.includes('/')) return "contains '/' (it must be a single topic level)";
  if (value.split('/').some((level) => level.length === 0)) {
    return "has an empty topic level (leading, trailing or doubled '/')";
  }
  // `$...` topics are reserved for the broker ($SYS); a wildcard subscriber would not see them.
  if (value.startsWith('$')) return "starts with '$' (reserved for broker topics)";
  return null;
}

/** Validates a base topic (may have several levels, e.g. `hospital/ct`). */
export function assertBaseTopic(base: string): void {
  const problem = levelsProblem(base, true);
  if (problem !== null) throw new TopicError(`invalid MQTT base topic ${JSON.stringify(base)}: it ${problem}`);
}

/** Validates a device id (exactly one topic level). */
export function assertDeviceId(deviceId: string): void {
  const problem = levelsProblem(deviceId, false);
  if (problem !== null) throw new TopicError(`invalid device id ${JSON.stringify(deviceId)} for MQTT topics: it ${problem}`);
}

/** Validates a command name used in `request/<cmd>` / `response/<cmd>`. */
export function assertCommandName(cmd: string): void {
  const problem = levelsProblem(cmd, false);
  if (problem !== null) throw new TopicError(`invalid MQTT command name ${JSON.stringify(cmd)}: it ${problem}`);
}

export interface DeviceTopics {
  readonly baseTopic: string;
  readonly deviceId: string;
  /** `<base>/<device>` */
  readonly root: string;
  /** Classification results, QoS 1. */
  readonly result: string;
  /** Retained availability, last will `{"state":"offline"}`. */
  readonly state: string;
  /** Errors, QoS 1, not retained. */
  readonly error: string;
  /** Retained health snapshot. */
  readonly health: string;
  /** Subscription filter for all commands: `<root>/request/+`. */
  readonly requestFilter: string;
  request(cmd: string): string;
  response(cmd: string): string;
}

export function deviceTopics(baseTopic: string | undefined, deviceId: string): DeviceTopics {
  const base = baseTopic ?? DEFAULT_BASE_TOPIC;
  assertBaseTopic(base);
  assertDeviceId(deviceId);
  const root = `${base}/${deviceId}`;
  const topics: DeviceTopics = {
    baseTopic: base,
    deviceId,
    root,
    result: `${root}/result`,
    state: `${root}/state`,
    error: `${root}/error`,
    health: `${root}/health`,
    requestFilter: `${root}/request/+`,
    request(cmd: string): string {
      assertCommandName(cmd);
      return `${root}/request/${cmd}`;
    },
    response(cmd: string): string {
      assertCommandName(cmd);
      return `${root}/response/${cmd}`;
    },
  };
  assertPublishTopic(topics.result); // length check on the whole topic
  return Object.freeze(topics);
}
