// The live view: the page's own WebSocket to /ws/connect, the watched projects and their events (see app.js).

import { session } from './api.js';
import { files, listFiles } from './files.js';
import { $, el, fmtClock, problem, setPill } from './ui.js';

const MAX_EVENTS = 100;
const SUBSCRIBE_TIMEOUT_MS = 5_000;
/** The sidecar's default maxMessageSize: an `auth` frame larger than this is refused (1009). */
const MAX_AUTH_FRAME = 512;
const WS_URL = new URL('ws/connect', document.baseURI);
WS_URL.protocol = WS_URL.protocol === 'https:' ? 'wss:' : 'ws:';

// ---- live view: the page's own WebSocket --------------------------------------------------------

export const live = {
  ws: null,
  connectionId: null,
  authenticated: false,
  running: false,
  /** Set when the server closed us for a reason a retry cannot fix (4401, 4010); cleared by the operator. */
  halted: false,
  retries: 0,
  retryTimer: 0,
  /** After a 1009 on the `auth` frame (token larger than the frame cap): put it in the URL instead. */
  tokenInUrl: false,
  /** project -> { status: 'pending' | 'subscribed' | 'refused', lastSeq, waiters: [{resolve, reject}] } */
  watched: new Map(),
  /** message_id of a test event -> { sentAt, seq?, arrivedAt?, settle() } */
  pending: new Map(),

  start() {
    if (this.running || this.halted) return;
    this.running = true;
    this.connect();
  },

  stop() {
    this.running = false;
    this.halted = false;
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.ws = null;
    this.connectionId = null;
    this.authenticated = false;
    ws?.close(1000, 'dashboard closed');
    for (const w of this.watched.values()) w.status = 'pending';
    renderWatched();
    setPill('live-status', '', 'live view off');
  },

  connect() {
    clearTimeout(this.retryTimer);
    const url = new URL(WS_URL);
    if (this.tokenInUrl) url.searchParams.set('token', session.token);
    // Batched frames: a busy project's events arrive several to a frame, joined by "\n".
    const ws = new WebSocket(url, ['nats-ws-sidecar.batch']);
    this.ws = ws;
    this.authenticated = false;
    setPill('live-status', 'pending', 'live view connecting…');
    ws.addEventListener('message', (e) => {
      if (ws !== this.ws) return;
      if (typeof e.data === 'string' && e.data.includes('\n')) for (const line of e.data.split('\n')) this.onMessage(line);
      else this.onMessage(e.data);
    });
    ws.addEventListener('close', (e) => {
      if (ws === this.ws) this.onClose(e);
    });
  },

  send(message) {
    if (this.authenticated) this.ws.send(JSON.stringify(message));
  },

  subscribe(projectId) {
    const w = this.watched.get(projectId);
    const data = { action: 'subscribe', project_id: projectId };
    if (w?.lastSeq) data.since = w.lastSeq; // resume after a reconnect: no gap, no duplicate
    this.send({ type: 'subscription', data });
  },

  /** Watch a project; resolves once subscribed, rejects when refused or not confirmed in time. */
  watch(projectId) {
    let w = this.watched.get(projectId);
    if (w?.status === 'subscribed') return Promise.resolve();
    if (!w) {
      w = { status: 'pending', lastSeq: 0, waiters: [] };
      this.watched.set(projectId, w);
      this.subscribe(projectId);
    } else if (w.status === 'refused') {
      w.status = 'pending';
      this.subscribe(projectId);
    }
    renderWatched();
    this.halted = false; // the operator asked: try again
    if (session.signedIn) this.start();
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
    this.send({ type: 'subscription', data: { action: 'unsubscribe', project_id: projectId } });
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

  onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return problem('live view: a frame that is not JSON');
    }
    const data = msg.data ?? {};
    switch (msg.type) {
      case 'auth_required': {
        const frame = JSON.stringify({ type: 'auth', data: { token: session.token } });
        if (new TextEncoder().encode(frame).length > MAX_AUTH_FRAME) {
          // Too big for one inbound frame: use the upgrade URL instead (the only other way a browser has).
          this.tokenInUrl = true;
          return this.reconnectNow();
        }
        return this.ws.send(frame);
      }
      case 'auth_success':
        this.authenticated = true;
        this.retries = 0;
        this.connectionId = data.connection_id;
        setPill('live-status', 'ok', `live view connected (${data.connection_id})`);
        for (const projectId of this.watched.keys()) this.subscribe(projectId);
        return;
      case 'auth_failed':
        return problem(`live view: token refused: ${data.reason ?? data.code ?? 'auth failed'}`);
      case 'subscription':
        if (data.action === 'subscribed') this.settle(data.project_id);
        else if (data.action === 'unsubscribed' && this.watched.has(data.project_id)) {
          // The server dropped it (e.g. a refreshed token no longer allows the project).
          this.settle(data.project_id, new Error(data.reason ?? 'unsubscribed by the server'));
        }
        return;
      case 'error':
        problem(`live view: ${data.code}: ${data.message}`);
        if (data.project_id && this.watched.has(data.project_id)) this.settle(data.project_id, new Error(data.message ?? data.code));
        return;
      case 'pong':
        return;
      default:
        return this.onEvent(msg);
    }
  },

  onEvent(msg) {
    const w = msg.project_id ? this.watched.get(msg.project_id) : undefined;
    if (w && typeof msg.seq === 'number') w.lastSeq = Math.max(w.lastSeq, msg.seq);
    const test = msg.message_id ? this.pending.get(msg.message_id) : undefined;
    if (test) {
      test.arrivedAt = performance.now();
      test.settle();
    }
    addEvent(msg, Boolean(test));
  },

  onClose(e) {
    this.ws = null;
    this.connectionId = null;
    const wasAuthenticated = this.authenticated;
    this.authenticated = false;
    for (const w of this.watched.values()) w.status = 'pending';
    renderWatched();
    if (!this.running) return;
    if (e.code === 1009 && !wasAuthenticated && !this.tokenInUrl) {
      this.tokenInUrl = true;
      return this.reconnectNow();
    }
    const reason = e.reason ? `: ${e.reason}` : '';
    problem(`live view closed (${e.code}${reason})`);
    if (e.code === 4401 || e.code === 4010) {
      // Token refused or expired, or an operator disconnected us on purpose: do not loop.
      this.running = false;
      this.halted = true;
      setPill('live-status', 'error', e.code === 4401 ? 'live view: token refused' : 'live view: disconnected by an operator (watch a project to reconnect)');
      return;
    }
    const delay = Math.min(15_000, 500 * 2 ** this.retries) * (0.5 + Math.random() / 2);
    this.retries += 1;
    setPill('live-status', 'warn', `live view closed (${e.code}), retrying in ${Math.ceil(delay / 1000)} s`);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  },

  reconnectNow() {
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000);
    this.connect();
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

