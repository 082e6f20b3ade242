/**
 * A 3-node NATS cluster with the event stream at R3: one node is killed (SIGKILL) mid-stream —
 * the one a sidecar is connected to — brought back with its store, and then the stream's leader
 * is killed. Apps on the client SDK, spread over two sidecars, must end with every event the
 * publisher SDK had confirmed exactly once, in order per stream.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, describe, expect, it, onTestFailed } from 'vitest';
import { startTestCluster, type TestCluster } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import type { Publisher } from '../../src/publisher/index.js';
import { closeAllApps, reliablePublisher, startApps, waitComplete, type AppPlan } from './helpers/apps.js';
import { DeliveryLedger, publishAll, type StreamKey } from './helpers/ledger.js';
import { report } from './helpers/report.js';
import { size } from './helpers/sizes.js';

const APPS = size(6, 60);
const PROJECTS = size(3, 10);
const PER_STREAM = size(40, 400);
const INTERVAL_MS = size(25, 20);

let cluster: TestCluster | undefined;
const sidecars: TestSidecar[] = [];
let pub: Publisher | undefined;

afterAll(async () => {
  // Every step runs even when an earlier one fails: no nats-server may outlive the file.
  const t0 = Date.now();
  const errors: unknown[] = [];
  const step = async (name: string, fn: () => Promise<unknown> | undefined): Promise<void> => {
    await Promise.resolve()
      .then(fn)
      .catch((err: unknown) => errors.push(err));
    if (process.env.RELIABILITY_VERBOSE) console.log(`[nats-cluster] afterAll: ${name} closed at ${Date.now() - t0} ms`);
  };
  await step('apps', () => closeAllApps());
  await step('publisher', () => pub?.close());
  await step('sidecars', () => Promise.all(sidecars.map((s) => s.stop())));
  await step('cluster', () => cluster?.cleanup());
  if (errors.length) throw errors[0];
}, 60_000);

/** Resolves once every replica of the stream is current (a restarted node has caught up). */
async function replicasCurrent(nc: NatsConnection, replicas: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const jsm = await jetstreamManager(nc, { timeout: 2000, checkAPI: false });
      const cluster = (await jsm.streams.info('WS_EVENTS')).cluster;
      const followers = cluster?.replicas ?? [];
      if (cluster?.leader && followers.length === replicas - 1 && followers.every((r) => r.current && !r.offline)) return;
    } catch {
      /* a failover in progress: ask again */
    }
    if (Date.now() > deadline) throw new Error('stream replicas not current within 30 s');
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The stream's current leader (server name), asked through a connection that rides out failovers. */
async function streamLeader(nc: NatsConnection): Promise<string> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const jsm = await jetstreamManager(nc, { timeout: 2000, checkAPI: false });
      const leader = (await jsm.streams.info('WS_EVENTS')).cluster?.leader;
      if (leader) return leader;
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    if (Date.now() > deadline) throw new Error('the stream has no leader');
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('NATS cluster failover (R3)', () => {
  it('loses and duplicates nothing when a node, then the stream leader, is killed mid-stream', async () => {
    const setupStarted = Date.now();
    cluster = await startTestCluster(3);
    const clusterReadyMs = Date.now() - setupStarted;
    const c = cluster;
    const all = c.urls.join(',');
    const a = await startTestSidecar(all, { streamReplicas: 3 });
    sidecars.push(a);
    const b = await startTestSidecar([...c.urls].reverse().join(','), { streamReplicas: 3 });
    sidecars.push(b);
    pub = await reliablePublisher(c.urls);

    const ledger = new DeliveryLedger();
    const projects = Array.from({ length: PROJECTS }, (_, i) => `cl-p${i}`);
    const plans: AppPlan[] = Array.from({ length: APPS }, (_, i) => ({
      name: `app${i}`,
      userId: `cl-u${i}`,
      projects: [projects[i % PROJECTS], projects[(i + 1) % PROJECTS]],
      direct: i % 2 === 0,
      url: i % 2 ? [a.wsUrl, b.wsUrl] : [b.wsUrl, a.wsUrl],
    }));
    await startApps(ledger, plans);
    const setupMs = Date.now() - setupStarted;
    const streams: StreamKey[] = [...projects.map((p) => `project:${p}`), ...plans.filter((p) => p.direct).map((p) => `user:${p.userId}`)];

    const initialServers = [a, b].map((x) => x.sidecar.broker.nc.info?.server_name);
    const byName = (name: string | undefined) => c.servers.find((s, i) => `n${i + 1}` === name);
    const events: string[] = [];
    const started = Date.now();
    /** Phase timestamps (ms since the first publish), printed as they happen when verbose: a hang shows where it stopped. */
    const phases: Record<string, number> = {};
    const phase = (name: string): void => {
      phases[name] = Date.now() - started;
      if (process.env.RELIABILITY_VERBOSE) console.log(`[nats-cluster] ${name} at ${phases[name]} ms`);
    };
    // A failure or a timeout says how far the scenario got.
    onTestFailed(() => console.log(`[nats-cluster] failed; phases (ms): ${JSON.stringify(phases)}; faults: ${JSON.stringify(events)}`));
    let firstVictim: string | undefined;
    let caughtUp: Promise<void> = Promise.resolve();
    await publishAll(ledger, pub, streams, PER_STREAM, INTERVAL_MS, [
      {
        at: Math.floor(PER_STREAM / 4),
        run: async () => {
          firstVictim = a.sidecar.broker.nc.info?.server_name;
          const leader = await streamLeader(pub!.connection);
          events.push(`kill ${firstVictim} (sidecar A's server${leader === firstVictim ? ', stream leader' : ''}) at ${Date.now() - started} ms`);
          await byName(firstVictim)!.kill();
          phase('first_kill');
        },
      },
      {
        at: Math.floor(PER_STREAM / 2),
        run: async () => {
          await byName(firstVictim)!.restart();
          events.push(`restart ${firstVictim} at ${Date.now() - started} ms`);
          phase('restarted');
          caughtUp = replicasCurrent(pub!.connection, 3).then(() => {
            events.push(`${firstVictim} caught up at ${Date.now() - started} ms`);
            phase('caught_up');
          });
          // Awaited by the next fault; a failure before then is not an unhandled rejection.
          caughtUp.catch(() => {});
        },
      },
      {
        at: Math.floor((3 * PER_STREAM) / 4),
        run: async () => {
          await caughtUp; // a quorum of current replicas is left, as in a rolling failure
          const leader = await streamLeader(pub!.connection);
          events.push(`kill ${leader} (stream leader) at ${Date.now() - started} ms`);
          await byName(leader)!.kill();
          phase('leader_kill');
        },
      },
    ]);
    phase('published');
    const publishedAt = phases.published;
    // Generous but bounded: delivery ends a second or two after JetStream answers again (a gap
    // repair waits for it), and a loaded machine can slow the elections down.
    const complete = await waitComplete(ledger, 60_000);
    phase('all_delivered');
    const completeAt = phases.all_delivered;
    // One more event per stream: a late duplicate of anything earlier would arrive before it.
    await publishAll(ledger, pub, streams, 1, 0);
    const completeWithMarker = await waitComplete(ledger, 15_000);
    phase('marker_delivered');
    const figures = ledger.figures();
    report('nats-cluster-failover', {
      apps: APPS,
      streams: streams.length,
      ...figures,
      missing_sample: ledger.missing(10),
      faults: events,
      gaps_detected: a.sidecar.broker.stats.gaps + b.sidecar.broker.stats.gaps,
      sidecar_nats: [a, b].map((x) => ({ server: x.sidecar.broker.nc.info?.server_name, ...x.sidecar.broker.stats })),
      initial_servers: initialServers,
      cluster_ready_ms: clusterReadyMs,
      setup_ms: setupMs,
      phases_ms: phases,
      publishing_done_ms: publishedAt,
      all_delivered_ms: completeAt,
      duration_s: Math.round((Date.now() - started) / 1000),
    });
    expect(ledger.missing(), 'missing deliveries').toEqual([]);
    expect(complete && completeWithMarker).toBe(true);
    expect(figures).toMatchObject({ lost: 0, duplicated: 0, out_of_order: 0, publish_failures: 0 });
    expect(figures.events_published).toBe(streams.length * (PER_STREAM + 1));
    expect(events).toHaveLength(4);
  }, 180_000);
});
