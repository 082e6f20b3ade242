/**
 * Delivery guarantees on the project path, against a real nats-server: resume with `since` (from
 * 0, from the middle, from beyond what the stream retains), a large catch-up, gaps on the live
 * path (filled from the stream, or reported), a NATS restart mid-stream, and deduplication.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { jetstream } from '@nats-io/jetstream';
import { connect, type Msg, type NatsConnection } from '@nats-io/transport-node';
import type { ConfigInput } from '../../src/config.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { event, publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { storedPublisher, type StoredPublisher } from '../helpers/streams.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

let nats: TestNats;
let nc: NatsConnection;
let pub: StoredPublisher;
let side: TestSidecar;
const extra: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
  pub = storedPublisher(nc);
  side = await startTestSidecar(nats.url);
});
afterEach(() => closeAllClients());
afterAll(async () => {
  for (const s of extra.splice(0).reverse()) await s.stop();
  await side?.stop();
  await nc?.close();
  await nats?.cleanup();
});

/** A sidecar on its own stream and prefix, so its limits do not change the shared stream's. */
async function sidecarWith(prefix: string, overrides: ConfigInput): Promise<TestSidecar> {
  const s = await startTestSidecar(nats.url, { subjectPrefix: prefix, streamName: prefix.toUpperCase(), ...overrides });
  extra.push(s);
  return s;
}

async function client(s: TestSidecar, sub: string): Promise<TestClient> {
  const c = await connectClient(`${s.wsUrl}?token=${await s.token(sub)}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  return c;
}

async function subscribe(c: TestClient, project_id: string, since?: number): Promise<any> {
  c.send({ type: 'subscription', data: { action: 'subscribe', project_id, ...(since === undefined ? {} : { since }) } });
  return c.waitForMessage((m) => m.type === 'subscription' && m.data.project_id === project_id, 10_000);
}

const ofType = (c: TestClient, type: string) => c.messages.filter((m) => m.type === type);
const indexes = (messages: any[]) => messages.map((m) => m.data.i);
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => from + k);

/** Publish events `n` with data.i = from..to-1 to a subject, each stored (acked); returns their seqs. */
async function publishRange(subject: string, from: number, to: number, type = 'n'): Promise<number[]> {
  const seqs: number[] = [];
  for (let i = from; i < to; i++) seqs.push(await pub.publish(subject, type, { i }));
  return seqs;
}

/** Make the sidecar's live path lose the events `drop` picks, as a dropped NATS message would. */
function dropLive(s: TestSidecar, drop: (topic: string, data: any) => boolean): () => void {
  const broker = s.sidecar.broker as any;
  const onLive = broker.onLive;
  broker.onLive = function (t: { topic: string }, msg: Msg) {
    if (!drop(t.topic, JSON.parse(msg.string()).data)) onLive.call(this, t, msg);
  };
  return () => {
    broker.onLive = onLive;
  };
}

describe('resume with since', () => {
  it('replays every stored event from since 0 in order, then continues live', async () => {
    const seqs = await publishRange('ws.project.res-0', 0, 5);
    const c = await client(side, 'u-res0');
    const ack = await subscribe(c, 'res-0', 0);
    expect(ack.data).toMatchObject({ action: 'subscribed', replayed: 5 });
    expect(ack.data.truncated).toBeUndefined();
    await pub.publish('ws.project.res-0', 'n', { i: 5 });
    await c.waitForMessage((m) => m.data?.i === 5);
    expect(indexes(ofType(c, 'n'))).toEqual(range(0, 6));
    expect(ofType(c, 'n').slice(0, 5).map((m) => m.seq)).toEqual(seqs);
  });

  it('replays only what follows a since in the middle, then live, with no duplicate', async () => {
    const seqs = await publishRange('ws.project.res-mid', 0, 6);
    const c = await client(side, 'u-resmid');
    const ack = await subscribe(c, 'res-mid', seqs[2]);
    expect(ack.data).toMatchObject({ action: 'subscribed', replayed: 3 });
    expect(ack.data.truncated).toBeUndefined();
    await pub.publish('ws.project.res-mid', 'n', { i: 6 });
    await c.waitForMessage((m) => m.data?.i === 6);
    expect(indexes(ofType(c, 'n'))).toEqual([3, 4, 5, 6]);
  });

  it('replays what is left and says truncated when since is older than the retained window', async () => {
    const small = await sidecarWith('tw', { maxStoredMessages: 10 });
    // u-win's user_joined is a project event too: have it stored first, so the window below holds
    // exactly the last 10 published events (later connections of u-win are tabs: no new join).
    const tab = await client(small, 'u-win');
    await subscribe(tab, 'win');
    await small.sidecar.presence.settled();
    const seqs = await publishRange('tw.project.win', 0, 30);

    const old = await client(small, 'u-win');
    const ack = await subscribe(old, 'win', seqs[4]);
    expect(ack.data).toMatchObject({ action: 'subscribed', truncated: true, replayed: 10 });
    await old.waitForMessage((m) => m.data?.i === 29);
    expect(indexes(ofType(old, 'n'))).toEqual(range(20, 30));

    const recent = await client(small, 'u-win');
    const fine = await subscribe(recent, 'win', seqs[24]);
    expect(fine.data.truncated).toBeUndefined();
    await recent.waitForMessage((m) => m.data?.i === 29);
    expect(indexes(ofType(recent, 'n'))).toEqual(range(25, 30));

    // From the start: the project is at its per-subject limit, so earlier events were dropped.
    const fromStart = await client(small, 'u-win');
    expect((await subscribe(fromStart, 'win', 0)).data).toMatchObject({ truncated: true, replayed: 10 });
  });

  it('does not say truncated when the event at since is gone but every event after it is still stored', async () => {
    const edge = await sidecarWith('te', { maxStoredMessages: 10 });
    const tab = await client(edge, 'u-edge');
    await subscribe(tab, 'edge');
    await edge.sidecar.presence.settled();
    // The client saw the last event before these ten; the window now holds exactly the ten, so
    // the one it saw was pushed out, but nothing it has not seen was.
    const [before] = await publishRange('te.project.edge', -1, 0);
    await publishRange('te.project.edge', 0, 10);
    const c = await client(edge, 'u-edge');
    const ack = await subscribe(c, 'edge', before);
    expect(ack.data).toMatchObject({ action: 'subscribed', replayed: 10 });
    expect(ack.data.truncated).toBeUndefined();
    await c.waitForMessage((m) => m.data?.i === 9);
    expect(indexes(ofType(c, 'n'))).toEqual(range(0, 10));
  });

  it('never skips silently: an event pushed out of a full window during the replay is reported as truncated', async () => {
    const full = await sidecarWith('tf', { maxStoredMessages: 10 });
    await publishRange('tf.project.full', 0, 10); // the window is full; nothing lost yet
    const c = await client(full, 'u-full'); // its own user_joined will push the oldest event out
    const ack = await subscribe(c, 'full', 0);
    await c.waitForMessage((m) => m.data?.i === 9);
    const got = indexes(ofType(c, 'n'));
    expect(got).toEqual(range(10 - got.length, 10));
    if (got.length < 10) expect(ack.data.truncated).toBe(true);
  });

  it('says truncated and replays the whole epoch when since is past the end of the stream (a position from an earlier stream)', async () => {
    const [seq] = await publishRange('ws.project.res-future', 0, 1);
    const c = await client(side, 'u-future');
    const ack = await subscribe(c, 'res-future', seq + 1_000_000);
    expect(ack.data).toMatchObject({ truncated: true, replayed: 1, epoch: side.sidecar.broker.epoch });
    const event = await c.waitForMessage((m) => m.type === 'n');
    expect(event).toMatchObject({ seq, data: { i: 0 } });
  });

  it('says truncated and replays the whole epoch when the resume position names another epoch', async () => {
    const seqs = await publishRange('ws.project.res-epoch', 0, 3);
    const c = await client(side, 'u-epoch');
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'res-epoch', since: seqs[1], epoch: 'an-old-epoch' } });
    const ack = await c.waitForMessage((m) => m.type === 'subscription' && m.data.project_id === 'res-epoch');
    expect(ack.data).toMatchObject({ action: 'subscribed', truncated: true, replayed: 3, epoch: side.sidecar.broker.epoch });
    await c.waitForMessage((m) => m.type === 'n' && m.data.i === 2);
    expect(indexes(ofType(c, 'n'))).toEqual([0, 1, 2]);
  });

  it('resumes after since with no truncation when the epoch is the current one', async () => {
    const seqs = await publishRange('ws.project.res-same', 0, 3);
    const c = await client(side, 'u-same');
    const epoch = side.sidecar.broker.epoch;
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'res-same', since: seqs[0], epoch } });
    const ack = await c.waitForMessage((m) => m.type === 'subscription' && m.data.project_id === 'res-same');
    expect(ack.data).toEqual({ action: 'subscribed', project_id: 'res-same', epoch, replayed: 2 });
    await c.waitForMessage((m) => m.type === 'n' && m.data.i === 2);
    expect(indexes(ofType(c, 'n'))).toEqual([1, 2]);
  });

  it('delivers exactly the 5,000 events published while a client was away, in order, then live', async () => {
    const big = await sidecarWith('tb', { maxStoredMessages: 10_000 });
    const before = await client(big, 'u-away');
    await subscribe(before, 'away');
    await pub.publish('tb.project.away', 'start');
    const last = (await before.waitForMessage((m) => m.type === 'start')).seq;
    before.close();
    await before.waitForClose();

    for (let i = 0; i < 5_000; i++) nc.publish('tb.project.away', event('bulk', { i }));
    await pub.publish('tb.project.away', 'bulk', { i: 5_000 }); // stored after all of them: the batch is in

    const back = await client(big, 'u-away');
    const started = performance.now();
    const ack = await subscribe(back, 'away', last);
    await back.waitForMessage((m) => m.data?.i === 5_000, 20_000);
    const ms = performance.now() - started;
    expect(ack.data).toMatchObject({ replayed: 5_001 });
    expect(ack.data.truncated).toBeUndefined();
    const got = ofType(back, 'bulk');
    expect(indexes(got)).toEqual(range(0, 5_001));
    expect(got.every((m, k) => k === 0 || m.seq > got[k - 1].seq)).toBe(true);
    await pub.publish('tb.project.away', 'after');
    await back.waitForMessage((m) => m.type === 'after');
    console.info(`resume of 5,001 stored events: ${ms.toFixed(0)} ms`);
  }, 60_000);
});

describe('gaps on the live path', () => {
  it('fills a dropped live event from the stream before delivering later ones', async () => {
    const restore = dropLive(side, (topic, data) => topic === 'project.gap-1' && data.i === 3);
    try {
      const c = await client(side, 'u-gap');
      await subscribe(c, 'gap-1');
      const gaps = side.sidecar.broker.stats.gaps;
      for (let i = 0; i < 8; i++) nc.publish('ws.project.gap-1', event('n', { i }));
      await c.waitForMessage((m) => m.data?.i === 7);
      expect(indexes(ofType(c, 'n'))).toEqual(range(0, 8));
      expect(side.sidecar.broker.stats.gaps).toBe(gaps + 1);
      expect(side.sidecar.broker.stats.eventsRecovered).toBeGreaterThan(0);
    } finally {
      restore();
    }
  });

  it('sends history_truncated before what follows when the stream no longer has the missed events', async () => {
    const small = await sidecarWith('tl', { maxStoredMessages: 3 });
    const restore = dropLive(small, (topic, data) => topic === 'project.lost' && data.i >= 2 && data.i <= 6);
    try {
      const c = await client(small, 'u-lost');
      await subscribe(c, 'lost');
      await small.sidecar.presence.settled(); // u-lost's user_joined is stored before the events
      const seqs = await publishRange('tl.project.lost', 0, 7);
      await c.waitForMessage((m) => m.data?.i === 1);
      await pub.publish('tl.project.lost', 'n', { i: 7 }); // live: reveals the gap; the stream keeps 5, 6, 7
      await c.waitForMessage((m) => m.data?.i === 7);
      const seen = c.messages.filter((m) => m.type === 'n' || m.type === 'history_truncated');
      expect(seen.map((m) => (m.type === 'n' ? m.data.i : 'cut'))).toEqual([0, 1, 'cut', 5, 6, 7]);
      expect(seen[2].data).toEqual({ scope: 'project', project_id: 'lost', after_seq: seqs[1], epoch: small.sidecar.broker.epoch });
      expect(small.sidecar.broker.stats.historyLost).toBe(1);
    } finally {
      restore();
    }
  });

  it('catches up on reconnect with what was stored while the sidecar was away, without waiting for a next event', async () => {
    const c = await client(side, 'u-away-live');
    await subscribe(c, 'rc');
    await publishRange('ws.project.rc', 0, 3);
    await c.waitForMessage((m) => m.data?.i === 2);
    const restore = dropLive(side, (topic) => topic === 'project.rc'); // as if the sidecar were disconnected
    await publishRange('ws.project.rc', 3, 9);
    restore();
    const broker = side.sidecar.broker;
    const reconnects = broker.stats.reconnects;
    await broker.nc.reconnect();
    await c.waitForMessage((m) => m.data?.i === 8, 10_000);
    expect(indexes(ofType(c, 'n'))).toEqual(range(0, 9));
    expect(broker.stats.reconnects).toBe(reconnects + 1);
  });

  it('catches up after a NATS restart: a live client ends with exactly the published sequence', async () => {
    const own = await startTestNats();
    const s = await startTestSidecar(own.url);
    const backend = await connect({ servers: own.url, reconnectTimeWait: 100, maxReconnectAttempts: -1 });
    try {
      const c = await client(s, 'u-restart');
      await subscribe(c, 'nr');
      const js = jetstream(backend);
      const N = 300;
      // A backend that publishes with JetStream acks and retries with the same Nats-Msg-Id.
      const publishing = (async () => {
        for (let i = 0; i < N; i++) {
          for (;;) {
            try {
              await js.publish('ws.project.nr', event('n', { i }), { msgID: `nr-${i}`, timeout: 1_000 });
              break;
            } catch {
              await new Promise((r) => setTimeout(r, 100));
            }
          }
        }
      })();
      await c.waitForMessage((m) => m.data?.i === 100, 10_000);
      await own.restart();
      await publishing;
      await c.waitForMessage((m) => m.data?.i === N - 1, 20_000);
      const got = ofType(c, 'n');
      expect(indexes(got)).toEqual(range(0, N));

      // And a client that went away in the middle resumes to exactly the rest.
      const later = await client(s, 'u-restart');
      await subscribe(later, 'nr', got[149].seq);
      await later.waitForMessage((m) => m.data?.i === N - 1, 10_000);
      expect(indexes(ofType(later, 'n'))).toEqual(range(150, N));
    } finally {
      await backend.close();
      await s.stop();
      await own.cleanup();
    }
  }, 60_000);
});

describe('deduplication', () => {
  it('stores and delivers a publisher retry with the same Nats-Msg-Id once', async () => {
    const c = await client(side, 'u-dedupe1');
    await subscribe(c, 'dd-1');
    const first = await pub.publish('ws.project.dd-1', 'order_placed', { n: 1 }, { msgId: 'order-1' });
    const again = await pub.publish('ws.project.dd-1', 'order_placed', { n: 1 }, { msgId: 'order-1' });
    expect(again).toBe(first);
    await pub.publish('ws.project.dd-1', 'marker');
    await c.waitForMessage((m) => m.type === 'marker');
    const got = ofType(c, 'order_placed');
    expect(got).toHaveLength(1);
    expect(got[0].message_id).toBe('order-1');
  });

  it('delivers an envelope message_id once per connection, live and on replay', async () => {
    const c = await client(side, 'u-dedupe2');
    await subscribe(c, 'dd-2');
    const body = JSON.stringify({ type: 'note', data: { text: 'hi' }, message_id: 'env-1' });
    await pub.publish('ws.project.dd-2', 'note', {}, { body });
    await pub.publish('ws.project.dd-2', 'note', {}, { body }); // a retry without Nats-Msg-Id: stored twice
    await pub.publish('ws.project.dd-2', 'marker');
    await c.waitForMessage((m) => m.type === 'marker');
    expect(ofType(c, 'note')).toHaveLength(1);

    const replay = await client(side, 'u-dedupe2');
    expect((await subscribe(replay, 'dd-2', 0)).data.replayed).toBe(3);
    await replay.waitForMessage((m) => m.type === 'marker');
    expect(ofType(replay, 'note')).toHaveLength(1);
  });

  it('delivers one message_id sent to a project and to the user once', async () => {
    const c = await client(side, 'u-both');
    await subscribe(c, 'dd-3');
    const body = JSON.stringify({ type: 'mention', data: {}, message_id: 'both-1' });
    await pub.publish('ws.project.dd-3', 'mention', {}, { body });
    await pub.publish('ws.user.u-both', 'mention', {}, { body });
    await pub.publish('ws.user.u-both', 'marker');
    await c.waitForMessage((m) => m.type === 'marker');
    expect(ofType(c, 'mention')).toHaveLength(1);
  });
});
