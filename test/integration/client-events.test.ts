/**
 * Client-sent events: an allowed type, for a project the client is subscribed to, reaches NATS on
 * ws.client.<project>.<type> with the verified identity in headers; nothing the client writes can
 * change that identity; other types are forbidden; every event counts against the inbound limiter.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { waitFor } from '../helpers/wait.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

let nats: TestNats;
let side: TestSidecar;
let nc: NatsConnection;
let backend: Subscription;
/** What a backend listening on ws.client.> received. */
const received: Msg[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
  backend = nc.subscribe('ws.client.>', { callback: (_err, msg) => void received.push(msg) });
  await nc.flush();
  side = await startTestSidecar(nats.url, { clientEvents: 'typing,cursor_moved' });
});
afterEach(() => closeAllClients());
afterAll(async () => {
  backend?.unsubscribe();
  await nc?.close();
  await side?.stop();
  await nats?.cleanup();
});

async function subscribed(s: TestSidecar, sub: string, project_id: string): Promise<{ c: TestClient; connectionId: string }> {
  const c = await connectClient(`${s.wsUrl}?token=${await s.token(sub)}`);
  const hello = await c.waitForMessage((m) => m.type === 'auth_success');
  c.send({ type: 'subscription', data: { action: 'subscribe', project_id } });
  await c.waitForMessage((m) => m.type === 'subscription');
  return { c, connectionId: hello.data.connection_id };
}

const on = (subject: string) => received.filter((m) => m.subject === subject);

describe('client-sent events', () => {
  it('publishes an allowed event with the verified identity, ignoring a forged one', async () => {
    const { c, connectionId } = await subscribed(side, 'alice', 'ce-1');
    c.send({
      type: 'client_event',
      data: { project_id: 'ce-1', event: 'typing', payload: { text: 'hi' }, user_id: 'mallory', connection_id: 'forged' },
      message_id: 'ce-msg-1',
      user_id: 'mallory',
      headers: { 'Ws-User-Id': 'mallory', 'Ws-Instance-Id': 'forged' },
    });
    await waitFor(() => on('ws.client.ce-1.typing').length === 1, 10_000, 'the event on NATS');
    const msg = on('ws.client.ce-1.typing')[0];
    expect(msg.headers?.get('Ws-User-Id')).toBe('alice');
    expect(msg.headers?.get('Ws-Connection-Id')).toBe(connectionId);
    expect(msg.headers?.get('Ws-Instance-Id')).toBe(side.sidecar.instanceId);
    expect(msg.headers?.get('Ws-Project-Id')).toBe('ce-1');
    expect(msg.json()).toMatchObject({
      type: 'typing',
      data: { text: 'hi' },
      project_id: 'ce-1',
      user_id: 'alice',
      connection_id: connectionId,
      instance_id: side.sidecar.instanceId,
      message_id: 'ce-msg-1',
    });
    expect(c.messages.some((m) => m.type === 'error')).toBe(false);
  });

  it('refuses a type that is not allowed with forbidden, and publishes nothing', async () => {
    const { c } = await subscribed(side, 'bob', 'ce-2');
    c.send({ type: 'client_event', data: { project_id: 'ce-2', event: 'task_deleted', payload: {} }, message_id: 'x1' });
    const err = await c.waitForMessage((m) => m.type === 'error');
    expect(err.data).toMatchObject({ code: 'forbidden', event: 'task_deleted', in_reply_to: 'x1' });
    // An allowed event sent afterwards is the only one that reaches NATS.
    c.send({ type: 'client_event', data: { project_id: 'ce-2', event: 'cursor_moved', payload: { x: 1 } } });
    await waitFor(() => on('ws.client.ce-2.cursor_moved').length === 1, 10_000, 'the allowed event');
    expect(received.filter((m) => m.subject.startsWith('ws.client.ce-2.'))).toHaveLength(1);
  });

  it('refuses events for a project the client is not subscribed to, and malformed event names', async () => {
    const { c } = await subscribed(side, 'carol', 'ce-3');
    c.send({ type: 'client_event', data: { project_id: 'ce-other', event: 'typing' } });
    expect((await c.waitForMessage((m) => m.type === 'error')).data).toMatchObject({ code: 'forbidden', project_id: 'ce-other' });
    c.send({ type: 'client_event', data: { project_id: 'ce-3', event: 'typing.>' } });
    expect((await c.waitForMessage((m) => m.type === 'error')).data.code).toBe('invalid_message');
  });

  it('counts client events against the inbound rate limit', async () => {
    const limited = await startTestSidecar(nats.url, { clientEvents: 'typing', requestsPerSecond: 1, burstSize: 3 });
    try {
      const { c } = await subscribed(limited, 'dave', 'ce-4'); // the subscribe took one of the 3
      for (let i = 0; i < 5; i++) c.send({ type: 'client_event', data: { project_id: 'ce-4', event: 'typing', payload: { i } } });
      expect((await c.waitForMessage((m) => m.type === 'error')).data.code).toBe('rate_limited');
      await waitFor(() => on('ws.client.ce-4.typing').length >= 2, 10_000, 'the admitted events');
      expect(on('ws.client.ce-4.typing').length).toBeLessThan(5);
    } finally {
      await limited.stop();
    }
  });
});
