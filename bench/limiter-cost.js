#!/usr/bin/env node
/**
 * What a limiter costs, on this machine: the lazily refilled TokenBucket the sidecar uses for
 * inbound admission and the outbound fast path, against Bottleneck jobs (the slow lane).
 *
 *   npm run build && node --expose-gc bench/limiter-cost.js
 *
 * Prints one line per measurement. CPU figures are process.cpuUsage() (user + system), so they
 * include Bottleneck's timer callbacks; wall figures include waiting for the event loop.
 * docs/protection.md quotes the numbers and the reasoning drawn from them.
 */
import Bottleneck from 'bottleneck';

let internals;
try {
  internals = await import('../dist/internal.js');
} catch {
  console.error('limiter-cost: run `npm run build` first (this script measures the compiled dist/ code)');
  process.exit(1);
}
const { TokenBucket, Hub } = internals;

const results = [];
function report(name, value, unit, note = '') {
  results.push({ name, value, unit });
  console.log(`${name.padEnd(58)} ${String(value).padStart(12)} ${unit}${note ? `  (${note})` : ''}`);
}
const cpuMicros = (start) => {
  const d = process.cpuUsage(start);
  return d.user + d.system;
};
const round = (x, digits = 2) => Number(x.toFixed(digits));
const gc = globalThis.gc ?? (() => {});
// Live setInterval timers (Bottleneck unrefs its timers, so getActiveResourcesInfo() misses them).
let liveIntervals = 0;
const { setInterval: realSetInterval, clearInterval: realClearInterval } = globalThis;
const counted = new Set();
globalThis.setInterval = (...args) => {
  const t = realSetInterval(...args);
  counted.add(t);
  liveIntervals = counted.size;
  return t;
};
globalThis.clearInterval = (t) => {
  counted.delete(t);
  liveIntervals = counted.size;
  return realClearInterval(t);
};
const timers = () => liveIntervals;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

console.log(`node ${process.version}, bottleneck ${Bottleneck.version ?? '2.x'}, ${(await import('node:os')).cpus().length} cores\n`);

// ---- 1. TokenBucket ------------------------------------------------------------------------
{
  const N = 10_000_000;
  const bucket = new TokenBucket(10, 20, Date.now());
  let admitted = 0;
  let t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) if (bucket.tryTake(i >> 10)) admitted++;
  report('TokenBucket.tryTake (flood, clock given)', round(Number(process.hrtime.bigint() - t) / N, 1), 'ns/call');
  t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) if (bucket.tryTake(Date.now())) admitted++;
  report('TokenBucket.tryTake + Date.now() (what receive() pays)', round(Number(process.hrtime.bigint() - t) / N, 1), 'ns/call');
  const out = new TokenBucket(2000, 10_000, Date.now());
  t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) admitted += out.takeUpTo(20, i >> 4);
  report('TokenBucket.takeUpTo (one call per socket per flush)', round(Number(process.hrtime.bigint() - t) / N, 1), 'ns/call');
  if (admitted < 0) console.log(admitted);
}

// ---- 2. Bottleneck, per job ----------------------------------------------------------------
{
  const limiter = new Bottleneck();
  const N = 1_000;
  for (let i = 0; i < 100; i++) await limiter.schedule(() => Promise.resolve()); // warm up
  const cpu = process.cpuUsage();
  const t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await limiter.schedule(() => Promise.resolve());
  const wall = Number(process.hrtime.bigint() - t) / 1e3 / N;
  report('Bottleneck job, one at a time: latency', round(wall), 'µs/job');
  report('Bottleneck job, one at a time: CPU', round(cpuMicros(cpu) / N), 'µs/job');
  await limiter.stop();
}
{
  const limiter = new Bottleneck();
  const N = 5_000;
  const cpu = process.cpuUsage();
  const t = process.hrtime.bigint();
  await Promise.all(Array.from({ length: N }, () => limiter.schedule(() => Promise.resolve())));
  const wallS = Number(process.hrtime.bigint() - t) / 1e9;
  report('Bottleneck, 5k jobs queued at once on one limiter', Math.round(N / wallS), 'jobs/s');
  report('  CPU', round(cpuMicros(cpu) / N), 'µs/job');
}
{
  const group = new Bottleneck.Group({ maxConcurrent: 1 });
  const K = 1_000;
  const J = 10;
  const cpu = process.cpuUsage();
  const t = process.hrtime.bigint();
  const jobs = [];
  for (let k = 0; k < K; k++) for (let j = 0; j < J; j++) jobs.push(group.key(`c${k}`).schedule(() => Promise.resolve()));
  await Promise.all(jobs);
  const wallS = Number(process.hrtime.bigint() - t) / 1e9;
  report('Bottleneck, 1000 limiters x 10 jobs (maxConcurrent 1)', Math.round((K * J) / wallS), 'jobs/s');
  report('  CPU', round(cpuMicros(cpu) / (K * J)), 'µs/job');
  await Promise.all(group.limiters().map(({ limiter }) => limiter.stop()));
}
{
  // Bottleneck as an inbound limiter (10/s, burst 20, overflow dropped): it still answers through
  // a promise, so a refusal cannot be sent before the next frame is read.
  const limiter = new Bottleneck({
    reservoir: 20,
    reservoirIncreaseAmount: 1,
    reservoirIncreaseInterval: 100,
    reservoirIncreaseMaximum: 20,
    highWater: 0,
    strategy: Bottleneck.strategy.OVERFLOW,
  });
  const N = 5_000;
  const cpu = process.cpuUsage();
  const t = process.hrtime.bigint();
  const settled = [];
  for (let i = 0; i < N; i++) settled.push(limiter.schedule(() => Promise.resolve()).catch(() => 'dropped'));
  const dropped = (await Promise.all(settled)).filter((r) => r === 'dropped').length;
  const wall = Number(process.hrtime.bigint() - t) / 1e3 / N;
  report('Bottleneck inbound limiter, 5k-frame flood: CPU', round(cpuMicros(cpu) / N), 'µs/frame', `${dropped} dropped`);
  report('  wall until every frame is answered', round(wall), 'µs/frame');
  const cpu2 = process.cpuUsage();
  for (let i = 0; i < N; i++) await limiter.check();
  report('Bottleneck check() (async "would it run?")', round(cpuMicros(cpu2) / N), 'µs/call');
  await limiter.stop({ dropWaitingJobs: true });
}

// ---- 3. Limiters at rest: memory and timers ------------------------------------------------
{
  const K = 10_000;
  gc();
  const before = process.memoryUsage().heapUsed;
  const timersBefore = timers();
  const group = new Bottleneck.Group({ maxConcurrent: 1, minTime: 250, timeout: 30_000 });
  const t = process.hrtime.bigint();
  for (let k = 0; k < K; k++) group.key(`c${k}`);
  const createUs = Number(process.hrtime.bigint() - t) / 1e3 / K;
  gc();
  report('Bottleneck limiter (Group key), heap', round((process.memoryUsage().heapUsed - before) / K / 1024, 1), 'KB/limiter', globalThis.gc ? '' : 'run with --expose-gc');
  report('  creation', round(createUs), 'µs/limiter');
  report('  interval timers held by a Group of 10k minTime limiters', timers() - timersBefore, 'timers', 'one: the Group cleanup');
  const t2 = process.hrtime.bigint();
  await Promise.all(group.keys().map((k) => group.deleteKey(k)));
  report('  deleteKey', round(Number(process.hrtime.bigint() - t2) / 1e3 / K), 'µs/limiter');

  const refill = new Bottleneck.Group({ reservoir: 20, reservoirIncreaseAmount: 1, reservoirIncreaseInterval: 100, reservoirIncreaseMaximum: 20 });
  for (let k = 0; k < K; k++) refill.key(`c${k}`);
  report('  interval timers held by a Group of 10k reservoir limiters', timers() - timersBefore - 1, 'timers', 'a heartbeat each, plus its Group cleanup');
  const cpu = process.cpuUsage();
  await sleep(2_000);
  report('  CPU of 10k idle reservoir limiters', round((cpuMicros(cpu) / 2e6) * 100, 1), '% of a core');
  await Promise.all(refill.keys().map((k) => refill.deleteKey(k)));
  report('  interval timers left after deleteKey of all', timers() - timersBefore - 2, 'timers', 'plus the two Group cleanups');
}

// ---- 4. Core fan-out: the bucket's share of a delivery -------------------------------------
// The real Hub and Connection with in-memory ports: no sockets, so each delivery is as cheap as
// it gets and the limiter's share is the largest it can be. Then the same with the bucket
// stubbed out, and with one Bottleneck job per socket per flush (what the design avoids).
async function fanOut(label, { conns = 500, events = 2_000, perTick = 20, patch, quiet = false } = {}) {
  const silent = { child: () => silent, info() {}, warn() {}, debug() {}, error() {}, trace() {} };
  const config = {
    requestsPerSecond: 10, burstSize: 20, maxErrors: 5, errorResetInterval: 600_000, pingInterval: 54_000,
    pongTimeout: 60_000, authTimeout: 10_000, outboundMessagesPerSecond: 1e9, outboundBurst: 1e9,
    maxQueuedMessages: 1e9, maxQueuedBytes: 1e12, maxBufferedBytes: 1e12, slowConsumerTimeout: 5_000,
    maxConnectionsPerUser: 1e9, maxSubscriptionsPerConnection: 100, maxMessageSize: 512, maxTokenLength: 8192,
  };
  // The whole BrokerPort: authentication reads the inbox backlog (a missing one closes the connection 1011).
  const broker = {
    epoch: 'e1', setInterest() {}, interestReady: async () => {}, replay: async () => ({ truncated: false, epoch: 'e1', restarted: false }),
    backlog: async () => {}, acknowledge() {}, written() {},
  };
  const hub = new Hub({ config, instanceId: 'bench', log: silent, broker, auth: { verify: async () => { throw new Error(); } } });
  let delivered = 0;
  let expected = Infinity;
  let done;
  const finished = new Promise((r) => (done = r));
  for (let i = 0; i < conns; i++) {
    const transport = {
      bufferedAmount: 0,
      write(frames) {
        delivered += frames.length;
        if (delivered >= expected) done();
      },
      ping() {}, close() {}, terminate() {},
    };
    const conn = hub.connect(transport, 'bench');
    await hub.authenticate(conn, { userId: `u${i}`, roles: [], projects: '*', expiresAt: undefined });
    if (conn.state !== 'open') throw new Error(`fan-out: connection ${i} did not open`);
    hub.join(conn, 'project.p').release();
  }
  await new Promise((r) => setImmediate(r)); // auth_success frames out of the way
  delivered = 0;
  expected = conns * events;
  const restore = patch?.(hub);
  const frame = () => ({ text: JSON.stringify({ type: 'task_updated', data: { id: 1, title: 'x'.repeat(150) }, seq: 1 }) });
  const cpu = process.cpuUsage();
  const t = process.hrtime.bigint();
  let seq = 0;
  while (seq < events) {
    for (let j = 0; j < perTick && seq < events; j++) hub.publish('project.p', { seq: ++seq, frame: frame() });
    await new Promise((r) => setImmediate(r)); // the hub flushes once per tick
  }
  await finished;
  const wallS = Number(process.hrtime.bigint() - t) / 1e9;
  const perSec = Math.round(delivered / wallS);
  const cpuPerDelivery = cpuMicros(cpu) / delivered;
  if (!quiet) report(`fan-out ${conns} sockets x ${events} events: ${label}`, perSec, 'deliveries/s', `CPU ${round(cpuPerDelivery, 3)} µs/delivery`);
  restore?.();
  await hub.close();
  return cpuPerDelivery;
}

// Alternate the two variants and keep the best (least disturbed) run of each: on a shared
// 2-core machine the noise between runs is larger than the difference being measured.
const withBucket = [];
const withoutBucket = [];
for (let run = 0; run < 7; run++) {
  withBucket.push(await fanOut('real TokenBucket', { quiet: run < 6 }));
  withoutBucket.push(
    await fanOut('bucket stubbed out', {
      quiet: run < 6,
      patch: () => {
        const original = TokenBucket.prototype.takeUpTo;
        TokenBucket.prototype.takeUpTo = (wanted) => wanted;
        return () => (TokenBucket.prototype.takeUpTo = original);
      },
    }),
  );
}
const best = (xs) => Math.min(...xs);
report('fan-out, best of 7: CPU per delivery with the bucket', round(best(withBucket) * 1000, 1), 'ns');
report('fan-out, best of 7: CPU per delivery, bucket stubbed out', round(best(withoutBucket) * 1000, 1), 'ns');

// One Bottleneck job per socket per flush, the design the bucket avoids: far fewer events, or it takes minutes.
await fanOut('one Bottleneck job per socket per flush', {
  events: 40,
  perTick: 20,
  patch: (hub) => {
    const group = new Bottleneck.Group();
    const connections = [...hub.connections.values()];
    const flushes = connections.map((c) => c.flush.bind(c));
    connections.forEach((c, i) => {
      c.flush = (now) => void group.key(c.id).schedule(async () => flushes[i](now));
    });
    return () => group.limiters().forEach(({ limiter }) => limiter.stop());
  },
});
