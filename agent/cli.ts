#!/usr/bin/env node
/**
 * edge-agent CLI: run | infer | validate-config. Wiring only.
 * Exit codes: 0 ok, 1 bad input/config or a file that could not be classified, 2 usage.
 */
import { Command, Option } from 'commander';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, loadConfig, shippedPath, type CliOverrides, type LoadedConfig } from '../src/config/load.js';
import type { AgentConfig } from '../src/config/schema.js';
import { renderConfigReference } from '../src/config/reference.js';
import { decodeFile } from '../src/decode/index.js';
import { DecodeError } from '../src/decode/types.js';
import { createLogger } from '../src/log.js';
import { BundleClassifier } from '../src/pipeline/classifier.js';
import { hashFile } from '../src/pipeline/pipeline.js';
import { SdNotifier } from '../src/systemd/notify.js';
import { buildInput, buildResult } from '../src/pipeline/result.js';
import { Agent, classifierOptions, decodeOptions } from './agent.js';
import { registerAuditCommands } from './audit-cli.js';
import { registerDoctorCommand } from './doctor-cli.js';
import { registerModelCommands } from './model-cli.js';
import { AGENT_VERSION } from './version.js';

function fail(message: string, code = 1): never {
  process.stderr.write(`edge-agent: ${message}\n`);
  process.exit(code);
}

function load(file: string | undefined, cli: CliOverrides = {}, checkFiles = true): AgentConfig {
  try {
    return loadConfig(file, { cli, checkFiles }).config;
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

const program = new Command()
  .name('edge-agent')
  .description('Edge inference agent for medical imaging: watch captures, classify, publish over MQTT')
  .version(AGENT_VERSION)
  // Usage errors (unknown command/option, missing argument) exit 2, as the header says; help/version 0.
  .exitOverride((err) => {
    process.exit(err.code === 'commander.helpDisplayed' || err.code === 'commander.help' || err.code === 'commander.version' ? 0 : 2);
  });

program
  .command('run')
  .description('run the agent daemon')
  .option('-c, --config <file>', 'device config YAML', shippedPath('device-configs', 'default.yaml'))
  .option('--inbox <dir>', 'inbox directory (overrides the config)')
  .option('--state-dir <dir>', 'state directory (overrides the config)')
  .option('--mqtt-url <url>', 'broker URL (overrides the config; empty = embedded broker)')
  .option('--device-id <id>', 'device id (overrides the config)')
  .action(async (opts: { config: string; inbox?: string; stateDir?: string; mqttUrl?: string; deviceId?: string }) => {
    const cli: CliOverrides = {};
    if (opts.inbox !== undefined) cli.inbox = opts.inbox;
    if (opts.stateDir !== undefined) cli.stateDir = opts.stateDir;
    if (opts.mqttUrl !== undefined) cli.mqttUrl = opts.mqttUrl;
    if (opts.deviceId !== undefined) cli.deviceId = opts.deviceId;
    // `run` applies the state dir's remote overrides (fleet set-config; precedence in src/config/load.ts).
    let loaded: LoadedConfig;
    try {
      loaded = loadConfig(opts.config, { cli, stateOverrides: true });
    } catch (err) {
      if (err instanceof ConfigError) fail(err.message);
      throw err;
    }
    const config = loaded.config;
    const configFile = opts.config;
    const logger = createLogger({ level: config.logging.level, components: config.logging.components, fd: 1 });
    const log = logger.component('agent');
    const agent = new Agent(config, logger, { loaded, load: (overrides) => loadConfig(configFile, { cli, overrides }) });
    // systemd Type=notify (src/systemd/notify.ts): inert without NOTIFY_SOCKET; watchdog pings from now on.
    const sd = SdNotifier.create({ log: logger.component('systemd') });
    sd.startWatchdog();
    let exiting = false;
    const shutdown = (signal: string, code: number): void => {
      if (exiting) return;
      exiting = true;
      sd.stopping(`stopping (${signal})`);
      log.info({ signal }, 'shutdown requested');
      agent
        .stop()
        .catch((err: unknown) => {
          log.error({ err }, 'error while stopping');
          code = 1;
        })
        .finally(() => {
          void logger.flush().finally(() => process.exit(code));
        });
    };
    // Fleet `restart`: graceful stop, then exit 75 (EX_TEMPFAIL) so systemd's Restart=on-failure starts it again.
    agent.onRestartRequested = (reason, exitCode) => shutdown(reason, exitCode);
    process.on('SIGTERM', () => shutdown('SIGTERM', 0));
    process.on('SIGINT', () => shutdown('SIGINT', 0));
    // SIGHUP: reload the model bundle with every check; a refused bundle leaves the current model serving
    process.on('SIGHUP', () => {
      log.info({ signal: 'SIGHUP' }, 'model reload requested');
      void agent.reloadModel().catch((err: unknown) => log.error({ err }, 'model reload failed'));
    });
    process.on('uncaughtException', (err) => {
      log.fatal({ err }, 'uncaught exception');
      shutdown('uncaughtException', 1);
    });
    process.on('unhandledRejection', (err) => {
      log.fatal({ err }, 'unhandled rejection');
      shutdown('unhandledRejection', 1);
    });
    try {
      await agent.start();
    } catch (err) {
      log.fatal({ err }, `agent could not start: ${(err as Error).message}`);
      sd.status(`could not start: ${(err as Error).message}`);
      await agent.stop().catch(() => undefined);
      await logger.flush();
      fail(`could not start: ${(err as Error).message}`);
    }
    // READY=1 once the model is warm, intake runs (agent.start resolved) AND the broker link is up. A broker
    // that is down at start delays READY to its first connection; meanwhile STATUS says so, captures are
    // journaled and results wait in the outbox (docs/DEPLOYMENT.md, the unit's TimeoutStartSec=).
    sd.status('started; waiting for the MQTT broker (captures are taken, results wait in the outbox)');
    void agent.whenBrokerConnected().then(() => {
      if (!exiting) sd.ready(`running: device ${config.deviceId}, broker connected`);
    });
  });

program
  .command('infer')
  .description('classify files once and print one JSON result per line (no broker needed)')
  .argument('<files...>', 'DICOM, PNG or JPEG files')
  .option('-c, --config <file>', 'device config YAML (model, decode and privacy settings)')
  .action(async (files: string[], opts: { config?: string }) => {
    const config = load(opts.config);
    const logger = createLogger({ level: config.logging.level === 'info' ? 'warn' : config.logging.level, fd: 2 });
    let classifier: BundleClassifier;
    try {
      classifier = await BundleClassifier.load(config.model.bundle, { ...classifierOptions(config), warmupRuns: 0 });
    } catch (err) {
      fail(`cannot load model ${config.model.bundle}: ${(err as Error).message}`);
    }
    const salt = config.privacy.uidSaltFile ? readFileSync(config.privacy.uidSaltFile, 'utf8').trim() : randomBytes(32).toString('hex');
    const decode = decodeOptions(config);
    let failures = 0;
    for (const file of files) {
      try {
        const t0 = performance.now();
        const capture = await decodeFile(file, decode);
        const t1 = performance.now();
        const hash = await hashFile(file);
        const out = await classifier.classify(capture.frames);
        const t2 = performance.now();
        capture.frames.forEach((frame, i) => {
          const result = buildResult({
            deviceId: config.deviceId,
            labels: classifier.labels,
            probabilities: out.probabilities[i]!,
            model: classifier.info,
            input: buildInput(path.basename(file), hash, capture.kind, capture.meta, frame, { allowUids: config.privacy.allowUids, salt }),
            timings: { decode: t1 - t0, preprocess: out.preprocessMs, infer: out.inferMs, total: t2 - t0 },
          });
          process.stdout.write(JSON.stringify(result) + '\n');
        });
      } catch (err) {
        failures++;
        const why = err instanceof DecodeError ? `${err.code}: ${err.message}` : (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
        process.stderr.write(`edge-agent: ${file}: ${why}\n`);
      }
    }
    await classifier.dispose();
    await logger.flush();
    process.exitCode = failures > 0 ? 1 : 0;
  });

program
  .command('validate-config')
  .description('check a device config without starting; lists every problem')
  .argument('<file>', 'device config YAML')
  .addOption(new Option('--offline', 'schema only: do not check referenced files (config for another machine)'))
  .action((file: string, opts: { offline?: boolean }) => {
    const config = load(file, {}, !opts.offline);
    process.stdout.write(`${file}: ok (device ${config.deviceId}, config ${config.configId})\n`);
  });

program
  .command('config-reference')
  .description('print the device config reference (Markdown) generated from the schema')
  .action(() => {
    process.stdout.write(renderConfigReference());
  });

registerModelCommands(program);
registerDoctorCommand(program);
registerAuditCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => fail((err as Error).message));
