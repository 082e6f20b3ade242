/** The client SDK's options and public types, and the events it emits. Browser-safe. */
import type { EventEnvelope } from '../protocol-codes.js';
import type { ClientError } from './errors.js';

/** The part of the WebSocket API the client uses: browsers' WebSocket and the `ws` package both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Returns a fresh JWT; called to connect (when the last token is missing or expiring) and to refresh. */
export type TokenProvider = () => string | Promise<string>;

/** Returns the endpoint for a connection attempt (`attempt` counts every attempt from 0). */
export type UrlProvider = (attempt: number) => string;

export interface Options {
  /**
   * The sidecar's WebSocket endpoint, e.g. `ws://localhost:8098/ws/connect`. Required. With a list
   * of instances' endpoints, each connection attempt takes the next one in turn (the first attempt
   * the first), so a client whose instance went away reconnects to another. With a function, it is
   * asked before every attempt (service discovery, a load balancer of your own).
   */
  url: string | readonly string[] | UrlProvider;
  /**
   * A JWT, or a function that returns one. With a function the client refreshes the token before
   * its `exp` and reconnects after the server refused an expired one (4401). Required.
   */
  token: string | TokenProvider;
  /** The WebSocket implementation. Default: `globalThis.WebSocket` (browsers, Node 22+); on Node 20 pass `WebSocket` from `ws`. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect after a lost connection. Default `true`. */
  reconnect?: boolean;
  /** First reconnect delay in ms; doubles with each failed attempt, with jitter. Default `500`. */
  minReconnectDelay?: number;
  /** Upper bound of the reconnect delay in ms. Default `20000`. */
  maxReconnectDelay?: number;
  /** A connection attempt (socket open + authentication) that takes longer is abandoned and retried, ms. Default `10000`. */
  timeout?: number;
  /** Refresh a token this long before its `exp` (at most half its remaining lifetime), ms. Default `60000`. */
  refreshMargin?: number;
  /** Send `ack {seq}` for each direct message once its listeners have returned. Default `true`; with `false`, call `ack(seq)`. */
  autoAck?: boolean;
  /** Send a `ping` after this long without any inbound frame, ms; `0` disables. Default `25000`. */
  pingInterval?: number;
  /** Reconnect when nothing arrives this long after a ping, ms. Default `10000`. */
  pongTimeout?: number;
  /** Messages to the server per second, kept below its limit (10/s, burst 20). Default `8`. */
  maxRequestsPerSecond?: number;
  /** Burst of messages to the server. Default `16`. */
  requestBurst?: number;
  /** How many direct/broadcast seqs are remembered to drop redeliveries. Default `1000`. */
  dedupeWindow?: number;
  /** Ask for batched frames (subprotocol `nats-ws-sidecar.batch`): fewer frames, same events. Default `true`. */
  batch?: boolean;
}

export const DEFAULTS = {
  reconnect: true,
  minReconnectDelay: 500,
  maxReconnectDelay: 20_000,
  timeout: 10_000,
  refreshMargin: 60_000,
  autoAck: true,
  pingInterval: 25_000,
  pongTimeout: 10_000,
  maxRequestsPerSecond: 8,
  requestBurst: 16,
  dedupeWindow: 1000,
  batch: true,
} satisfies Partial<Options>;

/**
 * `disconnected`: not connected and not trying (before `connect()`, after `close()`, or after a
 * close code the client does not reconnect after). `connecting`: opening, authenticating, or
 * waiting to reconnect. `connected`: authenticated; events flow.
 */
export type ConnectionState = 'disconnected' | 'connecting' | 'connected';

/** An event from NATS, as the app receives it. */
export type SidecarEvent<D = Record<string, unknown>> = EventEnvelope<D>;

export interface SubscribedInfo {
  projectId: string;
  /** Stored events replayed after `since` (0 when there was no `since`). */
  replayed: number;
  /** True when history after `since` may be gone: refetch the project's state from the backend. */
  truncated: boolean;
  /** True when this was a resume with `since`. */
  resumed: boolean;
  /** The stream's epoch the project's seqs belong to from now on (absent from servers without epochs). */
  epoch?: string;
}

/**
 * Some history may be missing: refetch the scope's state from the backend (`project`: that
 * project; `user`: the user's direct messages; `broadcast`: broadcasts), then apply what follows.
 */
export type HistoryTruncatedInfo = {
  /** The epoch the scope's seqs belong to from here on. */
  epoch?: string;
  /** Events after this seq may be missing (the resume point, or where a gap began). */
  since?: number;
  /** The epoch before, when the stream was created anew: everything of that epoch not yet seen is gone. */
  previousEpoch?: string;
  /** `stream_recreated` when the stream was created anew (its numbering started again). */
  reason?: string;
} & ({ scope: 'project'; projectId: string } | { scope: 'user' | 'broadcast'; projectId?: undefined });

/** The client's own events; names here are reserved (a NATS event with such a type reaches only `event`). */
export interface LifecycleEvents {
  state: { state: ConnectionState; previous: ConnectionState };
  connected: { userId: string; connectionId: string; reconnected: boolean; epoch?: string };
  disconnected: { code: number; reason: string; willReconnect: boolean; delay?: number };
  error: ClientError;
  /** Every event from NATS (any type), after the typed listeners. */
  event: SidecarEvent;
  /** Every frame from the server, parsed, before the client handles it. */
  message: { type: string; data?: unknown; [field: string]: unknown };
  subscribed: SubscribedInfo;
  /** `reason` is set when the server ended the subscription (e.g. `forbidden` after a token refresh). */
  unsubscribed: { projectId: string; reason?: string };
  /** Some history may be missing (see HistoryTruncatedInfo): refetch that scope's state from the backend. */
  history_truncated: HistoryTruncatedInfo;
}

/** Event type -> data shape. */
export type EventTypes<E> = { [K in keyof E]: object };

export type ClientEvents<E extends EventTypes<E>> = LifecycleEvents & {
  [K in Exclude<keyof E, keyof LifecycleEvents>]: SidecarEvent<E[K]>;
};

/** The client's own event names: a NATS event of such a type reaches only `event`. */
export const RESERVED = new Set<string>([
  'state',
  'connected',
  'disconnected',
  'error',
  'event',
  'message',
  'subscribed',
  'unsubscribed',
  'history_truncated',
]);
