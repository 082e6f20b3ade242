/**
 * The admin presence query, `GET /api/v1/websocket/projects/:id/presence`. Mount the router behind
 * the admin API's authentication; `projectPresence` is the same answer without Koa.
 */
import Router from '@koa/router';
import { TOKEN_PATTERN } from '../config.js';
import type { PresencePort } from '../core/ports.js';

export interface ProjectPresence {
  project_id: string;
  /** Users with a connection subscribed to the project on any instance, sorted. */
  users: string[];
  count: number;
}

export class InvalidProjectIdError extends Error {
  readonly code = 'invalid_project_id';
  readonly status = 400;
  readonly expose = true;
  constructor() {
    super('project id must match [A-Za-z0-9_-]{1,128}');
    this.name = 'InvalidProjectIdError';
  }
}

export async function projectPresence(presence: PresencePort, projectId: string): Promise<ProjectPresence> {
  if (!TOKEN_PATTERN.test(projectId)) throw new InvalidProjectIdError();
  const users = await presence.users(projectId);
  return { project_id: projectId, users, count: users.length };
}

export function presenceRoutes(presence: PresencePort, prefix = '/api/v1/websocket'): Router {
  const router = new Router({ prefix });
  router.get('/projects/:id/presence', async (ctx) => {
    ctx.body = await projectPresence(presence, ctx.params.id);
  });
  return router;
}
