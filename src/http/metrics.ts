/**
 * Metrics, two ways: Prometheus text for `GET /metrics`, and the JSON snapshot behind the admin
 * `metrics` route (the Go package's shape). Both read the counters the hub and broker already keep, at
 * collection time, so the hot path pays nothing for them. The only per-event work is the delivery
 * latency sample (a clock read and an array push per event, never per socket).
 *
 * Each sidecar has its own Registry (two instances in one process do not collide), and every
 * series carries the instance id as a label.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Hub } from '../core/hub.js';
import type { StoredEvent, Topic } from '../core/ports.js';
import type { EventSink, NatsBroker } from '../nats/broker.js';
import type { FleetAnswerBody } from '../nats/fleet.js';
import { cachedOfflineStats, type OfflineStats } from '../nats/offline-stats.js';

const VERSION: string = (() => {
  try {
    return JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
})();

/** A timer that should fire this often; how late it fires is the event-loop lag. */
const LAG_PROBE_MS = 500;
/** Offline numbers cost a stream-info request: at most one per this period for scrapes. */
const OFFLINE_CACHE_MS = 5_000;

export interface MetricsDeps {
  hub: Hub;
  broker: NatsBroker;
  instanceId: string;
  startedAt: number;
  /** Counters of nats/presence.ts and nats/lifecycle.ts, when they run. */
  presence?: { readonly stats: { joined: number; left: number; sweeps: number; swept: number; failures: number } };
  lifecycle?: { readonly stats: { published: number; lost: number; dropped: number; failures: number; pending: number } };
}

/** Upload counters, fed by the files module (`metrics.uploads.started()` and so on). */
export interface UploadCounters {
  started(): void;
  completed(bytes: number): void;
  failed(): void;
}

/** One instance's numbers, in the Go package's JSON shape plus this sidecar's extensions. */
export interface InstanceMetrics extends FleetAnswerBody {
  hub: Record<string, number>;
  middleware: {
    rate_limiter: { active_limiters: number; requests_per_second: number; burst_size: number; rate_limited: number };
    error_handler: { connections_with_errors: number; total_errors: number; max_errors: number };
  };
  nats: Record<string, number | boolean>;
  process: Record<string, number>;
}

/**
 * Fleet totals in the Go package's shape: counters summed over `instances`, settings (rates, error
 * budget) taken from `own`. Tolerates answers from an instance that lacks a key.
 */
export function fleetTotals(instances: InstanceMetrics[], own: InstanceMetrics): Pick<InstanceMetrics, 'hub' | 'middleware'> {
  const hub: Record<string, number> = {};
  for (const i of instances) for (const [k, v] of Object.entries(i.hub ?? {})) hub[k] = (hub[k] ?? 0) + v;
  const total = (pick: (m: InstanceMetrics) => number | undefined) => instances.reduce((n, m) => n + (pick(m) ?? 0), 0);
  return {
    hub,
    middleware: {
      rate_limiter: {
        ...own.middleware.rate_limiter,
        active_limiters: total((m) => m.middleware?.rate_limiter?.active_limiters),
        rate_limited: total((m) => m.middleware?.rate_limiter?.rate_limited),
      },
      error_handler: {
        ...own.middleware.error_handler,
        connections_with_errors: total((m) => m.middleware?.error_handler?.connections_with_errors),
        total_errors: total((m) => m.middleware?.error_handler?.total_errors),
      },
    },
  };
}

/** One pass over the local connections for the numbers that need it. */
function scanConnections(hub: Hub): { authenticated: number; users: number; withErrors: number } {
  const users = new Set<string>();
  let authenticated = 0;
  let withErrors = 0;
  for (const conn of hub.connections.values()) {
    if (conn.errorCount > 0) withErrors += 1;
    const user = conn.userId;
    if (user === null) continue;
    authenticated += 1;
    users.add(user);
  }
  return { authenticated, users: users.size, withErrors };
}

export class SidecarMetrics {
  readonly registry = new Registry();
  /** Offline-inbox numbers from JetStream; `fresh` skips the scrape cache. */
  readonly offline: (fresh?: boolean) => Promise<OfflineStats>;
  private readonly latency: Histogram;
  private readonly loopLag: Histogram;
  private readonly lagTimer: NodeJS.Timeout;
  private lastLagMs = 0;
  /** Refreshed once per scrape, read by the series that need a pass over the connections. */
  private scan = { authenticated: 0, users: 0, withErrors: 0 };
  readonly uploads: UploadCounters;

  constructor(private readonly deps: MetricsDeps) {
    const { hub, broker } = deps;
    const r = this.registry;
    r.setDefaultLabels({ instance_id: deps.instanceId });
    this.offline = cachedOfflineStats(broker, OFFLINE_CACHE_MS);

    const gauge = (name: string, help: string, read: () => number | Promise<number>) =>
      new Gauge({
        name,
        help,
        registers: [r],
        async collect() {
          this.set(await read());
        },
      });
    // The hub's counters are the truth; each scrape copies them in.
    const counter = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers: [r],
        collect() {
          this.reset();
          this.inc(read());
        },
      });

    new Gauge({ name: 'sidecar_info', help: 'Always 1; labels say which sidecar this is.', labelNames: ['version'], registers: [r] }).set(
      { version: VERSION },
      1,
    );
    gauge('sidecar_start_time_seconds', 'When this instance started, seconds since the epoch.', () => deps.startedAt / 1000);
    gauge('sidecar_connections', 'Open WebSocket connections (authenticated or not).', () => hub.connections.size);
    gauge('sidecar_authenticated_connections', 'Authenticated WebSocket connections.', () => this.scan.authenticated);
    gauge('sidecar_users', 'Distinct users connected to this instance.', () => this.scan.users);
    gauge('sidecar_projects', 'Projects with at least one subscriber on this instance.', () => hub.projectCount);
    gauge(
      'sidecar_connections_with_errors',
      'Connections that were sent at least one error in the current window.',
      () => this.scan.withErrors,
    );
    gauge('sidecar_active_limiters', 'Outbound pacing limiters alive (connections over their burst).', () => hub.pacer.activeLimiters);
    gauge('sidecar_nats_connected', '1 while the NATS connection is up.', () => (broker.connected ? 1 : 0));
    gauge('sidecar_offline_messages', 'Direct messages held for users (offline inbox).', async () => (await this.offline()).total_messages);
    gauge('sidecar_offline_users', 'Users with direct messages held.', async () => (await this.offline()).users_with_messages);
    gauge('sidecar_process_resident_memory_bytes', 'Resident set size.', () => process.memoryUsage.rss());
    gauge('sidecar_process_heap_used_bytes', 'V8 heap in use.', () => process.memoryUsage().heapUsed);

    const s = hub.stats;
    counter('sidecar_connections_total', 'WebSocket connections accepted.', () => s.totalConnections);
    counter('sidecar_messages_sent_total', 'Frames written to clients.', () => s.messagesSent);
    counter('sidecar_messages_received_total', 'Frames received from clients.', () => s.messagesReceived);
    counter('sidecar_broadcasts_sent_total', 'Broadcast events routed to local connections.', () => s.broadcastsSent);
    counter('sidecar_events_routed_total', 'Events routed to at least one local subscriber.', () => s.eventsRouted);
    counter('sidecar_errors_sent_total', 'Error frames sent to clients.', () => s.errorsSent);
    counter('sidecar_rate_limited_total', 'Client requests refused by the inbound limiter.', () => s.rateLimited);
    counter('sidecar_slow_consumers_total', 'Connections closed as slow consumers.', () => s.slowConsumers);
    const b = broker.stats;
    counter('sidecar_nats_events_received_total', 'Live events received from NATS.', () => b.eventsReceived);
    counter('sidecar_nats_events_invalid_total', 'Live events dropped as invalid.', () => b.eventsInvalid);
    counter('sidecar_nats_reconnects_total', 'Reconnections to NATS.', () => b.reconnects);
    counter('sidecar_gaps_total', 'Gaps detected in live event sequences.', () => b.gaps);
    counter('sidecar_events_recovered_total', 'Events read back from the stream by gap repairs.', () => b.eventsRecovered);
    counter('sidecar_history_lost_total', 'Gaps the stream could no longer fill (clients told history_truncated).', () => b.historyLost);
    gauge('sidecar_stream_ready', '1 while the JetStream stream exists with its configured settings.', () => (broker.streamReady ? 1 : 0));

    const p = deps.presence?.stats;
    const zero = () => 0;
    counter('sidecar_presence_joined_total', 'user_joined events published by this instance.', p ? () => p.joined : zero);
    counter('sidecar_presence_left_total', 'user_left events published by this instance.', p ? () => p.left : zero);
    counter('sidecar_presence_sweeps_total', 'Sweeps for dead instances run by this instance.', p ? () => p.sweeps : zero);
    counter('sidecar_presence_failures_total', 'Presence updates or events that failed (retried).', p ? () => p.failures : zero);
    const l = deps.lifecycle?.stats;
    counter('sidecar_lifecycle_events_total', 'Lifecycle events stored (connected, disconnected, subscribed, unsubscribed).', l ? () => l.published : zero);
    counter('sidecar_lifecycle_instance_lost_total', "Dead instances' connections announced as disconnected (instance_lost) by this instance.", l ? () => l.lost : zero);
    counter('sidecar_lifecycle_dropped_total', 'Connections not announced because the lifecycle queue was full.', l ? () => l.dropped : zero);
    counter('sidecar_lifecycle_failures_total', 'Lifecycle publishes that failed (retried).', l ? () => l.failures : zero);
    gauge('sidecar_lifecycle_pending', 'Lifecycle events waiting to be stored.', l ? () => l.pending : zero);

    const uploadsStarted = new Counter({ name: 'sidecar_uploads_started_total', help: 'File uploads started.', registers: [r] });
    const uploadsCompleted = new Counter({ name: 'sidecar_uploads_completed_total', help: 'File uploads completed.', registers: [r] });
    const uploadsFailed = new Counter({ name: 'sidecar_uploads_failed_total', help: 'File uploads that failed or were refused.', registers: [r] });
    const uploadBytes = new Counter({ name: 'sidecar_upload_bytes_total', help: 'Bytes of completed uploads.', registers: [r] });
    this.uploads = {
      started: () => uploadsStarted.inc(),
      completed: (bytes) => {
        uploadsCompleted.inc();
        uploadBytes.inc(bytes);
      },
      failed: () => uploadsFailed.inc(),
    };

    this.latency = new Histogram({
      name: 'sidecar_delivery_latency_seconds',
      help: 'From an event arriving from NATS to the end of the write that sent it to local sockets (fast path).',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: [r],
    });
    this.loopLag = new Histogram({
      name: 'sidecar_event_loop_lag_seconds',
      help: `How late a ${LAG_PROBE_MS} ms timer fires: time the event loop was busy.`,
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [r],
    });
    let expected = performance.now() + LAG_PROBE_MS;
    this.lagTimer = setInterval(() => {
      const now = performance.now();
      this.lastLagMs = Math.max(0, now - expected);
      expected = now + LAG_PROBE_MS;
      this.loopLag.observe(this.lastLagMs / 1000);
    }, LAG_PROBE_MS);
    this.lagTimer.unref();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Prometheus text exposition format. */
  text(): Promise<string> {
    this.scan = scanConnections(this.deps.hub);
    return this.registry.metrics();
  }

  /** The same series as objects (prom-client's JSON), for merging several workers' (src/workers.ts). */
  json(): ReturnType<Registry['getMetricsAsJSON']> {
    this.scan = scanConnections(this.deps.hub);
    return this.registry.getMetricsAsJSON();
  }

  /**
   * Wrap the route from broker to hub to time deliveries: one sample per event that reached a
   * local subscriber, taken after the hub's flush for the tick (the flush is scheduled with
   * setImmediate during routing, so ours runs after it).
   */
  timeDelivery(route: (topic: Topic, event: StoredEvent) => number): EventSink {
    let arrivals: number[] = [];
    const observe = () => {
      const now = performance.now();
      for (const t of arrivals) this.latency.observe((now - t) / 1000);
      arrivals = [];
    };
    return (topic, event) => {
      const arrived = performance.now();
      if (route(topic, event) > 0 && arrivals.push(arrived) === 1) setImmediate(observe);
    };
  }

  /** This instance's numbers in the Go package's JSON shape (offline numbers are added by the caller). */
  snapshot(): InstanceMetrics {
    const { hub, broker, startedAt } = this.deps;
    const s = hub.stats;
    const b = broker.stats;
    const scan = scanConnections(hub);
    const memory = process.memoryUsage();
    return {
      hub: {
        active_connections: hub.connections.size,
        authenticated_connections: scan.authenticated,
        total_connections: s.totalConnections,
        messages_sent: s.messagesSent,
        messages_received: s.messagesReceived,
        broadcasts_sent: s.broadcastsSent,
        events_routed: s.eventsRouted,
        slow_consumers: s.slowConsumers,
        users: scan.users,
        projects: hub.projectCount,
      },
      middleware: {
        rate_limiter: {
          active_limiters: hub.pacer.activeLimiters,
          requests_per_second: hub.config.requestsPerSecond,
          burst_size: hub.config.burstSize,
          rate_limited: s.rateLimited,
        },
        error_handler: {
          connections_with_errors: scan.withErrors,
          total_errors: s.errorsSent,
          max_errors: hub.config.maxErrors,
        },
      },
      nats: {
        connected: broker.connected,
        stream_ready: broker.streamReady,
        events_received: b.eventsReceived,
        events_invalid: b.eventsInvalid,
        reconnects: b.reconnects,
        gaps: b.gaps,
      },
      process: {
        uptime_seconds: Math.round((Date.now() - startedAt) / 1000),
        rss_bytes: memory.rss,
        heap_used_bytes: memory.heapUsed,
        event_loop_lag_ms: Math.round(this.lastLagMs * 10) / 10,
      },
    };
  }

  close(): void {
    clearInterval(this.lagTimer);
  }
}
