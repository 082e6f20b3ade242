/**
 * The client SDK's own logic, driven through an in-memory WebSocket that plays the server's side
 * of the protocol: dedupe, resume points, acks, request pacing and the reconnect policy per close
 * code. (End to end against a real sidecar and nats-server: test/integration/client-sdk.test.ts.)
 */
import { describe, expect, it } from 'vitest';
import { Client, ClientError, tokenExpiresAt, type Options } from '../../src/client/index.js';
import { FakeSocket } from '../helpers/fake-socket.js';

/** The first socket created after `after` sockets existed. */
const nextSocket = async (after: number): Promise<FakeSocket> => {
  const deadline = Date.now() + 5000;
  while (FakeSocket.all.length <= after) {
    if (Date.now() > deadline) throw new Error('the client opened no new socket');
    await new Promise((r) => setTimeout(r, 1));
  }
  return FakeSocket.all[after];
};
const once = <T = any>(client: Client, name: string): Promise<T> => new Promise((r) => client.once(name as never, r));

function makeClient(o: Partial<Options> = {}): Client {
  return new Client({
    url: 'ws://sidecar/ws/connect',
    token: 'header.eyJzdWIiOiJ1MSJ9.sig',
    WebSocket: FakeSocket,
    minReconnectDelay: 1,
    maxReconnectDelay: 2,
    pingInterval: 0,
    ...o,
  });
}

async function connected(o: Partial<Options> = {}, epoch?: string): Promise<{ client: Client; socket: FakeSocket }> {
  const client = makeClient(o);
  const before = FakeSocket.all.length;
  const ready = client.connect();
  const socket = await nextSocket(before);
  await socket.accept('u1', epoch);
  await ready;
  return { client, socket };
}

const event = (seq: number, extra: Record<string, unknown> = {}) => ({ type: 'task_created', seq, data: { n: seq }, ...extra });

describe('client SDK logic', () => {
  it('authenticates with the first message and reports the user and connection', async () => {
    const client = makeClient();
    const states: string[] = [];
    client.on('state', ({ state }) => states.push(state));
    const info = once(client, 'connected');
    const before = FakeSocket.all.length;
    const ready = client.connect();
    const socket = await nextSocket(before);
    expect(await socket.accept('alice')).toBe('header.eyJzdWIiOiJ1MSJ9.sig');
    await ready;
    expect(await info).toMatchObject({ userId: 'alice', reconnected: false });
    expect(client.state).toBe('connected');
    expect(states).toEqual(['connecting', 'connected']);
    await client.close();
    expect(client.state).toBe('disconnected');
  });

  it('delivers typed events in order and drops a seq it has already seen for the project', async () => {
    const { client, socket } = await connected();
    const typed: number[] = [];
    const all: number[] = [];
    client.on('task_created', (e) => typed.push(e.seq));
    client.on('event', (e) => all.push(e.seq));
    const sub = client.subscribe('p1');
    await socket.answerSubscribe('p1');
    await sub;
    for (const seq of [3, 5, 5, 4, 9]) socket.deliver(event(seq, { project_id: 'p1' }));
    socket.deliver(event(10, { project_id: 'not-subscribed' }));
    expect(typed).toEqual([3, 5, 9]);
    expect(all).toEqual([3, 5, 9]);
    await client.close();
  });

  it('re-subscribes every project after a reconnect with since = the last seq seen, or the floor when none was seen', async () => {
    const { client, socket } = await connected();
    socket.deliver({ type: 'note', seq: 7, data: {} }); // a broadcast: the highest seq seen so far
    const a = client.subscribe('a');
    const b = client.subscribe('b');
    expect(await socket.answerSubscribe('a')).not.toHaveProperty('since');
    await socket.answerSubscribe('b');
    await Promise.all([a, b]);
    socket.deliver(event(12, { project_id: 'a' }));

    const reconnected = once(client, 'connected');
    const before = FakeSocket.all.length;
    socket.serverClose(1001, 'server shutting down; reconnect');
    const next = await nextSocket(before);
    await next.accept();
    expect((await reconnected).reconnected).toBe(true);
    expect((await next.answerSubscribe('a')).since).toBe(12);
    // Nothing of b was seen: resume from the highest seq seen before b's first subscribe.
    expect((await next.answerSubscribe('b')).since).toBe(7);
    await client.close();
  });

  it('acks a direct message after its listeners ran, drops a redelivery and acks it again', async () => {
    const { client, socket } = await connected();
    const order: string[] = [];
    client.on('event', (e) => order.push(`handled ${e.seq}`));
    socket.deliver({ type: 'direct_message', seq: 40, data: { text: 'hi' } });
    expect(order).toEqual(['handled 40']);
    expect(socket.sent.filter((m) => m.type === 'ack')).toEqual([{ type: 'ack', data: { seq: 40 } }]);
    socket.deliver({ type: 'direct_message', seq: 40, data: { text: 'hi' } });
    expect(order).toEqual(['handled 40']);
    expect(socket.sent.filter((m) => m.type === 'ack')).toHaveLength(2);
    // Project events are not acked.
    void client.subscribe('p');
    await socket.answerSubscribe('p');
    socket.deliver(event(41, { project_id: 'p' }));
    expect(socket.sent.filter((m) => m.type === 'ack')).toHaveLength(2);
    await client.close();
  });

  it('with autoAck off, acks only when the app calls ack(seq)', async () => {
    const { client, socket } = await connected({ autoAck: false });
    const got = once<any>(client, 'event');
    socket.deliver({ type: 'direct_message', seq: 50, data: {} });
    const e = await got;
    expect(socket.sent.some((m) => m.type === 'ack')).toBe(false);
    client.ack(e.seq);
    expect(socket.sent.filter((m) => m.type === 'ack')).toEqual([{ type: 'ack', data: { seq: 50 } }]);
    await client.close();
  });

  it('paces its requests under the server\'s inbound limit', async () => {
    const { client, socket } = await connected({ maxRequestsPerSecond: 50, requestBurst: 5 });
    const subs = Array.from({ length: 12 }, (_, i) => client.subscribe(`p${i}`));
    // The auth message took one token of the burst.
    expect(socket.sent.filter((m) => m.type === 'subscription')).toHaveLength(4);
    for (let i = 0; i < 12; i++) await socket.answerSubscribe(`p${i}`);
    await Promise.all(subs);
    await client.close();
  });

  it('rejects a bad project id without sending, and a forbidden one with the server\'s code', async () => {
    const { client, socket } = await connected();
    await expect(client.subscribe('a.b')).rejects.toMatchObject({ code: 'invalid_argument' });
    const forbidden = client.subscribe('secret');
    const req = await socket.nextSent((m) => m.data?.project_id === 'secret');
    socket.deliver({ type: 'error', data: { code: 'forbidden', message: 'no', project_id: 'secret', in_reply_to: req.message_id } });
    const err = await forbidden.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClientError);
    expect(err).toMatchObject({ code: 'forbidden', projectId: 'secret' });
    expect(client.subscriptions.has('secret')).toBe(false);
    await client.close();
  });

  it('retries a subscribe the server could not process (processing_error) instead of dropping it, also when resuming', async () => {
    const { client, socket } = await connected();
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.code));
    const sub = client.subscribe('busy');
    const first = await socket.nextSent((m) => m.type === 'subscription' && m.data.project_id === 'busy');
    socket.deliver({ type: 'error', data: { code: 'processing_error', message: 'try later', in_reply_to: first.message_id } });
    const again = await socket.nextSent((m) => m.type === 'subscription' && m.data.project_id === 'busy' && m !== first);
    socket.deliver({ type: 'subscription', data: { action: 'subscribed', project_id: 'busy' } });
    expect(await sub).toMatchObject({ projectId: 'busy' });
    expect(again.message_id).not.toBe(first.message_id);
    socket.deliver(event(30, { project_id: 'busy' }));

    // After a reconnect the resume fails once (JetStream failing over): still resumed from seq 30.
    const before = FakeSocket.all.length;
    socket.serverClose(1006);
    const next = await nextSocket(before);
    await next.accept();
    const resume = await next.nextSent((m) => m.type === 'subscription' && m.data.project_id === 'busy');
    expect(resume.data.since).toBe(30);
    next.deliver({ type: 'error', data: { code: 'processing_error', message: 'try later', in_reply_to: resume.message_id } });
    const retried = await next.nextSent((m) => m.type === 'subscription' && m !== resume);
    expect(retried.data).toMatchObject({ project_id: 'busy', since: 30 });
    expect(client.subscriptions.get('busy')).toBe(30);
    expect(errors).toEqual(['processing_error', 'processing_error']);
    await client.close();
  });

  it('surfaces truncated history as an event', async () => {
    const { client, socket } = await connected();
    const truncated = once<any>(client, 'history_truncated');
    const sub = client.subscribe('old', { since: 99 });
    expect((await socket.answerSubscribe('old', { truncated: true, replayed: 0 })).since).toBe(99);
    expect(await sub).toMatchObject({ truncated: true, resumed: true });
    expect(await truncated).toEqual({ scope: 'project', projectId: 'old', since: 99 });
    await client.close();
  });

  it('resumes each project with since and the epoch that seq belongs to', async () => {
    const { client, socket } = await connected();
    void client.subscribe('p');
    await socket.answerSubscribe('p', { epoch: 'e1' });
    socket.deliver(event(12, { project_id: 'p' }));
    expect(client.positions.get('p')).toEqual({ seq: 12, epoch: 'e1' });
    const before = FakeSocket.all.length;
    socket.serverClose(1006);
    const next = await nextSocket(before);
    await next.accept('u1', 'e1');
    expect(await next.answerSubscribe('p', { epoch: 'e1', replayed: 0 })).toEqual({ action: 'subscribe', project_id: 'p', since: 12, epoch: 'e1' });
    await client.close();
  });

  it('after a resume answered with another epoch, delivers that epoch\'s events from seq 1 and says history_truncated with it', async () => {
    const { client, socket } = await connected({}, 'e1');
    const seen: number[] = [];
    const truncations: any[] = [];
    client.on('event', (e) => seen.push(e.seq));
    client.on('history_truncated', (t) => truncations.push(t));
    void client.subscribe('p');
    await socket.answerSubscribe('p', { epoch: 'e1' });
    socket.deliver(event(12, { project_id: 'p' }));
    const before = FakeSocket.all.length;
    socket.serverClose(1006);
    const next = await nextSocket(before);
    await next.accept('u1', 'e2'); // NATS lost its store meanwhile: the stream numbers from 1 again
    const info = once<any>(client, 'subscribed');
    await next.answerSubscribe('p', { epoch: 'e2', truncated: true, replayed: 2 });
    expect(await info).toMatchObject({ projectId: 'p', truncated: true, resumed: true, epoch: 'e2' });
    next.deliver(event(1, { project_id: 'p' }));
    next.deliver(event(2, { project_id: 'p' }));
    expect(seen).toEqual([12, 1, 2]);
    expect(truncations).toEqual([
      { scope: 'user', epoch: 'e2', previousEpoch: 'e1', reason: 'stream_recreated' },
      { scope: 'project', projectId: 'p', epoch: 'e2', since: 12, previousEpoch: 'e1', reason: 'stream_recreated' },
    ]);
    expect(client.positions.get('p')).toEqual({ seq: 2, epoch: 'e2' });
    await client.close();
  });

  it('counts afresh after a live history_truncated of a recreated stream, for projects, direct messages and broadcasts', async () => {
    const { client, socket } = await connected({}, 'e1');
    const seen: string[] = [];
    const truncations: any[] = [];
    client.on('event', (e) => seen.push(`${e.project_id ?? 'direct'}:${e.seq}`));
    client.on('history_truncated', (t) => truncations.push(t));
    void client.subscribe('p');
    await socket.answerSubscribe('p', { epoch: 'e1' });
    socket.deliver(event(7, { project_id: 'p' }));
    socket.deliver({ type: 'direct_message', seq: 8, data: {} });
    const recreated = { epoch: 'e2', previous_epoch: 'e1', reason: 'stream_recreated' };
    socket.deliver({ type: 'history_truncated', data: { scope: 'project', project_id: 'p', ...recreated } });
    socket.deliver({ type: 'history_truncated', data: { scope: 'user', ...recreated } });
    socket.deliver({ type: 'history_truncated', data: { scope: 'broadcast', ...recreated } });
    socket.deliver(event(1, { project_id: 'p' }));
    socket.deliver({ type: 'direct_message', seq: 8, data: {} }); // a new message under an old seq
    expect(seen).toEqual(['p:7', 'direct:8', 'p:1', 'direct:8']);
    const common = { epoch: 'e2', previousEpoch: 'e1', reason: 'stream_recreated', since: undefined };
    expect(truncations).toEqual([
      { scope: 'project', projectId: 'p', ...common },
      { scope: 'user', ...common },
      { scope: 'broadcast', ...common },
    ]);
    expect(client.epoch).toBe('e2');
    expect(client.positions.get('p')).toEqual({ seq: 1, epoch: 'e2' });
    await client.close();
  });

  it('reads after_seq of a gap the stream no longer covers, for the user and broadcast topics too, and keeps counting', async () => {
    const { client, socket } = await connected({}, 'e1');
    const truncations: any[] = [];
    const seen: number[] = [];
    client.on('history_truncated', (t) => truncations.push(t));
    client.on('event', (e) => seen.push(e.seq));
    void client.subscribe('p');
    await socket.answerSubscribe('p', { epoch: 'e1' });
    socket.deliver({ type: 'direct_message', seq: 40, data: {} });
    socket.deliver({ type: 'history_truncated', data: { scope: 'project', project_id: 'p', after_seq: 30, epoch: 'e1' } });
    socket.deliver({ type: 'history_truncated', data: { scope: 'user', after_seq: 40, epoch: 'e1' } });
    socket.deliver({ type: 'history_truncated', data: { scope: 'broadcast', after_seq: 41, epoch: 'e1' } });
    socket.deliver({ type: 'direct_message', seq: 40, data: {} }); // same epoch: still a redelivery
    expect(seen).toEqual([40]);
    expect(truncations).toEqual([
      { scope: 'project', projectId: 'p', since: 30, epoch: 'e1' },
      { scope: 'user', since: 40, epoch: 'e1' },
      { scope: 'broadcast', since: 41, epoch: 'e1' },
    ]);
    await client.close();
  });

  it('resends an unsubscribe refused with rate_limited, and resolves it on the answer', async () => {
    const { client, socket } = await connected();
    void client.subscribe('p');
    await socket.answerSubscribe('p');
    const done = client.unsubscribe('p');
    const first = await socket.nextSent((m) => m.data?.action === 'unsubscribe');
    socket.deliver({ type: 'error', data: { code: 'rate_limited', message: 'too many requests; slow down' } });
    const again = await socket.nextSent((m) => m.data?.action === 'unsubscribe' && m !== first);
    expect(again.data).toEqual({ action: 'unsubscribe', project_id: 'p' });
    socket.deliver({ type: 'subscription', data: { action: 'unsubscribed', project_id: 'p' } });
    await done;
    await client.close();
  });

  it('does not resend a refused unsubscribe of a project subscribed again meanwhile, and resolves it', async () => {
    const { client, socket } = await connected();
    void client.subscribe('p');
    await socket.answerSubscribe('p');
    const done = client.unsubscribe('p');
    await socket.nextSent((m) => m.data?.action === 'unsubscribe');
    socket.deliver({ type: 'error', data: { code: 'rate_limited', message: 'too many requests; slow down' } });
    const again = client.subscribe('p');
    await socket.answerSubscribe('p');
    await again;
    await done; // resolved at the retry, which sends nothing for p
    expect(socket.sent.filter((m) => m.data?.action === 'unsubscribe')).toHaveLength(1);
    expect(client.subscriptions.has('p')).toBe(true);
    await client.close();
  });

  it.each([
    [4010, false],
    [4403, false],
    [4429, false],
    [4401, false],
    [4008, true],
    [1006, true],
    [1011, true],
  ])('after close code %i reconnects: %s (static token)', async (code, reconnects) => {
    const { client, socket } = await connected();
    const disconnected = once<any>(client, 'disconnected');
    socket.serverClose(code);
    expect((await disconnected).willReconnect).toBe(reconnects);
    expect(client.state).toBe(reconnects ? 'connecting' : 'disconnected');
    await client.close();
  });

  it('with a list of URLs, takes the next one for each connection attempt, so a lost instance is left for another', async () => {
    const urls = ['ws://a/ws/connect', 'ws://b/ws/connect'];
    const { client, socket } = await connected({ url: urls });
    expect(socket.url).toBe(urls[0]);
    expect(client.currentUrl).toBe(urls[0]);
    void client.subscribe('p');
    await socket.answerSubscribe('p');
    socket.deliver(event(21, { project_id: 'p' }));

    let before = FakeSocket.all.length;
    socket.serverClose(1006); // the instance died
    const second = await nextSocket(before);
    expect(second.url).toBe(urls[1]);
    await second.accept();
    expect((await second.answerSubscribe('p')).since).toBe(21); // resumed on the other instance
    expect(client.currentUrl).toBe(urls[1]);

    before = FakeSocket.all.length;
    second.serverClose(1001);
    expect((await nextSocket(before)).url).toBe(urls[0]);
    await client.close();
  });

  it('asks a URL callback before every attempt, and refuses an empty list', async () => {
    const asked: number[] = [];
    const { client, socket } = await connected({ url: (attempt) => (asked.push(attempt), `ws://host-${attempt}/ws/connect`) });
    expect(socket.url).toBe('ws://host-0/ws/connect');
    const before = FakeSocket.all.length;
    socket.serverClose(1006);
    expect((await nextSocket(before)).url).toBe('ws://host-1/ws/connect');
    expect(asked).toEqual([0, 1]);
    await client.close();
    expect(() => makeClient({ url: [] })).toThrow(ClientError);
    expect(() => makeClient({ url: 42 as never })).toThrow(/options\.url/);
  });

  it('after 4401 reconnects with a new token from the callback', async () => {
    const tokens = ['first.e30.x', 'second.e30.x'];
    const { client, socket } = await connected({ token: () => tokens.shift()! });
    const before = FakeSocket.all.length;
    socket.serverClose(4401, 'token expired');
    const next = await nextSocket(before);
    expect(await next.accept()).toBe('second.e30.x');
    await client.close();
  });

  it('keeps delivering when a listener throws, and reports it as an error', async () => {
    const { client, socket } = await connected();
    const errors: ClientError[] = [];
    const seen: number[] = [];
    client.on('error', (e) => errors.push(e));
    client.on('direct_message', () => {
      throw new Error('boom');
    });
    client.on('event', (e) => seen.push(e.seq));
    socket.deliver({ type: 'direct_message', seq: 60, data: {} });
    expect(seen).toEqual([60]);
    expect(errors.map((e) => e.code)).toEqual(['listener_error']);
    await client.close();
  });

  it('reads exp from a JWT without verifying it', () => {
    const payload = Buffer.from(JSON.stringify({ sub: 'ü', exp: 1_900_000_000 })).toString('base64url');
    expect(tokenExpiresAt(`h.${payload}.s`)).toBe(1_900_000_000_000);
    expect(tokenExpiresAt('not a jwt')).toBeUndefined();
    expect(tokenExpiresAt(`h.${Buffer.from('{}').toString('base64url')}.s`)).toBeUndefined();
  });
});
