/**
 * File routes on the sidecar's port, for any authenticated user (not only admins):
 *
 * - tus 1.0 (core, creation, termination, expiration) under `/api/v1/websocket/uploads`;
 * - `POST /api/v1/websocket/projects/:id/files` (the whole file as the body), `GET` the same path
 *   for the project's files;
 * - `GET`/`DELETE /api/v1/websocket/files/:id` (downloads also take `?token=`, for links), and
 *   `GET /api/v1/websocket/files/:id/info` (the file object as JSON).
 *
 * Request bodies are streamed into NATS as they arrive and downloads are streamed out of it: no
 * file is ever held in memory. Errors are `{"error", "code"}` JSON with the FileError's status.
 */
import { authenticateBearer, UnauthorizedError } from './bearer.js';
import { Readable } from 'node:stream';
import Router from '@koa/router';
import type { Context, Middleware } from 'koa';
import type { Logger } from 'pino';
import type { Principal } from '../auth.js';
import type { AuthPort } from '../core/ports.js';
import { FileError } from '../files/errors.js';
import { contentDisposition, decodeHeaderFileName, parseRange } from '../files/input.js';
import type { FileService } from '../files/service.js';

export const UPLOADS_PATH = '/api/v1/websocket/uploads';
const TUS_VERSION = '1.0.0';
const TUS_EXTENSIONS = 'creation,termination,expiration';

export interface FileRouteDeps {
  files: FileService;
  verifier: AuthPort;
  log: Logger;
}

interface FileState {
  principal: Principal;
}

const isTus = (ctx: Context): boolean => ctx.path.startsWith(UPLOADS_PATH);

/** Any valid token: 401 otherwise. Downloads may carry it as `?token=` (links, `<img src>`). */
function requireUser(verifier: AuthPort): Middleware<FileState> {
  return async (ctx, next) => {
    if (ctx.method === 'OPTIONS' && isTus(ctx)) return next(); // tus discovery and CORS preflights carry no token
    try {
      ctx.state.principal = await authenticateBearer(ctx, verifier, ctx.method === 'GET' || ctx.method === 'HEAD');
    } catch (err) {
      // The files API answers in its own error shape (with a code): the same statuses and words.
      if (err instanceof UnauthorizedError) throw new FileError('unauthorized', 401, err.message);
      throw err;
    }
    await next();
  };
}

/** FileErrors become their status and `{"error","code"}`; a request body not read is not waited for. */
function fileErrors(log: Logger): Middleware {
  return async (ctx, next) => {
    if (isTus(ctx)) ctx.set('Tus-Resumable', TUS_VERSION);
    try {
      await next();
    } catch (err) {
      if (!(err instanceof FileError)) throw err;
      ctx.status = err.status;
      ctx.body = { error: err.message, code: err.code };
      if (err.status === 503) ctx.set('Retry-After', '2');
      if (err.status >= 500) log.warn({ err: err.cause ?? err, path: ctx.path }, err.message);
      // Reading the rest of a body too large to take only to discard it is a waste: close instead.
      // Other refusals let Node read and drop the rest, so the client gets to read the answer.
      if (err.status === 413 && !ctx.req.complete) ctx.set('Connection', 'close');
    }
  };
}

function integerHeader(ctx: Context, name: string): number | undefined {
  const raw = ctx.get(name);
  if (raw === '') return undefined;
  if (!/^\d{1,16}$/.test(raw)) throw new FileError('bad_request', 400, `${name} must be a non-negative integer`);
  return Number(raw);
}

const httpDate = (ms: number): string => new Date(ms).toUTCString();

export function createFileRouter(deps: FileRouteDeps): Router<FileState> {
  const { files } = deps;
  const router = new Router<FileState>();
  const auth = requireUser(deps.verifier);
  const errors = fileErrors(deps.log);
  const body = (ctx: Context): AsyncIterable<Buffer> => ctx.req as AsyncIterable<Buffer>;

  // ---- tus -----------------------------------------------------------------------------------

  const tusVersion: Middleware = async (ctx, next) => {
    if (ctx.method !== 'OPTIONS' && ctx.get('Tus-Resumable') !== TUS_VERSION) {
      ctx.set('Tus-Version', TUS_VERSION);
      throw new FileError('bad_request', 412, `Tus-Resumable: ${TUS_VERSION} is required`);
    }
    await next();
  };

  router.options(UPLOADS_PATH, errors, (ctx) => {
    ctx.set('Tus-Version', TUS_VERSION);
    ctx.set('Tus-Extension', TUS_EXTENSIONS);
    ctx.set('Tus-Max-Size', String(files.maxUploadBytes));
    ctx.status = 204;
  });
  router.options(`${UPLOADS_PATH}/:id`, errors, (ctx) => {
    ctx.set('Tus-Version', TUS_VERSION);
    ctx.set('Tus-Extension', TUS_EXTENSIONS);
    ctx.status = 204;
  });

  router.post(UPLOADS_PATH, errors, auth, tusVersion, async (ctx) => {
    if (ctx.get('Upload-Defer-Length')) throw new FileError('bad_request', 400, 'Upload-Defer-Length is not supported: send Upload-Length');
    const length = integerHeader(ctx, 'Upload-Length');
    if (length === undefined) throw new FileError('bad_request', 400, 'Upload-Length is required');
    const record = await files.create(ctx.state.principal, length, ctx.get('Upload-Metadata') || undefined);
    ctx.status = 201;
    ctx.set('Location', `${UPLOADS_PATH}/${record.id}`);
    ctx.set('Upload-Expires', httpDate(record.expires_at));
    if (record.file) ctx.set('Upload-Offset', String(record.length));
  });

  router.head(`${UPLOADS_PATH}/:id`, errors, auth, tusVersion, async (ctx) => {
    const { record, offset } = await files.status(ctx.state.principal, ctx.params.id);
    ctx.set('Upload-Offset', String(offset));
    ctx.set('Upload-Length', String(record.length));
    ctx.set('Upload-Expires', httpDate(record.expires_at));
    ctx.set('Cache-Control', 'no-store');
    ctx.status = 200;
  });

  router.patch(`${UPLOADS_PATH}/:id`, errors, auth, tusVersion, async (ctx) => {
    if (ctx.get('Content-Type') !== 'application/offset+octet-stream') {
      throw new FileError('bad_request', 415, 'Content-Type must be application/offset+octet-stream');
    }
    const offset = integerHeader(ctx, 'Upload-Offset');
    if (offset === undefined) throw new FileError('bad_request', 400, 'Upload-Offset is required');
    const result = await files.append(ctx.state.principal, ctx.params.id, offset, body(ctx));
    ctx.set('Upload-Offset', String(result.offset));
    ctx.set('Upload-Expires', httpDate(result.record.expires_at));
    ctx.status = 204;
  });

  router.delete(`${UPLOADS_PATH}/:id`, errors, auth, tusVersion, async (ctx) => {
    await files.terminate(ctx.state.principal, ctx.params.id);
    ctx.status = 204;
  });

  // ---- single-request upload, list -----------------------------------------------------------

  router.post('/api/v1/websocket/projects/:id/files', errors, auth, async (ctx) => {
    const file = await files.put(
      ctx.state.principal,
      ctx.params.id,
      {
        name: decodeHeaderFileName(ctx.get('X-File-Name') || undefined),
        contentType: ctx.get('Content-Type') || undefined,
        contentLength: integerHeader(ctx, 'Content-Length'),
      },
      body(ctx),
    );
    ctx.status = 201;
    ctx.set('Location', file.url);
    ctx.body = file;
  });

  router.get('/api/v1/websocket/projects/:id/files', errors, auth, async (ctx) => {
    ctx.body = { project_id: ctx.params.id, files: await files.list(ctx.state.principal, ctx.params.id) };
  });

  // ---- download, delete ----------------------------------------------------------------------

  router.get('/api/v1/websocket/files/:id/info', errors, auth, async (ctx) => {
    ctx.set('Cache-Control', 'no-store');
    ctx.body = await files.get(ctx.state.principal, ctx.params.id);
  });

  router.get('/api/v1/websocket/files/:id', errors, auth, async (ctx) => {
    const file = await files.get(ctx.state.principal, ctx.params.id);
    const etag = `"${file.sha256}"`;
    ctx.set('ETag', etag);
    ctx.set('Accept-Ranges', 'bytes');
    // Behind a token: no shared caches. The bytes are someone's upload: never sniffed or run as a page.
    ctx.set('Cache-Control', 'private, no-cache');
    ctx.set('X-Content-Type-Options', 'nosniff');
    ctx.set('Content-Security-Policy', "sandbox; default-src 'none'");
    ctx.set('Content-Disposition', contentDisposition(file.name, ctx.query.disposition === 'inline' ? 'inline' : 'attachment'));
    const inm = ctx.get('If-None-Match');
    if (inm && (inm.trim() === '*' || inm.split(',').some((t) => t.trim().replace(/^W\//, '') === etag))) {
      ctx.status = 304;
      return;
    }
    // If-Range (RFC 9110 13.1.5): the Range holds only for this very file, named by its strong
    // ETag; any other validator (weak, another tag, a date: no Last-Modified is sent) gets it whole.
    const ifRange = ctx.get('If-Range');
    const range = parseRange(ifRange && ifRange.trim() !== etag ? undefined : ctx.get('Range') || undefined, file.size);
    if (range.kind === 'unsatisfiable') {
      ctx.set('Content-Range', `bytes */${file.size}`);
      throw new FileError('bad_request', 416, 'the range is outside the file');
    }
    const [start, end] = range.kind === 'partial' ? [range.start, range.end] : [0, file.size - 1];
    ctx.status = range.kind === 'partial' ? 206 : 200;
    if (range.kind === 'partial') ctx.set('Content-Range', `bytes ${start}-${end}/${file.size}`);
    ctx.type = file.content_type;
    if (ctx.method === 'HEAD' || file.size === 0) {
      ctx.length = end - start + 1;
      if (file.size === 0) ctx.body = Buffer.alloc(0);
      return;
    }
    ctx.length = end - start + 1;
    // Streamed here, not through Koa: a transfer that breaks off (NATS went away mid-file) destroys
    // the response, so the client sees a failed transfer rather than a short one, and is logged
    // here (Koa would print the error to stderr); a client that leaves stops the read.
    ctx.respond = false;
    const source = Readable.from(files.read(file, start, end), { objectMode: false, highWaterMark: 256 * 1024 });
    const res = ctx.res;
    source.on('error', (err) => {
      deps.log.warn({ err, file: file.file_id }, 'download interrupted: file storage (NATS) failed');
      res.destroy();
    });
    res.on('close', () => source.destroy());
    source.pipe(res);
  });

  router.delete('/api/v1/websocket/files/:id', errors, auth, async (ctx) => {
    await files.remove(ctx.state.principal, ctx.params.id);
    ctx.status = 204;
  });

  return router;
}
