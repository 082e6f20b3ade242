import { readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { startTestCluster, startTestNats, type TestNats } from '../helpers/nats.js';
import { freePort, freePorts } from '../helpers/ports.js';
import { closeAllClients, connectClient, UpgradeRejectedError } from '../helpers/ws-client.js';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  await closeAllClients();
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function testNats(opts?: Parameters<typeof startTestNats>[0]): Promise<TestNats> {
  const nats = await startTestNats(opts);
  cleanups.push(() => nats.cleanup());
  return nats;
}

async function natsConnect(servers: string | string[]): Promise<NatsConnection> {
  const nc = await connect({ servers, reconnectTimeWait: 100, maxReconnectAttempts: -1 });
  cleanups.push(() => nc.close());
  return nc;
}

const accepts = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });

describe('embedded nats-server', () => {
  it('starts JetStream on a free port and stores published messages', async () => {
    const nats = await testNats();
    expect(nats.url).toBe(`nats://127.0.0.1:${nats.port}`);
    expect(nats.pid).toBeTypeOf('number');
    expect(nats.websocketUrl).toBeUndefined();

    const nc = await natsConnect(nats.url);
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'EVENTS', subjects: ['ws.>'] });
    const ack = await jetstream(nc).publish('ws.project.p1', JSON.stringify({ type: 'task_created', data: {} }));
    expect(ack).toMatchObject({ stream: 'EVENTS', seq: 1 });

    const stored = await jsm.streams.getMessage('EVENTS', { seq: 1 });
    expect(stored?.subject).toBe('ws.project.p1');
    expect(stored?.json()).toEqual({ type: 'task_created', data: {} });
  });

  it('restart() comes back on the same port with the same store', async () => {
    const nats = await testNats();
    const { port, pid } = nats;
    const nc = await natsConnect(nats.url);
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'KEEP', subjects: ['keep.>'] });
    await jetstream(nc).publish('keep.a', 'survives');

    await nats.restart();
    expect(nats.port).toBe(port);
    expect(nats.pid).toBeTypeOf('number');
    expect(nats.pid).not.toBe(pid);

    // A fresh connection proves the port; the stream proves the store.
    const nc2 = await natsConnect(nats.url);
    const stored = await (await jetstreamManager(nc2)).streams.getMessage('KEEP', { seq: 1 });
    expect(stored?.string()).toBe('survives');
  });

  it('kill() ends the process at once; stop() afterwards is a no-op', async () => {
    const nats = await testNats();
    await nats.kill();
    expect(await nats.exited).toBeNull(); // died from SIGKILL, no exit code
    expect(nats.pid).toBeUndefined();
    expect(await accepts(nats.port)).toBe(false);
    await nats.stop();
    await nats.stop();
  });

  it('stop() is graceful and idempotent, including concurrent calls', async () => {
    const nats = await testNats();
    const exited = nats.exited;
    await Promise.all([nats.stop(), nats.stop()]);
    expect(typeof (await exited) === 'number').toBe(true);
    expect(await accepts(nats.port)).toBe(false);
  });

  it('honours an explicit port, websocketPort, logFile and extraConfig', async () => {
    const [port] = await freePorts(1);
    const logFile = path.join(os.tmpdir(), `nats-helpers-${process.pid}-${port}.log`);
    cleanups.push(() => rm(logFile, { force: true }));
    const nats = await testNats({ port, websocketPort: 0, logFile, extraConfig: 'max_payload: 2048' });

    expect(nats.port).toBe(port);
    expect(nats.websocketUrl).toMatch(/^ws:\/\/127\.0\.0\.1:\d+$/);
    const nc = await natsConnect(nats.url);
    expect(nc.info?.max_payload).toBe(2048);

    // The server's own WebSocket listener speaks the NATS protocol: INFO comes first.
    const ws = new WebSocket(nats.websocketUrl!);
    const first = await new Promise<string>((resolve, reject) => {
      ws.once('message', (d) => resolve(d.toString()));
      ws.once('error', reject);
    });
    ws.terminate();
    expect(first).toMatch(/^INFO /);

    expect(await readFile(logFile, 'utf8')).toContain('Server is ready');
  });

  it('an explicit port that is taken fails with the server output', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => blocker.close(resolve)));
    const port = (blocker.address() as net.AddressInfo).port;

    await expect(startTestNats({ port })).rejects.toThrow(/could not bind its port[\s\S]*address already in use/);
  });

  it('a 3-node cluster elects a meta leader and places an R3 stream', async () => {
    const cluster = await startTestCluster(3);
    cleanups.push(() => cluster.cleanup());
    expect(cluster.urls).toHaveLength(3);
    expect(new Set(cluster.servers.map((s) => s.clusterPort)).size).toBe(3);

    const nc = await natsConnect(cluster.urls);
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.add({ name: 'R3', subjects: ['r3.>'], num_replicas: 3 });
    expect(info.config.num_replicas).toBe(3);
    expect(info.cluster?.leader).toMatch(/^n[123]$/);
    expect(info.cluster?.replicas).toHaveLength(2);

    const ack = await jetstream(nc).publish('r3.x', 'replicated');
    expect(ack.seq).toBe(1);
  });
});

describe('ws test client', () => {
  /** A tiny server: greets, echoes, and closes when asked to. */
  async function tinyServer(): Promise<string> {
    const port = await freePort();
    const server = http.createServer();
    const wss = new WebSocketServer({ noServer: true });
    server.on('upgrade', (req, socket, head) => {
      if (req.headers.authorization !== 'Bearer good') {
        socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 12\r\n\r\nunauthorized');
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        ws.send(JSON.stringify({ type: 'hello', data: { origin: req.headers.origin ?? null } }));
        ws.on('message', (raw) => {
          const text = raw.toString();
          if (text === 'not json') return ws.send('plain text');
          const msg = JSON.parse(text);
          if (msg.type === 'close') return ws.close(msg.code, msg.reason);
          for (let i = 0; i < (msg.repeat ?? 1); i++) ws.send(JSON.stringify({ type: 'echo', data: { ...msg, i } }));
        });
      });
    });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    cleanups.push(() => {
      for (const c of wss.clients) c.terminate();
      return new Promise((resolve) => server.close(resolve));
    });
    return `ws://127.0.0.1:${port}/`;
  }

  const auth = { headers: { authorization: 'Bearer good' } };

  it('records messages and hands each matching one out once, already received or future', async () => {
    const url = await tinyServer();
    const client = await connectClient(url, { ...auth, origin: 'http://example.test' });
    const hello = await client.waitForMessage();
    expect(hello).toEqual({ type: 'hello', data: { origin: 'http://example.test' } });

    client.send({ type: 'x', repeat: 3 });
    const echoes = await client.waitForMessages(3, (m) => m.type === 'echo');
    expect(echoes.map((m) => m.data.i)).toEqual([0, 1, 2]);
    expect(client.messages.map((m) => m.type)).toEqual(['hello', 'echo', 'echo', 'echo']);

    // Already-returned messages are not returned again; the next one has to be new.
    const next = client.waitForMessage((m) => m.type === 'echo');
    client.send({ type: 'y' });
    expect((await next).data.type).toBe('y');

    client.send('not json');
    expect(await client.waitForMessage((m) => typeof m === 'string')).toBe('plain text');
  });

  it('times out with the types it did receive', async () => {
    const client = await connectClient(await tinyServer(), auth);
    await expect(client.waitForMessage((m) => m.type === 'never', 200)).rejects.toThrow(
      /no matching message within 200 ms \(received: hello\)/,
    );
  });

  it('reports close codes from the server and from its own close()', async () => {
    const url = await tinyServer();
    const a = await connectClient(url, auth);
    a.send({ type: 'close', code: 4401, reason: 'token expired' });
    expect(await a.waitForClose()).toEqual({ code: 4401, reason: 'token expired' });
    expect(await a.waitForClose()).toEqual({ code: 4401, reason: 'token expired' }); // already closed

    const b = await connectClient(url, auth);
    b.close(4000, 'bye');
    expect(await b.waitForClose()).toEqual({ code: 4000, reason: 'bye' });
  });

  it('rejects a refused upgrade with its HTTP status', async () => {
    const err = await connectClient(await tinyServer()).catch((e) => e);
    expect(err).toBeInstanceOf(UpgradeRejectedError);
    expect(err.status).toBe(401);
    expect(err.body).toBe('unauthorized');
  });

  it('closeAllClients() closes every open client', async () => {
    const url = await tinyServer();
    const clients = await Promise.all([connectClient(url, auth), connectClient(url, auth)]);
    await closeAllClients();
    expect(clients.map((c) => c.ws.readyState)).toEqual([WebSocket.CLOSED, WebSocket.CLOSED]);
  });
});
