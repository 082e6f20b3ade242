/**
 * Fleet-wide presence on NATS KV, built for nats-server 2.9 (a bucket-wide TTL, no per-key TTL).
 *
 * Two buckets:
 * - `<presenceBucket>`: one key `<project>.<user>` per present user. Its value lists the members
 *   (instance incarnations) that hold a connection of that user subscribed to that project. Every
 *   change is a compare-and-set on the key's revision, so of all instances racing on one user,
 *   exactly one makes the empty -> non-empty change and publishes `user_joined`, and exactly one
 *   the non-empty -> empty change and publishes `user_left`. Tabs and devices only add or remove
 *   a member (or not even that: this instance counts its own connections locally).
 * - `<presenceBucket>_INSTANCES`: one heartbeat key per member, bucket TTL = `presenceTTL`,
 *   refreshed every third of it. A crashed instance's heartbeat expires; the live member with the
 *   smallest id then removes the dead member from every presence key, with the same CAS, so its
 *   users get one `user_left` each even if two instances sweep at once.
 *
 * Each instance watches the presence bucket into memory (one consumer for its lifetime): presence
 * queries and sweeps read that copy. Live members are listed from the heartbeat stream's subjects
 * (one request, no consumer): a stopping instance purges its heartbeat rather than deleting it, so
 * no marker lingers there.
 *
 * Why not a TTL on the presence keys themselves: every holder would have to rewrite every key each
 * period, O(users x projects) writes; a heartbeat per instance costs one write per period, and a
 * sweep runs only when an instance dies.
 *
 * A member id is `<instanceId>.<random>`. If this instance's heartbeat expired anyway (NATS out of
 * reach, or the process stalled, for longer than the TTL), the fleet has swept or will sweep it: it
 * registers again under a new member id and re-adds its users, so presence converges either way.
 *
 * Events are published with `Nats-Msg-Id` `<type>-<revision>`, so a retried publish is stored
 * once. Should the process die between the CAS and the publish, that one event is lost.
 */
import { randomBytes } from 'node:crypto';
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type { NatsConnection, QueuedIterator } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { topics, type PresencePort, type Topic } from '../core/ports.js';
import { MessageType } from '../protocol.js';

export type PresenceConfig = Pick<Config, 'presenceBucket' | 'presenceTTL' | 'streamReplicas'>;

export interface PresenceOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  config: PresenceConfig;
  instanceId: string;
  log: Logger;
  /** Store an event on a topic (the broker's JetStream publish); `msgId` deduplicates retries. */
  /** `aboutUser`: the event concerns this user, whose own connections skip it. */
  publish(topic: Topic, payload: string, msgId: string, aboutUser: string): Promise<number>;
}

/**
 * Work that runs with the presence sweep (nats/lifecycle.ts): `alive` are the live members,
 * `isDead` confirms a member missing from that snapshot. A throw makes the sweep due again.
 */
export type Sweeper = (alive: ReadonlySet<string>, isDead: (member: string) => Promise<boolean>) => Promise<void>;

export interface PresenceStats {
  joined: number;
  left: number;
  /** Sweeps for dead members run by this instance, and the presence keys they cleaned. */
  sweeps: number;
  swept: number;
  /** Times this instance found its own heartbeat expired and registered again. */
  reregistered: number;
  /** Times the buckets were found missing (NATS lost its store, or they were deleted) and created again. */
  recreated: number;
  /** Times the watcher of the presence bucket stopped and was started again. */
  rewatched: number;
  failures: number;
}

/** Retries of one compare-and-set under contention: many tabs of one user on many instances. */
const CAS_ATTEMPTS = 20;
const PUBLISH_ATTEMPTS = 3;
/** Deleted presence keys whose revision is remembered, so a user who comes back needs no get. */
const MAX_TOMBSTONES = 10_000;

const isWrongLastSequence = (err: unknown): boolean =>
  err instanceof JetStreamApiError &&
  (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown);

interface KnownKey {
  readonly members: readonly string[];
  readonly revision: number;
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

function membersOf(entry: KvEntry | null): string[] {
  if (entry?.operation !== 'PUT') return [];
  try {
    const members = entry.json<{ members?: unknown }>().members;
    return Array.isArray(members) ? members.filter((m): m is string => typeof m === 'string') : [];
  } catch {
    return []; // unreadable: the next write replaces it
  }
}

export class NatsPresence implements PresencePort {
  readonly stats: PresenceStats = { joined: 0, left: 0, sweeps: 0, swept: 0, reregistered: 0, recreated: 0, rewatched: 0, failures: 0 };
  /** Both buckets are known to exist and the watched copy is live. */
  private bucketsReady = true;
  /** The watcher's iterator ended or threw: the next tick starts a new one. */
  private watchBroken = false;
  private memberId = '';
  /** Every member id this process has had: its own stale entries are replaced, never left behind. */
  private readonly ownIds = new Set<string>();
  private heartbeatRevision = 0;
  /** Local connections per presence key `<project>.<user>`. */
  private readonly local = new Map<string, number>();
  /** One update at a time per key; a change meanwhile reruns it (flapping tabs coalesce). */
  private readonly running = new Map<string, Promise<void>>();
  private readonly rerun = new Set<string>();
  /** Keys whose update failed (NATS unavailable): retried on each heartbeat. */
  private readonly failed = new Set<string>();
  /**
   * The presence bucket as last seen by the watcher (and as this instance wrote it): project ->
   * user -> members and the key's revision. The compare-and-set of an update starts from here
   * instead of a get: a stale copy only costs a failed CAS and a get, and a change is never
   * skipped on its word.
   */
  private readonly mirror = new Map<string, Map<string, KnownKey>>();
  /**
   * Each key's last revision and members as the watcher saw them (and as this instance wrote
   * them): the compare-and-set of an update starts from here instead of a get. A stale copy only
   * costs a failed CAS and a get; a change is never skipped on its word. Bounded: oldest first.
   */
  private readonly tombstones = new Map<string, number>();
  /** A tombstone was dropped: a key the copy does not know may exist after all. */
  private tombstonesEvicted = false;
  private watcher: QueuedIterator<KvEntry> | undefined;
  /** The watcher has delivered everything the bucket held when it started. */
  private loaded = false;
  private lastAlive: Set<string> | undefined;
  /** A sweep is due: at start (members may have died before), and whenever a member disappears. */
  private sweepDue = true;
  private ticking: Promise<void> | undefined;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly sweepers: Sweeper[] = [];
  private readonly reregistered: ((expired: string, member: string) => Promise<void>)[] = [];

  private constructor(
    private readonly options: PresenceOptions,
    private readonly presence: KV,
    private readonly instances: KV,
  ) {}

  static async start(options: PresenceOptions): Promise<NatsPresence> {
    const { presence, instances } = await createBuckets(options);
    const p = new NatsPresence(options, presence, instances);
    await p.watch();
    await p.register().catch((err: unknown) => {
      p.watcher?.stop();
      throw err;
    });
    p.timer = setInterval(() => p.tick(), Math.max(100, Math.floor(options.config.presenceTTL / 3)));
    p.timer.unref();
    void p.followLink();
    return p;
  }

  /**
   * The server may come back from a disconnect without its store: until the buckets are checked
   * again presence is not ready, and the check runs at once on reconnect, not at the next tick.
   */
  private async followLink(): Promise<void> {
    for await (const s of this.options.nc.status()) {
      if (this.stopped) break;
      if (s.type === 'disconnect') this.bucketsReady = false;
      else if (s.type === 'reconnect') {
        if (this.ticking) void this.ticking.finally(() => this.tick());
        else this.tick();
      }
    }
  }

  get member(): string {
    return this.memberId;
  }

  /** False while a bucket is missing or the copy is not being watched (readiness). */
  get ready(): boolean {
    return this.bucketsReady && !this.watchBroken;
  }

  /** Run `sweeper` whenever this instance sweeps for dead members. */
  addSweeper(sweeper: Sweeper): void {
    this.sweepers.push(sweeper);
  }

  /** Told when this instance's heartbeat had expired and it registered under a new member id. */
  onReregistered(listener: (expired: string, member: string) => Promise<void>): void {
    this.reregistered.push(listener);
  }

  private get log(): Logger {
    return this.options.log;
  }

  // ---- the port -----------------------------------------------------------------------------

  enter(projectId: string, userId: string): void {
    const key = `${projectId}.${userId}`;
    const n = (this.local.get(key) ?? 0) + 1;
    this.local.set(key, n);
    if (n === 1) this.schedule(key);
  }

  exit(projectId: string, userId: string): void {
    const key = `${projectId}.${userId}`;
    const n = (this.local.get(key) ?? 0) - 1;
    if (n > 0) return void this.local.set(key, n);
    this.local.delete(key);
    this.schedule(key);
  }

  /** From the watched copy: a change made elsewhere shows here within a round trip. */
  async users(projectId: string): Promise<string[]> {
    return [...(this.mirror.get(projectId)?.keys() ?? [])].sort();
  }

  /** Resolves once no presence update, heartbeat or sweep is in flight (shutdown, tests). */
  async settled(): Promise<void> {
    await this.ticking;
    while (this.running.size > 0) await Promise.all([...this.running.values()]);
  }

  /** After the hub closed its connections: let their removals finish, then drop the heartbeat. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    await this.settled();
    this.watcher?.stop();
    // Without a heartbeat the fleet sweeps at once whatever could not be removed here.
    if (!this.options.nc.isClosed()) {
      await this.options.jsm.streams.purge(this.instancesStream, { filter: this.heartbeatSubject(this.memberId) }).catch(() => {});
    }
  }

  // ---- the watched copy ---------------------------------------------------------------------

  private get instancesStream(): string {
    return `KV_${this.options.config.presenceBucket}_INSTANCES`;
  }

  private heartbeatSubject(member: string): string {
    return `$KV.${this.options.config.presenceBucket}_INSTANCES.${member}`;
  }

  private async watch(): Promise<void> {
    const { state } = await this.options.jsm.streams.info(`KV_${this.options.config.presenceBucket}`);
    // Loaded once the watcher reaches what the bucket held now (a sweep must see every key).
    const loadedAt = state.messages > 0 ? state.last_seq : 0;
    this.loaded = loadedAt === 0;
    const watcher = await this.presence.watch();
    this.watcher = watcher;
    this.watchBroken = false;
    void (async () => {
      for await (const entry of watcher) {
        if (this.watcher !== watcher) break;
        const dot = entry.key.indexOf('.');
        const projectId = entry.key.slice(0, dot);
        const userId = entry.key.slice(dot + 1);
        this.remember(projectId, userId, entry.key, entry.revision, membersOf(entry));
        if (entry.revision >= loadedAt) this.loaded = true;
      }
    })()
      .catch((err: unknown) => this.log.warn({ err }, 'presence watcher failed'))
      .finally(() => {
        // Its copy would go stale, and sweeps wait for a loaded copy: the next tick watches again.
        if (this.watcher !== watcher || this.stopped) return;
        this.watchBroken = true;
        this.log.warn('presence watcher stopped: starting it again at the next heartbeat');
      });
  }

  /** Forget the watched copy and watch the bucket again from its start. */
  private async rewatch(): Promise<void> {
    this.watcher?.stop();
    this.watcher = undefined;
    this.mirror.clear();
    this.tombstones.clear();
    this.tombstonesEvicted = false;
    this.loaded = false;
    await this.watch();
    this.sweepDue = true;
    this.stats.rewatched += 1;
  }

  /**
   * Both buckets exist, else they are created again with their settings and this instance
   * registers again and puts its present users back (the fleet's others do the same), so
   * presence converges to what is connected; and the copy is watched.
   */
  private async ensureBuckets(): Promise<void> {
    const { jsm, config } = this.options;
    const [hasPresence, hasInstances] = await Promise.all([
      streamExists(jsm, `KV_${config.presenceBucket}`),
      streamExists(jsm, this.instancesStream),
    ]);
    if (hasPresence && hasInstances) {
      if (this.watchBroken) await this.rewatch();
      this.bucketsReady = true;
      return;
    }
    if (this.watcher !== undefined) this.log.warn('presence buckets are gone (NATS lost its store, or they were deleted): creating them again');
    this.bucketsReady = false;
    await createBuckets(this.options);
    await this.rewatch();
    await this.register();
    for (const key of this.local.keys()) this.schedule(key);
    this.bucketsReady = true;
    this.stats.recreated += 1;
  }

  private remember(projectId: string, userId: string, key: string, revision: number, members: string[]): void {
    let users = this.mirror.get(projectId);
    const current = users?.get(userId)?.revision ?? this.tombstones.get(key) ?? -1;
    if (current >= revision) return; // the watcher lags behind this instance's own write
    if (members.length > 0) {
      this.tombstones.delete(key);
      if (!users) this.mirror.set(projectId, (users = new Map()));
      users.set(userId, { members: compact(members), revision });
      return;
    }
    if (users?.delete(userId) && users.size === 0) this.mirror.delete(projectId);
    this.tombstones.delete(key); // re-inserted last: the oldest go first
    this.tombstones.set(key, revision);
    if (this.tombstones.size > MAX_TOMBSTONES) {
      this.tombstones.delete(this.tombstones.keys().next().value!);
      this.tombstonesEvicted = true;
    }
  }

  /** What the copy says of a key, or undefined when only a get can tell. */
  private known(key: string): KnownKey | undefined {
    const dot = key.indexOf('.');
    const live = this.mirror.get(key.slice(0, dot))?.get(key.slice(dot + 1));
    if (live !== undefined) return live;
    const deleted = this.tombstones.get(key);
    if (deleted !== undefined) return { members: [], revision: deleted };
    // Every key the bucket holds has passed the watcher: one it never showed does not exist.
    return this.loaded && !this.tombstonesEvicted ? { members: [], revision: 0 } : undefined;
  }

  // ---- updates ------------------------------------------------------------------------------

  private schedule(key: string): void {
    if (this.running.has(key)) return void this.rerun.add(key);
    const run = async (): Promise<void> => {
      try {
        do {
          try {
            await this.reconcile(key);
            this.failed.delete(key);
          } catch (err) {
            this.failed.add(key);
            this.stats.failures += 1;
            this.log.warn({ err, key }, 'presence update failed; retrying with the next heartbeat');
          }
        } while (this.rerun.delete(key));
      } finally {
        this.running.delete(key);
      }
    };
    this.running.set(key, run());
  }

  /** Make the key say what is true here: this member listed iff a local connection is in. */
  private reconcile(key: string): Promise<void> {
    return this.update(key, (members) => {
      const next = members.filter((m) => !this.ownIds.has(m));
      if (this.local.has(key)) next.push(this.memberId);
      return next;
    });
  }

  /** Compare-and-set `change` on a presence key, then announce the transition it made, if any. */
  private async update(key: string, change: (members: readonly string[]) => string[]): Promise<void> {
    // First from the watched copy (saves a get per update); after a failed CAS, or when the copy
    // says nothing needs to change (it may lag), from a get.
    let cached = this.known(key);
    for (let attempt = 1; ; attempt++) {
      let revision: number;
      let members: readonly string[];
      if (cached !== undefined) {
        ({ revision, members } = cached);
      } else {
        const entry = await this.presence.get(key);
        members = membersOf(entry);
        revision = entry?.revision ?? 0;
      }
      const next = change(members);
      if (next.length === members.length && next.every((m) => members.includes(m))) {
        if (cached === undefined) return;
        cached = undefined;
        attempt -= 1;
        continue;
      }
      const fromCache = cached !== undefined;
      cached = undefined;
      let transition: [type: string, revision: number] | undefined;
      try {
        if (next.length === 0) {
          await this.presence.delete(key, { previousSeq: revision });
          transition = [MessageType.UserLeft, revision];
        } else {
          const written = await this.presence.put(key, JSON.stringify({ members: next }), { previousSeq: revision });
          const dot = key.indexOf('.');
          this.remember(key.slice(0, dot), key.slice(dot + 1), key, written, next);
          if (members.length === 0) transition = [MessageType.UserJoined, written];
        }
      } catch (err) {
        // Someone else wrote first (or the copy was stale): look again. A stale copy is not an attempt.
        if (isWrongLastSequence(err) && (fromCache || attempt < CAS_ATTEMPTS)) {
          if (fromCache) attempt -= 1;
          continue;
        }
        throw err;
      }
      if (transition) await this.announce(key, ...transition);
      return;
    }
  }

  private async announce(key: string, type: string, revision: number): Promise<void> {
    const dot = key.indexOf('.');
    const projectId = key.slice(0, dot);
    const userId = key.slice(dot + 1);
    const payload = JSON.stringify({ type, data: { user_id: userId, project_id: projectId } });
    for (let attempt = 1; ; attempt++) {
      try {
        // The revision names this transition: a retry that did land the first time is dropped as a duplicate.
        await this.options.publish(topics.project(projectId), payload, `${type}-${revision}`, userId);
        break;
      } catch (err) {
        if (attempt >= PUBLISH_ATTEMPTS || this.options.nc.isClosed()) {
          this.stats.failures += 1;
          this.log.error({ err, type, project: projectId, user: userId }, 'could not publish a presence event');
          return;
        }
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
    if (type === MessageType.UserJoined) this.stats.joined += 1;
    else this.stats.left += 1;
  }

  // ---- heartbeat and sweep ------------------------------------------------------------------

  private async register(): Promise<void> {
    this.memberId = `${this.options.instanceId}.${randomBytes(4).toString('hex')}`;
    this.ownIds.add(this.memberId);
    const value = JSON.stringify({ instance_id: this.options.instanceId, started_at: new Date().toISOString() });
    this.heartbeatRevision = await this.instances.create(this.memberId, value);
  }

  private tick(): void {
    if (this.ticking || this.stopped) return;
    if (this.options.nc.isClosed()) return void clearInterval(this.timer);
    this.ticking = (async () => {
      try {
        await this.ensureBuckets();
        await this.heartbeat();
        for (const key of [...this.failed]) this.schedule(key);
        await this.sweep();
      } catch (err) {
        this.log.warn({ err }, 'presence heartbeat or sweep failed; retrying');
      } finally {
        this.ticking = undefined;
      }
    })();
  }

  private async heartbeat(): Promise<void> {
    const value = JSON.stringify({ instance_id: this.options.instanceId, at: new Date().toISOString() });
    try {
      this.heartbeatRevision = await this.instances.update(this.memberId, value, this.heartbeatRevision);
      return;
    } catch (err) {
      if (!isWrongLastSequence(err)) throw err;
    }
    // Our previous write may have landed unacknowledged: then the key is still ours.
    const current = await this.instances.get(this.memberId);
    if (current?.operation === 'PUT') {
      this.heartbeatRevision = current.revision;
      return;
    }
    const expired = this.memberId;
    await this.register();
    this.stats.reregistered += 1;
    this.log.warn({ expired, member: this.memberId }, 'presence heartbeat had expired: registered again, re-adding local users');
    for (const key of this.local.keys()) this.schedule(key);
    for (const listener of this.reregistered) await listener(expired, this.memberId).catch((err: unknown) => this.log.warn({ err }, 'reregistration listener failed'));
  }

  private async sweep(): Promise<void> {
    const { state } = await this.options.jsm.streams.info(this.instancesStream, { subjects_filter: '>' });
    const prefix = this.heartbeatSubject('');
    const alive = new Set(Object.keys(state.subjects ?? {}).map((s) => s.slice(prefix.length)));
    alive.add(this.memberId);
    if (this.lastAlive) for (const m of this.lastAlive) if (!alive.has(m)) this.sweepDue = true;
    this.lastAlive = alive;
    if (!this.sweepDue) return;
    // One sweeper is enough: the smallest live member. The CAS keeps a second one harmless.
    if ([...alive].sort()[0] === this.memberId) {
      if (!this.loaded) return; // still due: the copy does not yet show every key
      await this.removeDeadMembers(alive);
      const isDead = (m: string) => this.instances.get(m).then((e) => e?.operation !== 'PUT');
      for (const sweeper of this.sweepers) await sweeper(alive, isDead);
    }
    this.sweepDue = false;
  }

  private async removeDeadMembers(alive: ReadonlySet<string>): Promise<void> {
    const suspects: [key: string, members: readonly string[]][] = [];
    for (const [projectId, users] of this.mirror) {
      for (const [userId, { members }] of users) {
        if (members.some((m) => !alive.has(m))) suspects.push([`${projectId}.${userId}`, members]);
      }
    }
    const verdicts = new Map<string, Promise<boolean>>();
    // A member missing from the snapshot may have started since: its own heartbeat decides.
    const isDead = (m: string): Promise<boolean> => {
      let verdict = verdicts.get(m);
      if (!verdict) {
        verdict = this.instances.get(m).then((e) => e?.operation !== 'PUT');
        verdicts.set(m, verdict);
      }
      return verdict;
    };
    for (const [key, members] of suspects) {
      const dead = new Set<string>();
      for (const m of members) if (!alive.has(m) && (await isDead(m))) dead.add(m);
      if (dead.size === 0) continue;
      await this.update(key, (current) => current.filter((m) => !dead.has(m)));
      this.stats.swept += 1;
    }
    this.stats.sweeps += 1;
  }
}

/** Create the two buckets, or open them; `Kvm.create` leaves an existing one as it is. */
async function createBuckets(options: PresenceOptions): Promise<{ presence: KV; instances: KV }> {
  const { config, jsm } = options;
  const kvm = new Kvm(options.js);
  const replicas = config.streamReplicas;
  const presence = await kvm.create(config.presenceBucket, { history: 1, replicas });
  const instancesBucket = `${config.presenceBucket}_INSTANCES`;
  const instances = await kvm.create(instancesBucket, { history: 1, replicas, ttl: config.presenceTTL });
  await ensureMaxAge(jsm, `KV_${instancesBucket}`, config.presenceTTL);
  return { presence, instances };
}

async function streamExists(jsm: JetStreamManager, name: string): Promise<boolean> {
  try {
    await jsm.streams.info(name);
    return true;
  } catch (err) {
    if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) return false;
    throw err;
  }
}

/** `Kvm.create` leaves an existing bucket as it is: apply a changed presenceTTL. */
async function ensureMaxAge(jsm: JetStreamManager, stream: string, ttlMs: number): Promise<void> {
  const { config } = await jsm.streams.info(stream);
  const maxAge = ttlMs * 1_000_000;
  if (config.max_age === maxAge) return;
  await jsm.streams.update(stream, { ...config, max_age: maxAge, duplicate_window: Math.min(config.duplicate_window, maxAge) });
}
