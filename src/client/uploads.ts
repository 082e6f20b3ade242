/**
 * File uploads for the client SDK: the part of tus 1.0 a client needs (create, HEAD, PATCH), over
 * `fetch`, with no dependency. A file is sent in chunks; a chunk that fails (network gone, the
 * instance went away, NATS briefly unavailable: 503, a lease still held: 423) is retried after a
 * delay from where the server says its bytes end (HEAD), on whichever instance the client's URL
 * leads to now, so an upload survives reconnects and instance changes.
 */
import { ClientError, ClientErrorCode } from './errors.js';

/** The file object of the sidecar's file API. */
export interface FileInfo {
  file_id: string;
  name: string;
  size: number;
  content_type: string;
  sha256: string;
  project_id: string;
  uploaded_by: string;
  url: string;
  created_at?: string;
}

/** What can be uploaded: a Blob (a browser File is one) or bytes. */
export type UploadSource = Blob | Uint8Array;

export interface UploadOptions {
  /** Called after each stored chunk with the bytes the server has and the total. */
  onProgress?: (sent: number, total: number) => void;
  /** Aborts the upload (what is stored stays until it expires; `resumeUrl` continues it). */
  signal?: AbortSignal;
  /** File name; default the File's `name`, else "file". */
  name?: string;
  /** Media type; default the Blob's `type`, else application/octet-stream. */
  contentType?: string;
  /** Bytes per PATCH request. Default 4 MiB. */
  chunkSize?: number;
  /** Waits before the retries of a failed request, ms. Default [500, 1000, 2000, 5000, 10000, 10000]. */
  retryDelays?: readonly number[];
  /** Continue an earlier upload (its `uploadUrl`, from `onUploadUrl`) instead of creating one. */
  resumeUrl?: string;
  /** Called once the server created the upload, with its path (keep it to resume after a reload). */
  onUploadUrl?: (path: string) => void;
}

export interface UploadContext {
  /** The sidecar's HTTP base URL now (asked before every request: the client may have moved). */
  baseUrl(): string;
  token(): Promise<string>;
  fetch?: typeof fetch;
}

const UPLOADS = '/api/v1/websocket/uploads';
const DEFAULT_CHUNK = 4 * 1024 * 1024;
const DEFAULT_DELAYS = [500, 1000, 2000, 5000, 10_000, 10_000];
const TUS = { 'Tus-Resumable': '1.0.0' };

/** `ws(s)://host/ws/connect` -> `http(s)://host`. */
export function httpBaseOf(wsUrl: string): string {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
  return `${u.protocol}//${u.host}`;
}

const b64 = (s: string): string => {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
};

/** A response that is worth retrying: the server or the link had a passing problem. */
const retryable = (status: number): boolean => status === 423 || status === 429 || status === 408 || status >= 500;

class Retry extends Error {}

function sliceOf(file: UploadSource, start: number, end: number): Blob | Uint8Array {
  return file instanceof Uint8Array ? file.subarray(start, end) : file.slice(start, end);
}

function sizeOf(file: UploadSource): number {
  return file instanceof Uint8Array ? file.length : file.size;
}

async function errorText(res: Response): Promise<string> {
  try {
    const body = (await res.json()) as { error?: string };
    return body?.error ?? `HTTP ${res.status}`;
  } catch {
    return `HTTP ${res.status}`;
  }
}

export async function uploadFile(ctx: UploadContext, projectId: string, file: UploadSource, options: UploadOptions = {}): Promise<FileInfo> {
  const doFetch = ctx.fetch ?? globalThis.fetch;
  if (typeof doFetch !== 'function') throw new ClientError(ClientErrorCode.InvalidArgument, 'no fetch implementation');
  if (!(file instanceof Uint8Array) && !(typeof Blob !== 'undefined' && file instanceof Blob)) {
    throw new ClientError(ClientErrorCode.InvalidArgument, 'file must be a Blob, a File or a Uint8Array');
  }
  const size = sizeOf(file);
  const chunkSize = Math.max(64 * 1024, options.chunkSize ?? DEFAULT_CHUNK);
  const delays = options.retryDelays ?? DEFAULT_DELAYS;
  const signal = options.signal;
  const aborted = (): ClientError => new ClientError(ClientErrorCode.Aborted, 'the upload was aborted');

  const request = async (method: string, path: string, headers: Record<string, string>, body?: Blob | Uint8Array): Promise<Response> => {
    if (signal?.aborted) throw aborted();
    let res: Response;
    try {
      res = await doFetch(ctx.baseUrl() + path, {
        method,
        headers: { ...TUS, Authorization: `Bearer ${await ctx.token()}`, ...headers },
        body: body as RequestInit["body"],
        signal,
      });
    } catch (err) {
      if (signal?.aborted) throw aborted();
      throw new Retry(`network error: ${(err as Error)?.message ?? err}`, { cause: err });
    }
    if (retryable(res.status)) throw new Retry(await errorText(res));
    return res;
  };

  /** Run `step` until it does not ask for a retry, waiting between attempts. */
  const withRetries = async <T>(step: () => Promise<T>): Promise<T> => {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await step();
      } catch (err) {
        if (!(err instanceof Retry) || attempt >= delays.length) {
          if (err instanceof Retry) throw new ClientError(ClientErrorCode.UploadFailed, `upload failed: ${err.message}`, { cause: err });
          throw err;
        }
        await new Promise<void>((ok, fail) => {
          const t = setTimeout(ok, delays[attempt]);
          signal?.addEventListener('abort', () => (clearTimeout(t), fail(aborted())), { once: true });
        });
      }
    }
  };

  let path = options.resumeUrl ? new URL(options.resumeUrl, 'http://x').pathname : undefined;
  if (!path) {
    const name = options.name ?? (typeof File !== 'undefined' && file instanceof File ? file.name : 'file');
    const type = options.contentType ?? (file instanceof Uint8Array ? '' : file.type) ?? '';
    const metadata = [`filename ${b64(name)}`, `project_id ${b64(projectId)}`, ...(type ? [`filetype ${b64(type)}`] : [])].join(',');
    const res = await withRetries(() => request('POST', UPLOADS, { 'Upload-Length': String(size), 'Upload-Metadata': metadata }));
    if (res.status !== 201) throw new ClientError(ClientErrorCode.UploadFailed, `upload refused: ${await errorText(res)}`, { data: { status: res.status } });
    path = new URL(res.headers.get('Location') ?? '', 'http://x').pathname;
    options.onUploadUrl?.(path);
  }
  const uploadPath = path;

  let offset: number | undefined;
  const learnOffset = async (): Promise<number> => {
    const res = await request('HEAD', uploadPath, {});
    if (res.status !== 200) throw new ClientError(ClientErrorCode.UploadFailed, `the upload is gone (HTTP ${res.status})`, { data: { status: res.status } });
    return Number(res.headers.get('Upload-Offset'));
  };
  if (options.resumeUrl) offset = await withRetries(learnOffset);
  offset ??= 0;
  options.onProgress?.(offset, size);

  let failedBefore = false;
  while (offset < size) {
    offset = await withRetries(async () => {
      // After a failure the server's offset is the truth (some of the chunk may have been stored).
      const at = offset!;
      const from = failedBefore ? await learnOffset() : at;
      failedBefore = true;
      const res = await request('PATCH', uploadPath, { 'Upload-Offset': String(from), 'Content-Type': 'application/offset+octet-stream' }, sliceOf(file, from, Math.min(size, from + chunkSize)));
      if (res.status === 409) throw new Retry('offset mismatch');
      if (res.status !== 204) throw new ClientError(ClientErrorCode.UploadFailed, `upload refused: ${await errorText(res)}`, { data: { status: res.status } });
      failedBefore = false;
      return Number(res.headers.get('Upload-Offset'));
    });
    options.onProgress?.(offset, size);
  }

  const fileId = uploadPath.split('/').pop()!;
  const info = await withRetries(() => request('GET', `/api/v1/websocket/files/${fileId}/info`, {}));
  if (info.status !== 200) throw new ClientError(ClientErrorCode.UploadFailed, `the file is not readable: ${await errorText(info)}`, { data: { status: info.status } });
  return (await info.json()) as FileInfo;
}
