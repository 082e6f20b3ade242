/**
 * The JWT attack matrix, counted: for each kind of key the sidecar accepts (HMAC secret, RSA, EC
 * and Ed25519 public keys, a JWKS), every forged or unacceptable token is presented in every
 * position a token can take (query, Authorization header, first message, refresh of a live
 * connection) and must be refused there; a valid token must be accepted in each (so the matrix is
 * not refusing everything). Then random one-character mutations of valid tokens, all refused.
 */
import { createServer, type Server } from 'node:http';
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { exportJWK, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { b64, handmade, signRaw } from '../helpers/jwt-forge.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient, UpgradeRejectedError, type TestClient } from '../helpers/ws-client.js';
import { prng } from './helpers/fuzz.js';
import { report } from './helpers/report.js';
import { size } from './helpers/sizes.js';

const MUTATIONS = size(100, 2000);
const ISSUER = 'https://issuer.test';
const AUDIENCE = 'nats-ws-sidecar';
const MAX_TOKEN_LENGTH = 4096;
const SECRET = 'matrix-secret-long-enough-for-hs512-0123456789-abcdefghijklmnopqrstuv';
const now = () => Math.floor(Date.now() / 1000);

interface Setup {
  name: string;
  alg: string;
  /** Signs with the configured key (a valid signature). */
  key: KeyObject | string;
  config: Record<string, unknown>;
  publicPem?: string;
  publicJwk?: JWK;
  kid?: string;
}

let nats: TestNats;
let jwks: Server;
let jwksUrl: string;
const served: { keys: JWK[] } = { keys: [] };
const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 });

beforeAll(async () => {
  nats = await startTestNats();
  jwks = createServer((_req, res) => {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify(served));
  });
  await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', () => r()));
  jwksUrl = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`;
});
afterAll(async () => {
  await closeAllClients();
  await new Promise((r) => jwks?.close(r));
  await nats?.cleanup();
});

async function setups(): Promise<Setup[]> {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const ed = generateKeyPairSync('ed25519');
  const jwk = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = (k: KeyObject) => k.export({ type: 'spki', format: 'pem' }) as string;
  const claims = { jwtSecret: undefined, jwtIssuer: ISSUER, jwtAudience: AUDIENCE };
  served.keys = [{ ...(await exportJWK(jwk.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' }];
  return [
    { name: 'HS256 secret', alg: 'HS256', key: SECRET, config: { ...claims, jwtSecret: SECRET } },
    { name: 'RSA public key', alg: 'RS256', key: rsa.privateKey, config: { ...claims, jwtPublicKey: pem(rsa.publicKey) }, publicPem: pem(rsa.publicKey), publicJwk: await exportJWK(rsa.publicKey) },
    { name: 'EC P-256 public key', alg: 'ES256', key: ec.privateKey, config: { ...claims, jwtPublicKey: pem(ec.publicKey) }, publicPem: pem(ec.publicKey), publicJwk: await exportJWK(ec.publicKey) },
    { name: 'Ed25519 public key', alg: 'EdDSA', key: ed.privateKey, config: { ...claims, jwtPublicKey: pem(ed.publicKey) }, publicPem: pem(ed.publicKey), publicJwk: await exportJWK(ed.publicKey) },
    { name: 'JWKS (RSA)', alg: 'RS256', key: jwk.privateKey, kid: 'k1', config: { ...claims, jwtJwksUrl: jwksUrl, jwksCooldown: 0 }, publicPem: pem(jwk.publicKey), publicJwk: served.keys[0] },
  ];
}

/** Every attack on one setup: name -> token. All must be refused. */
function attacks(s: Setup): Record<string, string> {
  const t = now();
  const base = { sub: 'mallory', projects: ['*'], roles: ['admin'], iss: ISSUER, aud: AUDIENCE, iat: t, exp: t + 600 };
  const head = s.kid ? { kid: s.kid, typ: 'JWT' } : { typ: 'JWT' };
  const good = (payload: Record<string, unknown> | string = base, header: Record<string, unknown> = head) => signRaw(s.alg, s.key, header, payload);
  const valid = good();
  const [h, p, sig] = valid.split('.');
  const flip = (segment: string, at: number) => {
    const bytes = Buffer.from(segment, 'base64url');
    bytes[at < 0 ? bytes.length + at : at] ^= 0x01;
    return bytes.toString('base64url');
  };
  const out: Record<string, string> = {
    'alg none': handmade({ alg: 'none', typ: 'JWT' }, base),
    'alg None': handmade({ alg: 'None' }, base),
    'alg NONE with the valid signature': `${b64({ alg: 'NONE' })}.${p}.${sig}`,
    'no alg': `${b64({ typ: 'JWT' })}.${p}.${sig}`,
    'alg swapped in the header': `${b64({ ...head, alg: s.alg === 'HS256' ? 'HS512' : 'RS512' })}.${p}.${sig}`,
    'expired (past the clock tolerance)': good({ ...base, exp: t - 60 }),
    'nbf in the future': good({ ...base, nbf: t + 600 }),
    'wrong issuer': good({ ...base, iss: 'https://evil.test' }),
    'no issuer': good({ ...base, iss: undefined }),
    'wrong audience': good({ ...base, aud: 'another-service' }),
    'no audience': good({ ...base, aud: undefined }),
    'exp as a string': good({ ...base, exp: String(t + 600) }),
    'no sub': good({ ...base, sub: undefined }),
    'sub not an id': good({ ...base, sub: 'a.b' }),
    'sub not a string': good({ ...base, sub: 42 }),
    'empty sub': good({ ...base, sub: '' }),
    'signature: first bit flipped': `${h}.${p}.${flip(sig, 0)}`,
    'signature: last bit flipped': `${h}.${p}.${flip(sig, -1)}`,
    'signature: empty': `${h}.${p}.`,
    'signature: truncated': `${h}.${p}.${sig.slice(0, -4)}`,
    'signature: another key': s.alg === 'HS256' ? signRaw('HS256', 'another-secret', head, base) : signRaw('RS256', attacker.privateKey, head, base),
    'payload swapped under a valid signature': `${h}.${b64({ ...base, sub: 'admin' })}.${sig}`,
    'payload: a different exp under a valid signature': `${h}.${b64({ ...base, exp: t + 999_999 })}.${sig}`,
    'unknown crit extension (validly signed)': good(base, { ...head, crit: ['x-evil'], 'x-evil': 1 }),
    'b64 false (unencoded payload, validly signed)': good(base, { ...head, b64: false, crit: ['b64'] }),
    'kid path traversal': signRaw('HS256', '', { kid: '../../../../dev/null' }, base),
    'kid SQL-like': signRaw('RS256', attacker.privateKey, { kid: "x' OR '1'='1" }, base),
    'kid with NUL': signRaw('RS256', attacker.privateKey, { kid: 'k1\u0000' }, base),
    'embedded jwk (attacker key)': signRaw('RS256', attacker.privateKey, { ...head, jwk: attacker.publicKey.export({ format: 'jwk' }) }, base),
    'jku to an attacker set': signRaw('RS256', attacker.privateKey, { ...head, jku: 'http://127.0.0.1:1/jwks.json' }, base),
    'x5u to an attacker certificate': signRaw('RS256', attacker.privateKey, { ...head, x5u: 'http://127.0.0.1:1/cert.pem' }, base),
    'RS256 by an attacker key with the right kid': signRaw('RS256', attacker.privateKey, head, base),
    'over maxTokenLength (validly signed)': good({ ...base, pad: 'x'.repeat(MAX_TOKEN_LENGTH) }),
    'two parts': `${h}.${p}`,
    'four parts': `${valid}.${sig}`,
    'five parts (JWE-shaped)': `${h}.${p}.${p}.${p}.${sig}`,
    'not base64url': `${h}.${p}.${sig.slice(0, -3)}!!!`,
    'header not JSON': `${b64('nope')}.${p}.${sig}`,
    'header a JSON array': `${b64([s.alg])}.${p}.${sig}`,
    'payload not JSON (validly signed)': good('not json'),
    'payload a JSON array (validly signed)': good(JSON.stringify([base])),
    'alg with a NUL suffix': `${b64({ alg: `${s.alg}\u0000` })}.${p}.${sig}`,
  };
  if (s.publicPem) {
    // Key confusion: the public key as an HMAC secret, in every form an attacker might try.
    out['HS256 keyed with the public PEM'] = handmade({ alg: 'HS256', ...head }, base, s.publicPem);
    out['HS512 keyed with the public PEM'] = signRaw('HS512', s.publicPem, head, base);
    out['HS256 keyed with the PEM without its last newline'] = handmade({ alg: 'HS256' }, base, s.publicPem.trimEnd());
    out['HS256 keyed with the public JWK'] = handmade({ alg: 'HS256', ...head }, base, JSON.stringify(s.publicJwk));
  } else {
    out['RS256 where an HMAC secret is configured'] = signRaw('RS256', attacker.privateKey, head, base);
    out['HS256 keyed with an empty secret'] = handmade({ alg: 'HS256' }, base, '');
  }
  return out;
}

type Position = 'query' | 'header' | 'first message' | 'refresh';
const POSITIONS: Position[] = ['query', 'header', 'first message', 'refresh'];

interface Live {
  c: TestClient;
  reopen(): Promise<void>;
}

/** The next answer to an auth message, or the close that came instead. */
async function answerOrClose(c: TestClient): Promise<{ type?: string; close?: number }> {
  const closed = c.waitForClose(5000).then((x) => ({ close: x.code }));
  const answer = c.waitForMessage((m) => m.type === 'auth_success' || m.type === 'auth_failed' || m.type === 'error', 5000).then((m) => ({ type: m.type as string }));
  const first = await Promise.race([answer, closed]);
  answer.catch(() => undefined);
  closed.catch(() => undefined);
  return first;
}

/** 'refused' or what let the token through. */
async function present(side: TestSidecar, token: string, where: Position, live: Live): Promise<'refused' | 'accepted' | string> {
  if (where === 'query' || where === 'header') {
    const url = where === 'query' ? `${side.wsUrl}?token=${encodeURIComponent(token)}` : side.wsUrl;
    const headers = where === 'header' ? { Authorization: `Bearer ${token}` } : undefined;
    try {
      const c = await connectClient(url, { headers });
      const first = await c.waitForMessage();
      c.close();
      return first.type === 'auth_success' ? 'accepted' : `upgrade, then ${first.type}`;
    } catch (err) {
      return err instanceof UpgradeRejectedError && err.status === 401 ? 'refused' : `error ${(err as Error).message}`;
    }
  }
  // An auth frame over the socket's limit (maxTokenLength + 1 KiB) is refused unread: close 1009.
  const tooBig = Buffer.byteLength(JSON.stringify({ type: 'auth', data: { token } })) > MAX_TOKEN_LENGTH + 1024;
  if (where === 'first message') {
    const c = await connectClient(side.wsUrl);
    await c.waitForMessage((m) => m.type === 'auth_required');
    c.send({ type: 'auth', data: { token } });
    const answer = await answerOrClose(c);
    if (answer.type === 'auth_success') return 'accepted';
    const close = answer.close ?? (await c.waitForClose()).code;
    if (tooBig ? close === 1009 : answer.type === 'auth_failed' && close === 4401) return 'refused';
    return `${answer.type} then ${close}`;
  }
  live.c.send({ type: 'auth', data: { token } });
  const answer = await answerOrClose(live.c);
  if (answer.type === 'auth_success') return 'accepted';
  if (tooBig && answer.close === 1009) {
    await live.reopen();
    return 'refused';
  }
  if (answer.type !== 'auth_failed') return `${answer.type ?? `close ${answer.close}`}`;
  return live.c.ws.readyState === live.c.ws.OPEN ? 'refused' : 'refused, but the connection closed';
}

describe('JWT attack matrix', () => {
  it('refuses every forged or unacceptable token in every position, for every kind of key', async () => {
    const perSetup: Record<string, { checks: number; refused: number }> = {};
    const perPosition: Record<string, { checks: number; refused: number }> = {};
    const through: string[] = [];
    let controlsAccepted = 0;
    for (const s of await setups()) {
      const side = await startTestSidecar(nats.url, { ...s.config, maxTokenLength: MAX_TOKEN_LENGTH, jwtClockTolerance: '5s', maxErrors: 1_000_000, requestsPerSecond: 1_000_000, burstSize: 1_000_000 });
      try {
        const validToken = signRaw(s.alg, s.key, s.kid ? { kid: s.kid, typ: 'JWT' } : { typ: 'JWT' }, { sub: 'mallory', projects: ['*'], iss: ISSUER, aud: AUDIENCE, exp: now() + 600 });
        const live: Live = {
          c: undefined as unknown as TestClient,
          async reopen() {
            live.c = await connectClient(`${side.wsUrl}?token=${validToken}`);
            await live.c.waitForMessage((m) => m.type === 'auth_success');
          },
        };
        await live.reopen();
        for (const where of POSITIONS) {
          // The control: the valid token gets through in this position.
          expect(await present(side, validToken, where, live), `${s.name}: valid token by ${where}`).toBe('accepted');
          controlsAccepted += 1;
        }
        for (const [name, token] of Object.entries(attacks(s))) {
          for (const where of POSITIONS) {
            const got = await present(side, token, where, live);
            const refused = got === 'refused';
            for (const [bucket, key] of [[perSetup, s.name], [perPosition, where]] as const) {
              bucket[key] ??= { checks: 0, refused: 0 };
              bucket[key].checks += 1;
              if (refused) bucket[key].refused += 1;
            }
            if (!refused) through.push(`${s.name} / ${name} / ${where}: ${got}`);
          }
        }
        // The live connection kept its valid token through every failed refresh.
        live.c.send({ type: 'ping' });
        expect((await live.c.waitForMessage((m) => m.type === 'pong')).type).toBe('pong');
      } finally {
        await closeAllClients();
        await side.stop();
      }
    }
    const checks = Object.values(perSetup).reduce((n, x) => n + x.checks, 0);
    const refused = Object.values(perSetup).reduce((n, x) => n + x.refused, 0);
    report('jwt-matrix', { checks, refused, refused_pct: (100 * refused) / checks, controls_accepted: controlsAccepted, by_key: perSetup, by_position: perPosition, let_through: through });
    expect(through).toEqual([]);
    expect(refused).toBe(checks);
  }, 180_000);

  it(`refuses ${MUTATIONS} random one-character mutations of valid tokens (HS256 and RS256)`, async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const cases = [
      { alg: 'HS256', key: SECRET as KeyObject | string, config: { jwtSecret: SECRET } },
      { alg: 'RS256', key: rsa.privateKey, config: { jwtSecret: undefined, jwtPublicKey: rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string } },
    ];
    const rand = prng(Number(process.env.FUZZ_SEED ?? 7));
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.';
    let tried = 0;
    let equivalent = 0;
    const through: string[] = [];
    for (const c of cases) {
      const side = await startTestSidecar(nats.url, c.config);
      try {
        const valid = signRaw(c.alg, c.key, { typ: 'JWT' }, { sub: 'mutant', exp: now() + 600, n: randomBytes(4).toString('hex') });
        const decoded = (tok: string) => tok.split('.').map((x) => Buffer.from(x, 'base64url').toString('hex')).join('.');
        for (let i = 0; i < MUTATIONS / cases.length; i++) {
          const at = Math.floor(rand() * valid.length);
          const ch = alphabet[Math.floor(rand() * alphabet.length)];
          const token = valid.slice(0, at) + ch + valid.slice(at + 1);
          if (token === valid) continue;
          // A change in the unused low bits of a segment's last character decodes to the same bytes:
          // the same token in another spelling, not a forgery.
          if (decoded(token) === decoded(valid) && token.split('.').length === 3) {
            equivalent += 1;
            continue;
          }
          tried += 1;
          try {
            const ws = await connectClient(`${side.wsUrl}?token=${encodeURIComponent(token)}`);
            through.push(`${c.alg} at ${at}: ${token}`);
            ws.close();
          } catch (err) {
            if (!(err instanceof UpgradeRejectedError && err.status === 401)) through.push(`${c.alg} at ${at}: ${(err as Error).message}`);
          }
        }
      } finally {
        await closeAllClients();
        await side.stop();
      }
    }
    report('jwt-mutations', { mutations: tried, refused: tried - through.length, same_bytes_other_spelling: equivalent, let_through: through });
    expect(through).toEqual([]);
  }, 180_000);
});
