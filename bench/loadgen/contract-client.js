// Client of the contract protocol (PROTOCOL.md), spoken by both the sidecar (targets `sidecar`,
// `sidecar-deflate`) and the naive bridge (bench/naive-bridge.js): `/ws/connect?token=JWT`, first
// frame `auth_success`, send `subscription`/`subscribe`, wait for `subscribed`; then one JSON
// envelope per text frame, or with `batch` (subprotocol nats-ws-sidecar.batch) several joined by
// "\n" (the naive bridge's ws server accepts the subprotocol and still sends one per frame); with
// `deflate` the client offers permessage-deflate.

import { onDelivery, phase } from './measurement.js';
import { openForSetup, resetClose } from './socket.js';

const BATCH_PROTOCOL = 'nats-ws-sidecar.batch';
const NEWLINE = 0x0a;

export class ContractClient {
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
    /** @type {import('./measurement.js').Phase | null} */
    this.phase = null;
    this.ready = false;
    /** hot-path handler once subscribed: (buf) => void; replaced by the resume and history commands */
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
      const { ws, fail, settled } = openForSetup(this, timeoutMs, reject, {
        protocols: this.batch ? [BATCH_PROTOCOL] : [],
        perMessageDeflate: this.deflate,
      });
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
