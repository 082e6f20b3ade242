/**
 * The watched copy of the presence bucket: one watcher for the instance's lifetime keeps every
 * key's members and revision in memory, so queries and sweeps read memory and an update's
 * compare-and-set starts without a get. A stopped watcher is started again, and a bucket found
 * missing is created again, by `ensure` on each heartbeat.
 */
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { KV, KvEntry } from '@nats-io/kv';
import type { QueuedIterator } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { PresenceStats } from '../presence.js';
import { createBuckets, instancesStream, presenceKey, presenceStream, splitKey, streamExists, type PresenceConfig } from './buckets.js';

/** Deleted presence keys whose revision is remembered, so a user who comes back needs no get. */
const MAX_TOMBSTONES = 10_000;

export interface KnownKey {
  readonly members: readonly string[];
  readonly revision: number;
  /** A deleted key: when it was deleted (ms since the epoch), as far as this instance knows. */
  readonly deletedAt?: number;
}

export interface CopyOptions {
  js: JetStreamClient;
  jsm: JetStreamManager;
  config: PresenceConfig;
  log: Logger;
  stats: PresenceStats;
  /** The presence has stopped: a watcher ending now is not broken. */
  stopped(): boolean;
  /** The copy was rebuilt from the bucket's start (a sweep is due). */
  rewatched(): void;
}

/**
 * One shared array per single member, which nearly every key has: the copy holds an entry per
 * present user and project across the fleet, and each parsed value would otherwise bring its own
 * array and its own copy of the instance id.
 */
const singles = new Map<string, readonly string[]>();
function compact(members: readonly string[]): readonly string[] {
  if (members.length !== 1) return members;
  let shared = singles.get(members[0]);
  if (!shared) {
    if (singles.size >= 1024) singles.clear(); // instance ids come and go over deployments
    singles.set(members[0], (shared = Object.freeze([members[0]])));
  }
  return shared;
}

export function membersOf(entry: KvEntry | null): string[] {
  if (entry?.operation !== 'PUT') return [];
  try {
    const members = entry.json<{ members?: unknown }>().members;
    return Array.isArray(members) ? members.filter((m): m is string => typeof m === 'string') : [];
  } catch {
    return []; // unreadable: the next write replaces it
  }
}

export class WatchedCopy {
  /** Both buckets are known to exist (false from a disconnect until they are checked again). */
  bucketsReady = true;
  /** The watcher's iterator ended or threw: the next heartbeat starts a new one. */
  private watchBroken = false;
  /**
   * The presence bucket as last seen by the watcher (and as this instance wrote it): project ->
   * user -> members and the key's revision. The compare-and-set of an update starts from here
   * instead of a get: a stale copy only costs a failed CAS and a get, and a change is never
   * skipped on its word.
   */
  private readonly mirror = new Map<string, Map<string, KnownKey>>();
  /** Deleted keys and their last revision, as the watcher saw them. Bounded: oldest first. */
  private readonly tombstones = new Map<string, { revision: number; at: number }>();
  /** A tombstone was dropped: a key the copy does not know may exist after all. */
  private tombstonesEvicted = false;
  private watcher: QueuedIterator<KvEntry> | undefined;
  /** The watcher has delivered everything the bucket held when it started. */
  private isLoaded = false;

  constructor(
    private readonly options: CopyOptions,
    private readonly presence: KV,
  ) {}

  /** False while a bucket is missing or the copy is not being watched (readiness). */
  get ready(): boolean {
    return this.bucketsReady && !this.watchBroken;
  }

  /** Every key the bucket held when the watcher started has been seen (a sweep must see every key). */
  get loaded(): boolean {
    return this.isLoaded;
  }

  users(projectId: string): string[] {
    return [...(this.mirror.get(projectId)?.keys() ?? [])].sort();
  }

  /** Every present key and its members. */
  *entries(): Iterable<[key: string, members: readonly string[]]> {
    for (const [projectId, users] of this.mirror) {
      for (const [userId, { members }] of users) yield [presenceKey(projectId, userId), members];
    }
  }

  stop(): void {
    this.watcher?.stop();
  }

  async watch(): Promise<void> {
    const { state } = await this.options.jsm.streams.info(presenceStream(this.options.config));
    // Loaded once the watcher reaches what the bucket held now (a sweep must see every key).
    const loadedAt = state.messages > 0 ? state.last_seq : 0;
    this.isLoaded = loadedAt === 0;
    const watcher = await this.presence.watch();
    this.watcher = watcher;
    this.watchBroken = false;
    void (async () => {
      for await (const entry of watcher) {
        if (this.watcher !== watcher) break;
        this.remember(entry.key, entry.revision, membersOf(entry), entry.created.getTime());
        if (entry.revision >= loadedAt) this.isLoaded = true;
      }
    })()
      .catch((err: unknown) => this.options.log.warn({ err }, 'presence watcher failed'))
      .finally(() => {
        // Its copy would go stale, and sweeps wait for a loaded copy: the next tick watches again.
        if (this.watcher !== watcher || this.options.stopped()) return;
        this.watchBroken = true;
        this.options.log.warn('presence watcher stopped: starting it again at the next heartbeat');
      });
  }

  /** Forget the watched copy and watch the bucket again from its start. */
  private async rewatch(): Promise<void> {
    this.watcher?.stop();
    this.watcher = undefined;
    this.mirror.clear();
    this.tombstones.clear();
    this.tombstonesEvicted = false;
    this.isLoaded = false;
    await this.watch();
    this.options.rewatched();
    this.options.stats.rewatched += 1;
  }

  /**
   * Both buckets exist, else they are created again with their settings and `recreated` runs
   * (this instance registers again and puts its present users back; the fleet's others do the
   * same), so presence converges to what is connected; and the copy is watched.
   */
  async ensure(recreated: () => Promise<void>): Promise<void> {
    const { jsm, config } = this.options;
    const [hasPresence, hasInstances] = await Promise.all([streamExists(jsm, presenceStream(config)), streamExists(jsm, instancesStream(config))]);
    if (hasPresence && hasInstances) {
      if (this.watchBroken) await this.rewatch();
      this.bucketsReady = true;
      return;
    }
    if (this.watcher !== undefined) this.options.log.warn('presence buckets are gone (NATS lost its store, or they were deleted): creating them again');
    this.bucketsReady = false;
    await createBuckets(this.options);
    await this.rewatch();
    await recreated();
    this.bucketsReady = true;
    this.options.stats.recreated += 1;
  }

  /** Take in a key's revision and members, unless the copy already knows a later one. */
  remember(key: string, revision: number, members: readonly string[], deletedAt?: number): void {
    const { projectId, userId } = splitKey(key);
    let users = this.mirror.get(projectId);
    const current = users?.get(userId)?.revision ?? this.tombstones.get(key)?.revision ?? -1;
    if (current >= revision) return; // the watcher lags behind this instance's own write
    if (members.length > 0) {
      this.tombstones.delete(key);
      if (!users) this.mirror.set(projectId, (users = new Map()));
      users.set(userId, { members: compact(members), revision });
      return;
    }
    if (users?.delete(userId) && users.size === 0) this.mirror.delete(projectId);
    this.tombstones.delete(key); // re-inserted last: the oldest go first
    this.tombstones.set(key, { revision, at: deletedAt ?? Date.now() });
    if (this.tombstones.size > MAX_TOMBSTONES) {
      this.tombstones.delete(this.tombstones.keys().next().value!);
      this.tombstonesEvicted = true;
    }
  }

  /** What the copy says of a key, or undefined when only a get can tell. */
  known(key: string): KnownKey | undefined {
    const { projectId, userId } = splitKey(key);
    const live = this.mirror.get(projectId)?.get(userId);
    if (live !== undefined) return live;
    const deleted = this.tombstones.get(key);
    if (deleted !== undefined) return { members: [], revision: deleted.revision, deletedAt: deleted.at };
    // Every key the bucket holds has passed the watcher: one it never showed does not exist.
    return this.isLoaded && !this.tombstonesEvicted ? { members: [], revision: 0 } : undefined;
  }
}
