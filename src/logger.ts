import { createRequire } from 'node:module';
import pino, { type DestinationStream, type Logger } from 'pino';

/** Paths that may carry a credential. Tokens never reach a log line. */
const SECRET_PATHS = [
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'headers.cookie',
  'headers["sec-websocket-protocol"]',
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["sec-websocket-protocol"]',
];
/** Paths holding a URL: kept, with the `token` query parameter masked. */
const URL_PATHS = ['url', '*.url', 'req.url'];

/** A URL safe to log: the `token` query parameter is masked. */
export function redactUrl(url: string): string {
  return url.replace(/([?&]token=)[^&#]*/gi, '$1[redacted]');
}

function censor(value: unknown, path: string[]): unknown {
  return path[path.length - 1] === 'url' && typeof value === 'string' ? redactUrl(value) : '[redacted]';
}

export type LogFormat = 'pretty' | 'json';

/**
 * Readable lines for a person at a terminal (stdout is a TTY and NODE_ENV is not production);
 * one JSON object per line for everything else: log collectors, pipes, files, production.
 */
export function logFormat(env: NodeJS.ProcessEnv = process.env, isTTY: boolean = process.stdout.isTTY === true): LogFormat {
  return isTTY && env.NODE_ENV !== 'production' ? 'pretty' : 'json';
}

/**
 * `destination` defaults to stdout; tests pass a stream to read what was logged. `format`
 * defaults to logFormat(). Redaction applies before formatting, so pretty lines hide tokens too.
 */
export function createLogger(
  level: string,
  base: Record<string, unknown> = {},
  destination?: DestinationStream,
  format: LogFormat = destination ? 'json' : logFormat(),
): Logger {
  const options = {
    level,
    base: { ...base },
    redact: { paths: [...SECRET_PATHS, ...URL_PATHS], censor },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (format === 'pretty') {
    // Loaded only here: a production process never reads pino-pretty.
    const pretty = createRequire(import.meta.url)('pino-pretty') as (o: Record<string, unknown>) => DestinationStream;
    const stream = pretty({
      colorize: destination === undefined,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname',
      sync: true, // lines appear in order with console output (the dev token)
      ...(destination ? { destination } : {}),
    });
    return pino(options, stream);
  }
  return destination ? pino(options, destination) : pino(options);
}
