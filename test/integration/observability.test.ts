/**
 * deploy/grafana's dashboard and deploy/prometheus's alert rules use only what /metrics exports:
 * a real sidecar is started and scraped, then every PromQL expression is taken apart and each
 * metric and label name it uses is looked up in the scrape.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';

const root = join(import.meta.dirname, '..', '..');
const dashboard = JSON.parse(readFileSync(join(root, 'deploy', 'grafana', 'nats-ws-sidecar.json'), 'utf8'));
const alerts = parse(readFileSync(join(root, 'deploy', 'prometheus', 'alerts.yml'), 'utf8'));

const FUNCTIONS = new Set([
  'abs', 'absent', 'avg', 'avg_over_time', 'ceil', 'clamp_min', 'count', 'delta', 'deriv', 'floor', 'histogram_quantile',
  'increase', 'irate', 'label_values', 'max', 'max_over_time', 'min', 'min_over_time', 'rate', 'round', 'sum', 'time',
  'topk', 'vector',
]);
const KEYWORDS = new Set(['and', 'or', 'unless', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'offset']);
/** Labels Prometheus adds to every scraped series, and its own `up` series. */
const TARGET_LABELS = new Set(['job', 'instance']);
const PROMETHEUS_SERIES = new Set(['up']);

let nats: TestNats;
let sc: TestSidecar;
let metricNames: Set<string>;
let labelNames: Set<string>;

beforeAll(async () => {
  nats = await startTestNats();
  sc = await startTestSidecar(nats.url);
  const text = await (await fetch(`${sc.httpUrl}/metrics`)).text();
  metricNames = new Set();
  labelNames = new Set();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s/.exec(line);
    if (!m) continue;
    metricNames.add(m[1]);
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)) labelNames.add(l[1]);
  }
});

afterAll(async () => {
  await sc?.stop();
  await nats?.cleanup();
});

/** The metric and label names a PromQL expression (Grafana variables allowed) refers to. */
function namesIn(expr: string): { metrics: string[]; labels: string[]; functions: string[] } {
  const labels: string[] = [];
  let rest = expr;
  // Label matchers: {name="value", name=~"re"}
  rest = rest.replace(/\{([^}]*)\}/g, (_, inner: string) => {
    for (const m of inner.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)/g)) labels.push(m[1]);
    return ' ';
  });
  rest = rest.replace(/"(?:[^"\\]|\\.)*"/g, ' '); // strings
  rest = rest.replace(/\[[^\]]*\]/g, ' '); // ranges: [5m], [$__rate_interval]
  rest = rest.replace(/\b(by|without|on|ignoring)\s*\(([^)]*)\)/g, (_, _kw, inner: string) => {
    labels.push(...inner.split(',').map((s) => s.trim()).filter(Boolean));
    return ' ';
  });
  rest = rest.replace(/\b\d+(\.\d+)?([eE][+-]?\d+)?\b/g, ' ');
  const metrics: string[] = [];
  const functions: string[] = [];
  for (const m of rest.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    if (m[2]) functions.push(m[1]);
    else if (!KEYWORDS.has(m[1])) metrics.push(m[1]);
  }
  return { metrics, labels, functions };
}

function check(where: string, expr: string, extraLabels = new Set<string>(), extraSeries = new Set<string>()) {
  const { metrics, labels, functions } = namesIn(expr);
  expect(metrics.length + functions.filter((f) => f === 'time').length, `${where}: ${expr} uses no metric`).toBeGreaterThan(0);
  for (const f of functions) expect(FUNCTIONS.has(f), `${where}: unknown function ${f} in ${expr}`).toBe(true);
  for (const m of metrics) expect(metricNames.has(m) || extraSeries.has(m), `${where}: ${m} is not exported by /metrics`).toBe(true);
  for (const l of labels) expect(labelNames.has(l) || extraLabels.has(l), `${where}: label ${l} is not exported`).toBe(true);
}

function panelsOf(list: any[]): any[] {
  return list.flatMap((p) => [p, ...panelsOf(p.panels ?? [])]);
}

describe('the query check', () => {
  it('finds the metrics, labels and functions of an expression, and refuses an unknown metric or label', () => {
    expect(namesIn('histogram_quantile(0.99, sum by (instance_id, le) (rate(sidecar_x_bucket{job="a", instance_id=~"$instance"}[$__rate_interval]))) > 1e3')).toEqual({
      metrics: ['sidecar_x_bucket'],
      labels: ['job', 'instance_id', 'instance_id', 'le'],
      functions: ['histogram_quantile', 'sum', 'rate'],
    });
    expect(() => check('test', 'sum(rate(sidecar_not_a_metric_total[5m]))')).toThrow(/not exported/);
    expect(() => check('test', 'sum by (pod) (sidecar_connections)')).toThrow(/label pod/);
  });
});

describe('the Grafana dashboard', () => {
  const panels = panelsOf(dashboard.panels).filter((p) => p.type !== 'row');

  it('queries only metrics and labels that /metrics exports', () => {
    let queries = 0;
    for (const panel of panels) {
      for (const target of panel.targets) {
        check(`panel "${panel.title}"`, target.expr);
        queries += 1;
      }
    }
    for (const variable of dashboard.templating.list.filter((v: any) => v.type === 'query')) {
      const m = /^label_values\((\w+),\s*(\w+)\)$/.exec(variable.query.query)!;
      expect(metricNames.has(m[1]) && labelNames.has(m[2])).toBe(true);
    }
    expect(queries).toBeGreaterThan(30);
  });

  it('covers connections, rates, deliveries, errors, slow consumers, gaps, NATS reconnects, presence, uploads and event-loop lag', () => {
    const all = panels.flatMap((p) => p.targets.map((t: any) => t.expr)).join('\n');
    for (const metric of [
      'sidecar_connections',
      'sidecar_connections_total',
      'sidecar_messages_sent_total',
      'sidecar_delivery_latency_seconds_bucket',
      'sidecar_errors_sent_total',
      'sidecar_slow_consumers_total',
      'sidecar_gaps_total',
      'sidecar_nats_reconnects_total',
      'sidecar_presence_joined_total',
      'sidecar_uploads_completed_total',
      'sidecar_event_loop_lag_seconds_bucket',
      'sidecar_lifecycle_events_total',
    ]) {
      expect(all, metric).toMatch(new RegExp(`\\b${metric}\\b`));
    }
    // Per instance and fleet-wide: some queries keep instance_id, some sum it away.
    expect(all).toMatch(/by \(instance_id/);
    expect(all).toMatch(/sum\(rate/);
    expect(panels.every((p) => p.targets.every((t: any) => t.expr.includes('instance_id=~"$instance"')))).toBe(true);
  });

  it('has unique panel ids on a grid 24 wide', () => {
    const ids = panelsOf(dashboard.panels).map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of dashboard.panels) expect(p.gridPos.x + p.gridPos.w).toBeLessThanOrEqual(24);
  });
});

describe('the Prometheus alert rules', () => {
  const rules: any[] = alerts.groups.flatMap((g: any) => g.rules);

  it('use only metrics and labels that /metrics exports (and Prometheus up / job / instance)', () => {
    for (const rule of rules) check(`alert ${rule.alert}`, rule.expr, TARGET_LABELS, PROMETHEUS_SERIES);
  });

  it('cover the failure modes RELIABILITY.md knows, each with a severity and a summary', () => {
    const exprs = rules.map((r) => r.expr).join('\n');
    for (const metric of [
      'up',
      'sidecar_nats_connected',
      'sidecar_stream_ready',
      'sidecar_slow_consumers_total',
      'sidecar_gaps_total',
      'sidecar_history_lost_total',
      'sidecar_event_loop_lag_seconds_bucket',
    ]) {
      expect(exprs, metric).toMatch(new RegExp(`\\b${metric}\\b`));
    }
    for (const rule of rules) {
      expect(rule.alert).toMatch(/^Sidecar[A-Za-z]+$/);
      expect(['critical', 'warning']).toContain(rule.labels.severity);
      expect(rule.annotations.summary).toBeTruthy();
      for (const m of JSON.stringify(rule.annotations).matchAll(/\$labels\.(\w+)/g)) {
        expect(labelNames.has(m[1]) || TARGET_LABELS.has(m[1]), `${rule.alert}: $labels.${m[1]}`).toBe(true);
      }
    }
    expect(new Set(rules.map((r) => r.alert)).size).toBe(rules.length);
  });
});
