/**
 * The client SDK: one WebSocket to a sidecar, kept alive and resumed across reconnects.
 *
 * What it guarantees the app: per project, events arrive in seq order with no duplicate, and —
 * across a reconnect — with no gap, because every project is re-subscribed with `since` = the
 * last seq the app saw for it and the epoch that seq belongs to. When history is gone (the stream
 * no longer holds it, or was created anew) the app is told with `history_truncated`, never left
 * with a silent skip. Browser-safe: no imports beyond the dependency-free protocol codes.
 */
import { BATCH_PROTOCOL, CloseCode, ErrorCode, MessageType, TOKEN_PATTERN, TOKEN_SYNTAX, reconnectPolicy } from '../protocol-codes.js';
import type { SeedEvents } from '../events.js';
import { Emitter } from './emitter.js';
import { ClientError, ClientErrorCode } from './errors.js';
import { TokenSource } from './auth.js';
import { HistoryRequests, type HistoryOptions, type HistoryPage } from './history.js';
import { SeenSeqs } from './dedupe.js';
import { Keepalive } from './keepalive.js';
import { Outbox } from './outbox.js';
import { backoff, firstUrl, urlFor } from './reconnect.js';
import { deferred, restartProject, subscribeArgsError, subscribeData, type Deferred, type ProjectState } from './subscriptions.js';
import {
  DEFAULTS,
  RESERVED,
  type ClientEvents,
  type ConnectionState,
  type EventTypes,
  type LifecycleEvents,
  type Options,
  type SidecarEvent,
  type SubscribedInfo,
  type WebSocketConstructor,
  type WebSocketLike,
} from './types.js';
import { httpBaseOf, uploadFile, type FileInfo, type UploadOptions, type UploadSource } from './uploads.js';

export type {
  ClientEvents,
  ConnectionState,
  EventTypes,
  HistoryTruncatedInfo,
  LifecycleEvents,
  Options,
  SidecarEvent,
  SubscribedInfo,
  TokenProvider,
  UrlProvider,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';

const ABNORMAL_CLOSURE = 1006;
const OPEN = 1;

interface Request {
  action: 'subscribe' | 'unsubscribe';
  projectId: string;
}

type Timer = ReturnType<typeof setTimeout>;

export class Client<E extends EventTypes<E> = SeedEvents> extends Emitter<ClientEvents<E>> {
  readonly options: Readonly<Required<Omit<Options, 'WebSocket'>>> & { WebSocket?: WebSocketConstructor };
  private currentState: ConnectionState = 'disconnected';
  private socket: WebSocketLike | undefined;
  private attempts = 0;
  /** Connection attempts so far, for choosing the URL. */
  private opened = 0;
  private lastUrl: string | undefined;
  private everConnected = false;
  private closing = false;
  private closeWaiters: (() => void)[] = [];
  private connectWaiters: Deferred<void>[] = [];
  private timers: { reconnect?: Timer; connect?: Timer; refresh?: Timer; retry?: Timer } = {};

  private readonly tokens: TokenSource;
  private refreshWaiter: Deferred<void> | undefined;

  private readonly projects = new Map<string, ProjectState>();
  private readonly unsubscribing = new Map<string, Deferred<void>[]>();
  private readonly inflight = new Map<string, Request>();
  private readonly historyRequests: HistoryRequests;
  private nextRequestId = 0;
  /** Requests refused (rate_limited) or answered with processing_error in a row, for the retry backoff. */
  private requestRetries = 0;
  /** Seqs of direct and broadcast events seen -> whether they were acked. Bounded by dedupeWindow. */
  private readonly seen: SeenSeqs;
  private maxSeq = 0;

  private readonly outbox: Outbox;
  private readonly keepalive: Keepalive;

  /** The user id and connection id from the last `auth_success`. */
  userId: string | undefined;
  connectionId: string | undefined;
  /** The stream's epoch of the user's direct messages and broadcasts (their seqs): from `auth_success`, or a `history_truncated`. */
  epoch: string | undefined;

  constructor(options: Options) {
    super();
    const url = options?.url;
    const urlOk =
      typeof url === 'string' ||
      typeof url === 'function' ||
      (Array.isArray(url) && url.length > 0 && url.every((u) => typeof u === 'string'));
    if (!urlOk) throw new ClientError(ClientErrorCode.InvalidArgument, 'options.url must be a URL, a non-empty list of URLs or a function');
    if (typeof options.token !== 'string' && typeof options.token !== 'function') {
      throw new ClientError(ClientErrorCode.InvalidArgument, 'options.token must be a JWT or a function returning one');
    }
    this.options = { ...DEFAULTS, ...options };
    this.tokens = new TokenSource(this.options.token, this.options.refreshMargin);
    this.seen = new SeenSeqs(this.options.dedupeWindow);
    this.outbox = new Outbox(this.options.maxRequestsPerSecond, this.options.requestBurst);
    this.keepalive = new Keepalive(this.options.pingInterval, this.options.pongTimeout);
    this.historyRequests = new HistoryRequests((message) => {
      if (this.currentState !== 'connected') return false;
      this.write(message);
      return true;
    }, this.options.timeout);
    this.on('message', (msg) => this.historyRequests.onMessage(msg));
    this.on('state', ({ state }) => {
      if (state !== 'connected') this.historyRequests.failAll(new ClientError(ClientErrorCode.Disconnected, 'connection closed'));
    });
  }

  /**
   * A page of the project's stored events, ascending by seq: the latest `limit` (default 100),
   * the `limit` before `before`, or the `limit` after `after`. `more` says whether further events
   * exist in that direction. Needs a connection; authorized like a subscribe (`forbidden`).
   */
  history(projectId: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    return this.historyRequests.request(projectId, options);
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  /** The endpoint of the current (or last) connection attempt. */
  get currentUrl(): string | undefined {
    return this.lastUrl;
  }

  /** The projects the client is subscribed to (or subscribing to), with the last seq seen of each. */
  get subscriptions(): Map<string, number | undefined> {
    return new Map([...this.projects].map(([id, p]) => [id, p.lastSeq]));
  }

  /** Per project, the last seq seen and the epoch it belongs to: what `subscribe(p, { since, epoch })` resumes from. */
  get positions(): Map<string, { seq?: number; epoch?: string }> {
    return new Map([...this.projects].map(([id, p]) => [id, { seq: p.lastSeq, epoch: p.epoch }]));
  }

  // ---- connection -----------------------------------------------------------------------------

  /**
   * Connect (if not already connected or connecting). Resolves once authenticated; rejects if the
   * connection ends for good first (`close()`, or a close code the client does not retry after).
   */
  connect(): Promise<void> {
    if (this.currentState === 'connected') return Promise.resolve();
    const d = deferred<void>();
    this.connectWaiters.push(d);
    if (this.currentState === 'disconnected') {
      this.closing = false;
      this.open();
    }
    return d.promise;
  }

  /**
   * Close the connection and stop reconnecting. Pending subscribes reject with `closed`; the
   * subscriptions and their last seqs are kept, so a later `connect()` resumes them.
   * Resolves once the socket has closed.
   */
  close(): Promise<void> {
    this.closing = true;
    this.clearTimers();
    const socket = this.socket;
    const closed = new Promise<void>((resolve) => {
      if (!socket || socket.readyState > OPEN) return resolve();
      const guard = setTimeout(resolve, this.options.timeout); // never hang on a dead peer
      this.closeWaiters.push(() => {
        clearTimeout(guard);
        resolve();
      });
    });
    const wasActive = this.currentState !== 'disconnected';
    if (socket) socket.close(CloseCode.Normal, 'client closed');
    this.detach();
    this.fail(new ClientError(ClientErrorCode.Closed, 'client closed'));
    if (wasActive) this.fire('disconnected', { code: CloseCode.Normal, reason: 'client closed', willReconnect: false });
    this.setState('disconnected');
    return closed;
  }

  private open(): void {
    this.setState('connecting');
    const WS = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    let ws: WebSocketLike;
    try {
      if (!WS) throw new Error('no WebSocket implementation: pass options.WebSocket (e.g. from the "ws" package)');
      ws = this.options.batch ? new WS(this.nextUrl(), [BATCH_PROTOCOL]) : new WS(this.nextUrl());
    } catch (err) {
      const error = new ClientError(ClientErrorCode.TransportError, (err as Error).message, { cause: err });
      this.fire('error', error);
      this.finish(error);
      return;
    }
    this.socket = ws;
    this.outbox.open(ws);
    this.timers.connect = setTimeout(() => this.abandon(ws, 'connection attempt timed out'), this.options.timeout);
    ws.onmessage = (ev: { data: unknown }) => {
      if (this.socket === ws) this.onFrame(ws, ev.data);
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      for (const done of this.closeWaiters.splice(0)) done();
      if (this.socket === ws) this.onClose(ev.code ?? ABNORMAL_CLOSURE, ev.reason ?? '');
    };
    ws.onerror = () => {
      // A close event always follows; the close code says what happened.
    };
  }

  private nextUrl(): string {
    const url = urlFor(this.options.url, this.opened++);
    this.lastUrl = url;
    return url;
  }

  /** Give up on a socket that stopped answering: close it and go on as if the network dropped it. */
  private abandon(ws: WebSocketLike, reason: string): void {
    if (this.socket !== ws) return;
    try {
      ws.close(4000, reason);
    } catch {
      /* already closing */
    }
    this.onClose(ABNORMAL_CLOSURE, reason);
  }

  private onClose(code: number, reason: string): void {
    this.detach();
    if (this.closing) return;
    const policy = reconnectPolicy(code); // PROTOCOL.md § Close codes
    if (policy === 'new_token') this.tokens.forget(); // never offer the refused token again
    const retry = this.options.reconnect && policy !== 'stop' && (policy === 'reconnect' || typeof this.options.token === 'function');
    if (!retry) {
      this.fire('disconnected', { code, reason, willReconnect: false });
      this.finish(new ClientError(ClientErrorCode.Disconnected, `connection closed (${code}${reason ? ` ${reason}` : ''})`, { closeCode: code }));
      return;
    }
    const delay = this.backoff(this.attempts++);
    this.fire('disconnected', { code, reason, willReconnect: true, delay });
    this.setState('connecting');
    this.timers.reconnect = setTimeout(() => {
      this.timers.reconnect = undefined;
      this.open();
    }, delay);
  }

  private backoff(attempt: number): number {
    return backoff(attempt, this.options.minReconnectDelay, this.options.maxReconnectDelay);
  }

  /** Forget the current socket and its per-connection state; subscriptions stay wanted. */
  private detach(): void {
    this.socket = undefined;
    this.clearTimers();
    this.outbox.close();
    this.keepalive.stop();
    this.inflight.clear();
    this.refreshWaiter?.reject(new ClientError(ClientErrorCode.Disconnected, 'connection closed'));
    this.refreshWaiter = undefined;
    for (const st of this.projects.values()) st.confirmed = false;
    // A closed connection has no subscriptions left on the server: pending unsubscribes are done.
    for (const waiters of this.unsubscribing.values()) for (const w of waiters) w.resolve();
    this.unsubscribing.clear();
  }

  /** Stopped for good: settle everything waiting on a connection. */
  private finish(error: ClientError): void {
    this.setState('disconnected');
    this.fail(error);
  }

  private fail(error: ClientError): void {
    for (const w of this.connectWaiters.splice(0)) w.reject(error);
    for (const st of this.projects.values()) for (const w of st.waiters.splice(0)) w.reject(error);
  }

  private clearTimers(): void {
    for (const t of Object.values(this.timers)) clearTimeout(t);
    this.timers = {};
  }

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.fire('state', { state, previous });
  }

  // ---- authentication -------------------------------------------------------------------------

  private async authenticate(ws: WebSocketLike): Promise<void> {
    let token: string;
    try {
      token = await this.tokens.get(false);
    } catch (err) {
      this.fire('error', err as ClientError);
      this.abandon(ws, 'no token');
      return;
    }
    if (this.socket !== ws) return;
    this.write({ type: MessageType.Auth, data: { token } }, true);
  }

  private scheduleRefresh(): void {
    clearTimeout(this.timers.refresh);
    const delay = this.tokens.refreshDelay();
    if (delay === undefined) return;
    this.timers.refresh = setTimeout(() => void this.refresh(), delay);
  }

  /** Send a fresh token on the open connection (`auth` again); the server keeps the connection. */
  private async refresh(): Promise<void> {
    const ws = this.socket;
    if (!ws || this.currentState !== 'connected') return;
    try {
      const token = await this.tokens.get(true);
      if (this.socket !== ws) return;
      const answer = deferred<void>();
      this.refreshWaiter = answer;
      this.write({ type: MessageType.Auth, data: { token } }, true);
      await answer.promise;
      this.scheduleRefresh();
    } catch (err) {
      if (this.socket !== ws) return;
      this.fire('error', err instanceof ClientError ? err : new ClientError(ClientErrorCode.TokenError, String(err)));
      // Try again later; if the token expires first, the server closes with 4401 and we reconnect.
      const left = (this.tokens.expiresAt ?? 0) - Date.now();
      if (left > 0) this.timers.refresh = setTimeout(() => void this.refresh(), Math.max(1000, left / 2));
    }
  }

  // ---- inbound --------------------------------------------------------------------------------

  private onFrame(ws: WebSocketLike, raw: unknown): void {
    if (typeof raw !== 'string') return; // the server sends text frames only
    // A batched frame: envelopes joined by "\n" (JSON never holds a raw newline).
    if (raw.includes('\n')) return raw.split('\n').forEach((piece) => this.onFrame(ws, piece));
    let msg: { type?: unknown; data?: unknown; seq?: unknown; project_id?: unknown };
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
    this.keepalive.received();
    this.fire('message', msg as LifecycleEvents['message']);
    if (typeof msg.seq === 'number') {
      this.onEvent(msg as SidecarEvent);
      return;
    }
    const data = (msg.data && typeof msg.data === 'object' ? msg.data : {}) as Record<string, unknown>;
    switch (msg.type) {
      case MessageType.AuthRequired:
        void this.authenticate(ws);
        break;
      case MessageType.AuthSuccess:
        if (this.currentState === 'connected') {
          this.refreshWaiter?.resolve();
          this.refreshWaiter = undefined;
          this.userEpochSeen(data.epoch);
        } else {
          this.onAuthenticated(data);
        }
        break;
      case MessageType.AuthFailed: {
        const error = new ClientError(ClientErrorCode.AuthFailed, `token refused: ${String(data.reason ?? data.code ?? 'invalid token')}`, {
          data,
        });
        if (this.refreshWaiter) {
          this.refreshWaiter.reject(error);
          this.refreshWaiter = undefined;
        } else {
          this.fire('error', error); // the server closes with 4401 next
        }
        break;
      }
      case MessageType.Subscription:
        this.onSubscription(data);
        break;
      case MessageType.Error:
        this.onServerError(data);
        break;
      case MessageType.HistoryTruncated:
        this.onHistoryTruncated(data);
        break;
      default:
        break; // pong, and anything newer than this client: already emitted as `message`
    }
  }

  private onAuthenticated(data: Record<string, unknown>): void {
    clearTimeout(this.timers.connect);
    this.attempts = 0;
    this.userId = String(data.user_id ?? '');
    this.connectionId = String(data.connection_id ?? '');
    const reconnected = this.everConnected;
    this.everConnected = true;
    // Before the re-subscribes: a new epoch voids the seqs kept for direct messages and floors.
    const previousEpoch = this.adoptUserEpoch(data.epoch);
    this.setState('connected');
    this.scheduleRefresh();
    this.startPing();
    // Resume every project: the server replays what was missed, then goes live.
    for (const projectId of this.projects.keys()) this.sendSubscribe(projectId);
    for (const w of this.connectWaiters.splice(0)) w.resolve();
    this.fire('connected', { userId: this.userId, connectionId: this.connectionId, reconnected, epoch: this.epoch });
    if (previousEpoch !== undefined) this.userEpochChanged(previousEpoch);
  }

  /**
   * The epoch of the user's topics (direct messages, broadcasts) as the server says it. Another
   * one than before means the stream was created anew: its seqs start again, so the ones kept to
   * drop redeliveries mean nothing. Returns the epoch before when it changed.
   */
  private adoptUserEpoch(epoch: unknown): string | undefined {
    if (typeof epoch !== 'string' || epoch === this.epoch) return undefined;
    const previous = this.epoch;
    this.epoch = epoch;
    if (previous === undefined) return undefined;
    this.seen.clear();
    this.maxSeq = 0;
    return previous;
  }

  /** An epoch change seen in an auth_success (the server could not say it on a live connection). */
  private userEpochSeen(epoch: unknown): void {
    const previous = this.adoptUserEpoch(epoch);
    if (previous !== undefined) this.userEpochChanged(previous);
  }

  private userEpochChanged(previousEpoch: string): void {
    // Unacknowledged direct messages of the old epoch are gone with it.
    this.fire('history_truncated', { scope: 'user', epoch: this.epoch, previousEpoch, reason: 'stream_recreated' });
  }

  private onHistoryTruncated(data: Record<string, unknown>): void {
    const epoch = typeof data.epoch === 'string' ? data.epoch : undefined;
    const since = typeof data.after_seq === 'number' ? data.after_seq : undefined;
    const previousEpoch = typeof data.previous_epoch === 'string' ? data.previous_epoch : undefined;
    const reason = typeof data.reason === 'string' ? data.reason : undefined;
    const recreated = reason === 'stream_recreated';
    if (typeof data.project_id === 'string') {
      const projectId = data.project_id;
      const st = this.projects.get(projectId);
      if (!st) return; // unsubscribed meanwhile
      // A new epoch numbers from 1 again: the events that follow are new, whatever their seq.
      if (recreated || (epoch !== undefined && st.epoch !== undefined && epoch !== st.epoch)) restartProject(st);
      if (epoch !== undefined) st.epoch = epoch;
      this.fire('history_truncated', { scope: 'project', projectId, epoch, since, previousEpoch, reason });
    } else if (data.scope === 'user' || data.scope === 'broadcast') {
      this.adoptUserEpoch(epoch); // both scopes' seqs are the same stream's: one epoch, one filter
      this.fire('history_truncated', { scope: data.scope, epoch: epoch ?? this.epoch, since, previousEpoch, reason });
    }
  }

  private onEvent(event: SidecarEvent): void {
    const { seq } = event;
    const projectId = event.project_id;
    if (projectId !== undefined) {
      const st = this.projects.get(projectId);
      if (!st) return; // unsubscribed meanwhile
      if (st.lastSeq !== undefined && seq <= st.lastSeq) return; // already seen (replay overlap)
      st.lastSeq = seq;
    } else {
      const acked = this.seen.acked(seq);
      if (acked !== undefined) {
        // Redelivered: the earlier ack may have been lost with the connection.
        if (acked) this.write({ type: MessageType.Ack, data: { seq } });
        return;
      }
      this.seen.add(seq);
    }
    if (seq > this.maxSeq) this.maxSeq = seq;
    if (!RESERVED.has(event.type)) this.fire(event.type, event);
    this.fire('event', event);
    // Direct messages (and broadcasts, which the server ignores) are acked once the app has them.
    if (projectId === undefined && this.options.autoAck) this.ack(seq);
  }

  private onSubscription(data: Record<string, unknown>): void {
    const projectId = data.project_id;
    if (typeof projectId !== 'string') return;
    if (data.action === 'subscribed') {
      this.settleRequest('subscribe', projectId);
      this.requestRetries = 0;
      const st = this.projects.get(projectId);
      if (!st || st.confirmed) return; // unsubscribed meanwhile, or a repeated answer
      st.confirmed = true;
      const epoch = typeof data.epoch === 'string' ? data.epoch : undefined;
      const previousEpoch = st.epoch;
      const epochChanged = epoch !== undefined && previousEpoch !== undefined && epoch !== previousEpoch;
      const info: SubscribedInfo = {
        projectId,
        replayed: typeof data.replayed === 'number' ? data.replayed : 0,
        truncated: data.truncated === true,
        resumed: st.since !== undefined,
        epoch,
      };
      if (epoch !== undefined) st.epoch = epoch;
      // A truncated replay may start at the epoch's first event, below the seq the client had.
      if (info.truncated || epochChanged) restartProject(st);
      for (const w of st.waiters.splice(0)) w.resolve(info);
      this.fire('subscribed', info);
      // A live subscribe (no since) missed nothing, whatever epoch it starts in.
      if (info.truncated || (epochChanged && info.resumed)) {
        this.fire('history_truncated', {
          scope: 'project',
          projectId,
          epoch,
          since: st.since,
          previousEpoch: epochChanged ? previousEpoch : undefined,
          reason: epochChanged ? 'stream_recreated' : undefined,
        });
      }
    } else if (data.action === 'unsubscribed') {
      this.settleRequest('unsubscribe', projectId);
      this.requestRetries = 0;
      const reason = typeof data.reason === 'string' ? data.reason : undefined;
      if (reason === undefined) {
        // The answer to an unsubscribe of ours (a resent one may be answered twice).
        for (const w of this.unsubscribing.get(projectId) ?? []) w.resolve();
        this.unsubscribing.delete(projectId);
        return;
      }
      // The server ended it (e.g. a refreshed token no longer allows the project).
      const st = this.projects.get(projectId);
      if (!st) return;
      this.projects.delete(projectId);
      const error = new ClientError(reason === 'forbidden' ? ErrorCode.Forbidden : ClientErrorCode.Unsubscribed, `unsubscribed from "${projectId}"`, {
        projectId,
      });
      for (const w of st.waiters.splice(0)) w.reject(error);
      this.fire('unsubscribed', { projectId, reason });
    }
  }

  private onServerError(data: Record<string, unknown>): void {
    const code = (typeof data.code === 'string' ? data.code : ErrorCode.ProcessingError) as ErrorCode;
    const inReplyTo = typeof data.in_reply_to === 'string' ? data.in_reply_to : undefined;
    const request = inReplyTo ? this.inflight.get(inReplyTo) : undefined;
    if (inReplyTo) this.inflight.delete(inReplyTo);
    const projectId = request?.projectId ?? (typeof data.project_id === 'string' ? data.project_id : undefined);
    const error = new ClientError(code, String(data.message ?? code), { projectId, data });
    if (code === ErrorCode.RateLimited) {
      // Refused before it was read, so the server cannot say which request it was: resend what is
      // unanswered, subscribes and unsubscribes, with backoff while the refusals go on.
      this.timers.retry ??= setTimeout(() => {
        this.timers.retry = undefined;
        this.resendUnanswered();
      }, Math.max(1000, this.backoff(this.requestRetries++)));
    } else if (code === ErrorCode.ProcessingError && request !== undefined) {
      // The server could not serve it now (e.g. JetStream failing over): ask again with backoff,
      // keeping the project and its resume point. Dropping it would end the app's events for good.
      this.timers.retry ??= setTimeout(() => {
        this.timers.retry = undefined;
        this.resendUnanswered();
      }, this.backoff(this.requestRetries++));
    } else if (request?.action === 'subscribe') {
      const st = this.projects.get(request.projectId);
      if (st && !st.confirmed) {
        this.projects.delete(request.projectId);
        for (const w of st.waiters.splice(0)) w.reject(error);
      }
    }
    this.fire('error', error);
  }

  private settleRequest(action: Request['action'], projectId: string): void {
    for (const [id, r] of this.inflight) {
      if (r.action === action && r.projectId === projectId) {
        this.inflight.delete(id);
        return;
      }
    }
  }

  private resendUnanswered(): void {
    if (this.currentState !== 'connected') return;
    for (const [projectId, st] of this.projects) if (!st.confirmed) this.sendSubscribe(projectId);
    for (const [projectId, waiters] of this.unsubscribing) {
      if (this.projects.has(projectId)) {
        // Subscribed again since: that request, sent later, is what the app wants now.
        for (const w of waiters) w.resolve();
        this.unsubscribing.delete(projectId);
      } else {
        this.request('unsubscribe', projectId, { action: 'unsubscribe', project_id: projectId });
      }
    }
  }

  // ---- subscriptions --------------------------------------------------------------------------

  /**
   * Subscribe to a project's events. Resolves when the server confirms (after a reconnect the
   * client re-subscribes by itself, resuming from the last seq seen). Rejects when the server
   * refuses it (`forbidden`, `invalid_message`); a `processing_error` is retried with backoff. `since` asks for the stored
   * events after that seq first (e.g. the seq your backend snapshot is at), and `epoch` names the
   * stream's epoch that seq belongs to (from `positions`, `subscribed` or `history_truncated`), so
   * a seq from a stream since created anew is answered `truncated`; they apply only when the
   * project is not subscribed yet.
   */
  subscribe(projectId: string, options: { since?: number; epoch?: string } = {}): Promise<SubscribedInfo> {
    const invalid = subscribeArgsError(projectId, options);
    if (invalid) return Promise.reject(invalid);
    const { since, epoch } = options;
    let st = this.projects.get(projectId);
    if (st?.confirmed) return Promise.resolve({ projectId, replayed: 0, truncated: false, resumed: false, epoch: st.epoch });
    const d = deferred<SubscribedInfo>();
    if (!st) {
      st = { sent: false, confirmed: false, waiters: [], lastSeq: since, epoch };
      this.projects.set(projectId, st);
      if (this.currentState === 'connected') this.sendSubscribe(projectId);
    }
    st.waiters.push(d);
    return d.promise;
  }

  /** Stop receiving a project's events. Resolves when the server confirms, or at once when not connected. */
  unsubscribe(projectId: string): Promise<void> {
    const st = this.projects.get(projectId);
    if (!st) return Promise.resolve();
    this.projects.delete(projectId);
    const error = new ClientError(ClientErrorCode.Unsubscribed, `unsubscribed from "${projectId}"`, { projectId });
    for (const w of st.waiters.splice(0)) w.reject(error);
    this.fire('unsubscribed', { projectId });
    if (this.currentState !== 'connected') return Promise.resolve();
    const d = deferred<void>();
    const waiting = this.unsubscribing.get(projectId) ?? [];
    waiting.push(d);
    this.unsubscribing.set(projectId, waiting);
    this.request('unsubscribe', projectId, { action: 'unsubscribe', project_id: projectId });
    return d.promise;
  }

  private sendSubscribe(projectId: string): void {
    const data = subscribeData(projectId, this.projects.get(projectId)!, this.maxSeq, this.epoch);
    this.request('subscribe', projectId, data);
  }

  private request(action: Request['action'], projectId: string, data: Record<string, unknown>): void {
    // A resent request replaces the unanswered one (refused unread, so never answered).
    for (const [key, r] of this.inflight) if (r.action === action && r.projectId === projectId) this.inflight.delete(key);
    const id = `c${(++this.nextRequestId).toString(36)}`;
    this.inflight.set(id, { action, projectId });
    this.write({ type: MessageType.Subscription, data, message_id: id });
  }

  // ---- acks -----------------------------------------------------------------------------------

  /**
   * Acknowledge a direct message so the server's offline inbox does not deliver it again. Called
   * for you when `autoAck` is on. Without a connection it is a no-op: the message comes again on
   * the next connection, is not shown to the app twice, and is acked then.
   */
  ack(seq: number): void {
    if (!Number.isSafeInteger(seq) || seq < 1) return;
    this.seen.markAcked(seq);
    this.write({ type: MessageType.Ack, data: { seq } });
  }

  // ---- outbound -------------------------------------------------------------------------------

  /** Queue a message for the server, paced by a token bucket below the server's inbound limit. */
  private write(message: Record<string, unknown>, first = false): void {
    const ws = this.socket;
    if (!ws || ws.readyState !== OPEN) return;
    this.outbox.push(JSON.stringify(message), first);
  }

  // ---- keepalive ------------------------------------------------------------------------------

  private startPing(): void {
    const ws = this.socket;
    this.keepalive.start({
      ping: () => {
        if (this.socket === ws) this.write({ type: MessageType.Ping, data: {} });
      },
      dead: () => {
        if (ws) this.abandon(ws, 'no answer to ping');
      },
    });
  }

  // ---- files (client/uploads.ts) --------------------------------------------------------------

  /** Upload a file to a project (tus, in chunks, retried and resumed across reconnects); resolves with the stored file. */
  upload(projectId: string, file: UploadSource, options?: UploadOptions): Promise<FileInfo> {
    if (typeof projectId !== 'string' || !TOKEN_PATTERN.test(projectId)) {
      return Promise.reject(new ClientError(ClientErrorCode.InvalidArgument, `projectId must match ${TOKEN_SYNTAX}`));
    }
    return uploadFile({ baseUrl: () => httpBaseOf(this.lastUrl ?? this.peekUrl()), token: () => this.tokens.get(false) }, projectId, file, options);
  }

  /** The download URL of a file; with `withToken`, the current token rides along as `?token=` (for links, `<img src>`). */
  fileUrl(fileId: string, options: { withToken?: boolean } = {}): string {
    const url = `${httpBaseOf(this.lastUrl ?? this.peekUrl())}/api/v1/websocket/files/${encodeURIComponent(fileId)}`;
    const token = options.withToken ? this.tokens.current : undefined;
    return token ? `${url}?token=${encodeURIComponent(token)}` : url;
  }

  private peekUrl(): string {
    return firstUrl(this.options.url);
  }

  /** `emit` without the generic event map, which TypeScript cannot narrow inside the class. */
  private fire<K extends keyof LifecycleEvents>(name: K, value: LifecycleEvents[K]): void;
  private fire(name: string, value: unknown): void;
  private fire(name: string, value: unknown): void {
    (this.emit as (name: string, value: unknown) => void).call(this, name, value);
  }

  protected override onListenerError(err: unknown, name: string): void {
    if (name === 'error') return super.onListenerError(err, name);
    this.fire('error', new ClientError(ClientErrorCode.ListenerError, `a "${name}" listener threw: ${(err as Error)?.message ?? err}`, { cause: err }));
  }
}
