/**
 * The offline inbox: one durable JetStream consumer per user (R1, filter `<prefix>.user.<id>`,
 * explicit acks, inactive_threshold = messageTTL) holds the user's direct messages that have not
 * been acknowledged, across connections, sidecar instances and restarts.
 *
 * It is read in snapshots: one pull with `no_wait` returns every unacknowledged message available
 * now and is then over. There is never a long-lived pull: nats-server 2.9 may hand a nak'd
 * message to a pull whose reader has gone, and it would then wait out ack_wait. Two snapshots:
 * - backlog, when a connection opens: what it returns goes to that connection in seq order,
 *   before live events; then it is nak'd, so it stays unacknowledged until someone acks it;
 * - settle, after acknowledgements (a client's `ack`, or a write when acks are on write): the
 *   acknowledged messages are acked, the rest nak'd. Acks from any instance work the same way.
 * Live direct messages do not go through the consumer: they reach every connection of the user,
 * on every instance, through the stream's republish like any event.
 * One user's snapshots run one at a time on an instance (concurrent ones would split it).
 */
import { createInbox, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, type ConsumerConfig, type ConsumerInfo, type JetStreamManager } from '@nats-io/jetstream';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { SidecarError } from '../errors.js';

export type InboxConfig = Pick<
  Config,
  'subjectPrefix' | 'streamName' | 'maxStoredMessages' | 'messageTTL' | 'inboxAckWait'
>;

/** A direct message taken from the user's consumer. */
export interface InboxMessage {
  readonly seq: number;
  readonly data: Uint8Array;
  readonly headers: Msg['headers'];
  /** When the stream stored it (RFC 3339). */
  readonly storedAt: string;
}

/** The Go package's offline_messages metrics, read from JetStream. */
export interface OfflineStats {
  /** Direct messages not yet acknowledged, over all users (those who never connected: all stored). */
  total_messages: number;
  users_with_messages: number;
}

const NANOS_PER_MS = 1_000_000;
const CONSUMER_PREFIX = 'inbox-';
/** Messages asked for per pull; a snapshot pulls again while full batches come back. */
const BATCH = 256;
/** A pull is answered at once (no_wait); no answer at all means the consumer is gone. */
const PULL_TIMEOUT_MS = 2_000;
/** Acks whose message a snapshot did not find (another instance held it) are retried this often. */
const SETTLE_RETRIES = 5;
/** Pulls again (after 10, 30, 90 ms) for messages this instance handed back a moment ago. */
const RELEASED_RETRIES = 3;
/** How long an idle user's handed-back seqs are remembered for that. */
const RELEASED_MEMORY_MS = 1_000;

interface Pulled extends InboxMessage {
  readonly msg: Msg;
}

/** One user's acknowledgements waiting to be applied, and the queue of its snapshots. */
class UserInbox {
  /** Seqs the user acknowledged that the consumer has not been told yet. */
  readonly acks = new Set<number>();
  /** Every message up to this seq counts as acknowledged (ack on write). */
  upTo = 0;
  /**
   * Seqs this instance nak'd and nobody has acked since. The server applies naks apart from pull
   * requests, so a snapshot right after one can miss them: it waits a little for these.
   */
  readonly released = new Set<number>();
  settleQueued = false;
  retries = 0;
  forgetTimer: NodeJS.Timeout | undefined;
  /** Snapshots queued or running. */
  pending = 0;
  private tail: Promise<unknown> = Promise.resolve();

  acknowledged(seq: number): boolean {
    return seq <= this.upTo || this.acks.has(seq);
  }

  /** Run `op` after the user's previous snapshots. */
  run<T>(op: () => Promise<T>): Promise<T> {
    this.pending += 1;
    const result = this.tail.then(op).finally(() => (this.pending -= 1));
    this.tail = result.catch(() => {});
    return result;
  }

  get idle(): Promise<unknown> {
    return this.tail;
  }
}

export class Inboxes {
  private readonly users = new Map<string, UserInbox>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly config: InboxConfig,
    private readonly log: Logger,
    /**
     * For the requests a connect waits on (is anything stored, the consumer): a short timeout,
     * so that JetStream answering slowly (just restarted, electing) costs a connect its backlog
     * for now, not its authentication, which clients give up on after a few seconds.
     */
    private readonly connectJsm: JetStreamManager = jsm,
  ) {}

  consumerName(userId: string): string {
    return CONSUMER_PREFIX + userId;
  }

  consumerConfig(userId: string): Partial<ConsumerConfig> & { durable_name: string } {
    return {
      durable_name: this.consumerName(userId),
      filter_subject: `${this.config.subjectPrefix}.user.${userId}`,
      ack_policy: AckPolicy.Explicit,
      // A new consumer (first connection, or the old one expired with the TTL) starts with what
      // the stream still has, all of it newer than the user's last activity.
      deliver_policy: DeliverPolicy.All,
      // Only matters when an instance dies in the middle of a snapshot.
      ack_wait: this.config.inboxAckWait * NANOS_PER_MS,
      inactive_threshold: this.config.messageTTL * NANOS_PER_MS,
      max_ack_pending: this.config.maxStoredMessages,
      num_replicas: 1,
    };
  }

  private async hasStored(userId: string): Promise<boolean> {
    const subject = `${this.config.subjectPrefix}.user.${userId}`;
    return (await this.connectJsm.direct.getMessage(this.config.streamName, { last_by_subj: subject })) !== null;
  }

  /** Create the user's consumer, or bring its mutable settings up to date (the same call: idempotent). */
  ensureConsumer(userId: string, jsm = this.jsm): Promise<ConsumerInfo> {
    return jsm.consumers.add(this.config.streamName, this.consumerConfig(userId));
  }

  /**
   * The user's unacknowledged direct messages, in seq order, for a connection that just opened.
   * They stay unacknowledged (nak'd) until an ack. Never rejects: live delivery does not depend
   * on the inbox, so a failure here only costs the backlog.
   */
  async backlog(userId: string, nothingStored = false): Promise<InboxMessage[]> {
    // Known from the live topic's baseline (broker): skip the direct get below.
    if (nothingStored && !this.users.has(userId)) return [];
    const user = this.user(userId);
    try {
      return await user.run(async () => {
        // Nothing ever stored for this user (the common case for a new user): no backlog, and no
        // durable consumer yet. One direct get instead of a consumer create and a pull per connect;
        // the consumer is made by the first ack (a pull that finds none creates it) or the next
        // connect after a direct message, and starts from everything stored, so nothing is missed.
        if (!(await this.hasStored(userId))) return [];
        await this.ensureConsumer(userId, this.connectJsm);
        const pulled = await this.snapshot(userId, user, Infinity);
        const unacked = pulled.filter((m) => !user.acknowledged(m.seq));
        await this.settleAll(user, pulled);
        return unacked.sort((a, b) => a.seq - b.seq);
      });
    } catch (err) {
      this.log.warn({ err, user: userId }, 'offline inbox unavailable: connected without the backlog');
      return [];
    } finally {
      this.forgetIfIdle(userId, user);
    }
  }

  /** The user acknowledged `seq` (from any of its connections). */
  acknowledge(userId: string, seq: number): void {
    const user = this.user(userId);
    user.acks.add(seq);
    // Bounded: the consumer never holds more than maxStoredMessages unacknowledged messages.
    if (user.acks.size > this.config.maxStoredMessages) user.acks.delete(user.acks.values().next().value!);
    user.retries = 0;
    this.settle(userId, user);
  }

  /** Ack on write: every direct message up to `seq` was written to one of the user's sockets. */
  written(userId: string, seq: number): void {
    const user = this.user(userId);
    if (seq <= user.upTo) return;
    user.upTo = seq;
    this.settle(userId, user);
  }

  private settle(userId: string, user: UserInbox): void {
    if (user.settleQueued) return;
    user.settleQueued = true;
    void user
      .run(async () => {
        user.settleQueued = false;
        const target = Math.max(user.upTo, ...user.acks);
        if (target <= 0) return;
        await this.settleAll(user, await this.snapshot(userId, user, target));
      })
      .catch((err) => this.log.warn({ err, user: userId }, 'could not apply acknowledgements; retrying'))
      .finally(() => {
        // Acks the snapshot did not meet: another instance was holding those messages (or they
        // were acked already). Try a few more times, then let them go.
        if (user.acks.size > 0 && user.retries < SETTLE_RETRIES) {
          const delay = 100 * 2 ** user.retries++;
          setTimeout(() => this.settle(userId, user), delay).unref();
        } else {
          user.acks.clear();
          this.forgetIfIdle(userId, user);
        }
      });
  }

  /**
   * Ack what the user acknowledged, nak the rest: the snapshot is over, nothing stays held. The
   * flush makes the next snapshot see them (the server applies acks before later requests).
   */
  private async settleAll(user: UserInbox, pulled: Pulled[]): Promise<void> {
    for (const m of pulled) {
      const acked = user.acknowledged(m.seq);
      if (acked) {
        user.acks.delete(m.seq);
        user.released.delete(m.seq);
      } else {
        user.released.add(m.seq);
      }
      respond(m.msg, acked ? '+ACK' : '-NAK');
    }
    if (pulled.length > 0) await this.nc.flush();
  }

  /**
   * Pull everything available (no_wait), batch after batch, until past `until` or nothing is
   * left; messages pulled stay held until the caller acks or naks them. A consumer that expired
   * while its user stayed connected (inactive_threshold) is recreated once.
   */
  private async snapshot(userId: string, user: UserInbox, until: number): Promise<Pulled[]> {
    const out = await this.pullAll(userId, until);
    try {
      for (let retry = 0; retry < RELEASED_RETRIES; retry++) {
        const seen = new Set(out.map((m) => m.seq));
        if (![...user.released].some((seq) => seq <= until && !seen.has(seq))) break;
        await new Promise((r) => setTimeout(r, 10 * 3 ** retry));
        for (const m of await this.pullAll(userId, until)) if (!seen.has(m.seq)) out.push(m);
      }
    } catch (err) {
      release(out);
      throw err;
    }
    // Not back by now: acked by another instance, or held by one (it hands them back itself).
    user.released.clear();
    return out;
  }

  private async pullAll(userId: string, until: number): Promise<Pulled[]> {
    const out: Pulled[] = [];
    let recreated = false;
    for (;;) {
      let batch: Pulled[];
      try {
        batch = await this.pull(userId, BATCH);
      } catch (err) {
        if (recreated || !(err instanceof SidecarError && err.code === 'inbox_no_answer')) {
          release(out);
          throw err;
        }
        recreated = true;
        await this.ensureConsumer(userId);
        continue;
      }
      out.push(...batch);
      if (batch.length < BATCH || out.length >= this.config.maxStoredMessages) return out;
      if (batch.some((m) => m.seq >= until)) return out;
    }
  }

  private pull(userId: string, batch: number): Promise<Pulled[]> {
    const subject = `$JS.API.CONSUMER.MSG.NEXT.${this.config.streamName}.${this.consumerName(userId)}`;
    return new Promise((resolve, reject) => {
      const got: Pulled[] = [];
      const inbox = createInbox();
      const finish = (err?: Error): void => {
        clearTimeout(timer);
        sub.unsubscribe();
        if (err) {
          release(got);
          reject(err);
        } else {
          resolve(got);
        }
      };
      const sub = this.nc.subscribe(inbox, {
        callback: (err, msg) => {
          if (err) return finish(err);
          const message = toInboxMessage(msg);
          if (!message) return finish(); // a status (404 no messages, 408 done, 409 limits) ends the batch
          got.push(message);
          if (got.length >= batch) finish();
        },
      });
      const timer = setTimeout(
        () => finish(new SidecarError('inbox_no_answer', `no answer pulling ${this.consumerName(userId)}`)),
        PULL_TIMEOUT_MS,
      );
      try {
        this.nc.publish(subject, JSON.stringify({ batch, no_wait: true }), { reply: inbox });
      } catch (err) {
        finish(err as Error); // the connection is closed
      }
    });
  }

  private user(userId: string): UserInbox {
    let user = this.users.get(userId);
    if (!user) this.users.set(userId, (user = new UserInbox()));
    return user;
  }

  private forgetIfIdle(userId: string, user: UserInbox): void {
    if (user.pending > 0 || user.acks.size > 0 || user.settleQueued || this.users.get(userId) !== user) return;
    clearTimeout(user.forgetTimer);
    user.forgetTimer = undefined;
    if (user.released.size === 0) {
      this.users.delete(userId);
      return;
    }
    // What was just handed back is remembered a moment longer, for a snapshot that follows at once.
    user.forgetTimer = setTimeout(() => {
      user.forgetTimer = undefined;
      user.released.clear();
      this.forgetIfIdle(userId, user);
    }, RELEASED_MEMORY_MS);
    user.forgetTimer.unref();
  }

  /** Shutdown: let acknowledgements already received reach JetStream (bounded by the caller). */
  async idle(): Promise<void> {
    await Promise.all([...this.users.values()].map((u) => u.idle));
  }

  /**
   * Unacknowledged direct messages, from JetStream: each inbox consumer's pending + ack-pending,
   * and for users without a consumer (never connected within the TTL) everything stored for them.
   * It lists every consumer of the stream: a metrics endpoint should not call it per request.
   */
  async stats(): Promise<OfflineStats> {
    const { streamName: stream, subjectPrefix } = this.config;
    const userSubjects = `${subjectPrefix}.user.`;
    const perUser = new Map<string, number>();
    const info = await this.jsm.streams.info(stream, { subjects_filter: `${userSubjects}*` });
    for (const [subject, count] of Object.entries(info.state.subjects ?? {})) {
      perUser.set(subject.slice(userSubjects.length), count);
    }
    for await (const c of this.jsm.consumers.list(stream)) {
      if (c.name.startsWith(CONSUMER_PREFIX)) perUser.set(c.name.slice(CONSUMER_PREFIX.length), c.num_pending + c.num_ack_pending);
    }
    let total = 0;
    let users = 0;
    for (const n of perUser.values()) {
      total += n;
      if (n > 0) users += 1;
    }
    return { total_messages: total, users_with_messages: users };
  }
}

/**
 * A message from a pull, or undefined for a status. Its reply subject is the ack subject:
 * `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<nanos>.<pending>`, with domain and
 * account tokens after `$JS.ACK` on nats-server 2.10+.
 */
function toInboxMessage(msg: Msg): Pulled | undefined {
  if (!msg.reply?.startsWith('$JS.ACK.') || (msg.headers?.code ?? 0) !== 0) return undefined;
  const t = msg.reply.split('.');
  const o = t.length === 9 ? 2 : 4;
  const seq = Number(t[o + 3]);
  if (!(seq > 0)) return undefined;
  const nanos = t[o + 5] ?? '';
  const ms = /^\d{1,30}$/.test(nanos) ? Number(BigInt(nanos) / 1_000_000n) : Date.now();
  return { msg, seq, data: msg.data, headers: msg.headers, storedAt: new Date(ms).toISOString() };
}

/** Give back what a failed snapshot holds. */
function release(pulled: Pulled[]): void {
  for (const m of pulled) respond(m.msg, '-NAK');
}

/** Ack or nak; on a closed connection there is nothing left to tell (JetStream redelivers after ack_wait). */
function respond(msg: Msg, verdict: '+ACK' | '-NAK'): void {
  try {
    msg.respond(verdict);
  } catch {
    /* connection closed */
  }
}
