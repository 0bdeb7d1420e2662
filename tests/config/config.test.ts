import { mkdtempSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, envVariables, loadConfig, rolloutTrustedKeys, shippedPath } from '../../src/config/load.js';

function tmp(): string {
  return mkdtempSync(path.join(tmpdir(), 'cfg-'));
}

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('device configs', () => {
  const dir = shippedPath('device-configs');
  const shipped = readdirSync(dir).filter((f) => f.endsWith('.yaml'));

  it('ships default plus CT, DX and ARM/Jetson configs', () => {
    expect(shipped).toEqual(expect.arrayContaining(['default.yaml', 'ct-scanner.yaml', 'dx-detector.yaml', 'jetson-arm.yaml']));
  });

  it.each(shipped)('%s is valid against the schema', (file) => {
    const { config } = loadConfig(path.join(dir, file), { checkFiles: false, env: {} });
    expect(config.configId).toBe(file.replace(/\.yaml$/, ''));
    expect(config.model.providers.length).toBeGreaterThan(0);
  });

  it('default.yaml runs on the embedded broker with the shipped model, files present', () => {
    const cwd = tmp();
    const { config } = loadConfig(path.join(dir, 'default.yaml'), { env: {}, cwd });
    expect(config.mqtt.url).toBe('');
    expect(config.inbox).toBe(path.join(cwd, 'var', 'inbox'));
    expect(config.doneDir).toBe(path.join(cwd, 'var', 'done'));
    expect(config.model.bundle).toBe(shippedPath('models', 'orientation-qa'));
    expect(config.deviceId).not.toBe('');
  });

  it('the implied DEVELOPMENT-ONLY key serves the shipped bundle but is never trusted for a rollout; a listed key is', () => {
    const cwd = tmp();
    const empty = path.join(cwd, 'empty.yaml');
    writeFileSync(empty, 'model:\n  trustedKeys: []\n');
    const { config } = loadConfig(empty, { env: {}, cwd });
    expect(config.model.trustedKeys).toEqual([shippedPath('models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem')]);
    expect(rolloutTrustedKeys(config)).toEqual([]);
    const file = path.join(cwd, 'listed.yaml');
    writeFileSync(file, `model:\n  trustedKeys: [${shippedPath('models', 'keys', 'DEVELOPMENT-ONLY-signing-key.pub.pem')}]\n`);
    const listed = loadConfig(file, { env: {}, cwd }).config;
    expect(rolloutTrustedKeys(listed)).toEqual(listed.model.trustedKeys);
  });

  it('the GPU boxes prefer GPU/NPU providers and end on cpu', () => {
    for (const f of ['ct-scanner.yaml', 'jetson-arm.yaml']) {
      const { config } = loadConfig(path.join(dir, f), { checkFiles: false, env: {} });
      expect(config.model.providers[0]).toBe('tensorrt');
      expect(config.model.providers.at(-1)).toBe('cpu');
    }
  });
});

describe('bad config', () => {
  it('lists every problem as path: message with its line', () => {
    const d = tmp();
    const file = path.join(d, 'bad.yaml');
    writeFileSync(
      file,
      [
        'deviceId: "ct/room#2"', // line 1: topic level with / and #
        'ingest:',
        '  stabilityMs: fast', // line 3: not an integer
        '  afterPublish: archive', // line 4: enum
        'mqtt:',
        '  url: http://broker', // line 6: scheme
        '  baseTopic: "a//b"', // line 7: empty level
        'model:',
        '  providers: [cuda, gpu]', // line 9: unknown provider
        'decod:', // line 10: typo
        '  framePolicy: first',
      ].join('\n'),
    );
    const problems = problemsOf(() => loadConfig(file, { env: {}, cwd: d }));
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^deviceId: .*\(line 1\)$/),
        expect.stringMatching(/^ingest\.stabilityMs: must be integer \(line 3\)$/),
        expect.stringMatching(/^ingest\.afterPublish: must be one of move, delete \(line 4\)$/),
        expect.stringMatching(/^mqtt\.url: .*\(line 6\)$/),
        expect.stringMatching(/^mqtt\.baseTopic: .*\(line 7\)$/),
        expect.stringMatching(/^model\.providers\.1: must be one of .*\(line 9\)$/),
        expect.stringMatching(/^decod: unknown setting \(line 10\)$/),
      ]),
    );
    expect(problems.length).toBeGreaterThanOrEqual(7);
  });

  it('reports YAML syntax errors with their position', () => {
    const d = tmp();
    const file = path.join(d, 'broken.yaml');
    writeFileSync(file, 'mqtt:\n  url: "unterminated\n');
    const problems = problemsOf(() => loadConfig(file, { env: {} }));
    expect(problems[0]).toMatch(/^\(yaml\) line \d+:\d+: /);
  });

  it('refuses a missing secret file and a missing model bundle', () => {
    const d = tmp();
    const file = path.join(d, 'c.yaml');
    writeFileSync(file, 'mqtt:\n  username: u\n  passwordFile: /nonexistent/pw\nmodel:\n  bundle: ./nope\n');
    const problems = problemsOf(() => loadConfig(file, { env: {}, cwd: d }));
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^mqtt\.passwordFile: cannot read \/nonexistent\/pw: ENOENT/),
        expect.stringMatching(/^model\.bundle: no manifest\.json in /),
      ]),
    );
  });

  it('refuses done/quarantine directories inside the inbox', () => {
    const d = tmp();
    const file = path.join(d, 'c.yaml');
    writeFileSync(file, 'inbox: ./in\ndoneDir: ./in/done\n');
    expect(problemsOf(() => loadConfig(file, { env: {}, cwd: d }))).toEqual([expect.stringMatching(/^doneDir: must not be inside the inbox/)]);
  });
});

describe('overrides and secrets', () => {
  it('derives env names from the setting path and applies them with types', () => {
    const names = envVariables().map((v) => v.name);
    expect(names).toEqual(expect.arrayContaining(['EDGE_AGENT_MQTT__URL', 'EDGE_AGENT_INGEST__STABILITY_MS', 'EDGE_AGENT_MQTT__TLS__CA_FILE', 'EDGE_AGENT_DEVICE_ID']));
    const { config } = loadConfig(undefined, {
      env: {
        EDGE_AGENT_MQTT__URL: 'mqtt://10.0.0.5:1883',
        EDGE_AGENT_INGEST__STABILITY_MS: '500',
        EDGE_AGENT_MODEL__PROVIDERS: 'cuda,cpu',
        EDGE_AGENT_PRIVACY__ALLOW_UIDS: 'true',
        EDGE_AGENT_DEVICE_ID: 'dx-7',
      },
    });
    expect(config.mqtt.url).toBe('mqtt://10.0.0.5:1883');
    expect(config.ingest.stabilityMs).toBe(500);
    expect(config.model.providers).toEqual(['cuda', 'cpu']);
    expect(config.privacy.allowUids).toBe(true);
    expect(config.deviceId).toBe('dx-7');
    expect(config.mqtt.clientId).toBe('edge-agent-dx-7');
  });

  it('says when a bad value came from the environment', () => {
    const problems = problemsOf(() => loadConfig(undefined, { env: { EDGE_AGENT_INGEST__QUEUE_CAPACITY: 'lots' } }));
    expect(problems).toEqual(['ingest.queueCapacity: must be integer (from environment)']);
  });

  it('CLI flags win over the file and the environment', () => {
    const { config } = loadConfig(undefined, {
      env: { EDGE_AGENT_INBOX: '/env/inbox' },
      cli: { inbox: '/cli/inbox', mqttUrl: 'mqtts://b:8883', deviceId: 'cli-dev', stateDir: '/cli/state' },
    });
    expect(config.inbox).toBe('/cli/inbox');
    expect(config.stateDir).toBe('/cli/state');
    expect(config.mqtt.url).toBe('mqtts://b:8883');
    expect(config.deviceId).toBe('cli-dev');
  });

  it('reads the MQTT password from a file, also under $CREDENTIALS_DIRECTORY', () => {
    const creds = tmp();
    writeFileSync(path.join(creds, 'mqtt-password'), 's3cret\n');
    mkdirSync(path.join(creds, 'x'));
    const d = tmp();
    const file = path.join(d, 'c.yaml');
    writeFileSync(file, 'mqtt:\n  username: agent\n  passwordFile: ${CREDENTIALS_DIRECTORY}/mqtt-password\n');
    const { config } = loadConfig(file, { env: { CREDENTIALS_DIRECTORY: creds }, cwd: d });
    expect(config.mqtt.password).toBe('s3cret');
  });
});

describe('config reference', () => {
  it('docs/CONFIG.md is the reference generated from the schema', async () => {
    const { readFileSync } = await import('node:fs');
    const { renderConfigReference } = await import('../../src/config/reference.js');
    expect(readFileSync(shippedPath('docs', 'CONFIG.md'), 'utf8')).toBe(renderConfigReference());
  });
});
