// Capacity plan for 1M connections: a calculation from figures measured on this
// machine, printed step by step with the figure each step uses, and checked against limits.
//
//   node bench/capacity.js                       # the plan, from the figures recorded below
//   node bench/capacity.js --measure             # first measure NATS interest and KV costs here
//   node bench/capacity.js --connections 1000000 --hosts 8 --workers-per-host 15 ...   (see --help;
//                                              without --hosts: the fewest hosts that pass the checks)
//
// --measure starts a nats-server and measures what the plan's NATS side is made of: RSS per
// subscription (the sidecar's per-project interest, `ws.live.project.<id>`), RSS per presence key
// and server CPU per presence compare-and-set (NATS KV, like src/nats/presence.ts). Everything else
// comes from BENCHMARKS.md (the bench table and bench/inbox-cost.js); the sources are named below.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

// ---- measured figures (this machine: 2 shared cores, busy; see BENCHMARKS.md) ------------------
const MEASURED = {
  // Sidecar RSS per idle authenticated+subscribed connection. BENCHMARKS.md table: 8.2 KB (10k
  // connections over 1000 projects); a later measurement: 12.9 KB (5000 distinct users over
  // 100 projects). The plan uses the larger.
  sidecarKBPerConn: 12.9,
  sidecarBaseMB: 86, // RSS of a started sidecar with no connections (idle scenario, rssBeforeMB)
  // nats-server RSS per sidecar connection (idle scenario: presence keys, interest): 2.3 KB on
  // 2026-11-26, 2.9-3.3 KB in the run of 2026-12-02 (the larger is used).
  natsKBPerConn: 3.3,
  // Idle CPU: 0.6% of a core per 10k connections (sidecar), 0.4% for its nats-server.
  sidecarIdlePctPer10k: 0.6,
  natsIdlePctPer10k: 0.4,
  // Server CPU per authenticated+subscribed connect (lifecycle events on). BENCHMARKS.md connect
  // scenario, run of 2026-12-02: sidecar 1.02-1.23 ms, its nats-server 0.14-0.18 ms (it was 1.9
  // and 0.45 ms before the connect path's JetStream writes were batched). The larger of the runs.
  sidecarMsPerConnect: 1.23,
  natsMsPerConnect: 0.18,
  // A reconnect that resumes (bench/reconnect-storm.js, 1000 SDK apps moved to a cold instance after
  // kill -9): 5.1 ms of the new instance's CPU and 2.1 ms of nats-server's per app, abandoned
  // attempts included (the SDK gives up an attempt after 10 s on a saturated instance and retries).
  // The 10k-app run of 2026-12-02 needed 2.4 ms and 1.5 ms per app; the plan keeps the larger.
  sidecarMsPerResume: 5.1,
  natsMsPerResume: 2.1,
  // Fan-out: from the fanout (2000 events x 500 deliveries, 0.47 s CPU) and spread (50000 events x
  // 10 deliveries, 2.65 s CPU) scenarios: CPU = events x perEvent + deliveries x perDelivery.
  sidecarUsPerEvent: 49,
  sidecarUsPerDelivery: 0.37,
  natsUsPerStoredEvent: 22, // spread: nats-server 1.1 s CPU for 50000 stored + republished events
  // Offline inbox, no consumer per user (bench/inbox-cost.js, 1k-10k users with one stored direct
  // message and one ack key each): nats-server RSS per ack key (0.2-0.7 KB measured; the plan uses
  // 1 KB, the --measure figure of a KV key below), server CPU per ack (KV get + direct get +
  // compare-and-set, one node), per backlog read at connect of a returning user whose messages
  // are acked (last_by_subj + KV get), and a restart's recovery per 1000 users (messages + keys;
  // 96 ms for 5000, the slowest run, extrapolated linearly).
  natsKBPerInboxKey: 1.0,
  natsMsPerInboxAck: 0.06,
  natsMsPerInboxBacklogRead: 0.15,
  natsRestartMsPer1kInboxUsers: 19,
  // The design it replaced (same bench, --old-users): one durable consumer per user.
  natsKBPerInboxConsumerOld: 41,
  // bench/capacity.js --measure (below): nats-server RSS per subscription on distinct subjects,
  // RSS per presence key, server CPU per presence CAS.
  natsBytesPerSubscription: 762,
  natsBytesPerKvKey: 1038,
  natsUsPerKvCas: 53,
};

const { values: a } = parseArgs({
  options: {
    measure: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
    connections: { type: 'string', default: '1000000' },
    'conns-per-user': { type: 'string', default: '1.25' },
    'subs-per-conn': { type: 'string', default: '3' },
    projects: { type: 'string', default: '100000' },
    hosts: { type: 'string' },
    'cores-per-host': { type: 'string', default: '16' },
    'workers-per-host': { type: 'string' },
    'gb-per-host': { type: 'string', default: '32' },
    'nats-nodes': { type: 'string', default: '3' },
    'nats-cores': { type: 'string' },
    'nats-gb': { type: 'string', default: '32' },
    replicas: { type: 'string', default: '3' },
    'events-per-sec': { type: 'string', default: '5000' },
    'session-minutes': { type: 'string', default: '30' },
    'reconnect-window-s': { type: 'string', default: '30' },
    'offline-users-pct': { type: 'string', default: '100' },
    'direct-per-sec': { type: 'string', default: '1000' },
  },
});
if (a.help) {
  console.log('options: --measure --connections --conns-per-user --subs-per-conn --projects --hosts --cores-per-host --workers-per-host --gb-per-host --nats-nodes --nats-cores --nats-gb --replicas --events-per-sec --session-minutes --reconnect-window-s --offline-users-pct --direct-per-sec');
  process.exit(0);
}

const m = { ...MEASURED };
if (a.measure) Object.assign(m, await measureNats());

const n = (k) => Number(a[k]);
const fmt = (x, d = 1) => (Math.abs(x) >= 100 ? Math.round(x).toLocaleString('en') : x.toFixed(d));
const W = a['workers-per-host'] ? n('workers-per-host') : n('cores-per-host') - 1; // a core for the primary, the kernel's network work

// Per core, from the measured figures.
console.log('Per core (one sidecar worker), from the figures measured here:');
console.log(`  connects/s: 1000 / ${m.sidecarMsPerConnect} ms = ${fmt(1000 / m.sidecarMsPerConnect)} (its NATS side: ${m.natsMsPerConnect} ms each)`);
console.log(`  resumes/s (a reconnect storm's apps): 1000 / ${m.sidecarMsPerResume} ms = ${fmt(1000 / m.sidecarMsPerResume)} (its NATS side: ${m.natsMsPerResume} ms each)`);
console.log(`  idle connections: ${m.sidecarKBPerConn} KB each (${fmt((1024 * 1024) / m.sidecarKBPerConn)} per GB); CPU ${m.sidecarIdlePctPer10k}% of the core per 10k`);
console.log(`  events: ${fmt(1e6 / m.sidecarUsPerEvent)} events/s received, or ${fmt(1e6 / m.sidecarUsPerDelivery)} deliveries/s written (${m.sidecarUsPerEvent} us per event, ${m.sidecarUsPerDelivery} us per delivery)`);
console.log('');

/** The plan with H hosts: its lines and checks. */
function plan(H, NC) {
const C = n('connections');
const users = C / n('conns-per-user');
const S = n('subs-per-conn');
const P = n('projects');
const workers = H * W;
const cw = C / workers;
const out = [];
const checks = [];
const line = (s) => out.push(s);
const check = (ok, what, side) => checks.push({ ok, what, side });

line(`Plan: ${fmt(C)} connections (${fmt(users)} users, ${S} projects each connection, ${fmt(P)} projects)`);
line(`      ${H} hosts x ${W} workers (${n('cores-per-host')} cores, ${n('gb-per-host')} GB each) = ${workers} sidecar instances, ${fmt(cw)} connections each`);
line(`      NATS: ${n('nats-nodes')} nodes x ${NC} cores, ${n('nats-gb')} GB; streams and KV R${n('replicas')}`);
line('');

// Sidecar memory.
const workerMB = m.sidecarBaseMB + (cw * m.sidecarKBPerConn) / 1024;
const hostGB = (W * workerMB) / 1024;
line(`sidecar memory: ${m.sidecarBaseMB} MB + ${fmt(cw)} x ${m.sidecarKBPerConn} KB = ${fmt(workerMB)} MB per worker; x ${W} = ${fmt(hostGB)} GB per host`);
check(hostGB < 0.6 * n('gb-per-host'), `host memory ${fmt(hostGB)} GB < 60% of ${n('gb-per-host')} GB`, 'sidecar');
check(workerMB < 1500, `worker heap+buffers ${fmt(workerMB)} MB < 1.5 GB (V8 old space stays small, GC pauses short)`, 'sidecar');

// Sidecar CPU, steady state.
const churn = C / (n('session-minutes') * 60);
const idleCores = ((C / 10_000) * m.sidecarIdlePctPer10k) / 100;
const connectCores = (churn * m.sidecarMsPerConnect) / 1000;
// An event reaches every worker holding one of its project's subscribers: expected distinct workers.
const subsPerProject = (C * S) / P;
const workersPerEvent = workers * (1 - Math.pow(1 - 1 / workers, subsPerProject));
const E = n('events-per-sec');
const eventCores = (E * workersPerEvent * m.sidecarUsPerEvent + E * subsPerProject * m.sidecarUsPerDelivery) / 1e6;
const sidecarCores = idleCores + connectCores + eventCores;
const usable = H * n('cores-per-host');
line(`sidecar CPU: idle ${fmt(idleCores, 2)} cores (${m.sidecarIdlePctPer10k}% per 10k) + churn ${fmt(churn)} connects/s x ${m.sidecarMsPerConnect} ms = ${fmt(connectCores, 2)} cores`);
line(`             + events ${fmt(E)}/s x ${fmt(workersPerEvent, 1)} workers each (${fmt(subsPerProject, 1)} subscribers per project) x ${m.sidecarUsPerEvent} us`);
line(`               + ${fmt(E * subsPerProject)} deliveries/s x ${m.sidecarUsPerDelivery} us = ${fmt(eventCores, 2)} cores`);
line(`             = ${fmt(sidecarCores, 2)} of ${usable} cores (${fmt((100 * sidecarCores) / usable, 1)}%)`);
check(sidecarCores < 0.5 * H * W, `steady sidecar CPU ${fmt(sidecarCores, 1)} cores < 50% of ${H * W} worker cores`, 'sidecar');

// Reconnect storms.
const hostConns = C / H;
// A reconnecting app resumes (subscribe with `since`: a stream read per project), which costs more
// than a first connect: the reconnect-storm figures. The NATS side was measured on one node;
// replicas add the presence writes on the other peers.
const natsMsPerConnect = m.natsMsPerConnect + ((n('replicas') - 1) * S * m.natsUsPerKvCas) / 1000;
const natsMsPerResume = m.natsMsPerResume + ((n('replicas') - 1) * S * m.natsUsPerKvCas) / 1000;
const window = n('reconnect-window-s');
const natsTotalCores = n('nats-nodes') * NC;
const lossSidecarS = (hostConns * m.sidecarMsPerResume) / 1000 / ((H - 1) * W);
const lossNatsS = (hostConns * natsMsPerResume) / 1000 / natsTotalCores;
line(`host lost: ${fmt(hostConns)} apps resume on ${(H - 1) * W} workers: ${fmt(hostConns)} x ${m.sidecarMsPerResume} ms / ${(H - 1) * W} cores = ${fmt(lossSidecarS)} s of sidecar CPU each;`);
line(`           NATS ${fmt(hostConns)} x ${fmt(natsMsPerResume, 2)} ms (${m.natsMsPerResume} + R${n('replicas')} presence writes) / ${natsTotalCores} cores = ${fmt(lossNatsS)} s`);
check(lossSidecarS < window / 3, `host lost: sidecar CPU ${fmt(lossSidecarS)} s < a third of the ${window} s SDK backoff window`, 'sidecar');
check(lossNatsS < window / 3, `host lost: NATS CPU ${fmt(lossNatsS)} s < a third of the ${window} s window`, 'nats');
const allSidecarS = (C * m.sidecarMsPerResume) / 1000 / (H * W);
const allNatsS = (C * natsMsPerResume) / 1000 / natsTotalCores;
line(`everyone at once (e.g. after a network partition): sidecar ${fmt(allSidecarS)} s, NATS ${fmt(allNatsS)} s of full CPU`);
check(allSidecarS < window * 2, `everyone resumes: sidecar CPU ${fmt(allSidecarS)} s < 2x the window`, 'sidecar');
check(allNatsS < window * 2, `everyone resumes: NATS CPU ${fmt(allNatsS)} s < 2x the window`, 'nats');

// NATS interest: each worker subscribes once per distinct project it holds.
const projectsPerWorker = P * (1 - Math.pow(1 - 1 / P, cw * S));
const interest = workers * projectsPerWorker;
const interestGB = (interest * m.natsBytesPerSubscription) / 1e9;
line('');
line(`NATS interest: each worker holds ${fmt(projectsPerWorker)} distinct projects (${fmt(cw * S)} subscriptions over ${fmt(P)}): ${fmt(interest)} subscriptions fleet-wide`);
line(`               x ${m.natsBytesPerSubscription} B = ${fmt(interestGB, 2)} GB on every node (interest is known to every node of the cluster)`);
check(interestGB < 0.25 * n('nats-gb'), `interest ${fmt(interestGB, 2)} GB < 25% of a node's ${n('nats-gb')} GB`, 'nats');
const keys = users * S; // one presence key per (project, user)
const kvGB = (keys * m.natsBytesPerKvKey * n('replicas')) / n('nats-nodes') / 1e9;
const casPerSec = 2 * churn * S; // join and leave
const casCores = (casPerSec * m.natsUsPerKvCas * n('replicas')) / 1e6;
line(`NATS KV (presence): ${fmt(keys)} keys x ${m.natsBytesPerKvKey} B x R${n('replicas')} / ${n('nats-nodes')} nodes = ${fmt(kvGB, 2)} GB per node;`);
line(`                    churn ${fmt(casPerSec)} CAS/s x ${m.natsUsPerKvCas} us x R${n('replicas')} = ${fmt(casCores, 2)} cores`);
check(kvGB < 0.25 * n('nats-gb'), `presence KV ${fmt(kvGB, 2)} GB per node < 25% of ${n('nats-gb')} GB`, 'nats');
const natsCores = ((C / 10_000) * m.natsIdlePctPer10k) / 100 + (churn * natsMsPerConnect) / 1000 + (E * m.natsUsPerStoredEvent * n('replicas')) / 1e6 + casCores;
line(`NATS CPU: idle + churn + ${fmt(E)} stored events/s x ${m.natsUsPerStoredEvent} us x R${n('replicas')} + CAS = ${fmt(natsCores, 2)} of ${natsTotalCores} cores`);
check(natsCores < 0.5 * natsTotalCores, `steady NATS CPU ${fmt(natsCores, 1)} cores < 50%`, 'nats');

// Offline inbox: one ack key per user with a stored direct message, in a KV bucket with the
// stream's replicas (no consumer per user). Each direct message delivered is acked once (a
// compare-and-set, replicated); a connect reads the user's key and last stored seq.
const offline = (users * n('offline-users-pct')) / 100;
const inboxGB = (offline * m.natsKBPerInboxKey * n('replicas')) / n('nats-nodes') / 1024 / 1024;
const D = n('direct-per-sec');
const inboxCores = (D * (m.natsMsPerInboxAck + ((n('replicas') - 1) * m.natsUsPerKvCas) / 1000) + churn * m.natsMsPerInboxBacklogRead) / 1000;
const inboxRestartS = (offline * m.natsRestartMsPer1kInboxUsers) / 1000 / 1000;
line('');
line(`offline inbox, one ack key per user with a stored direct message (${n('offline-users-pct')}% = ${fmt(offline)} users), no consumer per user:`);
line(`  memory ${fmt(offline)} keys x ${m.natsKBPerInboxKey} KB x R${n('replicas')} / ${n('nats-nodes')} nodes = ${fmt(inboxGB, 2)} GB per node`);
line(`         (one durable consumer each, the old design: ${fmt((offline * m.natsKBPerInboxConsumerOld) / 1024 / 1024, 1)} GB on one node)`);
line(`  CPU: ${fmt(D)} acks/s x (${m.natsMsPerInboxAck} ms + R${n('replicas')} writes) + ${fmt(churn)} connects/s x ${m.natsMsPerInboxBacklogRead} ms backlog read = ${fmt(inboxCores, 2)} cores`);
line(`  a node restart recovers the stream and the bucket in about ${fmt(inboxRestartS)} s (${m.natsRestartMsPer1kInboxUsers} ms per 1000 users, linear)`);
check(inboxGB < 0.25 * n('nats-gb'), `inbox ack keys ${fmt(inboxGB, 2)} GB per node < 25% of ${n('nats-gb')} GB`, 'inbox');
check(inboxRestartS < 60, `a NATS node restart recovers the inbox in ${fmt(inboxRestartS)} s < 60 s`, 'inbox');
check(natsCores + inboxCores < 0.5 * natsTotalCores, `steady NATS CPU with the inbox ${fmt(natsCores + inboxCores, 1)} cores < 50%`, 'nats');
return { out, checks };
}


// The fewest sidecar hosts that pass the sidecar's checks, then the fewest cores per NATS node that
// pass NATS's (unless given); the inbox's checks depend on neither.
const passes = (p, side) => p.checks.every((c) => c.ok || c.side !== side);
let NC = a['nats-cores'] ? n('nats-cores') : 8;
let H = a.hosts ? n('hosts') : 1;
if (!a.hosts) while (H < 1000 && !passes(plan(H, NC), 'sidecar')) H++;
if (!a['nats-cores']) for (NC = 2; NC < 256 && !passes(plan(H, NC), 'nats'); NC += 2);
const { out, checks } = plan(H, NC);
console.log(out.join('\n'));
console.log('\nChecks:');
console.log(checks.map((c) => `  ${c.ok ? 'ok  ' : 'FAIL'} ${c.what}`).join('\n'));
if (!a.hosts) console.log(`\n${H} hosts is the fewest that pass the sidecar's checks; ${NC} cores per NATS node the fewest (in steps of 2) that pass NATS's.`);
if (a.measure) console.log(`\nMeasured now: ${JSON.stringify(Object.fromEntries(Object.entries(m).filter(([k]) => k.startsWith('natsBytes') || k === 'natsUsPerKvCas')))}`);

async function measureNats() {
  const { startEmbeddedNats } = await import('../dist/internal.js');
  const { connect } = await import('@nats-io/transport-node');
  const { Kvm } = await import('@nats-io/kv');
  const { cpuSeconds, rssBytes } = await import('./proc.js');
  const { pool, sleep } = await import('./common.js');
  const dir = mkdtempSync(join(tmpdir(), 'capacity-'));
  const server = await startEmbeddedNats({ storeDir: join(dir, 'store') });
  try {
    const settled = async () => {
      await sleep(2000);
      return rssBytes(server.pid);
    };
    const nc = await connect({ servers: server.url });
    const SUBS = 100_000;
    const r0 = await settled();
    for (let i = 0; i < SUBS; i++) nc.subscribe(`ws.live.project.p${i}`, { callback: () => {} });
    await nc.flush();
    const r1 = await settled();
    const natsBytesPerSubscription = Math.round((r1 - r0) / SUBS);

    const kv = await new Kvm(nc).create('CAPACITY_PRESENCE', { history: 1 });
    const KEYS = 20_000;
    const member = JSON.stringify(['vm-0a1b2c.3d4e5f60']);
    const revs = new Array(KEYS);
    const r2 = await settled();
    await pool(KEYS, 50, async (i) => {
      revs[i] = await kv.create(`p${i % 1000}.u${i}`, member);
    });
    const r3 = await settled();
    const natsBytesPerKvKey = Math.round((r3 - r2) / KEYS);
    const cpu0 = cpuSeconds(server.pid);
    const t0 = performance.now();
    await pool(KEYS, 50, async (i) => {
      await kv.update(`p${i % 1000}.u${i}`, JSON.stringify(['vm-0a1b2c.3d4e5f60', 'vm-9f8e7d.6c5b4a30']), revs[i]);
    });
    const casMs = performance.now() - t0;
    const natsUsPerKvCas = Math.round(((cpuSeconds(server.pid) - cpu0) * 1e6) / KEYS);
    console.error(
      `measured: ${natsBytesPerSubscription} B per subscription (${SUBS}), ${natsBytesPerKvKey} B per KV key (${KEYS}), ` +
        `${natsUsPerKvCas} us server CPU per CAS (${Math.round(KEYS / (casMs / 1000))} CAS/s with 50 in flight)`,
    );
    await nc.close();
    return { natsBytesPerSubscription, natsBytesPerKvKey, natsUsPerKvCas };
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
