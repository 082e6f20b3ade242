// Reconnect storm: N client-SDK apps on instance A, each subscribed to one of P
// projects, while a backend publishes acknowledged JetStream events; A is killed with SIGKILL. The
// apps (SDK defaults: backoff from 500 ms with jitter, both instances' URLs) reconnect to B and
// resume with `since`. Reported: time from the kill to each app's reconnect and to its resumed
// subscription (full recovery = the last one), B's CPU during the storm, and the check that every
// acknowledged event reached every app of its project exactly once and in order.
//
//   npm run build && node bench/reconnect-storm.js [--clients 500] [--projects 20] [--rate 100]
//
// All in one process besides the two sidecars and nats-server: the apps share this process's
// event loop, so on a small machine keep --clients in the hundreds to low thousands.

import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import WebSocket from 'ws';
import { mintToken } from '../dist/internal.js';
import { Client } from '../dist/client/index.js';
import { startNatsServer } from './nats-server.js';
import { Proc, cpuSeconds, freePort, waitHealthy } from './proc.js';
import { ROOT } from './targets.js';
import { sleep } from './common.js';

const { values: a } = parseArgs({
  options: {
    clients: { type: 'string', default: '500' },
    projects: { type: 'string', default: '20' },
    rate: { type: 'string', default: '100' }, // events/s over all projects
    'after-seconds': { type: 'string', default: '2' }, // publishing goes on this long after recovery
    'timeout-seconds': { type: 'string', default: '120' },
    verbose: { type: 'boolean', default: false },
  },
});
const N = Number(a.clients);
const P = Number(a.projects);
const RATE = Number(a.rate);
const TIMEOUT_MS = Number(a['timeout-seconds']) * 1000;

const secret = randomBytes(32).toString('hex');
const nats = await startNatsServer({ verbose: a.verbose });

async function startSidecar(name) {
  const port = await freePort();
  const env = { PORT: String(port), HOST: '127.0.0.1', NATS_URL: nats.url, JWT_SECRET: secret, LOG_LEVEL: 'warn', SIDECAR_CONFIG: '', SIDECAR_WORKERS: '1' };
  const proc = new Proc(name, process.execPath, [join(ROOT, 'bin', 'nats-ws-sidecar.js')], { env, cwd: ROOT, verbose: a.verbose });
  await waitHealthy(`http://127.0.0.1:${port}/readyz`, proc, 60_000);
  return { proc, url: `ws://127.0.0.1:${port}/ws/connect` };
}
const [A, B] = await Promise.all([startSidecar('sidecar-a'), startSidecar('sidecar-b')]);

const projects = Array.from({ length: P }, (_, i) => `storm-p${i}`);
/** What each app saw, per project: the `n` of every event, in arrival order. */
const apps = [];
let killedAt = 0;
for (let i = 0; i < N; i++) {
  const project = projects[i % P];
  const app = { project, seen: [], reconnectedAt: 0, resumedAt: 0, client: undefined };
  app.client = new Client({
    url: [A.url, B.url], // the first attempt goes to A, the next to B
    token: () => mintToken(secret, { sub: `storm-u${i}`, projects: [project] }),
    WebSocket,
  });
  app.client.on('event', (ev) => {
    if (ev.project_id === project && typeof ev.data?.n === 'number') app.seen.push(ev.data.n);
  });
  app.client.on('connected', (info) => {
    if (info.reconnected && killedAt && !app.reconnectedAt) app.reconnectedAt = performance.now();
  });
  app.client.on('subscribed', (info) => {
    if (info.resumed && killedAt && !app.resumedAt) app.resumedAt = performance.now();
  });
  apps.push(app);
}
const t0 = performance.now();
for (let i = 0; i < N; i += 50) {
  await Promise.all(apps.slice(i, i + 50).map(async (app) => {
    await app.client.connect();
    await app.client.subscribe(app.project);
  }));
}
console.error(`${N} apps connected to A and subscribed in ${Math.round(performance.now() - t0)} ms`);

// The backend: acknowledged publishes, event n of project p carries { n }; only acked ones count.
const nc = await connect({ servers: nats.url, name: 'storm-publisher' });
const js = jetstream(nc);
const acked = new Map(projects.map((p) => [p, []]));
let publishing = true;
let failedPublishes = 0;
const publisher = (async () => {
  const next = new Map(projects.map((p) => [p, 0]));
  for (let k = 0; publishing; k++) {
    const p = projects[k % P];
    const n = next.get(p);
    next.set(p, n + 1);
    js.publish(`ws.project.${p}`, JSON.stringify({ type: 'task_updated', data: { n } }), { msgID: `${p}-${n}`, timeout: 5000 }).then(
      () => acked.get(p).push(n),
      () => (failedPublishes += 1),
    );
    await sleep(1000 / RATE);
  }
})();

await sleep(1000);
const bCpu0 = cpuSeconds(B.proc.pid);
const natsCpu0 = cpuSeconds(nats.pid);
killedAt = performance.now();
process.kill(A.proc.pid, 'SIGKILL');

const deadline = killedAt + TIMEOUT_MS;
while (apps.some((app) => !app.resumedAt) && performance.now() < deadline) await sleep(20);
const recoveredAt = performance.now();
const bCpu = cpuSeconds(B.proc.pid) - bCpu0;
const natsCpu = cpuSeconds(nats.pid) - natsCpu0;
await sleep(Number(a['after-seconds']) * 1000);
publishing = false;
await publisher;
await sleep(200); // the last acks
// Deliveries settle: every app has the last acked event of its project (bounded).
const lastAcked = new Map(projects.map((p) => [p, Math.max(-1, ...acked.get(p))]));
const settleBy = performance.now() + 10_000;
while (apps.some((app) => !app.seen.includes(lastAcked.get(app.project))) && performance.now() < settleBy) await sleep(20);

let lost = 0;
let duplicated = 0;
let outOfOrder = 0;
for (const app of apps) {
  const counts = new Map();
  for (const n of app.seen) counts.set(n, (counts.get(n) ?? 0) + 1);
  for (const n of acked.get(app.project)) if (!counts.has(n)) lost += 1;
  for (const c of counts.values()) if (c > 1) duplicated += c - 1;
  for (let i = 1; i < app.seen.length; i++) if (app.seen[i] <= app.seen[i - 1]) outOfOrder += 1;
}
const pct = (xs, q) => {
  const v = xs.filter((x) => x > 0).sort((x, y) => x - y);
  return v.length ? Math.round(v[Math.min(v.length - 1, Math.floor(v.length * q))]) : NaN;
};
const reconnect = apps.map((app) => (app.reconnectedAt ? app.reconnectedAt - killedAt : 0));
const resumed = apps.map((app) => (app.resumedAt ? app.resumedAt - killedAt : 0));
const result = {
  clients: N,
  projects: P,
  ratePerSec: RATE,
  recovered: apps.filter((app) => app.resumedAt).length,
  reconnectMs: { p50: pct(reconnect, 0.5), p99: pct(reconnect, 0.99), max: pct(reconnect, 1) },
  resumedMs: { p50: pct(resumed, 0.5), p99: pct(resumed, 0.99), max: pct(resumed, 1) },
  fullRecoveryMs: Math.round(recoveredAt - killedAt),
  bCpuS: Math.round(bCpu * 100) / 100,
  bCpuMsPerReconnect: Math.round(((bCpu * 1000) / N) * 100) / 100,
  natsCpuS: Math.round(natsCpu * 100) / 100,
  ackedEvents: [...acked.values()].reduce((s, l) => s + l.length, 0),
  failedPublishes,
  expectedDeliveries: apps.reduce((s, app) => s + acked.get(app.project).length, 0),
  lost,
  duplicated,
  outOfOrder,
};
console.log(JSON.stringify(result));
console.log(
  `${N} apps: all resumed on B ${result.fullRecoveryMs} ms after the kill (reconnect p50/p99/max ${result.reconnectMs.p50}/${result.reconnectMs.p99}/${result.reconnectMs.max} ms; ` +
    `resumed ${result.resumedMs.p50}/${result.resumedMs.p99}/${result.resumedMs.max} ms); B used ${result.bCpuS} s CPU (${result.bCpuMsPerReconnect} ms per app); ` +
    `${result.expectedDeliveries} deliveries expected: lost ${lost}, duplicated ${duplicated}, out of order ${outOfOrder}`,
);

await Promise.all(apps.map((app) => app.client.close()));
await nc.close();
await B.proc.stop();
await nats.stop();
process.exit(lost || duplicated || outOfOrder || result.recovered < N ? 1 : 0);
