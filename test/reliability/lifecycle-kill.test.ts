/**
 * Lifecycle events when an instance dies: three sidecar processes on one NATS, one is killed with
 * SIGKILL while it holds connections. The two survivors' presence sweep announces each of the
 * dead instance's connections as `disconnected` with `reason: instance_lost`, exactly once, within
 * presenceTTL + 10 s; the survivors' own connections are not touched.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { waitFor } from '../helpers/wait.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { tailLifecycle, type LifecycleTail } from '../helpers/lifecycle.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';
import { startChildSidecar, type ChildSidecar } from './helpers/child-sidecar.js';
import { report } from './helpers/report.js';
import { size } from './helpers/sizes.js';

const PRESENCE_TTL_MS = 3000;
const ON_DEAD = size(20, 500);
const ON_SURVIVORS = size(4, 50);

let nats: TestNats | undefined;
let tail: LifecycleTail | undefined;
const children: ChildSidecar[] = [];

afterAll(async () => {
  await closeAllClients();
  await tail?.close();
  await Promise.all(children.map((c) => c.stop()));
  await nats?.cleanup();
}, 60_000);

async function openOn(sc: ChildSidecar, user: string, project: string): Promise<string> {
  const c = await connectClient(`${sc.wsUrl}?token=${await sc.token(user)}`);
  const ok = await c.waitForMessage((m) => m.type === 'auth_success', 15_000);
  c.send({ type: 'subscription', data: { action: 'subscribe', project_id: project } });
  await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed', 15_000);
  return ok.data.connection_id;
}

describe('lifecycle events across a kill -9', () => {
  it('announces every connection of the killed instance as disconnected (instance_lost) exactly once, with two survivors', async () => {
    nats = await startTestNats();
    const env = { SIDECAR_PRESENCE_TTL: PRESENCE_TTL_MS };
    const [dead, b, c] = await Promise.all([0, 1, 2].map(() => startChildSidecar(nats!.url, env)));
    children.push(dead, b, c);
    tail = await tailLifecycle(nats.url);

    const deadIds: string[] = [];
    for (let i = 0; i < ON_DEAD; i++) deadIds.push(await openOn(dead, `lk-u${i}`, `lk-p${i % 3}`));
    const liveIds: string[] = [];
    for (let i = 0; i < ON_SURVIVORS; i++) liveIds.push(await openOn(i % 2 ? c : b, `lk-s${i}`, 'lk-p0'));
    await tail.waitFor((ev) => [...deadIds, ...liveIds].every((id) => ev.some((e) => e.type === 'subscribed' && e.data.connection_id === id)), 20_000, 'every subscribed');

    await dead.kill9();
    const killedAt = Date.now();
    const lost = () => tail!.events.filter((e) => e.type === 'disconnected' && deadIds.includes(e.data.connection_id));
    await tail.waitFor(() => new Set(lost().map((e) => e.data.connection_id)).size === deadIds.length, PRESENCE_TTL_MS + 10_000 + 5_000, 'instance_lost for every connection');
    const allWithin = Date.now() - killedAt;

    // The survivors finish their sweeps: the dead instance's marker and records are gone.
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    const records = async () => Object.keys((await jsm.streams.info('KV_WS_CONNECTIONS', { subjects_filter: '>' })).state.subjects ?? {});
    await waitFor(async () => !(await records()).some((s) => s.includes(`.${dead.instanceId}.`)), 15_000, 'dead records removed');
    // A marker published after every sweep: a late duplicate would be stored before it.
    await jetstream(nc).publish('ws.lifecycle.connected', JSON.stringify({ type: 'marker', data: {} }));
    await tail.waitFor((ev) => ev.some((e) => e.type === 'marker'), 10_000, 'marker');
    await nc.close();

    const perConnection = new Map<string, number>();
    for (const e of lost()) perConnection.set(e.data.connection_id, (perConnection.get(e.data.connection_id) ?? 0) + 1);
    const survivorsDisconnected = tail.events.filter((e) => e.type === 'disconnected' && liveIds.includes(e.data.connection_id));
    report('lifecycle-kill-9', {
      connections_on_killed_instance: ON_DEAD,
      connections_on_survivors: ON_SURVIVORS,
      presence_ttl_ms: PRESENCE_TTL_MS,
      all_announced_within_ms: allWithin,
      duplicates: [...perConnection.values()].filter((n) => n > 1).length,
    });
    expect([...perConnection.values()].every((n) => n === 1)).toBe(true);
    expect(perConnection.size).toBe(ON_DEAD);
    for (const e of lost()) {
      expect(e.data).toMatchObject({ reason: 'instance_lost', code: 1006, instance_id: dead.instanceId });
      expect(e.data.user_id).toMatch(/^lk-u\d+$/);
    }
    expect(allWithin).toBeLessThanOrEqual(PRESENCE_TTL_MS + 10_000);
    expect(survivorsDisconnected).toEqual([]);
    expect(b.alive && c.alive).toBe(true);
  }, 120_000);
});
