// Load generator: a separate process (forked by bench/run.js, driven over IPC) that opens many
// WebSocket clients against one target and counts what they receive.
//
// Clients speak the target's own protocol:
//   kind 'nats'     - NATS's built-in WebSocket listener: the raw NATS text protocol over WebSocket
//                     (INFO / CONNECT / PING / PONG / SUB / MSG). nats-server packs several protocol
//                     messages into one WebSocket frame and may split one across frames, so frames are
//                     fed to a byte-level stream parser.
//   kind 'contract' - the sidecar and the naive bridge (PROTOCOL.md): `/ws/connect?token=JWT`,
//                     first frame `auth_success`, send `subscription`/`subscribe`, wait for `subscribed`;
//                     then one event per text frame, or with `batch` (subprotocol nats-ws-sidecar.batch)
//                     several joined by "\n"; with `deflate` the client offers permessage-deflate.
//
// Counting: on 2 cores the clients' own parsing competes with the target for CPU, so in the measured
// phase a frame is NOT JSON.parsed. It counts as a delivery if it contains the phase's marker
// (`"run":"<id>"`, see common.js); latency runs read `"t":` with one indexOf. To keep that honest,
// each client's first delivery of a phase and every 1024th delivery are fully parsed and checked
// (type, run, project routing, numeric t, and `seq` for the sidecar), and at the end every client's
// count is compared with what it should have received (missing or duplicated deliveries).
//
// IPC: the runner sends {id, cmd, ...}; we answer {id, ok: true, ...} or {id, ok: false, error}.

import { SignJWT } from 'jose';
import WebSocket from 'ws';
import { EVENT_TYPE, Histogram, now, pool, readT } from './common.js';

const WS_OPTS = {
  perMessageDeflate: false,
  // Frames are not decoded as text in the hot path; the 1-in-1024 sample is parsed strictly below.
  skipUTF8Validation: true,
  maxPayload: 16 * 1024 * 1024,
};
const CRLF = Buffer.from('\r\n');
const CONNECT_LINE =
  'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":false,"no_responders":false,' +
  '"lang":"bench","version":"1.0.0"}\r\nPING\r\n';
const SAMPLE_MASK = 1023;
const BATCH_PROTOCOL = 'nats-ws-sidecar.batch';
const NEWLINE = 0x0a;

/** @type {Array<NatsWsClient | ContractClient>} */
let clients = [];
/** @type {Phase | null} */
let phase = null;
let closedTotal = 0;

/** One measured phase: which marker counts, how many deliveries are expected, what was seen. */
class Phase {
  constructor({ run, expected, perProject, latency }) {
    this.run = run;
    this.marker = Buffer.from(`"run":"${run}"`);
    this.expected = expected;
    /** @type {Record<string, number>} deliveries each client of a project should get */
    this.perProject = perProject ?? {};
    this.hist = latency ? new Histogram() : null;
    this.received = 0;
    this.other = 0;
    /** WebSocket messages (frames) that carried the phase's deliveries and anything else. */
    this.frames = 0;
    this.closed = 0;
    this.lastAt = 0;
    this.verified = 0;
    this.verifyErrors = 0;
    /** @type {string[]} */
    this.errorSamples = [];
    this.cpu0 = process.cpuUsage();
    this.elu0 = performance.eventLoopUtilization();
    this.cpuMs = 0;
    this.elu = 0;
    /** @type {() => void} */
    this.onComplete = () => {};
  }

  fail(msg) {
    this.verifyErrors++;
    if (this.errorSamples.length < 5) this.errorSamples.push(msg);
  }

  /** Records this process's CPU time and event-loop utilisation since arm(). */
  stamp() {
    const cpu = process.cpuUsage(this.cpu0);
    this.cpuMs = (cpu.user + cpu.system) / 1000;
    this.elu = performance.eventLoopUtilization(this.elu0).utilization;
  }

  complete() {
    this.lastAt = now();
    this.stamp();
    this.onComplete();
  }
}

/**
 * Hot path, called for every event frame (contract) or MSG (nats) a ready client receives.
 * @param {Buffer} buf @param {number} start @param {number} end @param {NatsWsClient | ContractClient} c
 */
function onDelivery(buf, start, end, c) {
  const p = phase;
  if (p === null) return;
  const m = buf.indexOf(p.marker, start);
  if (m === -1 || m >= end) {
    p.other++;
    return;
  }
  const n = ++p.received;
  c.count++;
  if (p.hist !== null) p.hist.record(now() - readT(buf, start, end));
  if ((n & SAMPLE_MASK) === 0 || c.phase !== p) {
    c.phase = p;
    verify(buf, start, end, c, p);
  }
  if (n === p.expected) p.complete();
}

/** Full check of one sampled delivery. */
function verify(buf, start, end, c, p) {
  p.verified++;
  let e;
  try {
    e = JSON.parse(buf.toString('utf8', start, end));
  } catch {
    p.fail(`not JSON: ${buf.toString('utf8', start, Math.min(end, start + 80))}`);
    return;
  }
  if (e?.type !== EVENT_TYPE) p.fail(`type ${e?.type}`);
  else if (e.data?.run !== p.run) p.fail(`run ${e.data?.run}`);
  else if (e.data.project_id !== c.project) p.fail(`client of ${c.project} got an event of ${e.data.project_id}`);
  else if (typeof e.data.t !== 'number') p.fail('data.t is not a number');
  else if (c.checkSeq && !(Number.isInteger(e.seq) && e.seq > 0)) p.fail(`seq ${e.seq}`);
  else if (c.checkSeq && e.project_id !== c.project) p.fail(`project_id ${e.project_id}`);
}

/** Raw NATS protocol client over NATS's WebSocket listener. */
class NatsWsClient {
  /** @param {string} url @param {string} project */
  constructor(url, project) {
    this.url = url;
    this.project = project;
    this.subject = project ? `ws.project.${project}` : '';
    this.checkSeq = false;
    this.count = 0;
    /** @type {Phase | null} */
    this.phase = null;
    /** @type {Buffer | null} */
    this.pending = null;
    this.ready = false;
    /** called for each MSG: (buf, lineStart, lineEnd, payloadStart, payloadEnd) */
    this.onMsg = (buf, _ls, _le, s, e) => onDelivery(buf, s, e, this);
    /** called for each PONG during setup */
    this.onPong = () => {};
    /** @type {(err: Error) => void} */
    this.onError = () => {};
    /** @type {(() => void) | undefined} */
    this.onInfo = undefined;
    /** resume: error answer of the JetStream API, if any @type {(() => string) | undefined} */
    this.apiError = undefined;
  }

  /** Connects, CONNECT + PING/PONG, then SUB (unless no subject) + PING/PONG. */
  open(timeoutMs) {
    return new Promise((resolve, reject) => {
      const { ws, fail, settled } = openForSetup(this, timeoutMs, reject);
      this.onError = fail;
      let step = 0;
      this.onInfo = () => {
        if (step === 0) {
          step = 1;
          this.send(CONNECT_LINE);
        }
      };
      this.onPong = () => {
        if (step === 1 && this.subject) {
          step = 2;
          this.send(`SUB ${this.subject} 1\r\nPING\r\n`);
          return;
        }
        settled();
        this.ready = true;
        this.onPong = () => {};
        this.onError = () => {};
        resolve();
      };
      ws.on('message', (data) => this.feed(/** @type {Buffer} */ (data)));
      ws.on('error', (err) => this.onError(err));
    });
  }

  /** @param {string} s */
  send(s) {
    this.ws.send(Buffer.from(s));
  }

  /** Stream parser: frames are arbitrary slices of the NATS protocol byte stream. */
  feed(chunk) {
    if (phase !== null) phase.frames++;
    const buf = this.pending === null ? chunk : Buffer.concat([this.pending, chunk]);
    const len = buf.length;
    let pos = 0;
    while (pos < len) {
      const eol = buf.indexOf(CRLF, pos);
      if (eol === -1) break;
      const c0 = buf[pos];
      if (c0 === 77 /* M: MSG <subject> <sid> [reply] <size> */ || c0 === 72 /* H: HMSG ... <hdr> <total> */) {
        // The payload size is the last number on the line.
        let size = 0;
        let mul = 1;
        for (let i = eol - 1; i > pos; i--) {
          const d = buf[i] - 48;
          if (d < 0 || d > 9) break;
          size += d * mul;
          mul *= 10;
        }
        const start = eol + 2;
        const end = start + size;
        if (end + 2 > len) break; // payload not complete yet
        this.onMsg(buf, pos, eol, start, end);
        pos = end + 2;
        continue;
      }
      if (c0 === 80 /* P */) {
        if (buf[pos + 1] === 73 /* PING */) this.send('PONG\r\n');
        else this.onPong();
      } else if (c0 === 73 /* INFO */) {
        this.onInfo?.();
      } else if (c0 === 45 /* -ERR */) {
        const line = buf.toString('latin1', pos, eol);
        if (phase) phase.fail(`nats: ${line}`);
        this.onError(new Error(`nats: ${line}`));
      }
      // +OK (verbose is off, so none expected) and anything else: skip the line.
      pos = eol + 2;
    }
    this.pending = pos < len ? buf.subarray(pos) : null;
  }

  close() {
    resetClose(this.ws);
  }
}

/** Client of the sidecar's contract protocol (also spoken by the naive bridge). */
class ContractClient {
  /**
   * @param {string} url base ws://host:port
   * @param {string} token
   * @param {string} project
   * @param {{ checkSeq?: boolean, since?: number, batch?: boolean, deflate?: boolean }} [opts]
   */
  constructor(url, token, project, { checkSeq = false, since, batch = false, deflate = false } = {}) {
    this.url = `${url}/ws/connect?token=${encodeURIComponent(token)}`;
    this.project = project;
    this.checkSeq = checkSeq;
    this.since = since;
    this.batch = batch;
    this.deflate = deflate;
    this.count = 0;
    /** @type {Phase | null} */
    this.phase = null;
    this.ready = false;
    /** hot-path handler once subscribed: (buf) => void */
    this.onEvent = batch
      ? (buf) => this.onBatch(buf)
      : (buf) => {
          if (phase !== null) phase.frames++;
          onDelivery(buf, 0, buf.length, this);
        };
  }

  /** A batched frame: one delivery per "\n"-separated envelope, found with indexOf, not parsed. */
  onBatch(buf) {
    if (phase !== null) phase.frames++;
    let start = 0;
    for (;;) {
      const nl = buf.indexOf(NEWLINE, start);
      const end = nl === -1 ? buf.length : nl;
      onDelivery(buf, start, end, this);
      if (nl === -1) return;
      start = nl + 1;
    }
  }

  /**
   * Connects (auth by ?token=), waits for auth_success, then subscribes and waits for `subscribed`.
   * With `untilAuth`, resolves right after auth_success (the resume scenario subscribes itself).
   */
  open(timeoutMs, untilAuth = false) {
    return new Promise((resolve, reject) => {
      const { ws, fail, settled } = openForSetup(this, timeoutMs, reject);
      let step = 0;
      ws.on('unexpected-response', (_req, res) => fail(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
      ws.on('error', (err) => fail(err));
      ws.on('message', (data) => {
        const buf = /** @type {Buffer} */ (data);
        if (this.ready) return this.onEvent(buf);
        for (const line of buf.toString().split('\n')) if (!this.ready) onSetupLine(line);
      });
      const onSetupLine = (line) => {
        let msg;
        try {
          msg = JSON.parse(line);
        } catch {
          return fail(new Error(`setup: not JSON: ${line.slice(0, 80)}`));
        }
        if (msg.type === 'error') return fail(new Error(`setup: error ${msg.data?.code}: ${msg.data?.message}`));
        if (step === 0) {
          if (msg.type !== 'auth_success') return fail(new Error(`first frame is ${msg.type}, not auth_success`));
          step = 1;
          if (untilAuth) {
            settled();
            this.ready = true;
            return resolve();
          }
          this.subscribe();
          return;
        }
        // Other frames (e.g. user_joined) may come before our `subscribed`; skip them.
        if (msg.type === 'subscription' && msg.data?.action === 'subscribed' && msg.data?.project_id === this.project) {
          settled();
          this.ready = true;
          resolve();
        }
      };
    });
  }

  subscribe() {
    const data = { action: 'subscribe', project_id: this.project };
    if (this.since !== undefined) data.since = this.since;
    this.ws.send(JSON.stringify({ type: 'subscription', data }));
  }

  close() {
    resetClose(this.ws);
  }
}

/**
 * Opens `client.ws` (to `client.url`) for a client's setup. `fail` (also called at the deadline,
 * or when the socket closes before the client is ready) drops the socket and rejects; `settled`
 * ends the deadline once setup is done. A socket closed after that counts as closed by the server.
 * @param {{ url: string, ws?: WebSocket, ready: boolean }} client
 */
function openForSetup(client, timeoutMs, reject) {
  const timer = setTimeout(() => fail(new Error('setup timeout')), timeoutMs);
  const fail = (err) => {
    clearTimeout(timer);
    client.ws?.terminate();
    reject(err);
  };
  const ws = (client.ws = new WebSocket(client.url, client.batch ? [BATCH_PROTOCOL] : [], {
    ...WS_OPTS,
    perMessageDeflate: client.deflate ?? false,
    handshakeTimeout: timeoutMs,
  }));
  ws.on('close', (code) => {
    if (!client.ready) return fail(new Error(`closed during setup (${code})`));
    closedTotal++;
    if (phase) phase.closed++;
  });
  return { ws, fail, settled: () => clearTimeout(timer) };
}

/** Bytes the client's TCP socket has read (ws keeps it in the private `_socket`). */
function bytesRead(c) {
  return /** @type {any} */ (c.ws)?._socket?.bytesRead ?? 0;
}

/** @param {WebSocket | undefined} ws */
function resetClose(ws) {
  // ws keeps its net.Socket in the (private) _socket field; fall back to terminate() without it.
  const sock = /** @type {any} */ (ws)?._socket;
  if (sock && typeof sock.resetAndDestroy === 'function' && !sock.destroyed) sock.resetAndDestroy();
  else ws?.terminate();
}

/** The user of the resume scenario (its resuming connection and the one holding its presence). */
const RESUME_USER = 'resume-user';
/** The history scenario's connection per target URL. */
const historyClients = new Map();

/** HS256 tokens for users `${prefix}${i}`, signed before any timing starts. */
async function signTokens(secret, subs) {
  const key = new TextEncoder().encode(secret);
  const out = new Array(subs.length);
  for (let i = 0; i < subs.length; i += 500) {
    const part = subs.slice(i, i + 500).map((sub) =>
      new SignJWT({ projects: ['*'] })
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(sub)
        .setIssuedAt()
        .setExpirationTime('2h')
        .sign(key),
    );
    (await Promise.all(part)).forEach((t, k) => (out[i + k] = t));
  }
  return out;
}

const handlers = {
  /**
   * Opens clients [from, to): client i subscribes to project `p${i % projects}` as user
   * `${userPrefix}${i}` (or `${userPrefix}0` for all with sharedUser). Returns how many became ready
   * and how long that took (token signing excluded).
   */
  async connect({ kind, url, from, to, projects, secret, userPrefix = 'u', sharedUser = false, checkSeq = false, batch = false, deflate = false, concurrency = 100, timeoutMs = 15_000, deadlineMs = 120_000 }) {
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
  },

  /**
   * Presence storm: clients [from, to) of `total`, user `${userPrefix}${i}` each, all join `project`
   * as fast as `concurrency` allows. Each client's presence view is its `presence` answer (asked right
   * after `subscribed`) plus every `user_joined` after it, plus itself: a bitmap over the user
   * indexes, found with indexOf (not parsed: a storm of N users is ~N^2/2 frames). Resolves when
   * every client's view holds all `total` users (settledAt), or when nothing new came for `stallMs`
   * (then `complete: false` and the smallest view).
   */
  async storm({ url, secret, from, to, total, project, userPrefix = 's', concurrency = 200, timeoutMs = 15_000, deadlineMs = 120_000, stallMs = 5000 }) {
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
  },

  /** Starts a phase: from now on frames with this run marker count. Answered at once. */
  arm({ run, expected, perProject, latency = false }) {
    phase = new Phase({ run, expected, perProject, latency });
    for (const c of clients) {
      c.count = 0;
      c.bytes0 = bytesRead(c);
    }
    if (expected === 0) phase.complete();
    return { armed: true, clients: clients.length };
  },

  /**
   * Waits until the armed phase is complete, or `capAt` (a now() value: throughput phases are
   * measured over a bounded window), or `timeoutMs`, or nothing new arrived for `stallMs` (counts
   * as a timeout). Complete: waits `graceMs` more to catch
   * duplicates and checks every client's count. Capped or timed out: reports what had arrived by
   * then, and whether deliveries had stopped arriving (stalled) before that.
   */
  async collect({ timeoutMs, capAt = Infinity, graceMs = 200, stallMs = 3000 }) {
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
  },

  /**
   * Resume/replay: one client asks for the stored events after `since`; we time from the request to
   * the last replayed event, checking order and duplicates by seq (sidecar `seq`, NATS stream seq).
   *   contract: subscribe with `since` on an authenticated connection.
   *   nats:     the JetStream way over NATS's WebSocket listener: an ephemeral push consumer
   *             (deliver_policy by_start_sequence, ack none) created with $JS.API.CONSUMER.CREATE.
   * Ends when `expected` events arrived, or nothing more came for `idleMs` after the first one
   * (fewer events than stored: reported, with the first seq received), or at `timeoutMs`.
   */
  async resume({ kind, url, secret, project, since, stream, expected, run, timeoutMs = 10_000, idleMs = 1000 }) {
    const marker = Buffer.from(`"run":"${run}"`);
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
  },

  /**
   * History read: one authenticated connection sends `history` with `limit` and waits for the
   * answer; the time from the request to the parsed answer, and how many events it held. The
   * connection is kept (and reused by the next read), as a page that reads history would.
   */
  async history({ url, secret, project, limit, timeoutMs = 10_000 }) {
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
  },

  /**
   * Contract only: another connection ("tab") of the resume scenario's user, subscribed to
   * `project` and kept open. Presence is per user, so the resuming connection's subscribe then
   * stores no `user_joined`, which would otherwise push the oldest of exactly `maxStoredMessages`
   * events out of the project's window (presence events are stored project events).
   */
  async holdPresence({ url, secret, project, timeoutMs = 10_000 }) {
    const [token] = await signTokens(secret, [RESUME_USER]);
    const c = new ContractClient(url, token, project);
    await c.open(timeoutMs);
    c.onEvent = () => {};
    clients.push(c);
    return {};
  },

  /**
   * Drops every client with a TCP reset (no FIN handshake, no TIME_WAIT left behind: thousands of
   * sockets in TIME_WAIT make the kernel's ephemeral-port search, and so later connects, slower).
   */
  closeAll() {
    for (const c of clients) c.close();
    const n = clients.length;
    clients = [];
    historyClients.clear();
    phase = null;
    return { closed: n, closedByServer: closedTotal };
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
