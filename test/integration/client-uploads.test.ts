/**
 * The client SDK's `upload()` and `fileUrl()` against real sidecars: progress, the stored file,
 * resuming on another instance when the one in use goes away, and aborting.
 */
import { createHash } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { Client, ClientError } from '../../src/client/index.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { patternBytes } from '../helpers/file-data.js';

const MB = 1024 * 1024;
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function fleet(n: number): Promise<{ nats: TestNats; sides: TestSidecar[] }> {
  const nats = await startTestNats();
  cleanups.push(() => nats.cleanup());
  const sides = await Promise.all(Array.from({ length: n }, () => startTestSidecar(nats.url)));
  for (const s of sides) cleanups.push(() => s.stop());
  return { nats, sides };
}

function client(urls: string[], token: string): Client {
  const c = new Client({ url: urls, token, WebSocket, minReconnectDelay: 50, maxReconnectDelay: 300 });
  cleanups.push(() => c.close());
  return c;
}

describe('client SDK uploads', () => {
  it('uploads a Blob with progress and resolves with the stored file; fileUrl downloads it', async () => {
    const { sides } = await fleet(1);
    const token = await sides[0].token('alice', { projects: ['p1'] });
    const c = client([sides[0].wsUrl], token);
    await c.connect();
    const bytes = patternBytes(0, 6 * MB + 3);
    const progress: number[] = [];
    const file = await c.upload('p1', new Blob([bytes], { type: 'image/png' }), { name: 'a.png', chunkSize: 2 * MB, onProgress: (sent) => progress.push(sent) });
    expect(file).toMatchObject({ name: 'a.png', size: bytes.length, content_type: 'image/png', project_id: 'p1', uploaded_by: 'alice' });
    expect(file.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
    expect(progress.at(-1)).toBe(bytes.length);
    expect(progress.length).toBeGreaterThanOrEqual(4);
    const res = await fetch(c.fileUrl(file.file_id, { withToken: true }));
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(bytes)).toBe(true);
    expect(c.fileUrl(file.file_id)).toBe(`${sides[0].httpUrl}/api/v1/websocket/files/${file.file_id}`);
  });

  it('resumes on another instance when the one in use goes away mid-upload', { timeout: 60_000 }, async () => {
    const { sides } = await fleet(2);
    const [a, b] = sides;
    const token = await a.token('alice', { projects: ['p1'] });
    const c = client([a.wsUrl, b.wsUrl], token);
    await c.connect();
    const bytes = patternBytes(0, 12 * MB);
    let stopped: Promise<void> | undefined;
    const file = await c.upload('p1', bytes, {
      chunkSize: 1 * MB,
      retryDelays: [100, 200, 400, 800, 1600, 3200],
      onProgress: (sent) => {
        if (sent >= 4 * MB && !stopped) stopped = a.stop();
      },
    });
    await stopped;
    expect(file.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
    expect(c.fileUrl(file.file_id)).toContain(b.httpUrl);
  });

  it('stops when its signal aborts', async () => {
    const { sides } = await fleet(1);
    const token = await sides[0].token('alice', { projects: ['p1'] });
    const c = client([sides[0].wsUrl], token);
    await c.connect();
    const abort = new AbortController();
    const err = await c
      .upload('p1', patternBytes(0, 4 * MB), { chunkSize: 1 * MB, signal: abort.signal, onProgress: (sent) => sent >= 1 * MB && abort.abort() })
      .catch((e) => e);
    expect(err).toBeInstanceOf(ClientError);
    expect(err.code).toBe('aborted');
  });
});
