/**
 * The process as a new user runs it: `nats-ws-sidecar` with no NATS_URL and no JWT key starts an
 * embedded nats-server, prints a dev token and the URL; a ws client with that token receives a
 * task_created published to ws.project.<id>, with its seq. Also `npm run token` and config errors.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { publisher, event } from '../helpers/sidecar.js';
import { connectClient, closeAllClients } from '../helpers/ws-client.js';

const root = join(import.meta.dirname, '..', '..');
const bin = join(root, 'bin', 'nats-ws-sidecar.js');
let dataDir: string;
let child: ChildProcess | undefined;

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'cli-test-'));
  // `npm test` builds first; when vitest runs alone, build here rather than inside a test's timeout.
  await promisify(execFile)(process.execPath, ['-e', "import('./bin/ensure-built.js').then((m) => m.ensureBuilt())"], { cwd: root });
}, 120_000);
afterAll(async () => {
  await closeAllClients();
  if (child && child.exitCode === null) {
    child.kill('SIGKILL');
    await new Promise((r) => child!.once('exit', r));
  }
  await rm(dataDir, { recursive: true, force: true });
});

/** Collect stdout+stderr and resolve when `pattern` shows up. */
function waitForOutput(proc: ChildProcess, pattern: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> {
  let text = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${pattern} in output:\n${text}`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      const m = text.match(pattern);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited ${code} before ${pattern}:\n${text}`));
    });
  });
}

const env = (extra: Record<string, string>) => {
  const e: Record<string, string> = { ...(process.env as Record<string, string>), ...extra };
  for (const k of ['NATS_URL', 'JWT_SECRET', 'JWT_PUBLIC_KEY', 'JWT_JWKS_URL', 'NODE_ENV', 'PORT']) if (!(k in extra)) delete e[k];
  return e;
};

describe('the nats-ws-sidecar command', () => {
  it('runs with embedded NATS and a dev token that receives a published task_created with seq', async () => {
    child = spawn(process.execPath, [bin], {
      cwd: root,
      env: env({ PORT: '0', HOST: '127.0.0.1', SIDECAR_DATA_DIR: dataDir, SIDECAR_EMBEDDED_NATS_PORT: '0', LOG_LEVEL: 'info' }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const natsUrl = (await waitForOutput(child, /embedded NATS server running at (nats:\/\/[\d.]+:\d+)/))[1];
    const connectUrl = (await waitForOutput(child, /Connect: (ws:\/\/\S+\/ws\/connect\?token=\S+)/))[1];

    const ws = await connectClient(connectUrl);
    expect((await ws.waitForMessage()).data.user_id).toBe('demo');
    ws.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'demo-project' } });
    await ws.waitForMessage((m) => m.type === 'subscription');
    const nc = await publisher(natsUrl);
    nc.publish('ws.project.demo-project', event('task_created', { id: 'task-1', title: 'Hello' }));
    await nc.flush();
    const got = await ws.waitForMessage((m) => m.type === 'task_created');
    await nc.close();
    expect(got).toMatchObject({ type: 'task_created', project_id: 'demo-project', data: { id: 'task-1' } });
    expect(got.seq).toBeGreaterThan(0);

    // `npm run token` signs with the same development key.
    const { stdout } = await promisify(execFile)(process.execPath, [join(root, 'bin', 'token.js'), '--sub', 'zoe', '--projects', 'a,b'], {
      cwd: root,
      env: env({ SIDECAR_DATA_DIR: dataDir }),
    });
    const token = stdout.trim();
    const wsUrl = connectUrl.replace(/\?token=.*/, '');
    const zoe = await connectClient(`${wsUrl}?token=${token}`);
    expect((await zoe.waitForMessage()).data.user_id).toBe('zoe');

    child.kill('SIGTERM');
    const code = await new Promise((r) => child!.once('exit', r));
    expect(code).toBe(0);
  });

  it('stops on a bad config value with one line naming the key', async () => {
    const result = await promisify(execFile)(process.execPath, [bin], { cwd: root, env: env({ PORT: 'eighty' }) }).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(result?.code).toBe(78);
    expect(result?.stderr.trim()).toMatch(/^nats-ws-sidecar: config port: /);
    expect(result?.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('refuses to start in production without a JWT key', async () => {
    const result = await promisify(execFile)(process.execPath, [bin], { cwd: root, env: env({ NODE_ENV: 'production' }) }).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(result?.code).toBe(78);
    expect(result?.stderr).toMatch(/config jwtSecret: .*JWT_SECRET/);
  });
});
