import { generateKeyPairSync } from 'node:crypto';
import { SignJWT, UnsecuredJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { createTokenVerifier, mayAccessProject, mintToken } from '../../src/auth.js';
import { AuthError } from '../../src/errors.js';

const SECRET = 'unit-test-secret-0123456789-0123456789';
const base = { jwtClockTolerance: 0, maxTokenLength: 8192, jwksCooldown: 30_000, jwksCacheMaxAge: 600_000 };
const verifier = createTokenVerifier({ ...base, jwtSecret: SECRET });

async function refusal(token: string, v = verifier): Promise<AuthError> {
  const err = await v.verify(token).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AuthError);
  return err as AuthError;
}

describe('claims and signatures', () => {
  it('maps sub, roles and projects claims to a principal', async () => {
    const p = await verifier.verify(await mintToken(SECRET, { sub: 'u1', roles: ['admin'], projects: ['a', 'b'] }));
    expect(p.userId).toBe('u1');
    expect(p.roles).toEqual(['admin']);
    expect(p.projects).toEqual(['a', 'b']);
    expect(p.expiresAt).toBeGreaterThan(Date.now());
    expect(mayAccessProject(p, 'a')).toBe(true);
    expect(mayAccessProject(p, 'c')).toBe(false);
  });

  it('treats "*" in projects as every project', async () => {
    const p = await verifier.verify(await mintToken(SECRET, { sub: 'u1', projects: ['*'] }));
    expect(p.projects).toBe('*');
    expect(mayAccessProject(p, 'anything')).toBe(true);
  });

  it('refuses expired, badly signed, unsigned, sub-less and oversized tokens with stable codes', async () => {
    expect((await refusal(await mintToken(SECRET, { sub: 'u', expiresIn: -10 }))).code).toBe('token_expired');
    expect((await refusal(await mintToken('another-secret-0123456789-0123456789', { sub: 'u' }))).code).toBe('token_invalid');
    expect((await refusal(new UnsecuredJWT({ sub: 'u' }).encode())).code).toBe('token_invalid');
    const noSub = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(SECRET));
    expect((await refusal(noSub)).code).toBe('token_no_subject');
    expect((await refusal('x'.repeat(9000))).code).toBe('token_too_large');
    expect((await refusal('')).code).toBe('token_missing');
  });

  it('refuses an HS256 token signed with the RSA public key when the key is RSA (key confusion)', async () => {
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
    const rsa = createTokenVerifier({ ...base, jwtPublicKey: pem });
    const good = await new SignJWT({}).setProtectedHeader({ alg: 'RS256' }).setSubject('u').sign(privateKey);
    expect((await rsa.verify(good)).userId).toBe('u');
    const confused = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('u').sign(new TextEncoder().encode(pem));
    expect((await refusal(confused, rsa)).code).toBe('token_invalid');
  });
});
