/**
 * History queries against a real nats-server: the latest page, paging backwards and forwards
 * (also across a truncated window and while events are published), the reply size cap, an epoch
 * change, the HTTP route, authorization in each mode, and hostile parameters.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import type { ConfigInput } from '../../src/config.js';
import { api } from '../helpers/http.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { storedPublisher, waitFor, type StoredPublisher } from '../helpers/streams.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

let nats: TestNats;
let nc: NatsConnection;
let pub: StoredPublisher;
let side: TestSidecar;
const extra: TestSidecar[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
  pub = storedPublisher(nc);
  side = await startTestSidecar(nats.url);
});
afterEach(() => closeAllClients());
afterAll(async () => {
  for (const s of extra.splice(0).reverse()) await s.stop();
  await side?.stop();
  await nc?.close();
  await nats?.cleanup();
});

/** A sidecar on its own stream and prefix, so its limits do not change the shared stream's. */
async function sidecarWith(prefix: string, overrides: ConfigInput): Promise<TestSidecar> {
  const s = await startTestSidecar(nats.url, { subjectPrefix: prefix, streamName: prefix.toUpperCase(), ...overrides });
  extra.push(s);
  return s;
}

async function client(s: TestSidecar, sub: string, projects: string[] = ['*']): Promise<TestClient> {
  const c = await connectClient(`${s.wsUrl}?token=${await s.token(sub, { projects })}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  return c;
}

let nextId = 0;
/** The answer to a history request: `history`, or the `error` about it. */
async function history(c: TestClient, data: Record<string, unknown>): Promise<any> {
  const id = `h${++nextId}`;
  c.send({ type: 'history', data, message_id: id });
  return c.waitForMessage((m) => m.type === 'history' || (m.type === 'error' && m.data.in_reply_to === id), 10_000);
}

/** Publish events with data.i = from..to-1 to a subject; returns their seqs. */
async function publishRange(subject: string, from: number, to: number): Promise<number[]> {
  const seqs: number[] = [];
  for (let i = from; i < to; i++) seqs.push(await pub.publish(subject, 'n', { i }));
  return seqs;
}

const indexes = (events: any[]) => events.map((e) => e.data.i);
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => from + k);

describe('history over WebSocket', () => {
  let seqs: number[];
  beforeAll(async () => {
    // Interleaved with another project's events, so the project's seqs are not contiguous.
    seqs = [];
    for (let i = 0; i < 150; i++) {
      seqs.push(await pub.publish('ws.project.h1', 'n', { i }));
      if (i % 3 === 0) await pub.publish('ws.project.h1-other', 'n', { i });
    }
  });

  it('answers the latest 100 by default, ascending, with more=true when older ones exist', async () => {
    const c = await client(side, 'u1');
    const reply = await history(c, { project_id: 'h1' });
    expect(reply.type).toBe('history');
    expect(reply.data).toMatchObject({ project_id: 'h1', epoch: side.sidecar.broker.epoch, more: true });
    expect(indexes(reply.data.events)).toEqual(range(50, 150));
    expect(reply.data.events.map((e: any) => e.seq)).toEqual(seqs.slice(50));
    expect(reply.data.events[0]).toMatchObject({ type: 'n', project_id: 'h1', message_id: expect.any(String), timestamp: expect.any(String) });
  });

  it('pages backwards with before and forwards with after, covering every event once', async () => {
    const c = await client(side, 'u1');
    const back: number[] = [];
    let page = (await history(c, { project_id: 'h1', limit: 40 })).data;
    back.unshift(...indexes(page.events));
    while (page.more) {
      page = (await history(c, { project_id: 'h1', limit: 40, before: page.events[0].seq })).data;
      back.unshift(...indexes(page.events));
    }
    expect(back).toEqual(range(0, 150));

    const forward: number[] = [];
    page = (await history(c, { project_id: 'h1', limit: 70, after: 0 })).data;
    forward.push(...indexes(page.events));
    while (page.more) {
      page = (await history(c, { project_id: 'h1', limit: 70, after: page.events.at(-1).seq })).data;
      forward.push(...indexes(page.events));
    }
    expect(forward).toEqual(range(0, 150));
  });

  it('answers an empty page with more=false past either end and for a project with no events', async () => {
    const c = await client(side, 'u1');
    expect((await history(c, { project_id: 'h1', before: seqs[0] })).data).toMatchObject({ events: [], more: false });
    expect((await history(c, { project_id: 'h1', after: seqs.at(-1) })).data).toMatchObject({ events: [], more: false });
    expect((await history(c, { project_id: 'never-used' })).data).toMatchObject({ project_id: 'never-used', events: [], more: false });
  });

  it('says more=false when the page reaches the first stored event', async () => {
    const c = await client(side, 'u1');
    const reply = await history(c, { project_id: 'h1', limit: 10, before: seqs[10] });
    expect(indexes(reply.data.events)).toEqual(range(0, 10));
    expect(reply.data.more).toBe(false);
  });

  it('refuses bad parameters with invalid_message and keeps the connection', async () => {
    const c = await client(side, 'u1');
    const bad: Record<string, unknown>[] = [
      { project_id: 'h1', limit: 0 },
      { project_id: 'h1', limit: 1001 },
      { project_id: 'h1', limit: 1.5 },
      { project_id: 'h1', before: 'abc' },
      { project_id: 'h1', after: -1 },
      { project_id: 'h1', before: 0 },
      { project_id: 'h1', before: 5, after: 2 },
      { project_id: 'h1', after: 1e300 },
      { project_id: 'bad.id' },
    ];
    for (const data of bad.slice(0, 4)) {
      const reply = await history(c, data);
      expect(reply.type, JSON.stringify(data)).toBe('error');
      expect(reply.data.code).toBe('invalid_message');
    }
    // Four errors are within the error budget (5): the connection still answers.
    expect((await history(c, { project_id: 'h1', limit: 1 })).type).toBe('history');
    const c2 = await client(side, 'u2');
    for (const data of bad.slice(4, 8)) {
      const reply = await history(c2, data);
      expect(reply.data.code, JSON.stringify(data)).toBe('invalid_message');
    }
    const c3 = await client(side, 'u3');
    expect((await history(c3, bad[8])).data.code).toBe('invalid_message');
  });

  it('refuses a project outside the token with forbidden', async () => {
    const c = await client(side, 'u1', ['other']);
    const reply = await history(c, { project_id: 'h1' });
    expect(reply.data).toMatchObject({ code: 'forbidden', project_id: 'h1' });
  });
});

describe('history limits', () => {
  it('pages across a window the per-subject limit truncated', async () => {
    const s = await sidecarWith('ht', { maxStoredMessages: 20 });
    await publishRange('ht.project.p', 0, 50);
    const c = await client(s, 'u1');
    const latest = (await history(c, { project_id: 'p', limit: 15 })).data;
    expect(indexes(latest.events)).toEqual(range(35, 50));
    expect(latest.more).toBe(true);
    const older = (await history(c, { project_id: 'p', limit: 15, before: latest.events[0].seq })).data;
    expect(indexes(older.events)).toEqual(range(30, 35)); // only 20 are kept
    expect(older.more).toBe(false);
    // A cursor from the part that is gone: the stored events after it.
    const after = (await history(c, { project_id: 'p', limit: 100, after: 3 })).data;
    expect(indexes(after.events)).toEqual(range(30, 50));
    expect(after.more).toBe(false);
  });

  it('finds a sparse project\'s events among many others\' in both directions', async () => {
    const s = await sidecarWith('hs', {});
    const mine: number[] = [];
    for (let i = 0; i < 6; i++) {
      mine.push(await pub.publish('hs.project.rare', 'n', { i }));
      await Promise.all(Array.from({ length: 150 }, (_, k) => pub.publish(`hs.project.busy-${k % 7}`, 'n', { k })));
    }
    const c = await client(s, 'u1');
    const latest = (await history(c, { project_id: 'rare', limit: 4 })).data;
    expect(latest.events.map((e: any) => e.seq)).toEqual(mine.slice(2));
    expect(latest.more).toBe(true);
    const older = (await history(c, { project_id: 'rare', limit: 4, before: mine[2] })).data;
    expect(older.events.map((e: any) => e.seq)).toEqual(mine.slice(0, 2));
    expect(older.more).toBe(false);
    const newer = (await history(c, { project_id: 'rare', limit: 3, after: mine[0] })).data;
    expect(newer.events.map((e: any) => e.seq)).toEqual(mine.slice(1, 4));
    expect(newer.more).toBe(true);
  });

  it('counts each history request as one request for the inbound rate limit', async () => {
    const s = await sidecarWith('hq', { requestsPerSecond: 0.01, burstSize: 2 });
    const c = await client(s, 'u1');
    for (let i = 0; i < 3; i++) c.send({ type: 'history', data: { project_id: 'p' } });
    const answers = await c.waitForMessages(3, (m) => m.type === 'history' || m.type === 'error');
    expect(answers.filter((m) => m.type === 'history')).toHaveLength(2);
    expect(answers.find((m) => m.type === 'error').data.code).toBe('rate_limited');
  });

  it('caps the answer at historyMaxBytes and says more', async () => {
    const s = await sidecarWith('hb', { historyMaxBytes: 4096 });
    const pad = 'x'.repeat(900);
    for (let i = 0; i < 12; i++) await pub.publish('hb.project.p', 'big', { i, pad });
    const c = await client(s, 'u1');
    const page = (await history(c, { project_id: 'p', limit: 100 })).data;
    expect(page.more).toBe(true);
    expect(page.events.length).toBeGreaterThan(0);
    expect(page.events.length).toBeLessThan(12);
    expect(Buffer.byteLength(JSON.stringify(page.events))).toBeLessThanOrEqual(4096);
    expect(indexes(page.events)).toEqual(range(12 - page.events.length, 12)); // the newest ones
    // One event bigger than the cap still comes, alone, so paging never stalls.
    await pub.publish('hb.project.huge', 'big', { pad: 'y'.repeat(6000) });
    const huge = (await history(c, { project_id: 'huge' })).data;
    expect(huge.events).toHaveLength(1);
  });

  it('reads forward while events are published, without a gap or a duplicate', async () => {
    const s = await sidecarWith('hl', { requestsPerSecond: 1000, burstSize: 1000 });
    const c = await client(s, 'u1');
    // Every page is read while the next batch is being published (not awaited until the page is
    // back), so reads and writes interleave on every page however fast either side is.
    const got: number[] = [];
    let after = 0;
    let pagesWhilePublishing = 0;
    for (let next = 0; ; ) {
      const batch = next < 300 ? publishRange('hl.project.p', next, Math.min(300, next + 10)) : null;
      next += 10;
      const page = (await history(c, { project_id: 'p', limit: 7, after })).data;
      if (batch) pagesWhilePublishing += 1;
      got.push(...indexes(page.events));
      if (page.events.length > 0) after = page.events.at(-1).seq;
      await batch;
      if (!batch && page.events.length === 0) break;
    }
    expect(got).toEqual(range(0, 300));
    expect(pagesWhilePublishing).toBe(30);
  });

  it('leaves no consumer behind on the stream after a read (nats.js keeps an ordered one 5 minutes)', async () => {
    const s = await sidecarWith('hc', { eventCacheBytes: 0 });
    await publishRange('hc.project.p', 0, 200);
    const c = await client(s, 'u1');
    const page = (await history(c, { project_id: 'p', limit: 200 })).data;
    expect(page.events).toHaveLength(200);
    const jsm = await jetstreamManager(nc);
    const consumers = async () => {
      const names: string[] = [];
      for await (const ci of jsm.consumers.list('HC')) names.push(ci.name);
      return names;
    };
    await waitFor(async () => (await consumers()).length === 0, 5_000, 'the read\'s consumer deleted');
  });

  it('answers with the new epoch and only its events after the stream is created anew', async () => {
    const s = await sidecarWith('he', {});
    await publishRange('he.project.p', 0, 5);
    const c = await client(s, 'u1');
    const before = (await history(c, { project_id: 'p' })).data;
    expect(indexes(before.events)).toEqual(range(0, 5));
    await s.sidecar.broker.jsm.streams.delete('HE');
    await s.sidecar.broker.ensureStream();
    await publishRange('he.project.p', 100, 103);
    const after = (await history(c, { project_id: 'p' })).data;
    expect(after.epoch).not.toBe(before.epoch);
    expect(indexes(after.events)).toEqual([100, 101, 102]);
    expect(after.events[0].seq).toBe(1);
  });
});

describe('history over HTTP', () => {
  beforeAll(async () => {
    await publishRange('ws.project.hh', 0, 30);
  });

  it('answers any user allowed to see the project with the WebSocket answer\'s data', async () => {
    const token = await side.token('reader', { projects: ['hh'], roles: [] });
    const res = await api(side.httpUrl, 'GET', '/api/v1/websocket/projects/hh/history?limit=10', { token });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/application\/json/);
    expect(res.body).toMatchObject({ project_id: 'hh', epoch: side.sidecar.broker.epoch, more: true });
    expect(indexes(res.body.events)).toEqual(range(20, 30));
    const c = await client(side, 'reader', ['hh']);
    const ws = await history(c, { project_id: 'hh', limit: 10 });
    expect(ws.data).toEqual(res.body);
    const older = await api(side.httpUrl, 'GET', `/api/v1/websocket/projects/hh/history?limit=10&before=${res.body.events[0].seq}`, { token });
    expect(indexes(older.body.events)).toEqual(range(10, 20));
    const newer = await api(side.httpUrl, 'GET', `/api/v1/websocket/projects/hh/history?after=${res.body.events[4].seq}`, { token });
    expect(indexes(newer.body.events)).toEqual(range(25, 30));
    expect(newer.body.more).toBe(false);
  });

  it('answers 401 without a valid token and 403 when the project is not allowed', async () => {
    expect((await api(side.httpUrl, 'GET', '/api/v1/websocket/projects/hh/history')).status).toBe(401);
    expect((await api(side.httpUrl, 'GET', '/api/v1/websocket/projects/hh/history', { token: 'not-a-jwt' })).status).toBe(401);
    const token = await side.token('stranger', { projects: ['elsewhere'] });
    const res = await api(side.httpUrl, 'GET', '/api/v1/websocket/projects/hh/history', { token });
    expect(res.status).toBe(403);
    expect(res.body.error).toMatch(/not allowed/);
  });

  it('answers 400 for a bad parameter', async () => {
    const token = await side.token('reader', { projects: ['hh'] });
    for (const q of ['limit=abc', 'limit=0', 'limit=1001', 'before=1&after=2', 'before=-1', 'after=1.5', 'before=', 'limit=99999999999999999999']) {
      const res = await api(side.httpUrl, 'GET', `/api/v1/websocket/projects/hh/history?${q}`, { token });
      expect(res.status, q).toBe(400);
      expect(res.body.error).toEqual(expect.any(String));
    }
    const badId = await api(side.httpUrl, 'GET', '/api/v1/websocket/projects/bad%20id/history', { token });
    expect(badId.status).toBe(400);
  });
});

describe('history authorization modes', () => {
  let responder: Subscription;
  afterAll(() => responder?.unsubscribe());

  it('asks the backend in request mode, like a subscribe', async () => {
    responder = nc.subscribe('hr.authz.project', {
      callback: (_err, msg) => {
        const req = msg.json<{ project_id: string }>();
        msg.respond(JSON.stringify(req.project_id.startsWith('ok-') ? { allow: true } : { allow: false, reason: 'not a member' }));
      },
    });
    await nc.flush();
    const s = await sidecarWith('hr', { projectAuthorization: 'request' });
    await publishRange('hr.project.ok-1', 0, 3);
    const c = await client(s, 'u1', []);
    expect(indexes((await history(c, { project_id: 'ok-1' })).data.events)).toEqual([0, 1, 2]);
    expect((await history(c, { project_id: 'no-1' })).data).toMatchObject({ code: 'forbidden' });
    const token = await s.token('u1', { projects: [] });
    expect((await api(s.httpUrl, 'GET', '/api/v1/websocket/projects/ok-1/history', { token })).status).toBe(200);
    expect((await api(s.httpUrl, 'GET', '/api/v1/websocket/projects/no-1/history', { token })).status).toBe(403);
  });

  it('lets anyone read in open mode', async () => {
    const s = await sidecarWith('ho', { projectAuthorization: 'open' });
    await publishRange('ho.project.any', 0, 2);
    const c = await client(s, 'u1', []);
    expect(indexes((await history(c, { project_id: 'any' })).data.events)).toEqual([0, 1]);
  });
});
