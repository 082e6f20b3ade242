// The IPC commands that read stored events, timed one request at a time: `resume` (replay after a
// seq), `history` (a page of stored events), and `holdPresence`, which keeps the resume scenario's
// stored window intact.

import { markerOf, now } from '../common.js';
import { ContractClient } from './contract-client.js';
import { NatsWsClient } from './nats-ws-client.js';
import { clients, historyClients } from './open-clients.js';
import { signTokens } from './tokens.js';

/** The user of the resume scenario (its resuming connection and the one holding its presence). */
const RESUME_USER = 'resume-user';

/**
 * Resume/replay: one client asks for the stored events after `since`; we time from the request to
 * the last replayed event, checking order and duplicates by seq (sidecar `seq`, NATS stream seq).
 *   contract: subscribe with `since` on an authenticated connection.
 *   nats:     the JetStream way over NATS's WebSocket listener: an ephemeral push consumer
 *             (deliver_policy by_start_sequence, ack none) created with $JS.API.CONSUMER.CREATE.
 * Ends when `expected` events arrived, or nothing more came for `idleMs` after the first one
 * (fewer events than stored: reported, with the first seq received), or at `timeoutMs`.
 */
export async function resume({ kind, url, secret, project, since, stream, expected, run, timeoutMs = 10_000, idleMs = 1000 }) {
  const marker = Buffer.from(markerOf(run));
  let received = 0;
  let orderErrors = 0;
  let firstSeq = 0;
  let lastSeq = 0;
  let t0 = 0;
  let lastAt = 0;
  let apiError = '';
  /** @type {(v: string) => void} */
  let done = () => {};
  const finished = new Promise((r) => (done = r));
  const count = (seq) => {
    if (!(seq > lastSeq)) orderErrors++;
    if (!firstSeq) firstSeq = seq;
    lastSeq = seq;
    lastAt = now();
    if (++received === expected) done('complete');
  };
  let client;
  if (kind === 'contract') {
    const [token] = await signTokens(secret, [RESUME_USER]);
    const c = (client = new ContractClient(url, token, project, { since }));
    await c.open(timeoutMs, true);
    c.onEvent = (buf) => {
      if (buf.indexOf(marker) === -1) return; // subscribed ack, presence, ...
      count(JSON.parse(buf.toString()).seq);
    };
    t0 = now();
    c.subscribe();
  } else {
    const c = (client = new NatsWsClient(url, ''));
    await c.open(timeoutMs);
    const deliver = `_INBOX.bench.${process.pid}.d`;
    const reply = `_INBOX.bench.${process.pid}.r`;
    c.onMsg = (buf, ls, le, s, e) => {
      const line = buf.toString('latin1', ls, le).split(' ');
      if (line[1] === reply) {
        const r = JSON.parse(buf.toString('utf8', s, e));
        if (r.error) {
          apiError = `consumer create: ${r.error.description ?? JSON.stringify(r.error)}`;
          done('error');
        }
        return;
      }
      const m = buf.indexOf(marker, s);
      if (m === -1 || m >= e) return;
      // reply subject of a JetStream delivery: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
      const ack = line[3]?.split('.') ?? [];
      count(Number(ack[ack.length - 4]));
    };
    await new Promise((resolve, reject) => {
      c.onPong = resolve;
      c.onError = reject;
      c.send(`SUB ${deliver} 2\r\nSUB ${reply} 3\r\nPING\r\n`);
    });
    const req = JSON.stringify({
      stream_name: stream,
      config: {
        deliver_subject: deliver,
        deliver_policy: 'by_start_sequence',
        opt_start_seq: since + 1,
        filter_subject: `ws.project.${project}`,
        ack_policy: 'none',
        replay_policy: 'instant',
        mem_storage: true,
        inactive_threshold: 30_000_000_000,
      },
    });
    t0 = now();
    c.send(`PUB $JS.API.CONSUMER.CREATE.${stream} ${reply} ${Buffer.byteLength(req)}\r\n${req}\r\n`);
  }
  const deadline = setTimeout(() => done('timeout'), timeoutMs);
  const idleCheck = setInterval(() => {
    if (received > 0 && now() - lastAt >= idleMs) done('idle');
  }, 50);
  const outcome = await finished;
  clearTimeout(deadline);
  clearInterval(idleCheck);
  if (outcome === 'complete') await new Promise((r) => setTimeout(r, 100)); // late duplicates
  client.close();
  const error = apiError || (received === 0 ? `no replayed event within ${timeoutMs} ms` : '');
  return { ms: received ? lastAt - t0 : NaN, received, firstSeq, lastSeq, orderErrors, outcome, error };
}

/**
 * History read: one authenticated connection sends `history` with `limit` and waits for the
 * answer; the time from the request to the parsed answer, and how many events it held. The
 * connection is kept (and reused by the next read), as a page that reads history would.
 */
export async function history({ url, secret, project, limit, timeoutMs = 10_000 }) {
  let c = historyClients.get(url);
  if (!c) {
    const [token] = await signTokens(secret, ['history-user']);
    c = new ContractClient(url, token, project);
    await c.open(timeoutMs, true);
    historyClients.set(url, c);
    clients.push(c);
  }
  const client = c;
  const answer = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no history answer within ${timeoutMs} ms`)), timeoutMs);
    client.onEvent = (buf) => {
      const msg = JSON.parse(buf.toString());
      if (msg.type === 'error') {
        clearTimeout(timer);
        reject(new Error(`history: ${msg.data?.code} ${msg.data?.message}`));
      } else if (msg.type === 'history') {
        clearTimeout(timer);
        resolve(msg);
      }
    };
  });
  const t0 = now();
  client.ws.send(JSON.stringify({ type: 'history', data: { project_id: project, limit } }));
  const msg = await answer;
  return { ms: now() - t0, received: msg.data.events.length };
}

/**
 * Contract only: another connection ("tab") of the resume scenario's user, subscribed to
 * `project` and kept open. Presence is per user, so the resuming connection's subscribe then
 * stores no `user_joined`, which would otherwise push the oldest of exactly `maxStoredMessages`
 * events out of the project's window (presence events are stored project events).
 */
export async function holdPresence({ url, secret, project, timeoutMs = 10_000 }) {
  const [token] = await signTokens(secret, [RESUME_USER]);
  const c = new ContractClient(url, token, project);
  await c.open(timeoutMs);
  c.onEvent = () => {};
  clients.push(c);
  return {};
}
