/**
 * The small interfaces the core is written against. Adapters implement them: src/http for
 * sockets, src/nats for the broker. The core imports neither ws, koa nor NATS.
 */
import type { Principal } from '../auth.js';

/** A message ready for the wire. Shared by every connection it goes to; encoded at most once. */
export interface OutFrame {
  readonly text: string;
  /** The transport's encoded form (a WebSocket frame), filled in by the first transport that writes it. */
  wire?: unknown;
  /** The same, compressed (permessage-deflate), for sockets that negotiated it: also encoded once. */
  deflated?: unknown;
  /** The transport's batched frames starting with this one, reused by sockets that write the same frames. */
  batch?: unknown;
}

/** One client socket, as the core sees it. */
export interface Transport {
  /** Write frames in order, as one batch (one syscall where the transport can). */
  write(frames: readonly OutFrame[]): void;
  /** Bytes accepted but not yet flushed to the network. */
  readonly bufferedAmount: number;
  /** A liveness probe (WebSocket ping). */
  ping(): void;
  close(code: number, reason: string): void;
  /** Drop the socket without a closing handshake. */
  terminate(): void;
}

/** A stored event on its way to clients. */
export interface StoredEvent {
  readonly seq: number;
  readonly frame: OutFrame;
  /** The event is about this user (their own join or leave): their connections skip it. */
  readonly aboutUser?: string;
  /** The publisher's id for it (envelope `message_id` or `Nats-Msg-Id`), when it gave one. */
  readonly messageId?: string;
  /** Set by the hub: another stored event with the same messageId, so a connection that has it skips this one. */
  duplicateOf?: { readonly topic: Topic; readonly seq: number };
}

/** Topics are the subject suffix after the prefix: `project.<id>`, `user.<id>`, `broadcast`. */
export type Topic = string;

export const topics = {
  project: (id: string): Topic => `project.${id}`,
  user: (id: string): Topic => `user.${id}`,
  broadcast: 'broadcast' as Topic,
  /** The project id of a `project.<id>` topic, else undefined. */
  projectOf: (topic: Topic): string | undefined => (topic.startsWith('project.') ? topic.slice('project.'.length) : undefined),
};

/** Where a client's copy of a topic ends: the last seq it has, and the epoch that seq belongs to. */
export interface ResumePosition {
  readonly since: number;
  /** Absent for clients that predate epochs: then only a `since` past the stream's end is detected. */
  readonly epoch?: string;
}

export interface ReplayResult {
  readonly truncated: boolean;
  /** The epoch the replayed seqs belong to. */
  readonly epoch: string;
  /** The replay began at the epoch's first stored event, not after `since`. */
  readonly restarted: boolean;
}

/** A page of a topic's stored events: the latest `limit`, or those just before `before` / after `after`. */
export interface HistoryQuery {
  readonly limit: number;
  readonly before?: number;
  readonly after?: number;
  /** Stop adding events once their JSON would pass this many bytes (the reply then says `more`). */
  readonly maxBytes: number;
}

export interface HistoryPage {
  /** The epoch the seqs belong to. */
  readonly epoch: string;
  /** Ascending by seq. */
  readonly events: readonly StoredEvent[];
  /** More stored events exist in the direction read (older for latest / before, newer for after). */
  readonly more: boolean;
}

/** What the core asks of the message broker. */
export interface BrokerPort {
  /** The first local subscriber of a topic arrived (true) or the last one left (false). */
  setInterest(topic: Topic, interested: boolean): void;
  /**
   * Resolve once live events of `topic` are certain to reach this process: a replay started
   * after this cannot miss an event that live delivery will not bring.
   */
  interestReady(topic: Topic): Promise<void>;
  /**
   * The stream's current incarnation. A seq means something only with its epoch: the stream
   * created anew (NATS lost its store, an operator deleted it) numbers from 1 again.
   */
  readonly epoch: string;
  /**
   * Stored events of `topic` after the client's position, in order, through `onEvent`.
   * `truncated` is true when part of what followed the position may be gone: the stream no longer
   * holds the event at `since`, or the position is from another epoch (or past the stream's end),
   * in which case every stored event of the topic in the current epoch is replayed (`restarted`).
   */
  replay(topic: Topic, position: ResumePosition, onEvent: (event: StoredEvent) => void): Promise<ReplayResult>;
  /**
   * The user's direct messages nobody has acknowledged yet, in order, through `onEvent`: what a
   * connection that just opened gets before live ones. Never rejects.
   */
  backlog(userId: string, onEvent: (event: StoredEvent) => void): Promise<void>;
  /** A page of the topic's stored events (the `history` request). */
  historyPage(topic: Topic, query: HistoryQuery): Promise<HistoryPage>;
  /** The client acknowledged the direct message `seq` (from any of the user's connections, on any instance). */
  acknowledge(userId: string, seq: number): void;
  /** Every direct message of the user up to `seq` was written to one of its sockets here (ack-on-write). */
  written(userId: string, seq: number): void;
}

export interface AuthPort {
  verify(token: string): Promise<Principal>;
}

/**
 * Fleet-wide presence (nats/presence.ts). The hub calls enter/exit once per connection joining or
 * leaving a project; the port turns the first enter and the last exit of a user, across every
 * instance, into `user_joined` / `user_left`.
 */
export interface PresencePort {
  enter(projectId: string, userId: string): void;
  exit(projectId: string, userId: string): void;
  /** Users with a connection subscribed to the project anywhere in the fleet, sorted. */
  users(projectId: string): Promise<string[]>;
}

export type AccessDecision = { readonly allowed: true } | { readonly allowed: false; readonly reason: string };

/** Who may see a project (nats/project-authorizer.ts). */
export interface ProjectAccessPort {
  /** The token's claims alone decide: a refreshed token is re-checked against current subscriptions. */
  readonly decidedByToken: boolean;
  check(principal: Principal, projectId: string): Promise<AccessDecision>;
}

/** An event a client sent to a project, with the identity the sidecar verified. */
export interface ClientEvent {
  readonly projectId: string;
  readonly event: string;
  readonly payload: Record<string, unknown>;
  readonly userId: string;
  readonly connectionId: string;
  readonly messageId?: string;
}

/** Where client-sent events go (nats/client-events.ts). */
export interface ClientEventPort {
  allows(event: string): boolean;
  publish(event: ClientEvent): void;
}

/**
 * Connection lifecycle for backends (nats/lifecycle.ts). The hub calls `connected` once a
 * connection is announced to its client (auth_success), `disconnected` for every connection
 * that closes (the port ignores ids it never announced), and subscribed/unsubscribed for
 * project topics. Calls return at once: the port publishes in the background.
 */
export interface LifecyclePort {
  connected(connectionId: string, userId: string): void;
  disconnected(connectionId: string, userId: string, code: number, reason: string): void;
  subscribed(connectionId: string, userId: string, projectId: string): void;
  unsubscribed(connectionId: string, userId: string, projectId: string): void;
}

/** Spans around client requests (tracing.ts); the hub has none unless tracing is on. */
export interface SpanPort {
  run<T>(name: string, attributes: Record<string, string | number | boolean>, fn: () => T | Promise<T>): Promise<T>;
}
