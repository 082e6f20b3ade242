/**
 * The JWT verifier: which algorithms each kind of key accepts, the explicit allow-list, claims and
 * clock tolerance, and the stable error codes. (Attacks through real sockets: test/integration/jwt.test.ts.)
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { createTokenVerifier } from '../../src/auth.js';
import { loadConfig, type ConfigInput } from '../../src/config.js';
import { AuthError } from '../../src/errors.js';

const SECRET = 'unit-secret-that-is-long-enough-for-hs512-0123456789-0123456789-abcdef';

function verifier(overrides: ConfigInput) {
  return createTokenVerifier(loadConfig({ env: {}, overrides }));
}

async function sign(alg: string, key: KeyObject | Uint8Array, claims: Record<string, unknown> = {}, sub: string | null = 'alice') {
  const jwt = new SignJWT({ projects: ['p1'], roles: ['admin'], ...claims }).setProtectedHeader({ alg }).setIssuedAt();
  if (sub) jwt.setSubject(sub);
  if (!('exp' in claims)) jwt.setExpirationTime('1h');
  return jwt.sign(key);
}

async function refusal(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AuthError);
  return (err as AuthError).code;
}

/** Node KeyObjects: unlike WebCrypto keys they are not bound to one hash, so one RSA key signs RS* and PS*. */
function keyPair(kind: 'rsa' | 'ES256' | 'ES384' | 'ES512' | 'ed25519') {
  const curves = { ES256: 'P-256', ES384: 'P-384', ES512: 'P-521' } as const;
  const { publicKey, privateKey } =
    kind === 'rsa'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : kind === 'ed25519'
        ? generateKeyPairSync('ed25519')
        : generateKeyPairSync('ec', { namedCurve: curves[kind] });
  return { pem: publicKey.export({ type: 'spki', format: 'pem' }) as string, privateKey };
}

const secretKey = new TextEncoder().encode(SECRET);

describe('algorithms per key type', () => {
  it('accepts HS256, HS384 and HS512 with JWT_SECRET', async () => {
    const v = verifier({ jwtSecret: SECRET });
    for (const alg of ['HS256', 'HS384', 'HS512']) {
      const p = await v.verify(await sign(alg, secretKey));
      expect(p).toMatchObject({ userId: 'alice', roles: ['admin'], projects: ['p1'] });
    }
  });

  it('accepts RS256/384/512 and PS256/384/512 with an RSA public key, and nothing else', async () => {
    const { pem, privateKey } = keyPair('rsa');
    const v = verifier({ jwtPublicKey: pem });
    for (const alg of ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']) {
      expect((await v.verify(await sign(alg, privateKey))).userId).toBe('alice');
    }
    const ec = keyPair('ES256');
    expect(await refusal(v.verify(await sign('ES256', ec.privateKey)))).toBe('token_invalid');
    expect(await refusal(v.verify(await sign('HS256', new TextEncoder().encode(pem))))).toBe('token_invalid');
  });

  it('accepts ES256, ES384 and ES512 with the matching curve only', async () => {
    for (const alg of ['ES256', 'ES384', 'ES512']) {
      const { pem, privateKey } = keyPair(alg as 'ES256');
      const v = verifier({ jwtPublicKey: pem });
      expect((await v.verify(await sign(alg, privateKey))).userId).toBe('alice');
    }
  });

  it('accepts EdDSA with an Ed25519 public key', async () => {
    const { pem, privateKey } = keyPair('ed25519');
    expect((await verifier({ jwtPublicKey: pem }).verify(await sign('EdDSA', privateKey))).userId).toBe('alice');
  });

  it('reads a PEM whose newlines arrive as literal \\n in an environment variable', async () => {
    const { pem, privateKey } = keyPair('ES256');
    const config = loadConfig({ env: { JWT_PUBLIC_KEY: pem.replace(/\n/g, '\\n') } });
    expect((await createTokenVerifier(config).verify(await sign('ES256', privateKey))).userId).toBe('alice');
  });
});

describe('JWT_ALGORITHMS', () => {
  it('narrows what the key allows', async () => {
    const v = verifier({ jwtSecret: SECRET, jwtAlgorithms: 'HS512' });
    expect((await v.verify(await sign('HS512', secretKey))).userId).toBe('alice');
    expect(await refusal(v.verify(await sign('HS256', secretKey)))).toBe('token_invalid');
  });

  it('can never widen it: an HS algorithm with a public key leaves nothing and stops start-up', async () => {
    const { pem } = keyPair('rsa');
    expect(() => verifier({ jwtPublicKey: pem, jwtAlgorithms: 'HS256' })).toThrow(/JWT_ALGORITHMS/);
  });

  it('refuses "none" in the configuration', () => {
    expect(() => loadConfig({ env: { JWT_SECRET: SECRET, JWT_ALGORITHMS: 'HS256,none' } })).toThrow(/never accepted/);
  });
});

describe('claims and clock', () => {
  const now = () => Math.floor(Date.now() / 1000);

  it('accepts a token expired within the clock tolerance and keeps that grace in expiresAt', async () => {
    const v = verifier({ jwtSecret: SECRET, jwtClockTolerance: '5s' });
    const exp = now() - 2;
    const p = await v.verify(await sign('HS256', secretKey, { exp }));
    expect(p.expiresAt).toBe(exp * 1000 + 5000);
  });

  it('refuses an expired token with token_expired, and a future nbf with token_invalid', async () => {
    const v = verifier({ jwtSecret: SECRET, jwtClockTolerance: 0 });
    expect(await refusal(v.verify(await sign('HS256', secretKey, { exp: now() - 1 })))).toBe('token_expired');
    expect(await refusal(v.verify(await sign('HS256', secretKey, { nbf: now() + 60 })))).toBe('token_invalid');
  });

  it('requires issuer and audience when configured', async () => {
    const v = verifier({ jwtSecret: SECRET, jwtIssuer: 'https://issuer.test', jwtAudience: 'sidecar' });
    expect(
      (await v.verify(await sign('HS256', secretKey, { iss: 'https://issuer.test', aud: 'sidecar' }))).userId,
    ).toBe('alice');
    expect(await refusal(v.verify(await sign('HS256', secretKey, { iss: 'https://evil.test', aud: 'sidecar' })))).toBe('token_invalid');
    expect(await refusal(v.verify(await sign('HS256', secretKey, { iss: 'https://issuer.test', aud: 'other' })))).toBe('token_invalid');
    expect(await refusal(v.verify(await sign('HS256', secretKey)))).toBe('token_invalid');
  });

  it('refuses a token without sub, or over maxTokenLength before verifying it', async () => {
    const v = verifier({ jwtSecret: SECRET, maxTokenLength: 512 });
    expect(await refusal(v.verify(await sign('HS256', secretKey, {}, null)))).toBe('token_no_subject');
    expect(await refusal(v.verify(await sign('HS256', secretKey, { pad: 'x'.repeat(600) })))).toBe('token_too_large');
    expect(await refusal(v.verify(''))).toBe('token_missing');
  });
});

describe('HMAC fast path (node:crypto signature check, jose claim checks)', () => {
  const now = () => Math.floor(Date.now() / 1000);
  const b64 = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

  it('keeps the whole claim set on the principal only when a backend authorizes projects', async () => {
    const token = await sign('HS256', secretKey, { team: 'blue' });
    const claimsMode = await verifier({ jwtSecret: SECRET }).verify(token);
    expect(claimsMode).toMatchObject({ userId: 'alice', roles: ['admin'], projects: ['p1'] });
    expect(claimsMode.claims).toBeUndefined();
    const requestMode = await verifier({ jwtSecret: SECRET, projectAuthorization: 'request' }).verify(token);
    expect(requestMode.claims).toMatchObject({ sub: 'alice', team: 'blue', roles: ['admin'] });
  });

  /** Same outcome and message as jose's jwtVerify, for the tokens the fast path takes and those it leaves to jose. */
  it('answers exactly as jose does, accepted or refused', async () => {
    const { jwtVerify } = await import('jose');
    // `request` authorization keeps every claim on the principal, so they can be compared too.
    const options = { jwtSecret: SECRET, jwtIssuer: 'iss', jwtAudience: 'aud', jwtClockTolerance: '5s', jwtAlgorithms: 'HS256,HS512', projectAuthorization: 'request' };
    const v = verifier(options);
    const good = await sign('HS256', secretKey, { iss: 'iss', aud: 'aud' });
    const [h, p, s] = good.split('.');
    const resign = async (header: unknown, payload: string) => {
      const { createHmac } = await import('node:crypto');
      const head = `${b64(header)}.${payload}`;
      return `${head}.${createHmac('sha256', secretKey).update(head).digest('base64url')}`;
    };
    const tokens = [
      good,
      await sign('HS512', secretKey, { iss: 'iss', aud: 'aud' }),
      await sign('HS384', secretKey, { iss: 'iss', aud: 'aud' }), // not in the allow-list
      await sign('HS256', secretKey, { iss: 'iss', aud: 'aud', exp: now() - 2 }), // within tolerance
      await sign('HS256', secretKey, { iss: 'iss', aud: 'aud', exp: now() - 60 }),
      await sign('HS256', secretKey, { iss: 'iss', aud: 'aud', nbf: now() + 60 }),
      await sign('HS256', secretKey, { iss: 'other', aud: 'aud' }),
      await sign('HS256', secretKey, { iss: 'iss', aud: ['x', 'aud'] }),
      await sign('HS256', secretKey, { iss: 'iss' }),
      await sign('HS256', new TextEncoder().encode(`${SECRET}x`), { iss: 'iss', aud: 'aud' }),
      `${h}.${p}.${s.slice(0, -2)}`,
      `${h}.${p}.${s}=`,
      `${h}.${p}.${s}!`,
      `${h}.${p}`,
      `${h}.${p}.`,
      `${h}..${s}`,
      `${b64({ alg: 'none' })}.${p}.`,
      await resign({ alg: 'HS256', crit: ['exp'], exp: 1 }, p),
      await resign({ alg: 'HS256', b64: false, crit: ['b64'] }, p),
      await resign({ alg: 'HS256', typ: 'JWT', kid: 'k1' }, p),
      await resign(['HS256'], p),
      await resign({ alg: 'HS256' }, b64('[1,2]')),
      await resign({ alg: 'HS256' }, b64('not json')),
      await resign({ alg: 'HS256' }, b64({ sub: 'bob', iss: 'iss', aud: 'aud', exp: 'soon' })),
      await resign({ alg: 'HS256' }, b64({ sub: 'bob', iss: 'iss', aud: 'aud', iat: 'then' })),
      await resign({ alg: 'HS256' }, b64({ sub: 'bob', iss: 'iss', aud: 'aud', exp: now() + 60, projects: ['*'] })),
    ];
    const joseOptions = { algorithms: ['HS256', 'HS512'], issuer: 'iss', audience: 'aud', clockTolerance: 5 };
    for (const token of tokens) {
      const ours = await v.verify(token).then(
        (principal) => ({ ok: true, sub: principal.userId, claims: principal.claims }),
        (err: AuthError) => ({ ok: false, code: err.code, message: err.message }),
      );
      const theirs = await jwtVerify(token, secretKey, joseOptions).then(
        ({ payload }) => ({ ok: true, sub: payload.sub, claims: payload }),
        (err: { code: string }) => ({
          ok: false,
          code: err.code === 'ERR_JWT_EXPIRED' ? 'token_expired' : 'token_invalid',
          message: err.code === 'ERR_JWT_EXPIRED' ? 'token expired' : `invalid token (${err.code})`,
        }),
      );
      expect(ours, token).toEqual(theirs);
    }
  });
});
