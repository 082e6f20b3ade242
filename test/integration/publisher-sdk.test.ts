/**
 * The publisher SDK end to end: the seed's service API lands on the right subjects with the
 * documented payloads and returns the stored seq; Nats-Msg-Id dedupe; validation before anything
 * is sent; retries across a NATS restart without storing twice.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { Publisher, PublishError, ValidationError } from '../../src/publisher/index.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

let nats: TestNats;
let side: TestSidecar;
let nc: NatsConnection;
let jsm: JetStreamManager;
let pub: Publisher;

beforeAll(async () => {
  nats = await startTestNats();
  side = await startTestSidecar(nats.url); // creates the stream
  nc = await publisher(nats.url);
  jsm = await jetstreamManager(nc);
  pub = new Publisher(nc);
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await nc?.close();
  await side?.stop();
  await nats?.cleanup();
});

async function client(sub: string, projectId?: string): Promise<TestClient> {
  const c = await connectClient(`${side.wsUrl}?token=${await side.token(sub)}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  if (projectId) {
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: projectId } });
    await c.waitForMessage((m) => m.type === 'subscription');
  }
  return c;
}

const lastSeq = async (): Promise<number> => (await jsm.streams.info('WS_EVENTS')).state.last_seq;

describe('publisher SDK', () => {
  it('publishes the seed\'s project events and returns the seq clients see', async () => {
    const c = await client('u-seed', 'ps-1');
    const task = { id: 't1', title: 'Write docs' };
    const results = [
      await pub.notifyTaskCreated(task, 'ps-1'),
      await pub.notifyTaskUpdated('t1', 'ps-1', { title: 'Write more docs' }, { ...task, title: 'Write more docs' }),
      await pub.notifyTaskDeleted('t1', 'ps-1'),
      await pub.notifyProjectUpdated('ps-1', { name: 'Renamed' }),
      await pub.notifyStatusChanged('ps-1', 'archived', { by: 'alice' }),
      await pub.sendProjectMessage('ps-1', 'custom_thing', { x: 1 }),
    ];
    const got = await c.waitForMessages(6, (m) => typeof m.seq === 'number');
    expect(got.map((m) => [m.type, m.data])).toEqual([
      ['task_created', { project_id: 'ps-1', task }],
      ['task_updated', { project_id: 'ps-1', task_id: 't1', changes: { title: 'Write more docs' }, task: { id: 't1', title: 'Write more docs' } }],
      ['task_deleted', { project_id: 'ps-1', task_id: 't1' }],
      ['project_updated', { project_id: 'ps-1', changes: { name: 'Renamed' } }],
      ['status_changed', { by: 'alice', project_id: 'ps-1', status: 'archived' }],
      ['custom_thing', { x: 1 }],
    ]);
    expect(got.map((m) => m.seq)).toEqual(results.map((r) => r.seq));
    expect(got.map((m) => m.message_id)).toEqual(results.map((r) => r.msgId));
    expect(got.every((m) => m.project_id === 'ps-1')).toBe(true);
    expect(results.every((r) => r.stream === 'WS_EVENTS' && r.duplicate === false && r.subject === 'ws.project.ps-1')).toBe(true);
    const seqs = results.map((r) => r.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  });

  it('sends direct messages to the user and broadcasts to everyone', async () => {
    const target = await client('u-direct-pub');
    const other = await client('u-other-pub');
    const direct = await pub.sendDirectMessage('u-direct-pub', 'direct_message', { text: 'hi' });
    expect(direct.subject).toBe('ws.user.u-direct-pub');
    expect(await target.waitForMessage((m) => m.type === 'direct_message')).toMatchObject({ seq: direct.seq, data: { text: 'hi' } });
    const all = await pub.broadcast('maintenance', { at: '22:00' });
    for (const c of [target, other]) expect((await c.waitForMessage((m) => m.type === 'maintenance')).seq).toBe(all.seq);
    expect(other.messages.some((m) => m.type === 'direct_message')).toBe(false);
  });

  it('stores a repeated Nats-Msg-Id once and answers the repeat with the same seq', async () => {
    const first = await pub.sendProjectMessage('ps-dedupe', 'once', { n: 1 }, { msgId: 'order-42-created' });
    const again = await pub.sendProjectMessage('ps-dedupe', 'once', { n: 1 }, { msgId: 'order-42-created' });
    expect(first.duplicate).toBe(false);
    expect(again).toMatchObject({ seq: first.seq, duplicate: true, msgId: 'order-42-created' });
    expect(await lastSeq()).toBeGreaterThanOrEqual(first.seq);
    const stored = await jsm.streams.getMessage('WS_EVENTS', { last_by_subj: 'ws.project.ps-dedupe' });
    expect(stored?.seq).toBe(first.seq);
  });

  it('refuses bad ids and events with typed errors before publishing anything', async () => {
    const before = await lastSeq();
    const refused = [
      () => pub.notifyTaskCreated({ id: 't' }, 'a.b'),
      () => pub.sendProjectMessage('', 'x', {}),
      () => pub.sendProjectMessage('p'.repeat(129), 'x', {}),
      () => pub.sendDirectMessage('user*', 'x', {}),
      () => pub.sendProjectMessage('p', '', {}),
      () => pub.broadcast('x', [] as never),
      () => pub.broadcast('x', null as never),
      () => pub.broadcast('x', { big: 1n }),
      () => pub.broadcast('x', {}, { msgId: '' }),
    ];
    const codes: string[] = [];
    for (const call of refused) {
      const err = await Promise.resolve().then(call).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(ValidationError);
      codes.push((err as ValidationError).code);
    }
    expect(codes).toEqual(['invalid_id', 'invalid_id', 'invalid_id', 'invalid_id', 'invalid_event', 'invalid_event', 'invalid_event', 'invalid_event', 'invalid_id']);
    expect(await lastSeq()).toBe(before);
  });

  it('fails with PublishError when no stream takes the subject, after its retries', async () => {
    const lost = new Publisher(nc, { prefix: 'nostream', maxAttempts: 2, retryDelay: 10, timeout: 1000 });
    const err = await lost.broadcast('x', {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PublishError);
    expect(err).toMatchObject({ code: 'publish_failed', subject: 'nostream.broadcast', attempts: 2 });
  });

  it('fails at once on a closed connection', async () => {
    const own = await Publisher.connect({ servers: nats.url });
    await own.close();
    await expect(own.broadcast('x', {})).rejects.toMatchObject({ code: 'publish_failed', attempts: 1 });
  });

  it('retries through a NATS restart and stores the event once', async () => {
    const own = await startTestNats();
    const s = await startTestSidecar(own.url);
    await s.stop(); // the stream exists; no sidecar needed from here on
    const p = await Publisher.connect({ servers: own.url, timeout: 1000, maxAttempts: 30, retryDelay: 100 });
    try {
      await own.stop();
      const pending = p.sendProjectMessage('ps-restart', 'survived', { ok: true }, { msgId: 'restart-1' });
      await own.restart();
      const result = await pending;
      expect(result.seq).toBeGreaterThan(0);
      const check = await jetstreamManager(p.connection);
      const info = await check.streams.info('WS_EVENTS', { subjects_filter: 'ws.project.ps-restart' });
      expect(info.state.subjects).toEqual({ 'ws.project.ps-restart': 1 });
    } finally {
      await p.close();
      await own.cleanup();
    }
  });
});
