/**
 * sd_notify(3) client: tells systemd (Type=notify) when the agent is ready, that it is alive
 * (watchdog) and when it is stopping. Nothing at all happens when NOTIFY_SOCKET is unset, so the same
 * binary runs under systemd, in a terminal and in tests.
 *
 * Transport: Node has no AF_UNIX datagram sockets, so messages go through `unix-dgram` (a small native
 * addon by a Node core maintainer, ISC, the one zigbee2mqtt uses for the same job), sent from THIS
 * process: with `NotifyAccess=main` systemd accepts only messages whose sender is the main PID, which a
 * spawned `systemd-notify` child is not. `unix-dgram` copies the address with strncpy, so it cannot
 * address an abstract socket (`@name`): for those we fall back to the `systemd-notify` binary, which
 * works only where the unit allows messages from children (`NotifyAccess=all`). systemd itself hands a
 * path socket (/run/systemd/notify) to system services, so the shipped unit never takes that path.
 *
 * Protocol (sd_notify(3), sd_watchdog_enabled(3)): newline-separated KEY=VALUE assignments per datagram;
 * WATCHDOG_USEC is the watchdog timeout in µs, valid for us only if WATCHDOG_PID is unset or our PID;
 * pings go every WATCHDOG_USEC/2 from a timer on the event loop, so a blocked loop stops them.
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import type { Logger } from 'pino';

export interface NotifyEnv {
  NOTIFY_SOCKET?: string | undefined;
  WATCHDOG_USEC?: string | undefined;
  WATCHDOG_PID?: string | undefined;
}

export interface NotifySettings {
  /** The socket address as systemd gave it (`/run/systemd/notify` or `@abstract`); null = disabled. */
  socket: string | null;
  /** Interval between WATCHDOG=1 pings in ms (half the timeout); null = no watchdog for this process. */
  watchdogIntervalMs: number | null;
}

/** Reads the sd_notify environment the way sd_notify(3) and sd_watchdog_enabled(3) do. */
export function notifySettings(env: NotifyEnv = process.env, pid = process.pid): NotifySettings {
  const socket = env.NOTIFY_SOCKET && env.NOTIFY_SOCKET.length > 0 ? env.NOTIFY_SOCKET : null;
  let watchdogIntervalMs: number | null = null;
  const usec = env.WATCHDOG_USEC !== undefined && /^\d+$/.test(env.WATCHDOG_USEC) ? Number(env.WATCHDOG_USEC) : 0;
  const forUs = env.WATCHDOG_PID === undefined || env.WATCHDOG_PID === '' || Number(env.WATCHDOG_PID) === pid;
  if (socket !== null && usec > 0 && forUs) watchdogIntervalMs = Math.max(1, Math.floor(usec / 2 / 1000));
  return { socket, watchdogIntervalMs };
}

interface UnixDgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, callback?: (err?: Error) => void): void;
  on(event: 'error', listener: (err: Error) => void): void;
  close(): void;
}
interface UnixDgramModule {
  createSocket(type: 'unix_dgram'): UnixDgramSocket;
}

type Sender = (message: string) => void;

export class SdNotifier {
  private timer: NodeJS.Timeout | undefined;
  private socket: UnixDgramSocket | undefined;
  private send: Sender | undefined;
  private warned = false;
  private readySent = false;

  private constructor(
    readonly settings: NotifySettings,
    private readonly log: Logger | undefined,
  ) {}

  /**
   * A notifier for this process. With NOTIFY_SOCKET unset it is inert (every method does nothing).
   * A path socket needs the `unix-dgram` addon: if it cannot load, that is logged as an error (under
   * Type=notify systemd would never see READY and would time the start out) and the notifier is inert.
   */
  static create(opts: { env?: NotifyEnv; log?: Logger } = {}): SdNotifier {
    const n = new SdNotifier(notifySettings(opts.env ?? process.env), opts.log);
    n.open();
    return n;
  }

  /** True when messages go somewhere (NOTIFY_SOCKET set and a transport available). */
  get enabled(): boolean {
    return this.send !== undefined;
  }

  private open(): void {
    const address = this.settings.socket;
    if (address === null) return;
    if (address.startsWith('@')) {
      this.send = (message) => this.viaBinary(message);
      this.log?.info({ socket: address }, 'systemd notify socket is abstract: messages go through systemd-notify (needs NotifyAccess=all)');
      return;
    }
    if (!address.startsWith('/')) {
      this.log?.error({ socket: address }, 'NOTIFY_SOCKET is neither a path nor an abstract (@) address; systemd notifications disabled');
      return;
    }
    let mod: UnixDgramModule;
    try {
      mod = createRequire(import.meta.url)('unix-dgram') as UnixDgramModule;
    } catch (err) {
      this.log?.error({ err: (err as Error).message }, 'NOTIFY_SOCKET is set but the unix-dgram addon cannot load (npm install must build it); systemd will not see READY');
      return;
    }
    const socket = mod.createSocket('unix_dgram');
    socket.on('error', (err) => this.failed(err));
    this.socket = socket;
    this.send = (message) => {
      const buf = Buffer.from(message, 'utf8');
      socket.send(buf, 0, buf.length, address, (err) => {
        if (err) this.failed(err);
      });
    };
  }

  private viaBinary(message: string): void {
    // systemd-notify takes the assignments as arguments. No --pid: it would ask the kernel to stamp the
    // datagram with our PID, which an unprivileged child may not do; the sender is the child either way.
    const child = spawn('systemd-notify', message.split('\n'), { stdio: 'ignore' });
    child.on('error', (err) => this.failed(err));
    child.on('exit', (code) => {
      if (code !== 0) this.failed(new Error(`systemd-notify exited ${code}`));
    });
  }

  private failed(err: Error): void {
    // Logged once: a socket that is gone (systemd re-executed, a test ended) must not flood the journal.
    if (this.warned) return;
    this.warned = true;
    this.log?.warn({ err: err.message, socket: this.settings.socket }, 'could not send a notification to systemd');
  }

  /** Sends raw assignments (`KEY=VALUE` lines). Newlines inside STATUS text are flattened. */
  notify(assignments: Record<string, string | number>): void {
    if (!this.send) return;
    const lines = Object.entries(assignments).map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}`);
    this.send(lines.join('\n'));
  }

  /** READY=1 (+ STATUS): start-up is complete. Sent once. */
  ready(status?: string): void {
    if (this.readySent) return;
    this.readySent = true;
    this.notify(status !== undefined ? { READY: 1, STATUS: status } : { READY: 1 });
  }

  get isReady(): boolean {
    return this.readySent;
  }

  /** STATUS=: one line shown by `systemctl status`. */
  status(text: string): void {
    this.notify({ STATUS: text });
  }

  /** STOPPING=1 (+ STATUS): shutdown has begun. */
  stopping(status = 'stopping'): void {
    this.notify({ STOPPING: 1, STATUS: status });
  }

  /**
   * WATCHDOG=1 every WATCHDOG_USEC/2 from an unref'd event-loop timer (it never keeps the process
   * alive). A loop blocked longer than WatchdogSec stops the pings and systemd restarts the service.
   * The first ping goes at once.
   */
  startWatchdog(): void {
    const every = this.settings.watchdogIntervalMs;
    if (!this.send || every === null || this.timer) return;
    this.notify({ WATCHDOG: 1 });
    this.timer = setInterval(() => this.notify({ WATCHDOG: 1 }), every);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    try {
      this.socket?.close();
    } catch {
      // already closed
    }
    this.socket = undefined;
    this.send = undefined;
  }
}
