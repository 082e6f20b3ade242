/**
 * Project authorization modes against a real nats-server: `request` with a backend responder in
 * the test (allow, deny, timeout, cache), `open`, and revocation on a control subject reaching the
 * user's connections on every instance.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { AuthorizationRequest } from '../../src/nats/project-authorizer.js';
import { publishRevocation } from '../../src/nats/project-authorizer.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { event, publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

const REQUEST_MODE = { projectAuthorization: 'request', authorizationTimeout: '1500ms', authorizationCacheTTL: '1m' };

let nats: TestNats;
let a: TestSidecar;
let b: TestSidecar;
let nc: NatsConnection;
let responder: Subscription;
/** Every request the backend received, in order. */
const asked: AuthorizationRequest[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
  // The backend: allows projects named ok-*, denies the rest, and never answers for slow-*.
  responder = nc.subscribe('ws.authz.project', {
    callback: (_err, msg) => {
      const req = msg.json<AuthorizationRequest>();
      asked.push(req);
      if (req.project_id.startsWith('slow-')) return;
      msg.respond(JSON.stringify(req.project_id.startsWith('ok-') ? { allow: true } : { allow: false, reason: 'not a member' }));
    },
  });
  await nc.flush();
  [a, b] = await Promise.all([startTestSidecar(nats.url, REQUEST_MODE), startTestSidecar(nats.url, REQUEST_MODE)]);
});
afterEach(() => closeAllClients());
afterAll(async () => {
  responder?.unsubscribe();
  await nc?.close();
  await Promise.all([a?.stop(), b?.stop()]);
  await nats?.cleanup();
});

async function client(side: TestSidecar, sub: string, projects: string[] = []): Promise<TestClient> {
  const c = await connectClient(`${side.wsUrl}?token=${await side.token(sub, { projects, roles: ['member'] })}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  return c;
}

/** The answer to a subscribe: `subscription` or `error`. */
async function subscribe(c: TestClient, project_id: string, timeoutMs?: number): Promise<any> {
  c.send({ type: 'subscription', data: { action: 'subscribe', project_id }, message_id: `sub-${project_id}` });
  return c.waitForMessage((m) => m.type === 'subscription' || m.type === 'error', timeoutMs);
}

const callsFor = (user: string, project: string) => asked.filter((r) => r.user_id === user && r.project_id === project).length;

describe('request mode', () => {
  it('asks the backend with user, project and claims, and subscribes when it allows', async () => {
    const c = await client(a, 'alice'); // the token claims no project at all: the backend decides
    expect((await subscribe(c, 'ok-1')).data).toMatchObject({ action: 'subscribed', project_id: 'ok-1' });
    const req = asked.find((r) => r.user_id === 'alice' && r.project_id === 'ok-1')!;
    expect(req.claims).toMatchObject({ sub: 'alice', roles: ['member'], projects: [] });
    expect(req.instance_id).toBe(a.sidecar.instanceId);
  });

  it('refuses with forbidden and the backend\'s reason when it denies', async () => {
    const c = await client(a, 'bob', ['*']); // claims do not matter in request mode
    const err = await subscribe(c, 'private-1');
    expect(err.data).toMatchObject({ code: 'forbidden', project_id: 'private-1', in_reply_to: 'sub-private-1' });
    expect(err.data.message).toMatch(/not a member/);
  });

  it('refuses with forbidden when the backend does not answer in time, and asks again next time', async () => {
    const c = await client(a, 'carol');
    const err = await subscribe(c, 'slow-1', 10_000);
    expect(err.data).toMatchObject({ code: 'forbidden', project_id: 'slow-1' });
    expect(err.data.message).toMatch(/did not answer/);
    await subscribe(c, 'slow-1', 10_000);
    expect(callsFor('carol', 'slow-1')).toBe(2); // a timeout is not cached
  });

  it('reuses a cached answer: a second connection of the user does not ask again', async () => {
    const first = await client(a, 'dave');
    expect((await subscribe(first, 'ok-cache')).data.action).toBe('subscribed');
    const second = await client(a, 'dave');
    expect((await subscribe(second, 'ok-cache')).data.action).toBe('subscribed');
    const denied = await client(a, 'dave');
    await subscribe(denied, 'no-cache');
    expect((await subscribe(denied, 'no-cache')).data.code).toBe('forbidden');
    expect(callsFor('dave', 'ok-cache')).toBe(1);
    expect(callsFor('dave', 'no-cache')).toBe(1); // denials are cached too
  });

  it('applies to presence queries', async () => {
    const c = await client(b, 'erin');
    c.send({ type: 'presence', data: { project_id: 'private-2' } });
    expect((await c.waitForMessage((m) => m.type === 'error')).data.code).toBe('forbidden');
    c.send({ type: 'presence', data: { project_id: 'ok-2' } });
    expect((await c.waitForMessage((m) => m.type === 'presence')).data).toEqual({ project_id: 'ok-2', users: [] });
  });
});

describe('revocation', () => {
  it('unsubscribes the user from the project on every instance and forgets the cached answer', async () => {
    const project = 'ok-revoke';
    const onA = await client(a, 'frank');
    const onB = await client(b, 'frank');
    const other = await client(b, 'gina');
    for (const c of [onA, onB, other]) expect((await subscribe(c, project)).data.action).toBe('subscribed');
    const askedBefore = callsFor('frank', project);

    publishRevocation(nc, 'ws', 'frank', project);
    for (const c of [onA, onB]) {
      const m = await c.waitForMessage((x) => x.type === 'subscription' && x.data.action === 'unsubscribed');
      expect(m.data).toEqual({ action: 'unsubscribed', project_id: project, reason: 'revoked' });
    }
    await nc.request(`ws.project.${project}`, event('after_revoke'));
    await other.waitForMessage((m) => m.type === 'after_revoke'); // gina still subscribed
    nc.publish('ws.user.frank', event('marker'));
    for (const c of [onA, onB]) {
      await c.waitForMessage((m) => m.type === 'marker');
      expect(c.messages.some((m) => m.type === 'after_revoke')).toBe(false);
    }
    // The cached allow is gone: subscribing again asks the backend again.
    expect((await subscribe(onA, project)).data.action).toBe('subscribed');
    expect(callsFor('frank', project)).toBe(askedBefore + 1);
  });
});

describe('open mode', () => {
  it('lets any authenticated user subscribe to any project', async () => {
    const open = await startTestSidecar(nats.url, { projectAuthorization: 'open' });
    try {
      const c = await client(open, 'hank', []);
      expect((await subscribe(c, 'anything')).data).toMatchObject({ action: 'subscribed', project_id: 'anything' });
      expect(callsFor('hank', 'anything')).toBe(0);
    } finally {
      await open.stop();
    }
  });
});
