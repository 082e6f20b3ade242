/**
 * The stream and the presence bucket disappearing under a running sidecar: NATS restarted
 * without its store (a pod with ephemeral storage), or an operator deleting them. The sidecar
 * notices within 10 s, says not ready until they exist again, recreates them with its settings,
 * tells live subscribers (history_truncated with the new epoch) before the new epoch's first
 * event, and keeps serving: new connections authenticate and new events are delivered live.
 */
import { rm } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { storedPublisher } from '../helpers/streams.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';
import { waitFor } from '../helpers/wait.js';

let nats: TestNats;
let side: TestSidecar;

beforeAll(async () => {
  nats = await startTestNats();
  side = await startTestSidecar(nats.url, { streamReplicas: 1, maxStoredMessages: 77, presenceTTL: '3s' });
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await side?.stop();
  await nats?.cleanup();
});

async function readyz(): Promise<{ status: number; body: any }> {
  const res = await fetch(`${side.httpUrl}/readyz`);
  return { status: res.status, body: await res.json() };
}

async function subscribed(user: string, project: string): Promise<TestClient> {
  const c = await connectClient(`${side.wsUrl}?token=${await side.token(user)}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  c.send({ type: 'subscription', data: { action: 'subscribe', project_id: project } });
  await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
  return c;
}

/** Publishes through JetStream until the stream takes it (it may be missing for a moment). */
async function publishStored(subject: string, data: Record<string, unknown>): Promise<number> {
  const nc = await publisher(nats.url);
  try {
    const pub = storedPublisher(nc);
    let lastError: unknown;
    for (let attempt = 0; attempt < 60; attempt++) {
      try {
        return await pub.publish(subject, "n", data);
      } catch (err) {
        lastError = err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    throw lastError;
  } finally {
    await nc.close();
  }
}

describe('stream and presence bucket loss', () => {
  it('recovers from a NATS restart without its store: not ready, then recreated, subscribers told the new epoch first, new events live', async () => {
    const before = await subscribed('u-before', 'loss');
    const oldEpoch = side.sidecar.broker.epoch;
    for (let i = 0; i < 3; i++) await publishStored('ws.project.loss', { i });
    await before.waitForMessage((m) => m.type === 'n' && m.data.i === 2);

    await nats.stop();
    await rm(nats.storeDir, { recursive: true, force: true });
    await nats.start();
    const restartedAt = Date.now();

    // Not ready while the stream is missing, ready again once it is recreated: within 10 s. (A
    // stream created while a just-started nats-server is still bringing JetStream up can vanish
    // again; the sidecar's next check recreates it, so wait for the stream it names.)
    const jsm = await jetstreamManager(await publisher(nats.url));
    const current = () => jsm.streams.info('WS_EVENTS').catch(() => undefined);
    await waitFor(async () => (await readyz()).status === 200 && (await current())?.created.replace(/\D/g, '') === side.sidecar.broker.epoch, 10_000);
    expect(Date.now() - restartedAt).toBeLessThan(10_000);
    const { config, created } = (await current())!;
    expect(config).toMatchObject({ max_msgs_per_subject: 77, num_replicas: 1, republish: { src: 'ws.>', dest: 'ws.live.>' } });
    await jsm.streams.info('KV_WS_PRESENCE');
    await jsm.streams.info('KV_WS_PRESENCE_INSTANCES');
    const newEpoch = side.sidecar.broker.epoch;
    expect(newEpoch).not.toBe(oldEpoch);
    expect(newEpoch).toBe(created.replace(/\D/g, ''));

    // The live subscriber: told first, then the new epoch's events from seq 1 on (not dropped as seen).
    const seq = await publishStored('ws.project.loss', { i: 'new' });
    const first = await before.waitForMessage((m) => m.type === 'n' && m.data.i === 'new', 10_000);
    expect(first.seq).toBe(seq);
    const told = before.messages.findIndex((m) => m.type === 'history_truncated' && m.data.scope === 'project');
    expect(told).toBeGreaterThan(-1);
    expect(told).toBeLessThan(before.messages.indexOf(first));
    expect(before.messages[told].data).toMatchObject({ project_id: 'loss', epoch: newEpoch, previous_epoch: oldEpoch });

    // A new connection authenticates at once, with the new epoch, and gets live events.
    const after = await subscribed('u-after', 'loss');
    expect(after.messages[0]).toMatchObject({ type: 'auth_success', data: { epoch: newEpoch } });
    await publishStored('ws.project.loss', { i: 'live' });
    await after.waitForMessage((m) => m.type === 'n' && m.data.i === 'live');

    // The offline inbox works again: a direct message stored for an absent user reaches them on
    // connect, and an acknowledged one does not come back.
    const dm = await publishStored('ws.user.u-offline', { i: 'dm' });
    const off = await connectClient(`${side.wsUrl}?token=${await side.token('u-offline')}`);
    const got = await off.waitForMessage((m) => m.type === 'n' && m.data.i === 'dm', 10_000);
    expect(got.seq).toBe(dm);
    off.send({ type: 'ack', data: { seq: dm } });
    await waitFor(async () => (await side.sidecar.broker.inboxes.stats()).total_messages === 0, 10_000, 'the ack applied');
    off.close();
    const again = await connectClient(`${side.wsUrl}?token=${await side.token('u-offline')}`);
    again.send({ type: 'ping', data: {} });
    await again.waitForMessage((m) => m.type === 'pong');
    expect(again.messages.filter((m) => m.type === 'n')).toEqual([]);

    // Presence works again: a user joining now is announced.
    await subscribed('u-joiner', 'loss');
    await before.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === 'u-joiner', 10_000);

    // Files work again: the file buckets were created anew with the new stream, so the first
    // upload after the restart is stored (not a 503 that only makes the next one work).
    const upload = await fetch(`${side.httpUrl}/api/v1/websocket/projects/loss/files`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${await side.token('u-after')}`, 'Content-Type': 'text/plain', 'X-File-Name': 'after.txt' },
      body: 'stored after the restart',
    });
    expect(upload.status).toBe(201);
  }, 40_000);

  it('recreates the stream within 10 s when an operator deletes it, and tells subscribers', async () => {
    const c = await subscribed('u-op', 'opdel');
    const jsm = await jetstreamManager(await publisher(nats.url));
    const oldEpoch = side.sidecar.broker.epoch;
    await jsm.streams.delete('WS_EVENTS');
    const deletedAt = Date.now();
    const told = await c.waitForMessage((m) => m.type === 'history_truncated' && m.data.project_id === 'opdel', 10_000);
    expect(Date.now() - deletedAt).toBeLessThan(10_000);
    expect(told.data.previous_epoch).toBe(oldEpoch);
    expect(told.data.epoch).toBe(side.sidecar.broker.epoch);
    await publishStored('ws.project.opdel', { i: 'after' });
    await c.waitForMessage((m) => m.type === 'n' && m.data.i === 'after');
  }, 30_000);

  it('delivers the next events of a purged subject once, in order (a first-event header alone does not mean a new stream)', async () => {
    const c = await subscribed('u-purge', 'purged');
    const first = await publishStored('ws.project.purged', { i: 1 });
    await c.waitForMessage((m) => m.type === 'n' && m.data.i === 1);
    const jsm = await jetstreamManager(await publisher(nats.url));
    await jsm.streams.purge('WS_EVENTS', { filter: 'ws.project.purged' });
    const second = await publishStored('ws.project.purged', { i: 2 });
    const third = await publishStored('ws.project.purged', { i: 3 });
    await c.waitForMessage((m) => m.type === 'n' && m.data.i === 3);
    expect(c.messages.filter((m) => m.type === 'n').map((m) => m.seq)).toEqual([first, second, third]);
    // The purge took the event the gap check starts from, so the check cannot tell that nothing
    // after it went too: it may say so (history_truncated), but never of a new epoch.
    for (const m of c.messages.filter((x) => x.type === 'history_truncated')) expect(m.data.reason).toBeUndefined();
  });

  it('watches the presence bucket again when its watcher stops, so the copy follows changes made elsewhere', async () => {
    const p = side.sidecar.presence as unknown as { copy: { watcher: { stop(): void } }; ready: boolean; stats: { rewatched: number } };
    const before = p.stats.rewatched;
    p.copy.watcher.stop();
    await waitFor(() => p.stats.rewatched > before && p.ready, 10_000, 'the watcher restarted');
    // A change another instance makes (here: written straight to the bucket) shows in the copy.
    const { Kvm } = await import('@nats-io/kv');
    const { jetstream } = await import('@nats-io/jetstream');
    const kv = await new Kvm(jetstream(await publisher(nats.url))).open('WS_PRESENCE');
    await kv.put('rewatch.u-elsewhere', JSON.stringify({ members: ['other-instance.00000000'] }));
    await waitFor(async () => (await side.sidecar.presence.users('rewatch')).includes('u-elsewhere'), 10_000, 'the copy saw the change');
  }, 30_000);

  it('recreates the presence bucket within 10 s when it is deleted, with this instance\'s users in it again', async () => {
    const watcher = await subscribed('u-watch', 'pdel');
    const jsm = await jetstreamManager(await publisher(nats.url));
    await jsm.streams.delete('KV_WS_PRESENCE');
    await waitFor(async () => {
      const res = await fetch(`${side.httpUrl}/readyz`);
      return res.status === 200 && (await jsm.streams.info('KV_WS_PRESENCE').then(() => true, () => false));
    }, 10_000);
    // This instance put its present user back.
    await waitFor(async () => (await side.sidecar.presence.users('pdel')).includes('u-watch'), 10_000);
    await subscribed('u-second', 'pdel');
    await watcher.waitForMessage((m) => m.type === 'user_joined' && m.data.user_id === 'u-second', 10_000);
  }, 30_000);
});
