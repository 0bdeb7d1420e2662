/**
 * Embedded MQTT broker (aedes) for running the agent alone: `npm start` on a fresh machine with no
 * broker configured still has somewhere to publish, and a local subscriber can watch results.
 *
 * aedes 1 speaks MQTT 3.1.1 only (MQTT 5 is "not supported yet" in its README), so links to it must use
 * `protocolVersion: 4`; the handle says so. It keeps retained messages and wills in memory: a restart
 * loses them, which is why the link republishes its retained state after every connect.
 */
import net from 'node:net';
import { Aedes } from 'aedes';

export interface EmbeddedBrokerOptions {
  /** Interface to bind; loopback by default so nothing outside the box can reach it. */
  host?: string;
  /** TCP port; 0 (the default) picks a free ephemeral port. */
  port?: number;
}

export interface EmbeddedBroker {
  /** `mqtt://host:port` to hand to the link. */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** The MQTT protocol level this broker accepts (aedes: 3.1.1). */
  readonly protocolVersion: 4;
  /** Disconnects every client, stops listening and frees the port. Idempotent. */
  close(): Promise<void>;
}

export async function startEmbeddedBroker(opts: EmbeddedBrokerOptions = {}): Promise<EmbeddedBroker> {
  const host = opts.host ?? '127.0.0.1';
  const requestedPort = opts.port ?? 0;
  const aedes = await Aedes.createBroker();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    aedes.handle(socket);
  });

  try {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      server.listen(requestedPort, host, () => {
        server.off('error', onError);
        resolve();
      });
    });
  } catch (err) {
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(
      `embedded MQTT broker could not listen on ${host}:${requestedPort}` +
        (code === 'EADDRINUSE' ? ' (the port is already in use)' : '') +
        `: ${(err as Error).message}`,
      { cause: err },
    );
  }

  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('embedded MQTT broker has no TCP address');
  const port = address.port;
  const urlHost = host.includes(':') ? `[${host}]` : host;

  let closing: Promise<void> | undefined;
  return {
    url: `mqtt://${urlHost}:${port}`,
    host,
    port,
    protocolVersion: 4,
    close(): Promise<void> {
      closing ??= (async () => {
        const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
        // server.close() waits for open connections; the clients are ours to drop.
        for (const socket of sockets) socket.destroy();
        await serverClosed;
        await new Promise<void>((resolve) => aedes.close(() => resolve()));
      })();
      return closing;
    },
  };
}
