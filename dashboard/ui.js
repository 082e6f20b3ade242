// The dashboard's DOM helpers, formatting and status lines (see app.js).

const MAX_PROBLEMS = 30;

export const $ = (id) => document.getElementById(id);

/** `el('td', {className: 'num'}, 'text', childNode)`: children are text or nodes, never HTML. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ''));
  return node;
}

// ---- formatting ---------------------------------------------------------------------------------

export const fmtInt = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : '–');
export const fmtRate = (n) => (typeof n !== 'number' ? '–' : n === 0 ? '0' : n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString('en-US'));
export const fmtBytes = (n) => (typeof n === 'number' ? `${(n / 1048576).toFixed(0)} MiB` : '–');
export const fmtMs = (n) => (typeof n === 'number' ? `${n.toFixed(1)} ms` : '–');
export const fmtClock = (d) => d.toTimeString().slice(0, 8);
export const fmtSize = (n) =>
  typeof n !== 'number' ? '–' : n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;

export function fmtAge(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function randomId() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The token's claims, for display only (the server verifies it). */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
  } catch {
    return null;
  }
}

// ---- status lines ------------------------------------------------------------------------------

export function setPill(id, kind, text) {
  const pill = $(id);
  pill.className = `pill ${kind}`;
  pill.textContent = text;
}

export function setStatus(id, kind, text) {
  const p = $(id);
  p.className = kind;
  p.textContent = text;
}

let lastProblem = '';
/** A problem this page saw (API failure, live socket closed, error frame), newest first. */
export function problem(text) {
  if (text === lastProblem) return; // a failing poll repeats every 2 s: once is enough
  lastProblem = text;
  const list = $('problems');
  list.querySelector('li.muted')?.remove();
  list.prepend(el('li', {}, el('time', {}, fmtClock(new Date())), ' ', text));
  while (list.children.length > MAX_PROBLEMS) list.lastElementChild.remove();
}

