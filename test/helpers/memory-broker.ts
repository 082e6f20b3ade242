/**
 * A broker in memory that implements the core's BrokerPort for real, for unit tests of the hub,
 * the subscription handover and the processors that run in milliseconds. Like the stream it
 * stands for: one seq for the whole stream, each topic keeps its last `window` events (older ones
 * are gone: a replay from before them is truncated), an epoch that changes when the stream is
 * created anew, and an inbox per user whose direct messages stay until acknowledged.
 * (The NATS broker itself is tested against real nats-servers in test/integration.)
 */
import type { BrokerPort, HistoryPage, HistoryQuery, ReplayResult, ResumePosition, StoredEvent, Topic } from '../../src/core/ports.js';

export interface PublishOptions {
  /** The publisher's id (envelope message_id / Nats-Msg-Id). */
  messageId?: string;
  /** The event is about this user (their join or leave). */
  aboutUser?: string;
  /** false: stored only, not delivered live (it was lost on the way, or a test delivers it itself). */
  live?: boolean;
}

export interface MemoryBrokerOptions {
  /** Events kept per topic (the stream's max messages per subject). Default 100. */
  window?: number;
}

export class MemoryBroker implements BrokerPort {
  epoch = 'e1';
  /** The last seq stored in this epoch. */
  lastSeq = 0;
  /** Topics with local subscribers, as setInterest left them. */
  readonly interest = new Set<Topic>();
  /** Every acknowledge and written call, in order. */
  readonly acks: { userId: string; seq: number; how: 'ack' | 'written' }[] = [];
  /** Live delivery (the hub's publish), wired by memoryBrokerHub. */
  sink: ((topic: Topic, event: StoredEvent) => void) | undefined;
  /** Told of a new epoch (the hub's epochChanged), wired by memoryBrokerHub. */
  epochSink: ((epoch: string, previous: string) => void) | undefined;
  /**
   * Awaited by every replay before it reads the store: a test holds replays here to publish
   * meanwhile (events published before it opens are both held live and read by the replay).
   */
  replayGate: (() => Promise<void>) | undefined;
  /** Awaited by interestReady: a test can make the readiness of topics wait. */
  readyGate: (() => Promise<void>) | undefined;

  private readonly window: number;
  private readonly stored = new Map<Topic, StoredEvent[]>();
  /** The highest seq each topic lost to its window. */
  private readonly cut = new Map<Topic, number>();
  /** Per user: seqs acknowledged one by one, and everything up to `upTo` (written). */
  private readonly inboxes = new Map<string, { acked: Set<number>; upTo: number }>();
  private epochs = 1;

  constructor(options: MemoryBrokerOptions = {}) {
    this.window = options.window ?? 100;
  }

  /** Store an event on `topic` and deliver it live; returns it. The frame carries `type`, `seq` and `data`. */
  publish(topic: Topic, type: string, data: Record<string, unknown> = {}, options: PublishOptions = {}): StoredEvent {
    const seq = ++this.lastSeq;
    const projectId = topic.startsWith('project.') ? topic.slice(8) : undefined;
    const text = JSON.stringify({ type, ...(projectId ? { project_id: projectId } : {}), seq, data, message_id: options.messageId });
    const event: StoredEvent = { seq, frame: { text }, messageId: options.messageId, aboutUser: options.aboutUser };
    let list = this.stored.get(topic);
    if (list === undefined) this.stored.set(topic, (list = []));
    list.push(event);
    if (list.length > this.window) this.cut.set(topic, list.shift()!.seq);
    // A copy per delivery: the hub marks duplicates on the event it is given.
    if (options.live !== false && this.interest.has(topic)) this.sink?.(topic, { ...event });
    return event;
  }

  /** The stream is created anew: nothing stored, seqs from 1, a new epoch, and the hub is told. */
  recreate(): string {
    const previous = this.epoch;
    this.epoch = `e${++this.epochs}`;
    this.lastSeq = 0;
    this.stored.clear();
    this.cut.clear();
    this.inboxes.clear();
    this.epochSink?.(this.epoch, previous);
    return this.epoch;
  }

  /** The seqs of the user's direct messages nobody has acknowledged. */
  unacknowledged(userId: string): number[] {
    const inbox = this.inboxes.get(userId);
    return (this.stored.get(`user.${userId}`) ?? [])
      .map((e) => e.seq)
      .filter((seq) => inbox === undefined || (seq > inbox.upTo && !inbox.acked.has(seq)));
  }

  // ---- BrokerPort ---------------------------------------------------------------------------

  setInterest(topic: Topic, interested: boolean): void {
    if (interested) this.interest.add(topic);
    else this.interest.delete(topic);
  }

  async interestReady(): Promise<void> {
    await this.readyGate?.();
  }

  /** The latest `limit` events, the `limit` before `before`, or the `limit` after `after`. */
  async historyPage(topic: Topic, query: HistoryQuery): Promise<HistoryPage> {
    const events = this.stored.get(topic) ?? [];
    if (query.after !== undefined) {
      const newer = events.filter((e) => e.seq > query.after!);
      return { epoch: this.epoch, events: newer.slice(0, query.limit), more: newer.length > query.limit };
    }
    const older = query.before === undefined ? events : events.filter((e) => e.seq < query.before!);
    return { epoch: this.epoch, events: older.slice(-query.limit), more: older.length > query.limit };
  }

  async replay(topic: Topic, position: ResumePosition, onEvent: (event: StoredEvent) => void): Promise<ReplayResult> {
    await this.replayGate?.();
    const epoch = this.epoch;
    const events = this.stored.get(topic) ?? [];
    // A position from another epoch, or past the stream's end, says nothing about this stream: all of it follows.
    if ((position.epoch !== undefined && position.epoch !== epoch) || position.since > this.lastSeq) {
      for (const e of events) onEvent({ ...e });
      return { truncated: true, epoch, restarted: true };
    }
    for (const e of events) if (e.seq > position.since) onEvent({ ...e });
    return { truncated: (this.cut.get(topic) ?? 0) > position.since, epoch, restarted: false };
  }

  async backlog(userId: string, onEvent: (event: StoredEvent) => void): Promise<void> {
    const open = new Set(this.unacknowledged(userId));
    for (const e of this.stored.get(`user.${userId}`) ?? []) if (open.has(e.seq)) onEvent({ ...e });
  }

  acknowledge(userId: string, seq: number): void {
    this.acks.push({ userId, seq, how: 'ack' });
    this.inbox(userId).acked.add(seq);
  }

  written(userId: string, seq: number): void {
    this.acks.push({ userId, seq, how: 'written' });
    const inbox = this.inbox(userId);
    inbox.upTo = Math.max(inbox.upTo, seq);
  }

  private inbox(userId: string): { acked: Set<number>; upTo: number } {
    let inbox = this.inboxes.get(userId);
    if (inbox === undefined) this.inboxes.set(userId, (inbox = { acked: new Set(), upTo: 0 }));
    return inbox;
  }
}
