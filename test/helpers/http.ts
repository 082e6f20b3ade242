/** HTTP calls to a sidecar's API, fleet membership waits, and a strict Prometheus text parser. */
import type { TestSidecar } from './sidecar.js';

export interface ApiAnswer {
  status: number;
  headers: Headers;
  /** Parsed JSON, or the raw text when the body is not JSON. */
  body: any;
  text: string;
}

export async function api(
  base: string,
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<ApiAnswer> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    headers['Content-Type'] ??= 'application/json';
  }
  const res = await fetch(base + path, { method, headers, body });
  const text = await res.text();
  let parsed: any = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    /* not JSON: keep the text */
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** Resolves once every given sidecar's fleet knows every other one. */
export async function fleetFormed(...sides: TestSidecar[]): Promise<void> {
  const ids = sides.map((s) => s.sidecar.instanceId);
  await Promise.all(
    sides.map(
      (s) =>
        new Promise<void>((resolve) => {
          const fleet = s.sidecar.fleet;
          const check = (instances: string[]) => {
            if (!ids.every((id) => instances.includes(id))) return;
            fleet.off('peers', check);
            resolve();
          };
          fleet.on('peers', check);
          check(fleet.instances);
        }),
    ),
  );
}

/** Resolves once `fleet` reports membership for which `pred` holds. */
export function fleetChange(side: TestSidecar, pred: (instances: string[]) => boolean): Promise<string[]> {
  const fleet = side.sidecar.fleet;
  return new Promise((resolve) => {
    const check = (instances: string[]) => {
      if (!pred(instances)) return;
      fleet.off('peers', check);
      resolve(instances);
    };
    fleet.on('peers', check);
    check(fleet.instances);
  });
}

/** Retry an assertion until it passes or the deadline (for state that follows an event elsewhere). */
export async function eventually<T>(fn: () => Promise<T> | T, timeoutMs = 5_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
const VALUE = '(?:[+-]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:[eE][+-]?\\d+)?|[+-]?Inf|NaN)';
const SAMPLE_LINE = new RegExp(`^(${NAME})(?:\\{(${LABEL}(?:,${LABEL})*)?,?\\})? (${VALUE})(?: -?\\d+)?$`);
const HELP_LINE = new RegExp(`^# HELP (${NAME}) .*$`);
const TYPE_LINE = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);

/**
 * Parse Prometheus text exposition format (0.0.4) strictly: every line must be empty, or a HELP,
 * TYPE or sample line, each sample must belong to a family whose TYPE came first, and a family is declared
 * once. Throws naming the first bad line.
 */
export function parsePrometheus(text: string): Sample[] {
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  const lines = text.slice(0, -1).split('\n');
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    let m: RegExpExecArray | null;
    if (line === '' || HELP_LINE.test(line)) return; // the format allows empty lines between families
    if ((m = TYPE_LINE.exec(line))) {
      if (types.has(m[1])) throw new Error(`family declared twice, ${where}`);
      types.set(m[1], m[2]);
      return;
    }
    m = SAMPLE_LINE.exec(line);
    if (!m) throw new Error(`not a valid exposition line, ${where}`);
    const [, name, labelText, value] = m;
    const family = [name, name.replace(/_(bucket|sum|count|total)$/, '')].find((f) => types.has(f));
    if (!family) throw new Error(`sample without a TYPE, ${where}`);
    const type = types.get(family);
    if (type === 'histogram' && name !== family && !/_(bucket|sum|count)$/.test(name)) throw new Error(`bad histogram series, ${where}`);
    const labels: Record<string, string> = {};
    for (const l of (labelText ?? '').matchAll(new RegExp(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\\]|\\\\.)*)"`, 'g'))) {
      labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    if (type === 'histogram' && name.endsWith('_bucket') && labels.le === undefined) throw new Error(`bucket without le, ${where}`);
    samples.push({ name, labels, value: Number(value.replace(/^\+?Inf$/, 'Infinity').replace(/^-Inf$/, '-Infinity')) });
  });
  return samples;
}

/** The value of one series (labels must match those given; others are ignored). */
export function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}
