/**
 * The compare-and-set updates of presence keys: this instance's local connections per key, one
 * update at a time per key, and the `user_joined` / `user_left` event of the transition an update
 * made. Of all instances racing on one user, exactly one makes each transition.
 *
 * Coalesced per event-loop turn: enters and exits only mark keys; after the turn's I/O callbacks
 * the marked keys are reconciled together (a tab that joins and leaves within the turn writes
 * nothing), and their writes leave in one NATS write through the batched publisher, as do the
 * `user_joined` events of the answers that arrive together. A storm of joins thus costs a few
 * NATS writes per turn, not a round trip per join.
 */
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { topics, type Topic } from '../../core/ports.js';
import { MessageType } from '../../protocol.js';
import type { PresenceStats } from '../presence.js';
import { isWrongLastSequence, presenceKey, splitKey } from './buckets.js';
import { membersOf, type WatchedCopy } from './copy.js';
import type { JsPublisher } from '../js-publisher.js';

/** Retries of one compare-and-set under contention: many tabs of one user on many instances. */
const CAS_ATTEMPTS = 20;
const PUBLISH_ATTEMPTS = 3;
/** A delete this recent may still be unannounced; well inside the event stream's 2-minute dedupe window. */
const RECENT_DELETE_MS = 60_000;

/** Who this instance is in the presence keys (the heartbeat registers it). */
export interface Membership {
  /** The current member id. */
  readonly member: string;
  /** One of the member ids this process has had. */
  isOwn(member: string): boolean;
}

export interface UpdatesOptions {
  nc: NatsConnection;
  log: Logger;
  stats: PresenceStats;
  publish(topic: Topic, payload: string, msgId: string, aboutUser: string): Promise<number>;
  /** Writes the compare-and-sets; `bucket` is the presence bucket's name. */
  publisher: JsPublisher;
  bucket: string;
}

export class PresenceUpdates {
  /** Local connections per presence key `<project>.<user>`. */
  private readonly local = new Map<string, number>();
  /** One update at a time per key; a change meanwhile reruns it (flapping tabs coalesce). */
  private readonly running = new Map<string, Promise<void>>();
  private readonly rerun = new Set<string>();
  /** Keys whose update failed (NATS unavailable): retried on each heartbeat. */
  private readonly failed = new Set<string>();
  /** Keys changed in this turn, reconciled together after it. */
  private marked = new Set<string>();

  constructor(
    private readonly options: UpdatesOptions,
    private readonly presence: KV,
    private readonly copy: WatchedCopy,
    private readonly self: Membership,
  ) {}

  private get log(): Logger {
    return this.options.log;
  }

  enter(projectId: string, userId: string): void {
    const key = presenceKey(projectId, userId);
    const n = (this.local.get(key) ?? 0) + 1;
    this.local.set(key, n);
    if (n === 1) this.mark(key);
  }

  exit(projectId: string, userId: string): void {
    const key = presenceKey(projectId, userId);
    const n = (this.local.get(key) ?? 0) - 1;
    if (n > 0) return void this.local.set(key, n);
    this.local.delete(key);
    this.mark(key);
  }

  private mark(key: string): void {
    if (this.marked.size === 0) setImmediate(this.reconcileMarked);
    this.marked.add(key);
  }

  private readonly reconcileMarked = (): void => {
    const keys = this.marked;
    this.marked = new Set();
    this.options.stats.ticks += 1;
    for (const key of keys) this.schedule(key);
  };

  /** Put every local key right again (after registering under a new member id, or a new bucket). */
  rescheduleLocal(): void {
    for (const key of this.local.keys()) this.schedule(key);
  }

  /** Retry the keys whose update failed. */
  retryFailed(): void {
    for (const key of [...this.failed]) this.schedule(key);
  }

  /** Resolves once no update is in flight. */
  async settled(): Promise<void> {
    while (this.running.size > 0 || this.marked.size > 0) {
      if (this.running.size === 0) await new Promise((r) => setImmediate(r));
      else await Promise.all([...this.running.values()]);
    }
  }

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
            this.options.stats.failures += 1;
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
      const next = members.filter((m) => !this.self.isOwn(m));
      if (this.local.has(key)) next.push(this.self.member);
      return next;
    });
  }

  /** Compare-and-set `change` on a presence key, then announce the transition it made, if any. */
  async update(key: string, change: (members: readonly string[]) => string[]): Promise<void> {
    // First from the watched copy (saves a get per update); after a failed CAS, or when the copy
    // says nothing needs to change (it may lag), from a get.
    let cached = this.copy.known(key);
    for (let attempt = 1; ; attempt++) {
      let revision: number;
      let members: readonly string[];
      let deletedAt: number | undefined;
      if (cached !== undefined) {
        ({ revision, members, deletedAt } = cached);
      } else {
        const entry = await this.presence.get(key);
        members = membersOf(entry);
        revision = entry?.revision ?? 0;
        if (entry && entry.operation !== 'PUT') deletedAt = entry.created.getTime();
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
        this.options.stats.writes += 1;
        if (next.length === 0) {
          transition = [MessageType.UserLeft, await this.options.publisher.kvDelete(this.options.bucket, key, revision)];
        } else {
          const written = await this.options.publisher.kvPut(this.options.bucket, key, JSON.stringify({ members: next }), revision);
          this.copy.remember(key, written, next);
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
      // A join right after a delete made elsewhere: that instance's user_left may not be stored yet,
      // and stored after this join it would tell every member the user left. Publish it first
      // (same message id: stored once whoever is first), while the stream still dedupes it.
      if (transition?.[0] === MessageType.UserJoined && deletedAt !== undefined && Date.now() - deletedAt < RECENT_DELETE_MS) {
        await this.announce(key, MessageType.UserLeft, revision, true);
      }
      if (transition) await this.announce(key, ...transition);
      return;
    }
  }

  /** `again`: the transition was (or should have been) announced by the instance that made it. */
  private async announce(key: string, type: string, revision: number, again = false): Promise<void> {
    const { projectId, userId } = splitKey(key);
    const payload = JSON.stringify({ type, data: { user_id: userId, project_id: projectId } });
    for (let attempt = 1; ; attempt++) {
      try {
        // The revision names this transition: a retry that did land the first time is dropped as a duplicate.
        await this.options.publish(topics.project(projectId), payload, `${type}-${revision}`, userId);
        break;
      } catch (err) {
        if (attempt >= PUBLISH_ATTEMPTS || this.options.nc.isClosed()) {
          this.options.stats.failures += 1;
          this.log.error({ err, type, project: projectId, user: userId }, 'could not publish a presence event');
          return;
        }
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
    if (again) return;
    if (type === MessageType.UserJoined) this.options.stats.joined += 1;
    else this.options.stats.left += 1;
  }
}
