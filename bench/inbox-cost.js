// What the offline inbox costs nats-server per user: no consumer per user, one key per user in
// the inbox bucket (src/nats/inbox.ts). This starts the sidecar's own stream and bucket (the built
// dist/ modules, so the configuration and the code paths are exactly the sidecar's), gives each
// user one stored direct message and one ack (the sidecar's compare-and-set), and reports for
// each step of users:
//   - nats-server RSS per user (message + ack key) and per ack key,
//   - acks (acks/s with CONCURRENCY in flight, nats-server CPU per ack),
//   - nats-server CPU while idle (% of one core over IDLE_S seconds), disk per user,
//   - the backlog read at connect: latency and server CPU for a user whose messages are acked
//     (the common returning user), and for users with 1 / 10 / 100 unacknowledged messages,
//   - how long a nats-server restart takes until the stream and the bucket answer.
// Then, for comparison, the old design's cost on the same server: one durable consumer per user
// (the configuration src/nats/inbox.ts used until 2026-12), for --old-users users.
//
//   npm run build && node bench/inbox-cost.js [--steps 1000,5000] [--concurrency 50] [--idle-seconds 5] [--old-users 1000]
//
// Figures go to stdout as markdown tables plus one JSON line; BENCHMARKS.md records them.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AckPolicy, DeliverPolicy, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { createLogger, loadConfig, NatsBroker, startEmbeddedNats } from '../dist/internal.js';
import { cpuSeconds, rssBytes } from './proc.js';
import { pool, sleep } from './common.js';

const { values: args } = parseArgs({
  options: {
    steps: { type: 'string', default: '1000,5000' },
    concurrency: { type: 'string', default: '50' },
    'idle-seconds': { type: 'string', default: '5' },
    'settle-seconds': { type: 'string', default: '3' },
    'old-users': { type: 'string', default: '1000' },
    'no-restart': { type: 'boolean', default: false },
  },
});
const steps = args.steps.split(',').map(Number);
const CONCURRENCY = Number(args.concurrency);
const IDLE_S = Number(args['idle-seconds']);
const SETTLE_MS = Number(args['settle-seconds']) * 1000;
const OLD_USERS = Number(args['old-users']);
/** Reads per backlog size: enough that /proc's 10 ms CPU ticks resolve the server's CPU per read. */
const BACKLOG_READS = { 1: 400, 10: 200, 100: 50 };

const dir = mkdtempSync(join(tmpdir(), 'inbox-cost-'));
const server = await startEmbeddedNats({ storeDir: join(dir, 'store') });
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const config = loadConfig({ env: {}, overrides: { natsUrl: server.url, jwtSecret: 'x'.repeat(32), logLevel: 'silent' } });
const log = createLogger('silent');
let broker = await NatsBroker.connect(config, log, 'inbox-cost');
await broker.ensureStream();
const subject = (user) => `${config.subjectPrefix}.user.${user}`;
const publish = (user, n) => broker.js.publish(subject(user), JSON.stringify({ type: 'direct', data: { n } }));

const kb = (bytes) => Math.round(bytes / 102.4) / 10;
const round = (x, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;
const userId = (i) => `u${i}`;
const duKB = (path) => Number(execFileSync('du', ['-sk', path], { encoding: 'utf8' }).split('\t')[0]);
const pct = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];

async function settledRss() {
  await sleep(SETTLE_MS); // let Go's GC run after the burst
  return rssBytes(server.pid);
}

async function idleCpuPct() {
  const before = cpuSeconds(server.pid);
  await sleep(IDLE_S * 1000);
  return Math.round(((cpuSeconds(server.pid) - before) / IDLE_S) * 1000) / 10;
}

/** Latency (ms) and server CPU (ms) of `reads` backlog reads for `users`, `inFlight` at a time. */
async function backlogReads(users, reads, inFlight, expected) {
  const latencies = [];
  const cpu0 = cpuSeconds(server.pid);
  await pool(reads, inFlight, async (k) => {
    const user = users[k % users.length];
    const t = performance.now();
    const got = await broker.inboxes.backlog(user);
    latencies.push(performance.now() - t);
    if (got.length !== expected) throw new Error(`backlog of ${user}: ${got.length} messages, expected ${expected}`);
  });
  const cpuMs = (cpuSeconds(server.pid) - cpu0) * 1000;
  return { p50: round(pct(latencies, 0.5)), p99: round(pct(latencies, 0.99)), serverCpuMs: round(cpuMs / reads, 3) };
}

// Users with a longer unacknowledged backlog (never acked), for the connect-time read.
const backlogUsers = {};
for (const n of [1, 10, 100]) {
  backlogUsers[n] = Array.from({ length: 5 }, (_, i) => `b${n}-${i}`);
  for (const user of backlogUsers[n]) for (let j = 0; j < n; j++) await publish(user, j);
}

const rows = [];
let done = 0;
const baseRss = await settledRss();
for (const users of steps) {
  // The users' stored direct messages first (what they cost is the stream's, not the inbox's).
  const seqs = [];
  for (let i = done; i < users; i += 1000) {
    const batch = [];
    for (let j = i; j < Math.min(users, i + 1000); j++) batch.push(publish(userId(j), j));
    for (const ack of await Promise.all(batch)) seqs.push(ack.seq);
  }
  const rssMessages = await settledRss();

  // One ack per user through the sidecar's own path (a KV get, a direct get, a compare-and-set),
  // CONCURRENCY users at a time.
  const cpu0 = cpuSeconds(server.pid);
  const t0 = performance.now();
  const chunkMs = [];
  for (let i = 0; i < seqs.length; i += CONCURRENCY) {
    const t = performance.now();
    for (let k = i; k < Math.min(seqs.length, i + CONCURRENCY); k++) broker.inboxes.acknowledge(userId(done + k), seqs[k]);
    await broker.inboxes.idle();
    chunkMs.push(performance.now() - t);
  }
  const ms = performance.now() - t0;
  const cpuMs = (cpuSeconds(server.pid) - cpu0) * 1000;
  const acks = users - done;
  if (broker.inboxes.counters.conflicts > 0) console.error(`(${broker.inboxes.counters.conflicts} compare-and-set conflicts)`);
  const rssAcks = await settledRss();
  const idle = await idleCpuPct();
  const acked = await backlogReads(Array.from({ length: 400 }, (_, i) => userId(i)), 400, 10, 0);
  const row = {
    users,
    natsRssMB: Math.round(rssAcks / 1048576),
    rssPerAckKeyKB: kb((rssAcks - rssMessages) / acks),
    rssPerUserTotalKB: kb((rssAcks - baseRss) / users),
    acksPerSec: Math.round(acks / (ms / 1000)),
    batchP50ms: round(pct(chunkMs, 0.5), 1),
    serverCpuMsPerAck: round(cpuMs / acks, 3),
    idleCpuPct: idle,
    diskPerUserKB: Math.round((duKB(join(dir, 'store')) / users) * 10) / 10,
    backlogAcked: acked,
    streamConsumers: (await broker.jsm.streams.info(config.streamName)).state.consumer_count,
  };
  done = users;
  rows.push(row);
  console.error(`${users} users: ${JSON.stringify(row)}`);
}

// The connect-time read of a backlog that is there: direct gets, then an ordered consumer past 32.
const backlog = {};
for (const n of [1, 10, 100]) backlog[n] = await backlogReads(backlogUsers[n], BACKLOG_READS[n], 1, n);
console.error(`backlog reads: ${JSON.stringify(backlog)}`);

let restartMs;
if (!args['no-restart']) {
  await broker.close();
  await server.stop();
  const t = performance.now();
  await server.start(); // resolves once the server accepts connections again
  const nc = await connect({ servers: server.url });
  const jsm = await jetstreamManager(nc);
  // Ready for clients only when JetStream answers for the stream and the bucket.
  await jsm.streams.info(config.streamName);
  await jsm.streams.info(`KV_${config.inboxBucket}`);
  restartMs = Math.round(performance.now() - t);
  console.error(`restart with ${done} users' messages and ack keys: ${restartMs} ms`);
  await nc.close();
  broker = await NatsBroker.connect(config, log, 'inbox-cost');
  await broker.ensureStream();
}

// The old design on the same server, for comparison: one durable consumer per user.
let old;
if (OLD_USERS > 0) {
  const jsm = broker.jsm;
  const rss0 = await settledRss();
  const cpu0 = cpuSeconds(server.pid);
  const t0 = performance.now();
  await pool(OLD_USERS, CONCURRENCY, async (i) => {
    await jsm.consumers.add(config.streamName, {
      durable_name: `inbox-${userId(i)}`,
      filter_subject: subject(userId(i)),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: config.inboxAckWait * 1e6,
      inactive_threshold: config.messageTTL * 1e6,
      max_ack_pending: config.maxStoredMessages,
      num_replicas: 1,
    });
  });
  const ms = performance.now() - t0;
  const cpuMs = (cpuSeconds(server.pid) - cpu0) * 1000;
  const rss1 = await settledRss();
  old = {
    consumers: OLD_USERS,
    rssPerConsumerKB: kb((rss1 - rss0) / OLD_USERS),
    createsPerSec: Math.round(OLD_USERS / (ms / 1000)),
    serverCpuMsPerCreate: round(cpuMs / OLD_USERS),
  };
  console.error(`old design, ${OLD_USERS} durable consumers: ${JSON.stringify(old)}`);
}
await broker.close();
await server.stop();

console.log('| users | nats-server RSS MB | RSS per ack key KB | RSS per user (message + key) KB | acks/s | 50 acks p50 ms | server CPU ms per ack | idle server CPU % of a core | disk per user KB | backlog read, all acked: p50 / p99 ms, server CPU ms | consumers |');
console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  const b = r.backlogAcked;
  console.log(
    `| ${r.users} | ${r.natsRssMB} | ${r.rssPerAckKeyKB} | ${r.rssPerUserTotalKB} | ${r.acksPerSec} | ${r.batchP50ms} | ${r.serverCpuMsPerAck} | ${r.idleCpuPct} | ${r.diskPerUserKB} | ${b.p50} / ${b.p99}, ${b.serverCpuMs} | ${r.streamConsumers} |`,
  );
}
console.log('\n| unacknowledged messages at connect | backlog read p50 / p99 ms | server CPU ms per read |');
console.log('| ---: | ---: | ---: |');
for (const [n, b] of Object.entries(backlog)) console.log(`| ${n} | ${b.p50} / ${b.p99} | ${b.serverCpuMs} |`);
if (restartMs !== undefined) console.log(`\nnats-server restart with ${done} users (messages + ack keys): ${restartMs} ms until the stream and the bucket answer.`);
if (old) {
  console.log(
    `\nOld design on the same server: ${old.consumers} durable consumers, ${old.rssPerConsumerKB} KB RSS each, ` +
      `${old.createsPerSec} creates/s, ${old.serverCpuMsPerCreate} ms server CPU per create.`,
  );
}
console.log(JSON.stringify({ steps: rows, backlog, restartMs, old, concurrency: CONCURRENCY, idleSeconds: IDLE_S }));
