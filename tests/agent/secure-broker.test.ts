/**
 * The agent reaching a locked-down broker through its device config only: password from a file
 * (as systemd LoadCredential= provides it), TLS with the site CA, and mutual TLS with a client
 * certificate. Real mosquitto, real certificates made at test time.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentProcess, agentDirs } from '../helpers/agent.js';
import { makeTestPki, type TestPki } from '../helpers/certs.js';
import { skipWithoutMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { Subscriber, until } from '../mqtt/util.js';

const CT = path.resolve('tests/fixtures/dicom/pydicom_CT_small.dcm');

describe.skipIf(skipWithoutMosquitto)('agent against a locked-down mosquitto', () => {
  let pki: TestPki;
  let mosq: Mosquitto;
  const agents: AgentProcess[] = [];
  beforeAll(async () => {
    pki = makeTestPki();
    const pw = path.join(pki.dir, 'passwd');
    execFileSync('mosquitto_passwd', ['-c', '-b', pw, 'ct-room-2', 'c0rrect-horse']);
    execFileSync('mosquitto_passwd', ['-b', pw, 'watcher', 'w4tch']);
    mosq = await startMosquitto({
      allowAnonymous: false,
      conf: [`password_file ${pw}`, `cafile ${pki.caCertPath}`, `certfile ${pki.serverCertPath}`, `keyfile ${pki.serverKeyPath}`].join('\n'),
    });
  });
  afterAll(async () => {
    await mosq?.dispose();
    pki?.dispose();
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.kill()));
  });

  it('TLS + password from a credentials file: online, and a result arrives', async () => {
    const creds = path.join(pki.dir, 'creds');
    execFileSync('mkdir', ['-p', creds]);
    writeFileSync(path.join(creds, 'mqtt-password'), 'c0rrect-horse\n', { mode: 0o600 });
    const dirs = agentDirs({
      deviceId: 'ct-room-2',
      mqtt: {
        url: `mqtts://127.0.0.1:${mosq.port}`,
        username: 'ct-room-2',
        passwordFile: '${CREDENTIALS_DIRECTORY}/mqtt-password',
        tls: { caFile: pki.caCertPath },
      },
    });
    const sub = await Subscriber.connect(`mqtts://127.0.0.1:${mosq.port}`, 'imaging/ct-room-2/#', { ca: pki.ca, username: 'watcher', password: 'w4tch' });
    try {
      agents.push(await AgentProcess.start(dirs, [], { CREDENTIALS_DIRECTORY: creds }));
      copyFileSync(CT, path.join(dirs.inbox, 'ct.dcm'));
      await until(() => sub.on('imaging/ct-room-2/result').length === 1, 30_000, 'result over TLS');
      expect(sub.on('imaging/ct-room-2/state').some((m) => m.payload.includes('"online"'))).toBe(true);
    } finally {
      await sub.close();
    }
  });

  it('a wrong password: the agent says so in its logs and keeps the result in the outbox', async () => {
    const creds = path.join(pki.dir, 'creds-bad');
    execFileSync('mkdir', ['-p', creds]);
    writeFileSync(path.join(creds, 'mqtt-password'), 'wrong\n');
    const dirs = agentDirs({
      deviceId: 'ct-room-3',
      mqtt: { url: `mqtts://127.0.0.1:${mosq.port}`, username: 'ct-room-2', passwordFile: path.join(creds, 'mqtt-password'), tls: { caFile: pki.caCertPath } },
      logging: { components: { pipeline: 'debug' } },
    });
    const agent = await AgentProcess.start(dirs);
    agents.push(agent);
    const problem = await agent.waitForLog(/^MQTT connection problem$/);
    expect(problem).toMatchObject({ kind: 'refused' });
    copyFileSync(CT, path.join(dirs.inbox, 'ct.dcm'));
    await agent.waitForLog(/^classified$/);
  });

  describe('mutual TLS', () => {
    let mtls: Mosquitto;
    beforeAll(async () => {
      mtls = await startMosquitto({
        allowAnonymous: false,
        conf: [`cafile ${pki.caCertPath}`, `certfile ${pki.serverCertPath}`, `keyfile ${pki.serverKeyPath}`, 'require_certificate true', 'use_identity_as_username true'].join('\n'),
      });
    });
    afterAll(async () => mtls?.dispose());

    it('client certificate and key from files: a result arrives', async () => {
      const url = `mqtts://127.0.0.1:${mtls.port}`;
      const dirs = agentDirs({
        deviceId: 'us-cart-7',
        mqtt: { url, tls: { caFile: pki.caCertPath, certFile: pki.clientCertPath, keyFile: pki.clientKeyPath } },
      });
      const sub = await Subscriber.connect(url, 'imaging/us-cart-7/result', { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey });
      try {
        agents.push(await AgentProcess.start(dirs));
        copyFileSync(CT, path.join(dirs.inbox, 'ct.dcm'));
        await until(() => sub.on('imaging/us-cart-7/result').length === 1, 30_000, 'result over mutual TLS');
      } finally {
        await sub.close();
      }
    });
  });
});
