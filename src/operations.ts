import { hostname } from 'node:os';
/**
 * Admin operations as one instance performs them on its own connections. The admin API runs them
 * here for `?scope=local`, and on every instance through the fleet (`<prefix>.ctl.<op>`) otherwise;
 * a backend may also publish `<prefix>.ctl.disconnect` itself. Bodies arrive from NATS, so each
 * op validates its own.
 */
import { z } from 'zod';
import { TOKEN_PATTERN, TOKEN_SYNTAX } from './protocol-codes.js';
import type { Connection } from './core/connection.js';
import type { Hub } from './core/hub.js';
import { topics } from './core/ports.js';
import { SidecarError } from './errors.js';
import type { FleetAnswerBody, FleetHandler } from './nats/fleet.js';
import { CloseCode } from './protocol.js';

/** Rows one instance returns for a connection list; keeps an answer well under NATS's 1 MB payload. */
export const MAX_LISTED_CONNECTIONS = 1000;
/** Bytes: a WebSocket close reason must fit in 123. */
export const MAX_REASON_BYTES = 100;

/** A request to an operation was malformed; the message says which field. */
export class InvalidRequestError extends SidecarError {
  /** Koa's error convention: answered 400 with this message. */
  readonly status = 400;
  readonly expose = true;
  constructor(message: string) {
    super('invalid_request', message);
  }
}

const id = z.string().regex(TOKEN_PATTERN, `must match ${TOKEN_SYNTAX}`);
const target = { user_id: id.optional(), project_id: id.optional() };
export const reason = z
  .string()
  .refine((s) => Buffer.byteLength(s) <= MAX_REASON_BYTES, `must be at most ${MAX_REASON_BYTES} bytes`);

export const countQuery = z.object(target);
export const listQuery = z.object({ ...target, limit: z.number().int().min(1).max(MAX_LISTED_CONNECTIONS).optional() });
export const disconnectQuery = z
  .object({ ...target, reason: reason.optional() })
  .refine((q) => q.user_id !== undefined || q.project_id !== undefined, 'user_id or project_id is required');

export type CountQuery = z.infer<typeof countQuery>;
export type ListQuery = z.infer<typeof listQuery>;
export type DisconnectQuery = z.infer<typeof disconnectQuery>;

export function validate<T>(schema: z.ZodType<T>, body: unknown): T {
  const result = schema.safeParse(body ?? {});
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = issue.path.join('.');
  throw new InvalidRequestError(field ? `field "${field}": ${issue.message}` : issue.message);
}

export interface ConnectionRow {
  id: string;
  user_id: string | null;
  state: string;
  projects: string[];
  remote_address: string;
  connected_at: string;
  messages_in: number;
  messages_out: number;
}

function row(conn: Connection): ConnectionRow {
  const i = conn.info();
  return {
    id: i.id,
    user_id: i.userId,
    state: conn.state,
    projects: i.projects,
    remote_address: i.remoteAddress,
    connected_at: i.connectedAt,
    messages_in: i.messagesIn,
    messages_out: i.messagesOut,
  };
}

/** The local connections a target names: a user's, a project's subscribers', or both at once. */
function* matching(hub: Hub, q: CountQuery): Iterable<Connection> {
  const project = q.project_id === undefined ? undefined : topics.project(q.project_id);
  const pool = q.user_id === undefined ? hub.connections.values() : hub.connectionsOf(q.user_id);
  for (const conn of pool) if (project === undefined || conn.subscriptions.has(project)) yield conn;
}

export function countConnections(hub: Hub, q: CountQuery): number {
  if (q.user_id === undefined && q.project_id === undefined) return hub.connections.size;
  if (q.user_id === undefined) return hub.subscribersOf(topics.project(q.project_id!));
  if (q.project_id === undefined) return hub.connectionsOf(q.user_id).size;
  let n = 0;
  for (const _ of matching(hub, q)) n += 1;
  return n;
}

export function listConnections(hub: Hub, q: ListQuery): { total: number; connections: ConnectionRow[] } {
  const limit = q.limit ?? MAX_LISTED_CONNECTIONS;
  const connections: ConnectionRow[] = [];
  let total = 0;
  for (const conn of matching(hub, q)) {
    total += 1;
    if (connections.length < limit) connections.push(row(conn));
  }
  return { total, connections };
}

/** Close every matching local connection with 4010; returns how many. */
export function disconnect(hub: Hub, q: DisconnectQuery): number {
  const victims = [...matching(hub, q)];
  const reason = q.reason || 'disconnected by operator';
  for (const conn of victims) conn.close(CloseCode.DisconnectedByOperator, reason);
  if (victims.length > 0) hub.log.info({ user: q.user_id, project: q.project_id, count: victims.length }, 'operator disconnect');
  return victims.length;
}

export interface InstanceStatus {
  startedAt: number;
  draining(): boolean;
  natsConnected(): boolean;
}

export function instanceStats(hub: Hub, status: InstanceStatus): FleetAnswerBody {
  const users = new Set<string>();
  let authenticated = 0;
  for (const conn of hub.connections.values()) {
    const user = conn.userId;
    if (user === null) continue;
    authenticated += 1;
    users.add(user);
  }
  return {
    connections: hub.connections.size,
    authenticated_connections: authenticated,
    users: users.size,
    projects: hub.projectCount,
    started_at: new Date(status.startedAt).toISOString(),
    uptime_seconds: Math.round((Date.now() - status.startedAt) / 1000),
    draining: status.draining(),
    nats_connected: status.natsConnected(),
    // Which machine and process: workers of one process share the host (dashboard groups them).
    host: hostname(),
    pid: process.pid,
  };
}

export type OperationName = 'count' | 'connections' | 'disconnect' | 'stats' | 'metrics';

/** The operations table: what the fleet answers, and what `scope=local` runs in place. */
export function createOperations(deps: {
  hub: Hub;
  status: InstanceStatus;
  metrics: () => FleetAnswerBody;
}): Record<OperationName, FleetHandler> {
  const { hub } = deps;
  return {
    count: (body) => ({ count: countConnections(hub, validate(countQuery, body)) }),
    connections: (body) => ({ ...listConnections(hub, validate(listQuery, body)) }),
    disconnect: (body) => ({ disconnected: disconnect(hub, validate(disconnectQuery, body)) }),
    stats: () => instanceStats(hub, deps.status),
    metrics: () => deps.metrics(),
  };
}
