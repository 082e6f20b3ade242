/**
 * The HTTP API of one sidecar against a real nats-server: public routes, the admin guard on every
 * admin route, body validation (400/413), unknown routes (404), metrics in JSON and Prometheus
 * text, admin messages stored and delivered, and local disconnects.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { api, parsePrometheus, sampleValue, type Sample } from '../helpers/http.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

const BODY_LIMIT = 1024;

let nats: TestNats;
let side: TestSidecar;
let admin: string;
let plain: string;

beforeAll(async () => {
  nats = await startTestNats();
  side = await startTestSidecar(nats.url, { apiBodyLimit: BODY_LIMIT });
  admin = await side.token('root', { roles: ['admin'] });
  plain = await side.token('someone', { roles: ['user'] });
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await side?.stop();
  await nats?.cleanup();
});

const call = (method: string, path: string, opts: Parameters<typeof api>[3] = {}) => api(side.httpUrl, method, path, opts);
const asAdmin = (method: string, path: string, body?: unknown) => call(method, path, { token: admin, body });

async function client(sub: string, projects: string[] = ['*']): Promise<TestClient> {
  const c = await connectClient(`${side.wsUrl}?token=${await side.token(sub, { projects })}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  return c;
}

async function subscribed(sub: string, project: string): Promise<TestClient> {
  const c = await client(sub);
  c.send({ type: 'subscription', data: { action: 'subscribe', project_id: project } });
  await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
  return c;
}

const P = '/api/v1/websocket';
const event = { type: 'task_created', data: { id: 't1' } };
const ADMIN_ROUTES: [string, string, unknown?][] = [
  ['GET', `${P}/metrics`],
  ['GET', `${P}/stats`],
  ['GET', `${P}/connections`],
  ['GET', `${P}/connections/count`],
  ['GET', `${P}/projects/p1/connections/count`],
  ['GET', `${P}/users/u1/connections/count`],
  ['POST', `${P}/broadcast`, event],
  ['POST', `${P}/users/u1/message`, event],
  ['POST', `${P}/projects/p1/message`, event],
  ['POST', `${P}/users/u1/disconnect`],
  ['POST', `${P}/projects/p1/disconnect`],
  ['GET', `${P}/projects/p1/presence`],
  ['POST', `${P}/projects/p1/revoke`, { user_id: 'u1' }],
];

/** An error answer: JSON with a single `error` string, nothing internal. */
function expectErrorBody(body: unknown): void {
  expect(body).toEqual({ error: expect.any(String) });
  expect(JSON.stringify(body)).not.toMatch(/at .*\.(ts|js):\d+|stack/i);
}

describe('public routes', () => {
  it('answers /healthz, /readyz and /api/v1/websocket/health without a token, naming the instance', async () => {
    const healthz = await call('GET', '/healthz');
    expect(healthz.status).toBe(200);
    expect(healthz.body).toMatchObject({ status: 'ok', instance_id: side.sidecar.instanceId });
    expect(healthz.headers.get('x-sidecar-instance')).toBe(side.sidecar.instanceId);

    const readyz = await call('GET', '/readyz');
    expect(readyz.status).toBe(200);
    expect(readyz.body).toMatchObject({ ready: true, draining: false, nats: true, stream: true });

    const health = await call('GET', `${P}/health`);
    expect(health.status).toBe(200);
    expect(health.body).toMatchObject({
      status: 'ok',
      instance_id: side.sidecar.instanceId,
      nats: { connected: true },
      jetstream: { stream_ready: true },
    });
  });

  it('serves /metrics as Prometheus text without a token', async () => {
    const res = await call('GET', '/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const samples = parsePrometheus(res.text);
    expect(samples.length).toBeGreaterThan(20);
    for (const s of samples) expect(s.labels.instance_id).toBe(side.sidecar.instanceId);
  });
});

describe('admin guard', () => {
  it('answers every admin route 401 without a token or with a bad, forged or expired one', async () => {
    const forged = admin.slice(0, -4) + (admin.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    const expired = await side.token('root', { roles: ['admin'], expiresIn: -3600 });
    for (const [method, path, body] of ADMIN_ROUTES) {
      const variants: Record<string, string>[] = [
        {},
        { Authorization: 'Bearer nope' },
        { Authorization: `Bearer ${forged}` },
        { Authorization: `Bearer ${expired}` },
        { Authorization: `Basic ${admin}` },
      ];
      for (const headers of variants) {
        const res = await call(method, path, { headers, body });
        expect(res.status, `${method} ${path} ${JSON.stringify(headers).slice(0, 40)}`).toBe(401);
        expectErrorBody(res.body);
        expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
      }
    }
  });

  it('answers every admin route 403 for a valid token without the admin role', async () => {
    for (const [method, path, body] of ADMIN_ROUTES) {
      const res = await call(method, path, { token: plain, body });
      expect(res.status, `${method} ${path}`).toBe(403);
      expectErrorBody(res.body);
    }
  });

  it('answers every admin route 200 for an admin token', async () => {
    for (const [method, path, body] of ADMIN_ROUTES) {
      const res = await call(method, path, { token: admin, body });
      expect(res.status, `${method} ${path}: ${res.text}`).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    }
  });
});

describe('bad requests', () => {
  it('answers unknown routes 404 with JSON, with or without a token, and a wrong method 405', async () => {
    for (const path of ['/nope', `${P}/nope`, `${P}/users/u1`, '/api/v2/websocket/stats']) {
      for (const token of [undefined, admin]) {
        const res = await call('GET', path, { token });
        expect(res.status, path).toBe(404);
        expectErrorBody(res.body);
      }
    }
    const wrong = await asAdmin('DELETE', `${P}/broadcast`);
    expect(wrong.status).toBe(405);
    expectErrorBody(wrong.body);
  });

  it('answers 400 with {"error"} to a body that is not JSON or has bad fields', async () => {
    const bad: [string, unknown][] = [
      [`${P}/broadcast`, 'not json'],
      [`${P}/broadcast`, '{"type":'],
      [`${P}/broadcast`, [1, 2]],
      [`${P}/broadcast`, 'null'],
      [`${P}/broadcast`, { data: {} }],
      [`${P}/broadcast`, { type: '', data: {} }],
      [`${P}/broadcast`, { type: 'x', data: [] }],
      [`${P}/broadcast`, { type: 'x', data: 'text' }],
      [`${P}/broadcast`, { type: 'x'.repeat(129), data: {} }],
      [`${P}/users/u1/message`, { type: 'x', data: {}, message_id: 'has space' }],
      [`${P}/projects/p1/message`, { type: 42, data: {} }],
      [`${P}/users/u1/disconnect`, { reason: 42 }],
      [`${P}/users/u1/disconnect`, { reason: 'x'.repeat(101) }],
      [`${P}/users/u1/disconnect`, { reason: 'ü'.repeat(51) }], // 102 bytes: a close reason is counted in bytes
      [`${P}/projects/p1/disconnect`, 'nope'],
    ];
    for (const [path, body] of bad) {
      const res = await asAdmin('POST', path, body);
      expect(res.status, `${path} ${JSON.stringify(body)}`).toBe(400);
      expectErrorBody(res.body);
    }
    // An empty body is fine for a disconnect (no reason), not for a message.
    expect((await asAdmin('POST', `${P}/users/u1/disconnect`)).status).toBe(200);
    expect((await asAdmin('POST', `${P}/users/u1/message`)).status).toBe(400);
  });

  it('answers 400 to ids that are not NATS-safe tokens, and to a bad scope or limit', async () => {
    for (const [method, path] of [
      ['GET', `${P}/users/a.b/connections/count`],
      ['GET', `${P}/projects/${'x'.repeat(129)}/connections/count`],
      ['POST', `${P}/users/%2A/message`],
      ['POST', `${P}/projects/a%20b/message`],
      ['POST', `${P}/users/%3E/disconnect`],
      ['POST', `${P}/projects/a.b/disconnect`],
      ['GET', `${P}/connections/count?scope=galaxy`],
      ['GET', `${P}/connections?limit=0`],
      ['GET', `${P}/connections?limit=ten`],
      ['GET', `${P}/connections?user_id=a.b`],
    ]) {
      const res = await asAdmin(method, path, method === 'POST' ? event : undefined);
      expect(res.status, `${method} ${path}`).toBe(400);
      expectErrorBody(res.body);
    }
  });

  it('answers 413 to a body over apiBodyLimit, whether its length is declared or not', async () => {
    const big = { type: 'x', data: { pad: 'x'.repeat(BODY_LIMIT) } };
    const declared = await asAdmin('POST', `${P}/broadcast`, big);
    expect(declared.status).toBe(413);
    expectErrorBody(declared.body);

    const text = JSON.stringify(big);
    const chunked = await fetch(side.httpUrl + `${P}/broadcast`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${admin}`, 'Content-Type': 'application/json' },
      body: new ReadableStream({
        start(controller) {
          for (let i = 0; i < text.length; i += 256) controller.enqueue(new TextEncoder().encode(text.slice(i, i + 256)));
          controller.close();
        },
      }),
      duplex: 'half',
    });
    expect(chunked.status).toBe(413);
    expectErrorBody(await chunked.json());

    // Just under the limit is accepted.
    const fits = { type: 'x', data: { pad: '' } };
    fits.data.pad = 'x'.repeat(BODY_LIMIT - JSON.stringify(fits).length);
    expect((await asAdmin('POST', `${P}/broadcast`, fits)).status).toBe(200);
  });
});

describe('admin messages', () => {
  it('publishes a project message into the stream and answers with its seq, which subscribers receive', async () => {
    const c = await subscribed('msg-a', 'pm1');
    const res = await asAdmin('POST', `${P}/projects/pm1/message`, { type: 'task_created', data: { id: 7 } });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ ok: true, seq: expect.any(Number), subject: 'ws.project.pm1', message_id: expect.any(String) });
    const got = await c.waitForMessage((m) => m.type === 'task_created');
    expect(got).toMatchObject({ data: { id: 7 }, seq: res.body.seq, project_id: 'pm1', message_id: res.body.message_id });

    // Stored: a client resuming from before it gets it again from the stream.
    const late = await client('msg-b');
    late.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'pm1', since: res.body.seq - 1 } });
    expect(await late.waitForMessage((m) => m.type === 'task_created')).toMatchObject({ seq: res.body.seq });
  });

  it('sends a direct message to every connection of the user and a broadcast to everyone', async () => {
    const [a1, a2, b] = await Promise.all([client('dm-a'), client('dm-a'), client('dm-b')]);
    const direct = await asAdmin('POST', `${P}/users/dm-a/message`, { type: 'note', data: { text: 'hi' } });
    expect(direct.body.subject).toBe('ws.user.dm-a');
    for (const c of [a1, a2]) expect(await c.waitForMessage((m) => m.type === 'note')).toMatchObject({ seq: direct.body.seq });

    const all = await asAdmin('POST', `${P}/broadcast`, { type: 'maintenance', data: { in: '5m' } });
    expect(all.body.subject).toBe('ws.broadcast');
    for (const c of [a1, a2, b]) expect(await c.waitForMessage((m) => m.type === 'maintenance')).toMatchObject({ seq: all.body.seq });
    expect(b.messages.some((m) => m.type === 'note')).toBe(false);
  });

  it('deduplicates on message_id: the same id twice is stored once', async () => {
    const body = { type: 'task_updated', data: { id: 1 }, message_id: `dedupe-${Date.now()}` };
    const first = await asAdmin('POST', `${P}/projects/pd/message`, body);
    const again = await asAdmin('POST', `${P}/projects/pd/message`, body);
    expect(again.body.seq).toBe(first.body.seq);
    expect(again.body.message_id).toBe(body.message_id);
  });
});

describe('connections, counts and disconnects on one instance', () => {
  it('lists connections with id, user, projects, remote address, connected since and messages in/out', async () => {
    const c = await subscribed('lister', 'pl1');
    c.send({ type: 'ping' });
    await c.waitForMessage((m) => m.type === 'pong');
    const res = await asAdmin('GET', `${P}/connections?user_id=lister`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ count: 1, scope: 'cluster', truncated: false, missing: [] });
    const [row] = res.body.connections;
    expect(row).toMatchObject({
      id: expect.stringMatching(/^[A-Za-z0-9_-]+$/),
      user_id: 'lister',
      state: 'open',
      projects: ['pl1'],
      remote_address: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
      instance_id: side.sidecar.instanceId,
    });
    expect(new Date(row.connected_at).toISOString()).toBe(row.connected_at);
    expect(row.messages_in).toBe(2);
    expect(row.messages_out).toBeGreaterThanOrEqual(3); // auth_success, subscribed, pong

    const limited = await asAdmin('GET', `${P}/connections?limit=1`);
    expect(limited.body.connections).toHaveLength(1);
  });

  it('counts connections by user and by project', async () => {
    await Promise.all([subscribed('counter', 'pc1'), subscribed('counter', 'pc2'), client('counter')]);
    expect((await asAdmin('GET', `${P}/users/counter/connections/count`)).body).toMatchObject({ count: 3 });
    expect((await asAdmin('GET', `${P}/projects/pc1/connections/count`)).body).toMatchObject({ count: 1 });
    expect((await asAdmin('GET', `${P}/projects/pc-none/connections/count?scope=local`)).body).toMatchObject({
      count: 0,
      scope: 'local',
    });
  });

  it('disconnects a user with 4010 and the given reason, leaving other users connected', async () => {
    const [x1, x2, y] = await Promise.all([client('kick-x'), client('kick-x'), client('kick-y')]);
    const res = await asAdmin('POST', `${P}/users/kick-x/disconnect`, { reason: 'account suspended' });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ disconnected: 2, missing: [] });
    for (const c of [x1, x2]) expect(await c.waitForClose()).toEqual({ code: 4010, reason: 'account suspended' });
    y.send({ type: 'ping' });
    expect((await y.waitForMessage((m) => m.type === 'pong')).type).toBe('pong');
  });

  it('disconnects every subscriber of a project', async () => {
    const [s1, s2, other] = await Promise.all([subscribed('pk-a', 'pk1'), subscribed('pk-b', 'pk1'), subscribed('pk-c', 'pk2')]);
    const res = await asAdmin('POST', `${P}/projects/pk1/disconnect`);
    expect(res.body.disconnected).toBe(2);
    for (const c of [s1, s2]) expect((await c.waitForClose()).code).toBe(4010);
    other.send({ type: 'ping' });
    expect((await other.waitForMessage((m) => m.type === 'pong')).type).toBe('pong');
  });
});

describe('presence and revocation', () => {
  it('lists the users present in a project', async () => {
    await subscribed('pres-a', 'pres-1');
    await subscribed('pres-b', 'pres-1');
    await side.sidecar.presence.settled(); // the KV writes follow the subscribed answers
    const res = await asAdmin('GET', `${P}/projects/pres-1/presence`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ project_id: 'pres-1', users: ['pres-a', 'pres-b'], count: 2 });
  });

  it('revokes a project from a user: the user is unsubscribed with reason revoked', async () => {
    const c = await subscribed('rev-a', 'rev-1');
    const res = await asAdmin('POST', `${P}/projects/rev-1/revoke`, { user_id: 'rev-a' });
    expect(res.status).toBe(200);
    const m = await c.waitForMessage((x) => x.type === 'subscription' && x.data.action === 'unsubscribed');
    expect(m.data).toMatchObject({ project_id: 'rev-1', reason: 'revoked' });
    expect((await asAdmin('POST', `${P}/projects/rev-1/revoke`, { user_id: 'a.b' })).status).toBe(400);
  });
});

describe('metrics', () => {
  it('answers the seed JSON shape, and its numbers follow traffic', async () => {
    const c = await client('metric-user');
    c.send('not json');
    await c.waitForMessage((m) => m.type === 'error');
    const res = await asAdmin('GET', `${P}/metrics`);
    expect(res.status).toBe(200);
    const m = res.body;
    for (const key of ['active_connections', 'total_connections', 'messages_sent', 'messages_received', 'broadcasts_sent']) {
      expect(typeof m.hub[key], key).toBe('number');
    }
    expect(m.hub.active_connections).toBeGreaterThanOrEqual(1);
    expect(m.hub.messages_received).toBeGreaterThanOrEqual(1);
    expect(m.middleware.rate_limiter).toMatchObject({ active_limiters: expect.any(Number), requests_per_second: 10 });
    expect(m.middleware.error_handler.connections_with_errors).toBeGreaterThanOrEqual(1);
    expect(m.middleware.error_handler.total_errors).toBeGreaterThanOrEqual(1);
    expect(m.offline_messages).toEqual({ total_messages: expect.any(Number), users_with_messages: expect.any(Number) });
    expect(m.instance_id).toBe(side.sidecar.instanceId);
    expect(m.instances).toHaveLength(1);
  });

  it('counts direct messages held for users in offline_messages', async () => {
    const before = (await asAdmin('GET', `${P}/metrics?scope=local`)).body.offline_messages;
    await asAdmin('POST', `${P}/users/offline-only-user/message`, { type: 'note', data: {} });
    await asAdmin('POST', `${P}/users/offline-only-user/message`, { type: 'note', data: {} });
    const after = (await asAdmin('GET', `${P}/metrics?scope=local`)).body.offline_messages;
    expect(after.total_messages).toBe(before.total_messages + 2);
    expect(after.users_with_messages).toBe(before.users_with_messages + 1);
  });

  it('exposes Prometheus counters that move with traffic', async () => {
    const scrape = async (): Promise<Sample[]> => parsePrometheus((await call('GET', '/metrics')).text);
    const before = await scrape();
    const c = await subscribed('prom-user', 'prom1');
    c.send({ type: 'ping' });
    await c.waitForMessage((m) => m.type === 'pong');
    await asAdmin('POST', `${P}/projects/prom1/message`, { type: 'task_created', data: {} });
    await c.waitForMessage((m) => m.type === 'task_created');
    const after = await scrape();
    const grew = (name: string) => (sampleValue(after, name) ?? 0) - (sampleValue(before, name) ?? 0);
    expect(grew('sidecar_connections_total')).toBeGreaterThanOrEqual(1);
    expect(grew('sidecar_messages_received_total')).toBeGreaterThanOrEqual(2);
    expect(grew('sidecar_messages_sent_total')).toBeGreaterThanOrEqual(4);
    expect(grew('sidecar_events_routed_total')).toBeGreaterThanOrEqual(1);
    expect(grew('sidecar_nats_events_received_total')).toBeGreaterThanOrEqual(1);
    expect(grew('sidecar_delivery_latency_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(sampleValue(after, 'sidecar_connections')).toBeGreaterThanOrEqual(1);
    expect(sampleValue(after, 'sidecar_nats_connected')).toBe(1);
    expect(sampleValue(after, 'sidecar_info')).toBe(1);
    expect(sampleValue(after, 'sidecar_delivery_latency_seconds_bucket', { le: '+Inf' })).toBe(
      sampleValue(after, 'sidecar_delivery_latency_seconds_count'),
    );
  });
});
