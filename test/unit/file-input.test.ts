/** Parsing of file input: tus Upload-Metadata, file names, media types, Range. */
import { describe, expect, it } from 'vitest';
import { contentDisposition, contentTypeAllowed, normalizeContentType, parseRange, parseUploadMetadata, sanitizeFileName } from '../../src/files/input.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('parseUploadMetadata', () => {
  it('decodes key/base64 pairs, with keys alone as empty values', () => {
    const m = parseUploadMetadata(`filename ${b64('résumé.pdf')},project_id ${b64('p1')},flag`);
    expect(Object.fromEntries(m)).toEqual({ filename: 'résumé.pdf', project_id: 'p1', flag: '' });
    expect(parseUploadMetadata(undefined).size).toBe(0);
  });
  it.each([
    ['huge', `filename ${b64('x'.repeat(5000))}`],
    ['bad base64', 'filename abc$'],
    ['unpadded base64', 'filename YWJj=='],
    ['NUL', `filename ${b64('a\0')}`],
    ['not UTF-8', `filename ${Buffer.from([0xc3, 0x28]).toString('base64')}`],
    ['duplicate', `a ${b64('1')},a ${b64('2')}`],
    ['three parts', `a ${b64('1')} extra`],
    ['bad key', `a/b ${b64('1')}`],
  ])('refuses %s with a 400 FileError', (_what, header) => {
    expect(() => parseUploadMetadata(header)).toThrow(expect.objectContaining({ status: 400, code: 'bad_metadata' }));
  });
});

describe('sanitizeFileName', () => {
  it('keeps the last path segment without control or direction characters', () => {
    expect(sanitizeFileName('../../etc/passwd')).toBe('passwd');
    expect(sanitizeFileName('C:\\Users\\x\\report.pdf')).toBe('report.pdf');
    expect(sanitizeFileName('a\u0007b\u202Etxt.exe')).toBe('abtxt.exe');
    expect(sanitizeFileName('..')).toBe('file');
    expect(sanitizeFileName('')).toBe('file');
    expect(sanitizeFileName(undefined)).toBe('file');
  });
  it('bounds the length and keeps the extension', () => {
    const long = sanitizeFileName(`${'a'.repeat(400)}.jpeg`);
    expect([...long].length).toBe(255);
    expect(long.endsWith('.jpeg')).toBe(true);
  });
});

describe('media types', () => {
  it('normalizes and refuses what is not a media type', () => {
    expect(normalizeContentType(undefined)).toBe('application/octet-stream');
    expect(normalizeContentType('Text/Plain; charset=utf-8')).toBe('text/plain; charset=utf-8');
    expect(() => normalizeContentType('not a type')).toThrow(expect.objectContaining({ status: 400 }));
    expect(() => normalizeContentType('text/plain\r\nX: y')).toThrow(expect.objectContaining({ status: 400 }));
  });
  it('matches the allow-list exactly or by major type; empty allows all', () => {
    expect(contentTypeAllowed('image/png', [])).toBe(true);
    expect(contentTypeAllowed('image/png', ['image/*'])).toBe(true);
    expect(contentTypeAllowed('text/plain; charset=utf-8', ['text/plain'])).toBe(true);
    expect(contentTypeAllowed('text/html', ['text/plain', 'image/*'])).toBe(false);
  });
});

describe('parseRange', () => {
  it('reads one byte range in its three forms', () => {
    expect(parseRange('bytes=0-9', 100)).toEqual({ kind: 'partial', start: 0, end: 9 });
    expect(parseRange('bytes=90-', 100)).toEqual({ kind: 'partial', start: 90, end: 99 });
    expect(parseRange('bytes=-10', 100)).toEqual({ kind: 'partial', start: 90, end: 99 });
    expect(parseRange('bytes=95-200', 100)).toEqual({ kind: 'partial', start: 95, end: 99 });
  });
  it('ignores what it does not serve and refuses a start past the end', () => {
    expect(parseRange(undefined, 100)).toEqual({ kind: 'full' });
    expect(parseRange('bytes=0-1,5-6', 100)).toEqual({ kind: 'full' });
    expect(parseRange('items=0-1', 100)).toEqual({ kind: 'full' });
    expect(parseRange('bytes=9-2', 100)).toEqual({ kind: 'full' });
    expect(parseRange('bytes=100-', 100)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange('bytes=-0', 100)).toEqual({ kind: 'unsatisfiable' });
  });
});

it('writes Content-Disposition with an ASCII fallback and the UTF-8 name', () => {
  expect(contentDisposition('résumé "1".pdf', 'attachment')).toBe(`attachment; filename="r_sum_ _1_.pdf"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.pdf`);
});

describe('file configuration', () => {
  it('has the documented defaults and reads SIDECAR_MAX_UPLOAD_BYTES', async () => {
    const { loadConfig } = await import('../../src/config.js');
    const c = loadConfig({ env: {} });
    expect(c).toMatchObject({ filesBucket: 'WS_FILES', filesReplicas: 1, fileTTL: 0, maxUploadBytes: 100 * 1024 * 1024, maxConcurrentUploads: 4, allowedFileTypes: [], uploadExpiry: 3_600_000 });
    expect(loadConfig({ env: { SIDECAR_MAX_UPLOAD_BYTES: '5000', SIDECAR_ALLOWED_FILE_TYPES: 'image/*,text/plain' } })).toMatchObject({ maxUploadBytes: 5000, allowedFileTypes: ['image/*', 'text/plain'] });
    expect(() => loadConfig({ env: { SIDECAR_MAX_UPLOAD_BYTES: 'lots' } })).toThrow(/maxUploadBytes/);
  });
});

describe('FileError', () => {
  it('is a SidecarError with a stable code, its status, and temporary for what a retry may fix', async () => {
    const { FileError } = await import('../../src/files/errors.js');
    const { SidecarError } = await import('../../src/errors.js');
    const cases: [InstanceType<typeof FileError>, boolean][] = [
      [new FileError('storage_unavailable', 503, 'nats away'), true],
      [new FileError('locked', 423, 'busy'), true],
      [new FileError('too_many_uploads', 429, 'slow down'), true],
      [new FileError('too_large', 413, 'big'), false],
      [new FileError('bad_metadata', 400, 'bad'), false],
    ];
    for (const [err, temporary] of cases) {
      expect(err).toBeInstanceOf(SidecarError);
      expect({ name: err.name, temporary: err.temporary }).toEqual({ name: 'FileError', temporary });
    }
  });
});
