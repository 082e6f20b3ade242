/**
 * Fleet-wide presence with two (and more) sidecars on one nats-server: exactly one user_joined and
 * one user_left per user per project whatever the tabs, devices and instances; a crashed instance's
 * users leave after the presence TTL; presence queries from clients and for the admin API.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import WebSocket from 'ws';
import { BATCH_PROTOCOL } from '../../src/protocol-codes.js';
import { projectPresence } from '../../src/http/presence-routes.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { event, publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { waitFor } from '../helpers/wait.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

// Every sidecar on one NATS shares the presence buckets, so they share one TTL too.
const PRESENCE = { presenceTTL: '3s' };

let nats: TestNats;
let a: TestSidecar;
let b: TestSidecar;
let nc: NatsConnection;

beforeAll(async () => {
  nats = await startTestNats();
  [a, b] = await Promise.all([startTestSidecar(nats.url, PRESENCE), startTestSidecar(nats.url, PRESENCE)]);
  nc = await publisher(nats.url);
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await nc?.close();
  await Promise.all([a?.stop(), b?.stop()]);
  await nats?.cleanup();
});

async function client(side: TestSidecar, sub: string, projects: string[] = ['*']): Promise<TestClient> {
  const c = await connectClient(`${side.wsUrl}?token=${await side.token(sub, { projects })}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  return c;
}

async function subscribe(c: TestClient, project_id: string): Promise<void> {
  c.send({ type: 'subscription', data: { action: 'subscribe', project_id } });
  const answer = await c.waitForMessage((m) => m.type === 'subscription' || m.type === 'error');
  expect(answer.data).toMatchObject({ action: 'subscribed', project_id });
}

/** A user's connections on an instance, as that instance sees them (a close takes a moment to arrive). */
const localConnections = (side: TestSidecar, user: string) => side.sidecar.hub.connectionsOf(user).size;

/**
 * Everything presence had to publish is stored: then a marker published now comes after it, and
 * once the observer has the marker it has every presence event there will be.
 */
async function quiesce(observer: TestClient, project: string, sides: TestSidecar[] = [a, b]): Promise<void> {
  await Promise.all(sides.map((s) => s.sidecar.presence.settled()));
  const marker = `marker-${Math.random().toString(36).slice(2)}`;
  await nc.request(`ws.project.${project}`, event(marker));
  await observer.waitForMessage((m) => m.type === marker);
}

const presenceEvents = (c: TestClient, user: string) =>
  c.messages.filter((m) => (m.type === 'user_joined' || m.type === 'user_left') && m.data.user_id === user).map((m) => m.type);

describe('user_joined and user_left across instances', () => {
  it('announces a user once per project however many tabs and instances it joins and leaves from', async () => {
    const project = 'pres-tabs';
    const observer = await client(a, 'observer');
    await subscribe(observer, project);
    const other = await client(b, 'observer-b');
    await subscribe(other, project);
    // Three tabs on two instances subscribe at once: the instances race on the same presence key.
    const tabs = await Promise.all([client(a, 'alice'), client(b, 'alice'), client(a, 'alice'), client(b, 'alice')]);
    await Promise.all(tabs.map((t) => subscribe(t, project)));

    const joined = await observer.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === 'alice');
    expect(joined).toMatchObject({ project_id: project, data: { user_id: 'alice', project_id: project } });
    expect(joined.seq).toBeGreaterThan(0);
    // Every subscriber hears it, on either instance, except alice's own tabs.
    await other.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === 'alice');
    await quiesce(other, project);
    expect(tabs.some((t) => t.messages.some((m) => m.type === 'user_joined'))).toBe(false);

    // Three tabs go (one unsubscribes, two disconnect); one tab on b stays: alice is still there.
    tabs[0].send({ type: 'subscription', data: { action: 'unsubscribe', project_id: project } });
    await tabs[0].waitForMessage((m) => m.data?.action === 'unsubscribed');
    tabs[1].close();
    tabs[2].close();
    await waitFor(() => localConnections(a, 'alice') === 1 && localConnections(b, 'alice') === 1);
    await quiesce(observer, project);
    expect(presenceEvents(observer, 'alice')).toEqual(['user_joined']);

    tabs[3].close();
    const left = await observer.waitForMessage((m) => m.type === 'user_left' && m.data.user_id === 'alice');
    expect(left).toMatchObject({ project_id: project, data: { user_id: 'alice', project_id: project } });
    await quiesce(observer, project);
    expect(presenceEvents(observer, 'alice')).toEqual(['user_joined', 'user_left']);
  });

  it('announces each user of a project separately, and a user in two projects in each', async () => {
    const observer = await client(b, 'observer2');
    await subscribe(observer, 'pres-multi-1');
    await subscribe(observer, 'pres-multi-2');
    const bob = await client(a, 'bob');
    const carol = await client(b, 'carol');
    await subscribe(bob, 'pres-multi-1');
    await subscribe(bob, 'pres-multi-2');
    await subscribe(carol, 'pres-multi-1');
    await quiesce(observer, 'pres-multi-1');
    const joinedIn = (project: string) =>
      observer.messages.filter((m) => m.type === 'user_joined' && m.project_id === project).map((m) => m.data.user_id).sort();
    // The observer's own joins are stored too, but a user never receives its own.
    expect(joinedIn('pres-multi-1')).toEqual(['bob', 'carol']);
    expect(joinedIn('pres-multi-2')).toEqual(['bob']);
  });

  it('starts its compare-and-set from the watched copy, and a stale copy costs a retry, never a wrong key', async () => {
    const project = 'pres-stale';
    const kv = await new Kvm(nc).open(a.sidecar.config.presenceBucket);
    const members = async () => {
      const e = await kv.get(`${project}.sam`);
      return e?.operation === 'PUT' ? (e.json<{ members: string[] }>().members ?? []) : [];
    };
    // The copy is poked directly: a watcher that lags behind another instance's write looks like this.
    const copy = (a.sidecar.presence as unknown as { copy: { mirror: Map<string, Map<string, { members: string[]; revision: number }>> } }).copy.mirror;
    const observer = await client(b, 'observer-stale');
    await subscribe(observer, project);
    let sam = await client(a, 'sam');
    await subscribe(sam, project);
    await observer.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === 'sam');
    expect(await members()).toEqual([a.sidecar.presence.member]);

    // A wrong revision: the delete fails its CAS once, then reads the key and goes through.
    copy.get(project)!.set('sam', { members: [a.sidecar.presence.member], revision: 1 });
    sam.close();
    await observer.waitForMessage((m) => m.type === 'user_left' && m.data.user_id === 'sam');
    await a.sidecar.presence.settled();
    expect(await members()).toEqual([]);

    // A copy that says the member is already there (it is not): the no-op is checked with a get.
    if (!copy.has(project)) copy.set(project, new Map());
    copy.get(project)!.set('sam', { members: [a.sidecar.presence.member], revision: 1_000_000 });
    sam = await client(a, 'sam');
    await subscribe(sam, project);
    await a.sidecar.presence.settled();
    expect(await members()).toEqual([a.sidecar.presence.member]);
    await quiesce(observer, project);
    expect(presenceEvents(observer, 'sam')).toEqual(['user_joined', 'user_left', 'user_joined']);
  });

  it('announces user_left for the users of an instance that stops gracefully', async () => {
    const project = 'pres-stop';
    const c = await startTestSidecar(nats.url, PRESENCE);
    try {
      const observer = await client(a, 'observer3');
      await subscribe(observer, project);
      await subscribe(await client(c, 'dave'), project);
      await observer.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === 'dave');
      await c.stop();
      await observer.waitForMessage((m) => m.type === 'user_left' && m.data.user_id === 'dave');
    } finally {
      await c.stop();
    }
  });

  it('announces user_left once, after the TTL, for the users of an instance that died', async () => {
    const project = 'pres-crash';
    const doomed = await startTestSidecar(nats.url, PRESENCE);
    try {
      const observer = await client(a, 'observer4');
      await subscribe(observer, project);
      await subscribe(await client(doomed, 'erin'), project); // only on the doomed instance
      await subscribe(await client(doomed, 'frank'), project); // on both: frank stays
      await subscribe(await client(b, 'frank'), project);
      for (const user of ['erin', 'frank']) {
        await observer.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === user);
      }
      await doomed.sidecar.presence.settled();

      // A crash as NATS sees it: the connection drops and nothing is cleaned up.
      const diedAt = Date.now();
      await doomed.sidecar.broker.nc.close();
      await observer.waitForMessage((m) => m.type === 'user_left' && m.data.user_id === 'erin', 20_000);
      expect(Date.now() - diedAt).toBeGreaterThanOrEqual(2_000); // not before its heartbeat expired

      await quiesce(observer, project);
      expect(presenceEvents(observer, 'erin')).toEqual(['user_joined', 'user_left']);
      expect(presenceEvents(observer, 'frank')).toEqual(['user_joined']);
      await waitFor(async () => (await a.sidecar.presence.users(project)).join() === 'frank,observer4');
    } finally {
      await doomed.stop();
    }
  });
});

describe('a storm of joins', () => {
  it('writes the joins of one turn together, one compare-and-set per user, and every member sees every join in a few frames', async () => {
    const project = 'pres-storm';
    const users = Array.from({ length: 200 }, (_, i) => `storm-${i}`);
    // A member on the other instance, reading batched frames: each frame holds what one write carried.
    const ws = new WebSocket(`${b.wsUrl}?token=${await b.token('storm-watch')}`, [BATCH_PROTOCOL]);
    const envelopes: any[] = [];
    let framesWithJoins = 0;
    ws.on('message', (data) => {
      const batch = data.toString().split('\n').map((line) => JSON.parse(line));
      envelopes.push(...batch);
      if (batch.some((m) => m.type === 'user_joined')) framesWithJoins += 1;
    });
    await waitFor(() => envelopes.some((m) => m.type === 'auth_success'));
    ws.send(JSON.stringify({ type: 'subscription', data: { action: 'subscribe', project_id: project } }));
    await waitFor(() => envelopes.some((m) => m.type === 'subscription' && m.data.action === 'subscribed'));
    await Promise.all([a.sidecar.presence.settled(), b.sidecar.presence.settled()]);

    const jsm = await jetstreamManager(nc);
    const bucketStream = `KV_${a.sidecar.config.presenceBucket}`;
    const revision0 = (await jsm.streams.info(bucketStream)).state.last_seq;
    const { presence, broker } = a.sidecar;
    const ticks0 = presence.stats.ticks;
    const writes0 = presence.stats.writes;
    // 200 users join in one turn of the event loop (as many sockets' subscribes read at once would).
    for (const user of users) presence.enter(project, user);
    await new Promise((r) => setImmediate(r)); // the turn after: the updates started, their writes queued
    const batches0 = broker.publisher.stats.batches;
    const sent0 = broker.publisher.stats.sent;
    await new Promise((r) => setImmediate(r)); // one more turn: the queued writes went out
    expect(presence.stats.ticks - ticks0).toBe(1);
    expect(broker.publisher.stats.batches - batches0).toBe(1);
    expect(broker.publisher.stats.sent - sent0).toBeGreaterThanOrEqual(users.length);

    await waitFor(() => envelopes.filter((m) => m.type === 'user_joined').length >= users.length, 10_000);
    await presence.settled();
    // One write per user's key, none repeated: nobody else wrote those keys.
    expect(presence.stats.writes - writes0).toBe(users.length);
    expect((await jsm.streams.info(bucketStream)).state.last_seq - revision0).toBe(users.length);
    const joins = envelopes.filter((m) => m.type === 'user_joined');
    expect(joins.map((m) => m.data.user_id).sort()).toEqual([...users].sort());
    expect(new Set(joins.map((m) => m.seq)).size).toBe(users.length);
    expect(await b.sidecar.presence.users(project)).toEqual([...users, 'storm-watch'].sort());

    // Joins that trickle in, a few ms apart (sockets read one at a time): written as they came, each
    // would be a write to every member; the presence window gathers them into a few.
    const later = Array.from({ length: 40 }, (_, i) => `storm-late-${i}`);
    framesWithJoins = 0;
    for (const user of later) {
      presence.enter(project, user);
      await new Promise((r) => setTimeout(r, 3));
    }
    await waitFor(() => envelopes.filter((m) => m.type === 'user_joined').length >= users.length + later.length, 10_000);
    expect(framesWithJoins).toBeLessThanOrEqual(later.length / 3);

    for (const user of [...users, ...later]) presence.exit(project, user);
    await presence.settled();
    ws.close();
  });
});

describe('transitions made on different instances', () => {
  it("stores a user_left made elsewhere before the join that follows it, so no member is told a present user left", async () => {
    const project = 'pres-order';
    const observer = await client(a, 'observer6');
    await subscribe(observer, project);
    const first = await client(b, 'rio');
    await subscribe(first, project);
    await observer.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === 'rio');
    await b.sidecar.presence.settled();

    // Another instance's sweep deleted the key and has not stored its user_left yet (slow, or it
    // died right after the delete): the key is gone, no event says so.
    const kv = await new Kvm(nc).open(b.sidecar.config.presenceBucket);
    await kv.delete(`${project}.rio`);
    const deletedAt = (await kv.get(`${project}.rio`))!.revision;
    await waitFor(async () => !(await b.sidecar.presence.users(project)).includes('rio'), 10_000, "b's copy seeing the delete");

    // rio comes back through b: the join must not be stored ahead of the leave it follows.
    first.close();
    await subscribe(await client(b, 'rio'), project);
    await b.sidecar.presence.settled();
    await quiesce(observer, project);
    const events = observer.messages.filter((m) => (m.type === 'user_joined' || m.type === 'user_left') && m.data.user_id === 'rio');
    expect(events.map((m) => m.type)).toEqual(['user_joined', 'user_left', 'user_joined']);
    expect(events[1].message_id).toBe(`user_left-${deletedAt}`);
    expect(events[1].seq).toBeLessThan(events[2].seq);
  });
});

describe('an instance taken for dead while alive', () => {
  it('registers again and re-adds its users, so presence converges', async () => {
    const project = 'pres-stall';
    const observer = await client(a, 'observer5');
    await subscribe(observer, project);
    await subscribe(await client(b, 'lena'), project);
    await observer.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === 'lena');
    await b.sidecar.presence.settled();

    // What a long stall or NATS partition looks like to the fleet: b's heartbeat is gone.
    const sweeps = () => a.sidecar.presence.stats.sweeps + b.sidecar.presence.stats.sweeps;
    const sweepsBefore = sweeps();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.purge('KV_WS_PRESENCE_INSTANCES', { filter: `$KV.WS_PRESENCE_INSTANCES.${b.sidecar.presence.member}` });
    await waitFor(() => b.sidecar.presence.stats.reregistered === 1, 15_000, 'b registering again');
    await waitFor(() => sweeps() > sweepsBefore, 15_000, 'the fleet sweeping b\'s old member id');
    await quiesce(observer, project);
    // Either b re-added lena before anyone swept (no event), or the sweep came first (left, joined again).
    expect(['user_joined', 'user_joined,user_left,user_joined']).toContain(presenceEvents(observer, 'lena').join());
    await waitFor(async () => (await a.sidecar.presence.users(project)).includes('lena'));
  });
});

describe('presence queries', () => {
  it('answers a client with the users present anywhere in the fleet', async () => {
    const project = 'pres-query';
    await subscribe(await client(a, 'gina'), project);
    await subscribe(await client(b, 'hank'), project);
    // Each instance answers from its watched copy of the bucket: a change elsewhere takes a moment.
    await waitFor(async () => (await b.sidecar.presence.users(project)).length === 2);

    const asker = await client(b, 'ivy', [project]); // may see the project without being subscribed
    asker.send({ type: 'presence', data: { project_id: project }, message_id: 'q1' });
    const answer = await asker.waitForMessage((m) => m.type === 'presence');
    expect(answer.data).toEqual({ project_id: project, users: ['gina', 'hank'] });
  });

  it('refuses a presence query for a project the client may not see', async () => {
    const asker = await client(a, 'jack', ['other']);
    asker.send({ type: 'presence', data: { project_id: 'pres-secret' }, message_id: 'q2' });
    const answer = await asker.waitForMessage((m) => m.type === 'error');
    expect(answer.data).toMatchObject({ code: 'forbidden', project_id: 'pres-secret', in_reply_to: 'q2' });
  });

  it('gives the admin API the same answer as the function', async () => {
    const project = 'pres-admin';
    await subscribe(await client(b, 'kim'), project);
    await waitFor(async () => (await a.sidecar.presence.users(project)).length === 1);
    expect(await projectPresence(a.sidecar.presence, project)).toEqual({ project_id: project, users: ['kim'], count: 1 });
    await expect(projectPresence(a.sidecar.presence, 'a.b')).rejects.toMatchObject({ status: 400 });

    const admin = await a.token('root', { roles: ['admin'] });
    const res = await fetch(`${a.httpUrl}/api/v1/websocket/projects/${project}/presence`, { headers: { Authorization: `Bearer ${admin}` } });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ project_id: project, users: ['kim'], count: 1 });
  });
});
