/**
 * Authentication and its setup (joining the user's and the broadcast topics, the inbox backlog)
 * in the transport-agnostic core, with a fake broker whose readiness the test controls: the
 * order of frames around auth_success, and a setup that fails.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { closeMemoryHubs, MemoryTransport, memoryHub, principal } from '../helpers/memory-hub.js';

const makeHub = (ready: () => Promise<void>, config = {}) => memoryHub({ interestReady: ready }, config);

afterEach(closeMemoryHubs);

describe('authentication with a token on the upgrade', () => {
  it('writes auth_success first: requests sent during setup are answered after it, refusals included', async () => {
    let release!: () => void;
    const ready = new Promise<void>((ok) => (release = ok));
    const hub = makeHub(() => ready, { maxErrors: 100 });
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    conn.start(principal);
    // 20 wait in order behind the authentication; the 21st is over the inbound burst and refused.
    for (let i = 0; i < 21; i++) conn.receive('{"type":"ping"}', false);
    await new Promise((ok) => setImmediate(ok)); // a flush tick: nothing may be written yet
    expect(transport.written).toEqual([]);
    release();
    await vi.waitFor(() => expect(transport.written).toHaveLength(22));
    expect(transport.types()).toEqual(['auth_success', 'error', ...Array(20).fill('pong')]);
  });
});

describe('a failed authentication setup', () => {
  const failing = () => Promise.reject(new Error('no responders'));

  it('closes a connection that authenticated with an auth message with 1011 and holds nothing of it', async () => {
    const hub = makeHub(failing);
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    conn.start();
    conn.receive(JSON.stringify({ type: 'auth', data: { token: 't' } }), false);
    await vi.waitFor(() => expect(transport.closed).toEqual({ code: 1011, reason: 'internal error' }));
    expect(conn.state).toBe('closed');
    expect(transport.types()).not.toContain('auth_success');
    expect(hub.connections.size).toBe(0);
    expect(hub.connectionsOf('u1').size).toBe(0);
    expect(hub.subscribersOf('user.u1')).toBe(0);
    expect(hub.subscribersOf('broadcast')).toBe(0);
  });

  it('closes a connection that authenticated on the upgrade with 1011 and holds nothing of it', async () => {
    const hub = makeHub(failing);
    const transport = new MemoryTransport();
    const conn = hub.connect(transport, 'test');
    conn.start(principal);
    conn.receive('{"type":"ping"}', false);
    await vi.waitFor(() => expect(transport.closed).toEqual({ code: 1011, reason: 'internal error' }));
    expect(transport.types()).toEqual([]);
    expect(hub.connections.size).toBe(0);
    expect(hub.connectionsOf('u1').size).toBe(0);
    expect(hub.subscribersOf('user.u1')).toBe(0);
  });
});
