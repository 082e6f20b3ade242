/**
 * Acks have no answer and depend on nothing sent before them: a client acking its inbox while a
 * long replay holds its other requests back must not run into the cap on waiting requests (it
 * used to: rate_limited errors, then 4429, and the SDK does not reconnect after 4429).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ReplayResult, StoredEvent } from '../../src/core/ports.js';
import { closeMemoryHubs, MemoryTransport, memoryHub, principal } from '../helpers/memory-hub.js';

afterEach(closeMemoryHubs);

describe('acks while a replay runs', () => {
  it('are applied at once, however many, without errors; the replay answer still comes in order', async () => {
    let finish: ((r: ReplayResult) => void) | undefined;
    const acked: number[] = [];
    const inbox: StoredEvent[] = Array.from({ length: 60 }, (_, i) => ({
      seq: i + 1,
      frame: { text: JSON.stringify({ type: 'dm', seq: i + 1, data: {} }) },
    }));
    const hub = memoryHub(
      {
        replay: () => new Promise<ReplayResult>((resolve) => (finish = resolve)),
        backlog: async (_user, onEvent) => inbox.forEach(onEvent),
        acknowledge: (_user, seq) => void acked.push(seq),
      },
      { requestsPerSecond: 1000, burstSize: 20 },
    );
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    await hub.authenticate(conn, principal);
    conn.receive(JSON.stringify({ type: 'subscription', data: { action: 'subscribe', project_id: 'p1', since: 5 } }), false);
    // Well past the 20 requests that may wait behind the replay, paced within the inbound rate
    // (1000/s here) as the SDK paces its requests.
    for (let seq = 1; seq <= 60; seq++) {
      conn.receive(JSON.stringify({ type: 'ack', data: { seq } }), false);
      await new Promise((r) => setTimeout(r, 2));
    }
    conn.receive(JSON.stringify({ type: 'ping', data: {} }), false);
    expect(acked).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    finish!({ truncated: false, epoch: 'e1', restarted: false });
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    const types = transport.types();
    expect(types).not.toContain('error');
    expect(types.indexOf('subscription')).toBeLessThan(types.indexOf('pong'));
    expect(transport.closed).toBeUndefined();
  });
});
