/**
 * The delivery ledger's rules for store loss and epochs, on a stand-in for the SDK client (only
 * its listeners are used) and a stand-in publisher: what counts as lost, excused, replayed,
 * duplicated or out of order.
 */
import { describe, expect, it } from 'vitest';
import type { Client } from '../../src/client/index.js';
import { PublishError, type Publisher } from '../../src/publisher/index.js';
import { DeliveryLedger } from './helpers/ledger.js';

/** Records listeners; `frame` and `event` play what the SDK would emit. */
function fakeClient() {
  const listeners = new Map<string, ((v: unknown) => void)[]>();
  const client = {
    on(name: string, fn: (v: unknown) => void) {
      listeners.set(name, [...(listeners.get(name) ?? []), fn]);
      return () => undefined;
    },
  };
  const emit = (name: string, v: unknown) => listeners.get(name)?.forEach((fn) => fn(v));
  return {
    client: client as unknown as Client,
    frame: (type: string, data: Record<string, unknown>) => emit('message', { type, data }),
    project: (p: string, n: number, seq: number) => emit('event', { type: 'task_created', project_id: p, seq, data: { task: { n } } }),
    direct: (user: string, n: number, seq: number) => emit('event', { type: 'direct_message', seq, data: { n, user } }),
  };
}

/** Confirms every publish, or fails each with `failWith`. */
function fakePublisher(failWith?: string): Publisher {
  const answer = async () => {
    if (failWith) throw new PublishError(`publish failed after 4 attempt(s): ${failWith}`, 'ws.x', 4);
    return {};
  };
  return { notifyTaskCreated: answer, sendDirectMessage: answer } as unknown as Publisher;
}

describe('delivery ledger under store loss', () => {
  it('excuses project events lost with the store only for apps told afterwards', async () => {
    const ledger = new DeliveryLedger();
    const told = fakeClient();
    const silent = fakeClient();
    ledger.watch('told', told.client, ['project:p']);
    ledger.watch('silent', silent.client, ['project:p']);
    const pub = fakePublisher();
    for (let i = 0; i < 3; i++) await ledger.publishNext(pub, 'project:p');
    for (const app of [told, silent]) app.project('p', 1, 1);
    ledger.storeLost();
    await ledger.publishNext(pub, 'project:p'); // n=4, seq 1 of the new stream
    told.frame('history_truncated', { scope: 'project', project_id: 'p', epoch: 'e2' });
    told.project('p', 4, 1);
    silent.project('p', 4, 1);

    const f = ledger.figures();
    expect(ledger.storeLossFigures()).toMatchObject({ stores_lost: 1, lost_but_told: 2, truncation_notices: 1, seq_out_of_order: 1 });
    expect(f.lost).toBe(2); // n=2,3 for the app never told
    expect(ledger.missing()).toEqual(['silent project:p: missing 2,3']);
  });

  it('reads a new epoch or truncated:true in `subscribed` as a notice, and checks order within each epoch', async () => {
    const ledger = new DeliveryLedger();
    const app = fakeClient();
    ledger.watch('a', app.client, ['project:p']);
    const pub = fakePublisher();
    for (let i = 0; i < 4; i++) await ledger.publishNext(pub, 'project:p');
    app.frame('subscription', { action: 'subscribed', project_id: 'p', epoch: 'e1' });
    app.project('p', 1, 10);
    app.project('p', 2, 11);
    ledger.storeLost();
    app.frame('subscription', { action: 'subscribed', project_id: 'p', epoch: 'e2' }); // resumed into another epoch
    app.project('p', 3, 1); // seq starts again: fine in a new epoch
    app.project('p', 3, 1); // the same event twice within the epoch: a duplicate
    app.frame('subscription', { action: 'subscribed', project_id: 'p', epoch: 'e2', truncated: true });
    app.project('p', 3, 1); // replayed after being told to refetch: not a duplicate
    app.project('p', 4, 2);

    const f = ledger.figures();
    expect(f).toMatchObject({ lost: 0, duplicated: 1, out_of_order: 0 });
    expect(ledger.storeLossFigures()).toMatchObject({ epochs_seen: 2, truncation_notices: 2, replayed_after_truncation: 1, seq_out_of_order: 0 });
  });

  it('counts a seq going back within one epoch, and events missing without any store loss as lost', async () => {
    const ledger = new DeliveryLedger();
    const app = fakeClient();
    ledger.watch('a', app.client, ['project:p']);
    const pub = fakePublisher();
    for (let i = 0; i < 3; i++) await ledger.publishNext(pub, 'project:p');
    app.frame('history_truncated', { scope: 'project', project_id: 'p', after_seq: 5 }); // no store loss: excuses nothing
    app.project('p', 1, 7);
    app.project('p', 2, 6);
    expect(ledger.figures().lost).toBe(1);
    expect(ledger.storeLossFigures()).toMatchObject({ seq_out_of_order: 1, lost_but_told: 0 });
  });

  it('excuses direct messages confirmed before a store loss (the inbox went with it), not after', async () => {
    const ledger = new DeliveryLedger();
    const app = fakeClient();
    ledger.watch('a', app.client, ['user:u']);
    const pub = fakePublisher();
    await ledger.publishNext(pub, 'user:u');
    ledger.storeLost();
    await ledger.publishNext(pub, 'user:u');
    await ledger.publishNext(pub, 'user:u');
    app.direct('u', 3, 2);
    expect(ledger.figures().lost).toBe(1);
    expect(ledger.storeLossFigures().direct_lost_with_store).toBe(1);
    expect(ledger.complete()).toBe(false);
  });

  it('counts publishes refused while the stream is gone after a store loss as not published, others as failures', async () => {
    const ledger = new DeliveryLedger();
    await ledger.publishNext(fakePublisher('jetstream is not enabled'), 'project:p', 0);
    ledger.storeLost();
    await ledger.publishNext(fakePublisher('jetstream is not enabled'), 'project:p', 0);
    await ledger.publishNext(fakePublisher('TIMEOUT'), 'project:p', 0);
    const f = ledger.figures();
    expect(f.publish_failures).toBe(2);
    expect(ledger.storeLossFigures().not_published_store_missing).toBe(1);
  });

  it('measures how far behind an app is, ignoring a direct message held back behind newer ones', async () => {
    const ledger = new DeliveryLedger();
    const app = fakeClient();
    ledger.watch('a', app.client, ['project:p', 'user:u']);
    const pub = fakePublisher();
    for (let i = 0; i < 2; i++) await ledger.publishNext(pub, 'project:p');
    for (let i = 0; i < 3; i++) await ledger.publishNext(pub, 'user:u');
    const later = Date.now() + 10_000;
    app.project('p', 1, 1);
    app.direct('u', 1, 2);
    app.direct('u', 3, 4); // 2 held back by a dead instance: comes on the next connection
    expect(ledger.lagMs('a', later)).toBeGreaterThanOrEqual(10_000); // project event 2 is missing
    app.project('p', 2, 5);
    expect(ledger.lagMs('a', later)).toBe(0);
    await ledger.publishNext(pub, 'user:u');
    expect(ledger.lagMs('a', Date.now() + 10_000)).toBeGreaterThanOrEqual(10_000); // direct 4 is newer than any it got
  });
});
