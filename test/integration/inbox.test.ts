/**
 * The offline inbox against a real nats-server: direct messages published while a user is away
 * are delivered in order on the next connection; acks (from any connection, on any instance)
 * stop redelivery across sidecar restarts; ack-on-write for clients that never ack; two
 * instances serving one user; offline counts read from JetStream. No consumer per user: one key
 * per user in the inbox bucket, written by compare-and-set.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { ConfigInput } from '../../src/config.js';
import { decodeAcks, isAcked, type AckState } from '../../src/nats/inbox-acks.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { storedPublisher, waitFor, type StoredPublisher } from '../helpers/streams.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

const STREAM = 'WS_EVENTS';
const BUCKET = 'WS_INBOX_ACKS';
let nats: TestNats;
let nc: NatsConnection;
let pub: StoredPublisher;
let jsm: JetStreamManager;
const running = new Set<TestSidecar>();

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
  pub = storedPublisher(nc);
  jsm = await jetstreamManager(nc);
});
afterEach(async () => {
  await closeAllClients();
  for (const s of running) await s.stop();
  running.clear();
});
afterAll(async () => {
  await nc?.close();
  await nats?.cleanup();
});

async function sidecar(overrides: ConfigInput = {}): Promise<TestSidecar> {
  const s = await startTestSidecar(nats.url, overrides);
  running.add(s);
  return s;
}

async function stop(s: TestSidecar): Promise<void> {
  running.delete(s);
  await s.stop();
}

async function client(s: TestSidecar, sub: string): Promise<TestClient> {
  const c = await connectClient(`${s.wsUrl}?token=${await s.token(sub)}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  return c;
}

async function closeClient(c: TestClient): Promise<void> {
  c.close();
  await c.waitForClose();
}

/** Direct messages with data.i = from..to-1, stored; returns their seqs. */
async function directs(user: string, from: number, to: number): Promise<number[]> {
  const seqs: number[] = [];
  for (let i = from; i < to; i++) seqs.push(await pub.publish(`ws.user.${user}`, 'dm', { i }));
  return seqs;
}

/** Every request before it has been processed once the pong is back (requests run in order). */
async function settled(c: TestClient): Promise<void> {
  c.send({ type: 'ping' });
  await c.waitForMessage((m) => m.type === 'pong');
}

const dms = (c: TestClient) => c.messages.filter((m) => m.type === 'dm').map((m) => m.data.i);

/** Publish a live marker and wait for it: whatever was going to be delivered before it has been. */
async function marker(c: TestClient, user: string): Promise<void> {
  await pub.publish(`ws.user.${user}`, 'marker');
  await c.waitForMessage((m) => m.type === 'marker');
}

/** The user's key in the inbox bucket as `s` reads it (its epoch), or null when there is none. */
async function ackState(s: TestSidecar, user: string): Promise<AckState | null> {
  const kv = await new Kvm(nc).open(BUCKET);
  const entry = await kv.get(user);
  return entry?.operation === 'PUT' ? decodeAcks(entry.value, s.sidecar.broker.epoch) : null;
}

async function inboxEmpty(s: TestSidecar, user: string): Promise<boolean> {
  return (await s.sidecar.broker.inboxes.unacknowledged(user)) === 0;
}

/** Durable consumers on a stream (the inbox must create none). */
async function durables(stream = STREAM): Promise<string[]> {
  const names: string[] = [];
  for await (const c of jsm.consumers.list(stream)) if (c.config.durable_name) names.push(c.name);
  return names;
}

describe('offline delivery', () => {
  it('delivers direct messages published while the user was away, in order, after auth_success', async () => {
    const s = await sidecar();
    await directs('off-1', 0, 5);
    const c = await client(s, 'off-1');
    await c.waitForMessage((m) => m.data?.i === 4);
    expect(c.messages[0].type).toBe('auth_success');
    expect(dms(c)).toEqual([0, 1, 2, 3, 4]);
    await directs('off-1', 5, 6);
    await c.waitForMessage((m) => m.data?.i === 5);
    expect(dms(c)).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('keeps no consumer per user: one key in the inbox bucket (TTL messageTTL, replicas streamReplicas), written on ack', async () => {
    const s = await sidecar();
    await client(s, 'cfg-0');
    const [seq] = await directs('cfg-1', 0, 1);
    const c = await client(s, 'cfg-1');
    await c.waitForMessage((m) => m.data?.i === 0);
    c.send({ type: 'ack', data: { seq } });
    await waitFor(async () => (await ackState(s, 'cfg-1'))?.floor === seq, 5_000, 'the ack written');
    expect(await ackState(s, 'cfg-1')).toEqual({ floor: seq, acked: [] });
    // A user with nothing to acknowledge has no key; nobody has a consumer.
    expect(await ackState(s, 'cfg-0')).toBeNull();
    expect(await durables()).toEqual([]);
    const { config } = await jsm.streams.info(`KV_${BUCKET}`);
    expect(config).toMatchObject({ max_age: 24 * 3_600_000_000_000, max_msgs_per_subject: 1, num_replicas: 1 });
  });

  it('does not deliver acked messages again and redelivers unacked ones, across a sidecar restart', async () => {
    const first = await sidecar();
    const seqs = await directs('ack-1', 0, 4);
    const c = await client(first, 'ack-1');
    await c.waitForMessage((m) => m.data?.i === 3);
    c.send({ type: 'ack', data: { seq: seqs[0] } });
    c.send({ type: 'ack', data: { seq: seqs[2] } });
    await settled(c);
    await closeClient(c);
    await stop(first);

    const second = await sidecar(); // a new instance on the same NATS
    const back = await client(second, 'ack-1');
    await back.waitForMessage((m) => m.data?.i === 3);
    await marker(back, 'ack-1');
    expect(dms(back)).toEqual([1, 3]);

    back.send({ type: 'ack', data: { seq: seqs[1] } });
    back.send({ type: 'ack', data: { seq: seqs[3] } });
    await settled(back);
    await closeClient(back);
    const last = await client(second, 'ack-1');
    await marker(last, 'ack-1');
    expect(dms(last)).toEqual([]);
  });

  it('does not deliver an ack again when its write lands while a new connection reads the backlog', async () => {
    const s = await sidecar();
    const seqs = await directs('race-1', 0, 2);
    const inboxes = s.sidecar.broker.inboxes as unknown as { readKey: (user: string) => Promise<unknown>; idle(): Promise<void> };
    const readKey = inboxes.readKey.bind(inboxes);
    s.sidecar.broker.inboxes.acknowledge('race-1', seqs[0]); // its write has read the key already
    // The worst order for the backlog read that follows: it reads the key before the ack's write
    // lands, and goes on only after it landed (and the pending ack here was forgotten).
    inboxes.readKey = async (user: string) => {
      inboxes.readKey = readKey;
      const before = await readKey(user);
      await inboxes.idle();
      return before;
    };
    const backlog = await s.sidecar.broker.inboxes.backlog('race-1');
    expect(backlog.map((m) => m.seq)).toEqual([seqs[1]]);
  });

  it('loses no unacknowledged message when an instance dies without a goodbye', async () => {
    const opts: ConfigInput = { inboxAckMode: 'explicit' };
    const doomed = await sidecar(opts);
    await directs('crash-1', 0, 2);
    const c = await client(doomed, 'crash-1');
    await c.waitForMessage((m) => m.data?.i === 1);
    await doomed.sidecar.broker.nc.close(); // gone without draining or saying anything more
    await stop(doomed);

    const next = await sidecar(opts);
    const back = await client(next, 'crash-1');
    await back.waitForMessage((m) => m.data?.i === 1);
    expect(dms(back)).toEqual([0, 1]);
  });
});

describe('acknowledgement modes', () => {
  it('ignores an ack for a message the connection never received', async () => {
    const s = await sidecar({ inboxAckMode: 'explicit' });
    const [other] = await directs('someone-else', 0, 1);
    await directs('ign-1', 0, 2);
    const c = await client(s, 'ign-1');
    await c.waitForMessage((m) => m.data?.i === 1);
    for (const seq of [other, 999_999]) c.send({ type: 'ack', data: { seq } });
    await settled(c);
    expect(c.messages.some((m) => m.type === 'error')).toBe(false);
    await closeClient(c);
    const back = await client(s, 'ign-1');
    await back.waitForMessage((m) => m.data?.i === 1);
    expect(dms(back)).toEqual([0, 1]);
  });


  it('acks on write, after inboxAckWait, for a connection that never acks (auto)', async () => {
    const s = await sidecar({ inboxAckWait: 1_000 });
    await directs('auto-1', 0, 2);
    const c = await client(s, 'auto-1');
    await c.waitForMessage((m) => m.data?.i === 1);
    await waitFor(() => inboxEmpty(s, 'auto-1'), 5_000, 'inbox acked on write');
    await closeClient(c);
    const back = await client(s, 'auto-1');
    await marker(back, 'auto-1');
    expect(dms(back)).toEqual([]);
  });

  it('leaves a client that acks to ack for itself (auto)', async () => {
    const s = await sidecar({ inboxAckWait: 1_000 });
    const seqs = await directs('aware-1', 0, 3);
    const c = await client(s, 'aware-1');
    await c.waitForMessage((m) => m.data?.i === 2);
    c.send({ type: 'ack', data: { seq: seqs[0] } });
    await settled(c);
    // Past the grace an ack-on-write would have taken: nothing else may have been acked.
    await new Promise((r) => setTimeout(r, 2_200));
    expect(await ackState(s, 'aware-1')).toEqual({ floor: seqs[0], acked: [] });
    expect(await s.sidecar.broker.inboxes.unacknowledged('aware-1')).toBe(2);
    await closeClient(c);
    const back = await client(s, 'aware-1');
    await back.waitForMessage((m) => m.data?.i === 2);
    expect(dms(back)).toEqual([1, 2]);
  });

  it('acks as soon as a message is written (write)', async () => {
    const s = await sidecar({ inboxAckMode: 'write' });
    await directs('write-1', 0, 2);
    const c = await client(s, 'write-1');
    await c.waitForMessage((m) => m.data?.i === 1);
    await waitFor(() => inboxEmpty(s, 'write-1'), 5_000, 'inbox acked on write');
    await closeClient(c);
    const back = await client(s, 'write-1');
    await marker(back, 'write-1');
    expect(dms(back)).toEqual([]);
  });
});

describe('several instances', () => {
  it('reaches every connection of a user on two instances once, and an ack on either counts on both', async () => {
    const a = await sidecar();
    const b = await sidecar();
    const tabs = [await client(a, 'multi-1'), await client(a, 'multi-1'), await client(b, 'multi-1')];
    const seqs = await directs('multi-1', 0, 3);
    for (const t of tabs) await t.waitForMessage((m) => m.data?.i === 2);
    for (const t of tabs) await marker(t, 'multi-1');
    for (const t of tabs) expect(dms(t)).toEqual([0, 1, 2]);

    const acker = tabs[2];
    for (const seq of seqs) acker.send({ type: 'ack', data: { seq } });
    await settled(acker);
    // Written by instance b; instance a reads them from the same key.
    await waitFor(async () => {
      const state = await ackState(a, 'multi-1');
      return state !== null && seqs.every((seq) => isAcked(state, seq));
    }, 5_000, 'acks from instance b written');

    for (const t of tabs) await closeClient(t);
    await directs('multi-1', 3, 4);
    const back = await client(a, 'multi-1');
    await back.waitForMessage((m) => m.data?.i === 3);
    // The markers were never acked (a client that acks does it for itself): they come back too.
    expect(dms(back)).toEqual([3]);
  });
});

describe('concurrent acknowledgements', () => {
  it('lands acks from two instances at the same moment on one key: compare-and-set, retried on conflict', async () => {
    const a = await sidecar();
    const b = await sidecar();
    const seqs = await directs('cas-1', 0, 10);
    // Both instances read the user's key once (their connect's backlog), so the bucket is open on each.
    for (const s of [a, b]) await closeClient(await client(s, 'cas-1'));
    const before = a.sidecar.broker.inboxes.counters.conflicts + b.sidecar.broker.inboxes.counters.conflicts;
    // In one tick: both read revision r, both write on r, one of them loses and tries again.
    seqs.forEach((seq, i) => (i % 2 === 0 ? a : b).sidecar.broker.inboxes.acknowledge('cas-1', seq));
    await waitFor(async () => {
      const state = await ackState(a, 'cas-1');
      return state !== null && seqs.every((seq) => isAcked(state, seq));
    }, 5_000, 'every ack written');
    expect(a.sidecar.broker.inboxes.counters.conflicts + b.sidecar.broker.inboxes.counters.conflicts).toBeGreaterThan(before);
    expect(await ackState(a, 'cas-1')).toEqual({ floor: seqs[9], acked: [] });
    const back = await client(b, 'cas-1');
    await marker(back, 'cas-1');
    expect(dms(back)).toEqual([]);
  });
});

describe('backlog reads', () => {
  it('delivers a long backlog in order without the acked seqs, and creates no durable consumer', async () => {
    // 59 acks at once: more than the default inbound burst.
    const s = await sidecar({ inboxAckMode: 'explicit', requestsPerSecond: 1000, burstSize: 1000 });
    const seqs = await directs('long-1', 0, 80);
    const first = await client(s, 'long-1');
    await first.waitForMessage((m) => m.data?.i === 79);
    expect(dms(first)).toEqual([...Array(80).keys()]);
    // Acked out of order, and one early message left unacked: the floor stays below it.
    const acked = [...Array(80).keys()].filter((i) => i % 3 !== 0 || i > 60);
    for (const i of acked) first.send({ type: 'ack', data: { seq: seqs[i] } });
    await waitFor(async () => {
      const state = await ackState(s, 'long-1');
      return state !== null && acked.every((i) => isAcked(state, seqs[i]));
    }, 10_000, 'acks written');
    await closeClient(first);
    const back = await client(s, 'long-1');
    const expected = [...Array(80).keys()].filter((i) => !acked.includes(i));
    await back.waitForMessage((m) => m.data?.i === expected.at(-1));
    await marker(back, 'long-1');
    expect(dms(back)).toEqual(expected);
    expect(await durables()).toEqual([]);
  });

  it('forgets acked seqs the stream no longer holds: the floor moves over them and the set stays bounded', async () => {
    const s = await sidecar({ subjectPrefix: 'bd', streamName: 'BD', maxStoredMessages: 5, inboxAckMode: 'explicit' });
    const bd = (i: number) => pub.publish('bd.user.bd-1', 'dm', { i });
    const seqs: number[] = [];
    for (let i = 0; i < 5; i++) seqs.push(await bd(i));
    const c = await client(s, 'bd-1');
    await c.waitForMessage((m) => m.data?.i === 4);
    for (const seq of seqs.slice(1)) c.send({ type: 'ack', data: { seq } });
    await waitFor(async () => (await ackState(s, 'bd-1'))?.acked.length === 4, 5_000, 'acks written');
    // The first stays unacked: the floor sits below it, the others wait above.
    expect(await ackState(s, 'bd-1')).toEqual({ floor: seqs[0] - 1, acked: seqs.slice(1) });
    // Two more push the first two out of the stream (5 per user); acking one of them folds it all into the floor.
    seqs.push(await bd(5), await bd(6));
    await c.waitForMessage((m) => m.data?.i === 6);
    c.send({ type: 'ack', data: { seq: seqs[5] } });
    await waitFor(async () => (await ackState(s, 'bd-1'))?.floor === seqs[5], 5_000, 'floor moved');
    expect(await ackState(s, 'bd-1')).toEqual({ floor: seqs[5], acked: [] });
    await closeClient(c);
    const back = await client(s, 'bd-1');
    await back.waitForMessage((m) => m.data?.i === 6);
    await settled(back);
    expect(dms(back)).toEqual([6]);
  });
});

describe('stream and bucket loss', () => {
  it('does not apply the acks of an earlier stream incarnation to a new one', async () => {
    const s = await sidecar({ subjectPrefix: 'ep', streamName: 'EP', inboxAckMode: 'explicit' });
    const ep = (i: number) => pub.publish('ep.user.ep-1', 'dm', { i });
    const seqs = [await ep(0), await ep(1), await ep(2)];
    const c = await client(s, 'ep-1');
    await c.waitForMessage((m) => m.data?.i === 2);
    for (const seq of seqs) c.send({ type: 'ack', data: { seq } });
    await waitFor(async () => (await ackState(s, 'ep-1'))?.floor === seqs[2], 5_000, 'acks written');
    await closeClient(c);
    // An operator deletes the stream; the bucket stays. The new stream numbers from 1 again.
    const epoch = s.sidecar.broker.epoch;
    await jsm.streams.delete('EP');
    await waitFor(() => s.sidecar.broker.epoch !== epoch && s.sidecar.broker.streamReady, 10_000, 'stream recreated');
    const seq = await ep(3);
    expect(seq).toBeLessThanOrEqual(seqs[2]);
    const back = await client(s, 'ep-1');
    await back.waitForMessage((m) => m.data?.i === 3);
    expect(dms(back)).toEqual([3]);
  });

  it('creates the inbox bucket again when it is gone, and acknowledgements land in it', async () => {
    const s = await sidecar({ inboxAckMode: 'explicit' });
    const seqs = await directs('gone-1', 0, 2);
    const c = await client(s, 'gone-1');
    await c.waitForMessage((m) => m.data?.i === 1);
    c.send({ type: 'ack', data: { seq: seqs[0] } });
    await waitFor(async () => (await ackState(s, 'gone-1'))?.floor === seqs[0], 5_000, 'first ack written');
    await jsm.streams.delete(`KV_${BUCKET}`);
    c.send({ type: 'ack', data: { seq: seqs[1] } });
    // The first ack went with the old bucket: the new key starts below the first stored message.
    await waitFor(async () => (await ackState(s, 'gone-1').catch(() => null))?.acked[0] === seqs[1], 10_000, 'ack written to a new bucket');
    expect(await ackState(s, 'gone-1')).toEqual({ floor: seqs[0] - 1, acked: [seqs[1]] });
    expect(s.sidecar.broker.inboxes.counters.recreated).toBeGreaterThan(0);
    const { config } = await jsm.streams.info(`KV_${BUCKET}`);
    expect(config).toMatchObject({ max_age: 24 * 3_600_000_000_000, max_msgs_per_subject: 1 });
    await closeClient(c);
    // At least once: the message whose ack was lost comes once more, the other does not.
    const back = await client(s, 'gone-1');
    await back.waitForMessage((m) => m.data?.i === 0);
    await marker(back, 'gone-1');
    expect(dms(back)).toEqual([0]);
  });
});

describe('metrics', () => {
  it('counts offline messages and the users who have them from JetStream', async () => {
    const s = await startTestSidecar(nats.url, { subjectPrefix: 'ts', streamName: 'TS' });
    running.add(s);
    const stats = () => s.sidecar.broker.inboxes.stats();
    expect(await stats()).toEqual({ total_messages: 0, users_with_messages: 0 });
    const seqs = [await pub.publish('ts.user.stat-a', 'dm'), await pub.publish('ts.user.stat-a', 'dm')];
    for (let i = 0; i < 3; i++) await pub.publish('ts.user.stat-b', 'dm');
    expect(await stats()).toEqual({ total_messages: 5, users_with_messages: 2 });

    const c = await client(s, 'stat-a');
    await c.waitForMessages(2, (m) => m.type === 'dm');
    for (const seq of seqs) c.send({ type: 'ack', data: { seq } });
    await settled(c);
    await waitFor(async () => (await stats()).total_messages === 3, 5_000, 'acked messages leave the count');
    expect(await stats()).toEqual({ total_messages: 3, users_with_messages: 1 });
  });
});
