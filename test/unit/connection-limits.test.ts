/**
 * The connection's protection policies in the transport-agnostic core, driven with explicit
 * clocks through an in-memory transport: inbound admission, the in-flight cap, the outbound
 * queue caps, the "stays over its cap" socket-buffer rule, and the lifetime of slow-lane limiters.
 * (The same behaviours against real sockets and NATS are in test/integration/protection.test.ts.)
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { ConfigInput } from '../../src/config.js';
import type { Hub } from '../../src/core/hub.js';
import type { AuthPort } from '../../src/core/ports.js';
import { closeMemoryHubs, MemoryTransport, memoryHub, openConnection, principal } from '../helpers/memory-hub.js';

const makeHub = (overrides: ConfigInput = {}, auth?: AuthPort): Hub => memoryHub({}, overrides, auth);

const frame = (n: number, size = 10) => JSON.stringify({ type: 'event', data: { n, pad: 'x'.repeat(size) } });

afterEach(closeMemoryHubs);

describe('inbound admission', () => {
  it('answers a flood from the bucket without parsing it, and closes 4429 after maxErrors refusals', async () => {
    const hub = makeHub({ requestsPerSecond: 0.01 }); // no refill while the test runs: exact counts
    const { conn, transport } = await openConnection(hub);
    for (let i = 0; i < 10_000; i++) conn.receive(Buffer.from('{"type":"ping"}'), false);
    conn.flush(Date.now());
    expect(transport.types().filter((t) => t === 'pong')).toHaveLength(20); // the burst
    expect(hub.stats.rateLimited).toBe(5); // then maxErrors refusals, and the rest is dropped unread
    expect(transport.closed?.code).toBe(4429);
    expect(conn.messagesIn).toBe(25);
  });

  it('caps requests waiting behind a slow handler at burstSize, whatever the refill rate', async () => {
    let release!: () => void;
    const slowAuth: AuthPort = { verify: () => new Promise((ok) => (release = () => ok(principal))) };
    const hub = makeHub({ requestsPerSecond: 1_000_000, maxErrors: 1000 }, slowAuth);
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    conn.receive(JSON.stringify({ type: 'auth', data: { token: 't' } }), false);
    for (let i = 0; i < 100; i++) conn.receive('{"type":"ping"}', false);
    expect(hub.stats.rateLimited).toBe(80); // 20 wait in order, 80 are refused at once
    release();
    await vi.waitFor(() => expect(transport.types().filter((t) => t === 'pong')).toHaveLength(20));
    expect(transport.types().filter((t) => t === 'auth_success')).toHaveLength(1);
  });

  it('closes 1009 for a non-auth frame over maxMessageSize but accepts a larger auth frame', async () => {
    const hub = makeHub();
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    const token = 'a'.repeat(900); // e.g. an RS256 token: more than 512 bytes with its envelope
    conn.receive(JSON.stringify({ type: 'auth', data: { token } }), false);
    await vi.waitFor(() => expect(conn.state).toBe('open'));
    conn.receive(JSON.stringify({ type: 'ping', data: { pad: 'x'.repeat(600) } }), false);
    expect(transport.closed?.code).toBe(1009);
  });
});

describe('outbound queue and socket buffer', () => {
  it('closes 4008 when more than maxQueuedMessages are left waiting after a flush', async () => {
    const hub = makeHub({ maxQueuedMessages: 10, outboundBurst: 5, outboundMessagesPerSecond: 1 });
    const { conn, transport } = await openConnection(hub); // auth_success took one of the burst
    for (let i = 0; i < 14; i++) conn.send(frame(i));
    conn.flush(Date.now());
    expect(transport.written).toHaveLength(4);
    expect(transport.closed).toBeUndefined(); // 10 waiting: at the cap, not over it
    conn.send(frame(14));
    conn.flush(Date.now());
    expect(transport.closed).toEqual({ code: 4008, reason: 'slow consumer: resume with since' });
    expect(hub.stats.slowConsumers).toBe(1);
    expect(hub.connections.size).toBe(0);
    expect(hub.pacer.activeLimiters).toBe(0);
  });

  it('closes 4008 when the text left waiting goes over maxQueuedBytes', async () => {
    const hub = makeHub({ maxQueuedBytes: 4096, maxBufferedBytes: 1024 });
    const { conn, transport } = await openConnection(hub);
    transport.bufferedAmount = 2048; // the socket is full: nothing is written
    for (let i = 0; i < 3; i++) conn.send(frame(i, 1000));
    conn.flush(Date.now());
    expect(conn.queued.messages).toBe(3);
    expect(transport.closed).toBeUndefined();
    conn.send(frame(3, 1500));
    conn.flush(Date.now());
    expect(transport.closed?.code).toBe(4008);
  });

  it('takes a burst larger than the queue caps within one tick when the socket accepts it', async () => {
    const hub = makeHub({ maxQueuedMessages: 10, maxQueuedBytes: 4096 });
    const { conn, transport } = await openConnection(hub);
    for (let i = 0; i < 100; i++) conn.send(frame(i, 100));
    conn.flush(Date.now());
    expect(transport.written).toHaveLength(100);
    expect(transport.closed).toBeUndefined();
  });

  it('holds frames while the socket buffer is over its cap and writes them once it drains', async () => {
    const hub = makeHub({ maxBufferedBytes: 1024, slowConsumerTimeout: 1000 });
    const { conn, transport } = await openConnection(hub);
    const t0 = Date.now();
    transport.bufferedAmount = 5000;
    for (let i = 0; i < 3; i++) conn.send(frame(i));
    conn.flush(t0);
    expect(transport.written).toHaveLength(0);
    expect(conn.stalled).toBe(true);
    expect(conn.queued.messages).toBe(3);
    transport.bufferedAmount = 0;
    conn.recheckStalled(t0 + 100); // what the hub's sweep does
    expect(transport.written.map((t) => JSON.parse(t).data.n)).toEqual([0, 1, 2]);
    expect(conn.stalled).toBe(false);
    expect(transport.closed).toBeUndefined();
  });

  it('closes 4008 only when the socket buffer stays over its cap for slowConsumerTimeout', async () => {
    const hub = makeHub({ maxBufferedBytes: 1024, slowConsumerTimeout: 1000 });
    const { conn, transport } = await openConnection(hub);
    const t0 = Date.now();
    transport.bufferedAmount = 5000;
    conn.send(frame(1));
    conn.flush(t0);
    conn.recheckStalled(t0 + 999);
    expect(transport.closed).toBeUndefined();
    transport.bufferedAmount = 100; // drained in time: the clock starts again
    conn.recheckStalled(t0 + 1000);
    transport.bufferedAmount = 5000;
    conn.send(frame(2));
    conn.flush(t0 + 1100);
    conn.recheckStalled(t0 + 2099);
    expect(transport.closed).toBeUndefined();
    conn.recheckStalled(t0 + 2100);
    expect(transport.closed?.code).toBe(4008);
    expect(hub.connections.size).toBe(0);
  });

  it('closes a stalled socket even when nothing more is queued for it', async () => {
    const hub = makeHub({ maxBufferedBytes: 1024, slowConsumerTimeout: 1000 });
    const { conn, transport } = await openConnection(hub);
    const t0 = Date.now();
    conn.send(frame(1, 5000));
    transport.write = (frames) => {
      MemoryTransport.prototype.write.call(transport, frames);
      transport.bufferedAmount += 5000; // the peer reads nothing
    };
    conn.flush(t0);
    expect(conn.stalled).toBe(true);
    expect(conn.queued.messages).toBe(0);
    conn.recheckStalled(t0 + 1000);
    expect(transport.closed?.code).toBe(4008);
  });
});

describe('slow-lane limiters', () => {
  it('paces frames past the outbound burst in order, then drops the limiter when the queue drains', async () => {
    const hub = makeHub({ outboundBurst: 5, outboundMessagesPerSecond: 1000 });
    const { conn, transport } = await openConnection(hub);
    expect(hub.pacer.activeLimiters).toBe(0);
    for (let i = 0; i < 20; i++) conn.send(frame(i));
    conn.flush(Date.now());
    expect(transport.written.length).toBeLessThanOrEqual(5); // the burst (auth_success took one)
    expect(hub.pacer.activeLimiters).toBe(1);
    await vi.waitFor(() => expect(transport.written).toHaveLength(20), { timeout: 3000 });
    expect(transport.written.map((t) => JSON.parse(t).data.n)).toEqual([...Array(20).keys()]);
    expect(hub.pacer.activeLimiters).toBe(0);
  });

  it('drops the limiter of a connection that closes while it waits', async () => {
    const hub = makeHub({ outboundBurst: 5, outboundMessagesPerSecond: 1 });
    const { conn } = await openConnection(hub);
    for (let i = 0; i < 20; i++) conn.send(frame(i));
    conn.flush(Date.now());
    expect(hub.pacer.activeLimiters).toBe(1);
    conn.close(1000, 'bye');
    expect(hub.pacer.activeLimiters).toBe(0);
  });
});
