/**
 * Files through the sidecar against a real nats-server: tus uploads with tus-js-client, the
 * single-request upload, list, download (ETag, Range, If-None-Match), delete, the events they
 * publish, the authorization matrix in every projectAuthorization mode, limits and hostile input.
 */
import { createHash } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';
import { b64, hashBody, patternBytes, patternReader, patternSha256, startTus } from '../helpers/file-data.js';
import { waitFor } from '../helpers/wait.js';

const BASE = '/api/v1/websocket';
let nats: TestNats;
let nc: NatsConnection;
let side: TestSidecar;
let alice: string;
let bob: string;
let admin: string;

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
  side = await startTestSidecar(nats.url, { maxUploadBytes: 8 * 1024 * 1024, allowedFileTypes: ['image/*', 'text/plain', 'application/octet-stream'] });
  alice = await side.token('alice', { projects: ['p1', 'p2'] });
  bob = await side.token('bob', { projects: ['p1'] });
  admin = await side.token('root', { projects: ['*'], roles: ['admin'] });
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await side?.stop();
  await nc?.close();
  await nats?.cleanup();
});

const url = (path: string) => side.httpUrl + path;

async function putFile(token: string, project: string, body: Buffer | string, headers: Record<string, string> = {}) {
  const res = await fetch(url(`${BASE}/projects/${project}/files`), {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'text/plain', 'X-File-Name': 'notes.txt', ...headers },
    body,
  });
  return { status: res.status, body: (await res.json().catch(() => null)) as any, headers: res.headers };
}

function tusUpload(token: string, size: number, metadata: Record<string, string>, extra: Parameters<typeof startTus>[1] = {}) {
  return startTus({}, {
    endpoint: url(`${BASE}/uploads`),
    headers: { Authorization: `Bearer ${token}` },
    metadata,
    uploadSize: size,
    chunkSize: 1024 * 1024,
    fileReader: patternReader(size),
    ...extra,
  });
}

describe('tus upload', () => {
  it('stores the file in the Object Store, announces file_uploaded with seq, and serves it back', async () => {
    const ws = await connectClient(`${side.wsUrl}?token=${bob}`);
    await ws.waitForMessage((m) => m.type === 'auth_success');
    ws.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'p1' } });
    await ws.waitForMessage((m) => m.type === 'subscription');

    const size = 3 * 1024 * 1024 + 12345;
    const run = tusUpload(alice, size, { filename: 'photo.png', filetype: 'image/png', project_id: 'p1' });
    await run.done;
    const fileId = run.upload.url!.split('/').pop()!;

    const event = await ws.waitForMessage((m) => m.type === 'file_uploaded');
    expect(event.seq).toBeGreaterThan(0);
    expect(event.project_id).toBe('p1');
    expect(event.data).toMatchObject({
      file_id: fileId,
      name: 'photo.png',
      size,
      content_type: 'image/png',
      sha256: patternSha256(size),
      project_id: 'p1',
      uploaded_by: 'alice',
      url: `${BASE}/files/${fileId}`,
    });

    // Any Object Store client reads it: the bucket is WS_FILES, the object is named by the file id.
    const os = await new Objm(nc).open('WS_FILES');
    const info = await os.info(fileId);
    expect(info?.size).toBe(size);
    const viaObj = createHash('sha256').update((await os.getBlob(fileId))!).digest('hex');
    expect(viaObj).toBe(patternSha256(size));

    const res = await fetch(url(`${BASE}/files/${fileId}`), { headers: { Authorization: `Bearer ${bob}` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    expect(res.headers.get('content-length')).toBe(String(size));
    expect(res.headers.get('etag')).toBe(`"${patternSha256(size)}"`);
    expect(res.headers.get('accept-ranges')).toBe('bytes');
    expect(await hashBody(res)).toEqual({ sha256: patternSha256(size), size });
  });

  it('answers OPTIONS with the tus version, extensions and max size', async () => {
    const res = await fetch(url(`${BASE}/uploads`), { method: 'OPTIONS' });
    expect(res.status).toBe(204);
    expect(res.headers.get('tus-version')).toBe('1.0.0');
    expect(res.headers.get('tus-extension')).toBe('creation,termination,expiration');
    expect(res.headers.get('tus-max-size')).toBe(String(8 * 1024 * 1024));
  });

  it('terminates an upload: its stored bytes are deleted and it is gone', async () => {
    const create = await fetch(url(`${BASE}/uploads`), {
      method: 'POST',
      headers: { Authorization: `Bearer ${alice}`, 'Tus-Resumable': '1.0.0', 'Upload-Length': '1000', 'Upload-Metadata': `project_id ${b64('p1')}` },
    });
    expect(create.status).toBe(201);
    expect(create.headers.get('upload-expires')).toBeTruthy();
    const location = create.headers.get('location')!;
    const patch = await fetch(url(location), {
      method: 'PATCH',
      headers: { Authorization: `Bearer ${alice}`, 'Tus-Resumable': '1.0.0', 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream' },
      body: patternBytes(0, 400),
    });
    expect(patch.status).toBe(204);
    expect(patch.headers.get('upload-offset')).toBe('400');
    const wrongOffset = await fetch(url(location), {
      method: 'PATCH',
      headers: { Authorization: `Bearer ${alice}`, 'Tus-Resumable': '1.0.0', 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream' },
      body: patternBytes(0, 10),
    });
    expect(wrongOffset.status).toBe(409);
    const del = await fetch(url(location), { method: 'DELETE', headers: { Authorization: `Bearer ${alice}`, 'Tus-Resumable': '1.0.0' } });
    expect(del.status).toBe(204);
    const head = await fetch(url(location), { method: 'HEAD', headers: { Authorization: `Bearer ${alice}`, 'Tus-Resumable': '1.0.0' } });
    expect(head.status).toBe(404);
    const jsm = await jetstreamManager(nc);
    const si = await jsm.streams.info('OBJ_WS_FILES', { subjects_filter: `$O.WS_FILES.C.${location.split('/').pop()}` });
    expect(si.state.subjects ?? {}).toEqual({});
  });
});

describe('buckets', () => {
  it('are created with the configured TTL (fileTTL) for files and the index', async () => {
    const other = await startTestNats();
    try {
      const s = await startTestSidecar(other.url, { fileTTL: '2h', filesBucket: 'TTL_FILES' });
      await s.stop();
      const { connect } = await import('@nats-io/transport-node');
      const c = await connect({ servers: other.url });
      const jsm = await jetstreamManager(c);
      const twoHours = 2 * 3600 * 1e9;
      expect((await jsm.streams.info('OBJ_TTL_FILES')).config.max_age).toBe(twoHours);
      expect((await jsm.streams.info('KV_TTL_FILES_INDEX')).config.max_age).toBe(twoHours);
      expect((await jsm.streams.info('KV_TTL_FILES_UPLOADS')).config.max_age).toBe(0);
      await c.close();
    } finally {
      await other.cleanup();
    }
  });
});

describe('missing buckets', () => {
  it('are created again when an operator deleted them: requests answer 503 until then', async () => {
    const other = await startTestNats();
    const s = await startTestSidecar(other.url);
    try {
      const token = await s.token('hank');
      const { connect } = await import('@nats-io/transport-node');
      const c = await connect({ servers: other.url });
      const jsm = await jetstreamManager(c);
      for (const name of ['OBJ_WS_FILES', 'KV_WS_FILES_UPLOADS', 'KV_WS_FILES_INDEX']) await jsm.streams.delete(name);
      const post = () =>
        fetch(`${s.httpUrl}${BASE}/projects/p1/files`, { method: 'POST', headers: { Authorization: `Bearer ${token}` }, body: 'again' }).then((r) => r.status);
      const first = await post();
      expect([201, 503]).toContain(first);
      await waitFor(async () => (await post()) === 201, 10_000, 'upload accepted again');
      const create = await fetch(`${s.httpUrl}${BASE}/uploads`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Tus-Resumable': '1.0.0', 'Upload-Length': '5', 'Upload-Metadata': `project_id ${b64('p1')}` },
      });
      expect(create.status).toBe(201);
      await c.close();
    } finally {
      await s.stop();
      await other.cleanup();
    }
  });
});

describe('stored chunks that do not follow on', () => {
  it('are deleted when the upload is next read; the offset is where the contiguous bytes end', async () => {
    const create = await fetch(url(`${BASE}/uploads`), {
      method: 'POST',
      headers: { Authorization: `Bearer ${alice}`, 'Tus-Resumable': '1.0.0', 'Upload-Length': '3000', 'Upload-Metadata': `project_id ${b64('p1')}` },
    });
    const location = create.headers.get('location')!;
    const id = location.split('/').pop()!;
    const tus = { Authorization: `Bearer ${alice}`, 'Tus-Resumable': '1.0.0' };
    await fetch(url(location), { method: 'PATCH', headers: { ...tus, 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream' }, body: patternBytes(0, 1000) });
    // What a reconnect in the middle of a pipelined write can leave: a chunk after a lost one.
    const { jetstream } = await import('@nats-io/jetstream');
    const { headers } = await import('@nats-io/transport-node');
    const h = headers();
    h.set('Ws-Upload-Offset', '2000');
    await jetstream(nc).publish(`$O.WS_FILES.C.${id}`, patternBytes(2000, 2500), { headers: h });
    const head = await fetch(url(location), { method: 'HEAD', headers: tus });
    expect(head.headers.get('upload-offset')).toBe('1000');
    const jsm = await jetstreamManager(nc);
    const si = await jsm.streams.info('OBJ_WS_FILES', { subjects_filter: `$O.WS_FILES.C.${id}` });
    expect(si.state.subjects?.[`$O.WS_FILES.C.${id}`]).toBe(1);
    const rest = await fetch(url(location), { method: 'PATCH', headers: { ...tus, 'Upload-Offset': '1000', 'Content-Type': 'application/offset+octet-stream' }, body: patternBytes(1000, 3000) });
    expect(rest.status).toBe(204);
    const res = await fetch(url(`${BASE}/files/${id}`), { headers: { Authorization: `Bearer ${alice}` } });
    expect(Buffer.from(await res.arrayBuffer()).equals(patternBytes(0, 3000))).toBe(true);
  });
});

describe('single-request upload, list, download, delete', () => {
  let file: any;
  const text = 'hello, files\n'.repeat(1000);

  beforeAll(async () => {
    const put = await putFile(alice, 'p1', text, { 'X-File-Name': '../../etc/pass%07wd.txt' });
    expect(put.status).toBe(201);
    file = put.body;
  });

  it('answers 201 with the file object (name sanitised)', () => {
    expect(file).toMatchObject({
      name: 'passwd.txt',
      size: text.length,
      content_type: 'text/plain',
      sha256: createHash('sha256').update(text).digest('hex'),
      project_id: 'p1',
      uploaded_by: 'alice',
      url: `${BASE}/files/${file.file_id}`,
    });
    expect(file.file_id).toMatch(/^[A-Za-z0-9_-]+$/);
  });

  it('serves a Range with 206 and exactly those bytes, and If-None-Match with 304', async () => {
    const auth = { Authorization: `Bearer ${bob}` };
    const part = await fetch(url(file.url), { headers: { ...auth, Range: 'bytes=13-25' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 13-25/${text.length}`);
    expect(part.headers.get('content-length')).toBe('13');
    expect(await part.text()).toBe(text.slice(13, 26));
    const suffix = await fetch(url(file.url), { headers: { ...auth, Range: 'bytes=-5' } });
    expect(suffix.status).toBe(206);
    expect(await suffix.text()).toBe(text.slice(-5));
    const beyond = await fetch(url(file.url), { headers: { ...auth, Range: `bytes=${text.length}-` } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${text.length}`);
    const cached = await fetch(url(file.url), { headers: { ...auth, 'If-None-Match': `"${file.sha256}"` } });
    expect(cached.status).toBe(304);
    expect(cached.headers.get('etag')).toBe(`"${file.sha256}"`);
  });

  it('honours If-Range: a Range with a matching ETag gets 206, with another validator the whole file with 200', async () => {
    const auth = { Authorization: `Bearer ${bob}` };
    const same = await fetch(url(file.url), { headers: { ...auth, Range: 'bytes=1-2', 'If-Range': `"${file.sha256}"` } });
    expect(same.status).toBe(206);
    expect(await same.text()).toBe(text.slice(1, 3));
    for (const validator of ['"another"', `W/"${file.sha256}"`, 'Wed, 21 Oct 2015 07:28:00 GMT']) {
      const other = await fetch(url(file.url), { headers: { ...auth, Range: 'bytes=1-2', 'If-Range': validator } });
      expect(other.status, `If-Range: ${validator}`).toBe(200);
      expect(other.headers.get('content-range')).toBeNull();
      expect(await other.text()).toBe(text);
    }
  });

  it('leaves no consumer behind on the files stream after downloads (nats.js keeps an ordered one 5 minutes)', async () => {
    const jsm = await jetstreamManager(nc);
    const consumers = async () => {
      const names: string[] = [];
      for await (const ci of jsm.consumers.list('OBJ_WS_FILES')) names.push(ci.name);
      return names;
    };
    const before = new Set(await consumers()); // other tests' readers (the test's own Objm reads) are not ours
    const auth = { Authorization: `Bearer ${bob}` };
    for (let i = 0; i < 3; i++) expect(await (await fetch(url(file.url), { headers: auth })).text()).toBe(text);
    const left = async () => (await consumers()).filter((n) => !before.has(n));
    await waitFor(async () => (await left()).length === 0, 5_000, "the downloads' consumers deleted").catch(async (e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify(await left())}`);
    });
  });

  it('serves a range deep inside a large file from the right chunk', async () => {
    const size = 5 * 1024 * 1024 + 7;
    const put = await putFile(alice, 'p1', patternBytes(0, size), { 'Content-Type': 'application/octet-stream' });
    expect(put.status).toBe(201);
    const start = 4 * 1024 * 1024 + 100;
    const res = await fetch(url(put.body.url), { headers: { Authorization: `Bearer ${alice}`, Range: `bytes=${start}-${start + 300_000}` } });
    expect(res.status).toBe(206);
    expect(Buffer.from(await res.arrayBuffer()).equals(patternBytes(start, start + 300_001))).toBe(true);
  });

  it('takes ?token= on downloads, and lists the project files', async () => {
    const res = await fetch(url(`${file.url}?token=${bob}`));
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(text);
    const list = await fetch(url(`${BASE}/projects/p1/files`), { headers: { Authorization: `Bearer ${bob}` } });
    expect(list.status).toBe(200);
    const body: any = await list.json();
    expect(body.files.map((f: any) => f.file_id)).toContain(file.file_id);
    expect(body.files.find((f: any) => f.file_id === file.file_id)).toMatchObject({ name: 'passwd.txt', sha256: file.sha256 });
  });

  it('deletes for the uploader (204, file_deleted) and refuses other users (403)', async () => {
    const ws = await connectClient(`${side.wsUrl}?token=${bob}`);
    await ws.waitForMessage((m) => m.type === 'auth_success');
    ws.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'p1' } });
    await ws.waitForMessage((m) => m.type === 'subscription');
    const put = await putFile(alice, 'p1', 'to be deleted');
    const target = `${BASE}/files/${put.body.file_id}`;
    const byBob = await fetch(url(target), { method: 'DELETE', headers: { Authorization: `Bearer ${bob}` } });
    expect(byBob.status).toBe(403);
    const byAlice = await fetch(url(target), { method: 'DELETE', headers: { Authorization: `Bearer ${alice}` } });
    expect(byAlice.status).toBe(204);
    const deleted = await ws.waitForMessage((m) => m.type === 'file_deleted');
    expect(deleted.data).toMatchObject({ file_id: put.body.file_id, project_id: 'p1' });
    expect(deleted.seq).toBeGreaterThan(0);
    expect((await fetch(url(target), { headers: { Authorization: `Bearer ${alice}` } })).status).toBe(404);
    const list: any = await (await fetch(url(`${BASE}/projects/p1/files`), { headers: { Authorization: `Bearer ${alice}` } })).json();
    expect(list.files.map((f: any) => f.file_id)).not.toContain(put.body.file_id);
    // An admin deletes anyone's file.
    const other = await putFile(bob, 'p1', 'bob file');
    expect((await fetch(url(`${BASE}/files/${other.body.file_id}`), { method: 'DELETE', headers: { Authorization: `Bearer ${admin}` } })).status).toBe(204);
  });
});

describe('authorization (claims mode)', () => {
  let fileInP2: string;
  beforeAll(async () => {
    fileInP2 = (await putFile(alice, 'p2', 'secret')).body.file_id;
  });

  it('refuses requests without a valid token with 401', async () => {
    const bad = { Authorization: 'Bearer not-a-jwt' };
    expect((await fetch(url(`${BASE}/files/${fileInP2}`))).status).toBe(401);
    expect((await fetch(url(`${BASE}/files/${fileInP2}`), { headers: bad })).status).toBe(401);
    expect((await fetch(url(`${BASE}/projects/p2/files`))).status).toBe(401);
    expect((await fetch(url(`${BASE}/projects/p2/files`), { method: 'POST', body: 'x' })).status).toBe(401);
    const tus = await fetch(url(`${BASE}/uploads`), { method: 'POST', headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '1' } });
    expect(tus.status).toBe(401);
    expect(tus.headers.get('tus-resumable')).toBe('1.0.0');
  });

  it('refuses a user who may not see the project with 403, everywhere', async () => {
    expect((await fetch(url(`${BASE}/files/${fileInP2}`), { headers: { Authorization: `Bearer ${bob}` } })).status).toBe(403);
    expect((await fetch(url(`${BASE}/files/${fileInP2}?token=${bob}`))).status).toBe(403);
    expect((await fetch(url(`${BASE}/projects/p2/files`), { headers: { Authorization: `Bearer ${bob}` } })).status).toBe(403);
    expect((await putFile(bob, 'p2', 'x')).status).toBe(403);
    const tus = await fetch(url(`${BASE}/uploads`), {
      method: 'POST',
      headers: { Authorization: `Bearer ${bob}`, 'Tus-Resumable': '1.0.0', 'Upload-Length': '1', 'Upload-Metadata': `project_id ${b64('p2')}` },
    });
    expect(tus.status).toBe(403);
    expect((await fetch(url(`${BASE}/files/${fileInP2}`), { method: 'DELETE', headers: { Authorization: `Bearer ${bob}` } })).status).toBe(403);
  });

  it('answers 404 for unknown files and for another user\'s upload', async () => {
    expect((await fetch(url(`${BASE}/files/no-such-file`), { headers: { Authorization: `Bearer ${alice}` } })).status).toBe(404);
    expect((await fetch(url(`${BASE}/files/..%2F..%2Fetc`), { headers: { Authorization: `Bearer ${alice}` } })).status).toBe(404);
    const create = await fetch(url(`${BASE}/uploads`), {
      method: 'POST',
      headers: { Authorization: `Bearer ${alice}`, 'Tus-Resumable': '1.0.0', 'Upload-Length': '10', 'Upload-Metadata': `project_id ${b64('p1')}` },
    });
    const location = create.headers.get('location')!;
    const asBob = await fetch(url(location), { method: 'HEAD', headers: { Authorization: `Bearer ${bob}`, 'Tus-Resumable': '1.0.0' } });
    expect(asBob.status).toBe(404);
  });
});

describe('authorization (request and open modes)', () => {
  let requestSide: TestSidecar;
  let openSide: TestSidecar;
  let responder: Subscription;

  beforeAll(async () => {
    responder = nc.subscribe('ws.authz.project', {
      callback: (_err, msg) => {
        const req = msg.json<{ project_id: string }>();
        msg.respond(JSON.stringify({ allow: req.project_id.startsWith('ok-') }));
      },
    });
    await nc.flush();
    [requestSide, openSide] = await Promise.all([
      startTestSidecar(nats.url, { projectAuthorization: 'request', authorizationCacheTTL: 0 }),
      startTestSidecar(nats.url, { projectAuthorization: 'open' }),
    ]);
  });
  afterAll(async () => {
    responder?.unsubscribe();
    await Promise.all([requestSide?.stop(), openSide?.stop()]);
  });

  it('asks the backend in request mode, for uploads and downloads', async () => {
    const carol = await requestSide.token('carol', { projects: [] });
    const post = (project: string) =>
      fetch(`${requestSide.httpUrl}${BASE}/projects/${project}/files`, { method: 'POST', headers: { Authorization: `Bearer ${carol}`, 'X-File-Name': 'a.txt' }, body: 'abc' });
    const ok = await post('ok-1');
    expect(ok.status).toBe(201);
    expect((await post('no-1')).status).toBe(403);
    const { file_id } = (await ok.json()) as any;
    expect((await fetch(`${requestSide.httpUrl}${BASE}/files/${file_id}?token=${carol}`)).status).toBe(200);
    // A file in a project the backend refuses (put there by an admin through the claims-mode instance):
    const noFile: any = await (await fetch(url(`${BASE}/projects/no-1/files`), { method: 'POST', headers: { Authorization: `Bearer ${admin}` }, body: 'z' })).json();
    expect((await fetch(`${requestSide.httpUrl}${BASE}/files/${noFile.file_id}?token=${carol}`)).status).toBe(403);
  });

  it('applies a revocation to downloads at once, though answers are cached (request mode)', async () => {
    let allowed = true;
    const sub = nc.subscribe('ws.authz.cached', {
      callback: (_err, msg) => void msg.respond(JSON.stringify({ allow: allowed })),
    });
    await nc.flush();
    const cached = await startTestSidecar(nats.url, { projectAuthorization: 'request', authorizationSubject: 'ws.authz.cached', authorizationCacheTTL: '10m' });
    try {
      const gina = await cached.token('gina', { projects: [] });
      const put: any = await (await fetch(`${cached.httpUrl}${BASE}/projects/rv/files`, { method: 'POST', headers: { Authorization: `Bearer ${gina}` }, body: 'r' })).json();
      const download = () => fetch(`${cached.httpUrl}${BASE}/files/${put.file_id}?token=${gina}`).then((r) => r.status);
      expect(await download()).toBe(200);
      allowed = false;
      expect(await download()).toBe(200); // the cached answer
      const { publishRevocation } = await import('../../src/nats/project-authorizer.js');
      publishRevocation(nc, 'ws', 'gina', 'rv');
      await waitFor(async () => (await download()) === 403, 5000, 'revocation applied');
    } finally {
      sub.unsubscribe();
      await cached.stop();
    }
  });

  it('lets any authenticated user in open mode', async () => {
    const dave = await openSide.token('dave', { projects: [] });
    const res = await fetch(`${openSide.httpUrl}${BASE}/projects/anything/files`, { method: 'POST', headers: { Authorization: `Bearer ${dave}` }, body: 'abc' });
    expect(res.status).toBe(201);
  });
});

describe('limits and hostile input', () => {
  const create = (token: string, headers: Record<string, string>) =>
    fetch(url(`${BASE}/uploads`), { method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Tus-Resumable': '1.0.0', ...headers } });

  it('refuses hostile Upload-Metadata with 400 (huge, bad base64, NUL, not UTF-8, duplicate, no project)', async () => {
    const cases = [
      `project_id ${b64('p1')},filename ${b64('x'.repeat(6000))}`,
      `project_id ${b64('p1')},filename not*base64`,
      `project_id ${b64('p1')},filename ${b64('a\0b')}`,
      `project_id ${b64('p1')},filename ${Buffer.from([0xff, 0xfe]).toString('base64')}`,
      `project_id ${b64('p1')},project_id ${b64('p2')}`,
      `filename ${b64('a.txt')}`,
      `project_id ${b64('../p1')}`,
      `project_id ${b64('p1')},filetype ${b64('not a type')}`,
    ];
    for (const meta of cases) {
      const res = await create(alice, { 'Upload-Length': '10', 'Upload-Metadata': meta });
      expect(res.status, meta.slice(0, 60)).toBe(400);
      expect(((await res.json()) as any).error).toBeTruthy();
    }
    expect((await create(alice, { 'Upload-Length': '-1', 'Upload-Metadata': `project_id ${b64('p1')}` })).status).toBe(400);
    expect((await create(alice, { 'Upload-Metadata': `project_id ${b64('p1')}` })).status).toBe(400);
    expect((await fetch(url(`${BASE}/uploads`), { method: 'POST', headers: { Authorization: `Bearer ${alice}`, 'Upload-Length': '1' } })).status).toBe(412);
  });

  it('answers 413 above maxUploadBytes (Upload-Length, Content-Length, and a body that keeps going)', async () => {
    const big = String(8 * 1024 * 1024 + 1);
    expect((await create(alice, { 'Upload-Length': big, 'Upload-Metadata': `project_id ${b64('p1')}` })).status).toBe(413);
    const declared = await fetch(url(`${BASE}/projects/p1/files`), {
      method: 'POST',
      headers: { Authorization: `Bearer ${alice}`, 'Content-Length': big },
      body: new ReadableStream({ start: (c) => c.close() }),
      duplex: 'half',
    }).catch((err) => err);
    // Refused before the body is read: either the 413 arrives or the socket is closed under the upload.
    if (declared instanceof Response) expect(declared.status).toBe(413);
    let sent = 0;
    const endless = new ReadableStream({
      pull(c) {
        sent += 1 << 20;
        if (sent > 20 * (1 << 20)) return c.close();
        c.enqueue(patternBytes(0, 1 << 20));
      },
    });
    const chunked = await fetch(url(`${BASE}/projects/p1/files`), {
      method: 'POST',
      headers: { Authorization: `Bearer ${alice}` },
      body: endless,
      duplex: 'half',
    }).catch((err) => err);
    if (chunked instanceof Response) expect(chunked.status).toBe(413);
    else expect(sent).toBeLessThan(20 * (1 << 20)); // the server stopped reading well before the end
  });

  it('refuses a content type outside the allow-list with 415', async () => {
    expect((await putFile(alice, 'p1', 'x', { 'Content-Type': 'application/x-msdownload' })).status).toBe(415);
    const res = await create(alice, { 'Upload-Length': '1', 'Upload-Metadata': `project_id ${b64('p1')},filetype ${b64('text/html')}` });
    expect(res.status).toBe(415);
  });

  it('limits uploads streaming at once per user (429)', async () => {
    const limited = await startTestSidecar(nats.url, { maxConcurrentUploads: 1 });
    try {
      const erin = await limited.token('erin');
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      let pulled!: () => void;
      const started = new Promise<void>((r) => (pulled = r));
      const slow = new ReadableStream({
        async pull(c) {
          c.enqueue(new Uint8Array(1000));
          pulled();
          await held;
          c.close();
        },
      });
      const first = fetch(`${limited.httpUrl}${BASE}/projects/p1/files`, { method: 'POST', headers: { Authorization: `Bearer ${erin}` }, body: slow, duplex: 'half' });
      await started;
      await waitFor(() => (limited.sidecar.files as any).active.get('erin') === 1, 5000, 'first upload admitted');
      const second = await fetch(`${limited.httpUrl}${BASE}/projects/p1/files`, { method: 'POST', headers: { Authorization: `Bearer ${erin}` }, body: 'x' });
      expect(second.status).toBe(429);
      release();
      expect((await first).status).toBe(201);
    } finally {
      await limited.stop();
    }
  });

  it('expires a stalled upload and deletes its partial data', async () => {
    const short = await startTestSidecar(nats.url, { uploadExpiry: '1s' });
    try {
      const frank = await short.token('frank');
      const res = await fetch(`${short.httpUrl}${BASE}/uploads`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${frank}`, 'Tus-Resumable': '1.0.0', 'Upload-Length': '100000', 'Upload-Metadata': `project_id ${b64('p1')}` },
      });
      const location = res.headers.get('location')!;
      const id = location.split('/').pop()!;
      await fetch(`${short.httpUrl}${location}`, {
        method: 'PATCH',
        headers: { Authorization: `Bearer ${frank}`, 'Tus-Resumable': '1.0.0', 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream' },
        body: patternBytes(0, 5000),
      });
      const jsm = await jetstreamManager(nc);
      const chunks = async () => (await jsm.streams.info('OBJ_WS_FILES', { subjects_filter: `$O.WS_FILES.C.${id}` })).state.subjects?.[`$O.WS_FILES.C.${id}`] ?? 0;
      expect(await chunks()).toBe(1);
      await waitFor(async () => (await short.sidecar.files!.sweep()) > 0 || (await chunks()) === 0, 10_000, 'upload swept');
      expect(await chunks()).toBe(0);
      const head = await fetch(`${short.httpUrl}${location}`, { method: 'HEAD', headers: { Authorization: `Bearer ${frank}`, 'Tus-Resumable': '1.0.0' } });
      expect(head.status).toBe(404);
    } finally {
      await short.stop();
    }
  });
});
