/**
 * Reading a subject's history (resume with `since`, live-gap repair) while a node of a 3-node
 * cluster is down, or the stream has just lost its leader. The reader's ordered consumer is R1
 * and nats-server may place it on the dead peer, where creating it times out; the read then falls
 * back to direct gets, which only live replicas answer. Found by the reliability suite: repairs
 * stalled for 30 s and more, holding a topic's live events back, and resumes failed with
 * processing_error; later, repairs started during a leader election waited out a 10 s timeout.
 */
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, errors as natsErrors, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';
import { StreamHistory, type StoredMessage } from '../../src/nats/history.js';
import { startTestCluster, startTestNats, type TestCluster, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { storedPublisher } from '../helpers/streams.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';

let cluster: TestCluster | undefined;
let cluster2: TestCluster | undefined;
let single: TestNats | undefined;
let side: TestSidecar | undefined;
let side2: TestSidecar | undefined;
const connections: NatsConnection[] = [];

afterAll(async () => {
  await closeAllClients();
  await Promise.all(connections.map((nc) => nc.close().catch(() => {})));
  await Promise.allSettled([side?.stop(), side2?.stop()]);
  await Promise.allSettled([cluster?.cleanup(), cluster2?.cleanup(), single?.cleanup()]);
}, 60_000);

describe('reading history with a node down', () => {
  it('falls back to direct gets when no reader consumer can be created, with the same events', async () => {
    single = await startTestNats();
    const nc = await connect({ servers: single.url });
    connections.push(nc);
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'H', subjects: ['h.>'], allow_direct: true });
    const pub = storedPublisher(nc);
    const seqs: number[] = [];
    for (let i = 0; i < 12; i++) {
      const seq = await pub.publish(i % 3 === 0 ? 'h.other' : 'h.mine', 'e', { i });
      if (i % 3 !== 0) seqs.push(seq);
    }
    // A reader client whose consumer creation always times out, as on a dead peer.
    const js = jetstream(nc);
    const stuck = Object.create(js, {
      consumers: { value: { get: () => Promise.reject(new natsErrors.TimeoutError()) } },
    }) as typeof js;
    const read = async (history: StreamHistory, since: number) => {
      const got: StoredMessage[] = [];
      const result = await history.read('h.mine', since, (m) => got.push(m));
      return { result, seqs: got.map((m) => m.seq), data: got.map((m) => JSON.parse(new TextDecoder().decode(m.data)).data.i) };
    };
    const normal = await read(new StreamHistory(js, jsm, 'H', 1000), seqs[1]);
    const fallback = await read(new StreamHistory(js, jsm, 'H', 1000, stuck), seqs[1]);
    expect(normal.seqs).toEqual(seqs.slice(2));
    expect(fallback).toEqual(normal);
    expect(fallback.data).toEqual([4, 5, 7, 8, 10, 11]);
  });

  it('resumes every client while a node of the cluster is dead', async () => {
    cluster = await startTestCluster(3);
    const c = cluster;
    side = await startTestSidecar(c.urls.join(','), { streamReplicas: 3 });
    const nc = await connect({ servers: c.urls });
    connections.push(nc);
    const pub = storedPublisher(nc);
    for (let i = 0; i < 20; i++) await pub.publish('ws.project.hf', 'task_created', { i });

    const jsm = await jetstreamManager(nc);
    const leader = (await jsm.streams.info('WS_EVENTS')).cluster?.leader;
    // Neither the stream leader nor the sidecar's server: the stream stays available, only placement can fail.
    const keep = new Set([leader, side.sidecar.broker.nc.info?.server_name]);
    const victim = c.servers.findIndex((_, i) => !keep.has(`n${i + 1}`));
    await c.servers[victim].kill();

    const token = await side.token('resumer');
    // Each resume creates a reader; before the fallback about one in three waited 10 s and failed.
    for (let k = 0; k < 6; k++) {
      const started = Date.now();
      const client = await connectClient(`${side.wsUrl}?token=${token}`);
      await client.waitForMessage((m) => m.type === 'auth_success');
      client.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'hf', since: 0 } });
      const answer = await client.waitForMessage((m) => m.type === 'subscription' || m.type === 'error', 15_000);
      expect(answer.type, JSON.stringify(answer.data)).toBe('subscription');
      expect(answer.data.replayed).toBe(20);
      const events = await client.waitForMessages(20, (m) => m.type === 'task_created', 10_000);
      expect(events.map((m) => m.data.i)).toEqual(Array.from({ length: 20 }, (_, i) => i));
      expect(Date.now() - started).toBeLessThan(9_000);
      client.close();
    }
  }, 120_000);

  it('ends a gap repair soon after the stream elects a new leader, not after a 10 s request timeout', async () => {
    cluster2 = await startTestCluster(3);
    const c = cluster2;
    side2 = await startTestSidecar(c.urls.join(','), { streamReplicas: 3 });
    const serverOf = side2.sidecar.broker.nc.info?.server_name;
    const nc = await connect({ servers: c.urls, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    connections.push(nc);
    const jsm = await jetstreamManager(nc, { timeout: 2_000, checkAPI: false });
    const pub = storedPublisher(nc);
    await pub.publish('ws.project.gr', 'task_created', { i: 0 });

    // Make the sidecar's server the stream leader: killing it leaves the stream leaderless while
    // the sidecar reconnects, so the repair it starts then gets no answer.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const leader = await jsm.streams
        .info('WS_EVENTS')
        .then((i) => i.cluster?.leader)
        .catch(() => undefined);
      if (leader === serverOf) break;
      if (Date.now() > deadline) throw new Error(`stream leader never moved to ${serverOf}`);
      if (leader) await nc.request('$JS.API.STREAM.LEADER.STEPDOWN.WS_EVENTS', '', { timeout: 2_000 }).catch(() => {});
      await new Promise((r) => setTimeout(r, 300));
    }

    const token = await side2.token('repairer');
    const client = await connectClient(`${side2.wsUrl}?token=${token}`);
    await client.waitForMessage((m) => m.type === 'auth_success');
    client.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'gr' } });
    await client.waitForMessage((m) => m.type === 'subscription');

    const victim = c.servers.find((_, i) => `n${i + 1}` === serverOf)!;
    await victim.kill();
    // The first publish JetStream acknowledges marks the new leader; the sidecar must deliver it soon.
    let acked = 0;
    for (let i = 1; ; i++) {
      try {
        await pub.publish('ws.project.gr', 'task_created', { i }, { msgId: 'gr-after-kill' });
        acked = Date.now();
        break;
      } catch {
        if (i > 200) throw new Error('the stream never took a publish after its leader died');
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await client.waitForMessage((m) => m.type === 'task_created' && m.data.i > 0, 20_000);
    const lateness = Date.now() - acked;
    expect(side2.sidecar.broker.stats.reconnects).toBeGreaterThanOrEqual(1);
    // At first the repair's first request waited out the 10 s JetStream API timeout, then a backoff
    // (measured 5.7 and 8 s late); with 2 s attempts 0.8 to 5.04 s (quiet and under CPU load); now
    // a held live event ends the waiting attempt: 7 to 191 ms quiet, 2 s once under CI load (when the
    // event comes before the sidecar has its subscription back, a 2 s attempt still has to end).
    expect(lateness).toBeLessThan(5_000);
  }, 120_000);
});
