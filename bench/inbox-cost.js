// What one offline inbox costs nats-server: every user with a stored direct
// message holds a durable consumer (src/nats/inbox.ts). This creates the sidecar's own stream and
// its own consumers (the built dist/ modules, so the configuration is exactly the sidecar's), one
// stored direct message per user, and reports for each step of users:
//   - nats-server RSS per consumer (what the consumers added over the same users' stored messages),
//   - create time (consumers/s with CONCURRENCY requests in flight, and nats-server CPU ms per create),
//   - nats-server CPU while idle (% of one core over IDLE_S seconds),
//   - store on disk per consumer, and how long a nats-server restart takes to recover them all.
//
//   npm run build && node bench/inbox-cost.js [--steps 1000,5000,10000] [--concurrency 50] [--idle-seconds 10]
//
// Figures go to stdout as a markdown table plus one JSON line; BENCHMARKS.md records them.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { loadConfig } from '../dist/internal.js';
import { createLogger } from '../dist/internal.js';
import { NatsBroker } from '../dist/internal.js';
import { startEmbeddedNats } from '../dist/internal.js';
import { Inboxes } from '../dist/internal.js';
import { cpuSeconds, rssBytes } from './proc.js';
import { pool, sleep } from './common.js';

const { values: args } = parseArgs({
  options: {
    steps: { type: 'string', default: '1000,5000,10000' },
    concurrency: { type: 'string', default: '50' },
    'idle-seconds': { type: 'string', default: '10' },
    'settle-seconds': { type: 'string', default: '3' },
    'no-restart': { type: 'boolean', default: false },
  },
});
const steps = args.steps.split(',').map(Number);
const CONCURRENCY = Number(args.concurrency);
const IDLE_S = Number(args['idle-seconds']);
const SETTLE_MS = Number(args['settle-seconds']) * 1000;

const dir = mkdtempSync(join(tmpdir(), 'inbox-cost-'));
const server = await startEmbeddedNats({ storeDir: join(dir, 'store') });
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const config = loadConfig({ env: {}, overrides: { natsUrl: server.url, jwtSecret: 'x'.repeat(32), logLevel: 'silent' } });
const log = createLogger('silent');
const broker = await NatsBroker.connect(config, log, 'inbox-cost');
await broker.ensureStream();
const nc = await connect({ servers: server.url });
const js = broker.js;
const jsm = await jetstreamManager(nc);
const inboxes = new Inboxes(nc, jsm, config, log);

const kb = (bytes) => Math.round(bytes / 102.4) / 10;
const userId = (i) => `u${i}`;
const duKB = (path) => Number(execFileSync('du', ['-sk', path], { encoding: 'utf8' }).split('\t')[0]);

async function settledRss() {
  await sleep(SETTLE_MS); // let Go's GC run after the burst
  return rssBytes(server.pid);
}

async function idleCpuPct() {
  const before = cpuSeconds(server.pid);
  await sleep(IDLE_S * 1000);
  return Math.round(((cpuSeconds(server.pid) - before) / IDLE_S) * 1000) / 10;
}

const rows = [];
let created = 0;
const baseRss = await settledRss();
for (const users of steps) {
  // The users' stored direct messages first (what they cost is the stream's, not the consumers').
  for (let i = created; i < users; i += 1000) {
    const batch = [];
    for (let j = i; j < Math.min(users, i + 1000); j++) {
      batch.push(js.publish(`${config.subjectPrefix}.user.${userId(j)}`, JSON.stringify({ type: 'direct', data: { n: j } })));
    }
    await Promise.all(batch);
  }
  const rssMessages = await settledRss();

  const cpu0 = cpuSeconds(server.pid);
  const t0 = performance.now();
  const latencies = [];
  await pool(users - created, CONCURRENCY, async (k) => {
    const s = performance.now();
    await inboxes.ensureConsumer(userId(created + k));
    latencies.push(performance.now() - s);
  });
  const ms = performance.now() - t0;
  const cpuMs = (cpuSeconds(server.pid) - cpu0) * 1000;
  const newConsumers = users - created;
  const rssConsumers = await settledRss();
  const idle = await idleCpuPct();
  const info = await jsm.streams.info(config.streamName);
  latencies.sort((a, b) => a - b);
  const row = {
    consumers: users,
    natsRssMB: Math.round(rssConsumers / 1048576),
    rssPerConsumerKB: kb((rssConsumers - rssMessages) / newConsumers),
    rssPerUserTotalKB: kb((rssConsumers - baseRss) / users),
    createsPerSec: Math.round(newConsumers / (ms / 1000)),
    createP50ms: Math.round(latencies[Math.floor(latencies.length / 2)] * 10) / 10,
    createP99ms: Math.round(latencies[Math.floor(latencies.length * 0.99)] * 10) / 10,
    serverCpuMsPerCreate: Math.round((cpuMs / newConsumers) * 100) / 100,
    idleCpuPct: idle,
    diskPerUserKB: Math.round((duKB(join(dir, 'store')) / users) * 10) / 10,
    streamConsumers: info.state.consumer_count,
  };
  created = users;
  rows.push(row);
  console.error(`${users} consumers: ${JSON.stringify(row)}`);
}

let restartMs;
if (!args['no-restart']) {
  await nc.close();
  await broker.close();
  const t = performance.now();
  await server.restart(); // resolves once the server answers again, every consumer recovered
  restartMs = Math.round(performance.now() - t);
  const nc2 = await connect({ servers: server.url });
  const jsm2 = await jetstreamManager(nc2);
  // Ready for clients only when JetStream answers with every consumer there.
  const t2 = performance.now();
  const info = await jsm2.streams.info(config.streamName);
  restartMs += Math.round(performance.now() - t2);
  const rss = await settledRss();
  console.error(`restart with ${info.state.consumer_count} consumers: ${restartMs} ms, RSS ${Math.round(rss / 1048576)} MB`);
  await nc2.close();
} else {
  await nc.close();
  await broker.close();
}
await server.stop();

console.log('| consumers | nats-server RSS MB | RSS per consumer KB | RSS per user (message + consumer) KB | creates/s | create p50 / p99 ms | server CPU ms per create | idle server CPU % of a core | disk per user KB |');
console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.consumers} | ${r.natsRssMB} | ${r.rssPerConsumerKB} | ${r.rssPerUserTotalKB} | ${r.createsPerSec} | ${r.createP50ms} / ${r.createP99ms} | ${r.serverCpuMsPerCreate} | ${r.idleCpuPct} | ${r.diskPerUserKB} |`,
  );
}
if (restartMs !== undefined) console.log(`\nnats-server restart with ${created} consumers: ${restartMs} ms until JetStream answers.`);
console.log(JSON.stringify({ steps: rows, restartMs, concurrency: CONCURRENCY, idleSeconds: IDLE_S }));
