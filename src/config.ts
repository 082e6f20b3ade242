/**
 * The one place that knows configuration: the defaults (config/default.json, the Go package's where it has one), an optional file,
 * then environment variables (highest precedence; an empty value counts as unset). Everything is
 * validated here so the rest of the code can trust `Config` without re-checking.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ConfigError } from './errors.js';
import { TOKEN_PATTERN, TOKEN_SYNTAX } from './protocol-codes.js';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "54s", "10m", "24h", "250ms" or a plain number of milliseconds. */
export function parseDuration(value: unknown): number {
  if (typeof value === 'number') return value;
  if (typeof value !== 'string') return Number.NaN;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(value);
  if (!m) return Number.NaN;
  return Number(m[1]) * UNITS[m[2] ?? 'ms'];
}

const duration = (min = 0) =>
  z
    .union([z.number(), z.string()])
    .transform(parseDuration)
    .pipe(z.number({ error: 'must be a duration like "10s", "5m", "24h" or milliseconds' }).min(min));
const int = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number({ error: 'must be a number' }).int('must be an integer').min(min).max(max);
const positive = () => z.coerce.number({ error: 'must be a number' }).positive('must be positive');
const list = () =>
  z
    .union([z.array(z.string()), z.string()])
    .transform((v) => (Array.isArray(v) ? v : v.split(',')).map((s) => s.trim()).filter(Boolean));
const bool = () =>
  z.union([z.boolean(), z.enum(['true', 'false', '1', '0'])]).transform((v) => v === true || v === 'true' || v === '1');
const optionalString = () => z.string().min(1).optional();

/** More processes than this on one host is a typo, not a plan. */
const MAX_WORKERS = 256;
const WORKERS_ERROR = `must be "auto" or a whole number from 1 to ${MAX_WORKERS}`;

/** NATS subject tokens we accept for ids and prefixes (shared with the client SDK). */
export { TOKEN_PATTERN };

export const configSchema = z.object({
  port: int(0, 65535),
  host: z.string().min(1),
  natsUrl: list().optional(),
  subjectPrefix: z.string().regex(TOKEN_PATTERN, `must match ${TOKEN_SYNTAX}`),
  streamName: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}'),
  streamReplicas: int(1, 5),
  dataDir: z.string().min(1),
  /** Port of the embedded nats-server (used when natsUrl is unset); 0 = any free port. */
  embeddedNatsPort: int(0, 65535),
  /**
   * Processes serving the port (Node's cluster module; `auto` = one per CPU core). With more than
   * one, a primary process supervises them and each is an instance of the fleet (src/workers.ts).
   */
  workers: z
    .union([z.literal('auto'), z.coerce.number().int(WORKERS_ERROR).min(1, WORKERS_ERROR).max(MAX_WORKERS, WORKERS_ERROR)], {
      error: WORKERS_ERROR,
    })
    .transform((v) => (v === 'auto' ? availableParallelism() : v)),
  /** Stable name of this instance in logs, metrics, connection ids and API answers. */
  instanceId: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}').optional(),

  jwtSecret: optionalString(),
  jwtPublicKey: optionalString(),
  jwtJwksUrl: z.url().optional(),
  jwtIssuer: optionalString(),
  jwtAudience: optionalString(),
  jwtAlgorithms: list().optional(),
  jwtClockTolerance: duration(),
  maxTokenLength: int(64),
  /** After a JWKS fetch, unknown `kid`s wait this long before the next fetch (jose cooldownDuration). */
  jwksCooldown: duration(),
  /** A fetched JWKS is refreshed after this long (jose cacheMaxAge). */
  jwksCacheMaxAge: duration(1000),

  allowedOrigins: list().optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
  production: bool(),

  requestsPerSecond: positive(),
  burstSize: int(1),
  maxErrors: int(1),
  errorResetInterval: duration(1),
  maxStoredMessages: int(1),
  messageTTL: duration(1000),
  /**
   * When a direct message counts as delivered for the offline inbox: `explicit` only on the
   * client's `ack`; `write` once written to one of the user's sockets; `auto` like `explicit` for
   * clients that ack, and like `write` (after `inboxAckWait`) for connections that never do.
   */
  inboxAckMode: z.enum(['auto', 'explicit', 'write']),
  /** How long a connection that never acks has before its direct messages are acked on write (`auto`). */
  inboxAckWait: duration(1000),
  /**
   * KV bucket of the offline inbox: one key per user with its ack floor and the acked seqs above
   * it (nats/inbox.ts). Its TTL is messageTTL, its replicas streamReplicas.
   */
  inboxBucket: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}'),
  pingInterval: duration(10),
  pongTimeout: duration(10),
  maxMessageSize: int(64),
  authTimeout: duration(10),
  /** A connection must finish its HTTP request head (an upgrade or an API call) this soon (HTTP 408). */
  handshakeTimeout: duration(100),
  shutdownTimeout: duration(0),

  outboundMessagesPerSecond: positive(),
  outboundBurst: int(1),
  maxQueuedMessages: int(1),
  /** Characters of frames waiting in one connection's outbound queue. */
  maxQueuedBytes: int(1024),
  maxBufferedBytes: int(1024),
  /** How long a socket's buffer may stay at or over maxBufferedBytes before it is a slow consumer. */
  slowConsumerTimeout: duration(10),
  maxConnectionsPerUser: int(1),
  maxSubscriptionsPerConnection: int(1),

  /** Largest admin API request body, bytes; more is answered 413. */
  apiBodyLimit: int(64, 16 * 1024 * 1024),
  /** How long a fleet-wide admin request waits for every known instance to answer. */
  fleetTimeout: duration(50),
  /** Each instance announces itself this often; one silent for 3 beats is forgotten. */
  fleetHeartbeat: duration(100),
  /** How often the stream's existence and incarnation are checked (its loss is noticed within about this). */
  streamCheckInterval: duration(100),
  /** PING interval on the NATS link: a link that stops answering is declared stale after two missed PONGs. */
  natsPingInterval: duration(100),
  /** On shutdown, readyz answers 503 for this long before sockets are closed (load balancers move away first). */
  drainDelay: duration(0),
  /** KV bucket of who is in which project; `<presenceBucket>_INSTANCES` holds instance heartbeats. */
  presenceBucket: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}'),
  /** An instance silent this long is dead: its users leave. Heartbeats every third of it. */
  presenceTTL: duration(1000),
  /**
   * How this instance hears direct messages: `wildcard`, one NATS subscription to every user's
   * live subject (no subscription per connecting user: less memory, faster connects; every
   * instance receives every direct message and drops those for users it does not hold), or
   * `per_user`, one subscription per connected user (for fleets with heavy direct traffic).
   */
  directSubscription: z.enum(['wildcard', 'per_user']),
  /** Who may subscribe to a project: the token's `projects` claim, anyone, or a backend asked over NATS. */
  projectAuthorization: z.enum(['claims', 'open', 'request']),
  /** Subject of `request` mode; default `<subjectPrefix>.authz.project`. */
  authorizationSubject: z
    .string()
    .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, 'must be a NATS subject without wildcards')
    .optional(),
  authorizationTimeout: duration(1),
  /** How long a backend's allow/deny answer is reused; 0 asks every time. */
  authorizationCacheTTL: duration(0),
  /** Publish connected/disconnected/subscribed/unsubscribed on `<subjectPrefix>.lifecycle.*` (nats/lifecycle.ts). */
  lifecycleEvents: bool(),
  /** JetStream stream that stores the lifecycle events; created or updated at start. */
  lifecycleStream: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}'),
  lifecycleMaxAge: duration(1000),
  lifecycleMaxMessages: int(-1),
  /** -1 = no byte limit. */
  lifecycleMaxBytes: int(-1),
  /** KV bucket of every open connection per instance: what the fleet announces when an instance dies. */
  lifecycleBucket: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}'),
  /** Largest history answer, bytes of events: a page stops before the event that would pass it (`more` is then true). */
  historyMaxBytes: int(1024),
  /**
   * Envelope text the broker keeps by stream seq (its characters, a stand-in for bytes), so a
   * resume or history page sends what the live path already encoded without parsing it again; 0 = none.
   */
  eventCacheBytes: int(0),
  /** `deflate`: permessage-deflate for clients that offer it, each event compressed once for every socket. */
  compression: z.enum(['off', 'deflate']),
  /** Frames shorter than this many bytes go uncompressed (deflate gains little on them). */
  compressionThreshold: int(0),
  /** Largest batched frame (subprotocol nats-ws-sidecar.batch), bytes before compression; one bigger envelope goes alone. */
  batchFrameBytes: int(1024, 16 * 1024 * 1024),
  /** Event types clients may send (`client_event`); empty = none. */
  clientEvents: list().pipe(z.array(z.string().regex(TOKEN_PATTERN, `each type must match ${TOKEN_SYNTAX}`))),

  /** Object Store bucket of uploaded files; `<filesBucket>_UPLOADS` and `<filesBucket>_INDEX` are KV buckets beside it. */
  filesBucket: z.string().regex(/^[A-Za-z0-9_-]{1,48}$/, 'must match [A-Za-z0-9_-]{1,48}'),
  filesReplicas: int(1, 5),
  /** How long a file is kept; 0 = until deleted. */
  fileTTL: duration(0),
  /** Largest file, bytes (tus Upload-Length or request body); more is answered 413. */
  maxUploadBytes: int(1),
  /** Uploads one user may stream at once through one instance; more is answered 429. */
  maxConcurrentUploads: int(1),
  /** Media types accepted (`image/png`, `image/*`); empty = any. */
  allowedFileTypes: list(),
  /** An unfinished upload untouched this long is deleted with its stored bytes. */
  uploadExpiry: duration(1000),
});

export type Config = z.infer<typeof configSchema>;
export type ConfigInput = Partial<Record<keyof Config, unknown>>;

/** The contract's environment variables; every other key also reads SIDECAR_<UPPER_SNAKE_KEY>. */
const ENV_NAMES: Partial<Record<keyof Config, string>> = {
  port: 'PORT',
  host: 'HOST',
  natsUrl: 'NATS_URL',
  subjectPrefix: 'NATS_SUBJECT_PREFIX',
  jwtSecret: 'JWT_SECRET',
  jwtPublicKey: 'JWT_PUBLIC_KEY',
  jwtJwksUrl: 'JWT_JWKS_URL',
  jwtIssuer: 'JWT_ISSUER',
  jwtAudience: 'JWT_AUDIENCE',
  jwtAlgorithms: 'JWT_ALGORITHMS',
  allowedOrigins: 'ALLOWED_ORIGINS',
  logLevel: 'LOG_LEVEL',
};

const KEYS = Object.keys(configSchema.shape) as (keyof Config)[];

export function envNameOf(key: keyof Config): string {
  return ENV_NAMES[key] ?? `SIDECAR_${key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()}`;
}

const DEFAULT_FILE = fileURLToPath(new URL('../config/default.json', import.meta.url));

function readJsonFile(path: string): ConfigInput {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError('file', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not a JSON object');
    return parsed;
  } catch (err) {
    throw new ConfigError('file', `${path} is not a JSON object: ${(err as Error).message}`);
  }
}

function fromEnv(env: NodeJS.ProcessEnv): ConfigInput {
  const out: ConfigInput = {};
  for (const key of KEYS) {
    const value = env[envNameOf(key)];
    if (value !== undefined && value !== '') out[key] = value;
  }
  // NODE_ENV=production is the contract's switch; SIDECAR_PRODUCTION also works.
  if (out.production === undefined && env.NODE_ENV === 'production') out.production = true;
  // PEM keys in env vars often arrive with literal "\n".
  if (typeof out.jwtPublicKey === 'string') out.jwtPublicKey = out.jwtPublicKey.replace(/\\n/g, '\n');
  return out;
}

export interface LoadConfigOptions {
  /** Extra file (CLI --config or SIDECAR_CONFIG). */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Highest precedence; used by tests and library users. */
  overrides?: ConfigInput;
}

/** Merge defaults, file, env and overrides, then validate. Throws ConfigError naming the key. */
export function loadConfig(options: LoadConfigOptions = {}): Config {
  const env = options.env ?? process.env;
  const file = options.file ?? (env.SIDECAR_CONFIG || undefined);
  const merged: Record<string, unknown> = {
    ...readJsonFile(DEFAULT_FILE),
    ...(file ? readJsonFile(file) : {}),
    ...fromEnv(env),
  };
  for (const [k, v] of Object.entries(options.overrides ?? {})) if (v !== undefined) merged[k] = v;
  // Unknown keys in files are most likely typos: refuse them rather than ignore them silently.
  for (const key of Object.keys(merged)) {
    if (key !== '$comment' && !(key in configSchema.shape)) throw new ConfigError(key, 'unknown key');
  }
  for (const key of KEYS) if (merged[key] === null || merged[key] === '') delete merged[key];
  delete merged.$comment;

  const result = configSchema.safeParse(merged);
  if (!result.success) {
    const issue = result.error.issues[0];
    const key = issue.path.join('.') || 'config';
    const shown = JSON.stringify(merged[String(issue.path[0])]);
    throw new ConfigError(key, `${issue.message}${shown !== undefined ? ` (got ${shown})` : ''}`);
  }
  const config = result.data;
  if (config.pongTimeout <= config.pingInterval) {
    throw new ConfigError('pongTimeout', `must be longer than pingInterval (${config.pingInterval} ms)`);
  }
  if (config.drainDelay > 0 && config.drainDelay >= config.shutdownTimeout) {
    throw new ConfigError('drainDelay', `must be shorter than shutdownTimeout (${config.shutdownTimeout} ms)`);
  }
  const keys = [config.jwtSecret, config.jwtPublicKey, config.jwtJwksUrl].filter(Boolean).length;
  if (keys > 1) throw new ConfigError('jwtSecret', 'set only one of JWT_SECRET, JWT_PUBLIC_KEY, JWT_JWKS_URL');
  if (config.production && keys === 0) {
    throw new ConfigError('jwtSecret', 'production (NODE_ENV=production) needs JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL');
  }
  // Workers take `<instanceId>-<n>` (src/workers.ts), which must still be a valid instance id.
  if (config.workers > 1 && config.instanceId && config.instanceId.length > 60) {
    throw new ConfigError('instanceId', 'must be at most 60 characters with workers > 1 (each worker adds "-<n>")');
  }
  if (config.jwtAlgorithms?.some((a) => a.toLowerCase() === 'none')) {
    throw new ConfigError('jwtAlgorithms', '"none" is never accepted');
  }
  return config;
}
