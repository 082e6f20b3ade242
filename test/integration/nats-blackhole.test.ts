/**
 * A NATS link that stops answering without a reset (partition, black-holed route). The sidecar
 * must notice (PINGs unanswered), reconnect once the route is back, and repair the gap from the
 * stream: its clients get every event published meanwhile, in order, once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { storedPublisher } from '../helpers/streams.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';
import { waitFor } from '../helpers/wait.js';

const PING_MS = 500;
let nats: TestNats;
let proxy: TcpProxy;
let side: TestSidecar;

beforeAll(async () => {
  nats = await startTestNats();
  proxy = await startTcpProxy({ port: nats.port });
  side = await startTestSidecar(proxy.url, { natsPingInterval: PING_MS });
});
afterAll(async () => {
  await closeAllClients();
  await side?.stop();
  await proxy?.close();
  await nats?.cleanup();
});

describe('a black-holed NATS link', () => {
  it('is noticed within three ping intervals, reconnected once the route is back, and the gap repaired in order', async () => {
    const c = await connectClient(`${side.wsUrl}?token=${await side.token('u-hole')}`);
    await c.waitForMessage((m) => m.type === 'auth_success');
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'hole' } });
    await c.waitForMessage((m) => m.type === 'subscription');
    const nc = await publisher(nats.url); // the publisher's own link is fine
    const pub = storedPublisher(nc);
    const seqs: number[] = [];
    seqs.push(await pub.publish('ws.project.hole', 'n', { i: 0 }));
    await c.waitForMessage((m) => m.type === 'n' && m.data.i === 0);

    proxy.blackhole();
    const holedAt = Date.now();
    for (let i = 1; i <= 20; i++) seqs.push(await pub.publish('ws.project.hole', 'n', { i }));
    await waitFor(() => !side.sidecar.broker.connected, 3 * PING_MS + 5_000, 'the sidecar noticed the dead link');
    expect(Date.now() - holedAt).toBeLessThan(3 * PING_MS + 2_000);
    expect((await fetch(`${side.httpUrl}/readyz`)).status).toBe(503);

    proxy.restore();
    for (let i = 21; i <= 25; i++) seqs.push(await pub.publish('ws.project.hole', 'n', { i }));
    await c.waitForMessage((m) => m.type === 'n' && m.data.i === 25, 20_000);
    const got = c.messages.filter((m) => m.type === 'n');
    expect(got.map((m) => m.data.i)).toEqual(Array.from({ length: 26 }, (_, i) => i));
    expect(got.map((m) => m.seq)).toEqual(seqs);
    await waitFor(async () => (await fetch(`${side.httpUrl}/readyz`)).status === 200, 10_000, 'ready again');
    await nc.close();
  }, 40_000);
});
