/**
 * Token verification with jose, and the mapping from JWT claims to the principal the rest of the
 * sidecar works with. Nothing else imports jose.
 */
import { createHmac, createPublicKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import {
  createRemoteJWKSet,
  UnsecuredJWT,
  errors as joseErrors,
  jwtVerify,
  SignJWT,
  type JWTPayload,
  type JWTVerifyGetKey,
} from 'jose';
import type { Config } from './config.js';
import { AuthError, AuthErrorCode } from './errors.js';
import { TOKEN_PATTERN, TOKEN_SYNTAX } from './protocol-codes.js';

export interface Principal {
  /** `sub` */
  readonly userId: string;
  readonly roles: readonly string[];
  /** Project ids this user may subscribe to; `'*'` means any. */
  readonly projects: readonly string[] | '*';
  /** Expiry, ms since epoch; undefined when the token has no `exp`. */
  readonly expiresAt: number | undefined;
  /**
   * Every verified claim, for backends that decide access themselves: kept only with `request`
   * project authorization (a connection holds its principal for its lifetime).
   */
  readonly claims?: Readonly<Record<string, unknown>>;
}

export interface TokenVerifier {
  verify(token: string): Promise<Principal>;
}

export function isAdmin(p: Principal): boolean {
  return p.roles.includes('admin');
}

export function mayAccessProject(p: Principal, projectId: string): boolean {
  return p.projects === '*' || p.projects.includes(projectId) || p.projects.includes('*');
}

const HMAC = ['HS256', 'HS384', 'HS512'];
const RSA = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];

/** The algorithms a key can honestly verify; naming them explicitly is what stops HS/RS confusion. */
function algorithmsForKey(key: KeyObject): string[] {
  switch (key.asymmetricKeyType) {
    case 'rsa':
    case 'rsa-pss':
      return RSA;
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      return curve === 'secp384r1' ? ['ES384'] : curve === 'secp521r1' ? ['ES512'] : ['ES256'];
    }
    case 'ed25519':
    case 'ed448':
      return ['EdDSA'];
    default:
      return [];
  }
}

const NONE: readonly string[] = Object.freeze([]);

/** `graceMs`: the clock tolerance, so a token accepted within it is not closed as expired at once. */
function toPrincipal(payload: JWTPayload, graceMs: number, keepClaims: boolean): Principal {
  const sub = payload.sub;
  if (typeof sub !== 'string' || sub.length === 0) throw new AuthError(AuthErrorCode.NoSubject, 'token has no "sub"');
  if (!TOKEN_PATTERN.test(sub)) {
    throw new AuthError(AuthErrorCode.Invalid, `"sub" must match ${TOKEN_SYNTAX}`);
  }
  const strings = (v: unknown) => (Array.isArray(v) && v.length > 0 ? v.filter((x): x is string => typeof x === 'string') : NONE);
  const projects = strings(payload.projects);
  return {
    userId: sub,
    roles: strings(payload.roles),
    projects: projects.includes('*') ? '*' : projects,
    expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 + graceMs : undefined,
    claims: keepClaims ? payload : undefined,
  };
}

const HMAC_HASH: Readonly<Record<string, string>> = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' };
const BASE64URL = /^[A-Za-z0-9_-]+$/;
/** `{"alg":"none"}`: the header under which jose's own claim checks run on an HMAC-verified payload. */
const NONE_HEADER = Buffer.from('{"alg":"none"}').toString('base64url');

/**
 * The HS256/384/512 fast path: the signature checked synchronously with node:crypto (~8 µs)
 * instead of WebCrypto through jose (~65 µs and a thread-pool round trip; ~8% of the CPU of a
 * connect storm, BENCHMARKS.md). Only the signature is checked here, and only for a plain compact
 * JWS (three base64url parts; a header that is a JSON object with an allowed HMAC `alg` and no
 * `crit` or `b64`). The claims then go through jose's own validation (`UnsecuredJWT.decode` runs
 * the same `validateClaimsSet` as `jwtVerify`). Returns undefined for anything else, a wrong
 * signature included, so jose decides every refusal and its error codes stay exactly as before.
 */
function verifyHmacFast(
  token: string,
  secret: Uint8Array,
  algorithms: readonly string[],
  options: { issuer?: string | string[]; audience?: string | string[]; clockTolerance: number },
): JWTPayload | undefined {
  const first = token.indexOf('.');
  const last = token.lastIndexOf('.');
  if (first <= 0 || last === first || last === token.length - 1) return undefined;
  const encodedHeader = token.slice(0, first);
  const encodedPayload = token.slice(first + 1, last);
  const signature = token.slice(last + 1);
  if (!BASE64URL.test(encodedHeader) || !BASE64URL.test(encodedPayload) || !BASE64URL.test(signature)) return undefined;
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(encodedHeader, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) return undefined;
  const h = header as Record<string, unknown>;
  if (h.crit !== undefined || h.b64 !== undefined || typeof h.alg !== 'string') return undefined;
  const hash = HMAC_HASH[h.alg];
  if (hash === undefined || !algorithms.includes(h.alg)) return undefined;
  // Compared as canonical base64url text, in constant time.
  const expected = Buffer.from(createHmac(hash, secret).update(token.slice(0, last)).digest('base64url'));
  const given = Buffer.from(signature);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return undefined;
  return UnsecuredJWT.decode(`${NONE_HEADER}.${encodedPayload}.`, options).payload;
}

type VerifyConfig = Pick<
  Config,
  | 'jwtSecret'
  | 'jwtPublicKey'
  | 'jwtJwksUrl'
  | 'jwtIssuer'
  | 'jwtAudience'
  | 'jwtAlgorithms'
  | 'jwtClockTolerance'
  | 'maxTokenLength'
  | 'jwksCooldown'
  | 'jwksCacheMaxAge'
> &
  Partial<Pick<Config, 'projectAuthorization'>>;

export function createTokenVerifier(config: VerifyConfig): TokenVerifier {
  let key: Uint8Array | KeyObject | JWTVerifyGetKey;
  let algorithms: string[];
  if (config.jwtSecret) {
    key = new TextEncoder().encode(config.jwtSecret);
    algorithms = HMAC;
  } else if (config.jwtPublicKey) {
    const publicKey = createPublicKey(config.jwtPublicKey);
    key = publicKey;
    algorithms = algorithmsForKey(publicKey);
  } else if (config.jwtJwksUrl) {
    // jose caches the set; an unknown `kid` refetches it at most once per cooldown, so forged kids
    // cannot turn into a flood of requests to the key server.
    key = createRemoteJWKSet(new URL(config.jwtJwksUrl), {
      cooldownDuration: config.jwksCooldown,
      cacheMaxAge: config.jwksCacheMaxAge,
    });
    algorithms = [...RSA, 'ES256', 'ES384', 'ES512', 'EdDSA'];
  } else {
    throw new AuthError(AuthErrorCode.NotConfigured, 'no JWT key configured');
  }
  if (config.jwtAlgorithms?.length) {
    // An explicit list narrows what the key allows; it can never widen it (no "none", no HS with a public key).
    const allowed = new Set(algorithms);
    algorithms = config.jwtAlgorithms.filter((a) => allowed.has(a));
    if (algorithms.length === 0) {
      throw new AuthError(AuthErrorCode.NotConfigured, 'JWT_ALGORITHMS has no algorithm usable with the configured key');
    }
  }
  const options = {
    algorithms,
    issuer: config.jwtIssuer,
    audience: config.jwtAudience,
    clockTolerance: Math.round(config.jwtClockTolerance / 1000),
  };
  const graceMs = options.clockTolerance * 1000;
  const keepClaims = config.projectAuthorization === 'request';

  return {
    async verify(token: string): Promise<Principal> {
      if (!token) throw new AuthError(AuthErrorCode.Missing, 'no token');
      if (token.length > config.maxTokenLength) throw new AuthError(AuthErrorCode.TooLarge, 'token too large');
      try {
        const fast = key instanceof Uint8Array ? verifyHmacFast(token, key, algorithms, options) : undefined;
        if (fast) return toPrincipal(fast, graceMs, keepClaims);
        const { payload } =
          typeof key === 'function' ? await jwtVerify(token, key, options) : await jwtVerify(token, key, options);
        return toPrincipal(payload, graceMs, keepClaims);
      } catch (err) {
        if (err instanceof AuthError) throw err;
        if (err instanceof joseErrors.JWTExpired) throw new AuthError(AuthErrorCode.Expired, 'token expired');
        // Do not echo jose's detail to clients beyond a short reason: it can help an attacker probe.
        const reason = err instanceof joseErrors.JOSEError ? err.code : 'verification failed';
        throw new AuthError(AuthErrorCode.Invalid, `invalid token (${reason})`, { cause: err });
      }
    },
  };
}

export interface MintOptions {
  sub: string;
  projects?: string[];
  roles?: string[];
  /** Seconds; default 24 h. */
  expiresIn?: number;
  issuer?: string;
  audience?: string;
}

/** Sign an HS256 token: dev tokens and `npm run token`. */
export async function mintToken(secret: string, o: MintOptions): Promise<string> {
  const jwt = new SignJWT({ projects: o.projects ?? [], roles: o.roles ?? [] })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(o.sub)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + (o.expiresIn ?? 86_400));
  if (o.issuer) jwt.setIssuer(o.issuer);
  if (o.audience) jwt.setAudience(o.audience);
  return jwt.sign(new TextEncoder().encode(secret));
}
