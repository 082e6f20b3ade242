/**
 * The sidecar started before its NATS (containers started together, NATS rescheduled): the
 * process keeps running and retrying; alive but not ready, upgrades refused with 503 and
 * Retry-After; ready within 5 s of NATS answering; only a signal stops it.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { freePort } from '../helpers/ports.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';
import { waitFor } from '../helpers/wait.js';

const root = join(import.meta.dirname, '..', '..');
let nats: TestNats | undefined;
let side: TestSidecar | undefined;

afterEach(async () => {
  await closeAllClients();
  await side?.stop();
  await nats?.cleanup();
  side = undefined;
  nats = undefined;
});

async function get(url: string): Promise<{ status: number; body: any; retryAfter: string | null }> {
  const res = await fetch(url);
  return { status: res.status, body: await res.json(), retryAfter: res.headers.get('retry-after') };
}

/** The raw answer to a WebSocket upgrade request: status line and headers. */
function upgradeAnswer(port: number): Promise<{ status: number; headers: Record<string, string | string[] | undefined> }> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      path: '/ws/connect',
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' },
    });
    req.on('response', (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
    });
    req.on('upgrade', () => reject(new Error('upgraded while NATS was unreachable')));
    req.on('error', reject);
    req.end();
  });
}

describe('started before NATS', () => {
  it('is alive but not ready and refuses upgrades with 503 + Retry-After, then is ready within 5 s of NATS answering', async () => {
    const natsPort = await freePort();
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const starting = startTestSidecar(`nats://127.0.0.1:${natsPort}`, { port });
    let started = false;
    void starting.then(() => (started = true), () => {});
    await waitFor(async () => (await fetch(`${base}/healthz`).then((r) => r.status, () => 0)) === 200, 10_000, 'the port answers');

    expect((await get(`${base}/healthz`)).status).toBe(200);
    const ready = await get(`${base}/readyz`);
    expect(ready).toMatchObject({ status: 503, body: { ready: false, nats: false } });
    const upgrade = await upgradeAnswer(port);
    expect(upgrade.status).toBe(503);
    expect(Number(upgrade.headers['retry-after'])).toBeGreaterThan(0);
    const apiCall = await get(`${base}/api/v1/websocket/connections/count`);
    expect(apiCall.status).toBe(503);
    expect(Number(apiCall.retryAfter)).toBeGreaterThan(0);
    expect(started).toBe(false);

    nats = await startTestNats({ port: natsPort });
    const answeredAt = Date.now();
    side = await starting;
    await waitFor(async () => (await get(`${base}/readyz`)).status === 200, 5_000, 'ready');
    expect(Date.now() - answeredAt).toBeLessThan(5_000);
    const c = await connectClient(`${side.wsUrl}?token=${await side.token('u-late')}`);
    await c.waitForMessage((m) => m.type === 'auth_success');
  }, 30_000);

  it('keeps retrying without exiting, logging each attempt at a bounded rate, and exits 0 on SIGTERM', async () => {
    const natsPort = await freePort();
    const port = await freePort();
    const child = spawn(process.execPath, [join(root, 'bin', 'nats-ws-sidecar.js')], {
      cwd: root,
      env: {
        PATH: process.env.PATH ?? '',
        PORT: String(port),
        HOST: '127.0.0.1',
        NATS_URL: `nats://127.0.0.1:${natsPort}`,
        JWT_SECRET: 'test-secret-that-is-long-enough-for-hs256-0123456789',
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await waitFor(() => (out.match(/NATS is not reachable/g) ?? []).length >= 4, 30_000, 'four logged attempts');
      await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.status, () => 0)) === 200, 5_000);
      expect(child.exitCode).toBeNull();
      const count = (out.match(/NATS is not reachable/g) ?? []).length;
      // Backoff: at most one attempt per 250 ms at first, then one per 2 s; never a busy loop.
      await new Promise((r) => setTimeout(r, 2_500));
      expect((out.match(/NATS is not reachable/g) ?? []).length - count).toBeLessThanOrEqual(3);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  }, 60_000);
});
