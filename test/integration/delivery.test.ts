/**
 * Events from NATS to clients: routing of project, user and broadcast subjects, seq and
 * project_id on every event, resume with `since`, NATS restart, graceful shutdown.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { event, publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

let nats: TestNats;
let side: TestSidecar;
let nc: NatsConnection;

beforeAll(async () => {
  nats = await startTestNats();
  side = await startTestSidecar(nats.url);
  nc = await publisher(nats.url);
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await nc?.close();
  await side?.stop();
  await nats?.cleanup();
});

async function client(sub: string, projects: string[] = ['*']): Promise<TestClient> {
  const c = await connectClient(`${side.wsUrl}?token=${await side.token(sub, { projects })}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  return c;
}

async function subscribe(c: TestClient, project_id: string, since?: number): Promise<any> {
  c.send({ type: 'subscription', data: { action: 'subscribe', project_id, ...(since === undefined ? {} : { since }) } });
  return c.waitForMessage((m) => m.type === 'subscription' && m.data.project_id === project_id);
}

/** Publish and wait until JetStream has stored it (so seqs are known to the test). */
async function publishStored(subject: string, type: string, data: Record<string, unknown> = {}): Promise<void> {
  await nc.request(subject, event(type, data)).catch(() => {
    throw new Error(`JetStream did not store ${subject}`);
  });
}

describe('routing', () => {
  it('delivers a project event, with seq and project_id, only to that project\'s subscribers', async () => {
    const a = await client('u-a');
    const b = await client('u-b');
    await subscribe(a, 'route-1');
    await subscribe(b, 'route-2');
    nc.publish('ws.project.route-1', event('task_created', { id: 't1' }));
    const got = await a.waitForMessage((m) => m.type === 'task_created');
    expect(got.data).toEqual({ id: 't1' });
    expect(got.project_id).toBe('route-1');
    expect(Number.isInteger(got.seq) && got.seq > 0).toBe(true);
    expect(typeof got.timestamp).toBe('string');
    expect(typeof got.message_id).toBe('string');
    nc.publish('ws.project.route-2', event('task_updated', { id: 't2' }));
    const other = await b.waitForMessage((m) => m.type === 'task_updated');
    expect(other.project_id).toBe('route-2');
    // a never saw route-2's event: the next event it gets is its own project's.
    nc.publish('ws.project.route-1', event('marker'));
    await a.waitForMessage((m) => m.type === 'marker');
    expect(a.messages.some((m) => m.type === 'task_updated')).toBe(false);
  });

  it('stops delivering a project after unsubscribe', async () => {
    const a = await client('u-unsub');
    await subscribe(a, 'route-3');
    a.send({ type: 'subscription', data: { action: 'unsubscribe', project_id: 'route-3' } });
    await a.waitForMessage((m) => m.data?.action === 'unsubscribed');
    await publishStored('ws.project.route-3', 'after_unsub');
    nc.publish('ws.user.u-unsub', event('marker'));
    await a.waitForMessage((m) => m.type === 'marker');
    expect(a.messages.some((m) => m.type === 'after_unsub')).toBe(false);
  });

  it('delivers a direct message to every connection of the user and to no one else', async () => {
    const tab1 = await client('u-direct');
    const tab2 = await client('u-direct');
    const other = await client('u-other');
    nc.publish('ws.user.u-direct', event('direct_message', { text: 'hi' }));
    for (const c of [tab1, tab2]) {
      const m = await c.waitForMessage((x) => x.type === 'direct_message');
      expect(m.data.text).toBe('hi');
      expect(m.seq).toBeGreaterThan(0);
      expect(m.project_id).toBeUndefined();
    }
    nc.publish('ws.user.u-other', event('marker'));
    await other.waitForMessage((m) => m.type === 'marker');
    expect(other.messages.some((m) => m.type === 'direct_message')).toBe(false);
  });

  it('delivers a broadcast to every connection', async () => {
    const clients = await Promise.all([client('b1'), client('b2'), client('b3')]);
    nc.publish('ws.broadcast', event('status_changed', { status: 'maintenance' }));
    for (const c of clients) expect((await c.waitForMessage((m) => m.type === 'status_changed')).data.status).toBe('maintenance');
  });

  it('keeps the publisher\'s timestamp and message_id, and passes any event type through', async () => {
    const a = await client('u-env');
    await subscribe(a, 'route-4');
    nc.publish(
      'ws.project.route-4',
      JSON.stringify({ type: 'custom_thing', data: { x: 1 }, timestamp: '2026-01-02T03:04:05.000Z', message_id: 'pub-1' }),
    );
    const m = await a.waitForMessage((x) => x.type === 'custom_thing');
    expect(m).toMatchObject({ timestamp: '2026-01-02T03:04:05.000Z', message_id: 'pub-1', data: { x: 1 } });
  });

  it('drops invalid published payloads without disturbing the connection', async () => {
    const a = await client('u-bad');
    await subscribe(a, 'route-5');
    nc.publish('ws.project.route-5', 'not json');
    nc.publish('ws.project.route-5', JSON.stringify({ type: 'no_data' }));
    nc.publish('ws.project.route-5', JSON.stringify([1, 2]));
    nc.publish('ws.project.route-5', event('good'));
    const m = await a.waitForMessage((x) => x.type !== 'subscription');
    expect(m.type).toBe('good');
    expect(side.sidecar.broker.stats.eventsInvalid).toBeGreaterThanOrEqual(3);
  });

  it('delivers events of one project in publish order', async () => {
    const a = await client('u-order');
    await subscribe(a, 'route-6');
    for (let i = 0; i < 200; i++) nc.publish('ws.project.route-6', event('n', { i }));
    const got = await a.waitForMessages(200, (m) => m.type === 'n');
    expect(got.map((m) => m.data.i)).toEqual([...Array(200).keys()]);
    const seqs = got.map((m) => m.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
  });
});

/** Subscriptions the sidecar's own NATS connection holds (nats.js keeps them in its protocol handler). */
const natsSubscriptions = (t: TestSidecar): number => (t.sidecar.broker.nc as any).protocol.subscriptions.size();

describe('direct subscription modes', () => {
  it('hears every user through one wildcard subscription: connecting users add no NATS subscription', async () => {
    const first = await client('wild-0');
    const before = natsSubscriptions(side);
    const users = await Promise.all(Array.from({ length: 5 }, (_, i) => client(`wild-${i + 1}`)));
    // (Connections of earlier tests may still be leaving their projects: the count can only drop.)
    expect(natsSubscriptions(side)).toBeLessThanOrEqual(before);
    nc.publish('ws.user.wild-3', event('direct_message', { to: 3 }));
    nc.publish('ws.user.nobody-here', event('direct_message', { to: 'nobody' }));
    nc.publish('ws.user.wild-0', event('direct_message', { to: 0 }));
    expect((await users[2].waitForMessage((m) => m.type === 'direct_message')).data.to).toBe(3);
    expect((await first.waitForMessage((m) => m.type === 'direct_message')).data.to).toBe(0);
    expect(first.messages.filter((m) => m.type === 'direct_message')).toHaveLength(1);
  });

  it('with directSubscription per_user, subscribes per connected user and delivers the same way', async () => {
    const perUser = await startTestSidecar(nats.url, { directSubscription: 'per_user' });
    try {
      const connect = async (sub: string) => {
        const c = await connectClient(`${perUser.wsUrl}?token=${await perUser.token(sub, { projects: ['*'] })}`);
        await c.waitForMessage((m) => m.type === 'auth_success');
        return c;
      };
      const a = await connect('per-a');
      const before = natsSubscriptions(perUser);
      const b = await connect('per-b');
      expect(natsSubscriptions(perUser)).toBe(before + 1);
      nc.publish('ws.user.per-b', event('direct_message', { to: 'b' }));
      nc.publish('ws.user.per-a', event('direct_message', { to: 'a' }));
      expect((await b.waitForMessage((m) => m.type === 'direct_message')).data.to).toBe('b');
      expect((await a.waitForMessage((m) => m.type === 'direct_message')).data.to).toBe('a');
      b.close();
      await b.waitForClose();
      await expect.poll(() => natsSubscriptions(perUser)).toBe(before);
    } finally {
      await perUser.stop();
    }
  });
});

describe('resume with since', () => {
  it('replays stored events after since, in order, then continues live with no gap and no duplicate', async () => {
    for (let i = 1; i <= 5; i++) await publishStored('ws.project.resume-1', 'r', { i });
    const first = await client('u-resume');
    await subscribe(first, 'resume-1', 0);
    const all = await first.waitForMessages(5, (m) => m.type === 'r');
    expect(all.map((m) => m.data.i)).toEqual([1, 2, 3, 4, 5]);

    const since = all[1].seq; // the client saw i=1,2
    const c = await client('u-resume');
    const ack = await subscribe(c, 'resume-1', since);
    expect(ack.data.action).toBe('subscribed');
    nc.publish('ws.project.resume-1', event('r', { i: 6 }));
    const got = await c.waitForMessages(4, (m) => m.type === 'r');
    expect(got.map((m) => m.data.i)).toEqual([3, 4, 5, 6]);
    // The subscribed answer comes before the replayed events.
    expect(c.messages.findIndex((m) => m.type === 'subscription')).toBeLessThan(c.messages.findIndex((m) => m.type === 'r'));
    nc.publish('ws.user.u-resume', event('marker'));
    await c.waitForMessage((m) => m.type === 'marker');
    expect(c.messages.filter((m) => m.type === 'r')).toHaveLength(4);
  });

  it('hands over from replay to live without gap or duplicate while events keep arriving', async () => {
    for (let i = 0; i < 300; i++) nc.publish('ws.project.resume-2', event('x', { i }));
    await nc.flush();
    await publishStored('ws.project.resume-2', 'x', { i: 300 });
    const c = await client('u-handover');
    const done = subscribe(c, 'resume-2', 0);
    for (let i = 301; i < 400; i++) nc.publish('ws.project.resume-2', event('x', { i }));
    await done;
    const got = await c.waitForMessages(400, (m) => m.type === 'x', 10_000);
    expect(got.map((m) => m.data.i)).toEqual([...Array(400).keys()]);
  });

  it('replays nothing but still subscribes when since is the latest seq the client saw', async () => {
    await publishStored('ws.project.resume-3', 'old');
    const probe = await client('u-probe');
    await subscribe(probe, 'resume-3', 0);
    const old = await probe.waitForMessage((m) => m.type === 'old');
    // A second tab of the same user: the only stored event after `old` is this user's own
    // user_joined, which the user's connections never receive.
    const c = await client('u-probe');
    await subscribe(c, 'resume-3', old.seq);
    nc.publish('ws.project.resume-3', event('new'));
    expect((await c.waitForMessage((m) => m.type !== 'subscription')).type).toBe('new');
    expect(c.messages.some((m) => m.type === 'old' || m.type === 'user_joined')).toBe(false);
  });

  it('sends user_joined to the other subscribers of a project, never to the joining user', async () => {
    const first = await client('u-join-a');
    await subscribe(first, 'join-1');
    const second = await client('u-join-b');
    await subscribe(second, 'join-1');
    const joined = await first.waitForMessage((m) => m.type === 'user_joined');
    expect(joined).toMatchObject({ project_id: 'join-1', data: { user_id: 'u-join-b', project_id: 'join-1' } });
    nc.publish('ws.project.join-1', event('marker'));
    await second.waitForMessage((m) => m.type === 'marker');
    await first.waitForMessage((m) => m.type === 'marker');
    expect(second.messages.some((m) => m.type === 'user_joined' && m.data.user_id === 'u-join-b')).toBe(false);
    expect(first.messages.some((m) => m.type === 'user_joined' && m.data.user_id === 'u-join-a')).toBe(false);
  });
});

describe('NATS and process lifecycle', () => {
  it('resumes live delivery after the NATS server restarts', async () => {
    const own = await startTestNats();
    const s = await startTestSidecar(own.url);
    try {
      const c = await connectClient(`${s.wsUrl}?token=${await s.token('u-restart')}`);
      await c.waitForMessage((m) => m.type === 'auth_success');
      c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'nr' } });
      await c.waitForMessage((m) => m.type === 'subscription');
      await own.restart();
      // Wait for the sidecar's reconnect (event-driven through its status flag).
      await waitFor(() => s.sidecar.broker.connected && s.sidecar.broker.stats.reconnects > 0);
      const pub = await publisher(own.url);
      try {
        // The sidecar's SUB may still be in flight right after reconnect: publish until one lands.
        await waitFor(async () => {
          pub.publish('ws.project.nr', event('after_restart'));
          await pub.flush();
          return c.messages.some((m) => m.type === 'after_restart');
        });
        const m = c.messages.find((x) => x.type === 'after_restart');
        expect(m.project_id).toBe('nr');
      } finally {
        await pub.close();
      }
    } finally {
      await s.stop();
      await own.cleanup();
    }
  });

  it('closes sockets with 1001 on graceful stop and refuses new upgrades', async () => {
    const s = await startTestSidecar(nats.url);
    const c = await connectClient(`${s.wsUrl}?token=${await s.token('u-stop')}`);
    await c.waitForMessage((m) => m.type === 'auth_success');
    const stopped = s.stop();
    const close = await c.waitForClose();
    expect(close.code).toBe(1001);
    expect(close.reason).toMatch(/reconnect/);
    await stopped;
  });
});

async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}
