// Client of NATS's built-in WebSocket listener (target `nats`): the raw NATS text protocol over
// WebSocket (INFO / CONNECT / PING / PONG / SUB / MSG). nats-server packs several protocol messages
// into one WebSocket frame and may split one across frames, so frames are fed to a byte-level
// stream parser.

import { onDelivery, phase } from './measurement.js';
import { openForSetup, resetClose } from './socket.js';

const CRLF = Buffer.from('\r\n');
const CONNECT_LINE =
  'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":false,"no_responders":false,' +
  '"lang":"bench","version":"1.0.0"}\r\nPING\r\n';

export class NatsWsClient {
  /** @param {string} url @param {string} project '' for no subscription (the resume scenario subscribes itself) */
  constructor(url, project) {
    this.url = url;
    this.project = project;
    this.subject = project ? `ws.project.${project}` : '';
    this.checkSeq = false;
    this.count = 0;
    /** @type {import('./measurement.js').Phase | null} */
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
