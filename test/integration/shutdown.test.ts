/**
 * Graceful drain: readiness goes first, then sockets close with 1001 and a reconnect hint, the
 * instance leaves the fleet, NATS drains, all within shutdownTimeout.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { api, fleetChange, fleetFormed } from '../helpers/http.js';
import { closeAllClients, connectClient, UpgradeRejectedError } from '../helpers/ws-client.js';

let nats: TestNats;
let peer: TestSidecar;

beforeAll(async () => {
  nats = await startTestNats();
  peer = await startTestSidecar(nats.url);
});
afterAll(async () => {
  await closeAllClients();
  await peer?.stop();
  await nats?.cleanup();
});

it('drains: readyz 503 and upgrades refused first, then 1001 with a reconnect hint, NATS drained, within shutdownTimeout', async () => {
  const shutdownTimeout = 8_000;
  // drainDelay keeps the drain's first phase open long enough to observe it from outside.
  const side = await startTestSidecar(nats.url, { drainDelay: 1_500, shutdownTimeout });
  await fleetFormed(side, peer);
  const token = await side.token('leaving');
  const c = await connectClient(`${side.wsUrl}?token=${token}`);
  await c.waitForMessage((m) => m.type === 'auth_success');

  const left = fleetChange(peer, (ids) => !ids.includes(side.sidecar.instanceId));
  const started = Date.now();
  const stopped = side.stop();

  const ready = await api(side.httpUrl, 'GET', '/readyz');
  expect(ready.status).toBe(503);
  expect(ready.body).toMatchObject({ ready: false, draining: true });
  const refused = await connectClient(`${side.wsUrl}?token=${token}`).catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(UpgradeRejectedError);
  expect((refused as UpgradeRejectedError).status).toBe(503);

  const closed = await c.waitForClose(shutdownTimeout);
  expect(closed.code).toBe(1001);
  expect(closed.reason).toMatch(/reconnect/);
  await stopped;
  expect(Date.now() - started).toBeLessThan(shutdownTimeout);
  expect(side.sidecar.broker.nc.isClosed()).toBe(true);
  await left; // its peer heard it leave
  expect(c.ws.readyState).toBe(WebSocket.CLOSED);
});

it('still closes NATS, the port and the metrics when a shutdown step fails', async () => {
  const side = await startTestSidecar(nats.url);
  const { sidecar } = side;
  (sidecar.presence as { stop(): Promise<void> }).stop = () => Promise.reject(new Error('presence stop failed'));
  await expect(sidecar.stop()).resolves.toBeUndefined();
  expect(sidecar.broker.nc.isClosed()).toBe(true);
  expect(sidecar.server.listening).toBe(false);
});
