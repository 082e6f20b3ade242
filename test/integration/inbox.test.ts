/**
 * The offline inbox against a real nats-server: direct messages published while a user is away
 * are delivered in order on the next connection; acks (from any connection, on any instance)
 * stop redelivery across sidecar restarts; ack-on-write for clients that never ack; two
 * instances serving one user; offline counts read from JetStream.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import type { ConfigInput } from '../../src/config.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { consumerInfo, storedPublisher, waitFor, type StoredPublisher } from '../helpers/streams.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

const STREAM = 'WS_EVENTS';
let nats: TestNats;
let nc: NatsConnection;
let pub: StoredPublisher;
const running = new Set<TestSidecar>();

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
  pub = storedPublisher(nc);
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

async function inboxEmpty(user: string): Promise<boolean> {
  const info = await consumerInfo(nc, STREAM, `inbox-${user}`);
  return info !== null && info.num_pending === 0 && info.num_ack_pending === 0;
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

  it('keeps one durable consumer per user with direct messages: R1, filtered on the user, explicit acks, inactive after the TTL', async () => {
    const s = await sidecar();
    await client(s, 'cfg-0');
    // A user with no direct message stored gets no consumer: connecting costs one direct get.
    expect(await consumerInfo(nc, STREAM, 'inbox-cfg-0')).toBeFalsy();
    await directs('cfg-1', 0, 1);
    await client(s, 'cfg-1');
    const info = await consumerInfo(nc, STREAM, 'inbox-cfg-1');
    expect(info?.config).toMatchObject({
      durable_name: 'inbox-cfg-1',
      filter_subject: 'ws.user.cfg-1',
      ack_policy: 'explicit',
      ack_wait: 30_000_000_000,
      inactive_threshold: 24 * 3_600_000_000_000,
      max_ack_pending: 1000,
    });
    expect(info?.config.num_replicas ?? 0).toBeLessThanOrEqual(1);
    // A second instance finds it as it is: creating it is idempotent.
    const again = await sidecar();
    await client(again, 'cfg-1');
    expect((await consumerInfo(nc, STREAM, 'inbox-cfg-1'))?.created).toBe(info?.created);
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
    await waitFor(() => inboxEmpty('auto-1'), 5_000, 'inbox acked on write');
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
    const info = await consumerInfo(nc, STREAM, 'inbox-aware-1');
    expect(info?.ack_floor.stream_seq).toBe(seqs[0]);
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
    await waitFor(() => inboxEmpty('write-1'), 5_000, 'inbox acked on write');
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
    // Both instances pulled from the user's consumer; each acks the handles it holds.
    await waitFor(async () => {
      const info = await consumerInfo(nc, STREAM, 'inbox-multi-1');
      return info !== null && info.ack_floor.stream_seq >= seqs[2];
    }, 5_000, 'acks from instance b applied by both');

    for (const t of tabs) await closeClient(t);
    await directs('multi-1', 3, 4);
    const back = await client(a, 'multi-1');
    await back.waitForMessage((m) => m.data?.i === 3);
    // The markers were never acked (a client that acks does it for itself): they come back too.
    expect(dms(back)).toEqual([3]);
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
