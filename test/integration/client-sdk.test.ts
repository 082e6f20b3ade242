/**
 * The client SDK against a real sidecar, a real nats-server and real sockets (`ws`): what the app
 * sees across a sidecar restart and a NATS restart (every published event exactly once, in order),
 * token refresh, reconnect policy and acks. Events are published with the publisher SDK.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { jetstreamManager } from '@nats-io/jetstream';
import { Client, type Options } from '../../src/client/index.js';
import { Publisher } from '../../src/publisher/index.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';

let nats: TestNats;
let side: TestSidecar;
let pub: Publisher;
const clients = new Set<Client>();

beforeAll(async () => {
  nats = await startTestNats();
  side = await startTestSidecar(nats.url);
  pub = new Publisher(await publisher(nats.url));
});
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
});
afterAll(async () => {
  await pub?.connection.close();
  await side?.stop();
  await nats?.cleanup();
});

function makeClient(s: TestSidecar, o: Partial<Options> & Pick<Options, 'token'>): Client {
  const client = new Client({ url: s.wsUrl, WebSocket, minReconnectDelay: 50, maxReconnectDelay: 500, ...o });
  clients.add(client);
  return client;
}

/** What the app sees: the `n` of every task_created, in order; `until(k)` resolves once k have arrived. */
function watch(client: Client) {
  const seen: number[] = [];
  const waiters: { k: number; resolve: () => void }[] = [];
  client.on('task_created', (e) => {
    seen.push(e.data.task.n as number);
    for (const w of waiters.filter((x) => seen.length >= x.k)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve();
    }
  });
  const until = (k: number, timeoutMs = 15_000): Promise<void> =>
    seen.length >= k
      ? Promise.resolve()
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`app saw ${JSON.stringify(seen)}, waited for ${k}`)), timeoutMs);
          waiters.push({ k, resolve: () => (clearTimeout(timer), resolve()) });
        });
  return { seen, until };
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function publishTasks(projectId: string, from: number, to: number): Promise<void> {
  for (const n of range(from, to)) await pub.notifyTaskCreated({ id: `t${n}`, n }, projectId);
}

const once = <T = any>(client: Client, name: string): Promise<T> => new Promise((r) => client.once(name as never, r));

async function waitFor(check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('client SDK: resume across outages', () => {
  it('sees every event exactly once, in order, when the sidecar restarts on the same port', async () => {
    const first = await startTestSidecar(nats.url);
    const port = first.sidecar.port;
    let current = first;
    try {
      const client = makeClient(first, { token: () => current.token('u-restart', { projects: ['sr-1'] }) });
      const app = watch(client);
      await client.connect();
      await client.subscribe('sr-1');
      await publishTasks('sr-1', 1, 5);
      await app.until(5);

      const down = once(client, 'disconnected');
      await first.stop();
      expect(await down).toMatchObject({ code: 1001, willReconnect: true });
      await publishTasks('sr-1', 6, 10); // stored while no sidecar runs

      const back = once(client, 'connected');
      const resumed = once(client, 'subscribed');
      current = await startTestSidecar(nats.url, { port });
      expect((await back).reconnected).toBe(true);
      // Re-subscribed with since = seq of event 5: the five stored meanwhile are replayed.
      expect(await resumed).toEqual({ projectId: 'sr-1', resumed: true, replayed: 5, truncated: false, epoch: first.sidecar.broker.epoch });
      await publishTasks('sr-1', 11, 15);
      await app.until(15);
      // A marker after everything: any late duplicate would have arrived before it.
      await publishTasks('sr-1', 16, 16);
      await app.until(16);
      expect(app.seen).toEqual(range(1, 16));
    } finally {
      await current.stop();
    }
  });

  it('sees every event exactly once, in order, when the NATS server restarts', async () => {
    const own = await startTestNats();
    const s = await startTestSidecar(own.url);
    const ownPub = await Publisher.connect({ servers: own.url, timeout: 2000, maxAttempts: 20, retryDelay: 100 });
    try {
      const client = makeClient(s, { token: () => s.token('u-nats', { projects: ['nr-1'] }) });
      const app = watch(client);
      const disconnects: number[] = [];
      client.on('disconnected', (d) => disconnects.push(d.code));
      await client.connect();
      await client.subscribe('nr-1');
      for (const n of range(1, 5)) await ownPub.notifyTaskCreated({ id: `t${n}`, n }, 'nr-1');
      await app.until(5);

      const reconnects = s.sidecar.broker.stats.reconnects;
      await own.restart();
      // The sidecar re-sends its NATS subscriptions before it reports the reconnect. (Filling a gap
      // of events stored while the sidecar itself was still reconnecting is the broker's job.)
      await waitFor(() => s.sidecar.broker.connected && s.sidecar.broker.stats.reconnects > reconnects);
      // The publisher SDK rides out its own reconnect and JetStream's restart by retrying.
      for (const n of range(6, 10)) await ownPub.notifyTaskCreated({ id: `t${n}`, n }, 'nr-1');
      await app.until(10);
      for (const n of range(11, 11)) await ownPub.notifyTaskCreated({ id: `t${n}`, n }, 'nr-1');
      await app.until(11);
      expect(app.seen).toEqual(range(1, 11));
      expect(disconnects).toEqual([]); // the WebSocket never dropped: NATS is behind the sidecar
    } finally {
      await ownPub.close();
      await s.stop();
      await own.cleanup();
    }
  });

  it('after the stream was created anew, resumes with the old epoch, is told, and sees the new epoch\'s events from seq 1', async () => {
    const own = await startTestNats();
    const ownPub = new Publisher(await publisher(own.url));
    const first = await startTestSidecar(own.url);
    const port = first.sidecar.port;
    let current = first;
    try {
      const client = makeClient(first, { token: () => current.token('u-epoch', { projects: ['ep-1'] }) });
      const app = watch(client);
      const truncations: any[] = [];
      client.on('history_truncated', (t) => truncations.push(t));
      await client.connect();
      const oldEpoch = client.epoch;
      expect(oldEpoch).toBe(first.sidecar.broker.epoch);
      await client.subscribe('ep-1');
      for (const n of range(1, 5)) await ownPub.notifyTaskCreated({ id: `t${n}`, n }, 'ep-1');
      await app.until(5);
      expect(client.positions.get('ep-1')).toEqual({ seq: expect.any(Number), epoch: oldEpoch });

      const down = once(client, 'disconnected');
      await first.stop();
      await down;
      // The store is lost (an operator deleted the stream): the next sidecar creates it anew.
      const jsm = await jetstreamManager(ownPub.connection);
      await jsm.streams.delete('WS_EVENTS');
      const resumed = once<any>(client, 'subscribed');
      current = await startTestSidecar(own.url, { port });
      const newEpoch = current.sidecar.broker.epoch;
      expect(newEpoch).not.toBe(oldEpoch);
      expect(await resumed).toMatchObject({ projectId: 'ep-1', resumed: true, truncated: true, epoch: newEpoch });
      expect(client.epoch).toBe(newEpoch);
      // Seqs start at 1 again: none of these may be dropped as "already seen".
      for (const n of range(6, 8)) await ownPub.notifyTaskCreated({ id: `t${n}`, n }, 'ep-1');
      await app.until(8);
      expect(app.seen).toEqual(range(1, 8));
      expect(truncations).toEqual([
        { scope: 'user', epoch: newEpoch, previousEpoch: oldEpoch, reason: 'stream_recreated' },
        { scope: 'project', projectId: 'ep-1', epoch: newEpoch, since: expect.any(Number), previousEpoch: oldEpoch, reason: 'stream_recreated' },
      ]);
      expect(client.positions.get('ep-1')).toEqual({ seq: expect.any(Number), epoch: newEpoch });
    } finally {
      await current.stop();
      await ownPub.connection.close();
      await own.cleanup();
    }
  });

  it('resumes from the last seq after close() and connect() again', async () => {
    const client = makeClient(side, { token: () => side.token('u-close', { projects: ['cl-1'] }) });
    const app = watch(client);
    await client.connect();
    await client.subscribe('cl-1');
    await publishTasks('cl-1', 1, 3);
    await app.until(3);
    await client.close();
    expect(client.state).toBe('disconnected');
    await publishTasks('cl-1', 4, 6);
    await client.connect();
    await app.until(6);
    await publishTasks('cl-1', 7, 7);
    await app.until(7);
    expect(app.seen).toEqual(range(1, 7));
  });

  it('reconnects and resumes after a slow-consumer close (4008), not after an operator disconnect (4010)', async () => {
    const client = makeClient(side, { token: () => side.token('u-codes', { projects: ['cc-1'] }) });
    const app = watch(client);
    await client.connect();
    await client.subscribe('cc-1');
    await publishTasks('cc-1', 1, 2);
    await app.until(2);

    const back = once(client, 'connected');
    side.sidecar.hub.connections.get(client.connectionId!)!.close(4008, 'slow consumer: resume with since');
    await publishTasks('cc-1', 3, 4);
    await back;
    await app.until(4);
    expect(app.seen).toEqual(range(1, 4));

    const gone = once(client, 'disconnected');
    side.sidecar.hub.connections.get(client.connectionId!)!.close(4010, 'disconnected by operator');
    expect(await gone).toMatchObject({ code: 4010, willReconnect: false });
    expect(client.state).toBe('disconnected');
  });
});

describe('client SDK: tokens', () => {
  it('refreshes a short-lived token before it expires, on the same connection', async () => {
    let calls = 0;
    const client = makeClient(side, {
      token: () => {
        calls += 1;
        return side.token('u-refresh', { projects: ['tr-1'], expiresIn: 4 });
      },
    });
    const app = watch(client);
    const disconnects: number[] = [];
    client.on('disconnected', (d) => disconnects.push(d.code));
    await client.connect();
    await client.subscribe('tr-1');
    const connectionId = client.connectionId;
    // Three refreshes take the connection well past the first token's expiry.
    await waitFor(() => calls >= 4, 15_000);
    await publishTasks('tr-1', 1, 1);
    await app.until(1);
    expect(disconnects).toEqual([]);
    expect(client.connectionId).toBe(connectionId);
  }, 30_000);

  it('does not reconnect when a fixed token expires (4401)', async () => {
    const client = makeClient(side, { token: await side.token('u-expire', { expiresIn: 2 }) });
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.code));
    await client.connect();
    const gone = await once<any>(client, 'disconnected');
    expect(gone).toMatchObject({ code: 4401, willReconnect: false });
    expect(errors).toContain('token_expired');
    expect(client.state).toBe('disconnected');
  });

  it('reconnects after a refused token when the callback gives a good one', async () => {
    const tokens = ['not.a.jwt', await side.token('u-retry')];
    const client = makeClient(side, { token: () => tokens.shift()! });
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.code));
    await client.connect();
    expect(client.userId).toBe('u-retry');
    expect(errors).toEqual(['auth_failed']);
  });
});

describe('client SDK: subscriptions and acks', () => {
  it('rejects a project outside the token with forbidden, and stops events after unsubscribe', async () => {
    const client = makeClient(side, { token: () => side.token('u-subs', { projects: ['ok-1'] }) });
    const app = watch(client);
    await client.connect();
    await expect(client.subscribe('not-mine')).rejects.toMatchObject({ code: 'forbidden', projectId: 'not-mine' });
    await client.subscribe('ok-1');
    await publishTasks('ok-1', 1, 1);
    await app.until(1);
    await client.unsubscribe('ok-1');
    await publishTasks('ok-1', 2, 2);
    // A direct message after it proves the project event would have arrived by now.
    const marker = once(client, 'direct_message');
    await pub.sendDirectMessage('u-subs', 'direct_message', { text: 'marker' });
    await marker;
    expect(app.seen).toEqual([1]);
  });

  it('reports truncated history when the stream no longer holds the resume point', async () => {
    const client = makeClient(side, { token: () => side.token('u-trunc') });
    await client.connect();
    const truncated = once<any>(client, 'history_truncated');
    const info = await client.subscribe('th-1', { since: 1_000_000_000 });
    expect(info).toMatchObject({ truncated: true, resumed: true });
    expect(await truncated).toEqual({ scope: 'project', projectId: 'th-1', since: 1_000_000_000, epoch: side.sidecar.broker.epoch });
  });

  /** Records the `ack` frames the sidecar receives on the client's connection. */
  function spyAcks(client: Client): { acks: number[]; next: () => Promise<number> } {
    const conn = side.sidecar.hub.connections.get(client.connectionId!)!;
    const acks: number[] = [];
    let wake: ((seq: number) => void) | undefined;
    const receive = conn.receive.bind(conn);
    conn.receive = (data, isBinary) => {
      const m = JSON.parse(String(data));
      if (m.type === 'ack') {
        acks.push(m.data.seq);
        wake?.(m.data.seq);
      }
      receive(data, isBinary);
    };
    return { acks, next: () => new Promise((r) => (wake = r)) };
  }

  it('acks a direct message after the app handled it', async () => {
    const client = makeClient(side, { token: () => side.token('u-ack') });
    await client.connect();
    const spy = spyAcks(client);
    const handled: number[] = [];
    client.on('direct_message', (e) => handled.push(e.seq));
    const acked = spy.next();
    const { seq } = await pub.sendDirectMessage('u-ack', 'direct_message', { text: 'hello' });
    expect(await acked).toBe(seq);
    expect(handled).toEqual([seq]);
  });

  it('with autoAck off, acks only when the app calls ack(seq)', async () => {
    const client = makeClient(side, { token: () => side.token('u-manual'), autoAck: false });
    await client.connect();
    const spy = spyAcks(client);
    const got = once<any>(client, 'direct_message');
    const { seq } = await pub.sendDirectMessage('u-manual', 'direct_message', { text: 'later' });
    expect((await got).seq).toBe(seq);
    expect(spy.acks).toEqual([]);
    const acked = spy.next();
    client.ack(seq);
    expect(await acked).toBe(seq);
  });
});
