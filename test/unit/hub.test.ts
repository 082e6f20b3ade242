/**
 * The hub on the memory broker: routing of stored events to a topic's subscribers, one delivery
 * per publisher id, what subscribers are told when history is lost or the stream is recreated,
 * interest in topics as connections come and go, and the sweep's deadlines and heartbeat.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Principal } from '../../src/auth.js';
import type { Connection } from '../../src/core/connection.js';
import type { Hub } from '../../src/core/hub.js';
import { CloseCode } from '../../src/protocol.js';
import { closeMemoryHubs, memoryBrokerHub, MemoryTransport, openConnection, principal, tick } from '../helpers/memory-hub.js';

afterEach(closeMemoryHubs);

async function subscribed(hub: Hub, conn: Connection, transport: MemoryTransport, projectId: string): Promise<void> {
  const before = transport.types().filter((t) => t === 'subscription').length;
  conn.receive(JSON.stringify({ type: 'subscription', data: { action: 'subscribe', project_id: projectId } }), false);
  await vi.waitFor(() => expect(transport.types().filter((t) => t === 'subscription')).toHaveLength(before + 1));
}

const user2: Principal = { ...principal, userId: 'u2' };
const events = (t: MemoryTransport, type = 'task_created') => t.frames().filter((f) => f.type === type);

describe('routing', () => {
  it('delivers a stored event to the subscribers of its topic only, and counts them', async () => {
    const { hub, broker } = memoryBrokerHub();
    const a = await openConnection(hub);
    const b = await openConnection(hub, user2);
    await subscribed(hub, a.conn, a.transport, 'p1');
    await subscribed(hub, b.conn, b.transport, 'p2');
    broker.publish('project.p1', 'task_created', { n: 1 });
    broker.publish('project.p2', 'task_created', { n: 2 });
    broker.publish('broadcast', 'maintenance');
    await tick();
    expect(events(a.transport).map((f) => f.data)).toEqual([{ n: 1 }]);
    expect(events(b.transport).map((f) => f.data)).toEqual([{ n: 2 }]);
    expect(events(a.transport, 'maintenance')).toHaveLength(1);
    expect(events(b.transport, 'maintenance')).toHaveLength(1);
    expect(hub.stats).toMatchObject({ eventsRouted: 3, broadcastsSent: 1 });
  });

  it('gives a connection one message_id once, though it came on the project and on the user topic', async () => {
    const { hub, broker } = memoryBrokerHub();
    const both = await openConnection(hub);
    const other = await openConnection(hub, user2);
    await subscribed(hub, both.conn, both.transport, 'p1');
    await subscribed(hub, other.conn, other.transport, 'p1');
    broker.publish('project.p1', 'task_created', {}, { messageId: 'm-1' });
    broker.publish('user.u1', 'task_created', {}, { messageId: 'm-1' });
    await tick();
    expect(events(both.transport).map((f) => f.seq)).toEqual([1]);
    expect(events(other.transport).map((f) => f.seq)).toEqual([1]);
  });

  it('asks the broker for a topic while it has subscribers here, and not after', async () => {
    const { hub, broker } = memoryBrokerHub();
    const a = await openConnection(hub);
    expect([...broker.interest].sort()).toEqual(['broadcast', 'user.u1']);
    await subscribed(hub, a.conn, a.transport, 'p1');
    expect(broker.interest.has('project.p1')).toBe(true);
    a.conn.close(CloseCode.GoingAway, 'bye');
    expect(broker.interest.size).toBe(0);
    expect(hub.connections.size).toBe(0);
    expect(hub.connectionsOf('u1').size).toBe(0);
  });
});

describe('what subscribers are told', () => {
  it('history_truncated with the seq after which events were lost', async () => {
    const { hub } = memoryBrokerHub();
    const a = await openConnection(hub);
    await subscribed(hub, a.conn, a.transport, 'p1');
    hub.historyLost('project.p1', 41);
    await tick();
    expect(events(a.transport, 'history_truncated').map((f) => f.data)).toEqual([
      { scope: 'project', project_id: 'p1', after_seq: 41, epoch: 'e1' },
    ]);
  });

  it('a recreated stream: history_truncated with the new epoch on every topic, then the new epoch from seq 1', async () => {
    const { hub, broker } = memoryBrokerHub();
    const a = await openConnection(hub);
    await subscribed(hub, a.conn, a.transport, 'p1');
    for (let i = 0; i < 3; i++) broker.publish('project.p1', 'task_created');
    await tick();
    const e2 = broker.recreate();
    broker.publish('project.p1', 'task_created');
    await tick();
    const told = events(a.transport, 'history_truncated').map((f) => f.data);
    expect(told).toHaveLength(3);
    expect(told).toEqual(
      expect.arrayContaining([
        { scope: 'project', project_id: 'p1', epoch: e2, previous_epoch: 'e1', reason: 'stream_recreated' },
        { scope: 'user', epoch: e2, previous_epoch: 'e1', reason: 'stream_recreated' },
        { scope: 'broadcast', epoch: e2, previous_epoch: 'e1', reason: 'stream_recreated' },
      ]),
    );
    const types = a.transport.types();
    expect(types.lastIndexOf('history_truncated')).toBeLessThan(types.lastIndexOf('task_created'));
    expect(events(a.transport).map((f) => f.seq)).toEqual([1, 2, 3, 1]);
  });

  it('a revoked permission: the user leaves the project, with reason revoked', async () => {
    const { hub, broker } = memoryBrokerHub();
    const a = await openConnection(hub);
    await subscribed(hub, a.conn, a.transport, 'p1');
    expect(hub.revoke('u1', 'p1')).toBe(1);
    broker.publish('project.p1', 'task_created');
    await tick();
    expect(events(a.transport, 'subscription').at(-1).data).toEqual({ action: 'unsubscribed', project_id: 'p1', reason: 'revoked' });
    expect(events(a.transport)).toHaveLength(0);
    expect(broker.interest.has('project.p1')).toBe(false);
  });
});

describe('the sweep', () => {
  it('pings an idle client every pingInterval and terminates one silent for pongTimeout', async () => {
    const { hub } = memoryBrokerHub({ config: { pingInterval: 1000, pongTimeout: 3000 } });
    const { conn, transport } = await openConnection(hub);
    const t0 = Date.now();
    conn.sweep(t0 + 500);
    expect(transport.pings).toBe(0);
    conn.sweep(t0 + 1000);
    conn.sweep(t0 + 1500);
    expect(transport.pings).toBe(1);
    conn.heard(t0 + 2000); // the pong
    conn.sweep(t0 + 4999);
    expect(transport.terminated).toBe(false);
    conn.sweep(t0 + 5000);
    expect(transport.terminated).toBe(true);
    expect(conn.state).toBe('closed');
    expect(hub.connections.size).toBe(0);
  });

  it('closes a connection that did not authenticate within authTimeout with 4408', async () => {
    const { hub } = memoryBrokerHub({ config: { authTimeout: 1000 } });
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    conn.sweep(conn.openedAt + 999);
    expect(transport.closed).toBeUndefined();
    conn.sweep(conn.openedAt + 1000);
    expect(transport.closed).toEqual({ code: CloseCode.AuthTimeout, reason: 'authentication timeout' });
  });

  it('tells a client whose token expired and closes it with 4401', async () => {
    const { hub } = memoryBrokerHub();
    const expiresAt = Date.now() + 60_000;
    const { conn, transport } = await openConnection(hub, { ...principal, expiresAt });
    conn.sweep(expiresAt - 1);
    expect(transport.closed).toBeUndefined();
    conn.sweep(expiresAt);
    expect(transport.frames().map((f) => f.data?.code)).toEqual(['token_expired']);
    expect(transport.closed).toEqual({ code: CloseCode.Unauthorized, reason: 'token expired' });
  });
});
