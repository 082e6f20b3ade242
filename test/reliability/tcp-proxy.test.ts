/**
 * The chaos scenario's TCP proxy: it passes bytes both ways, black-holes them without closing
 * either side, and lets them (and the connections opened meanwhile) through again on restore.
 */
import net from 'node:net';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';

/** Nothing is expected within this window: a silence can only be shown by waiting. */
const SILENCE_MS = 300;

let upstream: net.Server | undefined;
let proxy: TcpProxy | undefined;
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await proxy?.close();
  await new Promise((r) => (upstream ? upstream.close(r) : r(undefined)));
  upstream = proxy = undefined;
});

/** An echo server that counts the connections it accepted. */
async function echoServer(): Promise<{ server: net.Server; port: number; accepted: () => number }> {
  let n = 0;
  const server = net.createServer((s) => {
    n += 1;
    sockets.push(s);
    s.on('error', () => undefined);
    s.pipe(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as net.AddressInfo).port, accepted: () => n };
}

async function dial(port: number): Promise<{ socket: net.Socket; received: () => string; closed: () => boolean }> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  sockets.push(socket);
  let text = '';
  let closed = false;
  socket.setEncoding('utf8').on('data', (d) => (text += d));
  socket.on('close', () => (closed = true));
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return { socket, received: () => text, closed: () => closed };
}

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} not within 5 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('chaos TCP proxy', () => {
  it('forwards both ways, black-holes without closing either side, and delivers the held bytes on restore', async () => {
    const echo = await echoServer();
    upstream = echo.server;
    proxy = await startTcpProxy({ port: echo.port });
    const c = await dial(proxy.port);

    c.socket.write('one;');
    await until(() => c.received() === 'one;', 'echo through the proxy');

    proxy.blackhole();
    c.socket.write('two;');
    await new Promise((r) => setTimeout(r, SILENCE_MS));
    expect(c.received()).toBe('one;');
    expect(c.closed()).toBe(false);
    expect(proxy.stats.open).toBe(1);

    proxy.restore();
    await until(() => c.received() === 'one;two;', 'held bytes after restore');
    expect(c.closed()).toBe(false);
  });

  it('accepts connections while black-holed but reaches upstream only on restore', async () => {
    const echo = await echoServer();
    upstream = echo.server;
    proxy = await startTcpProxy({ port: echo.port });
    proxy.blackhole();
    const c = await dial(proxy.port);
    c.socket.write('hello;');
    await new Promise((r) => setTimeout(r, SILENCE_MS));
    expect(echo.accepted()).toBe(0);
    expect(c.received()).toBe('');

    proxy.restore();
    await until(() => c.received() === 'hello;', 'the connection after restore');
    expect(echo.accepted()).toBe(1);
  });

  it('closes the client side when upstream goes away (a NATS restart is seen as one)', async () => {
    const echo = await echoServer();
    upstream = echo.server;
    proxy = await startTcpProxy({ port: echo.port });
    const c = await dial(proxy.port);
    c.socket.write('x');
    await until(() => c.received() === 'x', 'echo');
    for (const s of sockets) if (s !== c.socket) s.destroy();
    await until(() => c.closed(), 'client closed after upstream closed');
    expect(proxy.stats.open).toBe(0);
  });
});
