/**
 * The stream at start-up, against a real nats-server: created when missing, updated in place
 * when it exists with other limits (its events survive), never recreated.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar } from '../helpers/sidecar.js';
import { storedPublisher, type StoredPublisher } from '../helpers/streams.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';

const NS = 1_000_000;
let nats: TestNats;
let nc: NatsConnection;
let jsm: JetStreamManager;
let pub: StoredPublisher;

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
  jsm = await jetstreamManager(nc);
  pub = storedPublisher(nc);
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await nc?.close();
  await nats?.cleanup();
});

describe('the stream at start-up', () => {
  it('creates it with the configured limits, dedupe window and republish', async () => {
    const s = await startTestSidecar(nats.url, { subjectPrefix: 'sn', streamName: 'SN', maxStoredMessages: 42, messageTTL: '2h' });
    try {
      const { config } = await jsm.streams.info('SN');
      expect(config).toMatchObject({
        subjects: ['sn.project.*', 'sn.user.*', 'sn.broadcast'],
        max_msgs_per_subject: 42,
        max_age: 2 * 3_600_000 * NS,
        duplicate_window: 120_000 * NS,
        allow_direct: true,
        republish: { src: 'sn.>', dest: 'sn.live.>' },
      });
    } finally {
      await s.stop();
    }
  });

  it('updates a stream that exists with other limits in place, keeping its events', async () => {
    await jsm.streams.add({
      name: 'SU',
      subjects: ['su.project.*', 'su.user.*', 'su.broadcast'],
      max_msgs_per_subject: 5,
      max_age: 3_600_000 * NS,
      republish: { src: 'su.>', dest: 'su.live.>' },
    });
    const seqs = [await pub.publish('su.project.keep', 'old', { i: 0 }), await pub.publish('su.project.keep', 'old', { i: 1 })];
    const created = (await jsm.streams.info('SU')).created;

    const s = await startTestSidecar(nats.url, { subjectPrefix: 'su', streamName: 'SU' });
    try {
      const info = await jsm.streams.info('SU');
      expect(info.created).toBe(created);
      expect(info.config).toMatchObject({ max_msgs_per_subject: 1000, max_age: 24 * 3_600_000 * NS, allow_direct: true });
      expect(info.state.messages).toBe(2);

      const c = await connectClient(`${s.wsUrl}?token=${await s.token('u-keep')}`);
      await c.waitForMessage((m) => m.type === 'auth_success');
      c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'keep', since: 0 } });
      const got = await c.waitForMessages(2, (m) => m.type === 'old');
      expect(got.map((m) => m.seq)).toEqual(seqs);
    } finally {
      await s.stop();
    }
  });

  it('refuses to start, leaving the stream untouched, when it lacks republish and the server cannot add it', async () => {
    await jsm.streams.add({ name: 'SR', subjects: ['sr.project.*', 'sr.user.*', 'sr.broadcast'], max_msgs_per_subject: 7 });
    await pub.publish('sr.project.p', 'old');
    const started = await startTestSidecar(nats.url, { subjectPrefix: 'sr', streamName: 'SR' }).then(
      (s) => s,
      (e: unknown) => e as Error & { code?: string },
    );
    const [major, minor] = (nc.info?.version ?? '2.9.0').split('.').map(Number);
    if (major === 2 && minor < 10) {
      expect(started).toBeInstanceOf(Error);
      const err = started as Error & { code?: string };
      expect(err.code).toBe('stream_incompatible');
      expect(err.message).toMatch(/SR.*republish.*streamName/);
      const info = await jsm.streams.info('SR');
      expect(info.config.max_msgs_per_subject).toBe(7);
      expect(info.state.messages).toBe(1);
    } else {
      // nats-server 2.10+ adds republish in place.
      expect(started).not.toBeInstanceOf(Error);
      await (started as Awaited<ReturnType<typeof startTestSidecar>>).stop();
      const info = await jsm.streams.info('SR');
      expect(info.config.republish).toEqual({ src: 'sr.>', dest: 'sr.live.>' });
      expect(info.state.messages).toBe(1);
    }
  });
});
