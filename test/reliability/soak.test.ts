/**
 * Soak: mixed load on a sidecar process for a while (10 minutes in the full run): connection
 * churn (graceful closes, abrupt drops, sockets that leave before authenticating), resumes with
 * `since`, pings and acks, a steady stream of project events and direct messages, admin API
 * reads. The process's RSS and open descriptors must be flat after warm-up, and the long-lived
 * apps must still see every event exactly once.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Publisher } from '../../src/publisher/index.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';
import { closeAllApps, reliablePublisher, startApps, waitComplete, type AppPlan } from './helpers/apps.js';
import { startChildSidecar, type ChildSidecar } from './helpers/child-sidecar.js';
import { DeliveryLedger, type StreamKey } from './helpers/ledger.js';
import { scrape } from './helpers/metrics.js';
import { ProcSampler } from './helpers/proc.js';
import { mib, report, round, slope } from './helpers/report.js';
import { FULL, size } from './helpers/sizes.js';

const DURATION_MS = size(20_000, 10 * 60_000);
const WARMUP_MS = size(6_000, 2 * 60_000);
const STABLE_APPS = size(8, 40);
const PROJECTS = 20;
const CHURN_CONCURRENCY = size(10, 20);
/** New connections per second, over all lanes. */
const CHURN_RATE = size(60, 30);
const EVENTS_PER_SECOND = 40;

let nats: TestNats | undefined;
let side: ChildSidecar | undefined;
let pub: Publisher | undefined;

afterAll(async () => {
  await closeAllClients();
  await closeAllApps();
  await pub?.close();
  await side?.stop();
  await nats?.cleanup();
}, 60_000);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('soak', () => {
  it(`keeps RSS and descriptors flat under ${DURATION_MS / 1000} s of mixed load, and loses nothing`, async () => {
    nats = await startTestNats();
    side = await startChildSidecar(nats.url, { SIDECAR_MAX_CONNECTIONS_PER_USER: 1000 }, { gcProbe: true });
    const s = side;
    pub = await reliablePublisher(nats.url);
    const p = pub;
    const projects = Array.from({ length: PROJECTS }, (_, i) => `soak-p${i}`);

    const ledger = new DeliveryLedger();
    const plans: AppPlan[] = Array.from({ length: STABLE_APPS }, (_, i) => ({
      name: `stable${i}`,
      userId: `soak-stable${i}`,
      projects: [projects[i % PROJECTS], projects[(i + 7) % PROJECTS]],
      direct: true,
      url: s.wsUrl,
    }));
    await startApps(ledger, plans);
    const fdsBaseline = s.fds();

    const sampler = new ProcSampler(s.pid, FULL ? 1000 : 250);
    const started = Date.now();
    const running = () => Date.now() - started < DURATION_MS;
    let maxSeq = 0;
    const churn = { connections: 0, failures: 0, errors: [] as string[] };
    const counts = { events: 0, direct: 0, adminReads: 0 };

    // A steady publisher: project events to every project, direct messages to the stable users.
    const publishing = (async () => {
      const streams: StreamKey[] = [...projects.map((x) => `project:${x}`), ...plans.map((x) => `user:${x.userId}`)];
      let k = 0;
      while (running()) {
        const key = streams[k++ % streams.length];
        await ledger.publishNext(p, key);
        if (key.startsWith('user:')) counts.direct += 1;
        else counts.events += 1;
        await sleep(1000 / EVENTS_PER_SECOND);
      }
    })();

    // Churn: short-lived connections of every kind, CHURN_CONCURRENCY at a time.
    const churnOne = async (i: number) => {
      const user = `soak-churn${i % 100}`;
      const project = projects[i % PROJECTS];
      const mode = i % 5;
      if (mode === 4) {
        const c = await connectClient(s.wsUrl); // leaves before authenticating
        await c.waitForMessage((m) => m.type === 'auth_required');
        c.ws.terminate();
        return;
      }
      const c = await connectClient(`${s.wsUrl}?token=${await s.token(user)}`);
      await c.waitForMessage((m) => m.type === 'auth_success');
      const since = i % 2 === 0 && maxSeq > 50 ? maxSeq - Math.floor(Math.random() * 50) : undefined;
      c.send({ type: 'subscription', data: { action: 'subscribe', project_id: project, ...(since ? { since } : {}) } });
      await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
      const ev = await c.waitForMessage((m) => typeof m.seq === 'number', 2000).catch(() => undefined);
      if (ev) maxSeq = Math.max(maxSeq, ev.seq);
      c.send({ type: 'ping' });
      c.send({ type: 'ack', data: { seq: Math.max(1, maxSeq) } });
      await c.waitForMessage((m) => m.type === 'pong');
      if (mode === 0) c.close(1000, 'bye');
      else if (mode === 1) c.ws.terminate();
      else {
        c.send({ type: 'subscription', data: { action: 'unsubscribe', project_id: project } });
        await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'unsubscribed');
        c.close();
      }
      await c.waitForClose(5000).catch(() => undefined);
    };
    const churning = Promise.all(
      Array.from({ length: CHURN_CONCURRENCY }, async (_, lane) => {
        const every = (1000 * CHURN_CONCURRENCY) / CHURN_RATE;
        for (let n = 0; running(); n++) {
          const t0 = Date.now();
          churn.connections += 1;
          await churnOne(n * CHURN_CONCURRENCY + lane).catch((err: Error) => {
            churn.failures += 1;
            if (churn.errors.length < 5) churn.errors.push(err.message.slice(0, 160));
          });
          await sleep(Math.max(0, every - (Date.now() - t0)));
        }
      }),
    );

    // What the process retains: the heap after a full GC, a few dozen times over the run.
    const heap: { x: number; y: number }[] = [];
    const probing = (async () => {
      while (running() && s.alive) {
        await sleep(DURATION_MS / 40);
        const m = await s.heapAfterGc().catch(() => undefined);
        if (m) heap.push({ x: (Date.now() - started) / 60_000, y: m.heapUsed });
      }
    })();

    // An operator's dashboard: admin reads every 2 s.
    const admin = await s.token('soak-admin', { roles: ['admin'] });
    const readFailures: string[] = [];
    const reading = (async () => {
      while (running() && s.alive) {
        try {
          await fetch(`${s.httpUrl}/api/v1/websocket/metrics`, { headers: { Authorization: `Bearer ${admin}` } }).then((r) => r.text());
          await fetch(`${s.httpUrl}/metrics`).then((r) => r.text());
          counts.adminReads += 2;
        } catch (err) {
          readFailures.push((err as Error).message);
        }
        await sleep(2000);
      }
    })();

    await Promise.all([publishing, churning, reading, probing]);
    const samples = sampler.stop();
    if (!s.alive) {
      const { code, signal } = await s.exited;
      throw new Error(`the sidecar exited (${code ?? signal}) during the soak; its last output:\n${s.tail()}`);
    }
    const complete = await waitComplete(ledger, 30_000);
    const figures = ledger.figures();
    await closeAllClients();
    await closeAllApps();
    // Every connection gone: back to the descriptors held before the apps came.
    let open = Number.NaN;
    for (let i = 0; i < 100 && open !== 0; i++) {
      open = (await scrape(s.httpUrl))('sidecar_connections');
      if (open !== 0) await sleep(100);
    }
    await sleep(500);
    const fdsAfter = s.fds();

    const after = samples.filter((x) => x.t >= WARMUP_MS);
    const perMinute = (key: 'rss' | 'fds') => slope(after.map((x) => ({ x: x.t / 60_000, y: x[key] })));
    const rssSlope = perMinute('rss');
    const heapAfterWarmup = heap.filter((p) => p.x * 60_000 >= WARMUP_MS);
    const heapSlope = slope(heapAfterWarmup);
    const fdSlope = perMinute('fds');
    report('soak', {
      duration_s: DURATION_MS / 1000,
      warmup_s: WARMUP_MS / 1000,
      churned_connections: churn.connections,
      churn_failures: churn.failures,
      churn_errors: churn.errors,
      stable_apps: STABLE_APPS,
      project_events_published: counts.events,
      direct_messages_published: counts.direct,
      admin_reads: counts.adminReads,
      admin_read_failures: readFailures.length,
      ...figures,
      missing_sample: ledger.missing(10),
      rss_mib_start_warm_end: [mib(samples[0].rss), mib(after[0]?.rss ?? Number.NaN), mib(samples[samples.length - 1].rss)],
      rss_mib_min_max_after_warmup: [mib(Math.min(...after.map((x) => x.rss))), mib(Math.max(...after.map((x) => x.rss)))],
      rss_growth_mib_per_min: mib(rssSlope),
      heap_after_gc_mib_min_max_after_warmup: [mib(Math.min(...heapAfterWarmup.map((p) => p.y))), mib(Math.max(...heapAfterWarmup.map((p) => p.y)))],
      heap_after_gc_growth_mib_per_min: round(heapSlope / 1024 / 1024, 2),
      fds_min_max_after_warmup: [Math.min(...after.map((x) => x.fds)), Math.max(...after.map((x) => x.fds))],
      fds_growth_per_min: round(fdSlope, 2),
      fds_before_after: [fdsBaseline, fdsAfter],
      sidecar_alive: s.alive,
      sidecar_warnings: Object.fromEntries(s.warnings),
    });
    expect(s.alive).toBe(true);
    expect(ledger.missing()).toEqual([]);
    expect(complete).toBe(true);
    expect(figures).toMatchObject({ lost: 0, duplicated: 0, out_of_order: 0, publish_failures: 0 });
    expect(churn.failures).toBeLessThanOrEqual(Math.ceil(churn.connections * 0.02));
    expect(open).toBe(0);
    // The stable apps' sockets are closed too: fewer descriptors than at the baseline.
    expect(fdsAfter).toBeLessThanOrEqual(fdsBaseline);
    // Flat after warm-up: what is retained (heap after a full GC), and RSS. The short run is too
    // short for a slope to mean much: it catches gross leaks.
    expect(heapSlope).toBeLessThan((FULL ? 0.5 : 10) * 1024 * 1024);
    expect(rssSlope).toBeLessThan((FULL ? 2 : 80) * 1024 * 1024);
    // Descriptors follow the connections in flight (churn lanes run at the machine's pace), so the
    // slope is noisy; the exact check is the one above: all closed, fewer than at the start.
    expect(fdSlope).toBeLessThan(FULL ? 5 : 30);
  }, DURATION_MS + 180_000);
});
