import { SidecarError } from '../errors.js';
import type { ErrorCode } from '../protocol-codes.js';

/** Codes of errors the client itself raises; server `error` frames keep the server's code. */
export const ClientErrorCode = {
  /** A bad argument (e.g. a project id that is not `[A-Za-z0-9_-]{1,128}`); nothing was sent. */
  InvalidArgument: 'invalid_argument',
  /** The token callback threw or returned no token. */
  TokenError: 'token_error',
  /** The server refused a token (`auth_failed`). */
  AuthFailed: 'auth_failed',
  /** The connection ended for good (a close code the client does not reconnect after). */
  Disconnected: 'disconnected',
  /** `close()` was called. */
  Closed: 'closed',
  /** `unsubscribe()` was called before the subscription was confirmed. */
  Unsubscribed: 'unsubscribed',
  /** A listener threw; `cause` has its error. */
  ListenerError: 'listener_error',
  /** The WebSocket could not be created (bad URL, no WebSocket implementation). */
  TransportError: 'transport_error',
  /** A file upload was refused, or kept failing through every retry. */
  UploadFailed: 'upload_failed',
  /** A file upload's `signal` aborted it. */
  Aborted: 'aborted',
} as const;
export type ClientErrorCode = (typeof ClientErrorCode)[keyof typeof ClientErrorCode];

export class ClientError extends SidecarError {
  /** A ClientErrorCode, or the server's ErrorCode for `error` frames. */
  declare readonly code: ClientErrorCode | ErrorCode;
  /** The project the error is about, when there is one. */
  readonly projectId?: string;
  /** The close code that ended the connection, for `disconnected`. */
  readonly closeCode?: number;
  /** The server's `data` for `error` frames. */
  readonly data?: Record<string, unknown>;

  constructor(
    code: ClientErrorCode | ErrorCode,
    message: string,
    extra: { projectId?: string; closeCode?: number; data?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(code, message, { cause: extra.cause, temporary: code === 'rate_limited' || code === 'processing_error' });
    if (extra.projectId !== undefined) this.projectId = extra.projectId;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.data !== undefined) this.data = extra.data;
  }
}
