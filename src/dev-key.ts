/**
 * Development convenience: with no JWT key configured (and not in production) the sidecar uses a
 * random HS256 secret kept under the data directory, so restarts and `npm run token` agree on it.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

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
