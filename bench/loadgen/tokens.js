// HS256 tokens for the contract clients, signed before any timing starts.

import { SignJWT } from 'jose';

/** One token per user id in `subs` (all projects, 2 h), signed 500 at a time. */
export async function signTokens(secret, subs) {
  const key = new TextEncoder().encode(secret);
  const out = new Array(subs.length);
  for (let i = 0; i < subs.length; i += 500) {
    const part = subs.slice(i, i + 500).map((sub) =>
      new SignJWT({ projects: ['*'] })
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(sub)
        .setIssuedAt()
        .setExpirationTime('2h')
        .sign(key),
    );
    (await Promise.all(part)).forEach((t, k) => (out[i + k] = t));
  }
  return out;
}
