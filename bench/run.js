#!/usr/bin/env node
// Side-by-side benchmark: NATS's built-in WebSocket listener vs the sidecar vs a naive
// ws+nats bridge and the floor of ws itself, driven by the same load generator (bench/loadgen/, separate processes).
//
//   node bench/run.js [--scenarios fanout,spread,latency,idle,connect,resume,upload] [--targets nats,sidecar,naive,ws-floor]
//                     [--runs 3] [--long-runs 1] [--quick] [--loaders auto|N] [size flags, see --help]
//
// For each scenario, each run, each target (in that order, so a run's ratios compare targets measured
// minutes apart at most) it starts a fresh nats-server + target + load generator(s), measures, and
// stops them. It prints a table (medians over runs; ratios = this target / NATS's listener in the
// same run, median over runs) and writes it with the machine and the command into BENCHMARKS.md,
// between generated-section markers so hand-written analysis in that file is kept.

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { median, now } from './common.js';
import { natsServerVersion } from './nats-server.js';
import { fdLimits } from './proc.js';
import * as S from './scenarios.js';
import { uploadBench, uploadTable } from './upload.js';
import { ROOT, TARGETS, Unavailable } from './targets.js';

const ALL_SCENARIOS = ['fanout', 'spread', 'latency', 'idle', 'connect', 'resume', 'batched', 'compress', 'history', 'storm', 'upload'];
const ALL_TARGETS = ['nats', 'sidecar', 'naive', 'ws-floor'];
/** Also accepted by --targets; the compress scenario adds sidecar-deflate by itself when sidecar runs. */
const KNOWN_TARGETS = [...ALL_TARGETS, 'sidecar-deflate'];

const FLAGS = {
  scenarios: { type: 'string', default: ALL_SCENARIOS.join(','), help: 'comma-separated subset of ' + ALL_SCENARIOS.join(',') },
  targets: { type: 'string', default: ALL_TARGETS.join(','), help: 'comma-separated subset of ' + KNOWN_TARGETS.join(',') },
  runs: { type: 'string', default: '3', help: 'runs of fanout, connect, resume (table shows medians)' },
  'long-runs': { type: 'string', default: '1', help: 'runs of spread, latency and idle (the long ones; 3 makes the run ~2 minutes longer)' },
  quick: { type: 'boolean', default: false, help: 'tiny sizes, 1 run, no BENCHMARKS.md (CI smoke run)' },
  loaders: { type: 'string', default: 'auto', help: 'load-generator processes: auto (2 for fanout/spread and above 2,500 clients, else 1) or N' },
  'max-phase-seconds': { type: 'string', default: '5', quick: '3', help: 'fanout/spread measurement window: a target still delivering then is rated by what arrived within it' },
  'fanout-clients': { type: 'string', default: '500', quick: '50' },
  'fanout-events': { type: 'string', default: '2000', quick: '200' },
  'spread-clients': { type: 'string', default: '5000', quick: '200' },
  'spread-projects': { type: 'string', default: '500', quick: '20' },
  'spread-events': { type: 'string', default: '50000', quick: '2000' },
  'latency-clients': { type: 'string', default: '500', quick: '50' },
  'latency-rates': { type: 'string', default: '200,20', quick: '100,10', help: 'events/s per latency run (x clients = deliveries/s)' },
  'latency-seconds': { type: 'string', default: '10', quick: '1' },
  'latency-warmup': { type: 'string', default: '1', quick: '0.25', help: 'seconds of unrecorded warm-up at the same rate' },
  'idle-clients': { type: 'string', default: '10000', quick: '300' },
  'idle-projects': { type: 'string', default: '1000,100', quick: '30,10', help: 'one idle measurement per project count (distinct users, one per connection)' },
  'idle-settle': { type: 'string', default: '2', quick: '0.5', help: 'seconds between connecting and reading RSS' },
  'idle-seconds': { type: 'string', default: '5', quick: '1', help: 'seconds of idle CPU measurement' },
  'connect-clients': { type: 'string', default: '1000', quick: '100' },
  'connect-projects': { type: 'string', default: '100', quick: '10' },
  'connect-concurrency': { type: 'string', default: '200', quick: '50' },
  'connect-warmup': { type: 'string', default: '2000', quick: '100', help: 'connects of other users to other projects between the fresh and the warmed-up measurement' },
  'resume-events': { type: 'string', default: '1000', quick: '100' },
  'storm-users': { type: 'string', default: '5000', quick: '100', help: 'presence storm: users joining one project at once' },
  'storm-concurrency': { type: 'string', default: '200', quick: '50', help: 'presence storm: handshakes in flight per load generator' },
  'resume-reads': { type: 'string', default: '9', quick: '2', help: 'measured resumes per run (median), each paired with a raw ordered-consumer read' },
  'resume-warmups': { type: 'string', default: '5', quick: '1', help: 'unmeasured resume + raw read pairs (another project) before them' },
  'upload-mib': { type: 'string', default: '256', quick: '8', help: 'upload scenario: file size for MB/s (tus and single request vs a raw Object Store put)' },
  'upload-rss-mib': { type: 'string', default: '1024', quick: '32', help: 'upload scenario: size of the upload during which sidecar RSS is sampled' },
  'batched-clients': { type: 'string', default: '500', quick: '50' },
  'batched-events': { type: 'string', default: '2000', quick: '200' },
  'compress-clients': { type: 'string', default: '500', quick: '50' },
  'compress-events': { type: 'string', default: '2000', quick: '200' },
  'history-events': { type: 'string', default: '1000', quick: '100' },
  'history-reads': { type: 'string', default: '9', quick: '2', help: 'measured history reads per run (median), each paired with a raw ordered-consumer read' },
  'history-warmups': { type: 'string', default: '5', quick: '1', help: 'unmeasured history + raw read pairs before them' },
  'payload-bytes': { type: 'string', default: '200' },
  'shared-user': { type: 'boolean', default: false, help: 'all clients use one user id (default: one user per client)' },
  'sidecar-bin': { type: 'string', default: 'bin/nats-ws-sidecar.js' },
  'sidecar-env': { type: 'string', default: '', help: 'KEY=VALUE,... added to the sidecar targets\' environment' },
  profile: { type: 'string', help: 'write a CPU profile (node --cpu-prof) of each sidecar and bridge run into this directory' },
  out: { type: 'string', default: 'BENCHMARKS.md', help: 'markdown file to update (not written with --quick unless given)' },
  'no-write': { type: 'boolean', default: false },
  json: { type: 'string', help: 'also write raw per-run results as JSON to this file' },
  verbose: { type: 'boolean', default: false, help: 'echo child-process output' },
  help: { type: 'boolean', default: false },
};

const { values: argv } = parseArgs({
  options: Object.fromEntries(Object.entries(FLAGS).map(([k, v]) => [k, { type: v.type }])),
  strict: true,
});
if (argv.help) {
  console.log('usage: node bench/run.js [flags]\n');
  for (const [k, v] of Object.entries(FLAGS)) {
    const d = v.default !== undefined ? ` (default ${v.default}${v.quick ? `, --quick ${v.quick}` : ''})` : '';
    console.log(`  --${k}${v.type === 'string' ? ' X' : ''}${d}${v.help ? `\n      ${v.help}` : ''}`);
  }
  process.exit(0);
}
const quick = argv.quick ?? false;
/** flag value: given > quick default > default */
const flag = (k) => argv[k] ?? (quick && FLAGS[k].quick !== undefined ? FLAGS[k].quick : FLAGS[k].default);
const num = (k) => {
  const v = Number(flag(k));
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${k}: not a number: ${flag(k)}`);
  return v;
};
const list = (k, allowed) => {
  const v = String(flag(k)).split(',').map((s) => s.trim()).filter(Boolean);
  for (const x of v) if (allowed && !allowed.includes(x)) throw new Error(`--${k}: unknown ${x} (one of ${allowed.join(',')})`);
  return v;
};

const scenarios = list('scenarios', ALL_SCENARIOS);
const targets = list('targets', KNOWN_TARGETS);
// Compression on and off side by side: the compress scenario measures the sidecar both ways.
if (scenarios.includes('compress') && targets.includes('sidecar') && !targets.includes('sidecar-deflate')) {
  targets.splice(targets.indexOf('sidecar') + 1, 0, 'sidecar-deflate');
}
const runs = quick && argv.runs === undefined ? 1 : Math.max(1, Math.floor(num('runs')));
const longRuns = Math.max(1, Math.floor(num('long-runs')));
const size = num('payload-bytes');
const sharedUser = argv['shared-user'] ?? false;
const verbose = argv.verbose ?? false;
const sidecarEnv = Object.fromEntries(
  flag('sidecar-env')
    .split(',')
    .filter(Boolean)
    .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
);
const startOpts = { verbose, sidecarEnv, sidecarBin: flag('sidecar-bin'), nodeArgs: argv.profile ? ['--cpu-prof', '--cpu-prof-interval=200', `--cpu-prof-dir=${resolve(argv.profile)}`] : [] };
// Load-generator processes. auto: two for fan-out and spread (one frame per delivery costs a client
// ~1 us of CPU, so a single client process can be the limit when the target is cheap; two let the
// clients use both cores), two for more than 2,500 idle connections (fds), otherwise one (latency,
// as measured before (BENCHMARKS.md); connect is "from one client process" by definition).
const loadersFor = (clients, throughput = false) =>
  flag('loaders') === 'auto' ? (throughput || clients > 2500 ? 2 : 1) : Math.max(1, Math.floor(num('loaders')));

// ---- what to run: one "row" per measured thing; a scenario may produce several rows ----

const fmtRate = (v) => (!Number.isFinite(v) ? '-' : v >= 1e6 ? `${(v / 1e6).toFixed(2)}M` : v >= 1e4 ? `${(v / 1e3).toFixed(0)}k` : v >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : v.toFixed(0));
const fix = (v, d) => (Number.isFinite(v) ? v.toFixed(d) : '-');
const fmtMs = (v) => (!Number.isFinite(v) ? '-' : v >= 100 ? v.toFixed(0) : v.toFixed(1));

/**
 * @typedef {object} Row
 * @property {string} id
 * @property {string} scenario
 * @property {string} label
 * @property {string} metric
 * @property {'higher' | 'lower'} better
 * @property {number} runs
 * @property {number} loaders
 * @property {(t: any, l: any, p: any) => Promise<import('./scenarios.js').Result>} run
 * @property {(m: Record<string, number>) => string} show  cell text from the median metrics
 * @property {string} ratioKey  metric used for the ratio
 * @property {string[]} keys     metrics the cell needs
 * @property {string} [shared]   rows with the same value come from one measurement
 * @property {(issue: string) => boolean} [issueFilter]  which of a shared measurement's issues concern this row
 * @property {Record<string, string>} [naFor]  targets for which the row does not apply, and why
 * @property {string[]} [only]  the only targets the row runs against (default: every target but sidecar-deflate)
 */

/** @type {Row[]} */
const rows = [];
const fanout = { clients: num('fanout-clients'), events: num('fanout-events') };
const spread = { clients: num('spread-clients'), projects: num('spread-projects'), events: num('spread-events') };
const lat = { clients: num('latency-clients'), seconds: num('latency-seconds'), warmupSeconds: num('latency-warmup'), rates: list('latency-rates').map(Number) };
const idl = { clients: num('idle-clients'), projectCounts: list('idle-projects').map(Number), settleSeconds: num('idle-settle'), seconds: num('idle-seconds') };
const con = { clients: num('connect-clients'), projects: num('connect-projects'), concurrency: num('connect-concurrency'), warmup: num('connect-warmup') };
const res = { events: num('resume-events'), reads: Math.max(1, Math.floor(num('resume-reads'))), warmups: Math.floor(num('resume-warmups')) };
const bat = { clients: num('batched-clients'), events: num('batched-events') };
const cmp = { clients: num('compress-clients'), events: num('compress-events') };
const storm = { users: num('storm-users'), concurrency: num('storm-concurrency') };
const his = { events: num('history-events'), reads: Math.max(1, Math.floor(num('history-reads'))), warmups: Math.floor(num('history-warmups')) };
const common = { size, sharedUser, capSeconds: num('max-phase-seconds') };

for (const sc of scenarios) {
  if (sc === 'fanout') {
    rows.push({
      id: 'fanout', scenario: sc, label: `Fan-out: ${fanout.clients} clients, 1 project, ${fanout.events} events`,
      metric: 'deliveries/s', better: 'higher', runs, loaders: loadersFor(fanout.clients, true), ratioKey: 'rate', keys: ['rate'],
      run: (t, l, p) => S.throughput(t, l, p, { name: 'fanout', projects: 1, ...fanout, ...common }),
      show: (m) => fmtRate(m.rate),
    });
  } else if (sc === 'spread') {
    rows.push({
      id: 'spread', scenario: sc, label: `Spread: ${spread.clients} clients, ${spread.projects} projects, ${spread.events} events`,
      metric: 'deliveries/s', better: 'higher', runs: longRuns, loaders: loadersFor(spread.clients, true), ratioKey: 'rate', keys: ['rate'],
      run: (t, l, p) => S.throughput(t, l, p, { name: 'spread', ...spread, ...common }),
      show: (m) => fmtRate(m.rate),
    });
  } else if (sc === 'latency') {
    // One measurement (one set of connected clients) covers every rate: one row per rate.
    const run = (t, l, p) => S.latency(t, l, p, { ...lat, ...common });
    for (const rate of [...lat.rates].sort((a, b) => b - a)) {
      const k = (m) => [`p50@${rate}`, `p99@${rate}`, `max@${rate}`].map((x) => m[x]);
      rows.push({
        id: `latency-${rate}`, scenario: sc, shared: 'latency',
        label: `Latency: ${lat.clients} clients x ${rate} events/s (~${fmtRate(lat.clients * rate)} deliveries/s), ${lat.seconds} s`,
        metric: 'p50 / p99 / max ms', better: 'lower', runs: longRuns, loaders: loadersFor(lat.clients),
        ratioKey: `p99@${rate}`, keys: [`p50@${rate}`, `p99@${rate}`, `max@${rate}`], run,
        issueFilter: (s) => s.startsWith(`${rate}/s`),
        show: (m) => k(m).map(fmtMs).join(' / '),
      });
    }
  } else if (sc === 'idle') {
    // One measurement per project count (--idle-projects 1000,100): the first keeps the plain row ids.
    idl.projectCounts.forEach((projects, i) => {
      const sfx = i === 0 ? '' : `-p${projects}`;
      const base = { scenario: sc, better: /** @type {const} */ ('lower'), runs: longRuns, loaders: loadersFor(idl.clients), shared: `idle${sfx}`, only: ['nats', 'sidecar', 'naive', 'ws-floor'] };
      const run = (t, l, p) => S.idle(t, l, p, { ...idl, projects, ...common });
      const over = `${idl.clients} connections over ${projects} projects`;
      rows.push({ ...base, id: `idle-rss${sfx}`, label: `Idle: ${over}`, metric: 'RSS per connection, KB', ratioKey: 'rssPerConnKB', keys: ['rssPerConnKB'], run, show: (m) => fix(m.rssPerConnKB, 1) });
      rows.push({ ...base, id: `idle-nats-rss${sfx}`, label: `Idle: ${over}, what the bridge adds to nats-server`, metric: 'nats-server RSS per connection, KB', ratioKey: '', keys: ['natsRssPerConnKB'], naFor: { nats: 'same process' }, run, show: (m) => fix(m.natsRssPerConnKB, 1) });
      rows.push({ ...base, id: `idle-cpu${sfx}`, label: `Idle: ${over}, ${idl.seconds} s`, metric: 'CPU, % of one core', ratioKey: 'cpuPct', keys: ['cpuPct'], run, show: (m) => fix(m.cpuPct, 2) });
    });
  } else if (sc === 'connect') {
    // One measurement per run, four rows: a fresh process, then the same connects warmed up.
    const base = { scenario: sc, shared: 'connect', runs, loaders: 1, run: (t, l, p) => S.connectRate(t, l, p, con), only: ['nats', 'sidecar', 'naive', 'ws-floor'] };
    const what = `Connect: ${con.clients} auth+subscribe, ${con.concurrency} in flight, 1 client process`;
    const warm = `after ${con.warmup} other connects`;
    rows.push({ ...base, id: 'connect', label: `${what}, fresh process`, metric: 'connects/s', better: 'higher', ratioKey: 'rate', keys: ['rate'], show: (m) => fmtRate(m.rate) });
    rows.push({ ...base, id: 'connect-cpu', label: `${what}, fresh process: server CPU (target + its nats-server)`, metric: 'CPU ms per connect', better: 'lower', ratioKey: 'cpuMs', keys: ['cpuMs'], show: (m) => fix(m.cpuMs, 2) });
    if (con.warmup > 0) {
      rows.push({ ...base, id: 'connect-warm', label: `${what}, ${warm}`, metric: 'connects/s', better: 'higher', ratioKey: 'warmRate', keys: ['warmRate'], show: (m) => fmtRate(m.warmRate) });
      rows.push({ ...base, id: 'connect-warm-cpu', label: `${what}, ${warm}: server CPU (target + its nats-server)`, metric: 'CPU ms per connect', better: 'lower', ratioKey: 'warmCpuMs', keys: ['warmCpuMs'], show: (m) => fix(m.warmCpuMs, 2) });
    }
  } else if (sc === 'resume') {
    // One measurement, two rows: against NATS's own replay, and against a raw read in the same run.
    const run = (t, l, p) => S.resume(t, l, p, { ...res, ...common });
    const base = { scenario: sc, shared: 'resume', better: /** @type {const} */ ('lower'), runs, loaders: 1, run };
    rows.push({ ...base, id: 'resume', label: `Resume: replay ${res.events} stored events (since), median of ${res.reads}`, metric: 'ms to last event', ratioKey: 'ms', keys: ['ms'], show: (m) => fmtMs(m.ms) });
    rows.push({
      ...base, id: 'resume-raw', label: `Resume vs a raw ordered-consumer read of the same ${res.events} events (nats.js, same nats-server, same run)`,
      metric: 'raw read ms (resume / raw read, median of pairs)', ratioKey: '', keys: ['rawMs', 'vsRaw'], show: (m) => `${fmtMs(m.rawMs)} (${fix(m.vsRaw, 2)}x)`,
    });
  } else if (sc === 'batched' || sc === 'compress') {
    // One measurement per run, several rows: rate, server CPU per delivery, bytes on the wire, RSS.
    const batched = sc === 'batched';
    const dims = batched ? bat : cmp;
    const what = batched
      ? `Batched fan-out: ${dims.clients} clients, ${dims.events} events (sidecar clients ask for batched frames)`
      : `Compression: ${dims.clients} clients, ${dims.events} ~1 KB task events (batched; clients offer permessage-deflate)`;
    const run = (t, l, p) => S.frames(t, l, p, { name: sc, ...dims, ...common, batch: true, deflate: !batched, task: !batched });
    const base = { scenario: sc, shared: sc, runs, loaders: loadersFor(dims.clients, true), run, only: batched ? ['nats', 'sidecar', 'naive'] : ['nats', 'sidecar', 'sidecar-deflate'] };
    rows.push({ ...base, id: `${sc}-rate`, label: what, metric: 'deliveries/s', better: 'higher', ratioKey: 'rate', keys: ['rate'], show: (m) => fmtRate(m.rate) });
    rows.push({ ...base, id: `${sc}-cpu`, label: `${batched ? 'Batched fan-out' : 'Compression'}: server CPU (target + its nats-server)`, metric: 'CPU s per million deliveries', better: 'lower', ratioKey: 'cpuPerM', keys: ['cpuPerM'], show: (m) => fix(m.cpuPerM, 2) });
    rows.push({ ...base, id: `${sc}-wire`, label: `${batched ? 'Batched fan-out' : 'Compression'}: bytes on the wire`, metric: 'bytes per delivery (frames per delivery)', better: 'lower', ratioKey: 'bytesPerDelivery', keys: ['bytesPerDelivery', 'framesPerDelivery'], show: (m) => `${fix(m.bytesPerDelivery, 0)} (${fix(m.framesPerDelivery, 3)})` });
    rows.push({ ...base, id: `${sc}-rss`, label: `${batched ? 'Batched fan-out' : 'Compression'}: memory`, metric: 'RSS per connection, KB', better: 'lower', ratioKey: 'rssPerConnKB', keys: ['rssPerConnKB'], show: (m) => fix(m.rssPerConnKB, 1) });
  } else if (sc === 'storm') {
    const base = { scenario: sc, shared: sc, runs, loaders: loadersFor(storm.users), only: ['sidecar'], run: (t, l, p) => S.presenceStorm(t, l, p, storm) };
    const what = `Presence storm: ${storm.users} users join one project`;
    rows.push({ ...base, id: 'storm-settle', label: `${what}, until every member's presence view holds all`, metric: 'ms', better: 'lower', ratioKey: '', keys: ['settleMs'], show: (m) => fmtMs(m.settleMs) });
    rows.push({ ...base, id: 'storm-cpu', label: `${what}: server CPU (target + its nats-server)`, metric: 'CPU s', better: 'lower', ratioKey: '', keys: ['cpuS'], show: (m) => fix(m.cpuS, 2) });
  } else if (sc === 'history') {
    const run = (t, l, p) => S.historyRead(t, l, p, { ...his, ...common });
    const base = { scenario: sc, shared: 'history', better: /** @type {const} */ ('lower'), runs, loaders: 1, run, only: ['nats', 'sidecar'] };
    rows.push({
      ...base, id: 'history', label: `History: read ${his.events} stored events (NATS column: a raw ordered-consumer read with nats.js)`,
      metric: `ms (median of ${his.reads} reads)`, ratioKey: 'ms', keys: ['ms'], show: (m) => fmtMs(m.ms),
    });
    rows.push({
      ...base, id: 'history-raw', label: `History vs a raw ordered-consumer read of the same ${his.events} events (nats.js, same nats-server, same run)`,
      metric: 'raw read ms (history / raw read, median of pairs; NATS: raw / raw, the noise)', ratioKey: '', keys: ['rawMs', 'vsRaw'], show: (m) => `${fmtMs(m.rawMs)} (${fix(m.vsRaw, 2)}x)`,
    });
  }
}

// ---- preflight: file descriptors ----

// Children raise their soft limit to the hard one (max 65536, see proc.js); the target holds one
// socket per client, so the hard limit must exceed the largest client count.
const fd = fdLimits();
const fdChild = Math.min(fd.hard, 65536);
const maxClients = Math.max(0, ...rows.map((r) => (r.scenario === 'idle' ? idl.clients : r.scenario === 'spread' ? spread.clients : r.scenario === 'storm' ? storm.users : 0)));
const fdNote = `fd limit ${fd.soft} soft / ${fd.hard} hard (children run with ${fdChild})`;
if (maxClients + 500 > fdChild) {
  process.stderr.write(`bench: warning: ${maxClients} clients need more than ${fdChild} file descriptors in the target; raise the hard limit (ulimit -Hn) or use smaller sizes\n`);
}

// ---- run ----

/** results[rowId][target] = per-run results */
/** @type {Record<string, Record<string, Array<import('./scenarios.js').Result & { error?: string }>>>} */
const results = {};
/** @type {Record<string, string>} target -> why it cannot run */
const unavailable = {};
const t0 = now();
const log = (s) => process.stderr.write(`${s}\n`);
// Other work on the machine distorts every figure: record how busy it was around the run.
const loadStart = os.loadavg()[0];
if (loadStart > 0.5 * os.cpus().length) log(`bench: warning: load average ${loadStart.toFixed(2)} on ${os.cpus().length} cores: other processes are busy, figures will be noisy`);

log(`bench: scenarios ${scenarios.join(',')}; targets ${targets.join(',')}; runs ${runs} (spread/latency/idle ${longRuns})${quick ? '; quick' : ''}`);

/** Rows run against every selected target except sidecar-deflate and ws-floor, unless they name their own. */
const ONLY_WHEN_NAMED = ['sidecar-deflate', 'ws-floor'];
const runsAgainst = (row, target) => (row.only ? row.only.includes(target) : !ONLY_WHEN_NAMED.includes(target));

const done = new Set();
const started = new Set();
for (const row of rows) {
  const group = row.shared ? rows.filter((r) => r.shared === row.shared) : [row];
  if (done.has(group[0].id)) continue;
  done.add(group[0].id);
  for (const r of group) results[r.id] = Object.fromEntries(targets.map((t) => [t, []]));
  for (let run = 1; run <= row.runs; run++) {
    for (const target of targets) {
      const tag = `${row.shared ?? row.id} run ${run}/${row.runs} ${target}`;
      if (unavailable[target] || !runsAgainst(row, target)) continue;
      let r;
      const ts = now();
      try {
        r = await S.withTarget(target, row.loaders, startOpts, (t, l, p) => {
          started.add(target);
          return row.run(t, l, p);
        });
      } catch (e) {
        // Unavailable = cannot start at all (not built yet): skip it for the rest of the run. Once it
        // has started in this run, a failed start is an error of that step like any other.
        if (e instanceof Unavailable && !started.has(target)) {
          unavailable[target] = e.message;
          log(`${tag}: unavailable: ${e.message}`);
          continue;
        }
        r = { metrics: {}, issues: [], details: {}, error: String(e?.message ?? e) };
      }
      for (const g of group) results[g.id][target].push(r);
      const secs = ((now() - ts) / 1000).toFixed(1);
      const summary = r.error ? `error: ${r.error}` : r.na ? `n/a (${r.na})` : group.map((g) => `${g.id} ${g.metric}: ${g.show(r.metrics)}`).join(', ');
      log(`${tag}: ${summary}${r.issues?.length ? ` [${r.issues.join('; ')}]` : ''} (${secs} s) ${verbose ? JSON.stringify(r.details) : ''}`);
    }
  }
}

// The upload scenario concerns the sidecar alone (no WebSocket target to compare): its own table.
let upload;
if (scenarios.includes('upload') && targets.includes('sidecar') && !unavailable.sidecar) {
  const ts = now();
  try {
    upload = await uploadBench({ sizeMiB: num('upload-mib'), rssMiB: num('upload-rss-mib'), runs, verbose, sidecarBin: flag('sidecar-bin'), nodeArgs: startOpts.nodeArgs, log });
  } catch (e) {
    upload = { error: String(e?.message ?? e) };
    log(`upload: error: ${upload.error}`);
  }
  log(`upload: done (${((now() - ts) / 1000).toFixed(1)} s)`);
}

// ---- table ----

/** Median metrics over a target's successful runs of a row. */
function medians(rs) {
  const ok = rs.filter((r) => !r.error && !r.na);
  if (!ok.length) return null;
  const keys = [...new Set(ok.flatMap((r) => Object.keys(r.metrics)))];
  return Object.fromEntries(keys.map((k) => [k, median(ok.map((r) => r.metrics[k] ?? NaN))]));
}

/** The issues of a result that concern this row. */
const rowIssues = (row, r) => (r.issues ?? []).filter((s) => !row.issueFilter || row.issueFilter(s));

function cell(row, target) {
  if (unavailable[target]) return 'unavailable';
  if (row.naFor?.[target]) return `n/a (${row.naFor[target]})`;
  if (!runsAgainst(row, target)) return 'n/a';
  const rs = results[row.id][target];
  if (!rs.length) return '-';
  if (rs.every((r) => r.error)) return `error (see notes)`;
  if (rs.every((r) => r.na)) return `n/a (${rs[0].na})`;
  const m = medians(rs);
  if (!m || row.keys.some((k) => !Number.isFinite(m[k]))) return 'incomplete (see notes)';
  let text = row.show(m);
  if (row.ratioKey && target !== 'nats' && targets.includes('nats')) {
    // ratio per run (same run's NATS figure), median over runs
    const base = results[row.id].nats;
    const ratios = rs.map((r, i) => (r.metrics?.[row.ratioKey] ?? NaN) / (base[i]?.metrics?.[row.ratioKey] ?? NaN));
    const q = median(ratios);
    if (Number.isFinite(q)) text += ` (${q >= 10 ? q.toFixed(0) : q >= 1 ? q.toFixed(2) : q.toFixed(2)}x)`;
  }
  if (rs.some((r) => rowIssues(row, r).length || r.error)) text += ' !';
  return text;
}

const header = ['Scenario', 'Metric', ...targets.map((t) => TARGETS[t].label)];
const tableRows = rows.map((row) => [row.label, row.metric, ...targets.map((t) => cell(row, t))]);
const table = [
  `| ${header.join(' | ')} |`,
  `| ${header.map((_, i) => (i < 2 ? '---' : '---:')).join(' | ')} |`,
  ...tableRows.map((r) => `| ${r.join(' | ')} |`),
].join('\n');

const notes = [];
for (const [t, why] of Object.entries(unavailable)) notes.push(`- ${TARGETS[t].label}: unavailable: ${why}`);
for (const row of rows) {
  for (const t of targets) {
    (results[row.id][t] ?? []).forEach((r, i) => {
      const tag = `${row.shared ?? row.id}, ${TARGETS[t].label}, run ${i + 1}`;
      if (r.error) notes.push(`- ${tag}: error: ${r.error}`);
      for (const s of rowIssues(row, r)) notes.push(`- ${tag}: ${s}`);
    });
  }
}
const uniqueNotes = [...new Set(notes)];

// ---- machine and command ----

const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
const cpuModel = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
const cores = (cpuinfo.match(/^processor\s*:/gm) ?? []).length || os.cpus().length;
const args = process.argv.slice(2).join(' ');
const command = process.env.npm_lifecycle_event === 'bench' ? `npm run bench${args ? ` -- ${args}` : ''}` : `node bench/run.js${args ? ` ${args}` : ''}`;
let gitRev = '';
try {
  gitRev = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
} catch {}
const machine = [
  `CPU: ${cpuModel}, ${cores} cores; ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM; Linux ${os.release()}`,
  `Node.js ${process.version}; nats-server ${natsServerVersion()}; ${fdNote}`,
  `1-minute load average: ${loadStart.toFixed(2)} at the start, ${os.loadavg()[0].toFixed(2)} at the end (the bench itself keeps it near ${cores}; much more means other work was running)`,
];
const elapsed = (now() - t0) / 1000;

const out = [
  ...(rows.length
    ? [
        table,
        '',
        `Ratios in parentheses: this target / NATS's WebSocket listener in the same run (median over runs); ` +
          `for deliveries/s and connects/s higher is better, for latency (ratio of p99), memory, CPU and replay time lower is better. ` +
          `In the rows "vs a raw ordered-consumer read", the parenthesis is instead the target's read / a raw nats.js read of the same events from the same nats-server, paired in the same run (median of the pairs). ` +
          `"!" marks a cell with an issue listed in the notes.`,
      ]
    : []),
  ...(upload ? [...(rows.length ? [''] : []), upload.error ? `Upload: error: ${upload.error}` : uploadTable(upload)] : []),
].join('\n');
console.log(`\n${out}\n`);
if (uniqueNotes.length) console.log(`Notes:\n${uniqueNotes.join('\n')}\n`);
console.log(`${machine.join('\n')}\nCommand: ${command} (${elapsed.toFixed(0)} s)`);

// ---- BENCHMARKS.md: replace only the generated section ----

const fmtNum = (v) => (typeof v !== 'number' ? String(v) : Math.abs(v) >= 100 ? String(Math.round(v)) : String(+v.toFixed(2)));
/** key=value list; nested objects (latency: one per rate) as `key: (k=v ...)` */
const kv = (o) =>
  Object.entries(o)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => (v && typeof v === 'object' ? `${k}: (${kv(v)})` : `${k}=${fmtNum(v)}`))
    .join(' ');
const details = [];
for (const row of rows) {
  if (row.shared && rows.find((r) => r.shared === row.shared) !== row) continue;
  for (const t of targets) {
    (results[row.id][t] ?? []).forEach((r, i) => {
      if (r.error || r.na) return;
      const m = Object.entries(r.metrics).map(([k, v]) => `${k}=${fmtNum(v)}`).join(' ');
      const d = kv(r.details);
      details.push(`| ${row.shared ?? row.id} | ${TARGETS[t].label} | ${i + 1} | ${m} | ${d} |`);
    });
  }
}

const BEGIN = '<!-- bench:begin (generated by bench/run.js; edit outside these markers) -->';
const END = '<!-- bench:end -->';
const section = [
  BEGIN,
  `## Results`,
  '',
  `Generated ${new Date().toISOString()}${gitRev ? ` at ${gitRev}` : ''} by \`${command}\` in ${elapsed.toFixed(0)} s.`,
  '',
  ...machine.map((m) => `- ${m}`),
  `- Everything on loopback: nats-server (JetStream + WebSocket listener), the target, the load generator (${[...new Set(rows.map((r) => r.loaders))].join('/')} process(es)) and the publisher share the ${cores} cores.`,
  '',
  out,
  '',
  ...(uniqueNotes.length ? ['### Notes', '', ...uniqueNotes, ''] : []),
  '### Per run',
  '',
  'CPU seconds of the target, its nats-server (bridges) and the load generators during the measured phase; loaderElu = load-generator event-loop utilisation (near 1: the clients were the limit).',
  '',
  '| scenario | target | run | metrics | details |',
  '| --- | --- | ---: | --- | --- |',
  ...details,
  END,
].join('\n');

const write = !(argv['no-write'] ?? false) && (!quick || argv.out !== undefined);
if (write) {
  const file = resolve(ROOT, flag('out'));
  const prev = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n\nHow to run and what each scenario measures: bench/README.md.\n\n';
  const a = prev.indexOf(BEGIN);
  const b = prev.indexOf(END);
  const next = a !== -1 && b > a ? prev.slice(0, a) + section + prev.slice(b + END.length) : `${prev.trimEnd()}\n\n${section}\n`;
  writeFileSync(file, next);
  log(`bench: wrote ${file}`);
}
if (argv.json) writeFileSync(argv.json, JSON.stringify({ command, machine, results, unavailable, upload }, null, 2));

const failedAll = Boolean(upload?.error) || rows.some((row) => targets.some((t) => !unavailable[t] && (results[row.id][t] ?? []).some((r) => r.error)));
process.exit(failedAll ? 1 : 0);
