/**
 * Exactly-once bookkeeping for the fault scenarios: what the publisher had confirmed by JetStream
 * (per stream: a project or a user's direct messages, numbered 1, 2, 3, ... in publish order) and
 * what each app (a client SDK instance) handed to its listeners. Lost, duplicated and out-of-order
 * deliveries are counted, not just detected.
 */
import type { Client } from '../../../src/client/index.js';
import { PublishError, type Publisher } from '../../../src/publisher/index.js';

/** `project:<id>` or `user:<id>`. */
export type StreamKey = string;

interface App {
  streams: StreamKey[];
  got: Map<StreamKey, number[]>;
}

export interface DeliveryFigures {
  events_published: number;
  publish_failures: number;
  publish_retries_after_sdk_gave_up: number;
  longest_publish_ms: number;
  deliveries_expected: number;
  deliveries_received: number;
  lost: number;
  duplicated: number;
  /** Projects' events out of order (must be 0). */
  out_of_order: number;
  /** Direct messages that arrived after newer ones (a message held back by a crash, delivered on a later connection). */
  direct_after_newer: number;
}

export class DeliveryLedger {
  /** Confirmed (acked by JetStream) numbers per stream, in publish order. */
  readonly published = new Map<StreamKey, number[]>();
  /** Publishes that failed for good: they may or may not be stored. */
  readonly failed = new Map<StreamKey, number[]>();
  private readonly apps = new Map<string, App>();
  private readonly next = new Map<StreamKey, number>();

  /** Record what `client` hands its app for `streams` (its projects, and `user:<id>` for its direct messages). */
  watch(name: string, client: Client, streams: StreamKey[]): void {
    const app: App = { streams, got: new Map(streams.map((s) => [s, []])) };
    this.apps.set(name, app);
    client.on('event', (e) => {
      const data = e.data as { n?: unknown; task?: { n?: unknown } };
      const key = e.project_id !== undefined ? `project:${e.project_id}` : `user:${(data as { user?: string }).user}`;
      const n = e.project_id !== undefined ? data.task?.n : data.n;
      if (typeof n !== 'number') return; // presence events and anything else not ours
      app.got.get(key)?.push(n);
    });
  }

  /**
   * Publish the next number on a stream (a project's task_created, or a user's direct_message).
   * The publisher SDK retries with backoff; past its attempts, the publish is tried again with the
   * same Nats-Msg-Id (so it is stored once) every 250 ms, as a backend would, for up to a minute.
   */
  async publishNext(pub: Publisher, key: StreamKey): Promise<void> {
    const n = (this.next.get(key) ?? 0) + 1;
    this.next.set(key, n);
    const [kind, id] = key.split(':');
    const msgId = `${kind}-${id}-${n}`;
    const started = Date.now();
    const deadline = started + 60_000;
    for (;;) {
      try {
        if (kind === 'project') await pub.notifyTaskCreated({ id: `t${n}`, n }, id, { msgId });
        else await pub.sendDirectMessage(id, 'direct_message', { n, user: id }, { msgId });
        push(this.published, key, n);
        this.longestPublishMs = Math.max(this.longestPublishMs, Date.now() - started);
        return;
      } catch (err) {
        if (!(err instanceof PublishError)) throw err;
        if (Date.now() > deadline) {
          push(this.failed, key, n);
          return;
        }
        this.retries += 1;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  /** Publishes the SDK gave up on and this ledger tried again. */
  retries = 0;
  /** The longest time from a publish to JetStream's ack: how long the stream was unavailable. */
  longestPublishMs = 0;

  /** Every confirmed event has reached every app that follows its stream (of the apps and streams `only` accepts). */
  complete(only: (app: string, stream: StreamKey) => boolean = () => true): boolean {
    return this.missingCount(only) === 0;
  }

  /** Confirmed events not yet seen by the apps (and streams) `only` accepts. */
  missingCount(only: (app: string, stream: StreamKey) => boolean = () => true): number {
    let n = 0;
    for (const [name, app] of this.apps) {
      for (const key of app.streams) {
        if (!only(name, key)) continue;
        const got = new Set(app.got.get(key));
        for (const m of this.published.get(key) ?? []) if (!got.has(m)) n += 1;
      }
    }
    return n;
  }

  /** What is missing, for a failure message. */
  missing(limit = 10): string[] {
    const out: string[] = [];
    for (const [name, app] of this.apps) {
      for (const key of app.streams) {
        const got = new Set(app.got.get(key));
        const miss = (this.published.get(key) ?? []).filter((n) => !got.has(n));
        if (miss.length) out.push(`${name} ${key}: missing ${miss.slice(0, 8).join(',')}${miss.length > 8 ? ` (+${miss.length - 8})` : ''}`);
        if (out.length >= limit) return out;
      }
    }
    return out;
  }

  figures(): DeliveryFigures {
    let expected = 0;
    let received = 0;
    let lost = 0;
    let duplicated = 0;
    let outOfOrder = 0;
    let directLate = 0;
    for (const app of this.apps.values()) {
      for (const key of app.streams) {
        const confirmed = this.published.get(key) ?? [];
        const got = app.got.get(key) ?? [];
        expected += confirmed.length;
        received += got.length;
        const seen = new Set<number>();
        let max = 0;
        for (const n of got) {
          if (seen.has(n)) {
            duplicated += 1;
            continue;
          }
          seen.add(n);
          if (n < max) {
            // Order is promised per project; a user's direct messages are in order per connection,
            // so one held back by a crash comes after newer ones (on the next connection).
            if (key.startsWith('project:')) outOfOrder += 1;
            else directLate += 1;
          }
          max = Math.max(max, n);
        }
        for (const n of confirmed) if (!seen.has(n)) lost += 1;
      }
    }
    let published = 0;
    for (const list of this.published.values()) published += list.length;
    let failures = 0;
    for (const list of this.failed.values()) failures += list.length;
    return {
      events_published: published,
      publish_failures: failures,
      publish_retries_after_sdk_gave_up: this.retries,
      longest_publish_ms: this.longestPublishMs,
      deliveries_expected: expected,
      deliveries_received: received,
      lost,
      duplicated,
      out_of_order: outOfOrder,
      direct_after_newer: directLate,
    };
  }
}

function push(map: Map<StreamKey, number[]>, key: StreamKey, n: number): void {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  list.push(n);
}

/**
 * Publishes `perStream` events on every stream, each stream in its own sequential loop (so its
 * numbers are stored in order), `intervalMs` apart, and calls `at(k)` hooks once the k-th event of
 * the first stream is confirmed (to start a fault mid-stream).
 */
export async function publishAll(
  ledger: DeliveryLedger,
  pub: Publisher,
  streams: StreamKey[],
  perStream: number,
  intervalMs: number,
  hooks: { at: number; run: () => Promise<void> }[] = [],
): Promise<void> {
  const pending: Promise<void>[] = [];
  await Promise.all(
    streams.map(async (key, i) => {
      for (let k = 1; k <= perStream; k++) {
        await ledger.publishNext(pub, key);
        if (i === 0) for (const h of hooks) if (h.at === k) pending.push(h.run());
        if (intervalMs > 0) await new Promise((r) => setTimeout(r, intervalMs));
      }
    }),
  );
  await Promise.all(pending);
}
