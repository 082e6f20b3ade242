/**
 * Parsing of what clients send about files: tus `Upload-Metadata`, file names, content types and
 * `Range`. Everything here is pure and refuses bad input with a FileError (HTTP 400 family).
 */
import { FileError } from './errors.js';

/** Longest `Upload-Metadata` header we read; tus metadata is a few short keys. */
export const MAX_METADATA_LENGTH = 4096;
export const MAX_NAME_LENGTH = 255;
const MAX_TYPE_LENGTH = 255;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const METADATA_KEY = /^[A-Za-z0-9_.-]{1,64}$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

const bad = (message: string): FileError => new FileError('bad_metadata', 400, message);

/**
 * tus `Upload-Metadata`: `key base64value` pairs separated by commas (a key alone has an empty
 * value). Values must be strict base64 of UTF-8 without NUL; duplicate keys are refused.
 */
export function parseUploadMetadata(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (header === undefined || header.trim() === '') return out;
  if (header.length > MAX_METADATA_LENGTH) throw bad(`Upload-Metadata is longer than ${MAX_METADATA_LENGTH} characters`);
  for (const pair of header.split(',')) {
    const parts = pair.trim().split(' ');
    if (parts.length > 2 || !METADATA_KEY.test(parts[0])) throw bad('Upload-Metadata must be "key base64value" pairs separated by commas');
    const [key, encoded = ''] = parts;
    if (out.has(key)) throw bad(`Upload-Metadata has "${key}" twice`);
    if (!BASE64.test(encoded)) throw bad(`Upload-Metadata "${key}" is not valid base64`);
    let value: string;
    try {
      value = utf8.decode(Buffer.from(encoded, 'base64'));
    } catch {
      throw bad(`Upload-Metadata "${key}" is not UTF-8 text`);
    }
    if (value.includes('\0')) throw bad(`Upload-Metadata "${key}" contains a NUL character`);
    out.set(key, value);
  }
  return out;
}

// Control characters, and the bidirectional overrides that make "evil\u202Etxt.exe" look harmless.
const UNSAFE_NAME_CHARS = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/**
 * A file name fit to store and to show: the last path segment (no `/` or `\`), without control or
 * direction-override characters, at most MAX_NAME_LENGTH characters (the extension is kept).
 * Nothing usable left: "file".
 */
export function sanitizeFileName(raw: string | undefined): string {
  let name = (raw ?? '').split(/[/\\]/).pop() ?? '';
  name = name.replace(UNSAFE_NAME_CHARS, '').trim();
  if (name === '.' || name === '..' || /^\.+$/.test(name)) name = '';
  const chars = [...name];
  if (chars.length > MAX_NAME_LENGTH) {
    const dot = name.lastIndexOf('.');
    const ext = dot > 0 && name.length - dot <= 16 ? [...name.slice(dot)] : [];
    name = chars.slice(0, MAX_NAME_LENGTH - ext.length).join('') + ext.join('');
  }
  return name || 'file';
}

/** `X-File-Name`: plain (latin-1 header bytes) or percent-encoded UTF-8 (what clients send for non-ASCII names). */
export function decodeHeaderFileName(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (!/%[0-9A-Fa-f]{2}/.test(value)) return value;
  try {
    return decodeURIComponent(value);
  } catch {
    throw new FileError('bad_request', 400, 'X-File-Name is not valid percent-encoded UTF-8');
  }
}

const MEDIA_TYPE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

/** A media type as stored: `type/subtype` lowercased plus parameters as sent; none = octet-stream. */
export function normalizeContentType(raw: string | undefined): string {
  const value = (raw ?? '').trim();
  if (value === '') return 'application/octet-stream';
  if (value.length > MAX_TYPE_LENGTH || /[\u0000-\u001f\u007f]/.test(value)) throw new FileError('bad_request', 400, 'the content type is not a media type');
  const [essence, ...params] = value.split(';');
  if (!MEDIA_TYPE.test(essence.trim())) throw new FileError('bad_request', 400, 'the content type is not a media type');
  return [essence.trim().toLowerCase(), ...params.map((p) => p.trim())].join('; ');
}

/** Whether the allow-list (empty = everything) admits the type: exact `type/subtype` or `type/*`. */
export function contentTypeAllowed(contentType: string, allowed: readonly string[]): boolean {
  if (allowed.length === 0) return true;
  const essence = contentType.split(';')[0].trim().toLowerCase();
  const major = essence.split('/')[0];
  return allowed.some((a) => {
    const rule = a.trim().toLowerCase();
    return rule === essence || rule === `${major}/*` || rule === '*/*';
  });
}

export type RangeAnswer = { kind: 'full' } | { kind: 'partial'; start: number; end: number } | { kind: 'unsatisfiable' };

/**
 * One `Range: bytes=...` over a file of `size` bytes: `A-B`, `A-` or `-N`. Several ranges, another
 * unit or a malformed header are ignored (the whole file, as RFC 9110 allows); a range that starts
 * past the end is unsatisfiable (416).
 */
export function parseRange(header: string | undefined, size: number): RangeAnswer {
  if (!header) return { kind: 'full' };
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m || (m[1] === '' && m[2] === '')) return { kind: 'full' };
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return { kind: 'unsatisfiable' };
    return size === 0 ? { kind: 'unsatisfiable' } : { kind: 'partial', start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (!Number.isSafeInteger(start) || start >= size) return { kind: 'unsatisfiable' };
  if (end < start) return { kind: 'full' };
  return { kind: 'partial', start, end };
}

/** `Content-Disposition` with an ASCII fallback and the UTF-8 name (RFC 6266 / 8187). */
export function contentDisposition(name: string, disposition: 'attachment' | 'inline'): string {
  const ascii = name.replace(/[^\x20-\x7e]/g, '_').replace(/["\\]/g, '_');
  const encoded = encodeURIComponent(name).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return `${disposition}; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}
