/**
 * Two sidecar instances on different ports sharing one real nats-server: admin actions and
 * questions reach the whole fleet through NATS, and `scope=local` stays on one instance.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { api, fleetChange, fleetFormed } from '../helpers/http.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

const P = '/api/v1/websocket';
const FLEET_TIMEOUT = 500;

let nats: TestNats;
let a: TestSidecar;
let b: TestSidecar;
let admin: string;
let backend: NatsConnection;

beforeAll(async () => {
  nats = await startTestNats();
  [a, b] = await Promise.all([
    startTestSidecar(nats.url, { fleetTimeout: FLEET_TIMEOUT }),
    startTestSidecar(nats.url, { fleetTimeout: FLEET_TIMEOUT }),
  ]);
  await fleetFormed(a, b);
  admin = await a.token('root', { roles: ['admin'] });
  backend = await publisher(nats.url);
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await backend?.close();
  await Promise.all([a?.stop(), b?.stop()]);
  await nats?.cleanup();
});

const get = (side: TestSidecar, path: string) => api(side.httpUrl, 'GET', path, { token: admin });
const post = (side: TestSidecar, path: string, body?: unknown) => api(side.httpUrl, 'POST', path, { token: admin, body });

async function client(side: TestSidecar, sub: string, project?: string): Promise<TestClient> {
  const c = await connectClient(`${side.wsUrl}?token=${await side.token(sub)}`);
  await c.waitForMessage((m) => m.type === 'auth_success');
  if (project) {
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: project } });
    await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
  }
  return c;
}

describe('counts and lists across the fleet', () => {
  // First in the file: no earlier test's sockets are still closing, so totals are exact.
  it('cluster counts equal the sum of both instances and scope=local is this instance part', async () => {
    await Promise.all([client(a, 'u1', 'p1'), client(a, 'u1'), client(b, 'u1', 'p1'), client(b, 'u2')]);
    const ids = [a.sidecar.instanceId, b.sidecar.instanceId].sort();

    const total = await get(a, `${P}/connections/count`);
    expect(total.status).toBe(200);
    expect(total.body).toMatchObject({ count: 4, scope: 'cluster', missing: [] });
    expect(total.body.instances.map((i: any) => i.instance_id)).toEqual(ids);
    expect(total.body.instances.map((i: any) => i.count)).toEqual(ids.map(() => 2));

    for (const [side, path, local, cluster] of [
      [a, `${P}/connections/count`, 2, 4],
      [b, `${P}/connections/count`, 2, 4],
      [a, `${P}/users/u1/connections/count`, 2, 3],
      [b, `${P}/users/u1/connections/count`, 1, 3],
      [b, `${P}/users/u2/connections/count`, 1, 1],
      [a, `${P}/users/u2/connections/count`, 0, 1],
      [a, `${P}/projects/p1/connections/count`, 1, 2],
      [b, `${P}/projects/p1/connections/count`, 1, 2],
    ] as [TestSidecar, string, number, number][]) {
      expect((await get(side, path)).body.count, path).toBe(cluster);
      const mine = await get(side, `${path}?scope=local`);
      expect(mine.body, `${path}?scope=local`).toMatchObject({ count: local, scope: 'local' });
      expect(mine.body.instances).toEqual([{ instance_id: side.sidecar.instanceId, count: local }]);
    }

    const stats = await get(b, `${P}/stats`);
    expect(stats.body).toMatchObject({ scope: 'cluster', instance_id: b.sidecar.instanceId, instance_count: 2, connections: 4 });
    expect(stats.body.instances.map((i: any) => i.instance_id)).toEqual(ids);
    expect((await get(b, `${P}/stats?scope=local`)).body).toMatchObject({ instance_count: 1, connections: 2 });

    const metrics = await get(a, `${P}/metrics`);
    const parts = await Promise.all([a, b].map(async (s) => (await get(s, `${P}/metrics?scope=local`)).body.hub));
    expect(metrics.body.hub.active_connections).toBe(4);
    expect(metrics.body.hub.total_connections).toBe(parts[0].total_connections + parts[1].total_connections);
    expect(metrics.body.instances).toHaveLength(2);
  });

  it('lists the connections of every instance, each row naming its instance', async () => {
    await Promise.all([client(a, 'lister'), client(b, 'lister', 'pl')]);
    const res = await get(b, `${P}/connections?user_id=lister`);
    expect(res.body).toMatchObject({ count: 2, truncated: false, missing: [] });
    const rows = res.body.connections.map((c: any) => [c.instance_id, c.user_id, c.projects]);
    expect(rows).toEqual(
      expect.arrayContaining([
        [a.sidecar.instanceId, 'lister', []],
        [b.sidecar.instanceId, 'lister', ['pl']],
      ]),
    );
    for (const row of res.body.connections) expect(row.id.startsWith(row.instance_id)).toBe(true);
    const local = await get(b, `${P}/connections?user_id=lister&scope=local`);
    expect(local.body.connections.map((c: any) => c.instance_id)).toEqual([b.sidecar.instanceId]);
  });
});

describe('actions across the fleet', () => {
  it('a project message posted to instance A reaches subscribers on instance B', async () => {
    const [onA, onB] = await Promise.all([client(a, 'fan-a', 'shared'), client(b, 'fan-b', 'shared')]);
    const res = await post(a, `${P}/projects/shared/message`, { type: 'task_updated', data: { id: 3 } });
    expect(res.status).toBe(200);
    for (const c of [onA, onB]) {
      expect(await c.waitForMessage((m) => m.type === 'task_updated')).toMatchObject({
        seq: res.body.seq,
        project_id: 'shared',
        data: { id: 3 },
      });
    }
  });

  it('admin disconnect of a user connected to both instances closes both with 4010', async () => {
    const [onA, onB, bystander] = await Promise.all([client(a, 'kicked'), client(b, 'kicked'), client(b, 'stays')]);
    const res = await post(b, `${P}/users/kicked/disconnect`, { reason: 'security review' });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ disconnected: 2, scope: 'cluster', missing: [] });
    expect(res.body.instances.map((i: any) => i.disconnected)).toEqual([1, 1]);
    for (const c of [onA, onB]) expect(await c.waitForClose()).toEqual({ code: 4010, reason: 'security review' });
    bystander.send({ type: 'ping' });
    expect((await bystander.waitForMessage((m) => m.type === 'pong')).type).toBe('pong');
  });

  it('admin disconnect of a project closes its subscribers on both instances', async () => {
    const [onA, onB] = await Promise.all([client(a, 'pa', 'doomed'), client(b, 'pb', 'doomed')]);
    const res = await post(a, `${P}/projects/doomed/disconnect`);
    expect(res.body.disconnected).toBe(2);
    for (const c of [onA, onB]) expect((await c.waitForClose()).code).toBe(4010);
  });

  it('scope=local disconnects only on the instance asked', async () => {
    const [onA, onB] = await Promise.all([client(a, 'half'), client(b, 'half')]);
    const res = await post(a, `${P}/users/half/disconnect?scope=local`);
    expect(res.body).toMatchObject({ disconnected: 1, scope: 'local' });
    expect((await onA.waitForClose()).code).toBe(4010);
    onB.send({ type: 'ping' });
    expect((await onB.waitForMessage((m) => m.type === 'pong')).type).toBe('pong');
  });

  it('a backend can disconnect a user everywhere by publishing ws.ctl.disconnect', async () => {
    const [onA, onB] = await Promise.all([client(a, 'by-backend'), client(b, 'by-backend')]);
    backend.publish('ws.ctl.disconnect', JSON.stringify({ user_id: 'by-backend', reason: 'logged out' }));
    for (const c of [onA, onB]) expect(await c.waitForClose()).toEqual({ code: 4010, reason: 'logged out' });
  });

  it('every instance answers a backend request on ws.ctl.count', async () => {
    await client(b, 'asked');
    const answers: any[] = [];
    const replies = await backend.requestMany('ws.ctl.count', JSON.stringify({ user_id: 'asked' }), {
      strategy: 'count',
      maxMessages: 2,
      maxWait: 5_000,
    });
    for await (const m of replies) answers.push(m.json());
    expect(answers.map((x) => [x.instance_id, x.count]).sort()).toEqual(
      [
        [a.sidecar.instanceId, 0],
        [b.sidecar.instanceId, 1],
      ].sort(),
    );
  });
});

describe('membership', () => {
  it('an instance that stops leaves the fleet at once, and answers stop counting it', async () => {
    const c = await startTestSidecar(nats.url, { fleetTimeout: FLEET_TIMEOUT });
    await fleetFormed(a, b, c);
    expect((await get(a, `${P}/stats`)).body.instance_count).toBe(3);
    const gone = fleetChange(a, (ids) => !ids.includes(c.sidecar.instanceId));
    await c.stop();
    await gone;
    const stats = await get(a, `${P}/stats`);
    expect(stats.body).toMatchObject({ instance_count: 2, missing: [] });
  });

  it('reports an instance that is known but silent as missing after fleetTimeout', async () => {
    const known = fleetChange(a, (ids) => ids.includes('ghost'));
    backend.publish('ws.ctl.hello', JSON.stringify({ instance_id: 'ghost' }));
    await known;
    try {
      const res = await get(a, `${P}/connections/count`);
      expect(res.status).toBe(200);
      expect(res.body.missing).toEqual(['ghost']);
      expect(res.body.instances).toHaveLength(2);
    } finally {
      const forgotten = Promise.all([a, b].map((s) => fleetChange(s, (ids) => !ids.includes('ghost'))));
      backend.publish('ws.ctl.bye', JSON.stringify({ instance_id: 'ghost' }));
      await forgotten;
    }
  });

  it('names the answering instance in a header and each instance in Prometheus labels', async () => {
    for (const side of [a, b]) {
      const res = await api(side.httpUrl, 'GET', '/metrics');
      expect(res.headers.get('x-sidecar-instance')).toBe(side.sidecar.instanceId);
      expect(res.text).toContain(`instance_id="${side.sidecar.instanceId}"`);
    }
  });
});
