// The live view: the page's own connection to /ws/connect, made with the project's client SDK
// (dist/client, served under dashboard/sdk/), the watched projects and their events (see app.js).
// The SDK authenticates with the first message, asks for batched frames, reconnects with backoff
// and resumes every watched project from the last seq seen; this module only shows what it does.

import { Client, CloseCode } from './sdk/client/index.js';
import { session } from './api.js';
import { files, listFiles } from './files.js';
import { $, el, fmtClock, problem, setPill } from './ui.js';

const MAX_EVENTS = 100;
const SUBSCRIBE_TIMEOUT_MS = 5_000;
const WS_URL = new URL('ws/connect', document.baseURI);
WS_URL.protocol = WS_URL.protocol === 'https:' ? 'wss:' : 'ws:';

export const live = {
  /** The SDK client of the current token (a token is a client's for its whole life), or null. */
  client: null,
  /** Set when the server closed us for a reason a retry cannot fix (4401, 4010); cleared by the operator. */
  halted: false,
  /**
   * project -> { status: 'pending' | 'subscribed' | 'refused', since?, epoch?, waiters: [{resolve, reject}] }.
   * Kept across tokens: `since`/`epoch` are where the previous client stopped, so the next one resumes there.
   */
  watched: new Map(),
  /** message_id of a test event -> { sentAt, arrivedAt?, settle() } */
  pending: new Map(),

  /** The id of the page's own connection while connected (marked "this page" in the list). */
  get connectionId() {
    return this.client?.state === 'connected' ? this.client.connectionId : null;
  },

  start() {
    if (this.halted || !session.token) return;
    if (this.client) {
      if (this.client.state === 'disconnected') void this.client.connect().catch(() => {});
      return;
    }
    // autoAck off: an observer must not take direct messages out of the token user's offline inbox.
    const client = new Client({ url: WS_URL.href, token: session.token, autoAck: false });
    this.client = client;
    const mine = (fn) => (value) => {
      if (client === this.client) fn(value);
    };
    client.on('state', mine((change) => this.onState(change)));
    client.on('disconnected', mine((e) => this.onDisconnected(e)));
    client.on('subscribed', mine(({ projectId }) => this.settle(projectId)));
    client.on('unsubscribed', mine(({ projectId, reason }) => {
      // The server ended it (e.g. a refreshed token no longer allows the project).
      if (reason && this.watched.has(projectId)) this.settle(projectId, new Error(reason));
    }));
    client.on('error', mine((err) => problem(`live view: ${err.code}: ${err.message}`)));
    client.on('history_truncated', mine((info) => problem(`live view: history of ${info.projectId ?? info.scope} may have a gap (${info.reason ?? 'truncated'})`)));
    client.on('event', mine((event) => this.onEvent(event)));
    for (const projectId of this.watched.keys()) this.subscribe(projectId);
    // A connection that ends for good is reported by `disconnected`.
    void client.connect().catch(() => {});
  },

  stop() {
    this.halted = false;
    const client = this.client;
    this.client = null;
    if (client) {
      // Where it stopped, for the next token's client to resume from.
      for (const [projectId, p] of client.positions) {
        const w = this.watched.get(projectId);
        if (w && p.seq !== undefined) Object.assign(w, { since: p.seq, epoch: p.epoch });
      }
      void client.close();
    }
    for (const w of this.watched.values()) w.status = 'pending';
    renderWatched();
    setPill('live-status', '', 'live view off');
  },

  /** Asks the SDK for the project; its promise settles the chip (the SDK re-subscribes by itself after a reconnect). */
  subscribe(projectId) {
    const w = this.watched.get(projectId);
    const client = this.client;
    if (!w || !client) return;
    const options = w.since === undefined ? {} : { since: w.since, epoch: w.epoch };
    client.subscribe(projectId, options).then(
      () => client === this.client && this.settle(projectId),
      (err) => {
        // Refused (forbidden, invalid) or dropped by the server: the SDK forgot it. A connection
        // that ended is not a refusal: the chip stays pending and `subscribed` follows a reconnect.
        if (client === this.client && client.subscriptions.has(projectId) === false) this.settle(projectId, err);
      },
    );
  },

  /** Watch a project; resolves once subscribed, rejects when refused or not confirmed in time. */
  watch(projectId) {
    let w = this.watched.get(projectId);
    if (w?.status === 'subscribed') return Promise.resolve();
    if (!w) {
      w = { status: 'pending', waiters: [] };
      this.watched.set(projectId, w);
    }
    w.status = 'pending';
    renderWatched();
    this.halted = false; // the operator asked: try again
    if (session.signedIn) this.start();
    this.subscribe(projectId);
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      w.waiters.push(waiter);
      setTimeout(() => {
        w.waiters = w.waiters.filter((x) => x !== waiter);
        reject(new Error('the live view did not confirm the subscription in time'));
      }, SUBSCRIBE_TIMEOUT_MS);
    });
  },

  unwatch(projectId) {
    const w = this.watched.get(projectId);
    if (!w) return;
    this.watched.delete(projectId);
    for (const waiter of w.waiters) waiter.reject(new Error('no longer watched'));
    void this.client?.unsubscribe(projectId).catch(() => {});
    renderWatched();
  },

  settle(projectId, error) {
    const w = this.watched.get(projectId);
    if (!w) return;
    w.status = error ? 'refused' : 'subscribed';
    for (const waiter of w.waiters) (error ? waiter.reject(error) : waiter.resolve());
    w.waiters = [];
    renderWatched();
  },

  onState({ state, previous }) {
    if (state === 'connected') setPill('live-status', 'ok', `live view connected (${this.client.connectionId})`);
    // From `connected`, `disconnected` has just said when the retry comes.
    else if (state === 'connecting' && previous === 'disconnected') setPill('live-status', 'pending', 'live view connecting…');
    if (state !== 'connected') {
      for (const w of this.watched.values()) if (w.status === 'subscribed') w.status = 'pending';
      renderWatched();
    }
  },

  onDisconnected({ code, reason, willReconnect, delay }) {
    problem(`live view closed (${code}${reason ? `: ${reason}` : ''})`);
    if (willReconnect) {
      setPill('live-status', 'warn', `live view closed (${code}), retrying in ${Math.ceil(delay / 1000)} s`);
      return;
    }
    // Token refused or expired, an operator disconnected us on purpose, ...: do not loop.
    this.halted = true;
    const why =
      code === CloseCode.Unauthorized
        ? 'token refused'
        : code === CloseCode.DisconnectedByOperator
          ? 'disconnected by an operator (watch a project to reconnect)'
          : `closed (${code}; watch a project to reconnect)`;
    setPill('live-status', 'error', `live view: ${why}`);
  },

  onEvent(event) {
    const test = event.message_id ? this.pending.get(event.message_id) : undefined;
    if (test) {
      test.arrivedAt = performance.now();
      test.settle();
    }
    addEvent(event, Boolean(test));
  },
};

export function renderWatched() {
  const chips = [...live.watched.entries()].map(([id, w]) => {
    const remove = el('button', { type: 'button', className: 'chip-x', title: `stop watching ${id}` }, '×');
    remove.addEventListener('click', () => live.unwatch(id));
    return el('li', { className: `chip ${w.status}`, title: w.status }, id, ' ', remove);
  });
  $('watched').replaceChildren(...chips);
  $('events-note').textContent = live.watched.size ? '' : 'watch a project to see its events';
}

export function addEvent(msg, isTest) {
  const list = $('events');
  const data = JSON.stringify(msg.data ?? {});
  const where = msg.project_id ?? (msg.type === 'broadcast' ? 'broadcast' : 'direct/broadcast');
  list.prepend(
    el(
      'li',
      { className: isTest ? 'event mine' : 'event' },
      el('time', { title: msg.timestamp ?? '' }, fmtClock(new Date())),
      el('span', { className: 'project' }, where),
      el('span', { className: 'type' }, msg.type),
      el('span', { className: 'seq' }, msg.seq === undefined ? '' : `#${msg.seq}`),
      el('code', { className: 'data', title: data }, data.length > 300 ? `${data.slice(0, 300)}…` : data),
    ),
  );
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  if ((msg.type === 'file_uploaded' || msg.type === 'file_deleted') && msg.project_id && msg.project_id === files.project) void listFiles(files.project);
}
