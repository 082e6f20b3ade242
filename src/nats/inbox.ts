/**
 * The offline inbox, with no JetStream consumer per user. The stream already holds every direct
 * message (`<prefix>.user.<id>`, maxStoredMessages per user for messageTTL); what a user has
 * acknowledged is one key per user in the KV bucket `inboxBucket` (WS_INBOX_ACKS): the ack floor
 * and the acknowledged seqs above it (inbox-acks.ts).
 *
 * - Backlog, when a connection opens: the user's key and the subject's last seq (two requests in
 *   parallel); then the stored messages from the floor on, with direct gets (`next_by_subj`) for
 *   the first few and one short-lived ordered consumer for a longer rest, skipping acked seqs.
 *   Nothing is held or handed back: two connections opening at once both get the whole backlog,
 *   and an instance that dies mid-read leaves nothing behind.
 * - Acknowledgements (a client's `ack`, or a write when acks are on write), from any instance:
 *   a compare-and-set on the key's revision, retried on conflict, so acks from two instances at
 *   once both land and an ack already there changes nothing. One write at a time per user per
 *   instance; acks arriving meanwhile go into the next one.
 * - Expiry: the bucket's max_age is messageTTL (nats-server 2.9 has only a bucket-wide TTL). A
 *   key outlives every message it covers: each was stored before the write that acked it.
 * - The bucket gone (NATS lost its store, or an operator deleted it): created again by the next
 *   operation that finds it missing. Acks it held are lost with it: those messages come once more.
 *
 * Live direct messages do not go through here: they reach every connection of the user, on every
 * instance, through the stream's republish like any event.
 *
 * Until 2026-12 each user had a durable consumer `inbox-<id>` (about 40 KB of nats-server memory
 * each, see BENCHMARKS.md). Nothing is migrated: those consumers expire by their
 * inactive_threshold (messageTTL) once nothing reads them, and the messages they held unacked
 * come once more from the stream.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, jetstream, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type { MsgHdrs } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { SidecarError } from '../errors.js';
import type { StreamHistory } from './history.js';
import { compactAcks, decodeAcks, EMPTY, encodeAcks, isAcked, withAcks, type AckState } from './inbox-acks.js';
import { ensureMaxAge, isWrongLastSequence } from './presence/buckets.js';

export type InboxConfig = Pick<
  Config,
  'subjectPrefix' | 'streamName' | 'streamReplicas' | 'maxStoredMessages' | 'messageTTL' | 'inboxBucket'
>;

/** A direct message for a connection's backlog. */
export interface InboxMessage {
  readonly seq: number;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
  /** When the stream stored it (RFC 3339). */
  readonly storedAt: string;
}

/** The Go package's offline_messages metrics, read from JetStream. */
export interface OfflineStats {
  /** Stored direct messages not yet acknowledged, over all users. */
  total_messages: number;
  users_with_messages: number;
}

export interface InboxStats {
  /** Compare-and-set writes that found the key changed by someone else (and were retried). */
  conflicts: number;
  /** Times the bucket was found missing and created again. */
  recreated: number;
}

export interface InboxOptions {
  nc: NatsConnection;
  /** For the stream's direct gets; short timeouts (a connect waits on them). */
  jsm: JetStreamManager;
  /** Reads a long backlog with an ordered consumer (short timeouts, a stall watchdog). */
  history: StreamHistory;
  config: InboxConfig;
  log: Logger;
  /** The stream's current incarnation (a seq means something only with it). */
  epoch(): string;
}

/**
 * Timeout of every request to NATS here. A connect waits on the backlog's: JetStream answering
 * slowly (just restarted, electing) costs a connect its backlog for now, not its authentication,
 * which clients give up on after a few seconds.
 */
const REQUEST_TIMEOUT_MS = 2_000;
/** Backlog messages read with one direct get each; past these an ordered consumer reads the rest. */
const DIRECT_READS = 32;
/** Compare-and-set attempts of one write under contention (many tabs of one user on many instances). */
const CAS_ATTEMPTS = 20;
/** A write that failed (NATS away) is tried again this many times, backing off from 100 ms. */
const WRITE_RETRIES = 6;
/** Users whose unacknowledged count stats() reads at once. */
const STATS_CONCURRENCY = 16;

/** One user's acknowledgements received here and not yet written. */
class UserAcks {
  constructor(
    /** The stream incarnation the seqs below belong to. */
    public epoch: string,
  ) {}
  readonly acks = new Set<number>();
  /** Every direct message up to this seq counts as acknowledged (ack on write). */
  upTo = 0;
  writing: Promise<void> | undefined;
  again = false;
  retries = 0;
  retryTimer: NodeJS.Timeout | undefined;

  get empty(): boolean {
    return this.acks.size === 0 && this.upTo === 0;
  }
}

export class Inboxes {
  readonly counters: InboxStats = { conflicts: 0, recreated: 0 };
  private readonly users = new Map<string, UserAcks>();
  private readonly js: JetStreamClient;
  private bucketOpen: Promise<KV> | undefined;

  constructor(private readonly options: InboxOptions) {
    this.js = jetstream(options.nc, { timeout: REQUEST_TIMEOUT_MS });
  }

  private get config(): InboxConfig {
    return this.options.config;
  }

  private get log(): Logger {
    return this.options.log;
  }

  private subjectOf(userId: string): string {
    return `${this.config.subjectPrefix}.user.${userId}`;
  }

  // ---- the bucket ---------------------------------------------------------------------------

  /** Open the bucket, creating it if it is missing; `Kvm.create` leaves an existing one as it is. */
  private bucket(): Promise<KV> {
    this.bucketOpen ??= (async () => {
      const { inboxBucket: name, streamReplicas: replicas, messageTTL } = this.config;
      const kv = await new Kvm(this.js).create(name, { history: 1, replicas, ttl: messageTTL });
      await ensureMaxAge(this.options.jsm, `KV_${name}`, messageTTL);
      return kv;
    })();
    const opening = this.bucketOpen;
    opening.catch(() => {
      if (this.bucketOpen === opening) this.bucketOpen = undefined;
    });
    return opening;
  }

  /** Run `op` on the bucket; a bucket found missing is created again and `op` tried once more. */
  private async onBucket<T>(what: string, op: (kv: KV) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const kv = await this.bucket().catch((err: unknown) => {
        throw unavailable(`could not open the inbox bucket ${this.config.inboxBucket}`, err);
      });
      try {
        return await op(kv);
      } catch (err) {
        if (err instanceof SidecarError) throw err; // a lost compare-and-set: the caller reads again
        // nats-server 2.9 answers neither kind of request for a missing bucket: a direct get
        // times out, a write gets no responders. Ask JetStream whether it is there.
        if (attempt === 1 && (await this.bucketMissing())) {
          this.log.warn({ bucket: this.config.inboxBucket }, 'the inbox bucket is gone (NATS lost its store, or it was deleted): creating it again');
          this.bucketOpen = undefined;
          this.counters.recreated += 1;
          continue;
        }
        throw unavailable(`${what} (${this.config.inboxBucket})`, err);
      }
    }
  }

  private async bucketMissing(): Promise<boolean> {
    try {
      await this.options.jsm.streams.info(`KV_${this.config.inboxBucket}`);
      return false;
    } catch (err) {
      return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound;
    }
  }

  private async readKey(userId: string, epoch = this.options.epoch()): Promise<{ state: AckState; revision: number }> {
    const entry: KvEntry | null = await this.onBucket(`could not read the acks of ${userId}`, (kv) => kv.get(userId));
    const state = entry?.operation === 'PUT' ? decodeAcks(entry.value, epoch) : EMPTY;
    return { state, revision: entry?.revision ?? 0 };
  }

  // ---- the stream ---------------------------------------------------------------------------

  /** Seq of the user's last stored direct message; 0 for none. */
  private async lastStored(userId: string): Promise<number> {
    const m = await this.options.jsm.direct.getMessage(this.config.streamName, { last_by_subj: this.subjectOf(userId) });
    return m?.seq ?? 0;
  }

  /** Seq of the user's first stored direct message at or after `from`. */
  private async nextStored(userId: string, from: number): Promise<number | undefined> {
    const m = await this.options.jsm.direct.getMessage(this.config.streamName, { seq: from, next_by_subj: this.subjectOf(userId) });
    return m?.seq;
  }

  // ---- backlog ------------------------------------------------------------------------------

  /**
   * The user's unacknowledged stored direct messages, in seq order, for a connection that just
   * opened. Never rejects: live delivery does not depend on the inbox, so a failure here only
   * costs the backlog. `nothingStored`: known from the live topic's baseline (broker).
   */
  async backlog(userId: string, nothingStored = false): Promise<InboxMessage[]> {
    if (nothingStored) return [];
    try {
      return await this.readBacklog(userId);
    } catch (err) {
      this.log.warn({ err, user: userId }, 'offline inbox unavailable: connected without the backlog');
      return [];
    }
  }

  private async readBacklog(userId: string): Promise<InboxMessage[]> {
    const subject = this.subjectOf(userId);
    // Acknowledged here but not yet written: not delivered again either. Taken before the key is
    // read: a write that lands meanwhile leaves the pending set as the key's read may still miss it.
    const pending = this.users.get(userId);
    const local = pending?.epoch === this.options.epoch() ? { upTo: pending.upTo, acks: new Set(pending.acks) } : undefined;
    const [head, { state }] = await Promise.all([
      this.lastStored(userId).catch((err: unknown) => {
        throw unavailable(`could not read the last direct message of ${userId}`, err);
      }),
      this.readKey(userId),
    ]);
    if (head <= state.floor) return [];
    const acked = (seq: number) => isAcked(state, seq) || (local !== undefined && (seq <= local.upTo || local.acks.has(seq)));
    const out: InboxMessage[] = [];
    let cursor = state.floor;
    try {
      for (let i = 0; i < DIRECT_READS && cursor < head; i++) {
        const m = await this.options.jsm.direct.getMessage(this.config.streamName, { seq: cursor + 1, next_by_subj: subject });
        // None before head: a replica still catching up answered; the ordered consumer reads on.
        if (!m || m.seq > head) break;
        if (!acked(m.seq)) out.push({ seq: m.seq, data: m.data, headers: m.header, storedAt: m.timestamp });
        cursor = m.seq;
      }
    } catch (err) {
      throw unavailable(`could not read the direct messages of ${userId}`, err);
    }
    if (cursor < head) {
      // A long backlog: one ordered consumer (no acks, deleted when done) instead of a get per message.
      await this.options.history.fetch(subject, cursor, head, (m) => {
        if (m.seq > head) return false;
        if (!acked(m.seq)) out.push({ seq: m.seq, data: m.data, headers: m.headers, storedAt: m.timestamp });
      });
    }
    return out;
  }

  // ---- acknowledgements ---------------------------------------------------------------------

  /** The user acknowledged `seq` (from any of its connections). */
  acknowledge(userId: string, seq: number): void {
    const user = this.user(userId);
    user.acks.add(seq);
    // Bounded like the stored set: past it the oldest waiting ack is dropped (that message may come again).
    if (user.acks.size > this.config.maxStoredMessages) user.acks.delete(user.acks.values().next().value!);
    this.write(userId, user);
  }

  /** Ack on write: every direct message up to `seq` was written to one of the user's sockets. */
  written(userId: string, seq: number): void {
    const user = this.user(userId);
    if (seq <= user.upTo) return;
    user.upTo = seq;
    this.write(userId, user);
  }

  private user(userId: string): UserAcks {
    const epoch = this.options.epoch();
    let user = this.users.get(userId);
    if (!user) this.users.set(userId, (user = new UserAcks(epoch)));
    if (user.epoch !== epoch) {
      // Seqs of the stream's previous incarnation: they name other messages now.
      user.acks.clear();
      user.upTo = 0;
      user.epoch = epoch;
    }
    return user;
  }

  /** Write what the user acknowledged; acks arriving during a write go into the next one. */
  private write(userId: string, user: UserAcks): void {
    if (user.writing || user.retryTimer) return void (user.again = true);
    const acks = [...user.acks];
    const upTo = user.upTo;
    user.again = false;
    user.writing = this.settle(userId, acks, upTo, user.epoch)
      .then(() => {
        for (const seq of acks) user.acks.delete(seq);
        if (user.upTo === upTo) user.upTo = 0;
        user.retries = 0;
      })
      .catch((err: unknown) => {
        if (user.retries < WRITE_RETRIES) {
          const delay = 100 * 2 ** user.retries++;
          this.log.warn({ err, user: userId, retryInMs: delay }, 'could not write acknowledgements; retrying');
          user.retryTimer = setTimeout(() => {
            user.retryTimer = undefined;
            this.write(userId, user);
          }, delay);
          user.retryTimer.unref();
        } else {
          // At least once: those messages come again on the user's next connection.
          this.log.error({ err, user: userId, acks: acks.length }, 'gave up writing acknowledgements');
          for (const seq of acks) user.acks.delete(seq);
          if (user.upTo === upTo) user.upTo = 0;
          user.retries = 0;
        }
      })
      .finally(() => {
        user.writing = undefined;
        if (user.retryTimer) return;
        if (user.again || !user.empty) this.write(userId, user);
        else if (this.users.get(userId) === user) this.users.delete(userId);
      });
  }

  /** Compare-and-set the user's key to include `acks` and everything up to `upTo`, seqs of `epoch`. */
  private async settle(userId: string, acks: readonly number[], upTo: number, epoch: string): Promise<void> {
    for (let attempt = 1; attempt <= CAS_ATTEMPTS; attempt++) {
      // The stream was created anew meanwhile: these seqs name other messages now.
      if (this.options.epoch() !== epoch) return;
      const { state, revision } = await this.readKey(userId, epoch);
      const added = withAcks(state, acks, upTo);
      if (added === state) return; // already there: settled exactly once
      const next = await compactAcks(added, (from) => this.nextStored(userId, from), this.config.maxStoredMessages).catch((err: unknown) => {
        throw unavailable(`could not read the direct messages of ${userId}`, err);
      });
      try {
        await this.onBucket(`could not write the acks of ${userId}`, (kv) =>
          kv.put(userId, encodeAcks(next, epoch), { previousSeq: revision }).catch((err: unknown) => {
            // Not wrapped: the loop below tells a lost race from a failure.
            if (isWrongLastSequence(err)) throw new SidecarError('inbox_conflict', `the acks of ${userId} changed meanwhile`, { cause: err, temporary: true });
            throw err;
          }),
        );
        return;
      } catch (err) {
        if (!(err instanceof SidecarError && err.code === 'inbox_conflict')) throw err;
        this.counters.conflicts += 1;
      }
    }
    throw new SidecarError('inbox_conflict', `the acks of ${userId} kept changing: ${CAS_ATTEMPTS} compare-and-set attempts lost`, { temporary: true });
  }

  /** Shutdown: let acknowledgements already received reach JetStream (bounded by the caller). */
  async idle(): Promise<void> {
    for (;;) {
      const writes = [...this.users.values()].flatMap((u) => (u.writing ? [u.writing] : []));
      if (writes.length === 0) return;
      await Promise.all(writes);
    }
  }

  // ---- counts -------------------------------------------------------------------------------

  /** The user's stored direct messages not yet acknowledged (as written to the bucket). */
  async unacknowledged(userId: string): Promise<number> {
    const subject = this.subjectOf(userId);
    const info = await this.options.jsm.streams.info(this.config.streamName, { subjects_filter: subject });
    const stored = info.state.subjects?.[subject] ?? 0;
    if (stored === 0) return 0;
    return this.countUnacked(userId, (await this.readKey(userId)).state, stored);
  }

  /**
   * Unacknowledged stored direct messages over all users: per user from the stream's subject
   * counts, minus what the user's key acknowledges (one direct get per user with a key, plus one
   * per unacknowledged message above its floor). It reads the whole bucket: a metrics endpoint
   * should cache it, not call it per request.
   */
  async stats(): Promise<OfflineStats> {
    const perUser = await this.perUser();
    let total = 0;
    let users = 0;
    for (const n of perUser.values()) {
      total += n;
      if (n > 0) users += 1;
    }
    return { total_messages: total, users_with_messages: users };
  }

  private async perUser(): Promise<Map<string, number>> {
    const { streamName: stream, subjectPrefix } = this.config;
    const userSubjects = `${subjectPrefix}.user.`;
    const stored = new Map<string, number>();
    const info = await this.options.jsm.streams.info(stream, { subjects_filter: `${userSubjects}*` });
    for (const [subject, count] of Object.entries(info.state.subjects ?? {})) stored.set(subject.slice(userSubjects.length), count);
    const states = new Map<string, AckState>();
    const epoch = this.options.epoch();
    await this.onBucket('could not read the inbox bucket', async (kv) => {
      for await (const e of await kv.history()) {
        if (!stored.has(e.key)) continue;
        if (e.operation === 'PUT') states.set(e.key, decodeAcks(e.value, epoch));
        else states.delete(e.key);
      }
    });
    const perUser = new Map<string, number>();
    const todo = [...stored].filter(([user]) => {
      if (!states.has(user)) perUser.set(user, stored.get(user)!);
      return states.has(user);
    });
    const work = async (): Promise<void> => {
      for (let job = todo.pop(); job; job = todo.pop()) {
        const [user, count] = job;
        perUser.set(user, await this.countUnacked(user, states.get(user)!, count));
      }
    };
    await Promise.all(Array.from({ length: STATS_CONCURRENCY }, work));
    return perUser;
  }

  private async countUnacked(userId: string, state: AckState, stored: number): Promise<number> {
    let n = 0;
    let cursor = state.floor;
    // At most `stored` messages above the floor; one more read finds there are none left.
    for (let i = 0; i <= stored; i++) {
      const seq = await this.nextStored(userId, cursor + 1);
      if (seq === undefined) break;
      if (!isAcked(state, seq)) n += 1;
      cursor = seq;
    }
    return n;
  }
}

function unavailable(message: string, cause: unknown): SidecarError {
  return new SidecarError('inbox_unavailable', message, { cause, temporary: true });
}
