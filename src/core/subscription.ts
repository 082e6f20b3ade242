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
  /** Non-null while the subscription is catching up; live events wait here. */
  private held: StoredEvent[] | null = [];

  constructor(
    readonly connection: Connection,
    readonly topic: Topic,
    since = 0,
  ) {
    this.lastSeq = since;
  }

  get catchingUp(): boolean {
    return this.held !== null;
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
    if (event.aboutUser !== undefined && event.aboutUser === this.connection.userId) return;
    this.connection.enqueue(event.frame);
  }

  /** Start (again) holding live events, e.g. for a new replay from `since`. */
  hold(since: number): void {
    this.held ??= [];
    this.lastSeq = since;
  }

  /** The replay is done: release what arrived live meanwhile, skipping what was replayed. */
  release(): void {
    const held = this.held;
    this.held = null;
    if (held) for (const event of held) this.offer(event);
  }
}
