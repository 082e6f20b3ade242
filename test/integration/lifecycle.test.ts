import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';
import { tailLifecycle, type LifecycleTail } from '../helpers/lifecycle.js';

let nats: TestNats;
let sc: TestSidecar;
let tail: LifecycleTail;

beforeAll(async () => {
  nats = await startTestNats();
  sc = await startTestSidecar(nats.url, { lifecycleMaxAge: '2h', lifecycleMaxMessages: 5000 });
  tail = await tailLifecycle(nats.url);
});

afterAll(async () => {
  await closeAllClients();
  await tail?.close();
  await sc?.stop();
  await nats?.cleanup();
});

async function open(user: string) {
  const c = await connectClient(`${sc.wsUrl}?token=${await sc.token(user)}`);
  const ok = await c.waitForMessage((m) => m.type === 'auth_success');
  return { c, id: ok.data.connection_id as string };
}

describe('lifecycle events', () => {
  it('announces connected, subscribed, unsubscribed and disconnected of a connection, in order, with its ids', async () => {
    const { c, id } = await open('lc-alice');
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'lc-p1' } });
    await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
    c.send({ type: 'subscription', data: { action: 'unsubscribe', project_id: 'lc-p1' } });
    await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'unsubscribed');
    c.close(1000, 'bye');
    await tail.waitFor(() => tail.of(id).some((e) => e.type === 'disconnected'));
    const events = tail.of(id);
    expect(events.map((e) => e.subject)).toEqual([
      'ws.lifecycle.connected',
      'ws.lifecycle.subscribed',
      'ws.lifecycle.unsubscribed',
      'ws.lifecycle.disconnected',
    ]);
    const instance = sc.sidecar.instanceId;
    expect(events[0].data).toEqual({ user_id: 'lc-alice', connection_id: id, instance_id: instance });
    expect(events[1].data).toEqual({ user_id: 'lc-alice', connection_id: id, instance_id: instance, project_id: 'lc-p1' });
    expect(events[3].data).toMatchObject({ user_id: 'lc-alice', connection_id: id, instance_id: instance, code: 1000, reason: 'bye' });
    expect(events[3].msgId).toBe(`disconnected-${id}`);
  });

  it('announces a connection closed with its subscriptions: unsubscribed, then disconnected once', async () => {
    const { c, id } = await open('lc-bob');
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'lc-p2' } });
    await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
    c.ws.terminate();
    await tail.waitFor(() => tail.of(id).some((e) => e.type === 'disconnected'));
    await sc.sidecar.lifecycle!.settled();
    expect(tail.of(id).map((e) => e.type)).toEqual(['connected', 'subscribed', 'unsubscribed', 'disconnected']);
  });

  it('does not announce a connection that never authenticated', async () => {
    const c = await connectClient(sc.wsUrl);
    await c.waitForMessage((m) => m.type === 'auth_required');
    c.send({ type: 'auth', data: { token: 'not-a-jwt' } });
    await c.waitForClose();
    await sc.sidecar.lifecycle!.settled();
    expect(tail.events.filter((e) => !e.data.user_id)).toEqual([]);
  });

  it('removes the connection record once the disconnect is announced', async () => {
    const { c, id } = await open('lc-carol');
    await sc.sidecar.lifecycle!.settled();
    const nc = await connect({ servers: nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      const keys = async () =>
        Object.keys((await jsm.streams.info('KV_WS_CONNECTIONS', { subjects_filter: '>' })).state.subjects ?? {});
      expect((await keys()).some((s) => s.endsWith(`.${id}`))).toBe(true);
      c.close();
      await tail.waitFor(() => tail.of(id).some((e) => e.type === 'disconnected'));
      await sc.sidecar.lifecycle!.settled();
      expect((await keys()).some((s) => s.endsWith(`.${id}`))).toBe(false);
    } finally {
      await nc.close();
    }
  });

  it('stores the events in their own stream with the configured limits', async () => {
    const nc = await connect({ servers: nats.url });
    try {
      const info = await (await jetstreamManager(nc)).streams.info('WS_LIFECYCLE');
      expect(info.config.subjects).toEqual(['ws.lifecycle.*']);
      expect(info.config.max_age).toBe(2 * 3600 * 1e9);
      expect(info.config.max_msgs).toBe(5000);
    } finally {
      await nc.close();
    }
  });
});

describe('lifecycle events of a dead instance', () => {
  it('stores one instance_lost per connection when two survivors sweep the same dead member at once', async () => {
    const other = await startTestSidecar(nats.url);
    const nc = await connect({ servers: nats.url });
    try {
      // A member that died with 30 open connections: its marker and records, and no heartbeat.
      const { Kvm } = await import('@nats-io/kv');
      const kv = await new Kvm(nc).open('WS_CONNECTIONS');
      const ghost = 'ghost-instance.0badc0de';
      await kv.put(ghost, JSON.stringify({ instance_id: 'ghost-instance' }));
      const ids = Array.from({ length: 30 }, (_, i) => `ghost-instance-${i.toString(36)}`);
      for (const id of ids) await kv.put(`${ghost}.${id}`, JSON.stringify({ user_id: `gu${id}`, connection_id: id, instance_id: 'ghost-instance' }));
      const alive = new Set([sc.sidecar.presence.member, other.sidecar.presence.member]);
      const isDead = async (m: string) => m === ghost;
      await Promise.all([sc.sidecar.lifecycle!.sweep(alive, isDead), other.sidecar.lifecycle!.sweep(alive, isDead)]);
      await tail.waitFor(() => ids.every((id) => tail.of(id).length > 0));
      // Both sweeps have returned: everything they published is stored. A marker after them.
      await jetstreamPublish(nc, 'ws.lifecycle.connected', { type: 'marker', data: { connection_id: 'marker' } });
      await tail.waitFor(() => tail.of('marker').length === 1);
      for (const id of ids) {
        expect(tail.of(id).map((e) => [e.type, e.data.reason, e.data.user_id])).toEqual([['disconnected', 'instance_lost', `gu${id}`]]);
      }
      const left = Object.keys((await (await jetstreamManager(nc)).streams.info('KV_WS_CONNECTIONS', { subjects_filter: '>' })).state.subjects ?? {});
      expect(left.filter((s) => s.includes('ghost-instance'))).toEqual([]);
    } finally {
      await nc.close();
      await other.stop();
    }
  });
});

async function jetstreamPublish(nc: Awaited<ReturnType<typeof connect>>, subject: string, body: unknown): Promise<void> {
  const { jetstream } = await import('@nats-io/jetstream');
  await jetstream(nc).publish(subject, JSON.stringify(body));
}

describe('lifecycle storage that disappears', () => {
  it('creates the stream and the records bucket again when an operator deleted them, and announces new connections there', async () => {
    const nc = await connect({ servers: nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      await jsm.streams.delete('WS_LIFECYCLE');
      await jsm.streams.delete('KV_WS_CONNECTIONS');
      const { c, id } = await open('lc-dave');
      await sc.sidecar.lifecycle!.settled();
      const again = await tailLifecycle(nats.url);
      try {
        await again.waitFor(() => again.of(id).some((e) => e.type === 'connected'));
        c.close();
        await again.waitFor(() => again.of(id).some((e) => e.type === 'disconnected'));
        expect(again.of(id).map((e) => e.type)).toEqual(['connected', 'disconnected']);
        // The instance's marker is back, so the fleet would find its records if it died.
        const markers = Object.keys((await jsm.streams.info('KV_WS_CONNECTIONS', { subjects_filter: '$KV.WS_CONNECTIONS.*.*' })).state.subjects ?? {});
        expect(markers).toContain(`$KV.WS_CONNECTIONS.${sc.sidecar.presence.member}`);
      } finally {
        await again.close();
      }
    } finally {
      await nc.close();
    }
  });
});

describe('lifecycle events while NATS is away', () => {
  it('announces a connection that closed while NATS was down once NATS is back, exactly once', async () => {
    const n = await startTestNats();
    const side = await startTestSidecar(n.url);
    try {
      const c = await connectClient(`${side.wsUrl}?token=${await side.token('lc-erin')}`);
      const id = (await c.waitForMessage((m) => m.type === 'auth_success')).data.connection_id as string;
      await side.sidecar.lifecycle!.settled();
      await n.kill();
      c.close(1000, 'closed while NATS was down');
      await c.waitForClose();
      await n.restart();
      const t = await tailLifecycle(n.url);
      try {
        await t.waitFor(() => t.of(id).some((e) => e.type === 'disconnected'), 15_000);
        await side.sidecar.lifecycle!.settled();
        expect(t.of(id).map((e) => [e.type, e.data.reason])).toEqual([
          ['connected', undefined],
          ['disconnected', 'closed while NATS was down'],
        ]);
      } finally {
        await t.close();
      }
    } finally {
      await side.stop();
      await n.cleanup();
    }
  });
});
