/**
 * JSON request bodies for the admin API, bounded by `apiBodyLimit`. Any Content-Type is read as
 * JSON (so `curl -d '{...}'` works without a header). A body over the limit is read to its end and
 * discarded before the 413, so the client gets the answer instead of a reset; one far over the
 * limit is not worth reading and its connection is closed.
 */
import type { Context } from 'koa';

/** Past this multiple of the limit, stop reading and close the connection. */
const ABANDON_FACTOR = 16;

/** The parsed body, or undefined when there is none. Throws 413 (too large) or 400 (not JSON). */
export async function readJsonBody(ctx: Context, limit: number): Promise<unknown> {
  const tooLarge = (): never => ctx.throw(413, `request body over ${limit} bytes`);
  const declared = Number(ctx.get('content-length') || 0);
  if (declared > limit * ABANDON_FACTOR) {
    ctx.set('Connection', 'close');
    tooLarge();
  }
  const { size, chunks } = await new Promise<{ size: number; chunks: Buffer[] }>((resolve, reject) => {
    const req = ctx.req;
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err?: Error) => {
      req.off('data', onData).off('end', onEnd).off('error', done);
      if (err) reject(err);
      else resolve({ size, chunks });
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
      else if (size > limit * ABANDON_FACTOR) {
        ctx.set('Connection', 'close');
        req.pause();
        done();
      }
    };
    const onEnd = () => done();
    req.on('data', onData).on('end', onEnd).on('error', done);
  });
  if (size > limit) tooLarge();
  if (size === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks, size).toString('utf8'));
  } catch {
    return ctx.throw(400, 'request body is not valid JSON');
  }
}
