/**
 * `GET /api/v1/websocket/projects/:id/history`: the WebSocket `history` request over HTTP, for any
 * user allowed to see the project (not only admins). The body is the WebSocket answer's `data`.
 */
import Router from '@koa/router';
import type { Principal } from '../auth.js';
import type { AuthPort } from '../core/ports.js';
import type { Hub } from '../core/hub.js';
import { readHistory } from '../core/processors.js';
import { AuthErrorCode } from '../errors.js';
import { ErrorCode, ProtocolError, parseHistoryParams } from '../protocol.js';

export interface HistoryRouteDeps {
  hub: Hub;
  verifier: AuthPort;
}

const STATUS: Partial<Record<string, number>> = { [ErrorCode.InvalidMessage]: 400, [ErrorCode.Forbidden]: 403 };

export function createHistoryRouter(deps: HistoryRouteDeps, prefix = '/api/v1/websocket'): Router {
  const router = new Router({ prefix });
  router.get('/projects/:id/history', async (ctx) => {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(ctx.get('Authorization'));
    if (!match) {
      ctx.set('WWW-Authenticate', 'Bearer');
      return ctx.throw(401, 'missing bearer token');
    }
    let principal: Principal;
    try {
      principal = await deps.verifier.verify(match[1]);
    } catch (err) {
      ctx.set('WWW-Authenticate', 'Bearer error="invalid_token"');
      return ctx.throw(401, (err as { code?: string }).code === AuthErrorCode.Expired ? 'token expired' : 'invalid token');
    }
    const hub = deps.hub;
    try {
      const query = parseHistoryParams(ctx.params.id, ctx.query);
      ctx.body = await readHistory(hub, principal, query);
      ctx.type = 'application/json';
    } catch (err) {
      const status = err instanceof ProtocolError ? STATUS[err.code] : undefined;
      if (status === undefined) throw err;
      ctx.status = status;
      ctx.body = { error: err instanceof Error ? err.message : 'request failed', code: (err as ProtocolError).code };
    }
  });
  return router;
}
