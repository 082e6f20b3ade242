/**
 * The wire protocol's constants and envelope types, with no imports at all: the browser build of
 * the client SDK uses this module, so it must not pull zod or node built-ins. `protocol.ts`
 * re-exports everything here; PROTOCOL.md is the prose version.
 */

export const MessageType = {
  // client -> server
  Auth: 'auth',
  Subscription: 'subscription',
  Ping: 'ping',
  Ack: 'ack',
  Presence: 'presence', // also the answer's type
  ClientEvent: 'client_event',
  History: 'history', // also the answer's type
  // server -> client
  AuthRequired: 'auth_required',
  AuthSuccess: 'auth_success',
  AuthFailed: 'auth_failed',
  Pong: 'pong',
  Error: 'error',
  HistoryTruncated: 'history_truncated',
  // events the sidecar itself publishes to a project
  UserJoined: 'user_joined',
  UserLeft: 'user_left',
} as const;

/** Codes carried in `{"type":"error","data":{"code":...}}`. */
export const ErrorCode = {
  InvalidMessage: 'invalid_message',
  RateLimited: 'rate_limited',
  Unauthorized: 'unauthorized',
  Forbidden: 'forbidden',
  ProcessingError: 'processing_error',
  TokenExpired: 'token_expired',
  ConnectionClosed: 'connection_closed',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** WebSocket close codes. 4xxx mirror HTTP statuses where one fits (as graphql-ws does). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001, // server shutting down: reconnect, possibly to another instance
  MessageTooBig: 1009, // inbound frame over maxMessageSize
  InternalError: 1011,
  SlowConsumer: 4008, // outbound queue or socket buffer over its cap; resume with `since`
  DisconnectedByOperator: 4010, // admin API or backend asked for this connection to go
  Unauthorized: 4401, // auth failed, or the token expired without refresh
  Forbidden: 4403, // permissions revoked while connected
  AuthTimeout: 4408, // no auth within authTimeout
  TooManyErrors: 4429, // maxErrors errors within errorResetInterval
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/**
 * What a client does after the server closed with a code: `reconnect` (with backoff; the
 * default for any code not listed, 1006 included), `new_token` (reconnect only with a token
 * other than the refused one), or `stop` (trying again would end the same way).
 */
export type ReconnectPolicy = 'reconnect' | 'new_token' | 'stop';

const CLOSE_POLICY: Readonly<Partial<Record<number, ReconnectPolicy>>> = {
  [CloseCode.MessageTooBig]: 'stop',
  [CloseCode.DisconnectedByOperator]: 'stop',
  [CloseCode.Forbidden]: 'stop',
  [CloseCode.TooManyErrors]: 'stop',
  [CloseCode.Unauthorized]: 'new_token',
};

export function reconnectPolicy(code: number): ReconnectPolicy {
  return CLOSE_POLICY[code] ?? 'reconnect';
}

/** The WebSocket subprotocol a client asks for to get several envelopes per server frame, joined by "\n". */
export const BATCH_PROTOCOL = 'nats-ws-sidecar.batch';

/** Project and user ids, and the subject prefix: single NATS subject tokens (said so in error messages). */
export const TOKEN_SYNTAX = '[A-Za-z0-9_-]{1,128}';
export const TOKEN_PATTERN = new RegExp(`^${TOKEN_SYNTAX}$`);

/** One frame, either direction. */
export interface Envelope<D = Record<string, unknown>> {
  type: string;
  data: D;
  /** RFC 3339. */
  timestamp: string;
  message_id: string;
}

/** An event from NATS as a client receives it. */
export interface EventEnvelope<D = Record<string, unknown>> extends Envelope<D> {
  /** The JetStream stream sequence: per project strictly increasing, not contiguous. */
  seq: number;
  /** Project events only. */
  project_id?: string;
}
