/** The answer of the admin presence query, `GET /api/v1/websocket/projects/:id/presence`. */
import { TOKEN_PATTERN, TOKEN_SYNTAX } from '../protocol-codes.js';
import { SidecarError } from '../errors.js';
import type { PresencePort } from '../core/ports.js';

export interface ProjectPresence {
  project_id: string;
  /** Users with a connection subscribed to the project on any instance, sorted. */
  users: string[];
  count: number;
}

export class InvalidProjectIdError extends SidecarError {
  /** Koa's error path answers 400 with this message. */
  readonly status = 400;
  readonly expose = true;
  constructor() {
    super('invalid_project_id', `project id must match ${TOKEN_SYNTAX}`);
  }
}

export async function projectPresence(presence: PresencePort, projectId: string): Promise<ProjectPresence> {
  if (!TOKEN_PATTERN.test(projectId)) throw new InvalidProjectIdError();
  const users = await presence.users(projectId);
  return { project_id: projectId, users, count: users.length };
}

