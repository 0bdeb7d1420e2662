import net from 'node:net';

/**
 * A TCP port that was free on `host` a moment ago (the kernel picks it; we release it at once).
 * Another process may take it before the caller binds it: callers that spawn a server retry on
 * "address in use" (startMosquitto does).
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no TCP address for probe server');
  return address.port;
}

/** Resolves true if something accepts TCP connections on host:port. */
export function canConnect(port: number, host = '127.0.0.1', timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Resolves once host:port accepts connections; rejects after timeoutMs or when `abort()` says so. */
export async function waitForPort(
  port: number,
  opts: { host?: string; timeoutMs?: number; abort?: () => string | null } = {},
): Promise<void> {
  const host = opts.host ?? '127.0.0.1';
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  for (;;) {
    const why = opts.abort?.() ?? null;
    if (why !== null) throw new Error(why);
    if (await canConnect(port, host)) return;
    if (Date.now() > deadline) throw new Error(`nothing accepted connections on ${host}:${port} in time`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
