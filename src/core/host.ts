/**
 * What a connection asks of the hub it lives in: a narrow port, so the connection never reaches
 * into the hub's rooms, its broker or its other ports. The hub implements it.
 */
import type { Logger } from 'pino';
import type { Principal } from '../auth.js';
import type { Config } from '../config.js';
import type { ClientMessage } from '../protocol.js';
import type { Connection } from './connection.js';
import type { OutboundPacer } from './limits.js';

/** The settings a connection applies itself: admission, queue caps, heartbeat, deadlines, ack-on-write. */
export type ConnectionConfig = Pick<
  Config,
  | 'requestsPerSecond'
  | 'burstSize'
  | 'maxErrors'
  | 'errorResetInterval'
  | 'pingInterval'
  | 'pongTimeout'
  | 'authTimeout'
  | 'outboundMessagesPerSecond'
  | 'outboundBurst'
  | 'maxQueuedMessages'
  | 'maxQueuedBytes'
  | 'maxBufferedBytes'
  | 'slowConsumerTimeout'
  | 'maxMessageSize'
  | 'inboxAckMode'
  | 'inboxAckWait'
>;

/** The counters a connection adds to (the hub's stats). */
export interface ConnectionStats {
  messagesSent: number;
  messagesReceived: number;
  errorsSent: number;
  rateLimited: number;
  slowConsumers: number;
}

export interface ConnectionHost {
  readonly config: ConnectionConfig;
  readonly stats: ConnectionStats;
  readonly log: Logger;
  /** The slow lane: a lease per connection past its outbound burst. */
  readonly pacer: Pick<OutboundPacer, 'schedule' | 'forget'>;
  /** The connection has frames to write: flush it once this tick. */
  markDirty(conn: Connection): void;
  /** The connection has frames that may wait a little (presence events): flush it within PRESENCE_WRITE_DELAY_MS. */
  markDeferred(conn: Connection): void;
  /** Run one validated client request (the processors). */
  dispatch(conn: Connection, message: ClientMessage): void | Promise<void>;
  /** Authenticate, or refresh the token of an open connection. */
  authenticate(conn: Connection, principal: Principal): Promise<void>;
  /** Every direct message of the user up to `seq` was written to one of its sockets (ack-on-write). */
  written(userId: string, seq: number): void;
  /** The connection closed: it leaves every topic and its user, and its backend hears of it. */
  remove(conn: Connection, code: number, reason: string): void;
}
