/**
 * Exactly-once bookkeeping for the fault scenarios: what the publisher had confirmed by JetStream
 * (per stream: a project or a user's direct messages, numbered 1, 2, 3, ... in publish order) and
 * what each app (a client SDK instance) handed to its listeners. Lost, duplicated and out-of-order
 * deliveries are counted, not just detected.
 *
 * Store loss (NATS restarted without its store: `storeLost()`): events confirmed before it that an
 * app never got are excused only if the app was told afterwards (`history_truncated`, or a
 * `subscribed` with `truncated: true` or another `epoch`, CONTRACT section 5); each such notice
 * starts a new segment of the app's copy of the stream, and order (seq strictly increasing,
 * publish order) is checked within a segment. An event seen again in a later segment is a replay
 * after the app was told to refetch (counted, not a duplicate). Notices are read from the frames
 * the SDK receives, so the check works with the SDK before and after it learnt epochs.
 */
import type { Client } from '../../../src/client/index.js';
import { PublishError, type Publisher } from '../../../src/publisher/index.js';

/** `project:<id>` or `user:<id>`. */
export type StreamKey = string;

interface Received {
  n: number;
  seq: number;
  segment: number;
}

interface App {
  streams: StreamKey[];
  got: Map<StreamKey, number[]>;
  gotSet: Map<StreamKey, Set<number>>;
  /** Per stream: index into `published` below which every event was delivered (or excused). */
  cursor: Map<StreamKey, number>;
  /** Per stream: the highest number delivered. */
  newest: Map<StreamKey, number>;
  /** Every delivery with its seq and the segment (epoch, or span between notices) it came in. */
  recv: Map<StreamKey, Received[]>;
  segment: Map<StreamKey, number>;
  epoch: Map<StreamKey, string>;
  /** Per stream: the store generation current when the app was last told of truncation. */
  toldGen: Map<StreamKey, number>;
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

/** What store loss (and epochs) add to the figures; all 0 when the store was never lost. */
export interface StoreLossFigures {
  stores_lost: number;
  /** Distinct epochs the apps saw in auth_success / subscribed / history_truncated. */
  epochs_seen: number;
  /** Frames telling an app history is gone (history_truncated, subscribed truncated:true or with a new epoch). */
  truncation_notices: number;
  /** `history_truncated` events the SDK handed the app. */
  sdk_truncation_events: number;
  /** Project events never delivered, confirmed before a store loss the app was told about afterwards. */
  lost_but_told: number;
  /** Direct messages never delivered, confirmed before a store loss (the inbox went with the store). */
  direct_lost_with_store: number;
  /** Events delivered again in a later segment (after the app was told to refetch). */
  replayed_after_truncation: number;
  /** A project event's seq not above the last one in the same segment. */
  seq_out_of_order: number;
  /** Publishes that failed while the stream did not exist after a store loss: not published, not lost. */
  not_published_store_missing: number;
  /** Published twice because the store (and its Nats-Msg-Id window) was lost between attempts. */
  stored_twice_across_wipe: number;
}

export class DeliveryLedger {
  /** Confirmed (acked by JetStream) numbers per stream, in publish order. */
  readonly published = new Map<StreamKey, number[]>();
  /** Publishes that failed for good: they may or may not be stored. */
  readonly failed = new Map<StreamKey, number[]>();
  /** Failed publishes after a store loss, while the stream did not exist (a "no responders" answer). */
  readonly notPublished = new Map<StreamKey, number[]>();
  private readonly apps = new Map<string, App>();
  private readonly next = new Map<StreamKey, number>();
  /** Incremented by storeLost(); each confirmed event is tagged with the generation it was stored in. */
  private generation = 0;
  private readonly genOf = new Map<StreamKey, Map<number, number>>();
  /** When each event was confirmed, for how far behind an app is. */
  private readonly confirmedAt = new Map<StreamKey, Map<number, number>>();
  /** Events whose publish attempts spanned a store loss (the dedupe window went with it). */
  private readonly spanning = new Set<string>();
  private readonly epochs = new Set<string>();
  private notices = 0;
  private sdkNotices = 0;

  /** NATS lost its store (call when the server is killed, before it comes back empty). */
  storeLost(): void {
    this.generation += 1;
  }

  get storesLost(): number {
    return this.generation;
  }

  /** Record what `client` hands its app for `streams` (its projects, and `user:<id>` for its direct messages). */
  watch(name: string, client: Client, streams: StreamKey[]): void {
    const app: App = {
      streams,
      got: new Map(streams.map((s) => [s, []])),
      gotSet: new Map(streams.map((s) => [s, new Set()])),
      cursor: new Map(),
      newest: new Map(),
      recv: new Map(streams.map((s) => [s, []])),
      segment: new Map(),
      epoch: new Map(),
      toldGen: new Map(),
    };
    this.apps.set(name, app);
    const userKey = streams.find((s) => s.startsWith('user:'));
    client.on('event', (e) => {
      const data = e.data as { n?: unknown; task?: { n?: unknown } };
      const key = e.project_id !== undefined ? `project:${e.project_id}` : `user:${(data as { user?: string }).user}`;
      const n = e.project_id !== undefined ? data.task?.n : data.n;
      if (typeof n !== 'number') return; // presence events and anything else not ours
      app.got.get(key)?.push(n);
      app.gotSet.get(key)?.add(n);
      app.newest.set(key, Math.max(app.newest.get(key) ?? 0, n));
      app.recv.get(key)?.push({ n, seq: e.seq, segment: app.segment.get(key) ?? 0 });
    });
    // Frames, before the SDK handles them: what the server told the app, whatever the SDK makes of it.
    client.on('message', (m) => this.onFrame(app, userKey, m));
    client.on('history_truncated', () => {
      this.sdkNotices += 1;
    });
  }

  private onFrame(app: App, userKey: StreamKey | undefined, m: { type: string; data?: unknown }): void {
    const data = (m.data && typeof m.data === 'object' ? m.data : {}) as Record<string, unknown>;
    const epoch = typeof data.epoch === 'string' ? data.epoch : undefined;
    if (epoch) this.epochs.add(epoch);
    const told = (key: StreamKey) => {
      this.notices += 1;
      app.segment.set(key, (app.segment.get(key) ?? 0) + 1);
      app.toldGen.set(key, this.generation);
    };
    if (m.type === 'subscription' && data.action === 'subscribed' && typeof data.project_id === 'string') {
      const key = `project:${data.project_id}`;
      const before = app.epoch.get(key);
      if (data.truncated === true || (epoch !== undefined && before !== undefined && epoch !== before)) told(key);
      if (epoch !== undefined) app.epoch.set(key, epoch);
    } else if (m.type === 'history_truncated') {
      const key = data.scope === 'user' ? userKey : typeof data.project_id === 'string' ? `project:${data.project_id}` : undefined;
      if (key) told(key);
      if (key && epoch !== undefined) app.epoch.set(key, epoch);
    }
  }

  /**
   * How long ago the oldest confirmed event `name` has not got yet (and is not excused from) was
   * confirmed, ms; 0 when it has everything. An app that stopped receiving shows a growing lag.
   * On a user's stream only events after the newest one it got count: a direct message a killed
   * instance held comes back on the user's next connection (PROTOCOL.md), not while it is alive.
   */
  lagMs(name: string, now = Date.now()): number {
    const app = this.apps.get(name);
    if (!app) return 0;
    let lag = 0;
    for (const key of app.streams) {
      const list = this.published.get(key) ?? [];
      const got = app.gotSet.get(key)!;
      const newest = key.startsWith('user:') ? (app.newest.get(key) ?? 0) : 0;
      let i = app.cursor.get(key) ?? 0;
      while (i < list.length && (list[i] <= newest || got.has(list[i]) || this.excuse(app, key, list[i]))) i += 1;
      app.cursor.set(key, i);
      if (i < list.length) lag = Math.max(lag, now - (this.confirmedAt.get(key)?.get(list[i]) ?? now));
    }
    return lag;
  }

  /** Why a confirmed event an app never got does not count as lost, if it does not. */
  private excuse(app: App, key: StreamKey, n: number): 'told' | 'store' | undefined {
    const gen = this.genOf.get(key)?.get(n) ?? 0;
    if (gen >= this.generation) return undefined;
    if (key.startsWith('user:')) return 'store';
    return gen < (app.toldGen.get(key) ?? 0) ? 'told' : undefined;
  }

  /**
   * Publish the next number on a stream (a project's task_created, or a user's direct_message).
   * The publisher SDK retries with backoff; past its attempts, the publish is tried again with the
   * same Nats-Msg-Id (so it is stored once) every 250 ms, as a backend would, for up to a minute.
   */
  async publishNext(pub: Publisher, key: StreamKey, deadlineMs = 60_000): Promise<void> {
    const n = (this.next.get(key) ?? 0) + 1;
    this.next.set(key, n);
    const [kind, id] = key.split(':');
    const msgId = `${kind}-${id}-${n}`;
    const started = Date.now();
    const deadline = started + deadlineMs;
    const genAtStart = this.generation;
    for (;;) {
      try {
        if (kind === 'project') await pub.notifyTaskCreated({ id: `t${n}`, n }, id, { msgId });
        else await pub.sendDirectMessage(id, 'direct_message', { n, user: id }, { msgId });
        push(this.published, key, n);
        let gens = this.genOf.get(key);
        if (!gens) this.genOf.set(key, (gens = new Map()));
        gens.set(n, this.generation);
        let times = this.confirmedAt.get(key);
        if (!times) this.confirmedAt.set(key, (times = new Map()));
        times.set(n, Date.now());
        if (this.generation !== genAtStart) this.spanning.add(`${key}#${n}`);
        this.longestPublishMs = Math.max(this.longestPublishMs, Date.now() - started);
        return;
      } catch (err) {
        if (!(err instanceof PublishError)) throw err;
        if (Date.now() > deadline) {
          // After a store loss, until the stream exists again, JetStream has no one to answer.
          const storeMissing = this.generation > 0 && /no responders|503|stream not found|jetstream is not enabled/i.test(String((err as Error).message));
          push(storeMissing ? this.notPublished : this.failed, key, n);
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
        for (const m of this.published.get(key) ?? []) if (!got.has(m) && !this.excuse(app, key, m)) n += 1;
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
        const miss = (this.published.get(key) ?? []).filter((n) => !got.has(n) && !this.excuse(app, key, n));
        if (miss.length) out.push(`${name} ${key}: missing ${miss.slice(0, 8).join(',')}${miss.length > 8 ? ` (+${miss.length - 8})` : ''}`);
        if (out.length >= limit) return out;
      }
    }
    return out;
  }

  /** Filled by figures(), alongside the delivery figures. */
  private storeLoss: StoreLossFigures = emptyStoreLoss();

  /** What store loss and epochs added, as of the last figures(). */
  storeLossFigures(): StoreLossFigures {
    return { ...this.storeLoss };
  }

  figures(): DeliveryFigures {
    let notPublished = 0;
    for (const list of this.notPublished.values()) notPublished += list.length;
    this.storeLoss = {
      ...emptyStoreLoss(),
      stores_lost: this.generation,
      epochs_seen: this.epochs.size,
      truncation_notices: this.notices,
      sdk_truncation_events: this.sdkNotices,
      not_published_store_missing: notPublished,
    };
    let expected = 0;
    let received = 0;
    let lost = 0;
    let duplicated = 0;
    let outOfOrder = 0;
    let directLate = 0;
    for (const app of this.apps.values()) {
      for (const key of app.streams) {
        const confirmed = this.published.get(key) ?? [];
        const got = app.recv.get(key) ?? [];
        expected += confirmed.length;
        received += got.length;
        /** n -> the segment it was first seen in. */
        const seen = new Map<number, number>();
        let segment = 0;
        let max = 0;
        let lastSeq = 0;
        for (const { n, seq, segment: seg } of got) {
          if (seg !== segment) {
            segment = seg;
            max = 0;
            lastSeq = 0;
          }
          const first = seen.get(n);
          if (first !== undefined) {
            if (first !== seg) this.storeLoss.replayed_after_truncation += 1;
            else if (this.spanning.has(`${key}#${n}`)) this.storeLoss.stored_twice_across_wipe += 1;
            else duplicated += 1;
            continue;
          }
          seen.set(n, seg);
          if (n < max) {
            // Order is promised per project; a user's direct messages are in order per connection,
            // so one held back by a crash comes after newer ones (on the next connection).
            if (key.startsWith('project:')) outOfOrder += 1;
            else directLate += 1;
          }
          if (key.startsWith('project:') && seq <= lastSeq) this.storeLoss.seq_out_of_order += 1;
          max = Math.max(max, n);
          lastSeq = Math.max(lastSeq, seq);
        }
        for (const n of confirmed) {
          if (seen.has(n)) continue;
          const why = this.excuse(app, key, n);
          if (why === 'told') this.storeLoss.lost_but_told += 1;
          else if (why === 'store') this.storeLoss.direct_lost_with_store += 1;
          else lost += 1;
        }
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

function emptyStoreLoss(): StoreLossFigures {
  return {
    stores_lost: 0,
    epochs_seen: 0,
    truncation_notices: 0,
    sdk_truncation_events: 0,
    lost_but_told: 0,
    direct_lost_with_store: 0,
    replayed_after_truncation: 0,
    seq_out_of_order: 0,
    not_published_store_missing: 0,
    stored_twice_across_wipe: 0,
  };
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
