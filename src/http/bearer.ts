/**
 * The HTTP API's one way to read a caller: a JWT as `Authorization: Bearer`, or (downloads only)
 * `?token=`, verified; 401 with `WWW-Authenticate` otherwise. Admin, history and file routes
 * share it, so every route answers a missing or bad token the same way.
 */
import type { Context } from 'koa';
import type { Principal } from '../auth.js';
import type { AuthPort } from '../core/ports.js';
import { AuthErrorCode } from '../errors.js';

/** Thrown as 401; Koa's error path (api.ts) answers `{"error": message}`. */
export class UnauthorizedError extends Error {
  readonly status = 401;
  readonly expose = true;
}

export function bearerToken(ctx: Context, allowQuery = false): string | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(ctx.get('Authorization'));
  if (match) return match[1];
  const query = allowQuery ? ctx.query.token : undefined;
  return typeof query === 'string' && query ? query : undefined;
}

/** The verified caller, or a thrown 401 (`missing bearer token`, `invalid token`, `token expired`). */
export async function authenticateBearer(ctx: Context, verifier: AuthPort, allowQuery = false): Promise<Principal> {
  const token = bearerToken(ctx, allowQuery);
  if (!token) {
    ctx.set('WWW-Authenticate', 'Bearer');
    throw new UnauthorizedError('missing bearer token');
  }
  try {
    return await verifier.verify(token);
  } catch (err) {
    ctx.set('WWW-Authenticate', 'Bearer error="invalid_token"');
    throw new UnauthorizedError((err as { code?: string }).code === AuthErrorCode.Expired ? 'token expired' : 'invalid token');
  }
}
