/**
 * A TCP proxy between a sidecar and its nats-server, for link faults NATS cannot make by itself.
 * `blackhole()` stops forwarding in both directions without closing anything (no FIN, no RST),
 * as a partition or a dropped route does: both ends keep their sockets and hear nothing. Bytes
 * in flight stay in the kernel buffers (TCP retransmits them once a real partition heals), and
 * connections opened meanwhile are accepted but not connected upstream (their SYN "never
 * arrived"). `restore()` lets everything flow again, closes included.
 */
import net from 'node:net';

export interface TcpProxy {
  /** nats://127.0.0.1:PORT, for NATS_URL. */
  readonly url: string;
  readonly port: number;
  readonly blackholed: boolean;
  /** Connections accepted so far, and those open now. */
  readonly stats: { accepted: number; open: number; blackholes: number };
  blackhole(): void;
  restore(): void;
  /** Closes the listener and destroys every connection. */
  close(): Promise<void>;
}

interface Pair {
  client: net.Socket;
  upstream?: net.Socket;
}

export async function startTcpProxy(upstream: { host?: string; port: number }, listenPort = 0): Promise<TcpProxy> {
  const host = upstream.host ?? '127.0.0.1';
  const pairs = new Set<Pair>();
  const stats = { accepted: 0, open: 0, blackholes: 0 };
  let holed = false;

  /** Forward `from` to `to` with back-pressure; nothing moves while the link is black-holed. */
  const forward = (from: net.Socket, to: net.Socket): void => {
    from.on('data', (chunk) => {
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => {
      if (!holed) from.resume();
    });
    from.on('end', () => to.end());
  };

  const connectUpstream = (pair: Pair): void => {
    const up = net.connect({ host, port: upstream.port });
    pair.upstream = up;
    up.setNoDelay(true);
    forward(pair.client, up);
    forward(up, pair.client);
    up.on('error', () => pair.client.destroy());
    up.on('close', () => pair.client.destroy());
    if (holed) up.pause();
    else pair.client.resume();
  };

  const server = net.createServer({ pauseOnConnect: true }, (client) => {
    stats.accepted += 1;
    stats.open += 1;
    const pair: Pair = { client };
    pairs.add(pair);
    client.setNoDelay(true);
    client.on('error', () => pair.upstream?.destroy());
    client.on('close', () => {
      stats.open -= 1;
      pairs.delete(pair);
      pair.upstream?.destroy();
    });
    // Black-holed: accept (the kernel did already) but never reach upstream until restore().
    if (!holed) connectUpstream(pair);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listenPort, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    get blackholed() {
      return holed;
    },
    stats,
    blackhole() {
      if (holed) return;
      holed = true;
      stats.blackholes += 1;
      for (const p of pairs) {
        p.client.pause();
        p.upstream?.pause();
      }
    },
    restore() {
      if (!holed) return;
      holed = false;
      for (const p of pairs) {
        if (!p.upstream) {
          connectUpstream(p);
          continue;
        }
        p.client.resume();
        p.upstream.resume();
      }
    },
    async close() {
      for (const p of pairs) {
        p.client.destroy();
        p.upstream?.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
