// Load generator: a separate process (forked by bench/run.js, driven over IPC) that opens many
// WebSocket clients against one target and counts what they receive.
//
// Clients speak the target's own protocol:
//   kind 'nats'     - NATS's built-in WebSocket listener: the raw NATS text protocol over WebSocket
//                     (INFO / CONNECT / PING / PONG / SUB / MSG). nats-server packs several protocol
//                     messages into one WebSocket frame and may split one across frames, so frames are
//                     fed to a byte-level stream parser.
//   kind 'contract' - the sidecar and the naive bridge (CONTRACT.md section 2): `/ws/connect?token=JWT`,
//                     first frame `auth_success`, send `subscription`/`subscribe`, wait for `subscribed`;
//                     then one event per text frame.
//
// Counting: on 2 cores the clients' own parsing competes with the target for CPU, so in the measured
// phase a frame is NOT JSON.parsed. It counts as a delivery if it contains the phase's marker
// (`"run":"<id>"`, see common.js); latency runs read `"t":` with one indexOf. To keep that honest,
// each client's first delivery of a phase and every 1024th delivery are fully parsed and checked
// (type, run, project routing, numeric t, and `seq` for the sidecar), and at the end every client's
// count is compared with what it should have received (missing or duplicated deliveries).
//
// IPC: the runner sends {id, cmd, ...}; we answer {id, ok: true, ...} or {id, ok: false, error}.
//
// Parts: loadgen/clients.js (the protocol clients and their setup), loadgen/phase.js (counting and
// checking deliveries), loadgen/roles.js (the resume scenario's clients); this file: the commands.

import { now, pool } from './common.js';
import { ContractClient, NatsWsClient, signTokens } from './loadgen/clients.js';
import { Phase, state } from './loadgen/phase.js';
import { holdPresence, resume } from './loadgen/roles.js';

const handlers = {
  /**
   * Opens clients [from, to): client i subscribes to project `p${i % projects}` as user
   * `${userPrefix}${i}` (or `${userPrefix}0` for all with sharedUser). Returns how many became ready
   * and how long that took (token signing excluded).
   */
  async connect({ kind, url, from, to, projects, secret, userPrefix = 'u', sharedUser = false, checkSeq = false, concurrency = 100, timeoutMs = 15_000, deadlineMs = 120_000 }) {
    const n = to - from;
    const projectOf = (i) => `p${i % projects}`;
    let tokens = [];
    if (kind === 'contract') {
      tokens = await signTokens(secret, Array.from({ length: n }, (_, k) => `${userPrefix}${sharedUser ? 0 : from + k}`));
    }
    let connected = 0;
    let failed = 0;
    const errors = new Map();
    const t0 = now();
    const cpu0 = process.cpuUsage();
    const started = await pool(
      n,
      concurrency,
      async (k) => {
        const i = from + k;
        const c = kind === 'nats' ? new NatsWsClient(url, projectOf(i)) : new ContractClient(url, tokens[k], projectOf(i), { checkSeq });
        try {
          await c.open(timeoutMs);
          state.clients.push(c);
          connected++;
        } catch (e) {
          failed++;
          const msg = String(e?.message ?? e);
          errors.set(msg, (errors.get(msg) ?? 0) + 1);
        }
      },
      t0 + deadlineMs,
    );
    const ms = now() - t0;
    const cpu = process.cpuUsage(cpu0);
    failed += n - started; // not even attempted before the deadline
    return { connected, failed, ms, cpuMs: (cpu.user + cpu.system) / 1000, errors: [...errors].slice(0, 5).map(([m, c]) => `${c}x ${m}`) };
  },

  /** Starts a phase: from now on frames with this run marker count. Answered at once. */
  arm({ run, expected, perProject, latency = false }) {
    state.phase = new Phase({ run, expected, perProject, latency });
    for (const c of state.clients) c.count = 0;
    if (expected === 0) state.phase.complete();
    return { armed: true, clients: state.clients.length };
  },

  /**
   * Waits until the armed phase is complete, or `capAt` (a now() value: throughput phases are
   * measured over a bounded window), or `timeoutMs`, or nothing new arrived for `stallMs` (counts
   * as a timeout). Complete: waits `graceMs` more to catch
   * duplicates and checks every client's count. Capped or timed out: reports what had arrived by
   * then, and whether deliveries had stopped arriving (stalled) before that.
   */
  async collect({ timeoutMs, capAt = Infinity, graceMs = 200, stallMs = 3000 }) {
    const p = state.phase;
    if (!p) throw new Error('collect without arm');
    // Progress sampler (kept out of the per-delivery hot path): when did the count last change?
    // A phase where nothing arrives for stallMs ends early as a timeout (lost events, not slowness).
    let lastCount = p.received;
    let lastChangeAt = now();
    let sampler;
    /** @type {'complete' | 'capped' | 'timeout'} */
    const outcome =
      p.lastAt > 0
        ? 'complete'
        : await new Promise((resolve) => {
            const timers = [setTimeout(() => resolve('timeout'), timeoutMs)];
            if (Number.isFinite(capAt)) timers.push(setTimeout(() => resolve('capped'), Math.max(0, capAt - now())));
            sampler = setInterval(() => {
              if (p.received !== lastCount) {
                lastCount = p.received;
                lastChangeAt = now();
              } else if (now() - lastChangeAt >= stallMs) resolve('timeout');
            }, 100);
            p.onComplete = () => {
              timers.forEach(clearTimeout);
              resolve('complete');
            };
          });
    clearInterval(sampler);
    const endAt = outcome === 'complete' ? p.lastAt : now();
    const receivedAtEnd = outcome === 'complete' ? p.expected : p.received;
    if (outcome !== 'complete') p.stamp();
    p.onComplete = () => {};
    let short = 0;
    let over = 0;
    if (outcome === 'complete') {
      await new Promise((r) => setTimeout(r, graceMs));
      for (const c of state.clients) {
        const want = p.perProject[c.project];
        if (want === undefined) continue;
        if (c.count < want) short++;
        else if (c.count > want) over++;
      }
    }
    return {
      outcome,
      expected: p.expected,
      received: receivedAtEnd,
      endAt,
      extra: outcome === 'complete' ? p.received - p.expected : 0,
      stalledMs: outcome === 'complete' ? 0 : Math.round(endAt - lastChangeAt),
      other: p.other,
      closed: p.closed,
      clientsShort: short,
      clientsOver: over,
      verified: p.verified,
      verifyErrors: p.verifyErrors,
      errorSamples: p.errorSamples,
      cpuMs: p.cpuMs,
      elu: p.elu,
      hist: p.hist ? p.hist.toJSON() : null,
    };
  },

  resume,

  holdPresence,

  /**
   * Drops every client with a TCP reset (no FIN handshake, no TIME_WAIT left behind: thousands of
   * sockets in TIME_WAIT make the kernel's ephemeral-port search, and so later connects, slower).
   */
  closeAll() {
    for (const c of state.clients) c.close();
    const n = state.clients.length;
    state.clients = [];
    state.phase = null;
    return { closed: n, closedByServer: state.closedTotal };
  },
};

process.on('message', async (m) => {
  try {
    const r = await handlers[m.cmd](m);
    process.send?.({ id: m.id, ok: true, ...r });
  } catch (e) {
    process.send?.({ id: m.id, ok: false, error: String(e?.message ?? e) });
  }
});
// The runner is gone (normal end or crash): exit, dropping all sockets.
process.on('disconnect', () => process.exit(0));
process.send?.({ id: 0, ok: true, ready: true });
