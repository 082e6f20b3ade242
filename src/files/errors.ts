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
    super(code, message, options);
  }
}
