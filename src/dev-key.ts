/**
 * Development convenience: with no JWT key configured (and not in production) the sidecar uses a
 * random HS256 secret kept under the data directory, so restarts and `npm run token` agree on it.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { mintToken } from './auth.js';

export function devSecretPath(dataDir: string): string {
  return join(dataDir, 'dev-jwt-secret');
}

export function readDevSecret(dataDir: string): string | undefined {
  try {
    return readFileSync(devSecretPath(dataDir), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

export function ensureDevSecret(dataDir: string): string {
  const existing = readDevSecret(dataDir);
  if (existing) return existing;
  mkdirSync(dataDir, { recursive: true });
  const secret = randomBytes(32).toString('base64url');
  writeFileSync(devSecretPath(dataDir), secret + '\n', { mode: 0o600 });
  return secret;
}

/** The dev token and the URLs to try it on, printed once at start-up. */
export async function printDevToken(secret: string, urls: { url: string; wsUrl: string }, log: Logger): Promise<void> {
  const token = await mintToken(secret, { sub: 'demo', roles: ['admin'], projects: ['*'] });
  log.warn(
    { user: 'demo', roles: ['admin'], projects: ['*'] },
    'no JWT key configured: using a development key (set JWT_SECRET, or NODE_ENV=production to forbid this)',
  );
  // Printed plainly (not through the logger's redaction) so a developer can copy it.
  console.log(`\nDev token (user "demo", role admin, all projects; valid 24 h):\n${token}\n`);
  console.log(`Connect: ${urls.wsUrl}?token=${token}\n`);
  console.log(`Dashboard: ${urls.url}/dashboard#token=${token}\n`);
}
