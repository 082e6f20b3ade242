/**
 * Lifecycle events for backends: `<prefix>.lifecycle.connected / disconnected / subscribed /
 * unsubscribed`, stored in their own JetStream stream so a backend consumes them durably.
 *
 * Exactly one `disconnected` per `connected`, even when the instance dies:
 * - Every announced connection has a record in the KV bucket `<lifecycleBucket>`, key
 *   `<member>.<connection_id>`, where `<member>` is this instance's presence member id
 *   (nats/presence.ts heartbeats it). Each member also has a marker key `<member>`, so a sweep
 *   lists the members with records (subjects `*.*`) without listing every connection.
 * - The record is written before `connected` is published; `disconnected` is published before
 *   the record is deleted. So a crash at any point leaves a record for every connection whose
 *   `disconnected` may be missing.
 * - The presence sweep (the smallest live member) finds markers of dead members and announces
 *   each of their records with `reason: instance_lost`, then deletes it and the marker.
 * - Every `disconnected` has `Nats-Msg-Id: disconnected-<connection_id>`: two survivors sweeping
 *   at once, or a sweeper that died between publish and delete and is swept in turn, store the
 *   event once (within the stream's duplicate window, 2 min).
 *
 * Publishing is off the hot path: the hub's calls queue work per connection (its events stay in
 * order) and at most MAX_IN_FLIGHT JetStream requests run at once. A failed request is retried
 * with a backoff; with NATS out of reach the events wait (up to MAX_PENDING queued tasks; past
 * that new connections are not announced at all, counted in `dropped`, so no `disconnected`
 * ever comes without its `connected`).
 */
import { DiscardPolicy, JetStreamApiError, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { LifecyclePort } from '../core/ports.js';
import type { JsPublisher } from './js-publisher.js';

export type LifecycleConfig = Pick<
  Config,
  | 'subjectPrefix'
  | 'lifecycleStream'
  | 'lifecycleMaxAge'
  | 'lifecycleMaxMessages'
  | 'lifecycleMaxBytes'
  | 'lifecycleBucket'
  | 'streamReplicas'
>;

/** What the lifecycle needs of presence: the member id it heartbeats, and its sweep. */
export interface LifecyclePresence {
  readonly member: string;
  addSweeper(sweeper: (alive: ReadonlySet<string>, isDead: (member: string) => Promise<boolean>) => Promise<void>): void;
  onReregistered(listener: (expired: string, member: string) => Promise<void>): void;
}

export interface LifecycleOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  config: LifecycleConfig;
  instanceId: string;
  log: Logger;
  presence: LifecyclePresence;
  /** The broker's batched JetStream writer: records, events and record removals go through it. */
  publisher: JsPublisher;
}

export interface LifecycleStats {
  published: number;
  /** Connections of dead instances announced with `instance_lost` by this instance. */
  lost: number;
  /** Connections not announced because the queue was full. */
  dropped: number;
  failures: number;
  pending: number;
}

/** WebSocket's "closed abnormally": what a client of a dead instance saw. */
export const INSTANCE_LOST_CODE = 1006;
const MAX_IN_FLIGHT = 256;
const MAX_PENDING = 100_000;
const SWEEP_PARALLEL = 64;
const NANOS_PER_MS = 1_000_000;
const DUPLICATE_WINDOW_MS = 2 * 60_000;
/** How long a stop waits for queued events; what is left is announced by the fleet (instance_lost). */
const STOP_WAIT_MS = 2_000;

interface Rec {
  readonly userId: string;
  member: string;
  /** The record's revision (its stream sequence) once written; 0 before. */
  revision: number;
  /** The last task queued for this connection: the next one runs after it. */
  tail: Promise<void>;
  /** Subscribe events sent, for their message ids. */
  n: number;
  /** The fleet announced this connection lost (this instance was cut off): nothing more is said. */
  lost: boolean;
}

/** A publish nobody stored, or a stream that is gone: the storage needs creating again. */
function isNoStream(err: unknown): boolean {
  // nats.js wraps "no responders" as `JetStreamNotEnabled` with the original as its cause.
  for (let e = err as Error | undefined, depth = 0; e && depth < 5; e = e.cause as Error | undefined, depth++) {
    if (/no responders|stream not found|jetstream is not enabled|503/i.test(e.message ?? '')) return true;
  }
  return false;
}

export class NatsLifecycle implements LifecyclePort {
  readonly stats: LifecycleStats = { published: 0, lost: 0, dropped: 0, failures: 0, pending: 0 };
  private readonly records = new Map<string, Rec>();
  private inFlight = 0;
  private readonly waiting: (() => void)[] = [];
  private stopped = false;
  /** Set when a stop gave up waiting: retries end, the records left behind are the fleet's to sweep. */
  private abandoned = false;
  private markerMember = '';
  private readonly drainWaiters: (() => void)[] = [];

  private constructor(
    private readonly options: LifecycleOptions,
    private readonly kv: KV,
  ) {}

  static async start(options: LifecycleOptions): Promise<NatsLifecycle> {
    const kv = await ensureStorage(options);
    const lifecycle = new NatsLifecycle(options, kv);
    // Seen under load with two instances starting at once: the first write right after the
    // bucket's creation can find no stream yet. Look again before giving up.
    for (let attempt = 1; ; attempt++) {
      try {
        await lifecycle.writeMarker(options.presence.member);
        break;
      } catch (err) {
        if (!isNoStream(err) || attempt >= 5) throw err;
        await new Promise((r) => setTimeout(r, 100 * attempt));
        await ensureStorage(options);
      }
    }
    options.presence.addSweeper((alive, isDead) => lifecycle.sweep(alive, isDead));
    options.presence.onReregistered((expired, member) => lifecycle.moveTo(expired, member));
    return lifecycle;
  }

  private get log(): Logger {
    return this.options.log;
  }

  private subject(kind: string): string {
    return `${this.options.config.subjectPrefix}.lifecycle.${kind}`;
  }

  private get bucketStream(): string {
    return `KV_${this.options.config.lifecycleBucket}`;
  }

  // ---- the port -----------------------------------------------------------------------------

  connected(connectionId: string, userId: string): void {
    if (this.stopped) return;
    if (this.stats.pending >= MAX_PENDING) {
      this.stats.dropped += 1;
      if (this.stats.dropped === 1 || this.stats.dropped % 1000 === 0) {
        this.log.warn({ dropped: this.stats.dropped }, 'lifecycle queue full (NATS slow or away): connections not announced');
      }
      return;
    }
    const rec: Rec = { userId, member: this.options.presence.member, revision: 0, tail: Promise.resolve(), n: 0, lost: false };
    this.records.set(connectionId, rec);
    const data = this.baseData(connectionId, userId);
    this.enqueue(rec, async () => {
      // The record first: whoever finds it later owes this connection its `disconnected`.
      if (rec.revision === 0) rec.revision = await this.options.publisher.kvPut(this.options.config.lifecycleBucket, `${rec.member}.${connectionId}`, JSON.stringify(data));
      await this.publish('connected', data, `connected-${connectionId}`);
    });
  }

  disconnected(connectionId: string, userId: string, code: number, reason: string): void {
    const rec = this.records.get(connectionId);
    if (!rec) return; // never announced
    this.records.delete(connectionId);
    this.enqueue(rec, async () => {
      if (rec.lost) return;
      await this.publish('disconnected', { ...this.baseData(connectionId, userId), code, reason }, `disconnected-${connectionId}`);
      if (rec.revision !== 0) await this.deleteKey(`${rec.member}.${connectionId}`);
    });
  }

  subscribed(connectionId: string, userId: string, projectId: string): void {
    this.projectEvent('subscribed', connectionId, userId, projectId);
  }

  unsubscribed(connectionId: string, userId: string, projectId: string): void {
    this.projectEvent('unsubscribed', connectionId, userId, projectId);
  }

  private projectEvent(kind: 'subscribed' | 'unsubscribed', connectionId: string, userId: string, projectId: string): void {
    const rec = this.records.get(connectionId);
    if (!rec) return;
    const id = `${kind}-${connectionId}-${++rec.n}`;
    const data = { ...this.baseData(connectionId, userId), project_id: projectId };
    this.enqueue(rec, async () => {
      if (!rec.lost) await this.publish(kind, data, id);
    });
  }

  private baseData(connectionId: string, userId: string) {
    return { user_id: userId, connection_id: connectionId, instance_id: this.options.instanceId };
  }

  /** Resolves once every queued event has been published or given up (shutdown, tests). */
  settled(): Promise<void> {
    if (this.stats.pending === 0) return Promise.resolve();
    return new Promise((ok) => this.drainWaiters.push(ok));
  }

  /**
   * After the hub closed its connections: publish their `disconnected`, then remove the marker.
   * With NATS away this gives up after STOP_WAIT_MS: the records of what was not announced stay,
   * and the fleet announces those connections (instance_lost) once this instance's heartbeat is gone.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    let timer: NodeJS.Timeout | undefined;
    const waited = await Promise.race([
      this.settled().then(() => true),
      new Promise<boolean>((ok) => (timer = setTimeout(() => ok(false), STOP_WAIT_MS))),
    ]);
    clearTimeout(timer);
    if (!waited) {
      this.abandoned = true;
      this.log.warn({ pending: this.stats.pending }, 'lifecycle events not stored before shutdown: the fleet will announce those connections');
      return;
    }
    if (this.records.size === 0 && !this.options.nc.isClosed()) await this.purgeMarker(this.markerMember).catch(() => {});
  }

  // ---- the queue ----------------------------------------------------------------------------

  private enqueue(rec: Rec, task: () => Promise<void>): void {
    this.stats.pending += 1;
    rec.tail = rec.tail.then(() => this.run(task));
  }

  private async run(task: () => Promise<void>): Promise<void> {
    if (this.inFlight >= MAX_IN_FLIGHT) await new Promise<void>((ok) => this.waiting.push(ok));
    this.inFlight += 1;
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          await task();
          return;
        } catch (err) {
          this.stats.failures += 1;
          if (this.options.nc.isClosed() || this.abandoned) {
            this.log.error({ err }, 'NATS closed: a lifecycle event was not published');
            return;
          }
          // NATS lost its store, or an operator deleted the stream or bucket: create them again.
          if (isNoStream(err)) {
            await ensureStorage(this.options)
              .then(() => this.writeMarker(this.markerMember))
              .catch((e: unknown) => this.log.warn({ err: e }, 'could not create the lifecycle stream or bucket; retrying'));
          }
          if (attempt === 1 || attempt % 10 === 0) this.log.warn({ err, attempt }, 'lifecycle event not published yet; retrying');
          await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** Math.min(attempt, 6))));
        }
      }
    } finally {
      this.inFlight -= 1;
      this.waiting.shift()?.();
      this.stats.pending -= 1;
      if (this.stats.pending === 0) for (const ok of this.drainWaiters.splice(0)) ok();
    }
  }

  private async publish(kind: string, data: Record<string, unknown>, msgId: string): Promise<void> {
    const payload = JSON.stringify({ type: kind, data, timestamp: new Date().toISOString(), message_id: msgId });
    const h = natsHeaders();
    h.set('Nats-Msg-Id', msgId);
    await this.options.publisher.publish(this.subject(kind), payload, h);
    this.stats.published += 1;
  }

  /**
   * Remove a key with no marker left behind (KV buckets deny deleting a message by sequence, and
   * a delete marker per connection ever opened would pile up). Keys are never reused.
   */
  private async deleteKey(key: string): Promise<void> {
    const filter = `$KV.${this.options.config.lifecycleBucket}.${key}`;
    const msg = await this.options.publisher.request(`$JS.API.STREAM.PURGE.${this.bucketStream}`, JSON.stringify({ filter }));
    const answer = JSON.parse(msg.string()) as { error?: ConstructorParameters<typeof JetStreamApiError>[0] };
    if (answer.error) throw new JetStreamApiError(answer.error);
  }

  private async writeMarker(member: string): Promise<void> {
    this.markerMember = member;
    await this.kv.put(member, JSON.stringify({ instance_id: this.options.instanceId, started_at: new Date().toISOString() }));
  }

  private purgeMarker(member: string): Promise<void> {
    return this.deleteKey(member);
  }

  // ---- dead instances -----------------------------------------------------------------------

  /**
   * Run by the presence sweep: announce every connection of every dead member, then forget it.
   * Safe to run on two instances at once (the message id stores each announcement once).
   */
  async sweep(alive: ReadonlySet<string>, isDead: (member: string) => Promise<boolean>): Promise<void> {
    const prefix = `$KV.${this.options.config.lifecycleBucket}.`;
    const info = await this.options.jsm.streams.info(this.bucketStream, { subjects_filter: `${prefix}*.*` }).catch(async (err: unknown) => {
      if (!isNoStream(err)) throw err;
      // The bucket is gone (NATS lost its store, or an operator): nothing to sweep; create it again.
      await ensureStorage(this.options);
      await this.writeMarker(this.markerMember);
      return undefined;
    });
    if (!info) return;
    const { state } = info;
    const members = Object.keys(state.subjects ?? {}).map((s) => s.slice(prefix.length));
    for (const member of members) {
      if (alive.has(member) || member === this.options.presence.member) continue;
      if (!(await isDead(member))) continue;
      await this.announceLost(member);
    }
  }

  private async announceLost(member: string): Promise<void> {
    const prefix = `$KV.${this.options.config.lifecycleBucket}.${member}.`;
    const { state } = await this.options.jsm.streams.info(this.bucketStream, { subjects_filter: `${prefix}*` });
    const keys = Object.keys(state.subjects ?? {}).map((s) => s.slice(`$KV.${this.options.config.lifecycleBucket}.`.length));
    let n = 0;
    for (let i = 0; i < keys.length; i += SWEEP_PARALLEL) {
      const counts = await Promise.all(keys.slice(i, i + SWEEP_PARALLEL).map((key) => this.announceRecordLost(key)));
      for (const c of counts) n += c;
    }
    await this.purgeMarker(member);
    this.stats.lost += n;
    this.log.info({ member, connections: n }, 'announced the connections of a dead instance as disconnected (instance_lost)');
  }

  private async announceRecordLost(key: string): Promise<number> {
    const entry = await this.kv.get(key);
    if (entry?.operation !== 'PUT') return 0;
    let data: { user_id?: unknown; connection_id?: unknown; instance_id?: unknown };
    try {
      data = entry.json();
    } catch {
      data = {};
    }
    const connectionId = typeof data.connection_id === 'string' ? data.connection_id : key.slice(key.lastIndexOf('.') + 1);
    const event = {
      user_id: data.user_id ?? null,
      connection_id: connectionId,
      instance_id: data.instance_id ?? null,
      code: INSTANCE_LOST_CODE,
      reason: 'instance_lost',
    };
    // Publish, then delete: a sweeper that dies in between leaves the record for the next one,
    // whose publish the message id deduplicates.
    await this.publish('disconnected', event, `disconnected-${connectionId}`);
    await this.deleteKey(key);
    return 1;
  }

  /**
   * This instance's heartbeat had expired (NATS out of reach too long): the fleet may have
   * announced its connections lost. Move the records that are still there to the new member;
   * a connection whose record is gone was announced, and is not announced again.
   */
  private async moveTo(expired: string, member: string): Promise<void> {
    await this.writeMarker(member);
    for (const [connectionId, rec] of this.records) {
      if (rec.member !== expired) continue;
      rec.member = member;
      this.enqueue(rec, async () => {
        if (rec.lost || rec.revision === 0) return;
        const old = `${expired}.${connectionId}`;
        if ((await this.kv.get(old))?.operation !== 'PUT') {
          rec.lost = true;
          this.log.warn({ conn: connectionId }, 'connection was announced lost by the fleet while this instance was cut off');
          return;
        }
        await this.deleteKey(old);
        rec.revision = await this.kv.put(`${member}.${connectionId}`, JSON.stringify(this.baseData(connectionId, rec.userId)));
      });
    }
    await this.purgeMarker(expired).catch(() => {});
  }
}

/** The lifecycle stream and the connection records' bucket, created if missing. */
async function ensureStorage(options: LifecycleOptions): Promise<KV> {
  await ensureLifecycleStream(options.jsm, options.config, options.log);
  return new Kvm(options.js).create(options.config.lifecycleBucket, { history: 1, replicas: options.config.streamReplicas });
}

/** The lifecycle stream's configuration, from config. */
export function lifecycleStreamConfig(config: LifecycleConfig): Partial<StreamConfig> & { name: string } {
  return {
    name: config.lifecycleStream,
    subjects: [`${config.subjectPrefix}.lifecycle.*`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_age: config.lifecycleMaxAge * NANOS_PER_MS,
    max_msgs: config.lifecycleMaxMessages,
    max_bytes: config.lifecycleMaxBytes,
    num_replicas: config.streamReplicas,
    duplicate_window: Math.min(DUPLICATE_WINDOW_MS, config.lifecycleMaxAge) * NANOS_PER_MS,
  };
}

/** Create the lifecycle stream, or update its limits in place (like the main stream). */
export async function ensureLifecycleStream(jsm: JetStreamManager, config: LifecycleConfig, log: Logger): Promise<void> {
  const wanted = lifecycleStreamConfig(config);
  const existing = await jsm.streams.info(wanted.name).catch((err: Error) => {
    if (/not found/i.test(err.message)) return null;
    throw err;
  });
  if (!existing) {
    await jsm.streams.add(wanted);
    log.info({ stream: wanted.name, subjects: wanted.subjects }, 'created JetStream lifecycle stream');
    return;
  }
  const { storage: _storage, retention: _retention, ...mutable } = wanted;
  await jsm.streams.update(wanted.name, { ...existing.config, ...mutable });
}
