/**
 * Health follows NATS: a real nats-server is stopped and started again under a running sidecar.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Status } from '@nats-io/transport-node';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { api, eventually } from '../helpers/http.js';

let nats: TestNats;
let side: TestSidecar;

beforeAll(async () => {
  nats = await startTestNats();
  side = await startTestSidecar(nats.url);
});
afterAll(async () => {
  await side?.stop();
  await nats?.cleanup();
});

/** The next status event of the given type on the sidecar's NATS connection. */
async function nextStatus(type: Status['type']): Promise<void> {
  for await (const s of side.sidecar.broker.nc.status()) if (s.type === type) return;
}

it('answers health 503 while NATS is unreachable and 200 again once it is back', async () => {
  const admin = await side.token('root', { roles: ['admin'] });
  const get = (path: string) => api(side.httpUrl, 'GET', path, { token: admin });
  expect((await get('/api/v1/websocket/health')).status).toBe(200);

  const down = nextStatus('disconnect');
  await nats.stop();
  await down;
  const health = await eventually(async () => {
    const res = await get('/api/v1/websocket/health');
    expect(res.status).toBe(503);
    return res;
  });
  expect(health.body).toMatchObject({ status: 'unavailable', nats: { connected: false } });
  expect((await get('/readyz')).status).toBe(503);
  expect((await get('/healthz')).status).toBe(200); // the process itself is fine
  // Fleet questions need NATS; this instance alone can still answer.
  const cluster = await get('/api/v1/websocket/connections/count');
  expect(cluster.status).toBe(503);
  expect(cluster.body.error).toMatch(/NATS/);
  expect((await get('/api/v1/websocket/connections/count?scope=local')).status).toBe(200);
  const publish = await api(side.httpUrl, 'POST', '/api/v1/websocket/broadcast', {
    token: admin,
    body: { type: 'x', data: {} },
  });
  expect(publish.status).toBe(503);
  expect((await api(side.httpUrl, 'GET', '/metrics')).text).toMatch(/^sidecar_nats_connected\{[^}]*\} 0$/m);

  const up = nextStatus('reconnect');
  await nats.restart(); // already stopped: starts it again on the same port and store
  await up;
  await eventually(async () => expect((await get('/api/v1/websocket/health')).status).toBe(200));
  // Ready a moment after the link: the stream check and the presence watcher run again first.
  await eventually(async () => expect((await get('/readyz')).status).toBe(200));
  expect((await get('/api/v1/websocket/connections/count')).status).toBe(200);
});
