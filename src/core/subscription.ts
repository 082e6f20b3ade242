import type { Connection } from './connection.js';
import type { StoredEvent, Topic } from './ports.js';

/**
 * One connection's membership of one topic. It owns the resume handover: while a replay runs,
 * live events are held in `held`; when the replay ends they are released in order, dropping any
 * the replay already delivered. `lastSeq` also drops redeliveries on the live path, so a
 * connection never sees a seq twice on a topic.
 */
export class Subscription {
  lastSeq: number;
  /**
   * The lowest seq the client has on this topic: 0 after a resume with `since` (it claims every
   * event up to there), else the first one delivered. With `lastSeq` it answers `has(seq)`.
   */
  private firstSeq: number;
  /** Non-null while the subscription is catching up; live events wait here. */
  private held: StoredEvent[] | null = [];
  /** Where it stood before a re-subscribe's `since` moved it: put back if that request fails. */
  private before: { lastSeq: number; firstSeq: number } | undefined;

  constructor(
    readonly connection: Connection,
    readonly topic: Topic,
    since?: number,
  ) {
    this.lastSeq = since ?? 0;
    this.firstSeq = since === undefined ? Infinity : 0;
  }

  /** True when the client has (or, through `since`, said it has) event `seq` of this topic. */
  has(seq: number): boolean {
    return seq >= this.firstSeq && seq <= this.lastSeq;
  }

  /** A live event from the broker. Hot path: a compare and a push. */
  offer(event: StoredEvent): void {
    if (this.held !== null) {
      if (this.held.length >= this.connection.maxQueued) this.connection.slowConsumer('live events piled up during replay');
      else this.held.push(event);
      return;
    }
    this.deliver(event);
  }

  /** A replayed event: delivered at once, in stream order. */
  replayed(event: StoredEvent): void {
    this.deliver(event);
  }

  private deliver(event: StoredEvent): void {
    if (event.seq <= this.lastSeq) return;
    this.lastSeq = event.seq;
    // The same message under another seq (a publisher's retry, or sent to a project and a user):
    // a client never gets one message_id twice.
    if (event.duplicateOf !== undefined && this.connection.has(event.duplicateOf)) return;
    if (this.firstSeq === Infinity) this.firstSeq = event.seq;
    if (event.aboutUser !== undefined) {
      // Presence news: it may wait a few ms for the next ones (a storm of joins, one write per socket).
      if (event.aboutUser !== this.connection.userId) this.connection.enqueueDeferred(event.frame);
      return;
    }
    this.connection.enqueue(event.frame);
  }

  /** Start (again) holding live events, e.g. for a new replay from `since`. */
  hold(since?: number): void {
    this.held ??= [];
    if (since !== undefined) {
      this.before ??= { lastSeq: this.lastSeq, firstSeq: this.firstSeq };
      this.lastSeq = since;
      this.firstSeq = 0;
    }
  }

  /**
   * The stream's numbering started again (a new epoch): what the client has counts for nothing,
   * so every seq from here on is new. Keeps holding if it was.
   */
  restart(): void {
    this.before = undefined;
    this.lastSeq = 0;
    this.firstSeq = Infinity;
  }

  /**
   * A re-subscribe failed before its replay delivered anything: the client still has what it had,
   * so go back there and deliver live again (what arrived meanwhile included).
   */
  resume(): void {
    if (this.before !== undefined) {
      this.lastSeq = this.before.lastSeq;
      this.firstSeq = this.before.firstSeq;
    }
    this.release();
  }

  /** The replay is done: release what arrived live meanwhile, skipping what was replayed. */
  release(): void {
    this.before = undefined;
    const held = this.held;
    this.held = null;
    if (!held) return;
    // Live events and a user's inbox backlog can arrive interleaved; the client gets stream order.
    held.sort((a, b) => a.seq - b.seq);
    for (const event of held) this.deliver(event);
  }
}

/**
 * A connection's subscriptions by topic. A connection has a few (its user, broadcast, its
 * projects; at most maxSubscriptionsPerConnection + 2), so a plain array searched in order costs
 * less than a Map, whose table alone is ~450 bytes per connection. Not on the delivery path: the
 * hub's rooms hold the subscriptions themselves.
 */
export class TopicSubscriptions {
  private readonly list: Subscription[] = [];

  get size(): number {
    return this.list.length;
  }

  get(topic: Topic): Subscription | undefined {
    for (const sub of this.list) if (sub.topic === topic) return sub;
    return undefined;
  }

  has(topic: Topic): boolean {
    return this.get(topic) !== undefined;
  }

  /** Adds a subscription to a topic this connection has none for (the hub checks). */
  add(sub: Subscription): void {
    this.list.push(sub);
  }

  delete(topic: Topic): boolean {
    const i = this.list.findIndex((sub) => sub.topic === topic);
    if (i < 0) return false;
    this.list.splice(i, 1);
    return true;
  }

  /** The topics, as a copy: callers may leave topics while they go through it. */
  keys(): Topic[] {
    return this.list.map((sub) => sub.topic);
  }
}
