// The load generator's WebSocket clients, each speaking its target's protocol (see ../loadgen.js),
// their setup (connect, authenticate, subscribe), and the tokens they connect with.

import { SignJWT } from 'jose';
import WebSocket from 'ws';
import { onDelivery, state } from './phase.js';

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

/** Raw NATS protocol client over NATS's WebSocket listener. */
export class NatsWsClient {
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
        if (state.phase) state.phase.fail(`nats: ${line}`);
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
export class ContractClient {
  /**
   * @param {string} url base ws://host:port
   * @param {string} token
   * @param {string} project
   * @param {{ checkSeq?: boolean, since?: number }} [opts]
   */
  constructor(url, token, project, { checkSeq = false, since } = {}) {
    this.url = `${url}/ws/connect?token=${encodeURIComponent(token)}`;
    this.project = project;
    this.checkSeq = checkSeq;
    this.since = since;
    this.count = 0;
    /** @type {Phase | null} */
    this.phase = null;
    this.ready = false;
    /** hot-path handler once subscribed: (buf) => void */
    this.onEvent = (buf) => onDelivery(buf, 0, buf.length, this);
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
        let msg;
        try {
          msg = JSON.parse(buf.toString());
        } catch {
          return fail(new Error(`setup: not JSON: ${buf.toString().slice(0, 80)}`));
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
      });
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
  const ws = (client.ws = new WebSocket(client.url, { ...WS_OPTS, handshakeTimeout: timeoutMs }));
  ws.on('close', (code) => {
    if (!client.ready) return fail(new Error(`closed during setup (${code})`));
    state.closedTotal++;
    if (state.phase) state.phase.closed++;
  });
  return { ws, fail, settled: () => clearTimeout(timer) };
}

/** @param {WebSocket | undefined} ws */
export function resetClose(ws) {
  // ws keeps its net.Socket in the (private) _socket field; fall back to terminate() without it.
  const sock = /** @type {any} */ (ws)?._socket;
  if (sock && typeof sock.resetAndDestroy === 'function' && !sock.destroyed) sock.resetAndDestroy();
  else ws?.terminate();
}

/** HS256 tokens for users `${prefix}${i}`, signed before any timing starts. */
export async function signTokens(secret, subs) {
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
