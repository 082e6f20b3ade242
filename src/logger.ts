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

/** `destination` defaults to stdout; tests pass a stream to read what was logged. */
export function createLogger(level: string, base: Record<string, unknown> = {}, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { ...base },
    redact: { paths: [...SECRET_PATHS, ...URL_PATHS], censor },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return destination ? pino(options, destination) : pino(options);
}
