/**
 * The connection protocol against a real sidecar and nats-server: authentication paths, every
 * client message of the contract's table, malformed and oversized input, limits, heartbeat.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient, UpgradeRejectedError, type TestClient } from '../helpers/ws-client.js';

let nats: TestNats;
let side: TestSidecar;

beforeAll(async () => {
  nats = await startTestNats();
  side = await startTestSidecar(nats.url, { authTimeout: 300, maxErrors: 5 });
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await side?.stop();
  await nats?.cleanup();
});

async function authed(sub = 'alice', projects: string[] | undefined = ['p1', 'p2']): Promise<TestClient> {
  const c = await connectClient(`${side.wsUrl}?token=${await side.token(sub, { projects })}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  return c;
}

async function rejected(url: string, headers?: Record<string, string>): Promise<UpgradeRejectedError> {
  const err = await connectClient(url, { headers }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UpgradeRejectedError);
  return err as UpgradeRejectedError;
}

describe('authentication', () => {
  it('accepts a query-string token and sends auth_success with user and connection ids first', async () => {
    const c = await connectClient(`${side.wsUrl}?token=${await side.token('alice')}`);
    const first = await c.waitForMessage();
    expect(first.type).toBe('auth_success');
    expect(first.data.user_id).toBe('alice');
    expect(first.data.connection_id).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(typeof first.timestamp).toBe('string');
    expect(new Date(first.timestamp).toISOString()).toBe(first.timestamp);
    expect(typeof first.message_id).toBe('string');
  });

  it('accepts an Authorization: Bearer token on the upgrade', async () => {
    const c = await connectClient(side.wsUrl, { headers: { Authorization: `Bearer ${await side.token('bob')}` } });
    expect((await c.waitForMessage()).type).toBe('auth_success');
  });

  it('with a token on the upgrade, answers frames sent right after open only after auth_success, in order', async () => {
    const clients = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        const token = await side.token(`early-${i}`);
        const c = await connectClient(`${side.wsUrl}?token=${token}`);
        // Sent the moment the socket opens, before the server can have finished authenticating.
        c.send({ type: 'subscription', data: { action: 'subscribe', project_id: `early-${i}` } });
        c.send({ type: 'ping' });
        c.send({ type: 'auth', data: { token } }); // a refresh, since it comes after the handshake's auth
        return c;
      }),
    );
    for (const c of clients) {
      const frames = await c.waitForMessages(4, (m) => m.seq === undefined);
      expect(frames.map((m) => m.type)).toEqual(['auth_success', 'subscription', 'pong', 'auth_success']);
      expect(frames[1].data.action).toBe('subscribed');
    }
  });

  it('refuses the upgrade with HTTP 401 for a bad, forged or expired handshake token', async () => {
    const forged = (await side.token('alice')).slice(0, -4) + 'AAAA';
    const expired = await side.token('alice', { expiresIn: -3600 });
    for (const token of ['not-a-jwt', forged, expired]) {
      const err = await rejected(`${side.wsUrl}?token=${encodeURIComponent(token)}`);
      expect(err.status).toBe(401);
      expect(JSON.parse(err.body).error).toBeTruthy();
    }
    expect((await rejected(side.wsUrl, { Authorization: 'Bearer nope' })).status).toBe(401);
  });

  it('refuses upgrades on other paths with 404', async () => {
    expect((await rejected(side.wsUrl.replace('/ws/connect', '/ws/other'))).status).toBe(404);
  });

  it('asks for auth without a token, then accepts a first-message auth', async () => {
    const c = await connectClient(side.wsUrl);
    expect((await c.waitForMessage()).type).toBe('auth_required');
    c.send({ type: 'auth', data: { token: await side.token('carol') } });
    const ok = await c.waitForMessage();
    expect(ok.type).toBe('auth_success');
    expect(ok.data.user_id).toBe('carol');
  });

  it('answers a bad first-message token with auth_failed and closes 4401', async () => {
    const c = await connectClient(side.wsUrl);
    await c.waitForMessage((m) => m.type === 'auth_required');
    c.send({ type: 'auth', data: { token: 'garbage' } });
    expect((await c.waitForMessage()).type).toBe('auth_failed');
    expect((await c.waitForClose()).code).toBe(4401);
  });

  it('closes 4408 when no auth arrives within authTimeout', async () => {
    const c = await connectClient(side.wsUrl);
    await c.waitForMessage((m) => m.type === 'auth_required');
    expect((await c.waitForClose(3000)).code).toBe(4408);
  });

  it('answers any other message before auth with an unauthorized error and keeps the socket', async () => {
    const c = await connectClient(side.wsUrl);
    await c.waitForMessage((m) => m.type === 'auth_required');
    c.send({ type: 'ping' });
    const err = await c.waitForMessage();
    expect(err).toMatchObject({ type: 'error', data: { code: 'unauthorized' } });
    c.send({ type: 'auth', data: { token: await side.token('dave') } });
    expect((await c.waitForMessage()).type).toBe('auth_success');
  });

  it('refreshes the token with auth for the same sub, and refuses another sub without closing', async () => {
    const c = await authed('erin');
    c.send({ type: 'auth', data: { token: await side.token('erin') } });
    expect((await c.waitForMessage()).type).toBe('auth_success');
    c.send({ type: 'auth', data: { token: await side.token('mallory') } });
    expect((await c.waitForMessage()).type).toBe('auth_failed');
    c.send({ type: 'ping' });
    expect((await c.waitForMessage()).type).toBe('pong');
  });
});

describe('client messages', () => {
  it('subscribes and unsubscribes to an allowed project', async () => {
    const c = await authed();
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'p1' } });
    expect(await c.waitForMessage()).toMatchObject({ type: 'subscription', data: { action: 'subscribed', project_id: 'p1' } });
    c.send({ type: 'subscription', data: { action: 'unsubscribe', project_id: 'p1' } });
    expect(await c.waitForMessage()).toMatchObject({ type: 'subscription', data: { action: 'unsubscribed', project_id: 'p1' } });
  });

  it('refuses a project outside the token claims with forbidden', async () => {
    const c = await authed('alice', ['p1']);
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'secret' }, message_id: 'm-7' });
    const err = await c.waitForMessage();
    expect(err).toMatchObject({ type: 'error', data: { code: 'forbidden', project_id: 'secret', in_reply_to: 'm-7' } });
  });

  it('refuses project ids that are not NATS-safe tokens', async () => {
    for (const project_id of ['a.b', '*', '>', '', 'x'.repeat(129)]) {
      const c = await authed('alice', ['*']); // a fresh socket each: the error budget is 5
      c.send({ type: 'subscription', data: { action: 'subscribe', project_id } });
      expect((await c.waitForMessage()).data.code).toBe('invalid_message');
    }
  });

  it('answers ping with pong, in request order', async () => {
    const c = await authed();
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'p2' } });
    c.send({ type: 'ping', data: { n: 1 } });
    expect((await c.waitForMessage()).type).toBe('subscription');
    expect((await c.waitForMessage()).type).toBe('pong');
  });

  it('accepts an ack without answering', async () => {
    const c = await authed();
    c.send({ type: 'ack', data: { seq: 1 } });
    c.send({ type: 'ping' });
    expect((await c.waitForMessage()).type).toBe('pong');
  });

  it('answers malformed messages with invalid_message and keeps the connection', async () => {
    const bad = ['not json', '[1,2]', '"str"', 'null', '{"type":42}', '{"type":"launch","data":{}}', '{"type":"ack","data":{"seq":"x"}}', '{"type":"subscription","data":{"action":"dance","project_id":"p1"}}'];
    for (const frame of bad) {
      const c = await authed(); // a fresh socket each: the error budget is 5
      c.send(frame);
      const err = await c.waitForMessage();
      expect(err.type).toBe('error');
      expect(err.data.code).toBe('invalid_message');
      expect(err.data.message).toBeTruthy();
      c.send({ type: 'ping' });
      expect((await c.waitForMessage()).type).toBe('pong');
    }
  });

  it('answers a binary frame with invalid_message', async () => {
    const c = await authed();
    c.ws.send(Buffer.from([1, 2, 3]));
    expect((await c.waitForMessage()).data.code).toBe('invalid_message');
  });

  it('closes with 1009 when a frame is over maxMessageSize (512 bytes)', async () => {
    const c = await authed();
    c.send({ type: 'ping', data: { pad: 'x'.repeat(600) } });
    expect((await c.waitForClose()).code).toBe(1009);
  });

  it('accepts a frame of exactly maxMessageSize', async () => {
    const c = await authed();
    const base = JSON.stringify({ type: 'ping', data: { pad: '' } });
    c.send(JSON.stringify({ type: 'ping', data: { pad: 'x'.repeat(512 - base.length) } }));
    expect((await c.waitForMessage()).type).toBe('pong');
  });

  it('closes with 4429 after maxErrors errors', async () => {
    const c = await authed();
    for (let i = 0; i < 5; i++) c.send('nope');
    const errors = await c.waitForMessages(5, (m) => m.type === 'error');
    expect(errors).toHaveLength(5);
    expect((await c.waitForClose()).code).toBe(4429);
  });

  it('answers requests over 10/s (burst 20) with rate_limited', async () => {
    const c = await authed();
    for (let i = 0; i < 22; i++) c.send({ type: 'ping' });
    const pongs = await c.waitForMessages(20, (m) => m.type === 'pong');
    expect(pongs).toHaveLength(20);
    expect((await c.waitForMessage((m) => m.type === 'error')).data.code).toBe('rate_limited');
  });
});

describe('heartbeat', () => {
  it('terminates a connection that does not answer pings within pongTimeout', async () => {
    const hb = await startTestSidecar(nats.url, { pingInterval: 100, pongTimeout: 400 });
    try {
      const token = await hb.token('alice');
      const silent = new WebSocket(`${hb.wsUrl}?token=${token}`, { autoPong: false });
      const responsive = await connectClient(`${hb.wsUrl}?token=${token}`);
      const pinged = new Promise<void>((ok) => silent.once('ping', () => ok()));
      const closed = new Promise<number>((ok) => silent.once('close', (code) => ok(code)));
      await pinged;
      expect(await closed).toBe(1006); // terminated without a closing handshake
      responsive.send({ type: 'ping' });
      expect((await responsive.waitForMessage((m) => m.type === 'pong')).type).toBe('pong');
      expect(responsive.ws.readyState).toBe(WebSocket.OPEN);
    } finally {
      await hb.stop();
    }
  });
});

describe('a failed authentication setup', () => {
  it('closes the connection with 1011 after an auth message when the NATS connection is gone', async () => {
    const own = await startTestSidecar(nats.url);
    try {
      const c = await connectClient(own.wsUrl);
      await c.waitForMessage((m) => m.type === 'auth_required');
      await own.sidecar.broker.nc.close(); // joining the user's topics now fails
      c.send({ type: 'auth', data: { token: await own.token('zed') } });
      expect(await c.waitForClose()).toEqual({ code: 1011, reason: 'internal error' });
      expect(c.messages.map((m) => m.type)).toEqual(['auth_required']);
      expect(own.sidecar.hub.connections.size).toBe(0);
    } finally {
      await own.stop();
    }
  });
});
