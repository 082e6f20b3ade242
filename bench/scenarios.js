// The benchmark scenarios. Each function runs one scenario once against one target that
// has just been started (fresh nats-server, fresh target process, fresh load generators) and returns
// { metrics, issues, details }: numbers for the table, problems that make the numbers suspect
// (missed/duplicated deliveries, failed samples, server-closed clients), and raw figures for
// BENCHMARKS.md (CPU seconds of target, nats-server and load generators, load-generator event-loop
// utilisation: an ELU near 1 means the clients, not the target, were the limit).

import { Histogram, median, now, sleep } from './common.js';
import { cpuSeconds, rssBytes } from './proc.js';
import { Publisher } from './publisher.js';
import { Loader, startTarget } from './targets.js';

/**
 * @typedef {import('./targets.js').Target} Target
 * @typedef {{ metrics: Record<string, number>, issues: string[], details: Record<string, unknown>, na?: string }} Result
 */

/** Splits [0, n) into `parts` contiguous ranges. */
const split = (n, parts) =>
  Array.from({ length: parts }, (_, j) => ({ from: Math.floor((j * n) / parts), to: Math.floor(((j + 1) * n) / parts) }));

/** How many of `events` (published round-robin over projects p0..p{P-1}) each project gets. */
function perProjectCounts(events, projects) {
  /** @type {Record<string, number>} */
  const counts = {};
  for (let p = 0; p < projects; p++) counts[`p${p}`] = Math.floor(events / projects) + (p < events % projects ? 1 : 0);
  return counts;
}

const projectIds = (n) => Array.from({ length: n }, (_, p) => `p${p}`);

/**
 * Starts the target, `loaders` load generators and a publisher; runs fn; stops everything.
 * @template T
 * @param {string} name @param {number} loaders @param {object} opts
 * @param {(t: Target, l: Loader[], pub: Publisher) => Promise<T>} fn
 */
export async function withTarget(name, loaders, opts, fn) {
  // Target and load generators start in parallel (each takes a few hundred ms to seconds).
  const started = await Promise.allSettled([
    startTarget(/** @type {any} */ (name), opts),
    ...Array.from({ length: loaders }, () => Loader.start(opts.verbose)),
  ]);
  const [tr, ...lr] = started;
  /** @type {Loader[]} */
  const ls = lr.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const target = tr.status === 'fulfilled' ? tr.value : null;
  let pub;
  try {
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw /** @type {PromiseRejectedResult} */ (failed).reason;
    pub = await Publisher.connect(/** @type {Target} */ (target).natsUrl);
    return await fn(/** @type {Target} */ (target), ls, pub);
  } finally {
    await pub?.close();
    await Promise.all(ls.map((l) => l.stop()));
    await target?.stop();
  }
}

/**
 * Opens `clients` clients spread over the loaders (client i on project p{i % projects}).
 * Throws if any fails: every later count depends on all of them being subscribed.
 * 150 handshakes in flight per loader: enough to keep a loader busy, and with two loaders still
 * below the default listen backlog (511) of a Node server, so no SYN is dropped and retried 1 s later.
 */
async function connectAll(t, loaders, { clients, projects, userPrefix = 'u', sharedUser = false, batch = false, deflate = false, concurrency = 150, deadlineMs = 120_000 }) {
  const parts = split(clients, loaders.length);
  const t0 = now();
  const res = await Promise.all(
    loaders.map((l, j) =>
      l.request(
        'connect',
        { kind: t.kind, url: t.wsUrl, ...parts[j], projects, secret: t.secret, userPrefix, sharedUser, checkSeq: t.checkSeq, batch, deflate, concurrency, deadlineMs },
        deadlineMs + 30_000,
      ),
    ),
  );
  const failed = res.reduce((s, r) => s + r.failed, 0);
  if (failed) throw new Error(`${failed}/${clients} clients failed to connect: ${res.flatMap((r) => r.errors).join('; ')}`);
  return { parts, ms: now() - t0 };
}

/**
 * One measured phase: arm the loaders for marker `run`, call publish(), wait until every client got
 * its events (or the window closes at `capMs` after the first publish, or timeout), and aggregate.
 * Deliveries/s: complete -> all deliveries / (last delivery in any loader - first publish);
 * capped -> the sum over loaders of deliveries by the window's end / window length. Both clocks
 * are now() (see common.js).
 */
async function phase(t, loaders, parts, pub, { run, counts, latency = false, timeoutMs, capMs = Infinity, publish }) {
  const ids = Object.keys(counts);
  const expectedFor = ({ from, to }) => {
    let s = 0;
    for (let i = from; i < to; i++) s += counts[ids[i % ids.length]];
    return s;
  };
  await Promise.all(loaders.map((l, j) => l.request('arm', { run, expected: expectedFor(parts[j]), perProject: counts, latency })));
  const cpuT = cpuSeconds(t.pid);
  const cpuN = cpuSeconds(t.natsPid);
  const t0 = now();
  const collect = (capAt) => Promise.all(loaders.map((l) => l.request('collect', { timeoutMs, capAt }, timeoutMs + 30_000)));
  let rs;
  if (Number.isFinite(capMs)) {
    // The window must not wait for the publisher: nats-server slows down (stalls) a publisher whose
    // subscribers fall behind, so against a slow target publishing itself can take many seconds.
    const published = publish();
    rs = await collect(t0 + capMs);
    pub.stop();
    await Promise.race([published, sleep(5000)]);
  } else {
    await publish();
    rs = await collect(undefined);
  }
  const sum = (k) => rs.reduce((s, r) => s + r[k], 0);
  const hist = latency ? rs.reduce((h, r) => h.merge(r.hist), new Histogram()) : null;
  const complete = rs.every((r) => r.outcome === 'complete');
  const capped = !complete && rs.every((r) => r.outcome !== 'timeout');
  const rate = complete
    ? (sum('expected') / (Math.max(...rs.map((r) => r.endAt)) - t0)) * 1000
    : capped
      ? rs.reduce((s, r) => s + (r.received / (r.endAt - t0)) * 1000, 0)
      : NaN;
  const issues = [];
  if (rs.some((r) => r.outcome === 'timeout')) issues.push(`incomplete: ${sum('received')}/${sum('expected')} deliveries before the timeout`);
  const stalled = Math.max(...rs.map((r) => r.stalledMs));
  if (!complete && stalled >= 1000) issues.push(`deliveries stopped at ${sum('received')}/${sum('expected')} (nothing new for ${(stalled / 1000).toFixed(1)} s): lost events?`);
  if (sum('extra')) issues.push(`${sum('extra')} deliveries beyond the expected count (duplicates)`);
  if (sum('clientsShort') + sum('clientsOver')) issues.push(`${sum('clientsShort')} clients short, ${sum('clientsOver')} over their expected count`);
  if (sum('closed')) issues.push(`${sum('closed')} clients closed by the server`);
  if (sum('verifyErrors')) issues.push(`${sum('verifyErrors')}/${sum('verified')} sampled deliveries invalid: ${rs.flatMap((r) => r.errorSamples).slice(0, 3).join('; ')}`);
  if (hist?.negative) issues.push(`${hist.negative} latencies < 0 (clock skew)`);
  return {
    rate,
    complete,
    hist,
    issues,
    details: {
      deliveries: sum('received'),
      ...(capped ? { cappedAtPct: +((sum('received') / sum('expected')) * 100).toFixed(1) } : {}),
      targetCpuS: +(cpuSeconds(t.pid) - cpuT).toFixed(2),
      natsCpuS: t.natsPid === t.pid ? undefined : +(cpuSeconds(t.natsPid) - cpuN).toFixed(2),
      loaderCpuS: +(sum('cpuMs') / 1000).toFixed(2),
      loaderElu: +Math.max(...rs.map((r) => r.elu)).toFixed(2),
      sampled: sum('verified'),
      otherFrames: sum('other'),
      wireBytes: sum('wireBytes'),
      frames: sum('frames'),
    },
  };
}

/** Generous per-phase bound: ~20k deliveries/s at worst, at least 10 s, at most 90 s. */
const phaseTimeout = (deliveries) => Math.min(90_000, Math.max(10_000, deliveries / 20));

/**
 * Fan-out and spread: `clients` clients over `projects` projects, `events` events published as fast
 * as possible round-robin over the projects; deliveries per second. The measurement window is
 * bounded by `capSeconds`: a target still delivering then is rated by what arrived within the
 * window (steady state of a burst; keeps a slow target from stretching the whole run).
 * A small warm-up phase (one event per project, at least 50) runs first, unmeasured.
 * @returns {Promise<Result>}
 */
/**
 * Waits until the target and its nats-server are quiet after connecting (under 10% of a core over
 * 250 ms; at most 30 s): work that connecting set off (the sidecar's presence joins, thousands of
 * them after the spread scenario's 5,000 connects) must not land inside the measured phase.
 * Returns how long that took.
 */
async function settle(t) {
  const t0 = now();
  const pids = [...new Set([t.pid, t.natsPid])];
  const cpu = () => pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
  for (let before = cpu(); now() - t0 < 30_000; ) {
    await sleep(250);
    const after = cpu();
    if (after - before < 0.025) break;
    before = after;
  }
  return now() - t0;
}

export async function throughput(t, loaders, pub, o) {
  const { clients, projects, events } = o;
  const { parts, ms: connectMs } = await connectAll(t, loaders, { clients, projects, sharedUser: o.sharedUser });
  const settleMs = await settle(t);
  const ids = projectIds(projects);
  const warmEvents = Math.max(projects, Math.min(events, 50));
  const warm = await phase(t, loaders, parts, pub, {
    run: `${o.name}-warm`,
    counts: perProjectCounts(warmEvents, projects),
    timeoutMs: phaseTimeout((warmEvents * clients) / projects),
    publish: () => pub.burst(warmEvents, ids, `${o.name}-warm`, o.size),
  });
  const m = await phase(t, loaders, parts, pub, {
    run: o.name,
    counts: perProjectCounts(events, projects),
    timeoutMs: phaseTimeout((events * clients) / projects),
    capMs: o.capSeconds * 1000,
    publish: () => pub.burst(events, ids, o.name, o.size),
  });
  const issues = [...warm.issues.map((s) => `warm-up: ${s}`), ...m.issues];
  return { metrics: { rate: m.rate }, issues, details: { ...m.details, connectMs: Math.round(connectMs), settleMs: Math.round(settleMs) } };
}

/**
 * Latency: `clients` clients on one project; for each rate (ascending, so an overloaded target's
 * backlog cannot spill into a lighter run), `rate` events/s for `seconds` s, each stamped with its
 * publish time; publish-to-receive p50/p99/max over all deliveries. Each rate starts with a
 * warm-up at that rate (another marker, not recorded). A rate whose deliveries are not all in
 * within 5 s of the last publish is reported with an issue, and higher rates are skipped.
 * Metrics are keyed by rate: p50@200, p99@200, max@200, ...
 * @returns {Promise<Result>}
 */
export async function latency(t, loaders, pub, o) {
  const { clients, seconds, warmupSeconds } = o;
  const { parts } = await connectAll(t, loaders, { clients, projects: 1, sharedUser: o.sharedUser });
  await settle(t);
  const ids = ['p0'];
  const issues = [];
  /** @type {Record<string, number>} */
  const metrics = {};
  /** @type {Record<string, unknown>} */
  const details = {};
  for (const rate of [...o.rates].sort((a, b) => a - b)) {
    if (warmupSeconds > 0) {
      const w = await phase(t, loaders, parts, pub, {
        run: `lat${rate}-warm`,
        counts: { p0: Math.round(rate * warmupSeconds) },
        timeoutMs: 5_000,
        publish: () => pub.paced(rate, warmupSeconds, ids, `lat${rate}-warm`, o.size),
      });
      issues.push(...w.issues.map((s) => `${rate}/s warm-up: ${s}`));
    }
    const m = await phase(t, loaders, parts, pub, {
      run: `lat${rate}`,
      counts: { p0: Math.round(rate * seconds) },
      latency: true,
      timeoutMs: 5_000,
      publish: () => pub.paced(rate, seconds, ids, `lat${rate}`, o.size),
    });
    issues.push(...m.issues.map((s) => `${rate}/s: ${s}`));
    const h = /** @type {Histogram} */ (m.hist);
    metrics[`p50@${rate}`] = h.percentile(0.5);
    metrics[`p99@${rate}`] = h.percentile(0.99);
    metrics[`max@${rate}`] = h.max;
    details[`${rate}/s`] = { deliveriesPerSec: Math.round(h.n / seconds), meanMs: +(h.sum / h.n).toFixed(2), ...m.details };
    if (!m.complete) {
      issues.push(`${rate}/s: the target could not keep up; higher rates skipped`);
      break;
    }
  }
  return { metrics, issues, details };
}

/**
 * Idle: `clients` authenticated, subscribed connections that then stay quiet. RSS per connection =
 * (VmRSS after connecting and settling - VmRSS before) / connections, of the target process, and
 * for the bridges also of their nats-server (what their per-connection NATS state costs: consumers,
 * subscriptions); CPU = utime+stime of the target over `seconds` s of idle.
 * @returns {Promise<Result>}
 */
export async function idle(t, loaders, _pub, o) {
  const bridge = t.natsPid !== t.pid;
  const rss0 = rssBytes(t.pid);
  const nrss0 = bridge ? rssBytes(t.natsPid) : NaN;
  const { ms } = await connectAll(t, loaders, { clients: o.clients, projects: o.projects, sharedUser: o.sharedUser, deadlineMs: 180_000 });
  await sleep(o.settleSeconds * 1000);
  const rss1 = rssBytes(t.pid);
  const nrss1 = bridge ? rssBytes(t.natsPid) : NaN;
  const c0 = cpuSeconds(t.pid);
  const n0 = cpuSeconds(t.natsPid);
  await sleep(o.seconds * 1000);
  const cpuPct = ((cpuSeconds(t.pid) - c0) / o.seconds) * 100;
  const natsCpuPct = ((cpuSeconds(t.natsPid) - n0) / o.seconds) * 100;
  const kb = (a, b) => (b - a) / o.clients / 1024;
  return {
    metrics: { rssPerConnKB: kb(rss0, rss1), cpuPct, ...(bridge ? { natsRssPerConnKB: kb(nrss0, nrss1) } : {}) },
    issues: [],
    details: {
      rssBeforeMB: +(rss0 / 2 ** 20).toFixed(1),
      rssAfterMB: +(rss1 / 2 ** 20).toFixed(1),
      natsCpuPct: bridge ? +natsCpuPct.toFixed(2) : undefined,
      connectMs: Math.round(ms),
    },
  };
}

/**
 * Connect rate: `clients` connects from one load-generator process, `concurrency` in flight, each
 * one complete when authenticated and subscribed (NATS: CONNECT+PING/PONG, SUB+PING/PONG; it has no
 * auth in this setup). Tokens are signed before the clock starts.
 *
 * Twice per run: first against the fresh process (a deploy's new instance: Node.js runs its first
 * connects unoptimised), then, after `warmup` more connects of other users to other projects and
 * all of them dropped, the same connects again against the warmed-up process (an instance that
 * takes over a dead one's clients). The CPU figures are per connect, of the target and of its
 * nats-server, until the last client is subscribed; *Settled also counts what the connects set off
 * in the background (presence writes, lifecycle events), until both processes are quiet.
 * @returns {Promise<Result>}
 */
export async function connectRate(t, loaders, _pub, o) {
  const [l] = loaders;
  const cold = await measureConnects(t, l, o, 'c');
  const metrics = { rate: cold.rate, cpuMs: cold.cpuMs };
  const details = { ...cold.details };
  const issues = [...cold.issues];
  if (o.warmup > 0) {
    await l.request('closeAll', {}, 30_000);
    const w = await openClients(t, l, o, o.warmup, 'w', 'w');
    if (w.failed) issues.push(`warm-up: ${w.failed}/${o.warmup} failed: ${w.errors.join('; ')}`);
    await l.request('closeAll', {}, 30_000);
    await settle(t);
    const warm = await measureConnects(t, l, o, 'm');
    Object.assign(metrics, { warmRate: warm.rate, warmCpuMs: warm.cpuMs });
    for (const [k, v] of Object.entries(warm.details)) details[`warm${k[0].toUpperCase()}${k.slice(1)}`] = v;
    issues.push(...warm.issues.map((s) => `warm: ${s}`));
  }
  return { metrics, issues, details };
}

/** `n` clients: users `${userPrefix}<i>` on projects `${projectPrefix}<i % o.projects>`. */
function openClients(t, l, o, n, userPrefix, projectPrefix = 'p') {
  return l.request(
    'connect',
    { kind: t.kind, url: t.wsUrl, from: 0, to: n, projects: o.projects, secret: t.secret, userPrefix, projectPrefix, checkSeq: t.checkSeq, concurrency: o.concurrency, deadlineMs: 60_000 },
    120_000,
  );
}

/** One measured batch of `o.clients` connects (users `${userPrefix}<i>`, projects p0..), then settled. */
async function measureConnects(t, l, o, userPrefix) {
  const cpuT = cpuSeconds(t.pid);
  const cpuN = cpuSeconds(t.natsPid);
  const r = await openClients(t, l, o, o.clients, userPrefix);
  const issues = r.failed ? [`${r.failed}/${o.clients} failed: ${r.errors.join('; ')}`] : [];
  const perConnect = (cpuS) => +((cpuS * 1000) / Math.max(1, r.connected)).toFixed(3);
  const cpuT1 = cpuSeconds(t.pid);
  const cpuN1 = cpuSeconds(t.natsPid);
  const bridge = t.natsPid !== t.pid;
  await settle(t);
  const targetMs = perConnect(cpuT1 - cpuT);
  const natsMs = bridge ? perConnect(cpuN1 - cpuN) : 0;
  return {
    rate: (r.connected / r.ms) * 1000,
    cpuMs: +(targetMs + natsMs).toFixed(3),
    issues,
    details: {
      connected: r.connected,
      ms: Math.round(r.ms),
      targetCpuMsPerConnect: targetMs,
      natsCpuMsPerConnect: bridge ? natsMs : undefined,
      targetCpuMsPerConnectSettled: perConnect(cpuSeconds(t.pid) - cpuT),
      natsCpuMsPerConnectSettled: bridge ? perConnect(cpuSeconds(t.natsPid) - cpuN) : undefined,
      loaderCpuMsPerConnect: +(r.cpuMs / Math.max(1, r.connected)).toFixed(2),
    },
  };
}

/**
 * Resume: `events` events are stored in JetStream first (acknowledged publishes), then a client
 * asks for everything after the sequence before the first: sidecar `subscribe` with `since` (a
 * fresh connection each time); for NATS's listener, the JetStream equivalent a NATS client would
 * use (an ephemeral push consumer from that sequence, over the same WebSocket). Time from the
 * request to the last replayed event; median of `reads`.
 * Each measured resume is paired with a raw ordered-consumer read of the same events with
 * nats.js against the same nats-server (Publisher.orderedRead), the pair's order alternating:
 * `vsRaw` is the median of the pairs' ratios, a comparison within one run on one server.
 * `warmups` unmeasured pairs on another project of the same size run first: the figures are a
 * warmed-up process's (JIT), as a server that has been running a while.
 * Sidecar: another connection of the same user is subscribed to the project before the events are
 * stored (a second tab), so the resuming subscribes store no `user_joined` (nor `user_left`) that
 * would push the oldest of exactly 1,000 events out of the default per-project window.
 * @returns {Promise<Result>}
 */
export async function resume(t, loaders, pub, o) {
  if (t.name === 'naive') return { metrics: {}, issues: [], details: {}, na: 'no replay' };
  const [l] = loaders;
  if (t.kind === 'nats') await pub.addStream('BENCH', ['ws.project.>']);
  const store = async (project, run) => {
    if (t.kind === 'contract') await l.request('holdPresence', { url: t.wsUrl, secret: t.secret, project }, 30_000);
    return pub.stored(o.events, project, run, o.size).catch((e) => {
      throw new Error(`storing ${o.events} events through JetStream failed (${e.message}): no stream captures ws.project.${project}?`);
    });
  };
  const resumeOnce = async (project, s, run) => {
    const since = s.first - 1;
    const r = await l.request(
      'resume',
      { kind: t.kind, url: t.wsUrl, secret: t.secret, project, since, stream: s.stream, expected: o.events, run, timeoutMs: 10_000 },
      30_000,
    );
    if (r.error) throw new Error(r.error);
    return { ...r, since };
  };
  const pairs = (project, s, run, n) => pairedReads(n, () => resumeOnce(project, s, run), () => pub.orderedRead(s.stream, `ws.project.${project}`, o.events, s.first));
  const w = await store('warm', 'resume-warm');
  await pairs('warm', w, 'resume-warm', o.warmups);
  const s = await store('resume', 'resume');
  const measured = await pairs('resume', s, 'resume', o.reads);
  const issues = [];
  for (const { target: r } of measured) {
    if (r.orderErrors) issues.push(`${r.orderErrors} events out of order or duplicated`);
    if (r.received < o.events) {
      issues.push(
        `${r.received}/${o.events} stored events replayed (seq ${r.firstSeq}..${r.lastSeq}, asked for > ${r.since}): ` +
          `${r.firstSeq > r.since + 1 ? 'the oldest ones are missing (evicted by the per-subject limit?)' : 'events are missing'}`,
      );
    }
  }
  for (const { raw } of measured) if (raw.received < o.events) issues.push(`raw read: ${raw.received}/${o.events} events`);
  return { metrics: pairMetrics(measured), issues: [...new Set(issues)], details: { events: measured[0].target.received, ...pairDetails(measured) } };
}

/**
 * `n` pairs of (target read, raw read), alternating which goes first, so neither always runs
 * right after the other. Each read starts after a pause, so it does not share the machine with
 * the tail of the one before (a resume's connection closing, its garbage).
 */
async function pairedReads(n, target, raw) {
  const out = [];
  const settled = async (read) => {
    await sleep(READ_PAUSE_MS);
    return read();
  };
  for (let i = 0; i < n; i++) {
    if (i % 2 === 0) {
      const t = await settled(target);
      out.push({ target: t, raw: await settled(raw) });
    } else {
      const r = await settled(raw);
      out.push({ target: await settled(target), raw: r });
    }
  }
  if (process.env.BENCH_PAIRS) process.stderr.write(`pairs (target/raw ms) ${out.map((p) => `${p.target.ms.toFixed(1)}/${p.raw.ms.toFixed(1)}`).join(' ')}\n`);
  return out;
}

const READ_PAUSE_MS = 50;

/** ms: median target read; rawMs: median raw read; vsRaw: median of the per-pair ratios. */
function pairMetrics(pairs) {
  return {
    ms: median(pairs.map((p) => p.target.ms)),
    rawMs: median(pairs.map((p) => p.raw.ms)),
    vsRaw: median(pairs.map((p) => p.target.ms / p.raw.ms)),
  };
}

function pairDetails(pairs) {
  const ms = pairs.map((p) => p.target.ms);
  const raw = pairs.map((p) => p.raw.ms);
  return { reads: pairs.length, minMs: Math.min(...ms), maxMs: Math.max(...ms), rawMinMs: Math.min(...raw), rawMaxMs: Math.max(...raw) };
}

/**
 * Frames: fan-out as `throughput`, with the contract clients asking for batched frames
 * (`batch`) and offering permessage-deflate (`deflate`), optionally with ~1 KB task records
 * (`task`). Besides deliveries/s: the CPU the target and its nats-server spent per million
 * deliveries in the measured phase, the bytes the clients' sockets read per delivery, frames per
 * delivery, and the target's RSS per connection (after connecting and settling).
 * @returns {Promise<Result>}
 */
export async function frames(t, loaders, pub, o) {
  const { clients, events } = o;
  const rss0 = rssBytes(t.pid);
  const { parts } = await connectAll(t, loaders, { clients, projects: 1, sharedUser: o.sharedUser, batch: o.batch, deflate: o.deflate });
  await settle(t);
  const rss1 = rssBytes(t.pid);
  const ids = ['p0'];
  const warmEvents = Math.min(events, 50);
  const warm = await phase(t, loaders, parts, pub, {
    run: `${o.name}-warm`,
    counts: { p0: warmEvents },
    timeoutMs: phaseTimeout(warmEvents * clients),
    publish: () => pub.burst(warmEvents, ids, `${o.name}-warm`, o.size, o.task),
  });
  const m = await phase(t, loaders, parts, pub, {
    run: o.name,
    counts: { p0: events },
    timeoutMs: phaseTimeout(events * clients),
    capMs: o.capSeconds * 1000,
    publish: () => pub.burst(events, ids, o.name, o.size, o.task),
  });
  const d = m.details;
  const cpuS = d.targetCpuS + (d.natsCpuS ?? 0);
  return {
    metrics: {
      rate: m.rate,
      cpuPerM: (cpuS / Math.max(1, d.deliveries)) * 1e6,
      bytesPerDelivery: d.wireBytes / Math.max(1, d.deliveries),
      framesPerDelivery: d.frames / Math.max(1, d.deliveries),
      rssPerConnKB: (rss1 - rss0) / clients / 1024,
    },
    issues: [...warm.issues.map((s) => `warm-up: ${s}`), ...m.issues],
    details: d,
  };
}

/**
 * History read: `events` events stored in one project, then the time to read them back.
 * Sidecar: one `history` request with limit `events` over its WebSocket, from the request to the
 * parsed answer, each paired with a raw ordered-consumer read of the same events with nats.js
 * against the same nats-server (Publisher.orderedRead; the pair's order alternating): `vsRaw` is
 * the median of the pairs' ratios. NATS: the raw read alone (the reference the sidecar is held
 * to). `warmups` unmeasured reads (pairs) first; medians of `reads` after them.
 * @returns {Promise<Result>}
 */
export async function historyRead(t, loaders, pub, o) {
  if (t.name === 'naive') return { metrics: {}, issues: [], details: {}, na: 'no history' };
  const [l] = loaders;
  if (t.kind === 'nats') await pub.addStream('BENCH', ['ws.project.>']);
  const s = await pub.stored(o.events, 'hist', 'hist', o.size, o.task);
  const raw = () => pub.orderedRead(s.stream, 'ws.project.hist', o.events, s.first);
  const target =
    t.kind === 'nats'
      ? raw
      : async () => {
          const r = await l.request('history', { url: t.wsUrl, secret: t.secret, project: 'hist', limit: o.events }, 30_000);
          if (r.error) throw new Error(r.error);
          return r;
        };
  await pairedReads(o.warmups, target, raw);
  const measured = await pairedReads(o.reads, target, raw);
  const received = Math.min(...measured.map((p) => Math.min(p.target.received, p.raw.received)));
  const issues = received < o.events ? [`${received}/${o.events} events read`] : [];
  return { metrics: pairMetrics(measured), issues, details: { events: received, ...pairDetails(measured) } };
}

/**
 * Presence storm: `users` distinct users join one project within seconds (`concurrency` handshakes
 * in flight per loader). Each member's presence view is its `presence` answer plus the `user_joined`
 * events after it (see loadgen `storm`); the figure is the time from the first connect until every
 * member's view holds every user, with the CPU the target and its nats-server spent until then,
 * the `user_joined` frames the clients received, and the presence bucket's writes (its stream's
 * last sequence). The sidecar only: NATS's listener and the naive bridge have no presence.
 * @returns {Promise<Result>}
 */
export async function presenceStorm(t, loaders, pub, o) {
  if (t.name !== 'sidecar') return { metrics: {}, issues: [], details: {}, na: 'no presence' };
  const parts = split(o.users, loaders.length);
  const cpuT = cpuSeconds(t.pid);
  const cpuN = cpuSeconds(t.natsPid);
  const deadlineMs = 120_000;
  const rs = await Promise.all(
    loaders.map((l, j) =>
      l.request('storm', { url: t.wsUrl, secret: t.secret, ...parts[j], total: o.users, project: 'storm', concurrency: o.concurrency, deadlineMs }, deadlineMs + 30_000),
    ),
  );
  const targetCpuS = cpuSeconds(t.pid) - cpuT;
  const natsCpuS = cpuSeconds(t.natsPid) - cpuN;
  const t0 = Math.min(...rs.map((r) => r.t0));
  const complete = rs.every((r) => r.complete);
  const sum = (k) => rs.reduce((s, r) => s + r[k], 0);
  const issues = [];
  if (sum('failed')) issues.push(`${sum('failed')}/${o.users} clients failed to join: ${rs.flatMap((r) => r.errors).join('; ')}`);
  if (!complete) issues.push(`presence views did not settle: the smallest holds ${Math.min(...rs.map((r) => r.minView))}/${o.users} users`);
  const kvWrites = await pub.lastSeq('KV_WS_PRESENCE').catch(() => NaN);
  return {
    metrics: { settleMs: complete ? Math.max(...rs.map((r) => r.settledAt)) - t0 : NaN, cpuS: targetCpuS + natsCpuS },
    issues,
    details: {
      connectMs: Math.round(Math.max(...rs.map((r) => r.connectedAt)) - t0),
      targetCpuS: +targetCpuS.toFixed(2),
      natsCpuS: +natsCpuS.toFixed(2),
      loaderCpuS: +(sum('cpuMs') / 1000).toFixed(2),
      userJoinedFrames: sum('joinedFrames'),
      presenceKvWrites: kvWrites,
    },
  };
}
