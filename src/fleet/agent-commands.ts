/**
 * The agent's own fleet commands (docs/MQTT.md "Commands"): ping, get-config, set-config, pause, resume,
 * reprocess, restart. `models` / `activate` / `rollback` are the rollout's (src/fleet/rollout.ts) and are
 * registered by the agent beside these.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { CommandError, type CommandRouter } from './commands.js';
import type { ConfigStore, SetConfigRequest } from './config-store.js';
import { setConfigSchema } from './config-store.js';
import type { IngestControl } from './ingest-control.js';

/** Exit code of `restart`: EX_TEMPFAIL; systemd's Restart=on-failure starts the agent again. */
export const RESTART_EXIT_CODE = 75;

/** A journal row, as far as `reprocess` needs it (src/store/journal.ts Job). */
export interface ReprocessJob {
  hash: string;
  name: string;
  path: string;
  state: string;
  finalized: boolean;
}

export interface AgentCommandHost {
  version: string;
  startedAt: number;
  model(): { id: string; version: string } | null;
  config: ConfigStore;
  ingest: IngestControl;
  inbox: string;
  afterPublish(): 'move' | 'delete';
  job(hash: string): ReprocessJob | undefined;
  /** Runs a finished job again from `file`; false when the pipeline is full or stopping. */
  requeue(hash: string, file: string): boolean;
  /** Graceful stop, then exit with RESTART_EXIT_CODE. */
  restart(reason: string): void;
  /** Something health shows changed. */
  changed(reason: string): void;
}

const EMPTY = { type: 'object', additionalProperties: false, properties: {} } as const;

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}

export function registerAgentCommands(router: CommandRouter, host: AgentCommandHost): void {
  router.register(
    'ping',
    EMPTY,
    () => ({
      pong: true,
      version: host.version,
      uptimeSec: Math.round((Date.now() - host.startedAt) / 1000),
      model: host.model(),
      at: new Date().toISOString(),
    }),
    { exclusive: false },
  );

  router.register('get-config', EMPTY, () => host.config.get(), { exclusive: false });

  router.register('set-config', setConfigSchema, async (data) => {
    const outcome = await host.config.set(data as SetConfigRequest);
    if (!outcome.dryRun) host.changed('set-config');
    return outcome;
  });

  const pauseSchema = { type: 'object', additionalProperties: false, properties: { reason: { type: 'string', maxLength: 200 } } } as const;
  router.register('pause', pauseSchema, async (data, ctx) => {
    const wasPaused = host.ingest.paused;
    const record = await host.ingest.pause(ctx.sender, (data as { reason?: string }).reason ?? null);
    if (!wasPaused) host.changed('pause');
    return { paused: true, since: record.since, alreadyPaused: wasPaused, persistent: true };
  });
  router.register('resume', EMPTY, async () => {
    const wasPaused = host.ingest.paused;
    await host.ingest.resume();
    if (wasPaused) host.changed('resume');
    return { paused: false, wasPaused };
  });

  const reprocessSchema = {
    type: 'object',
    additionalProperties: false,
    required: ['hash'],
    properties: { hash: { type: 'string', pattern: '^(sha256:)?[0-9a-fA-F]{64}$' } },
  } as const;
  router.register('reprocess', reprocessSchema, async (data) => {
    const hash = (data as { hash: string }).hash.replace(/^sha256:/, '').toLowerCase();
    const job = host.job(hash);
    if (!job) throw new CommandError(`no capture with content hash sha256:${hash} was taken on this device`);
    if (job.state !== 'published' && job.state !== 'failed') {
      throw new CommandError(`capture sha256:${hash} is being processed now (${job.state}); nothing to reprocess yet`);
    }
    if (!job.finalized || isInside(job.path, host.inbox)) {
      throw new CommandError(`capture sha256:${hash} is still in the inbox; it is finished when it leaves it`);
    }
    const present = await stat(job.path).then(
      (s) => s.isFile(),
      () => false,
    );
    if (!present) {
      const why =
        job.state === 'published' && host.afterPublish() === 'delete'
          ? 'published files are deleted on this device (ingest.afterPublish: delete)'
          : `it is no longer at ${path.basename(path.dirname(job.path))}/${path.basename(job.path)}`;
      throw new CommandError(`capture sha256:${hash} (${job.name}) is gone: ${why}`);
    }
    if (!host.requeue(hash, job.path)) throw new CommandError('the pipeline is full or stopping; try again later');
    return { hash: `sha256:${hash}`, name: job.name, previousState: job.state, from: job.state === 'failed' ? 'quarantine' : 'done', queued: true };
  });

  router.register('restart', EMPTY, (_data, ctx) => {
    ctx.afterResponse = () => host.restart(`restart command${ctx.sender ? ` from ${ctx.sender}` : ''}`);
    return { restarting: true, exitCode: RESTART_EXIT_CODE };
  });
}
