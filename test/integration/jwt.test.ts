/**
 * JWT attacks through real sockets: each forged or unacceptable token is refused both at the
 * handshake (HTTP 401, no WebSocket) and by first-message auth (auth_failed, then close 4401).
 * Also: RS tokens larger than maxMessageSize, the algorithm allow-list, expiry and refresh, and a
 * JWKS key server (a local Koa app) with key rotation, cooldown and injected key headers.
 */
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import Koa from 'koa';
import { exportJWK, SignJWT, type JWK } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { b64, handmade } from '../helpers/jwt-forge.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient, UpgradeRejectedError } from '../helpers/ws-client.js';

const ISSUER = 'https://issuer.test';
const AUDIENCE = 'nats-ws-sidecar';
const now = () => Math.floor(Date.now() / 1000);

interface SignOptions {
  sub?: string | null;
  header?: Record<string, unknown>;
  claims?: Record<string, unknown>;
  expiresIn?: number;
}

function rs256(key: KeyObject, o: SignOptions = {}): Promise<string> {
  const jwt = new SignJWT({ projects: ['*'], iss: ISSUER, aud: AUDIENCE, ...o.claims })
    .setProtectedHeader({ alg: 'RS256', typ: 'JWT', ...o.header })
    .setIssuedAt();
  if (o.sub !== null) jwt.setSubject(o.sub ?? 'mallory');
  if (!o.claims || !('exp' in o.claims)) jwt.setExpirationTime(now() + (o.expiresIn ?? 3600));
  return jwt.sign(key);
}

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await nats?.cleanup();
});

async function handshakeStatus(wsUrl: string, token: string): Promise<number> {
  const err = await connectClient(`${wsUrl}?token=${encodeURIComponent(token)}`).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UpgradeRejectedError);
  return (err as UpgradeRejectedError).status;
}

/** First-message auth with `token`: the auth_failed answer, after which the socket must close 4401. */
async function firstMessageRefusal(wsUrl: string, token: string): Promise<{ code: string; close: number }> {
  const c = await connectClient(wsUrl);
  await c.waitForMessage((m) => m.type === 'auth_required');
  c.send({ type: 'auth', data: { token } });
  const answer = await c.waitForMessage();
  expect(answer.type).toBe('auth_failed');
  return { code: answer.data.code, close: (await c.waitForClose()).code };
}

async function firstMessageSuccess(wsUrl: string, token: string): Promise<string> {
  const c = await connectClient(wsUrl);
  await c.waitForMessage((m) => m.type === 'auth_required');
  c.send({ type: 'auth', data: { token } });
  const answer = await c.waitForMessage();
  expect(answer.type).toBe('auth_success');
  return answer.data.user_id;
}

describe('with an RSA public key, issuer and audience', () => {
  const signing = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const publicPem = signing.publicKey.export({ type: 'spki', format: 'pem' }) as string;
  const maxTokenLength = 4096;
  let side: TestSidecar;
  const attacks: Record<string, { token: string; code: string }> = {};

  beforeAll(async () => {
    side = await startTestSidecar(nats.url, {
      jwtSecret: undefined,
      jwtPublicKey: publicPem,
      jwtIssuer: ISSUER,
      jwtAudience: AUDIENCE,
      jwtClockTolerance: 0,
      maxTokenLength,
    });
    const base = { sub: 'mallory', projects: ['*'], iss: ISSUER, aud: AUDIENCE, iat: now(), exp: now() + 3600 };
    const valid = await rs256(signing.privateKey);
    const [h, p] = valid.split('.');
    Object.assign(attacks, {
      'alg none': { token: handmade({ alg: 'none', typ: 'JWT' }, base), code: 'token_invalid' },
      'alg none with a signature': { token: `${handmade({ alg: 'none' }, base)}${valid.split('.')[2]}`, code: 'token_invalid' },
      'HS256 signed with the RSA public key (key confusion)': {
        token: handmade({ alg: 'HS256', typ: 'JWT' }, base, publicPem),
        code: 'token_invalid',
      },
      expired: { token: await rs256(signing.privateKey, { claims: { exp: now() - 60 } }), code: 'token_expired' },
      'nbf in the future': { token: await rs256(signing.privateKey, { claims: { nbf: now() + 600 } }), code: 'token_invalid' },
      'wrong issuer': { token: await rs256(signing.privateKey, { claims: { iss: 'https://evil.test' } }), code: 'token_invalid' },
      'wrong audience': { token: await rs256(signing.privateKey, { claims: { aud: 'another-service' } }), code: 'token_invalid' },
      'signed by another key': { token: await rs256(attacker.privateKey), code: 'token_invalid' },
      'payload swapped under a valid signature': {
        token: `${h}.${b64({ ...JSON.parse(Buffer.from(p, 'base64url').toString()), sub: 'admin', roles: ['admin'] })}.${valid.split('.')[2]}`,
        code: 'token_invalid',
      },
      'missing sub': { token: await rs256(signing.privateKey, { sub: null }), code: 'token_no_subject' },
      // Just over the cap, so the auth frame still fits the socket's limit (maxTokenLength + 1 KiB).
      'over maxTokenLength': {
        token: await rs256(signing.privateKey, { claims: { pad: 'x'.repeat(Math.floor(maxTokenLength * 0.7)) } }),
        code: 'token_too_large',
      },
      'kid injection with HS256 and an empty key': {
        token: handmade({ alg: 'HS256', kid: '../../../../../../dev/null' }, base, ''),
        code: 'token_invalid',
      },
      'embedded jwk header with the attacker key': {
        token: await rs256(attacker.privateKey, { header: { jwk: await exportJWK(attacker.publicKey) } }),
        code: 'token_invalid',
      },
    });
  });
  afterAll(() => side?.stop());

  it('accepts a valid RS256 token at the handshake and by first message (a frame over maxMessageSize)', async () => {
    const token = await rs256(signing.privateKey, { sub: 'rsa-user' });
    expect(JSON.stringify({ type: 'auth', data: { token } }).length).toBeGreaterThan(512);
    const c = await connectClient(`${side.wsUrl}?token=${token}`);
    expect((await c.waitForMessage()).data.user_id).toBe('rsa-user');
    expect(await firstMessageSuccess(side.wsUrl, token)).toBe('rsa-user');
  });

  it('still closes 1009 on a non-auth frame over maxMessageSize', async () => {
    const c = await connectClient(`${side.wsUrl}?token=${await rs256(signing.privateKey)}`);
    await c.waitForMessage((m) => m.type === 'auth_success');
    c.send({ type: 'ping', data: { pad: 'x'.repeat(1000) } });
    expect((await c.waitForClose()).code).toBe(1009);
  });

  const names = [
    'alg none',
    'alg none with a signature',
    'HS256 signed with the RSA public key (key confusion)',
    'expired',
    'nbf in the future',
    'wrong issuer',
    'wrong audience',
    'signed by another key',
    'payload swapped under a valid signature',
    'missing sub',
    'over maxTokenLength',
    'kid injection with HS256 and an empty key',
    'embedded jwk header with the attacker key',
  ];
  it('builds the oversized token just over the cap', () => {
    const { token } = attacks['over maxTokenLength'];
    expect(token.length).toBeGreaterThan(maxTokenLength);
    expect(token.length).toBeLessThan(maxTokenLength + 900);
  });

  it.each(names)('refuses a token with %s: 401 at the handshake, auth_failed + 4401 by first message', async (name) => {
    const { token, code } = attacks[name];
    expect(await handshakeStatus(side.wsUrl, token)).toBe(401);
    expect(await firstMessageRefusal(side.wsUrl, token)).toEqual({ code, close: 4401 });
  });

  it('refuses the same attacks as a token refresh, keeping the connection on its valid token', async () => {
    const c = await connectClient(`${side.wsUrl}?token=${await rs256(signing.privateKey, { sub: 'mallory' })}`);
    await c.waitForMessage((m) => m.type === 'auth_success');
    for (const name of ['alg none', 'HS256 signed with the RSA public key (key confusion)', 'payload swapped under a valid signature']) {
      c.send({ type: 'auth', data: { token: attacks[name].token } });
      expect((await c.waitForMessage()).type).toBe('auth_failed');
    }
    c.send({ type: 'ping' });
    expect((await c.waitForMessage()).type).toBe('pong');
    const conn = [...side.sidecar.hub.connectionsOf('mallory')][0];
    expect(conn.principal?.roles).toEqual([]);
  });
});

describe('with JWT_SECRET', () => {
  const secret = 'integration-secret-long-enough-for-hs512-0123456789-abcdefghijklmnop';
  const key = new TextEncoder().encode(secret);
  const hs = (alg: string, sub: string, expiresIn = 3600) =>
    new SignJWT({ projects: ['*'] }).setProtectedHeader({ alg }).setSubject(sub).setExpirationTime(now() + expiresIn).sign(key);

  it('honours an explicit JWT_ALGORITHMS allow-list on both paths', async () => {
    const s = await startTestSidecar(nats.url, { jwtSecret: secret, jwtAlgorithms: 'HS512' });
    try {
      const good = await connectClient(`${s.wsUrl}?token=${await hs('HS512', 'u1')}`);
      expect((await good.waitForMessage()).type).toBe('auth_success');
      const hs256 = await hs('HS256', 'u1');
      expect(await handshakeStatus(s.wsUrl, hs256)).toBe(401);
      expect(await firstMessageRefusal(s.wsUrl, hs256)).toEqual({ code: 'token_invalid', close: 4401 });
    } finally {
      await s.stop();
    }
  });

  it('sends token_expired then closes 4401 when a token expires without refresh; a refresh moves the expiry', async () => {
    const s = await startTestSidecar(nats.url, { jwtSecret: secret, jwtClockTolerance: 0 });
    try {
      const expiring = await connectClient(`${s.wsUrl}?token=${await hs('HS256', 'shortlived', 2)}`);
      await expiring.waitForMessage((m) => m.type === 'auth_success');
      const refreshed = await connectClient(`${s.wsUrl}?token=${await hs('HS256', 'refresher', 2)}`);
      await refreshed.waitForMessage((m) => m.type === 'auth_success');
      refreshed.send({ type: 'auth', data: { token: await hs('HS256', 'refresher', 3600) } });
      await refreshed.waitForMessage((m) => m.type === 'auth_success');
      const conn = [...s.sidecar.hub.connectionsOf('refresher')][0];
      expect(conn.principal!.expiresAt!).toBeGreaterThan(Date.now() + 3_000_000);

      const err = await expiring.waitForMessage((m) => m.type === 'error', 8000);
      expect(err.data.code).toBe('token_expired');
      expect((await expiring.waitForClose()).code).toBe(4401);
      refreshed.send({ type: 'ping' });
      expect((await refreshed.waitForMessage((m) => m.type === 'pong')).type).toBe('pong');
    } finally {
      await s.stop();
    }
  });
});

/** A JWKS endpoint on a local Koa app, with keys that can be swapped and a request counter. */
async function jwksServer(): Promise<{ url: string; keys: JWK[]; requests: number; close(): Promise<void> }> {
  const state = { keys: [] as JWK[], requests: 0 };
  const app = new Koa();
  app.use((ctx) => {
    state.requests += 1;
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { keys: state.keys };
  });
  const server: Server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
  return Object.assign(state, {
    url,
    close: () => new Promise<void>((ok) => server.close(() => ok())),
  });
}

async function jwkOf(publicKey: KeyObject, kid: string): Promise<JWK> {
  return { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' };
}

describe('with a JWKS URL', () => {
  const keyA = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keyB = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const evil = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const sign = (key: KeyObject, kid: string, sub: string, header: Record<string, unknown> = {}) =>
    rs256(key, { sub, header: { kid, ...header } });
  let jwks: Awaited<ReturnType<typeof jwksServer>>;
  let attackerJwks: Awaited<ReturnType<typeof jwksServer>>;

  beforeAll(async () => {
    jwks = await jwksServer();
    attackerJwks = await jwksServer();
    attackerJwks.keys = [await jwkOf(evil.publicKey, 'a')];
  });
  afterAll(async () => {
    await jwks?.close();
    await attackerJwks?.close();
  });

  const sidecar = (overrides: Record<string, unknown> = {}) =>
    startTestSidecar(nats.url, {
      jwtSecret: undefined,
      jwtJwksUrl: jwks.url,
      jwtIssuer: ISSUER,
      jwtAudience: AUDIENCE,
      ...overrides,
    });

  it('follows a key rotation: a new kid is fetched, a removed key is refused', async () => {
    jwks.keys = [await jwkOf(keyA.publicKey, 'a')];
    const s = await sidecar({ jwksCooldown: 0 });
    try {
      const first = await connectClient(`${s.wsUrl}?token=${await sign(keyA.privateKey, 'a', 'u-a')}`);
      expect((await first.waitForMessage()).data.user_id).toBe('u-a');
      jwks.keys = [await jwkOf(keyB.publicKey, 'b')]; // rotate: A is withdrawn
      const before = jwks.requests;
      const second = await connectClient(`${s.wsUrl}?token=${await sign(keyB.privateKey, 'b', 'u-b')}`);
      expect((await second.waitForMessage()).data.user_id).toBe('u-b');
      expect(jwks.requests).toBeGreaterThan(before);
      expect(await firstMessageSuccess(s.wsUrl, await sign(keyB.privateKey, 'b', 'u-b2'))).toBe('u-b2');
      const withdrawn = await sign(keyA.privateKey, 'a', 'u-a');
      expect(await handshakeStatus(s.wsUrl, withdrawn)).toBe(401);
      expect(await firstMessageRefusal(s.wsUrl, withdrawn)).toEqual({ code: 'token_invalid', close: 4401 });
    } finally {
      await s.stop();
    }
  });

  it('does not let injected kids hammer the key server: one fetch per cooldown', async () => {
    jwks.keys = [await jwkOf(keyA.publicKey, 'a')];
    const s = await sidecar(); // default cooldown (30 s)
    try {
      const before = jwks.requests;
      const c = await connectClient(`${s.wsUrl}?token=${await sign(keyA.privateKey, 'a', 'u-a')}`);
      await c.waitForMessage((m) => m.type === 'auth_success');
      expect(jwks.requests - before).toBe(1);
      const kids = ['../../../../etc/passwd', "x' OR '1'='1", randomUUID(), 'a\u0000b', 'b'];
      for (const kid of kids) {
        const token = await sign(evil.privateKey, kid, 'mallory');
        expect(await handshakeStatus(s.wsUrl, token)).toBe(401);
        expect(await firstMessageRefusal(s.wsUrl, token)).toEqual({ code: 'token_invalid', close: 4401 });
      }
      expect(jwks.requests - before).toBe(1);
    } finally {
      await s.stop();
    }
  });

  it('ignores jku and jwk headers that point at an attacker key, and never fetches from them', async () => {
    jwks.keys = [await jwkOf(keyA.publicKey, 'a')];
    const s = await sidecar({ jwksCooldown: 0 });
    try {
      const token = await sign(evil.privateKey, 'a', 'mallory', {
        jku: attackerJwks.url,
        x5u: attackerJwks.url,
        jwk: await exportJWK(evil.publicKey),
      });
      expect(await handshakeStatus(s.wsUrl, token)).toBe(401);
      expect(await firstMessageRefusal(s.wsUrl, token)).toEqual({ code: 'token_invalid', close: 4401 });
      expect(attackerJwks.requests).toBe(0);
    } finally {
      await s.stop();
    }
  });

  it('refuses an HS256 token signed with a JWKS public key as the secret', async () => {
    jwks.keys = [await jwkOf(keyA.publicKey, 'a')];
    const s = await sidecar({ jwksCooldown: 0 });
    try {
      const pem = keyA.publicKey.export({ type: 'spki', format: 'pem' }) as string;
      const token = handmade({ alg: 'HS256', kid: 'a' }, { sub: 'mallory', iss: ISSUER, aud: AUDIENCE, exp: now() + 600 }, pem);
      expect(await handshakeStatus(s.wsUrl, token)).toBe(401);
      expect(await firstMessageRefusal(s.wsUrl, token)).toEqual({ code: 'token_invalid', close: 4401 });
    } finally {
      await s.stop();
    }
  });

  it('keeps verifying with the cached keys while the key server is down', async () => {
    jwks.keys = [await jwkOf(keyA.publicKey, 'a')];
    const s = await sidecar({ jwksCooldown: 0 });
    const down = await jwksServer();
    await down.close();
    try {
      const c = await connectClient(`${s.wsUrl}?token=${await sign(keyA.privateKey, 'a', 'u-1')}`);
      await c.waitForMessage((m) => m.type === 'auth_success');
      jwks.keys = []; // the server now answers with nothing useful; the cache still holds A
      const again = await connectClient(`${s.wsUrl}?token=${await sign(keyA.privateKey, 'a', 'u-2')}`);
      expect((await again.waitForMessage()).type).toBe('auth_success');
      const unreachable = await startTestSidecar(nats.url, { jwtSecret: undefined, jwtJwksUrl: down.url });
      try {
        expect(await handshakeStatus(unreachable.wsUrl, await sign(keyA.privateKey, 'a', 'u-3'))).toBe(401);
      } finally {
        await unreachable.stop();
      }
    } finally {
      await s.stop();
    }
  });
});
