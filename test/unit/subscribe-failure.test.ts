/**
 * A subscribe that fails after joining the topic (the broker's readiness or the replay
 * rejecting), in the core with a fake broker: a new subscription goes, an existing one stays as
 * it was and keeps delivering live events from where the client is.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Connection } from '../../src/core/connection.js';
import type { Hub } from '../../src/core/hub.js';
import type { ReplayResult, StoredEvent } from '../../src/core/ports.js';
import { closeMemoryHubs, MemoryTransport, memoryHub, principal } from '../helpers/memory-hub.js';

afterEach(closeMemoryHubs);

const event = (seq: number): StoredEvent => ({
  seq,
  frame: { text: JSON.stringify({ type: 'task_created', project_id: 'p1', seq, data: {} }) },
});

/** A hub whose replays wait for the test to settle them. */
function hubWithPendingReplays(): { hub: Hub; replays: { resolve(r: ReplayResult): void; reject(e: Error): void }[] } {
  const replays: { resolve(r: ReplayResult): void; reject(e: Error): void }[] = [];
  const hub = memoryHub({ replay: () => new Promise<ReplayResult>((resolve, reject) => replays.push({ resolve, reject })) });
  return { hub, replays };
}

async function authenticated(hub: Hub): Promise<{ conn: Connection; transport: MemoryTransport }> {
  const transport = new MemoryTransport();
  const conn = hub.connect(transport, 'test');
  await hub.authenticate(conn, principal);
  return { conn, transport };
}

const subscribe = (conn: Connection, since?: number, id = 'm1') =>
  conn.receive(JSON.stringify({ type: 'subscription', message_id: id, data: { action: 'subscribe', project_id: 'p1', since } }), false);

const seqs = (t: MemoryTransport) => t.frames().filter((f) => f.seq !== undefined).map((f) => f.seq);

describe('a subscribe whose replay fails', () => {
  it('leaves an existing subscription as it was: live events keep coming after the seq the client had', async () => {
    const { hub, replays } = hubWithPendingReplays();
    const { conn, transport } = await authenticated(hub);
    subscribe(conn);
    await vi.waitFor(() => expect(transport.types()).toEqual(['auth_success', 'subscription']));
    hub.publish('project.p1', event(5));
    // Asked again with a since; the replay fails, and an event arrives live meanwhile.
    subscribe(conn, 2, 'm2');
    await vi.waitFor(() => expect(replays).toHaveLength(1));
    hub.publish('project.p1', event(6));
    replays[0].reject(new Error('JetStream not answering'));
    await vi.waitFor(() => expect(transport.types()).toContain('error'));
    const error = transport.frames().find((f) => f.type === 'error');
    expect(error.data).toMatchObject({ code: 'processing_error', in_reply_to: 'm2' });
    expect(conn.subscriptions.has('project.p1')).toBe(true);
    expect(hub.subscribersOf('project.p1')).toBe(1);
    hub.publish('project.p1', event(5)); // seen already: not again
    hub.publish('project.p1', event(7));
    await vi.waitFor(() => expect(seqs(transport)).toEqual([5, 6, 7]));
    expect(transport.frames().filter((f) => f.type === 'subscription').map((f) => f.data.action)).toEqual(['subscribed']);
  });

  it('removes a subscription the failed request created', async () => {
    const { hub, replays } = hubWithPendingReplays();
    const { conn, transport } = await authenticated(hub);
    subscribe(conn, 0);
    await vi.waitFor(() => expect(replays).toHaveLength(1));
    replays[0].reject(new Error('JetStream not answering'));
    await vi.waitFor(() => expect(transport.types()).toContain('error'));
    expect(conn.subscriptions.has('project.p1')).toBe(false);
    expect(hub.subscribersOf('project.p1')).toBe(0);
    hub.publish('project.p1', event(3));
    await new Promise((ok) => setImmediate(ok));
    expect(seqs(transport)).toEqual([]);
  });
});
