// The IPC commands of a measured phase: open clients (`connect`), start counting (`arm`), wait for
// the deliveries and account for every client (`collect`), drop everything (`closeAll`).

import { now, pool } from '../common.js';
import { ContractClient } from './contract-client.js';
import { Phase, phase, setPhase } from './measurement.js';
import { NatsWsClient } from './nats-ws-client.js';
import { clients, forgetAll } from './open-clients.js';
import { bytesRead, closedByServerTotal } from './socket.js';
import { signTokens } from './tokens.js';

/**
 * Opens clients [from, to): client i subscribes to project `p${i % projects}` as user
 * `${userPrefix}${i}` (or `${userPrefix}0` for all with sharedUser). Returns how many became ready
 * and how long that took (token signing excluded).
 */
export async function connect({ kind, url, from, to, projects, secret, userPrefix = 'u', projectPrefix = 'p', sharedUser = false, checkSeq = false, batch = false, deflate = false, concurrency = 100, timeoutMs = 15_000, deadlineMs = 120_000 }) {
  const n = to - from;
  const projectOf = (i) => `${projectPrefix}${i % projects}`;
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
      const c = kind === 'nats' ? new NatsWsClient(url, projectOf(i)) : new ContractClient(url, tokens[k], projectOf(i), { checkSeq, batch, deflate });
      try {
        await c.open(timeoutMs);
        clients.push(c);
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
}

/** Starts a phase: from now on frames with this run marker count. Answered at once. */
export function arm({ run, expected, perProject, latency = false }) {
  const p = new Phase({ run, expected, perProject, latency });
  setPhase(p);
  for (const c of clients) {
    c.count = 0;
    c.bytes0 = bytesRead(c);
  }
  if (expected === 0) p.complete();
  return { armed: true, clients: clients.length };
}

/**
 * Waits until the armed phase is complete, or `capAt` (a now() value: throughput phases are
 * measured over a bounded window), or `timeoutMs`, or nothing new arrived for `stallMs` (counts
 * as a timeout). Complete: waits `graceMs` more to catch
 * duplicates and checks every client's count. Capped or timed out: reports what had arrived by
 * then, and whether deliveries had stopped arriving (stalled) before that.
 */
export async function collect({ timeoutMs, capAt = Infinity, graceMs = 200, stallMs = 3000 }) {
  const p = phase;
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
    for (const c of clients) {
      const want = p.perProject[c.project];
      if (want === undefined) continue;
      if (c.count < want) short++;
      else if (c.count > want) over++;
    }
  }
  let wireBytes = 0;
  for (const c of clients) wireBytes += bytesRead(c) - (c.bytes0 ?? 0);
  return {
    outcome,
    wireBytes,
    frames: p.frames,
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
}

/**
 * Drops every client with a TCP reset (no FIN handshake, no TIME_WAIT left behind: thousands of
 * sockets in TIME_WAIT make the kernel's ephemeral-port search, and so later connects, slower).
 */
export function closeAll() {
  for (const c of clients) c.close();
  const n = forgetAll();
  setPhase(null);
  return { closed: n, closedByServer: closedByServerTotal() };
}
