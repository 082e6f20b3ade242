/**
 * The hub: every local connection by id, user and topic; routing of stored events to them; the
 * per-tick flush; and the one sweep timer that runs heartbeats, auth timeouts and token expiry
 * for all connections (no timer per connection).
 */
import type { Logger } from 'pino';
import { mayAccessProject, type Principal } from '../auth.js';
import type { Config } from '../config.js';
import { CloseCode, ErrorCode, MessageType, errorMessage, serverMessage, type ClientMessage } from '../protocol.js';
import { authenticate } from './authentication.js';
import { Connection } from './connection.js';
import { RecentIds } from './dedupe.js';
import { OutboundPacer } from './limits.js';
import type { ConnectionConfig, ConnectionHost, ConnectionStats } from './host.js';
import { addMember, countMembers, membersOf, removeMember, type Members } from './members.js';
import { dispatch } from './processors.js';
import {
  topics,
  type AuthPort,
  type BrokerPort,
  type ClientEventPort,
  type LifecyclePort,
  type SpanPort,
  type PresencePort,
  type ProjectAccessPort,
  type OutFrame,
  type HistoryPage,
  type HistoryQuery,
  type ReplayResult,
  type ResumePosition,
  type StoredEvent,
  type Topic,
  type Transport,
} from './ports.js';
import { Subscription } from './subscription.js';

/** The connection's settings, and those the hub applies across connections. */
export type HubConfig = ConnectionConfig & Pick<Config, 'maxConnectionsPerUser' | 'maxSubscriptionsPerConnection' | 'historyMaxBytes'>;

/** How many publisher message ids the hub remembers for deduplication. */
const RECENT_IDS = 10_000;
/**
 * Longest wait of a presence event (user_joined / user_left) for a socket's next write. When
 * thousands join one project within seconds each member gets N-1 joins: written as they come,
 * that is one syscall per member per join; batched over this window, one per member per window.
 */
export const PRESENCE_WRITE_DELAY_MS = 25;

export interface HubStats extends ConnectionStats {
  totalConnections: number;
  broadcastsSent: number;
  eventsRouted: number;
}

export interface HubOptions {
  config: HubConfig;
  instanceId: string;
  log: Logger;
  broker: BrokerPort;
  auth: AuthPort;
  /** Default: none (no user_joined/user_left, empty presence answers). */
  presence?: PresencePort;
  /** Default: the token's `projects` claim. */
  access?: ProjectAccessPort;
  /** Default: clients may send no events. */
  clientEvents?: ClientEventPort;
  /** Default: no lifecycle events. */
  lifecycle?: LifecyclePort;
  /** Default: no spans (tracing off). */
  spans?: SpanPort;
}

/** The `scope` fields of a history_truncated frame for a topic. */
function scopeOf(topic: Topic): Record<string, string> {
  if (topic.startsWith('project.')) return { scope: 'project', project_id: topic.slice(8) };
  return { scope: topic === 'broadcast' ? 'broadcast' : 'user' };
}

const noPresence: PresencePort = { enter() {}, exit() {}, users: async () => [] };
const claimsAccess: ProjectAccessPort = {
  decidedByToken: true,
  check: async (principal, projectId) =>
    mayAccessProject(principal, projectId) ? { allowed: true } : { allowed: false, reason: "not in the token's projects claim" },
};
const noClientEvents: ClientEventPort = { allows: () => false, publish() {} };
const noLifecycle: LifecyclePort = { connected() {}, disconnected() {}, subscribed() {}, unsubscribed() {} };

export class Hub implements ConnectionHost {
  readonly config: HubConfig;
  readonly instanceId: string;
  readonly log: Logger;
  /** Only the hub talks to the broker: connections and processors go through the hub's methods. */
  private readonly broker: BrokerPort;
  readonly auth: AuthPort;
  readonly presence: PresencePort;
  readonly access: ProjectAccessPort;
  readonly clientEvents: ClientEventPort;
  readonly lifecycle: LifecyclePort;
  readonly spans: SpanPort | undefined;
  readonly pacer: OutboundPacer;
  readonly stats: HubStats = {
    totalConnections: 0,
    messagesSent: 0,
    messagesReceived: 0,
    broadcastsSent: 0,
    eventsRouted: 0,
    errorsSent: 0,
    rateLimited: 0,
    slowConsumers: 0,
  };

  readonly connections = new Map<string, Connection>();
  private readonly rooms = new Map<Topic, Members<Subscription>>();
  private readonly users = new Map<string, Members<Connection>>();
  private readonly recentIds = new RecentIds(RECENT_IDS);
  private dirty: Connection[] = [];
  private flushScheduled = false;
  private deferred: Connection[] = [];
  private deferredTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private nextId = 0;

  constructor(options: HubOptions) {
    this.config = options.config;
    this.instanceId = options.instanceId;
    this.log = options.log;
    this.broker = options.broker;
    this.auth = options.auth;
    this.presence = options.presence ?? noPresence;
    this.access = options.access ?? claimsAccess;
    this.clientEvents = options.clientEvents ?? noClientEvents;
    this.lifecycle = options.lifecycle ?? noLifecycle;
    this.spans = options.spans;
    const leaseInterval = 250;
    this.pacer = new OutboundPacer({ leaseInterval, idleTimeout: 30_000 });
    const c = this.config;
    // Often enough to honour the shortest of the deadlines it checks, never busier than 1/s.
    const every = Math.max(
      5,
      Math.min(1000, c.authTimeout / 2, (c.pongTimeout - c.pingInterval) / 2, c.pingInterval / 2, c.slowConsumerTimeout / 2),
    );
    this.sweepTimer = setInterval(() => this.sweep(Date.now()), every);
    this.sweepTimer.unref();
  }

  // ---- connections --------------------------------------------------------------------------

  /** Register a new socket. With a principal (handshake token) it is authenticated at once. */
  connect(transport: Transport, remoteAddress: string): Connection {
    const id = `${this.instanceId}-${(++this.nextId).toString(36)}`;
    const conn = new Connection(this, id, transport, remoteAddress, Date.now());
    this.connections.set(id, conn);
    this.stats.totalConnections += 1;
    return conn;
  }

  /** True when the user already has maxConnectionsPerUser connections here (the handshake answers 429). */
  userAtCapacity(userId: string): boolean {
    return countMembers(this.users.get(userId)) >= this.config.maxConnectionsPerUser;
  }

  /** Enforce maxConnectionsPerUser; registers the connection under its user. */
  admitUser(conn: Connection, userId: string): boolean {
    if (this.userAtCapacity(userId)) {
      this.stats.errorsSent += 1;
      conn.send(errorMessage(ErrorCode.Forbidden, 'too many connections for this user'));
      conn.close(CloseCode.Forbidden, 'too many connections for this user');
      return false;
    }
    addMember(this.users, userId, conn);
    return true;
  }

  /** Connections of a user on this instance. */
  connectionsOf(userId: string): ReadonlySet<Connection> {
    return new Set(membersOf(this.users.get(userId)));
  }

  subscribersOf(topic: Topic): number {
    return countMembers(this.rooms.get(topic));
  }

  get projectCount(): number {
    let n = 0;
    for (const topic of this.rooms.keys()) if (topic.startsWith('project.')) n += 1;
    return n;
  }

  /** The connection closed: it leaves its topics and its user; its backend hears of it (lifecycle). */
  remove(conn: Connection, code: number, reason: string): void {
    if (this.connections.delete(conn.id)) {
      for (const topic of conn.subscriptions.keys()) this.leave(conn, topic);
      if (conn.userId) removeMember(this.users, conn.userId, conn);
      this.pacer.forget(conn.id);
    }
    if (conn.userId) this.lifecycle.disconnected(conn.id, conn.userId, code, reason);
  }

  // ---- requests -----------------------------------------------------------------------------

  dispatch(conn: Connection, message: ClientMessage): void | Promise<void> {
    return dispatch(this, conn, message);
  }

  authenticate(conn: Connection, principal: Principal): Promise<void> {
    return authenticate(this, conn, principal);
  }

  // ---- topics -------------------------------------------------------------------------------

  /** Add a connection to a topic; the subscription holds live events until released. */
  join(conn: Connection, topic: Topic, since?: number): Subscription {
    const existing = conn.subscriptions.get(topic);
    if (existing) {
      existing.hold(since);
      return existing;
    }
    const sub = new Subscription(conn, topic, since);
    conn.subscriptions.add(sub);
    if (addMember(this.rooms, topic, sub)) this.broker.setInterest(topic, true);
    if (conn.userId && topic.startsWith('project.')) {
      this.presence.enter(topic.slice(8), conn.userId);
      this.lifecycle.subscribed(conn.id, conn.userId, topic.slice(8));
    }
    return sub;
  }

  leave(conn: Connection, topic: Topic): boolean {
    const sub = conn.subscriptions.get(topic);
    if (!sub) return false;
    conn.subscriptions.delete(topic);
    if (removeMember(this.rooms, topic, sub)) this.broker.setInterest(topic, false);
    if (conn.userId && topic.startsWith('project.')) {
      this.presence.exit(topic.slice(8), conn.userId);
      this.lifecycle.unsubscribed(conn.id, conn.userId, topic.slice(8));
    }
    return true;
  }

  /** Resolves once the broker delivers the topic's live events here. */
  ready(topic: Topic): Promise<void> {
    return this.broker.interestReady(topic);
  }

  // ---- the broker, for connections and processors -------------------------------------------

  /** The stream's current incarnation (see BrokerPort.epoch). */
  get epoch(): string {
    return this.broker.epoch;
  }

  /** Stored events of `topic` after a client's position, in order (see BrokerPort.replay). */
  replay(topic: Topic, position: ResumePosition, onEvent: (event: StoredEvent) => void): Promise<ReplayResult> {
    return this.broker.replay(topic, position, onEvent);
  }

  /** A page of a topic's stored events (the `history` request; see BrokerPort.historyPage). */
  historyPage(topic: Topic, query: HistoryQuery): Promise<HistoryPage> {
    return this.broker.historyPage(topic, query);
  }

  /** The user's unacknowledged direct messages, in order: what a new connection gets first. */
  inboxBacklog(userId: string, onEvent: (event: StoredEvent) => void): Promise<void> {
    return this.broker.backlog(userId, onEvent);
  }

  /** The client acknowledged its direct message `seq`. */
  acknowledge(userId: string, seq: number): void {
    this.broker.acknowledge(userId, seq);
  }

  /** Direct messages of the user up to `seq` were written to one of its sockets (ack-on-write). */
  written(userId: string, seq: number): void {
    this.broker.written(userId, seq);
  }

  /** After a token refresh: leave projects the new token no longer allows. */
  dropForbiddenProjects(conn: Connection): void {
    const principal = conn.principal;
    if (!principal || !this.access.decidedByToken) return;
    for (const topic of conn.subscriptions.keys()) {
      if (!topic.startsWith('project.')) continue;
      const projectId = topic.slice(8);
      if (mayAccessProject(principal, projectId)) continue;
      this.leave(conn, topic);
      conn.send(
        serverMessage(MessageType.Subscription, { action: 'unsubscribed', project_id: projectId, reason: 'forbidden' }),
      );
    }
  }

  /** A permission was revoked (from NATS, so on every instance): the user's connections leave the project. */
  revoke(userId: string, projectId: string): number {
    let n = 0;
    for (const conn of this.connectionsOf(userId)) {
      if (!this.leave(conn, topics.project(projectId))) continue;
      conn.send(serverMessage(MessageType.Subscription, { action: 'unsubscribed', project_id: projectId, reason: 'revoked' }));
      n += 1;
    }
    return n;
  }

  // ---- delivery -----------------------------------------------------------------------------

  /** Route one stored event to every local subscriber of its topic. Returns the subscriber count. */
  publish(topic: Topic, event: StoredEvent): number {
    const room = this.rooms.get(topic);
    if (!room) return 0;
    this.stats.eventsRouted += 1;
    if (topic === 'broadcast') this.stats.broadcastsSent += 1;
    this.checkDuplicate(topic, event);
    if (!(room instanceof Set)) {
      room.offer(event);
      return 1;
    }
    for (const sub of room) sub.offer(event);
    return room.size;
  }

  /**
   * Events a replay or an inbox backlog brought, in stream order, to one subscription: the one
   * place they are checked for duplicates and delivered, as `publish` is for live ones.
   */
  deliverReplayed(sub: Subscription, events: readonly StoredEvent[]): void {
    for (const event of events) {
      this.checkDuplicate(sub.topic, event);
      sub.replayed(event);
    }
  }

  /** Mark an event whose publisher id came with another seq before (see RecentIds). Once per event. */
  private checkDuplicate(topic: Topic, event: StoredEvent): void {
    if (event.messageId !== undefined) event.duplicateOf = this.recentIds.check(topic, event);
  }

  /**
   * Events of `topic` after `afterSeq` were lost on the way here and the stream no longer holds
   * them all: tell the topic's subscribers, so they refetch state from the backend.
   */
  historyLost(topic: Topic, afterSeq: number): void {
    const room = this.rooms.get(topic);
    if (!room) return;
    const frame: OutFrame = {
      text: serverMessage(MessageType.HistoryTruncated, { ...scopeOf(topic), after_seq: afterSeq, epoch: this.broker.epoch }),
    };
    for (const sub of membersOf(room)) sub.connection.enqueue(frame);
  }

  /**
   * The stream was created anew and numbers from 1 again. Every subscriber is told
   * (history_truncated with the new epoch) before the new epoch's first event, which the broker
   * delivers after this, and its subscriptions count afresh.
   */
  epochChanged(epoch: string, previous: string): void {
    this.recentIds.clear();
    for (const [topic, room] of this.rooms) {
      const frame: OutFrame = {
        text: serverMessage(MessageType.HistoryTruncated, { ...scopeOf(topic), epoch, previous_epoch: previous, reason: 'stream_recreated' }),
      };
      for (const sub of membersOf(room)) {
        sub.restart();
        sub.connection.enqueue(frame);
      }
    }
  }

  markDirty(conn: Connection): void {
    this.dirty.push(conn);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      // After the current I/O callbacks: every event parsed from one NATS read goes out in one write per socket.
      setImmediate(this.flushAll);
    }
  }

  markDeferred(conn: Connection): void {
    this.deferred.push(conn);
    this.deferredTimer ??= setTimeout(this.flushDeferred, PRESENCE_WRITE_DELAY_MS);
  }

  private readonly flushDeferred = (): void => {
    this.deferredTimer = undefined;
    const deferred = this.deferred;
    this.deferred = [];
    const now = Date.now();
    for (const conn of deferred) conn.flushDeferred(now);
  };

  private readonly flushAll = (): void => {
    this.flushScheduled = false;
    const dirty = this.dirty;
    this.dirty = [];
    const now = Date.now();
    for (const conn of dirty) conn.flush(now);
  };

  // ---- timers -------------------------------------------------------------------------------

  private sweep(now: number): void {
    for (const conn of this.connections.values()) conn.sweep(now);
  }

  /** Close every connection (shutdown) and stop timers. */
  async close(code: number = CloseCode.GoingAway, reason = 'server shutting down; reconnect'): Promise<void> {
    clearInterval(this.sweepTimer);
    clearTimeout(this.deferredTimer);
    for (const conn of [...this.connections.values()]) conn.close(code, reason);
    await this.pacer.stop();
  }
}
