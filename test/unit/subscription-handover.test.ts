/**
 * The resume handover on the memory broker: a subscribe with `since` replays what the client
 * missed while live events are held, then releases them, so the client gets every seq once and in
 * order; a resume from another epoch or from before the topic's window says it was truncated.
 * (Against a real nats-server: test/integration/resume.test.ts.)
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Connection } from '../../src/core/connection.js';
import { closeMemoryHubs, memoryBrokerHub, MemoryTransport, openConnection, principal, tick } from '../helpers/memory-hub.js';

afterEach(closeMemoryHubs);

const P1 = 'project.p1';

const subscribe = (conn: Connection, data: { since?: number; epoch?: string } = {}, id = 's1') =>
  conn.receive(JSON.stringify({ type: 'subscription', message_id: id, data: { action: 'subscribe', project_id: 'p1', ...data } }), false);

const seqs = (t: MemoryTransport) => t.frames().filter((f) => f.type === 'task_created').map((f) => f.seq);
const answers = (t: MemoryTransport) => t.frames().filter((f) => f.type === 'subscription').map((f) => f.data);

/** Replays wait until the returned function is called. */
function holdReplays(broker: { replayGate: (() => Promise<void>) | undefined }): { opened: () => boolean; open: () => void } {
  let open: (() => void) | undefined;
  broker.replayGate = () => new Promise<void>((ok) => (open = ok));
  return { opened: () => open !== undefined, open: () => open!() };
}

describe('a subscribe with since', () => {
  it('replays what the client missed, holds live events meanwhile, and delivers each seq once, in order', async () => {
    const { hub, broker } = memoryBrokerHub();
    const { conn, transport } = await openConnection(hub);
    for (let i = 1; i <= 5; i++) broker.publish(P1, 'task_created', { i }); // nobody subscribed: stored only
    const replay = holdReplays(broker);
    subscribe(conn, { since: 2, epoch: 'e1' });
    await vi.waitFor(() => expect(replay.opened()).toBe(true));
    // Published while the replay waits: delivered live (held) and also read by the replay.
    broker.publish(P1, 'task_created', { i: 6 });
    broker.publish(P1, 'task_created', { i: 7 });
    // A live event the replay's read does not reach (stored after the read began).
    hub.publish(P1, { seq: 8, frame: { text: JSON.stringify({ type: 'task_created', project_id: 'p1', seq: 8, data: {} }) } });
    broker.lastSeq = 8;
    await tick();
    expect(seqs(transport)).toEqual([]); // nothing before the answer
    replay.open();
    await vi.waitFor(() => expect(answers(transport)).toHaveLength(1));
    expect(answers(transport)[0]).toEqual({ action: 'subscribed', project_id: 'p1', epoch: 'e1', replayed: 5 });
    await tick();
    expect(seqs(transport)).toEqual([3, 4, 5, 6, 7, 8]);
    // Live from here on; a redelivery of a seq the client has is dropped.
    hub.publish(P1, { seq: 7, frame: { text: '{"type":"task_created","seq":7}' } });
    broker.publish(P1, 'task_created', { i: 10 });
    await tick();
    expect(seqs(transport)).toEqual([3, 4, 5, 6, 7, 8, 9]);
    expect(transport.types().indexOf('subscription')).toBeLessThan(transport.types().indexOf('task_created'));
  });

  it('replays nothing and holds nothing for a client that is up to date', async () => {
    const { hub, broker } = memoryBrokerHub();
    const { conn, transport } = await openConnection(hub);
    broker.publish(P1, 'task_created');
    broker.publish(P1, 'task_created');
    subscribe(conn, { since: 2, epoch: 'e1' });
    await vi.waitFor(() => expect(answers(transport)).toEqual([{ action: 'subscribed', project_id: 'p1', epoch: 'e1', replayed: 0 }]));
    broker.publish(P1, 'task_created');
    await tick();
    expect(seqs(transport)).toEqual([3]);
  });

  it('says truncated when the topic no longer holds everything after since', async () => {
    const { hub, broker } = memoryBrokerHub({ broker: { window: 3 } });
    const { conn, transport } = await openConnection(hub);
    for (let i = 1; i <= 5; i++) broker.publish(P1, 'task_created'); // 1 and 2 fall out of the window
    subscribe(conn, { since: 1, epoch: 'e1' });
    await vi.waitFor(() => expect(answers(transport)).toHaveLength(1));
    expect(answers(transport)[0]).toEqual({ action: 'subscribed', project_id: 'p1', epoch: 'e1', replayed: 3, truncated: true });
    await tick();
    expect(seqs(transport)).toEqual([3, 4, 5]);
  });

  it('skips replayed events about the user itself and counts only what follows', async () => {
    const { hub, broker } = memoryBrokerHub();
    const { conn, transport } = await openConnection(hub);
    broker.publish(P1, 'task_created');
    broker.publish(P1, 'user_joined', {}, { aboutUser: principal.userId });
    broker.publish(P1, 'task_created');
    subscribe(conn, { since: 0, epoch: 'e1' });
    await vi.waitFor(() => expect(answers(transport)).toHaveLength(1));
    expect(answers(transport)[0]).toMatchObject({ replayed: 2 });
    await tick();
    expect(transport.frames().filter((f) => f.seq !== undefined).map((f) => f.seq)).toEqual([1, 3]);
  });
});

describe('a resume from another epoch', () => {
  it('replays the whole topic of the new epoch, truncated, and counts seqs afresh', async () => {
    const { hub, broker } = memoryBrokerHub();
    for (let i = 1; i <= 4; i++) broker.publish(P1, 'task_created'); // the client saw these in e1
    const e2 = broker.recreate();
    broker.publish(P1, 'task_created');
    broker.publish(P1, 'task_created');
    const { conn, transport } = await openConnection(hub);
    subscribe(conn, { since: 4, epoch: 'e1' });
    await vi.waitFor(() => expect(answers(transport)).toHaveLength(1));
    expect(answers(transport)[0]).toEqual({ action: 'subscribed', project_id: 'p1', epoch: e2, replayed: 2, truncated: true });
    await tick();
    // Seqs 1 and 2 of e2 are new events, though the client's since (4, of e1) is past them.
    expect(seqs(transport)).toEqual([1, 2]);
    broker.publish(P1, 'task_created');
    await tick();
    expect(seqs(transport)).toEqual([1, 2, 3]);
  });

  it('treats a since past the stream end as another epoch', async () => {
    const { hub, broker } = memoryBrokerHub();
    broker.publish(P1, 'task_created');
    const { conn, transport } = await openConnection(hub);
    subscribe(conn, { since: 50 }); // an old client, no epoch
    await vi.waitFor(() => expect(answers(transport)).toHaveLength(1));
    expect(answers(transport)[0]).toMatchObject({ epoch: 'e1', replayed: 1, truncated: true });
    await tick();
    expect(seqs(transport)).toEqual([1]);
  });
});

describe('a re-subscribe with since on a live subscription', () => {
  it('replays from the new since and keeps delivering live without a gap or a repeat', async () => {
    const { hub, broker } = memoryBrokerHub();
    const { conn, transport } = await openConnection(hub);
    subscribe(conn);
    await vi.waitFor(() => expect(answers(transport)).toHaveLength(1));
    for (let i = 1; i <= 3; i++) broker.publish(P1, 'task_created');
    await tick();
    expect(seqs(transport)).toEqual([1, 2, 3]);
    const replay = holdReplays(broker);
    subscribe(conn, { since: 1, epoch: 'e1' }, 's2'); // the client lost 2 and 3 on its side
    await vi.waitFor(() => expect(replay.opened()).toBe(true));
    broker.publish(P1, 'task_created');
    replay.open();
    await vi.waitFor(() => expect(answers(transport)).toHaveLength(2));
    await tick();
    expect(seqs(transport)).toEqual([1, 2, 3, 2, 3, 4]);
    expect(hub.subscribersOf(P1)).toBe(1);
  });
});
