/** Errors of the file service: a stable code, the HTTP status it answers, a message for the client. */
import { SidecarError } from '../errors.js';

export type FileErrorCode =
  | 'bad_request'
  | 'bad_metadata'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'offset_mismatch'
  | 'too_large'
  | 'unsupported_type'
  | 'locked'
  | 'too_many_uploads'
  | 'storage_unavailable';

export class FileError extends SidecarError {
  constructor(
    code: FileErrorCode,
    readonly status: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    // Retrying may work: NATS away (503), the upload written by another request (423), too many at once (429).
    super(code, message, { ...options, temporary: status === 503 || status === 423 || status === 429 });
  }
}
