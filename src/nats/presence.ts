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
 *
 * This module wires the parts in presence/: the watched copy (copy.ts), the compare-and-set
 * updates (updates.ts), the heartbeat and sweep (heartbeat.ts), the buckets (buckets.ts).
 */
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { PresencePort, Topic } from '../core/ports.js';
import { createBuckets, type PresenceConfig } from './presence/buckets.js';
import { WatchedCopy } from './presence/copy.js';
import { Heartbeat } from './presence/heartbeat.js';
import { PresenceUpdates } from './presence/updates.js';
import type { JsPublisher } from './js-publisher.js';

export type { PresenceConfig };

export interface PresenceOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  config: PresenceConfig;
  instanceId: string;
  log: Logger;
  /** The broker's batched JetStream writer: the compare-and-sets go through it. */
  publisher: JsPublisher;
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
  /** Compare-and-set writes to presence keys, and the event-loop turns the updates were started in. */
  writes: number;
  ticks: number;
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

export class NatsPresence implements PresencePort {
  readonly stats: PresenceStats = { joined: 0, left: 0, writes: 0, ticks: 0, sweeps: 0, swept: 0, reregistered: 0, recreated: 0, rewatched: 0, failures: 0 };
  private readonly copy: WatchedCopy;
  private readonly heartbeat: Heartbeat;
  private readonly updates: PresenceUpdates;
  private ticking: Promise<void> | undefined;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly options: PresenceOptions,
    buckets: Awaited<ReturnType<typeof createBuckets>>,
  ) {
    const { log } = options;
    const stats = this.stats;
    this.copy = new WatchedCopy(
      { ...options, stats, stopped: () => this.stopped, rewatched: () => void (this.heartbeat.sweepDue = true) },
      buckets.presence,
    );
    this.heartbeat = new Heartbeat({ ...options, stats }, buckets.instances, this.copy);
    this.updates = new PresenceUpdates(
      { nc: options.nc, log, stats, publish: options.publish, publisher: options.publisher, bucket: options.config.presenceBucket },
      buckets.presence,
      this.copy,
      this.heartbeat,
    );
    this.heartbeat.updates = this.updates;
  }

  static async start(options: PresenceOptions): Promise<NatsPresence> {
    const p = new NatsPresence(options, await createBuckets(options));
    await p.copy.watch();
    await p.heartbeat.register().catch((err: unknown) => {
      p.copy.stop();
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
      if (s.type === 'disconnect') this.copy.bucketsReady = false;
      else if (s.type === 'reconnect') {
        if (this.ticking) void this.ticking.finally(() => this.tick());
        else this.tick();
      }
    }
  }

  get member(): string {
    return this.heartbeat.member;
  }

  /** False while a bucket is missing or the copy is not being watched (readiness). */
  get ready(): boolean {
    return this.copy.ready;
  }

  /** Run `sweeper` whenever this instance sweeps for dead members. */
  addSweeper(sweeper: Sweeper): void {
    this.heartbeat.addSweeper(sweeper);
  }

  /** Told when this instance's heartbeat had expired and it registered under a new member id. */
  onReregistered(listener: (expired: string, member: string) => Promise<void>): void {
    this.heartbeat.onReregistered(listener);
  }

  // ---- the port -----------------------------------------------------------------------------

  enter(projectId: string, userId: string): void {
    this.updates.enter(projectId, userId);
  }

  exit(projectId: string, userId: string): void {
    this.updates.exit(projectId, userId);
  }

  /** From the watched copy: a change made elsewhere shows here within a round trip. */
  async users(projectId: string): Promise<string[]> {
    return this.copy.users(projectId);
  }

  /** Resolves once no presence update, heartbeat or sweep is in flight (shutdown, tests). */
  async settled(): Promise<void> {
    await this.ticking;
    await this.updates.settled();
  }

  /** After the hub closed its connections: let their removals finish, then drop the heartbeat. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    await this.settled();
    this.copy.stop();
    // Without a heartbeat the fleet sweeps at once whatever could not be removed here.
    if (!this.options.nc.isClosed()) await this.heartbeat.purge().catch(() => {});
  }

  private tick(): void {
    if (this.ticking || this.stopped) return;
    if (this.options.nc.isClosed()) return void clearInterval(this.timer);
    this.ticking = (async () => {
      try {
        await this.copy.ensure(async () => {
          await this.heartbeat.register();
          this.updates.rescheduleLocal();
        });
        await this.heartbeat.beat();
        this.updates.retryFailed();
        await this.heartbeat.sweep();
      } catch (err) {
        this.log.warn({ err }, 'presence heartbeat or sweep failed; retrying');
      } finally {
        this.ticking = undefined;
      }
    })();
  }

  private get log(): Logger {
    return this.options.log;
  }
}
