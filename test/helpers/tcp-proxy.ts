/**
 * A TCP proxy between a client and a server for fault tests. `blackhole()` makes the link stop
 * answering without a reset (a partition, a dropped route): bytes in both directions are dropped
 * and sockets stay open, so only a liveness check can tell. Connections made while black-holed
 * are accepted and never answered; `restore()` lets new connections through again (the ones that
 * saw the black hole stay dead, as after a real partition).
 */
import net from 'node:net';

export interface TcpProxy {
  /** host:port clients connect to. */
  readonly port: number;
  readonly url: string;
  blackhole(): void;
  restore(): void;
  /** Drops every connection with a reset, as a crashed peer would. */
  reset(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host?: string; port: number }, scheme = 'nats'): Promise<TcpProxy> {
  const host = target.host ?? '127.0.0.1';
  let holed = false;
  const links = new Set<{ client: net.Socket; upstream?: net.Socket; dead: boolean }>();
  const server = net.createServer((client) => {
    const link: { client: net.Socket; upstream?: net.Socket; dead: boolean } = { client, dead: holed };
    links.add(link);
    const drop = (): void => {
      links.delete(link);
      client.destroy();
      link.upstream?.destroy();
    };
    client.on('error', drop);
    client.on('close', drop);
    if (link.dead) return; // accepted, never answered
    const upstream = net.connect(target.port, host);
    link.upstream = upstream;
    upstream.on('error', drop);
    upstream.on('close', drop);
    client.on('data', (chunk) => {
      if (!link.dead) upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!link.dead) client.write(chunk);
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: `${scheme}://127.0.0.1:${port}`,
    blackhole() {
      holed = true;
      for (const link of links) link.dead = true;
    },
    restore() {
      holed = false;
    },
    reset() {
      for (const link of links) {
        link.client.resetAndDestroy();
        link.upstream?.destroy();
      }
    },
    async close() {
      for (const link of links) {
        link.client.destroy();
        link.upstream?.destroy();
      }
      await new Promise((ok) => server.close(ok));
    },
  };
}
