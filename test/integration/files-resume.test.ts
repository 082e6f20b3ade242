/**
 * Resumable uploads across the fleet and across NATS faults, with tus-js-client: a 50 MB upload
 * interrupted on one instance (it shuts down) is resumed on another, and an upload whose NATS goes
 * away gets a clear 503, then resumes once NATS is back. The data is generated slice by slice and
 * hashed as a stream: no 50 MB buffer in the test.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { DetailedError } from 'tus-js-client';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';
import { hashBody, patternReader, patternSha256, startTus } from '../helpers/file-data.js';
import { waitFor } from '../helpers/wait.js';

const BASE = '/api/v1/websocket';
const MB = 1024 * 1024;
const cleanups: (() => Promise<void>)[] = [];
afterEach(() => closeAllClients());
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function nats(): Promise<TestNats> {
  const n = await startTestNats();
  cleanups.push(() => n.cleanup());
  return n;
}
async function sidecar(url: string): Promise<TestSidecar> {
  const s = await startTestSidecar(url);
  cleanups.push(() => s.stop());
  return s;
}

/** Offsets the server reported on HEAD requests of a run. */
function headOffsets(into: number[]) {
  return {
    onAfterResponse(req: { getMethod(): string }, res: { getHeader(name: string): string | undefined }) {
      if (req.getMethod() === 'HEAD') into.push(Number(res.getHeader('Upload-Offset')));
    },
  };
}

describe('resumable uploads', () => {
  it('resumes a 50 MB upload interrupted on one instance on another, with every byte intact', { timeout: 90_000 }, async () => {
    const n = await nats();
    const [a, b] = await Promise.all([sidecar(n.url), sidecar(n.url)]);
    const token = await a.token('alice', { projects: ['p1'] });
    const size = 50 * MB;
    const watcher = await connectClient(`${b.wsUrl}?token=${token}`);
    await watcher.waitForMessage((m) => m.type === 'auth_success');
    watcher.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'p1' } });
    await watcher.waitForMessage((m) => m.type === 'subscription');

    const options = {
      headers: { Authorization: `Bearer ${token}` },
      metadata: { filename: 'big.bin', filetype: 'application/octet-stream', project_id: 'p1' },
      uploadSize: size,
      chunkSize: 8 * MB,
      fileReader: patternReader(size),
    };
    let stopping: Promise<void> | undefined;
    const first = startTus({}, {
      ...options,
      endpoint: `${a.httpUrl}${BASE}/uploads`,
      onProgress: (sent) => {
        if (sent >= 20 * MB && !stopping) stopping = a.stop(); // instance A goes away mid-request
      },
    });
    await expect(first.done).rejects.toBeTruthy();
    await stopping;
    const path = new URL(first.upload.url!).pathname;

    const offsets: number[] = [];
    const second = startTus({}, { ...options, uploadUrl: `${b.httpUrl}${path}`, retryDelays: [100, 300, 1000, 2000], ...headOffsets(offsets) });
    await second.done;
    // B continued where A's stored bytes end: at least the 16 MB of the first two whole requests.
    expect(offsets[0]).toBeGreaterThanOrEqual(16 * MB);
    expect(offsets[0]).toBeLessThan(size);

    const fileId = path.split('/').pop()!;
    const event = await watcher.waitForMessage((m) => m.type === 'file_uploaded', 10_000);
    expect(event.data).toMatchObject({ file_id: fileId, size, sha256: patternSha256(size), uploaded_by: 'alice' });
    const res = await fetch(`${b.httpUrl}${BASE}/files/${fileId}`, { headers: { Authorization: `Bearer ${token}` } });
    expect(res.status).toBe(200);
    expect(await hashBody(res)).toEqual({ sha256: patternSha256(size), size });
  });

  it('answers 503 when NATS goes away mid-upload, and the upload resumes once NATS is back', { timeout: 90_000 }, async () => {
    const n = await nats();
    const s = await sidecar(n.url);
    const token = await s.token('alice', { projects: ['p1'] });
    const size = 20 * MB;
    const options = {
      headers: { Authorization: `Bearer ${token}` },
      metadata: { filename: 'mid.bin', project_id: 'p1' },
      uploadSize: size,
      chunkSize: 4 * MB,
      fileReader: patternReader(size),
    };
    let down: Promise<void> | undefined;
    const first = startTus({}, {
      ...options,
      endpoint: `${s.httpUrl}${BASE}/uploads`,
      onProgress: (sent) => {
        if (sent >= 6 * MB && !down) down = n.stop();
      },
    });
    const err = (await first.done.catch((e) => e)) as DetailedError;
    await down;
    expect(err.originalResponse?.getStatus()).toBe(503);
    expect(JSON.parse(err.originalResponse!.getBody())).toMatchObject({ code: 'storage_unavailable' });

    await n.restart();
    await waitFor(() => s.sidecar.broker.connected, 20_000, 'sidecar reconnected to NATS');
    const offsets: number[] = [];
    const path = new URL(first.upload.url!).pathname;
    const second = startTus({}, { ...options, uploadUrl: `${s.httpUrl}${path}`, retryDelays: [200, 500, 1000, 2000, 4000], ...headOffsets(offsets) });
    await second.done;
    expect(offsets.at(-1)).toBeGreaterThanOrEqual(4 * MB);
    const res = await fetch(`${s.httpUrl}${BASE}/files/${path.split('/').pop()}`, { headers: { Authorization: `Bearer ${token}` } });
    expect(await hashBody(res)).toEqual({ sha256: patternSha256(size), size });

    // A download whose NATS goes away breaks off (the client sees an error, not a short file).
    const download = await fetch(`${s.httpUrl}${BASE}/files/${path.split('/').pop()}`, { headers: { Authorization: `Bearer ${token}` } });
    const reader = download.body!.getReader();
    await reader.read();
    await n.stop();
    let received = 0;
    const outcome = await (async () => {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return 'ended';
        received += value.length;
      }
    })().catch(() => 'broken');
    expect(outcome).toBe('broken');
    expect(received).toBeLessThan(size);
  });
});
