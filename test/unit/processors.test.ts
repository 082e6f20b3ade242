/**
 * The request processors on the memory broker: subscribe and unsubscribe with their limits and
 * access checks, the inbox backlog at authentication and its acks, and a token refresh on an open
 * connection. (Against real sockets and NATS: test/integration/connection, inbox and jwt tests.)
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Principal } from '../../src/auth.js';
import type { Connection } from '../../src/core/connection.js';
import type { AuthPort } from '../../src/core/ports.js';
import { AuthError } from '../../src/errors.js';
import { CloseCode } from '../../src/protocol.js';
import { closeMemoryHubs, memoryBrokerHub, MemoryTransport, openConnection, principal, tick } from '../helpers/memory-hub.js';

afterEach(closeMemoryHubs);

const send = (conn: Connection, message: Record<string, unknown>) => conn.receive(JSON.stringify(message), false);
const sub = (conn: Connection, action: 'subscribe' | 'unsubscribe', projectId: string, id?: string) =>
  send(conn, { type: 'subscription', message_id: id, data: { action, project_id: projectId } });
const ofType = (t: MemoryTransport, type: string) => t.frames().filter((f) => f.type === type);

/** An auth port that knows a few tokens. */
function tokens(known: Record<string, Principal>): AuthPort {
  return {
    verify: async (token) => {
      const p = known[token];
      if (p === undefined) throw new AuthError('token_invalid', 'invalid token');
      return p;
    },
  };
}

describe('subscribe and unsubscribe', () => {
  it('subscribes with the epoch, delivers live events, and after unsubscribe delivers none', async () => {
    const { hub, broker } = memoryBrokerHub();
    const { conn, transport } = await openConnection(hub);
    sub(conn, 'subscribe', 'p1');
    await vi.waitFor(() => expect(ofType(transport, 'subscription')).toHaveLength(1));
    expect(ofType(transport, 'subscription')[0].data).toEqual({ action: 'subscribed', project_id: 'p1', epoch: 'e1' });
    broker.publish('project.p1', 'task_created');
    await tick();
    sub(conn, 'unsubscribe', 'p1');
    broker.publish('project.p1', 'task_created');
    await tick();
    expect(ofType(transport, 'task_created').map((f) => f.seq)).toEqual([1]);
    expect(ofType(transport, 'subscription')[1].data).toEqual({ action: 'unsubscribed', project_id: 'p1' });
    expect(hub.subscribersOf('project.p1')).toBe(0);
    expect(broker.interest.has('project.p1')).toBe(false);
  });

  it("refuses a project outside the token's projects with forbidden, in reply to the request", async () => {
    const { hub } = memoryBrokerHub();
    const { conn, transport } = await openConnection(hub, { ...principal, projects: ['p1'] });
    sub(conn, 'subscribe', 'p2', 'r1');
    await vi.waitFor(() => expect(ofType(transport, 'error')).toHaveLength(1));
    expect(ofType(transport, 'error')[0].data).toMatchObject({ code: 'forbidden', project_id: 'p2', in_reply_to: 'r1' });
    expect(conn.subscriptions.has('project.p2')).toBe(false);
  });

  it('refuses a subscription past maxSubscriptionsPerConnection; a repeated one still counts once', async () => {
    const { hub } = memoryBrokerHub({ config: { maxSubscriptionsPerConnection: 2 } });
    const { conn, transport } = await openConnection(hub);
    for (const p of ['p1', 'p2', 'p2', 'p3']) sub(conn, 'subscribe', p);
    await vi.waitFor(() => expect(transport.types().filter((t) => t === 'subscription' || t === 'error')).toHaveLength(4));
    expect(ofType(transport, 'subscription')).toHaveLength(3);
    expect(ofType(transport, 'error')[0].data).toMatchObject({ code: 'forbidden', message: 'too many subscriptions on this connection' });
    expect(conn.subscriptions.keys().sort()).toEqual(['broadcast', 'project.p1', 'project.p2', 'user.u1']);
  });
});

describe('the inbox', () => {
  it('delivers unacknowledged direct messages right after auth_success, in order, with live ones once', async () => {
    const { hub, broker } = memoryBrokerHub();
    broker.publish('user.u1', 'dm', { n: 1 });
    broker.publish('user.u1', 'dm', { n: 2 });
    let ready!: () => void;
    const gate = new Promise<void>((ok) => (ready = ok));
    broker.readyGate = () => gate;
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    const started = conn.start(principal); // joins the user's topic at once, then waits on the gate
    // Arrives while the topics get ready: live (held) and in the inbox as well.
    broker.publish('user.u1', 'dm', { n: 3 });
    ready();
    await started;
    broker.publish('user.u1', 'dm', { n: 4 });
    await tick();
    expect(transport.types()).toEqual(['auth_success', 'dm', 'dm', 'dm', 'dm']);
    expect(ofType(transport, 'dm').map((f) => f.seq)).toEqual([1, 2, 3, 4]);
  });

  it('applies an ack of a direct message the connection has, and no other', async () => {
    const { hub, broker } = memoryBrokerHub({ config: { inboxAckMode: 'explicit' } });
    for (let n = 1; n <= 3; n++) broker.publish('user.u1', 'dm', { n });
    const { conn } = await openConnection(hub);
    send(conn, { type: 'ack', data: { seq: 2 } });
    send(conn, { type: 'ack', data: { seq: 99 } }); // not one it has: no read of the inbox for it
    expect(broker.acks).toEqual([{ userId: 'u1', seq: 2, how: 'ack' }]);
    expect(broker.unacknowledged('u1')).toEqual([1, 3]);
    const next = new MemoryTransport();
    await hub.authenticate(hub.connect(next, 'test'), principal);
    await tick();
    expect(ofType(next, 'dm').map((f) => f.seq)).toEqual([1, 3]);
  });

  it('acknowledges on write in inboxAckMode write, once the queue drained', async () => {
    const { hub, broker } = memoryBrokerHub({ config: { inboxAckMode: 'write' } });
    const { conn } = await openConnection(hub);
    broker.publish('user.u1', 'dm');
    broker.publish('project.p9', 'task_created'); // not a direct message, and not subscribed
    broker.publish('user.u1', 'dm');
    await tick();
    expect(broker.acks.at(-1)).toEqual({ userId: 'u1', seq: 3, how: 'written' });
    expect(broker.unacknowledged('u1')).toEqual([]);
    expect(conn.state).toBe('open');
  });
});

describe('a token refresh', () => {
  const narrower: Principal = { ...principal, projects: ['p1'] };
  const stranger: Principal = { ...principal, userId: 'u9' };
  const auth = tokens({ full: principal, narrower, stranger });

  it('answers auth_success and leaves the projects the new token does not allow', async () => {
    const { hub, broker } = memoryBrokerHub({ auth });
    const { conn, transport } = await openConnection(hub);
    sub(conn, 'subscribe', 'p1');
    sub(conn, 'subscribe', 'p2');
    await vi.waitFor(() => expect(ofType(transport, 'subscription')).toHaveLength(2));
    send(conn, { type: 'auth', data: { token: 'narrower' } });
    await vi.waitFor(() => expect(ofType(transport, 'auth_success')).toHaveLength(1));
    expect(ofType(transport, 'subscription')[2].data).toEqual({ action: 'unsubscribed', project_id: 'p2', reason: 'forbidden' });
    expect(ofType(transport, 'auth_success')[0].data).toEqual({ user_id: 'u1', connection_id: conn.id, epoch: 'e1' });
    expect(conn.principal).toBe(narrower);
    expect(broker.interest.has('project.p2')).toBe(false);
    expect(conn.subscriptions.has('project.p1')).toBe(true);
  });

  it('refuses a token for another user, or an invalid one, and keeps the connection on its token', async () => {
    const { hub } = memoryBrokerHub({ auth });
    const { conn, transport } = await openConnection(hub);
    send(conn, { type: 'auth', data: { token: 'stranger' } });
    send(conn, { type: 'auth', data: { token: 'forged' } });
    await vi.waitFor(() => expect(ofType(transport, 'auth_failed')).toHaveLength(2));
    expect(ofType(transport, 'auth_failed').map((f) => f.data.code)).toEqual(['token_invalid', 'token_invalid']);
    expect(conn.state).toBe('open');
    expect(conn.principal).toBe(principal);
    expect(conn.errorCount).toBe(2);
  });

  it('closes with 4401 when the first auth message has an invalid token', async () => {
    const { hub } = memoryBrokerHub({ auth });
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    void conn.start();
    send(conn, { type: 'auth', data: { token: 'forged' } });
    await vi.waitFor(() => expect(transport.closed).toEqual({ code: CloseCode.Unauthorized, reason: 'authentication failed' }));
    expect(transport.types()).toEqual(['auth_required', 'auth_failed']);
    expect(hub.connections.size).toBe(0);
  });
});
