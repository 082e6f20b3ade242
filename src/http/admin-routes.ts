/**
 * The admin API under /api/v1/websocket. Every route needs a JWT with role `admin` (checked in
 * one middleware). Counts, lists, stats, metrics and disconnects act on the whole fleet by default
 * (one NATS request every instance answers) and on this instance only with `?scope=local`;
 * messages are published into the JetStream stream, so they are stored, numbered and delivered by
 * every instance.
 */
import { authenticateBearer } from './bearer.js';
import { randomUUID } from 'node:crypto';
import Router from '@koa/router';
import type { Context, Middleware } from 'koa';
import type { Logger } from 'pino';
import { z } from 'zod';
import { isAdmin, type Principal } from '../auth.js';
import { topics, type AuthPort, type PresencePort, type Topic } from '../core/ports.js';
import type { NatsBroker } from '../nats/broker.js';
import type { FleetAnswer, FleetHandler, Gathered, Fleet } from '../nats/fleet.js';
import {
  countQuery,
  disconnectQuery,
  listQuery,
  reason,
  validate,
  type OperationName,
} from '../operations.js';
import { TOKEN_PATTERN, TOKEN_SYNTAX } from '../protocol-codes.js';
import { publishedEventSchema } from '../protocol.js';
import { readJsonBody } from './json-body.js';
import { projectPresence } from './presence-routes.js';
import { publishRevocation } from '../nats/project-authorizer.js';
import { fleetTotals, type InstanceMetrics, type SidecarMetrics } from './metrics.js';

export const ADMIN_PREFIX = '/api/v1/websocket';

export interface AdminDeps {
  verifier: AuthPort;
  fleet: Fleet;
  operations: Record<OperationName, FleetHandler>;
  metrics: SidecarMetrics;
  broker: NatsBroker;
  instanceId: string;
  /** Largest request body, bytes. */
  bodyLimit: number;
  log: Logger;
  presence: PresencePort;
}

interface AdminState {
  principal: Principal;
}

/** The one place the admin API checks credentials: 401 without a valid token, 403 without the role. */
export function requireAdmin(verifier: AuthPort): Middleware<AdminState> {
  return async (ctx, next) => {
    const principal = await authenticateBearer(ctx, verifier);
    if (!isAdmin(principal)) ctx.throw(403, 'the admin role is required');
    ctx.state.principal = principal;
    await next();
  };
}

/** What an admin may publish: the envelope, with a message_id fit for the Nats-Msg-Id header. */
const adminEvent = publishedEventSchema.extend({
  message_id: z
    .string()
    .regex(/^[\x21-\x7e]{1,128}$/, 'must be 1-128 printable ASCII characters without spaces')
    .optional(),
});
const disconnectBody = z.object({ reason: reason.optional() }).optional();
const revokeBody = z.object({ user_id: z.string().regex(TOKEN_PATTERN, `must match ${TOKEN_SYNTAX}`) });

type Scope = 'cluster' | 'local';

const sum = (answers: FleetAnswer[], key: string): number =>
  answers.reduce((n, a) => n + (typeof a[key] === 'number' ? (a[key]) : 0), 0);

export function createAdminRouter(deps: AdminDeps): Router<AdminState> {
  const { fleet, operations, broker, instanceId, log } = deps;
  const router = new Router<AdminState>({ prefix: ADMIN_PREFIX });
  router.use(requireAdmin(deps.verifier));

  function scopeOf(ctx: Context): Scope {
    const scope = ctx.query.scope ?? 'cluster';
    if (scope === 'cluster' || scope === 'local') return scope;
    return ctx.throw(400, 'scope must be "cluster" or "local"');
  }

  /** Run an operation here (scope=local) or on every instance; answers that carry an error count as missing. */
  async function ask(ctx: Context, op: OperationName, body: object): Promise<Gathered & { scope: Scope }> {
    const scope = scopeOf(ctx);
    const gathered: Gathered =
      scope === 'local'
        ? { answers: [{ ...(await operations[op](body)), instance_id: instanceId }], missing: [] }
        : await fleet.gather(op, body);
    const failed = gathered.answers.filter((a) => a.error !== undefined);
    if (failed.length === 0) return { scope, ...gathered };
    return {
      scope,
      answers: gathered.answers.filter((a) => a.error === undefined),
      missing: [...gathered.missing, ...failed.map((a) => a.instance_id)].sort(),
    };
  }

  function audit(ctx: Context, action: string, details: Record<string, unknown>): void {
    log.info({ admin: (ctx.state as AdminState).principal.userId, action, ...details }, 'admin action');
  }

  // ---- counts and lists ----------------------------------------------------------------------

  async function count(ctx: Context, target: object): Promise<void> {
    const g = await ask(ctx, 'count', validate(countQuery, target));
    ctx.body = {
      count: sum(g.answers, 'count'),
      scope: g.scope,
      instances: g.answers.map((a) => ({ instance_id: a.instance_id, count: a.count })),
      missing: g.missing,
    };
  }

  router.get('/connections/count', (ctx) => count(ctx, {}));
  router.get('/users/:id/connections/count', (ctx) => count(ctx, { user_id: ctx.params.id }));
  router.get('/projects/:id/connections/count', (ctx) => count(ctx, { project_id: ctx.params.id }));

  router.get('/connections', async (ctx) => {
    const { user_id, project_id, limit } = ctx.query;
    const query = validate(listQuery, {
      user_id,
      project_id,
      limit: limit === undefined ? undefined : Number(limit),
    });
    const g = await ask(ctx, 'connections', query);
    const connections = g.answers.flatMap((a) =>
      (a.connections as Record<string, unknown>[]).map((c) => ({ ...c, instance_id: a.instance_id })),
    );
    const total = sum(g.answers, 'total');
    ctx.body = {
      count: total,
      scope: g.scope,
      truncated: connections.length < total,
      connections,
      instances: g.answers.map((a) => ({ instance_id: a.instance_id, count: a.total })),
      missing: g.missing,
    };
  });

  router.get('/stats', async (ctx) => {
    const g = await ask(ctx, 'stats', {});
    ctx.body = {
      scope: g.scope,
      instance_id: instanceId,
      instance_count: g.answers.length,
      connections: sum(g.answers, 'connections'),
      authenticated_connections: sum(g.answers, 'authenticated_connections'),
      instances: g.answers,
      missing: g.missing,
    };
  });

  router.get('/metrics', async (ctx) => {
    const [g, offline] = await Promise.all([ask(ctx, 'metrics', {}), deps.metrics.offline(true)]);
    ctx.body = {
      scope: g.scope,
      instance_id: instanceId,
      timestamp: new Date().toISOString(),
      ...fleetTotals(g.answers as unknown as InstanceMetrics[], deps.metrics.snapshot()),
      offline_messages: offline, // from the shared stream: counted once, not per instance
      instances: g.answers,
      missing: g.missing,
    };
  });

  // ---- messages -------------------------------------------------------------------------------

  async function publish(ctx: Context, topic: Topic): Promise<void> {
    const event = validate(adminEvent, await readJsonBody(ctx, deps.bodyLimit));
    if (!broker.connected) ctx.throw(503, 'NATS is unreachable: the message was not sent', { expose: true });
    const messageId = event.message_id ?? randomUUID();
    // Stamped here so live and replayed copies carry the same time and id.
    const payload = JSON.stringify({ ...event, timestamp: event.timestamp ?? new Date().toISOString(), message_id: messageId });
    let seq: number;
    try {
      seq = await broker.publish(topic, payload, messageId);
    } catch (err) {
      log.warn({ err, topic }, 'admin publish failed');
      return ctx.throw(503, 'the message could not be stored in JetStream', { expose: true });
    }
    const subject = broker.subjectOf(topic);
    audit(ctx, 'message', { subject, type: event.type, seq });
    ctx.body = { ok: true, seq, subject, message_id: messageId };
  }

  const id = (ctx: Context, field: 'user_id' | 'project_id'): string =>
    validate(countQuery, { [field]: ctx.params.id })[field]!;

  router.post('/broadcast', (ctx) => publish(ctx, topics.broadcast));
  router.post('/users/:id/message', (ctx) => publish(ctx, topics.user(id(ctx, 'user_id'))));
  router.post('/projects/:id/message', (ctx) => publish(ctx, topics.project(id(ctx, 'project_id'))));

  // ---- disconnects ----------------------------------------------------------------------------

  async function disconnect(ctx: Context, target: { user_id?: string; project_id?: string }): Promise<void> {
    const body = validate(disconnectBody, await readJsonBody(ctx, deps.bodyLimit));
    const query = validate(disconnectQuery, { ...target, reason: body?.reason });
    const g = await ask(ctx, 'disconnect', query);
    const disconnected = sum(g.answers, 'disconnected');
    audit(ctx, 'disconnect', { ...target, scope: g.scope, disconnected });
    ctx.body = {
      disconnected,
      scope: g.scope,
      instances: g.answers.map((a) => ({ instance_id: a.instance_id, disconnected: a.disconnected })),
      missing: g.missing,
    };
  }

  router.post('/users/:id/disconnect', (ctx) => disconnect(ctx, { user_id: ctx.params.id }));
  router.post('/projects/:id/disconnect', (ctx) => disconnect(ctx, { project_id: ctx.params.id }));

  // ---- presence and permissions ---------------------------------------------------------------

  router.get('/projects/:id/presence', async (ctx) => {
    ctx.body = await projectPresence(deps.presence, id(ctx, 'project_id'));
  });

  /** Take a project away from a user everywhere: every instance unsubscribes the user's connections. */
  router.post('/projects/:id/revoke', async (ctx) => {
    const projectId = id(ctx, 'project_id');
    const { user_id } = validate(revokeBody, await readJsonBody(ctx, deps.bodyLimit));
    publishRevocation(broker.nc, broker.prefix, user_id, projectId);
    audit(ctx, 'revoke', { user_id, project_id: projectId });
    ctx.body = { ok: true, user_id, project_id: projectId };
  });

  return router;
}
