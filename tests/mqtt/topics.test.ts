import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { assertPublishTopic, deviceTopics, TopicError } from '../../src/mqtt/topics.js';
import { MqttLink } from '../../src/mqtt/link.js';

describe('deviceTopics', () => {
  it('builds the documented layout under the default base', () => {
    const t = deviceTopics(undefined, 'ct-01');
    expect(t.result).toBe('imaging/ct-01/result');
    expect(t.state).toBe('imaging/ct-01/state');
    expect(t.error).toBe('imaging/ct-01/error');
    expect(t.health).toBe('imaging/ct-01/health');
    expect(t.request('reload')).toBe('imaging/ct-01/request/reload');
    expect(t.response('reload')).toBe('imaging/ct-01/response/reload');
    expect(t.requestFilter).toBe('imaging/ct-01/request/+');
  });

  it('accepts a multi-level base', () => {
    expect(deviceTopics('hospital/ct', 'dev').state).toBe('hospital/ct/dev/state');
  });

  it.each([
    ['imaging/+', 'dev', /base topic.*wildcard '\+'/],
    ['imaging/#', 'dev', /base topic.*wildcard '#'/],
    ['imaging', 'dev+1', /device id.*wildcard '\+'/],
    ['imaging', 'dev#', /device id.*wildcard '#'/],
    ['imaging//x', 'dev', /empty topic level/],
    ['/imaging', 'dev', /empty topic level/],
    ['imaging/', 'dev', /empty topic level/],
    ['', 'dev', /is empty/],
    ['imaging', '', /is empty/],
    ['imaging', 'a/b', /single topic level/],
    ['ima\u0000ging', 'dev', /NUL/],
    ['imaging', 'd\u0000', /NUL/],
    ['$SYS', 'dev', /reserved/],
  ])('rejects base %j with device %j', (base, dev, msg) => {
    expect(() => deviceTopics(base, dev)).toThrow(TopicError);
    expect(() => deviceTopics(base, dev)).toThrow(msg);
  });

  it('rejects wildcard command names', () => {
    const t = deviceTopics('imaging', 'dev');
    expect(() => t.request('+')).toThrow(TopicError);
    expect(() => t.response('a#')).toThrow(TopicError);
  });
});

describe('publish topic guard', () => {
  it('refuses + and # anywhere', () => {
    expect(() => assertPublishTopic('imaging/+/result')).toThrow(/wildcard '\+'/);
    expect(() => assertPublishTopic('imaging/dev/#')).toThrow(/wildcard '#'/);
    expect(() => assertPublishTopic('')).toThrow(/empty/);
    expect(() => assertPublishTopic('imaging/dev/result')).not.toThrow();
  });

  it('MqttLink refuses to be built for a wildcard device id, and to publish to a wildcard topic', async () => {
    const logger = pino({ level: 'silent' });
    expect(() => new MqttLink({ url: 'mqtt://127.0.0.1:1', deviceId: 'a+b', logger })).toThrow(TopicError);
    expect(() => new MqttLink({ url: 'mqtt://127.0.0.1:1', deviceId: 'ok', baseTopic: 'x/#', logger })).toThrow(TopicError);
    expect(() => new MqttLink({ url: 'http://127.0.0.1:1', deviceId: 'ok', logger })).toThrow(/mqtt:\/\/ or mqtts:\/\//);
    const link = new MqttLink({ url: 'mqtt://127.0.0.1:1', deviceId: 'ok', logger });
    expect(() => link.publish('imaging/ok/#', 'x')).toThrow(TopicError);
    await link.close();
  });
});
