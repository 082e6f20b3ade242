/**
 * `GET /api/v1/websocket/projects/:id/history`: the WebSocket `history` request over HTTP, for any
 * user allowed to see the project (not only admins). The body is the WebSocket answer's `data`.
 */
import { authenticateBearer } from './bearer.js';
import Router from '@koa/router';
import type { AuthPort } from '../core/ports.js';
import type { Hub } from '../core/hub.js';
import { readHistory } from '../core/processors.js';
import { ErrorCode, ProtocolError, parseHistoryParams } from '../protocol.js';

export interface HistoryRouteDeps {
  hub: Hub;
  verifier: AuthPort;
}

const STATUS: Partial<Record<string, number>> = { [ErrorCode.InvalidMessage]: 400, [ErrorCode.Forbidden]: 403 };

export function createHistoryRouter(deps: HistoryRouteDeps, prefix = '/api/v1/websocket'): Router {
  const router = new Router({ prefix });
  router.get('/projects/:id/history', async (ctx) => {
    const principal = await authenticateBearer(ctx, deps.verifier);
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
