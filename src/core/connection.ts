/**
 * One client connection: its auth state, inbound admission, outbound queue and subscriptions.
 * Transport-agnostic: bytes arrive through `receive`, frames leave through `Transport.write`.
 */
import type { Logger } from 'pino';
import type { Principal } from '../auth.js';
import {
  CloseCode,
  ErrorCode,
  MessageType,
  ProtocolError,
  errorMessage,
  parseClientMessage,
  peekMessageId,
  serverMessage,
} from '../protocol.js';
import { ErrorBudget, TokenBucket } from './limits.js';
import type { EventRef } from './dedupe.js';
import type { OutFrame, StoredEvent, Topic, Transport } from './ports.js';
import type { Subscription } from './subscription.js';
import type { Hub } from './hub.js';
import { dispatch } from './processors.js';

export type ConnectionState = 'authenticating' | 'open' | 'closed';

export interface ConnectionInfo {
  id: string;
  userId: string | null;
  projects: string[];
  remoteAddress: string;
  connectedAt: string;
  messagesIn: number;
  messagesOut: number;
}

export class Connection {
  state: ConnectionState = 'authenticating';
  principal: Principal | null = null;
  readonly subscriptions = new Map<Topic, Subscription>();
  readonly openedAt: number;
  lastSeen: number;
  lastPing = 0;
  messagesIn = 0;
  messagesOut = 0;
  log: Logger;
  /** The client has sent an `ack`: it acknowledges its direct messages itself (inboxAckMode auto). */
  acksDirect = false;

  private queue: OutFrame[] = [];
  private dirty = false;
  private readonly inbound: TokenBucket;
  private outbound: TokenBucket;
  private readonly errors: ErrorBudget;
  private busy = false;
  private backlog: (() => void | Promise<void>)[] = [];
  /** The user's own topic (direct messages), once authenticated. */
  private userSub: Subscription | undefined;
  /** Direct messages up to this seq have been written to the socket; for ack-on-write. */
  private directWritten = 0;
  /** In auto mode: acked on write up to this seq, and the next written ones waiting out inboxAckWait. */
  private directAcked = 0;
  private unackedWrite: { seq: number; since: number } | undefined;

  constructor(
    readonly hub: Hub,
    readonly id: string,
    readonly transport: Transport,
    readonly remoteAddress: string,
    now: number,
  ) {
    const c = hub.config;
    this.openedAt = now;
    this.lastSeen = now;
    this.inbound = new TokenBucket(c.requestsPerSecond, c.burstSize, now);
    this.outbound = new TokenBucket(c.outboundMessagesPerSecond, c.outboundBurst, now);
    this.errors = new ErrorBudget(c.maxErrors, c.errorResetInterval);
    this.log = hub.log.child({ conn: id });
  }

  get userId(): string | null {
    return this.principal?.userId ?? null;
  }

  get maxQueued(): number {
    return this.hub.config.maxQueuedMessages;
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  // ---- inbound ------------------------------------------------------------------------------

  /** One inbound frame. Never throws: every failure becomes a protocol error frame. */
  receive(data: string | Buffer, isBinary: boolean): void {
    if (this.state === 'closed') return;
    const now = Date.now();
    this.lastSeen = now;
    this.messagesIn += 1;
    this.hub.stats.messagesReceived += 1;
    // Admission before parsing: a flood costs a subtraction per frame, not a JSON.parse. The
    // refusal is answered at once (not in request order) so a flood never queues work.
    if (!this.inbound.tryTake(now)) {
      this.hub.stats.rateLimited += 1;
      this.fail(new ProtocolError(ErrorCode.RateLimited, 'too many requests; slow down'));
      return;
    }
    this.inOrder(() => this.process(data, isBinary));
  }

  private process(data: string | Buffer, isBinary: boolean): void | Promise<void> {
    if (isBinary) {
      return this.fail(new ProtocolError(ErrorCode.InvalidMessage, 'binary frames are not supported; send JSON text'));
    }
    const text = typeof data === 'string' ? data : data.toString('utf8');
    let message;
    try {
      message = parseClientMessage(text);
    } catch (err) {
      return this.fail(err, peekMessageId(text));
    }
    if (this.state !== 'open' && message.type !== MessageType.Auth) {
      const err = new ProtocolError(ErrorCode.Unauthorized, 'authenticate first: send {"type":"auth","data":{"token":...}}');
      return this.fail(err, message.message_id);
    }
    const id = message.message_id;
    try {
      const result = dispatch(this, message);
      if (result) return result.catch((err) => this.fail(err, id));
    } catch (err) {
      this.fail(err, id);
    }
  }

  /**
   * Run request handlers one at a time, in arrival order, so answers come back in the order the
   * client asked (a `ping` after a `subscribe` is answered after it). Synchronous handlers run at
   * once; only an async one (auth, subscribe) makes later requests wait. The backlog is bounded
   * by the inbound limiter.
   */
  private inOrder(task: () => void | Promise<void>): void {
    if (this.busy) {
      this.backlog.push(task);
      return;
    }
    let next: (() => void | Promise<void>) | undefined = task;
    while (next) {
      const result = next();
      if (result) {
        this.busy = true;
        void result.then(() => {
          this.busy = false;
          const queued = this.backlog.shift();
          if (queued) this.inOrder(queued);
        });
        return;
      }
      next = this.backlog.shift();
    }
  }

  /** Send an error frame and count it against the error budget. */
  fail(err: unknown, inReplyTo?: string): void {
    if (this.state === 'closed') return;
    let code: ErrorCode = ErrorCode.ProcessingError;
    let text = 'the request could not be processed';
    let details: Record<string, unknown> | undefined;
    if (err instanceof ProtocolError) {
      code = err.code;
      text = err.message;
      details = err.details;
    } else {
      this.log.warn({ err }, 'processor failed');
    }
    this.hub.stats.errorsSent += 1;
    this.send(errorMessage(code, text, inReplyTo ? { ...details, in_reply_to: inReplyTo } : details));
    if (this.errors.record(Date.now())) {
      this.close(CloseCode.TooManyErrors, 'too many errors');
    }
  }

  get errorCount(): number {
    return this.errors.errors;
  }

  // ---- auth ---------------------------------------------------------------------------------

  /** Become authenticated: join the user's and the broadcast topics, then say auth_success. */
  async authenticate(principal: Principal): Promise<void> {
    const refresh = this.state === 'open';
    this.principal = principal;
    const backlog: StoredEvent[] = [];
    if (!refresh) {
      if (!this.hub.admitUser(this, principal.userId)) return;
      this.state = 'open';
      this.userSub = this.hub.join(this, `user.${principal.userId}`);
      this.hub.join(this, 'broadcast');
      await Promise.all([this.hub.ready(`user.${principal.userId}`), this.hub.ready('broadcast')]);
      if (this.state !== 'open') return;
      // The user's unacknowledged direct messages go first, in order; live ones are held meanwhile.
      await this.hub.broker.backlog(principal.userId, (event) => backlog.push(event));
      if (this.state !== 'open') return;
      this.log = this.log.child({ user: principal.userId });
      this.log.info({ remote: this.remoteAddress, backlog: backlog.length }, 'connection authenticated');
    } else {
      this.hub.dropForbiddenProjects(this);
    }
    this.send(serverMessage(MessageType.AuthSuccess, { user_id: principal.userId, connection_id: this.id }));
    if (!refresh) {
      for (const event of backlog) {
        this.hub.checkDuplicate(`user.${principal.userId}`, event);
        this.userSub!.replayed(event);
      }
      for (const topic of [`user.${principal.userId}`, 'broadcast']) this.subscriptions.get(topic)?.release();
    }
  }

  // ---- outbound -----------------------------------------------------------------------------

  /** Queue a server-originated message (already serialised). */
  send(text: string): void {
    this.enqueue({ text });
  }

  /** Queue a frame; the hub flushes every dirty connection once per tick. */
  enqueue(frame: OutFrame): void {
    if (this.state === 'closed') return;
    this.queue.push(frame);
    if (this.queue.length > this.hub.config.maxQueuedMessages) {
      this.slowConsumer('outbound queue over its cap');
      return;
    }
    if (!this.dirty) {
      this.dirty = true;
      this.hub.markDirty(this);
    }
  }

  /** Write what the budget allows; the rest waits for the slow lane. */
  flush(now: number): void {
    this.dirty = false;
    if (this.state === 'closed' || this.queue.length === 0) return;
    const n = this.outbound.takeUpTo(this.queue.length, now);
    if (n > 0) {
      let batch: OutFrame[];
      if (n === this.queue.length) {
        batch = this.queue;
        this.queue = [];
      } else {
        batch = this.queue.slice(0, n);
        this.queue = this.queue.slice(n);
      }
      this.transport.write(batch);
      this.messagesOut += n;
      this.hub.stats.messagesSent += n;
      // A drained queue means every direct message enqueued so far is written: one compare per flush.
      if (this.queue.length === 0 && this.userSub !== undefined && this.userSub.lastSeq > this.directWritten) {
        this.directWritten = this.userSub.lastSeq;
        if (this.hub.config.inboxAckMode === 'write') this.hub.broker.written(this.userId!, this.directWritten);
      }
      if (this.transport.bufferedAmount > this.hub.config.maxBufferedBytes) {
        this.slowConsumer('socket buffer over its cap');
        return;
      }
    }
    if (this.queue.length > 0) this.hub.pacer.schedule(this.id, () => this.flush(Date.now()));
  }

  /** True when the client has event `ref` (used to skip the same message under another seq). */
  has(ref: EventRef): boolean {
    return this.subscriptions.get(ref.topic)?.has(ref.seq) ?? false;
  }

  /**
   * Ack-on-write for a client that never acks (inboxAckMode auto), run by the hub's sweep: direct
   * messages written at least inboxAckWait ago are acknowledged on its behalf. A client that
   * acks shows it within that time and is left to ack for itself.
   */
  ackWrittenAfterGrace(now: number): void {
    if (this.hub.config.inboxAckMode !== 'auto' || this.acksDirect || this.directWritten <= this.directAcked) return;
    const pending = this.unackedWrite;
    if (pending === undefined) {
      this.unackedWrite = { seq: this.directWritten, since: now };
      return;
    }
    if (now - pending.since < this.hub.config.inboxAckWait) return;
    this.directAcked = pending.seq;
    this.hub.broker.written(this.userId!, pending.seq);
    this.unackedWrite = this.directWritten > pending.seq ? { seq: this.directWritten, since: now } : undefined;
  }

  slowConsumer(reason: string): void {
    if (this.state === 'closed') return;
    this.hub.stats.slowConsumers += 1;
    this.log.warn({ queued: this.queue.length, buffered: this.transport.bufferedAmount }, `slow consumer: ${reason}`);
    this.queue = [];
    this.close(CloseCode.SlowConsumer, 'slow consumer: resume with since');
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  /** Close with a code; what is already queued within budget is written first. */
  close(code: number, reason: string): void {
    if (this.state === 'closed') return;
    if (this.queue.length > 0 && code !== CloseCode.SlowConsumer) {
      const n = this.outbound.takeUpTo(this.queue.length, Date.now());
      if (n > 0) this.transport.write(this.queue.slice(0, n));
    }
    this.queue = [];
    this.transport.close(code, reason.slice(0, 120));
    this.closed(code, reason);
  }

  /** The socket is gone (closed by us, by the peer or by the network). Idempotent. */
  closed(code: number, reason: string): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.hub.remove(this);
    this.log.info(
      { user: this.userId ?? undefined, code, reason: reason || undefined, in: this.messagesIn, out: this.messagesOut },
      'connection closed',
    );
  }

  info(): ConnectionInfo {
    return {
      id: this.id,
      userId: this.userId,
      projects: [...this.subscriptions.keys()].filter((t) => t.startsWith('project.')).map((t) => t.slice(8)),
      remoteAddress: this.remoteAddress,
      connectedAt: new Date(this.openedAt).toISOString(),
      messagesIn: this.messagesIn,
      messagesOut: this.messagesOut,
    };
  }
}
