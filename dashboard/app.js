/**
 * nats-ws-sidecar dashboard: plain ES modules with no build step of their own; the one dependency,
 * the project's client SDK for the live view, is the built dist/client served beside them.
 *
 * The page holds no data of its own. It takes an admin token (pasted, or from `#token=` in the URL
 * fragment, which browsers never send to a server), keeps it in sessionStorage (this tab only),
 * polls the admin API with `Authorization: Bearer`, and connects to /ws/connect for the live event
 * view with the project's client SDK (served under dashboard/sdk/), which authenticates with the
 * first message so the token stays out of request lines and logs. Everything that comes from the
 * server is written as text, never as HTML.
 *
 * Parts: ui.js (DOM helpers, formatting, status lines), api.js (the admin API), live.js (the
 * live view, an SDK client), files.js (the files panel); this module polls, renders and starts.
 */

import { api, session } from './api.js';
import { listFiles } from './files.js';
import { live, renderWatched } from './live.js';
import { $, claimsOf, el, fmtAge, fmtBytes, fmtClock, fmtInt, fmtMs, fmtRate, problem, randomId, setPill, setStatus } from './ui.js';

const POLL_MS = 2000;
const SPARK_POINTS = 60;
/** The rate charts show this much history (polled every POLL_MS, kept in this tab only). */
const CHART_WINDOW_MS = 5 * 60_000;
const CHART_KEYS = ['out', 'in', 'routed', 'errors', 'connections'];
const MAX_CONNECTION_ROWS = 200;
const ROUND_TRIP_TIMEOUT_MS = 10_000;
const TOKEN_KEY = 'nats-ws-sidecar.dashboard.token';
const ID_RE = /^[A-Za-z0-9_-]{1,128}$/;

// ---- polling and rates -------------------------------------------------------------------------

/** Counters per instance from the previous poll, to turn totals into rates. */
let previous = { at: 0, instances: new Map() };
const spark = { out: [], in: [], routed: [], errors: [] };
/** [time (ms, performance.now), value] per chart, for the last CHART_WINDOW_MS. */
const chart = Object.fromEntries(CHART_KEYS.map((k) => [k, []]));

function countersOf(m) {
  return {
    out: m.hub?.messages_sent ?? 0,
    in: m.hub?.messages_received ?? 0,
    routed: m.hub?.events_routed ?? 0,
    errors: m.middleware?.error_handler?.total_errors ?? 0,
    limited: m.middleware?.rate_limiter?.rate_limited ?? 0,
  };
}

/**
 * Rates per instance and for the fleet, from counter deltas. The fleet rate sums the instances
 * seen in both polls, so an instance joining (counters from its start) or leaving makes no spike.
 */
function computeRates(instances, at) {
  const perInstance = new Map();
  const fleet = { out: 0, in: 0, routed: 0, errors: 0, limited: 0 };
  const dt = (at - previous.at) / 1000;
  const current = new Map();
  for (const m of instances) {
    const c = countersOf(m);
    current.set(m.instance_id, c);
    const before = previous.instances.get(m.instance_id);
    if (!before || dt <= 0) continue;
    const r = {};
    for (const k of Object.keys(fleet)) {
      r[k] = Math.max(0, c[k] - before[k]) / dt;
      fleet[k] += r[k];
    }
    perInstance.set(m.instance_id, r);
  }
  const first = previous.at === 0;
  previous = { at, instances: current };
  return first ? null : { fleet, perInstance };
}

function schedule(generation, delay = POLL_MS) {
  clearTimeout(session.timer);
  session.timer = setTimeout(() => void poll(generation), delay);
}

async function poll(generation) {
  if (generation !== session.generation) return;
  if (document.hidden) return; // resumed by visibilitychange
  try {
    const [stats, metrics, list] = await Promise.all([api('stats'), api('metrics'), api('connections')]);
    if (generation !== session.generation) return; // the token changed meanwhile
    render(stats, metrics, list, computeRates(metrics.instances ?? [], performance.now()));
    setPill('api-status', 'ok', `API ok · ${stats.instance_count} instance${stats.instance_count === 1 ? '' : 's'}`);
    $('updated').textContent = `updated ${fmtClock(new Date())}`;
    if (!session.signedIn) signedIn();
    live.start();
  } catch (err) {
    if (generation !== session.generation) return;
    if (err.status === 401 || err.status === 403) return refused(err);
    setPill('api-status', 'error', err.status ? `API error ${err.status}` : 'API unreachable');
    problem(`admin API: ${err.status ? `HTTP ${err.status}: ` : ''}${err.message}`);
  }
  schedule(generation);
}

function signedIn() {
  session.signedIn = true;
  const c = claimsOf(session.token) ?? {};
  const roles = Array.isArray(c.roles) ? c.roles.join(', ') : 'admin';
  const expires = typeof c.exp === 'number' ? ` · token expires in ${fmtAge(c.exp - Date.now() / 1000)}` : '';
  setStatus('auth-status', 'ok', `Signed in as ${c.sub ?? 'unknown'} (${roles})${expires}.`);
}

function refused(err) {
  session.refused = true;
  live.stop();
  setPill('api-status', 'error', `token refused (${err.status})`);
  const hint = err.status === 403 ? 'Use a token whose roles include "admin".' : 'Paste a valid, unexpired admin token.';
  setStatus('auth-status', 'error', `The admin API refused this token (HTTP ${err.status}: ${err.message}). ${hint}`);
  problem(`admin API refused the token: HTTP ${err.status}: ${err.message}`);
}

function useToken(token) {
  stop();
  session.token = token;
  session.refused = false;
  session.signedIn = false;
  sessionStorage.setItem(TOKEN_KEY, token);
  previous = { at: 0, instances: new Map() };
  for (const k of Object.keys(spark)) spark[k] = [];
  for (const k of CHART_KEYS) chart[k] = [];
  setPill('api-status', 'pending', 'connecting…');
  setStatus('auth-status', '', 'Checking the token…');
  void poll(session.generation);
}

function stop() {
  session.generation += 1;
  clearTimeout(session.timer);
  live.stop();
  clearView();
}

/** Nothing from a previous token stays on screen under another (or no) token. */
function clearView() {
  for (const id of ['connections', 'users', 'projects', 'instances', 'out', 'in', 'routed', 'errors']) $(`ov-${id}`).textContent = '–';
  for (const svg of document.querySelectorAll('.spark polyline, .chart polyline')) svg.removeAttribute('points');
  for (const max of document.querySelectorAll('.chart-max')) max.textContent = '';
  $('files').tBodies[0].replaceChildren();
  for (const id of ['instances', 'connections', 'projects', 'errors']) $(id).tBodies[0].replaceChildren();
  for (const id of ['instances-note', 'connections-note', 'updated']) $(id).textContent = '';
  lastList = { list: { count: 0 }, connections: [] };
}

// ---- rendering ---------------------------------------------------------------------------------

function render(stats, metrics, list, rates) {
  const connections = list.connections ?? [];
  const projects = new Map(); // id -> { connections, users }
  const users = new Set();
  for (const c of connections) {
    if (c.user_id) users.add(c.user_id);
    for (const p of c.projects ?? []) {
      const entry = projects.get(p) ?? { connections: 0, users: new Set() };
      entry.connections += 1;
      if (c.user_id) entry.users.add(c.user_id);
      projects.set(p, entry);
    }
  }

  $('ov-connections').textContent = fmtInt(stats.connections);
  $('ov-users').textContent = fmtInt(users.size);
  $('ov-projects').textContent = fmtInt(projects.size);
  $('ov-instances').textContent = fmtInt(stats.instance_count);
  for (const key of ['out', 'in', 'routed', 'errors']) {
    const value = rates?.fleet[key];
    $(`ov-${key}`).textContent = fmtRate(value);
    if (value !== undefined) {
      spark[key].push(value);
      if (spark[key].length > SPARK_POINTS) spark[key].shift();
      drawSpark($(`sp-${key}`), spark[key]);
    }
  }

  const now = performance.now();
  for (const key of CHART_KEYS) {
    const value = key === 'connections' ? stats.connections : rates?.fleet[key];
    if (typeof value === 'number') chart[key].push([now, value]);
    while (chart[key].length > 0 && chart[key][0][0] < now - CHART_WINDOW_MS) chart[key].shift();
    drawChart($(`ch-${key}`), chart[key], now, key === 'connections' ? fmtInt : fmtRate);
  }

  renderInstances(stats, metrics, rates);
  renderConnections(list, connections);
  renderProjects(projects);
  renderErrors(metrics, stats, rates);
}

function drawSpark(svg, values) {
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? 60 / (SPARK_POINTS - 1) : 0;
  const offset = 60 - step * (values.length - 1);
  const points = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(19 - (v / max) * 18).toFixed(1)}`);
  svg.querySelector('polyline').setAttribute('points', points.join(' '));
}

/** A line over the chart window: x is time (right edge = now), y from 0 to the window's maximum. */
function drawChart(figure, points, now, fmt) {
  const max = Math.max(1, ...points.map((p) => p[1]));
  const xy = points.map(([t, v]) => `${(300 - ((now - t) / CHART_WINDOW_MS) * 300).toFixed(1)},${(78 - (v / max) * 74).toFixed(1)}`);
  const line = figure.querySelector('polyline');
  if (xy.length > 0) line.setAttribute('points', xy.join(' '));
  figure.querySelector('.chart-max').textContent = points.length ? `max ${fmt(max)} · now ${fmt(points[points.length - 1][1])}` : '';
}

function renderInstances(stats, metrics, rates) {
  const byId = new Map((metrics.instances ?? []).map((m) => [m.instance_id, m]));
  const rows = (stats.instances ?? []).map((s) => {
    const m = byId.get(s.instance_id) ?? {};
    const r = rates?.perInstance.get(s.instance_id);
    const nats = s.nats_connected === false || m.nats?.connected === false ? 'down' : s.draining ? 'draining' : 'ok';
    const name = el('td', {}, s.instance_id);
    if (s.instance_id === stats.instance_id) name.append(' ', el('span', { className: 'tag' }, 'serving this page'));
    // Workers (SIDECAR_WORKERS) are instances on one host; their worker number when they say it.
    const where = [s.host, s.pid].filter((v) => v !== undefined).join(' · ') || '–';
    const host = el('td', { className: 'mono' }, where);
    if (typeof s.worker === 'number' || typeof s.worker === 'string') host.append(' ', el('span', { className: 'tag' }, `worker ${s.worker}`));
    return el(
      'tr',
      { className: nats === 'ok' ? '' : 'bad' },
      name,
      host,
      el('td', { className: 'num' }, fmtInt(s.connections)),
      el('td', { className: 'num' }, fmtInt(s.users)),
      el('td', { className: 'num' }, fmtInt(s.projects)),
      el('td', { className: 'num' }, fmtRate(r?.out)),
      el('td', { className: 'num' }, fmtRate(r?.in)),
      el('td', {}, nats),
      el('td', { className: 'num' }, typeof s.uptime_seconds === 'number' ? fmtAge(s.uptime_seconds) : '–'),
      el('td', { className: 'num' }, fmtBytes(m.process?.rss_bytes)),
      el('td', { className: 'num' }, fmtMs(m.process?.event_loop_lag_ms)),
    );
  });
  const missing = [...new Set([...(stats.missing ?? []), ...(metrics.missing ?? [])])];
  for (const id of missing) {
    rows.push(el('tr', { className: 'bad' }, el('td', {}, id), el('td', { colSpan: 10 }, 'did not answer in time: numbers are partial')));
  }
  $('instances').tBodies[0].replaceChildren(...rows);
  const hosts = new Set((stats.instances ?? []).map((s) => s.host).filter(Boolean)).size;
  const notes = hosts ? [`${fmtInt(stats.instances.length)} on ${fmtInt(hosts)} host${hosts === 1 ? '' : 's'}`] : [];
  if (missing.length) notes.push(`${missing.length} not answering`);
  $('instances-note').textContent = notes.join(' · ');
}

let lastList = { list: { count: 0 }, connections: [] };

function renderConnections(list, connections) {
  lastList = { list, connections };
  const filter = $('conn-filter').value.trim().toLowerCase();
  const matches = (c) =>
    !filter ||
    [c.id, c.user_id ?? '', c.instance_id, ...(c.projects ?? [])].some((s) => String(s).toLowerCase().includes(filter));
  const shown = connections
    .filter(matches)
    .sort((a, b) => String(b.connected_at).localeCompare(String(a.connected_at)))
    .slice(0, MAX_CONNECTION_ROWS);
  const now = Date.now();
  const rows = shown.map((c) => {
    const id = el('td', { className: 'mono' }, c.id);
    if (c.id === live.connectionId) id.append(' ', el('span', { className: 'tag' }, 'this page'));
    const since = new Date(c.connected_at);
    return el(
      'tr',
      { className: c.state === 'open' ? '' : 'muted' },
      id,
      el('td', {}, c.user_id ?? '(authenticating)'),
      el('td', {}, (c.projects ?? []).join(', ') || '–'),
      el('td', { className: 'mono' }, c.instance_id),
      el('td', { title: c.connected_at }, `${fmtClock(since)} (${fmtAge((now - since.getTime()) / 1000)})`),
      el('td', { className: 'num' }, fmtInt(c.messages_in)),
      el('td', { className: 'num' }, fmtInt(c.messages_out)),
    );
  });
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colSpan: 7, className: 'muted' }, filter ? 'no match' : 'no connections')));
  $('connections').tBodies[0].replaceChildren(...rows);
  const total = list.count ?? connections.length;
  const notes = [`${fmtInt(total)} total`];
  if (shown.length < connections.filter(matches).length) notes.push(`showing ${shown.length}`);
  if (list.truncated) notes.push(`list truncated at ${fmtInt(connections.length)}: project counts are partial`);
  $('connections-note').textContent = notes.join(' · ');
}

function renderProjects(projects) {
  const sorted = [...projects.entries()].sort((a, b) => b[1].connections - a[1].connections || a[0].localeCompare(b[0]));
  const rows = sorted.map(([id, p]) => {
    const watch = el('button', { type: 'button', className: 'small' }, 'watch');
    watch.addEventListener('click', () => {
      $('send-project').value = id;
      void live.watch(id).catch(() => {});
    });
    return el('tr', {}, el('td', {}, id), el('td', { className: 'num' }, fmtInt(p.connections)), el('td', { className: 'num' }, fmtInt(p.users.size)), el('td', {}, watch));
  });
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colSpan: 4, className: 'muted' }, 'no subscriptions')));
  $('projects').tBodies[0].replaceChildren(...rows);
  const names = new Set([...projects.keys(), ...live.watched.keys()]);
  $('project-list').replaceChildren(...[...names].sort().map((id) => el('option', { value: id })));
}

function renderErrors(metrics, stats, rates) {
  const eh = metrics.middleware?.error_handler ?? {};
  const rl = metrics.middleware?.rate_limiter ?? {};
  const instances = metrics.instances ?? [];
  const natsSum = (key) => instances.reduce((n, m) => n + (typeof m.nats?.[key] === 'number' ? m.nats[key] : 0), 0);
  const missing = new Set([...(stats.missing ?? []), ...(metrics.missing ?? [])]).size;
  const rows = [
    ['error frames sent to clients', eh.total_errors, rates?.fleet.errors],
    ['connections with errors (current window)', eh.connections_with_errors],
    ['requests refused by the rate limit', rl.rate_limited, rates?.fleet.limited],
    ['slow consumers closed (4008)', metrics.hub?.slow_consumers],
    ['invalid events from NATS', natsSum('events_invalid')],
    ['gaps in live sequences', natsSum('gaps')],
    ['NATS reconnects', natsSum('reconnects')],
    ['instances with NATS down', instances.filter((m) => m.nats?.connected === false).length],
    ['instances not answering', missing],
    ['direct messages held offline', metrics.offline_messages?.total_messages],
  ];
  $('errors').tBodies[0].replaceChildren(
    ...rows.map(([what, now, rate]) =>
      el(
        'tr',
        { className: (rate ?? 0) > 0 || (what.startsWith('instances') && now > 0) ? 'bad' : '' },
        el('td', {}, what),
        el('td', { className: 'num' }, fmtInt(now)),
        el('td', { className: 'num' }, rate === undefined ? '' : fmtRate(rate)),
      ),
    ),
  );
}

// ---- test event --------------------------------------------------------------------------------

async function sendTestEvent(e) {
  e.preventDefault();
  const projectId = $('send-project').value.trim();
  const type = $('send-type').value.trim();
  let data;
  try {
    data = JSON.parse($('send-data').value || '{}');
  } catch {
    return setStatus('send-result', 'error', 'data is not valid JSON');
  }
  if (!ID_RE.test(projectId)) return setStatus('send-result', 'error', 'project ids are 1-128 letters, digits, "_" or "-"');
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return setStatus('send-result', 'error', 'data must be a JSON object');
  if (!session.signedIn) return setStatus('send-result', 'error', 'use an admin token first');

  const button = $('send-button');
  button.disabled = true;
  try {
    // Subscribe first, so the event can be seen coming back.
    let watching = true;
    setStatus('send-result', 'pending', `Subscribing the live view to ${projectId}…`);
    await live.watch(projectId).catch((err) => {
      watching = false;
      problem(`live view cannot watch ${projectId}: ${err.message}`);
    });

    const messageId = `dashboard-${randomId()}`;
    const test = { sentAt: performance.now() };
    const arrived = new Promise((resolve) => (test.settle = resolve));
    live.pending.set(messageId, test);
    let answer;
    try {
      answer = await api(`projects/${encodeURIComponent(projectId)}/message`, {
        method: 'POST',
        body: JSON.stringify({ type, data, message_id: messageId }),
      });
    } catch (err) {
      live.pending.delete(messageId);
      if (err.status === 401 || err.status === 403) refused(err);
      return setStatus('send-result', 'error', `Not sent: ${err.status ? `HTTP ${err.status}: ` : ''}${err.message}`);
    }
    if (!watching) {
      live.pending.delete(messageId);
      return setStatus('send-result', 'warn', `Stored as seq ${answer.seq} on ${answer.subject}, but the live view cannot watch ${projectId} (see the problems list).`);
    }
    setStatus('send-result', 'pending', `Stored as seq ${answer.seq} on ${answer.subject}; waiting for it on the live view…`);
    let timer;
    const seen = await Promise.race([arrived.then(() => true), new Promise((r) => (timer = setTimeout(() => r(false), ROUND_TRIP_TIMEOUT_MS)))]);
    clearTimeout(timer);
    live.pending.delete(messageId);
    if (seen) {
      const ms = Math.max(0, Math.round(test.arrivedAt - test.sentAt));
      setStatus('send-result', 'ok', `Round trip: seq ${answer.seq} arrived on the live view ${ms} ms after sending.`);
    } else {
      setStatus('send-result', 'error', `Stored as seq ${answer.seq}, but not seen on the live view within ${ROUND_TRIP_TIMEOUT_MS / 1000} s.`);
    }
  } finally {
    button.disabled = false;
  }
}

// ---- start -------------------------------------------------------------------------------------

function init() {
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('token-input').value.trim();
    $('token-input').value = '';
    if (token) useToken(token);
  });
  $('forget-token').addEventListener('click', () => {
    stop();
    session.token = '';
    session.signedIn = false;
    sessionStorage.removeItem(TOKEN_KEY);
    setPill('api-status', '', 'no token');
    setStatus('auth-status', '', 'Token forgotten. Paste an admin token to continue.');
  });
  $('send-form').addEventListener('submit', (e) => void sendTestEvent(e));
  $('watch-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('watch-project').value.trim();
    if (!ID_RE.test(id)) return problem(`not a project id: ${id.slice(0, 40)}`);
    $('watch-project').value = '';
    void live.watch(id).catch(() => {});
  });
  $('clear-events').addEventListener('click', () => $('events').replaceChildren());
  $('files-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('files-project').value.trim();
    if (!ID_RE.test(id)) return problem(`not a project id: ${id.slice(0, 40)}`);
    void listFiles(id);
  });
  $('conn-filter').addEventListener('input', () => renderConnections(lastList.list, lastList.connections));
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && session.token && !session.refused) schedule(session.generation, 0);
  });
  renderWatched();

  // A token in the fragment wins; drop it from the address bar (and history) at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromFragment = fragment.get('token');
  if (fromFragment) history.replaceState(null, '', location.pathname + location.search);
  const token = fromFragment || sessionStorage.getItem(TOKEN_KEY);
  if (token) useToken(token);
}

init();
