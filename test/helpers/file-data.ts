/**
 * Large test files without large buffers: bytes are a function of their position, so any slice can
 * be made on demand (a tus-js-client file reader that can resume anywhere), and hashed as a stream.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as tus from 'tus-js-client';

const BLOCK = 1 << 20;
const base = randomBytes(BLOCK);

/** Bytes `start`..`end` (exclusive) of the pattern: a random block, varied per MiB. */
export function patternBytes(start: number, end: number): Buffer {
  const out = Buffer.allocUnsafe(Math.max(0, end - start));
  let i = 0;
  while (i < out.length) {
    const pos = start + i;
    const inBlock = pos % BLOCK;
    const n = Math.min(BLOCK - inBlock, out.length - i);
    base.copy(out, i, inBlock, inBlock + n);
    if (inBlock === 0) out[i] ^= Math.floor(pos / BLOCK) & 0xff; // no two MiB are alike
    i += n;
  }
  return out;
}

export function patternSha256(size: number): string {
  const h = createHash('sha256');
  for (let pos = 0; pos < size; pos += 4 * BLOCK) h.update(patternBytes(pos, Math.min(size, pos + 4 * BLOCK)));
  return h.digest('hex');
}

/** A tus-js-client file reader for a pattern file of `size` bytes (the upload's `file` is ignored). */
export function patternReader(size: number): tus.UploadOptions['fileReader'] {
  return {
    async openFile() {
      return {
        size,
        async slice(start: number, end: number) {
          const to = Math.min(size, end);
          // tus-js-client measures a slice by `.size` (as of a Blob).
          const value = Object.assign(patternBytes(start, to), { size: to - start });
          return { value, done: to >= size };
        },
        close() {},
      };
    },
  };
}

/** sha256 and length of a response body, read as a stream. */
export async function hashBody(res: Response): Promise<{ sha256: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    h.update(chunk);
    size += chunk.length;
  }
  return { sha256: h.digest('hex'), size };
}

export interface TusRun {
  upload: tus.Upload;
  done: Promise<void>;
}

/** Start a tus upload; `done` settles with its success or error. */
export function startTus(file: unknown, options: tus.UploadOptions): TusRun {
  let upload!: tus.Upload;
  const done = new Promise<void>((resolve, reject) => {
    upload = new tus.Upload(file as Buffer, {
      retryDelays: null,
      storeFingerprintForResuming: false,
      ...options,
      onSuccess: (p) => {
        options.onSuccess?.(p);
        resolve();
      },
      onError: (err) => {
        options.onError?.(err);
        reject(err);
      },
    });
  });
  done.catch(() => {});
  upload.start();
  return { upload, done };
}

export const b64 = (s: string): string => Buffer.from(s).toString('base64');
