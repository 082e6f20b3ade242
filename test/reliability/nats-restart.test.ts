/**
 * One nats-server restarted mid-stream with its JetStream store kept: first gracefully, then
 * killed with SIGKILL and started again. The sidecar's WebSocket clients stay connected (NATS is
 * behind the sidecar); apps on the client SDK must still end with every event the publisher SDK
 * had confirmed exactly once, in order per stream.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Publisher } from '../../src/publisher/index.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllApps, reliablePublisher, startApps, waitComplete, type AppPlan } from './helpers/apps.js';
import { DeliveryLedger, publishAll, type StreamKey } from './helpers/ledger.js';
import { report } from './helpers/report.js';
import { size } from './helpers/sizes.js';

const APPS = size(6, 60);
const PROJECTS = size(3, 10);
const PER_STREAM = size(40, 400);
const INTERVAL_MS = size(25, 20);

let nats: TestNats | undefined;
let side: TestSidecar | undefined;
let pub: Publisher | undefined;

afterAll(async () => {
  await closeAllApps();
  await pub?.close();
  await side?.stop();
  await nats?.cleanup();
}, 60_000);

describe('NATS server restart with its store kept', () => {
  it('loses and duplicates nothing across a graceful restart and a kill -9 of the only nats-server', async () => {
    nats = await startTestNats();
    const n = nats;
    side = await startTestSidecar(n.url);
    pub = await reliablePublisher(n.url);

    const ledger = new DeliveryLedger();
    const projects = Array.from({ length: PROJECTS }, (_, i) => `nr-p${i}`);
    const plans: AppPlan[] = Array.from({ length: APPS }, (_, i) => ({
      name: `app${i}`,
      userId: `nr-u${i}`,
      projects: [projects[i % PROJECTS], projects[(i + 1) % PROJECTS]],
      direct: i % 2 === 0,
      url: side!.wsUrl,
    }));
    const apps = await startApps(ledger, plans);
    const disconnects: number[] = [];
    for (const c of apps) c.on('disconnected', (d) => disconnects.push(d.code));
    const streams: StreamKey[] = [...projects.map((p) => `project:${p}`), ...plans.filter((p) => p.direct).map((p) => `user:${p.userId}`)];

    const faults: string[] = [];
    const started = Date.now();
    await publishAll(ledger, pub, streams, PER_STREAM, INTERVAL_MS, [
      {
        at: Math.floor(PER_STREAM / 3),
        run: async () => {
          faults.push(`graceful restart at ${Date.now() - started} ms`);
          await n.restart();
        },
      },
      {
        at: Math.floor((2 * PER_STREAM) / 3),
        run: async () => {
          faults.push(`kill -9 and start at ${Date.now() - started} ms`);
          await n.kill();
          await n.restart(); // stop() is a no-op on a dead server: this starts it on the same port and store
        },
      },
    ]);
    const complete = await waitComplete(ledger, 30_000);
    await publishAll(ledger, pub, streams, 1, 0); // a late duplicate would arrive before this marker
    const completeWithMarker = await waitComplete(ledger, 15_000);
    const figures = ledger.figures();
    report('nats-restart', {
      apps: APPS,
      streams: streams.length,
      ...figures,
      missing_sample: ledger.missing(10),
      faults,
      sidecar_nats_reconnects: side.sidecar.broker.stats.reconnects,
      gaps_detected: side.sidecar.broker.stats.gaps,
      websocket_disconnects: disconnects.length,
      duration_s: Math.round((Date.now() - started) / 1000),
    });
    expect(ledger.missing(), 'missing deliveries').toEqual([]);
    expect(complete && completeWithMarker).toBe(true);
    expect(figures).toMatchObject({ lost: 0, duplicated: 0, out_of_order: 0, publish_failures: 0 });
    expect(side.sidecar.broker.stats.reconnects).toBeGreaterThanOrEqual(2);
    expect(disconnects).toEqual([]); // the WebSocket side never noticed
  }, 180_000);
});
