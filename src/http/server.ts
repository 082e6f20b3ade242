/**
 * One HTTP server on one port: WebSocket upgrades on /ws/connect, everything else to the Koa app.
 * Every upgrade check (path, draining, origin, handshake token) runs before `handleUpgrade`, so a
 * refused handshake costs no WebSocket state.
 */
import { createServer, type IncomingMessage, type Server, type RequestListener } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Principal } from '../auth.js';
import type { Config } from '../config.js';
import { AuthError } from '../errors.js';
import type { Connection } from '../core/connection.js';
import type { Hub } from '../core/hub.js';
import { BATCH_PROTOCOL } from '../protocol.js';
import { traced, tracingEnabled } from '../tracing.js';
import type { FrameOptions } from './frames.js';
import { WsTransport } from './ws-transport.js';

export const WS_PATH = '/ws/connect';

export interface HttpServerOptions {
  config: Pick<
    Config,
    | 'maxMessageSize'
    | 'maxTokenLength'
    | 'allowedOrigins'
    | 'handshakeTimeout'
    | 'compression'
    | 'compressionThreshold'
    | 'batchFrameBytes'
  >;
  log: Logger;
  /** True once shutdown began: new upgrades are refused. */
  draining: () => boolean;
}

/**
 * The sidecar's port. It listens from the start, before NATS answers: until `serve` hands it the
 * hub and the API, it is alive (`/healthz` 200) but not ready (`/readyz` 503), and refuses
 * upgrades and API requests with 503 and `Retry-After`, so orchestrators and clients wait.
 */
export interface SidecarHttpServer {
  readonly server: Server;
  /** The core is up: upgrades go to the hub, requests to the API (Koa's `app.callback()`). */
  serve(hub: Hub, api: RequestListener): void;
}

/** Seconds a client is told to wait before trying again while the sidecar starts. */
const STARTING_RETRY_AFTER_S = 2;

/** Answers while the core is not up: alive, not ready, nothing else. */
const starting: RequestListener = (req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  const reply = (status: number, body: Record<string, unknown>): void => {
    const text = JSON.stringify(body);
    const headers: Record<string, string | number> = { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) };
    if (status === 503) headers['Retry-After'] = STARTING_RETRY_AFTER_S;
    res.writeHead(status, headers).end(text);
  };
  if (path === '/healthz') return reply(200, { status: 'ok', starting: true });
  if (path === '/readyz') return reply(503, { ready: false, starting: true, nats: false, stream: false, presence: false });
  reply(503, { error: 'starting: waiting for NATS' });
};

/** The handshake token: `?token=` or `Authorization: Bearer`. `fromQuery`: the query's, when already known. */
export function handshakeToken(req: IncomingMessage, url: URL | undefined, fromQuery = url?.searchParams.get('token')): string | undefined {
  if (fromQuery) return fromQuery;
  const header = req.headers.authorization;
  if (header && /^bearer\s+/i.test(header)) return header.replace(/^bearer\s+/i, '').trim() || undefined;
  return undefined;
}

/** A query of plain token characters and separators: nothing to percent-decode, so no URL parse needed. */
const PLAIN_QUERY = /^[A-Za-z0-9._~=&-]*$/;

/**
 * The handshake token of a request for exactly `/ws/connect[?query]` with a plain query (the
 * usual `?token=<JWT>`), as `URLSearchParams.get('token')` would give it (first pair named
 * `token`; `''` for one without a value); null for any other target, which then gets a full URL
 * parse. A `new URL` with its search params costs ~1% of a connect storm.
 */
export function plainTargetToken(target: string): string | undefined | null {
  if (target === WS_PATH) return undefined;
  if (!target.startsWith(WS_PATH) || target.charCodeAt(WS_PATH.length) !== 63 /* ? */) return null;
  const query = target.slice(WS_PATH.length + 1);
  if (!PLAIN_QUERY.test(query)) return null;
  for (const pair of query.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if ((eq < 0 ? pair : pair.slice(0, eq)) === 'token') return eq < 0 ? '' : pair.slice(eq + 1);
  }
  return undefined;
}

/** The window the sidecar inflates client frames with, when the client lets it choose (512 bytes). */
export const INBOUND_WINDOW_BITS = 9;

/**
 * Shape the client's permessage-deflate offers before ws reads them:
 * - drop offers that only accept a server window below 15 bits: the shared compressed frames use
 *   the full window, which such a client could not inflate (ws would refuse the upgrade with 400
 *   if no offer were left; this way the client is served uncompressed);
 * - where the client lets the server choose its window (`client_max_window_bits`), choose a
 *   small one: client frames are a few hundred bytes, and each socket that sends compressed frames
 *   keeps an inflate context, whose window is most of it (32 KiB at 15 bits).
 */
export function shapeDeflateOffers(req: IncomingMessage): void {
  const header = req.headers['sec-websocket-extensions'];
  if (typeof header !== 'string' || !/permessage-deflate/i.test(header)) return;
  const offers: string[] = [];
  for (const offer of header.split(',')) {
    const params = offer.split(';').map((p) => p.trim());
    if (params[0].toLowerCase() !== 'permessage-deflate') {
      offers.push(offer);
      continue;
    }
    const server = params.find((p) => /^server_max_window_bits\s*=/i.test(p));
    if (server && Number(server.split('=')[1].replace(/"/g, '').trim()) < 15) continue;
    const shaped = params.map((p) => {
      if (!/^client_max_window_bits(\s*=|$)/i.test(p)) return p;
      const value = Number(p.split('=')[1]?.replace(/"/g, '').trim() ?? 15);
      return `client_max_window_bits=${Math.min(value, INBOUND_WINDOW_BITS)}`;
    });
    offers.push(shaped.join('; '));
  }
  if (offers.length === 0) delete req.headers['sec-websocket-extensions'];
  else req.headers['sec-websocket-extensions'] = offers.join(', ');
}

function refuse(socket: Duplex, status: number, reason: string, message: string): void {
  if (!socket.writable) return void socket.destroy();
  const body = JSON.stringify({ error: message });
  const retry = status === 503 ? `Retry-After: ${STARTING_RETRY_AFTER_S}\r\n` : '';
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${retry}Connection: close\r\n\r\n${body}`,
  );
}

function destroySocket(this: Duplex): void {
  this.destroy();
}

/** The socket's connection, for listeners shared by every socket (four closures per socket otherwise). */
const CONNECTION = Symbol('connection');
type SocketWithConnection = WebSocket & { [CONNECTION]: Connection };

function onMessage(this: WebSocket, data: WebSocket.RawData, isBinary: boolean): void {
  (this as SocketWithConnection)[CONNECTION].receive(data as Buffer, isBinary);
}
function onPong(this: WebSocket): void {
  (this as SocketWithConnection)[CONNECTION].heard();
}
function onClose(this: WebSocket, code: number, reason: Buffer): void {
  (this as SocketWithConnection)[CONNECTION].closed(code, reason.toString());
}
function onError(this: WebSocket, err: Error): void {
  (this as SocketWithConnection)[CONNECTION].log.debug({ err: err.message }, 'socket error');
}

/**
 * A new WebSocket joins the hub. Outside `upgrade` on purpose: the listeners below live as long as
 * the socket, and closures made in `upgrade` would keep its request, URL and token with them.
 */
function attach(
  hub: Hub,
  ws: WebSocket,
  socket: Duplex,
  remote: string,
  principal: Principal | undefined,
  frames: FrameOptions,
): Promise<void> | undefined {
  const conn = hub.connect(new WsTransport(ws, socket, frames), remote);
  (ws as SocketWithConnection)[CONNECTION] = conn;
  ws.on('message', onMessage);
  ws.on('pong', onPong);
  ws.on('close', onClose);
  ws.on('error', onError);
  return conn.start(principal);
}

export function createHttpServer(options: HttpServerOptions): SidecarHttpServer {
  const { config, log } = options;
  let hub: Hub | undefined;
  let handler: RequestListener = starting;
  const wss = new WebSocketServer({
    noServer: true,
    // Room for an `auth` message with a token up to maxTokenLength; the connection holds every
    // other message to maxMessageSize (1009), so only auth frames may be this large.
    // With permessage-deflate this holds the inflated size: ws stops inflating there (1009).
    maxPayload: Math.max(config.maxMessageSize, config.maxTokenLength + 1024),
    // Only to negotiate: the transport compresses each event once for every socket (frames.ts),
    // which needs server_no_context_takeover and the full window; ws never compresses a frame itself.
    perMessageDeflate:
      config.compression === 'deflate' ? { serverNoContextTakeover: true, serverMaxWindowBits: 15, threshold: Infinity } : false,
    // Batched frames when asked for; otherwise ws's default, the first subprotocol offered.
    handleProtocols: (protocols: Set<string>) => (protocols.has(BATCH_PROTOCOL) ? BATCH_PROTOCOL : (protocols.values().next().value ?? false)),
    clientTracking: false,
  });
  const frames: FrameOptions = {
    compressionThreshold: config.compressionThreshold,
    batchFrameBytes: config.batchFrameBytes,
  };
  const origins = config.allowedOrigins?.length ? new Set(config.allowedOrigins) : undefined;
  // A socket that never finishes its request head (a half-open connection, slowloris) is answered
  // 408 and closed after handshakeTimeout; Node's own default is 60 s, checked every 30 s.
  const server = createServer(
    {
      headersTimeout: config.handshakeTimeout,
      requestTimeout: Math.max(300_000, config.handshakeTimeout), // Node's default; never below headersTimeout
      connectionsCheckingInterval: Math.max(100, Math.min(1000, config.handshakeTimeout / 4)),
    },
    (req, res) => handler(req, res),
  );
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // A shared listener, not a closure: a closure here would keep this request (headers, URL,
    // token) alive for as long as the socket lives (memory per idle connection).
    socket.on('error', destroySocket);
    if (tracingEnabled()) void traced('ws.connect', (span) => upgrade(req, socket, head, span));
    else void upgrade(req, socket, head);
  });

  /** `span` (tracing on): ws.connect, which lasts until the handshake token's auth_success. */
  async function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, span?: { setAttribute(k: string, v: string | number): unknown }): Promise<void> {
    // `url` is masked by the logger's redaction (token query parameter), like the headers.
    const refused = (status: number, reason: string, message: string, detail?: Record<string, unknown>): void => {
      log.debug({ status, url: req.url, origin: req.headers.origin, ...detail }, `upgrade refused: ${message}`);
      span?.setAttribute('http.response.status_code', status);
      refuse(socket, status, reason, message);
    };
    const plain = plainTargetToken(req.url ?? '/');
    let url: URL | undefined;
    if (plain === null) {
      try {
        url = new URL(req.url ?? '/', 'http://localhost');
      } catch {
        return refused(400, 'Bad Request', 'bad request target');
      }
      if (url.pathname !== WS_PATH) return refused(404, 'Not Found', `WebSocket endpoint is ${WS_PATH}`);
    }
    if (options.draining()) return refused(503, 'Service Unavailable', 'shutting down; connect to another instance');
    if (!hub) return refused(503, 'Service Unavailable', 'starting: waiting for NATS; retry shortly');
    // Browsers always send Origin; other clients may not, and are not what this check is about.
    const origin = req.headers.origin;
    if (origins && origin !== undefined && !origins.has(origin)) {
      return refused(403, 'Forbidden', 'origin not allowed');
    }
    let principal: Principal | undefined;
    const token = url ? handshakeToken(req, url) : handshakeToken(req, undefined, plain);
    if (token !== undefined) {
      try {
        principal = await hub.auth.verify(token);
      } catch (err) {
        const code = err instanceof AuthError ? err.code : 'token_invalid';
        return refused(401, 'Unauthorized', code === 'token_expired' ? 'token expired' : 'invalid token', { code });
      }
      // Refused before any WebSocket state exists; admitUser checks again when the connection registers.
      if (hub.userAtCapacity(principal.userId)) {
        return refused(429, 'Too Many Requests', 'too many connections for this user', { user: principal.userId });
      }
    }
    if (socket.destroyed) return;
    const remote = (req.socket.remoteAddress ?? '') + (req.socket.remotePort ? `:${req.socket.remotePort}` : '');
    const to = hub;
    if (config.compression === 'deflate') shapeDeflateOffers(req);
    if (!span) return void wss.handleUpgrade(req, socket, head, (ws) => attach(to, ws, socket, remote, principal, frames));
    if (principal) span.setAttribute('enduser.id', principal.userId);
    await new Promise<void>((ok) => {
      // A handshake that ws refuses never calls back: the socket's close ends the span then.
      const done = () => {
        socket.off('close', done);
        ok();
      };
      socket.once('close', done);
      wss.handleUpgrade(req, socket, head, (ws) => {
        const authenticated = attach(to, ws, socket, remote, principal, frames);
        span.setAttribute('http.response.status_code', 101);
        if (authenticated) void authenticated.finally(done);
        else done();
      });
    });
  }

  return {
    server,
    serve(core, api) {
      hub = core;
      handler = api;
    },
  };
}
