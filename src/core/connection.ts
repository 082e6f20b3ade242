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
  type ClientMessage,
  serverMessage,
  truncateCloseReason,
} from '../protocol.js';
import { ErrorBudget, TokenBucket } from './limits.js';
import type { EventRef } from './dedupe.js';
import type { OutFrame, Transport } from './ports.js';
import { OutboundQueue } from './outbound.js';
import { TopicSubscriptions, type Subscription } from './subscription.js';
import type { ConnectionHost } from './host.js';

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
  readonly subscriptions = new TopicSubscriptions();
  readonly openedAt: number;
  /** When the client was last heard from (a frame or a pong), and when it was last probed. */
  private lastSeen: number;
  private lastPing: number;
  messagesIn = 0;
  messagesOut = 0;
  /** The client has sent an `ack`: it acknowledges its direct messages itself (inboxAckMode auto). */
  acksDirect = false;

  private readonly queue = new OutboundQueue();
  private dirty = false;
  /** Frames wait for the hub's deferred flush (presence events only), not this tick's. */
  private deferred = false;
  /** The pacer holds a limiter for this connection (it went past its outbound burst). */
  private paced = false;
  /** When the socket buffer was first seen at or over maxBufferedBytes; 0 while it is under. */
  private stalledSince = 0;
  private readonly inbound: TokenBucket;
  private outbound: TokenBucket;
  /** Created at the first error: most connections never send one. */
  private errors: ErrorBudget | undefined;
  /** Created on first use: most connections never log anything of their own (memory per idle socket). */
  private childLog: Logger | undefined;
  private busy = false;
  /** Requests waiting behind an async one; created when one has to wait. */
  private waiting: (() => void | Promise<void>)[] | undefined;
  /** The user's own topic (direct messages), once authenticated. */
  private userSub: Subscription | undefined;
  /** Direct messages up to this seq have been written to the socket; for ack-on-write. */
  private directWritten = 0;
  /** In auto mode: acked on write up to this seq, and the next written ones waiting out inboxAckWait. */
  private directAcked = 0;
  private unackedWrite: { seq: number; since: number } | undefined;
  /** While authentication sets up: where auth_success goes in the outbound queue, which is not written meanwhile. */
  private setupMark: number | undefined;

  constructor(
    readonly host: ConnectionHost,
    readonly id: string,
    readonly transport: Transport,
    readonly remoteAddress: string,
    now: number,
  ) {
    const c = host.config;
    this.openedAt = now;
    this.lastSeen = now;
    this.lastPing = now;
    this.inbound = new TokenBucket(c.requestsPerSecond, c.burstSize, now);
    this.outbound = new TokenBucket(c.outboundMessagesPerSecond, c.outboundBurst, now);
  }

  get log(): Logger {
    return (this.childLog ??= this.host.log.child({ conn: this.id, user: this.userId ?? undefined }));
  }

  get userId(): string | null {
    return this.principal?.userId ?? null;
  }

  get maxQueued(): number {
    return this.host.config.maxQueuedMessages;
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
    this.lastPing = now;
    this.messagesIn += 1;
    this.host.stats.messagesReceived += 1;
    // Admission before parsing: a flood costs a subtraction per frame, not a JSON.parse. The
    // refusal is answered at once (not in request order) so a flood never queues work.
    if (!this.inbound.tryTake(now)) {
      this.host.stats.rateLimited += 1;
      this.fail(new ProtocolError(ErrorCode.RateLimited, 'too many requests; slow down'));
      return;
    }
    if (!this.busy) return this.inOrder(() => this.process(data, isBinary));
    // A slow request (auth, subscribe) is running. An ack has no answer and depends on nothing
    // before it: it is applied at once, not queued (a client acking its inbox during a long
    // replay would otherwise fill the queue and be refused). Everything else, answers to bad
    // frames included, keeps its place in line.
    const ack = this.state === 'open' && this.setupMark === undefined ? this.peekAck(data, isBinary) : undefined;
    if (ack !== undefined) return void this.execute(ack);
    // Requests that wait behind a slow one are capped, so a client cannot pile up work and
    // memory while a handler waits on NATS.
    if (this.waiting !== undefined && this.waiting.length >= this.host.config.burstSize) {
      this.host.stats.rateLimited += 1;
      this.fail(new ProtocolError(ErrorCode.RateLimited, 'too many requests in flight; wait for the answers'));
      return;
    }
    this.inOrder(() => this.process(data, isBinary));
  }

  /** The frame when it is a valid `ack`, else undefined; answers nothing. */
  private peekAck(data: string | Buffer, isBinary: boolean): ClientMessage | undefined {
    if (isBinary || (typeof data === 'string' ? Buffer.byteLength(data) : data.length) > this.host.config.maxMessageSize) return undefined;
    try {
      const message = parseClientMessage(typeof data === 'string' ? data : data.toString('utf8'));
      return message.type === MessageType.Ack ? message : undefined;
    } catch {
      return undefined;
    }
  }

  private process(data: string | Buffer, isBinary: boolean): void | Promise<void> {
    const message = this.parse(data, isBinary);
    if (message !== undefined) return this.execute(message);
  }

  /** The frame as a client message, or undefined when it was answered with an error or a close. */
  private parse(data: string | Buffer, isBinary: boolean): ClientMessage | undefined {
    if (isBinary) {
      this.fail(new ProtocolError(ErrorCode.InvalidMessage, 'binary frames are not supported; send JSON text'));
      return undefined;
    }
    // The socket accepts frames up to maxTokenLength + 1 KiB so that an `auth` message can carry
    // an RS/PS token (they rarely fit in 512 bytes); every other message keeps maxMessageSize.
    const oversized = (typeof data === 'string' ? Buffer.byteLength(data) : data.length) > this.host.config.maxMessageSize;
    const text = typeof data === 'string' ? data : data.toString('utf8');
    let message;
    try {
      message = parseClientMessage(text);
    } catch (err) {
      if (oversized) this.close(CloseCode.MessageTooBig, 'message too big');
      else this.fail(err, peekMessageId(text));
      return undefined;
    }
    if (oversized && message.type !== MessageType.Auth) {
      this.close(CloseCode.MessageTooBig, 'message too big');
      return undefined;
    }
    return message;
  }

  private execute(message: ClientMessage): void | Promise<void> {
    if (this.state !== 'open' && message.type !== MessageType.Auth) {
      const err = new ProtocolError(ErrorCode.Unauthorized, 'authenticate first: send {"type":"auth","data":{"token":...}}');
      return this.fail(err, message.message_id);
    }
    const id = message.message_id;
    try {
      const result = this.host.dispatch(this, message);
      if (result) return result.catch((err) => this.fail(err, id));
    } catch (err) {
      this.fail(err, id);
    }
  }

  /**
   * Run request handlers one at a time, in arrival order, so answers come back in the order the
   * client asked (a `ping` after a `subscribe` is answered after it). Synchronous handlers run at
   * once; only an async one (auth, subscribe) makes later requests wait. The waiting list is bounded
   * by the inbound limiter.
   */
  private inOrder(task: () => void | Promise<void>): void {
    if (this.busy) {
      (this.waiting ??= []).push(task);
      return;
    }
    let next: (() => void | Promise<void>) | undefined = task;
    while (next) {
      const result = next();
      if (result) {
        this.busy = true;
        void result.then(() => {
          this.busy = false;
          const queued = this.waiting?.shift();
          if (queued) this.inOrder(queued);
        });
        return;
      }
      next = this.waiting?.shift();
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
    this.send(errorMessage(code, text, inReplyTo ? { ...details, in_reply_to: inReplyTo } : details));
    this.countError();
  }

  /**
   * Count one error sent to the client (an `error` frame, or `auth_failed` on a live connection)
   * against the budget: maxErrors within errorResetInterval closes the connection with 4429.
   */
  countError(): void {
    if (this.state === 'closed') return;
    this.host.stats.errorsSent += 1;
    const c = this.host.config;
    if ((this.errors ??= new ErrorBudget(c.maxErrors, c.errorResetInterval)).record(Date.now())) {
      this.close(CloseCode.TooManyErrors, 'too many errors');
    }
  }

  get errorCount(): number {
    return this.errors?.errors ?? 0;
  }

  // ---- auth ---------------------------------------------------------------------------------

  /**
   * The socket is open. With the upgrade's principal, authentication is the first request in
   * the connection's order: frames the client sends meanwhile are processed after auth_success.
   * Without one, the client is asked for an `auth` message.
   */
  start(principal?: Principal): Promise<void> | undefined {
    if (principal === undefined) {
      this.send(serverMessage(MessageType.AuthRequired, { message: 'send {"type":"auth","data":{"token":"<JWT>"}}' }));
      return undefined;
    }
    // Settles when the authentication ran (the ws.connect span lasts until then).
    return new Promise<void>((settled) => this.inOrder(() => this.host.authenticate(this, principal).finally(settled)));
  }

  /**
   * Authentication sets up (authentication.ts): the connection is open, but nothing is written
   * until auth_success, which goes before whatever is queued meanwhile (a refusal, a
   * history_truncated of the user's topics): it is the first frame after auth.
   */
  beginSetup(): void {
    this.setupMark = this.queue.length;
    this.state = 'open';
  }

  /** The setup is done: `success` goes first, then what was queued; `directMessages` is the user's topic. */
  endSetup(success: string, directMessages: Subscription): void {
    this.queue.insert(this.setupMark ?? 0, { text: success });
    this.setupMark = undefined;
    this.userSub = directMessages;
    if (!this.dirty) {
      this.dirty = true;
      this.host.markDirty(this);
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
    if (!this.dirty) {
      this.dirty = true;
      this.host.markDirty(this);
    }
  }

  /**
   * Queue a frame that may wait up to PRESENCE_WRITE_DELAY_MS (hub.ts) for the ones after it: in a
   * storm of joins a socket gets one write per window, not one per tick. Order is kept (one queue);
   * a frame that cannot wait takes it out with the next flush.
   */
  enqueueDeferred(frame: OutFrame): void {
    if (this.state === 'closed') return;
    this.queue.push(frame);
    if (!this.dirty && !this.deferred) {
      this.deferred = true;
      this.host.markDeferred(this);
    }
  }

  /** The hub's deferred flush: unless a flush since took the frames out. */
  flushDeferred(now: number): void {
    if (this.deferred) this.flush(now);
  }

  /**
   * Write what the budget allows and the socket buffer has room for; the rest waits, for the
   * slow lane (budget spent) or the next tick (buffer room spent). While the socket buffer is
   * full nothing is written, so its buffer never exceeds maxBufferedBytes by more than one
   * frame. What is left waiting is capped (maxQueuedMessages, maxQueuedBytes) after the write, so
   * a burst that arrives within one tick and that the socket takes is not a slow consumer.
   */
  flush(now: number): void {
    this.dirty = false;
    this.deferred = false;
    if (this.state === 'closed' || this.queue.length === 0 || this.setupMark !== undefined) return;
    let n = 0;
    let fit = 0;
    if (!this.socketFull(now)) {
      fit = this.queue.countWithin(this.host.config.maxBufferedBytes - this.transport.bufferedAmount);
      n = this.outbound.takeUpTo(fit, now);
    }
    if (n > 0) {
      this.transport.write(this.queue.take(n));
      this.messagesOut += n;
      this.host.stats.messagesSent += n;
      // A drained queue means every direct message enqueued so far is written: one compare per flush.
      if (this.queue.length === 0 && this.userSub !== undefined && this.userSub.lastSeq > this.directWritten) {
        this.directWritten = this.userSub.lastSeq;
        if (this.host.config.inboxAckMode === 'write') this.host.written(this.userId!, this.directWritten);
      }
      // Start the slow-consumer clock; the next look (next flush or the sweep) decides.
      if (this.stalledSince === 0 && this.transport.bufferedAmount >= this.host.config.maxBufferedBytes) {
        this.stalledSince = now;
      }
    }
    if ((this.state as ConnectionState) === 'closed') return; // socketFull() found a slow consumer
    const c = this.host.config;
    if (this.queue.length > c.maxQueuedMessages || this.queue.chars > c.maxQueuedBytes) {
      return this.slowConsumer('outbound queue over its cap');
    }
    if (this.queue.length === 0) {
      if (this.paced) {
        this.paced = false;
        this.host.pacer.forget(this.id);
      }
    } else if (n < fit) {
      this.paced = true; // budget spent: wait for a lease
      this.host.pacer.schedule(this.id, () => this.flush(Date.now()));
    } else if (fit > 0) {
      this.dirty = true; // buffer room spent: look again next tick, when the socket has written
      this.host.markDirty(this);
    } // else the socket buffer is full: the hub's sweep looks again
  }

  /**
   * True while the socket buffer is at or over maxBufferedBytes. A buffer that stays there for
   * slowConsumerTimeout (seen at two checks that far apart, with none under the cap between)
   * makes this a slow consumer. The hub's sweep checks stalled connections again, so a socket
   * that drains resumes even when no new frame arrives.
   */
  private socketFull(now: number): boolean {
    if (this.transport.bufferedAmount < this.host.config.maxBufferedBytes) {
      this.stalledSince = 0;
      return false;
    }
    if (this.stalledSince === 0) {
      this.stalledSince = now;
    } else if (now - this.stalledSince >= this.host.config.slowConsumerTimeout) {
      this.slowConsumer(`socket buffer over its cap for ${now - this.stalledSince} ms`);
    }
    return true;
  }

  /** The client answered a ping (the transport's pong). */
  heard(now = Date.now()): void {
    this.lastSeen = now;
  }

  /**
   * The hub's periodic look at this connection (one timer for all of them): the auth deadline,
   * token expiry, the heartbeat, a stalled socket and ack-on-write.
   */
  sweep(now: number): void {
    const c = this.host.config;
    if (this.state === 'authenticating') {
      if (now - this.openedAt >= c.authTimeout) this.close(CloseCode.AuthTimeout, 'authentication timeout');
      return;
    }
    const expiresAt = this.principal?.expiresAt;
    if (expiresAt !== undefined && expiresAt <= now) {
      this.host.stats.errorsSent += 1;
      this.send(errorMessage(ErrorCode.TokenExpired, 'token expired; reconnect with a fresh token'));
      this.close(CloseCode.Unauthorized, 'token expired');
      return;
    }
    if (now - this.lastSeen >= c.pongTimeout) {
      this.log.info('no pong within pongTimeout: terminating');
      this.transport.terminate();
      this.closed(CloseCode.GoingAway, 'pong timeout');
      return;
    }
    if (now - this.lastPing >= c.pingInterval) {
      this.lastPing = now;
      this.transport.ping();
    }
    if (this.stalled) this.recheckStalled(now);
    this.ackWrittenAfterGrace(now);
  }

  /** The sweep's look at a stalled connection: close it, or resume writing once it drained. */
  recheckStalled(now: number): void {
    if (this.stalledSince !== 0 && !this.socketFull(now) && this.queue.length > 0) this.flush(now);
  }

  get stalled(): boolean {
    return this.stalledSince !== 0;
  }

  /** Frames and characters waiting in the outbound queue. */
  get queued(): { messages: number; chars: number } {
    return { messages: this.queue.length, chars: this.queue.chars };
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
    if (this.host.config.inboxAckMode !== 'auto' || this.acksDirect || this.directWritten <= this.directAcked) return;
    const pending = this.unackedWrite;
    if (pending === undefined) {
      this.unackedWrite = { seq: this.directWritten, since: now };
      return;
    }
    if (now - pending.since < this.host.config.inboxAckWait) return;
    this.directAcked = pending.seq;
    this.host.written(this.userId!, pending.seq);
    this.unackedWrite = this.directWritten > pending.seq ? { seq: this.directWritten, since: now } : undefined;
  }

  slowConsumer(reason: string): void {
    if (this.state === 'closed') return;
    this.host.stats.slowConsumers += 1;
    this.log.warn({ queued: this.queue.length, buffered: this.transport.bufferedAmount }, `slow consumer: ${reason}`);
    this.queue.clear();
    this.close(CloseCode.SlowConsumer, 'slow consumer: resume with since');
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  /** Close with a code; what is already queued within budget is written first. */
  close(code: number, reason: string): void {
    if (this.state === 'closed') return;
    if (this.queue.length > 0 && code !== CloseCode.SlowConsumer) {
      const n = this.outbound.takeUpTo(this.queue.length, Date.now());
      if (n > 0) this.transport.write(this.queue.take(n));
    }
    this.queue.clear();
    this.transport.close(code, truncateCloseReason(reason));
    this.closed(code, reason);
  }

  /** The socket is gone (closed by us, by the peer or by the network). Idempotent. */
  closed(code: number, reason: string): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.host.remove(this, code, reason);
    this.host.log.info(
      { conn: this.id, user: this.userId ?? undefined, code, reason: reason || undefined, in: this.messagesIn, out: this.messagesOut },
      'connection closed',
    );
  }

  info(): ConnectionInfo {
    return {
      id: this.id,
      userId: this.userId,
      projects: this.subscriptions.keys().filter((t) => t.startsWith('project.')).map((t) => t.slice(8)),
      remoteAddress: this.remoteAddress,
      connectedAt: new Date(this.openedAt).toISOString(),
      messagesIn: this.messagesIn,
      messagesOut: this.messagesOut,
    };
  }
}
