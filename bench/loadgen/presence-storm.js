// The presence storm command: many users join one project at once, and each client's presence
// view (its `presence` answer plus every `user_joined` after it) is followed until it holds everyone.

import { now, pool } from '../common.js';
import { ContractClient } from './contract-client.js';
import { clients } from './open-clients.js';
import { signTokens } from './tokens.js';

/**
 * Presence storm: clients [from, to) of `total`, user `${userPrefix}${i}` each, all join `project`
 * as fast as `concurrency` allows. Each client's presence view is its `presence` answer (asked right
 * after `subscribed`) plus every `user_joined` after it, plus itself: a bitmap over the user
 * indexes, found with indexOf (not parsed: a storm of N users is ~N^2/2 frames). Resolves when
 * every client's view holds all `total` users (settledAt), or when nothing new came for `stallMs`
 * (then `complete: false` and the smallest view).
 */
export async function storm({ url, secret, from, to, total, project, userPrefix = 's', concurrency = 200, timeoutMs = 15_000, deadlineMs = 120_000, stallMs = 5000 }) {
  const n = to - from;
  const tokens = await signTokens(secret, Array.from({ length: n }, (_, k) => `${userPrefix}${from + k}`));
  const idKey = Buffer.from(`"user_id":"${userPrefix}`);
  const joined = Buffer.from('"type":"user_joined"');
  const presence = Buffer.from('"type":"presence"');
  let settled = 0;
  let settledAt = 0;
  let joinedFrames = 0;
  let lastProgressAt = now();
  let connected = 0;
  let failed = 0;
  const errors = new Map();
  /** @type {() => void} */
  let done = () => {};
  const finished = new Promise((r) => (done = r));
  /** @type {Array<{ seen: Uint8Array, count: number }>} */
  const views = [];
  const see = (v, index) => {
    if (!(index >= 0 && index < total) || v.seen[index]) return;
    v.seen[index] = 1;
    lastProgressAt = now();
    if (++v.count === total) {
      settledAt = lastProgressAt;
      if (++settled === n) done();
    }
  };
  const t0 = now();
  const cpu0 = process.cpuUsage();
  const started = await pool(
    n,
    concurrency,
    async (k) => {
      const i = from + k;
      const c = new ContractClient(url, tokens[k], project);
      const v = { seen: new Uint8Array(total), count: 0 };
      views.push(v);
      see(v, i);
      try {
        await c.open(timeoutMs);
      } catch (e) {
        failed++;
        const msg = String(e?.message ?? e);
        errors.set(msg, (errors.get(msg) ?? 0) + 1);
        return;
      }
      clients.push(c);
      connected++;
      c.onEvent = (buf) => {
        if (buf.indexOf(joined) !== -1) {
          joinedFrames++;
          const at = buf.indexOf(idKey);
          if (at !== -1) see(v, parseInt(buf.toString('latin1', at + idKey.length, buf.indexOf(0x22, at + idKey.length)), 10));
        } else if (buf.indexOf(presence) !== -1) {
          for (const u of JSON.parse(buf.toString()).data.users) if (u.startsWith(userPrefix)) see(v, Number(u.slice(userPrefix.length)));
        }
      };
      c.ws.send(JSON.stringify({ type: 'presence', data: { project_id: project } }));
    },
    t0 + deadlineMs,
  );
  const connectedAt = now();
  failed += n - started;
  if (settled < n - failed) {
    const stall = setInterval(() => {
      if (now() - lastProgressAt >= stallMs || now() - t0 > deadlineMs) done();
    }, 100);
    await finished;
    clearInterval(stall);
  }
  const cpu = process.cpuUsage(cpu0);
  let minView = total;
  for (const v of views) minView = Math.min(minView, v.count);
  return {
    t0,
    connectedAt,
    settledAt,
    complete: settled === n,
    connected,
    failed,
    minView,
    joinedFrames,
    cpuMs: (cpu.user + cpu.system) / 1000,
    errors: [...errors].slice(0, 5).map(([m, c]) => `${c}x ${m}`),
  };
}
