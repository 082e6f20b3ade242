/**
 * Workers mode, as an operator runs it: the `nats-ws-sidecar` bin with SIDECAR_WORKERS=2 and a
 * real nats-server. Two workers serve one port, each an instance of the fleet, so the admin API's
 * count covers both; a worker killed with SIGKILL is restarted (and logged); SIGTERM to the parent
 * drains every worker (clients get 1001) and the parent exits 0. With NATS_URL unset the primary
 * runs the embedded NATS for both, and prints the dev token once.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintToken } from '../../src/auth.js';
import { parsePrometheus, sampleValue } from '../helpers/http.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { freePort } from '../helpers/ports.js';
import { event, publisher, TEST_SECRET } from '../helpers/sidecar.js';
import { waitFor } from '../helpers/wait.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

const root = join(import.meta.dirname, '..', '..');
const bin = join(root, 'bin', 'nats-ws-sidecar.js');
const START_TIMEOUT = 60_000; // two workers start on a busy 2-core machine

beforeAll(async () => {
  // Build here rather than inside a test's timeout when vitest runs alone.
  await promisify(execFile)(process.execPath, ['-e', "import('./bin/ensure-built.js').then((m) => m.ensureBuilt())"], { cwd: root });
}, 120_000);

/** The bin as a child process, its JSON log lines parsed as they come. */
class Running {
  readonly lines: Record<string, any>[] = [];
  text = '';
  readonly exited: Promise<number | null>;
  private waiters: { pred: (l: Record<string, any>) => boolean; from: number; resolve: (l: Record<string, any>) => void }[] = [];

  constructor(readonly proc: ChildProcess) {
    let partial = '';
    const onData = (chunk: Buffer): void => {
      this.text += chunk.toString();
      partial += chunk.toString();
      const parts = partial.split('\n');
      partial = parts.pop()!;
      for (const raw of parts) {
        if (!raw.startsWith('{')) continue;
        try {
          this.lines.push(JSON.parse(raw));
        } catch {
          continue;
        }
        this.notify();
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    this.exited = new Promise((ok) => proc.once('exit', (code) => ok(code)));
  }

  /** The first log line from index `from` on that matches. */
  waitForLine(pred: (l: Record<string, any>) => boolean, from = 0, timeoutMs = START_TIMEOUT): Promise<Record<string, any>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no such log line within ${timeoutMs} ms; output:\n${this.text.slice(-4000)}`)), timeoutMs);
      this.waiters.push({
        pred,
        from,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
      this.notify();
    });
  }

  /** Resolves with the `ready` lines of `n` distinct workers logged from index `from` on. */
  async workersReady(n: number, from = 0): Promise<Record<string, any>[]> {
    const ready = new Map<number, Record<string, any>>();
    while (ready.size < n) {
      const line = await this.waitForLine((l) => l.msg === 'worker ready' && !ready.has(l.worker), from);
      ready.set(line.worker, line);
    }
    return [...ready.values()];
  }

  private notify(): void {
    this.waiters = this.waiters.filter((w) => {
      const hit = this.lines.slice(w.from).find(w.pred);
      if (hit) w.resolve(hit);
      return !hit;
    });
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }
}

function run(extra: Record<string, string>): Running {
  const env: Record<string, string> = { ...(process.env as Record<string, string>) };
  for (const k of ['NATS_URL', 'JWT_SECRET', 'JWT_PUBLIC_KEY', 'JWT_JWKS_URL', 'NODE_ENV', 'PORT', 'MALLOC_ARENA_MAX']) delete env[k];
  Object.assign(env, { HOST: '127.0.0.1', LOG_LEVEL: 'info', SIDECAR_WORKERS: '2' }, extra);
  // detached: its own process group, so a kill of the group in afterAll leaves no worker behind.
  return new Running(spawn(process.execPath, [bin], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true }));
}

/** Connects clients (distinct users) until each of `instances` holds at least one; returns them by instance. */
async function connectToEvery(wsUrl: string, instances: string[], token: (user: string) => Promise<string>): Promise<Map<string, TestClient[]>> {
  const byInstance = new Map<string, TestClient[]>(instances.map((id) => [id, []]));
  for (let i = 0; i < 40 && [...byInstance.values()].some((list) => list.length === 0); i++) {
    const c = await connectClient(`${wsUrl}?token=${await token(`user-${Date.now()}-${i}`)}`);
    const welcome = await c.waitForMessage((m) => m.type === 'auth_success');
    const instance = instances.find((id) => welcome.data.connection_id.startsWith(`${id}-`));
    expect(instance, `connection ${welcome.data.connection_id} belongs to no known worker`).toBeDefined();
    byInstance.get(instance!)!.push(c);
  }
  return byInstance;
}

describe('two workers on one port, with NATS_URL', () => {
  let nats: TestNats;
  let dataDir: string;
  let port: number;
  let sidecar: Running;
  let instances: string[];
  const token = (sub: string) => mintToken(TEST_SECRET, { sub, projects: ['*'] });
  const wsUrl = () => `ws://127.0.0.1:${port}/ws/connect`;
  const httpUrl = () => `http://127.0.0.1:${port}`;

  beforeAll(async () => {
    nats = await startTestNats();
    dataDir = await mkdtemp(join(tmpdir(), 'workers-test-'));
    port = await freePort();
    sidecar = run({ NATS_URL: nats.url, JWT_SECRET: TEST_SECRET, PORT: String(port), SIDECAR_DATA_DIR: dataDir });
    instances = (await sidecar.workersReady(2)).map((l) => l.instance);
  }, START_TIMEOUT + 10_000);
  afterAll(async () => {
    await closeAllClients();
    await sidecar?.kill();
    try {
      process.kill(-sidecar.proc.pid!, 'SIGKILL');
    } catch {
      /* the group is gone */
    }
    await nats?.cleanup();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('serves both workers on the one port, and the admin count counts the connections of both', async () => {
    expect(new Set(instances).size).toBe(2);
    const byInstance = await connectToEvery(wsUrl(), instances, token);
    for (const id of instances) expect(byInstance.get(id)!.length, `connections served by ${id}`).toBeGreaterThan(0);
    const total = [...byInstance.values()].reduce((n, list) => n + list.length, 0);

    const admin = await mintToken(TEST_SECRET, { sub: 'ops', roles: ['admin'] });
    const answeredBy = new Set<string>();
    let last: any;
    // Both workers answer (each asks the whole fleet over NATS); each sees every connection once both know each other.
    await waitFor(async () => {
      const res = await fetch(`${httpUrl()}/api/v1/websocket/connections/count`, { headers: { Authorization: `Bearer ${admin}` } });
      last = await res.json();
      answeredBy.add(res.headers.get('x-sidecar-instance')!);
      return res.status === 200 && last.count === total && last.instances.length === 2;
    }, 20_000, 'a fleet-wide count of every connection');
    expect(last.missing).toEqual([]);
    expect(last.instances.map((i: any) => i.instance_id).sort()).toEqual([...instances].sort());
    for (const i of last.instances) expect(i.count).toBe(byInstance.get(i.instance_id)!.length);
    for (const id of answeredBy) expect(instances).toContain(id);
    await closeAllClients();
  }, 60_000);

  it('starts every worker with one malloc arena (MALLOC_ARENA_MAX=1), which keeps less memory per idle connection', async () => {
    for (const id of instances) {
      const ready = sidecar.lines.find((l) => l.msg === 'worker ready' && l.instance === id)!;
      const environ = (await readFile(`/proc/${ready.pid}/environ`, 'latin1')).split('\0');
      expect(environ, `the environment of worker ${ready.worker}`).toContain('MALLOC_ARENA_MAX=1');
    }
  });

  it('answers /metrics, from whichever worker, with the series of both', async () => {
    for (let i = 0; i < 4; i++) {
      // A new connection each time, so the scrapes land on both workers.
      const res = await fetch(`${httpUrl()}/metrics`, { headers: { Connection: 'close' } });
      expect(res.status).toBe(200);
      const samples = parsePrometheus(await res.text()); // strict: each family declared once
      const info = samples.filter((x) => x.name === 'sidecar_info');
      expect(info.map((x) => x.labels.instance_id).sort()).toEqual([...instances].sort());
      for (const id of instances) {
        expect(sampleValue(samples, 'sidecar_connections', { instance_id: id })).toBeTypeOf('number');
        expect(sampleValue(samples, 'sidecar_delivery_latency_seconds_count', { instance_id: id })).toBeGreaterThanOrEqual(0);
      }
    }
  }, 30_000);

  it('restarts a worker killed with SIGKILL, logs it, and clients connect to it again', async () => {
    const victim = sidecar.lines.find((l) => l.msg === 'worker ready' && l.instance === instances[0])!;
    const from = sidecar.lines.length;
    process.kill(victim.pid, 'SIGKILL');

    const exited = await sidecar.waitForLine((l) => l.msg === 'worker exited: restarting it', from);
    expect(exited).toMatchObject({ level: 50, worker: victim.worker, pid: victim.pid, signal: 'SIGKILL', instance: instances[0] });
    expect(exited.restartInMs).toBeGreaterThanOrEqual(0);
    const [restarted] = await sidecar.workersReady(1, from);
    expect(restarted.worker).toBe(victim.worker);
    expect(restarted.pid).not.toBe(victim.pid);
    expect(restarted.instance).not.toBe(instances[0]); // a new process, a new instance of the fleet

    // Dying again young is a crash loop: the next start waits longer.
    const from2 = sidecar.lines.length;
    process.kill(restarted.pid, 'SIGKILL');
    const exited2 = await sidecar.waitForLine((l) => l.msg === 'worker exited: restarting it', from2);
    expect(exited2).toMatchObject({ worker: victim.worker, pid: restarted.pid, signal: 'SIGKILL' });
    expect(exited2.restartInMs).toBeGreaterThan(exited.restartInMs);
    const [again] = await sidecar.workersReady(1, from2);
    expect(again.worker).toBe(victim.worker);
    instances = [again.instance, instances[1]];

    const byInstance = await connectToEvery(wsUrl(), instances, token);
    expect(byInstance.get(again.instance)!.length).toBeGreaterThan(0);
    await closeAllClients();
  }, 90_000);

  it('drains every worker on SIGTERM: clients get 1001 and the parent exits 0', async () => {
    const byInstance = await connectToEvery(wsUrl(), instances, token);
    const clients = [...byInstance.values()].flat();
    for (const id of instances) expect(byInstance.get(id)!.length).toBeGreaterThan(0);

    sidecar.proc.kill('SIGTERM');
    const closes = await Promise.all(clients.map((c) => c.waitForClose(20_000)));
    for (const c of closes) expect(c.code).toBe(1001);
    expect(await sidecar.exited).toBe(0);
    // Every worker stopped through its graceful path.
    const stopped = sidecar.lines.filter((l) => l.msg === 'stopped' && l.instance !== undefined).map((l) => l.instance);
    expect(stopped.sort()).toEqual([...instances].sort());
  }, 60_000);
});

describe('two workers with the embedded NATS (NATS_URL unset)', () => {
  let dataDir: string;
  let sidecar: Running;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'workers-embedded-'));
  });
  afterAll(async () => {
    await closeAllClients();
    await sidecar?.kill();
    try {
      process.kill(-sidecar.proc.pid!, 'SIGKILL');
    } catch {
      /* the group is gone */
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  it('runs one embedded NATS in the primary for both workers, prints the dev token once, and stops it all on SIGTERM', async () => {
    sidecar = run({ PORT: '0', SIDECAR_DATA_DIR: dataDir, SIDECAR_EMBEDDED_NATS_PORT: '0' });
    const natsLine = await sidecar.waitForLine((l) => /^embedded NATS server running at/.test(l.msg));
    expect(natsLine.role).toBe('primary');
    const ready = await sidecar.workersReady(2);
    const instances = ready.map((l) => l.instance);
    await waitFor(() => /Connect: ws:\/\/\S+\?token=\S+/.test(sidecar.text), 10_000, 'the dev token');
    const connectUrl = /Connect: (ws:\/\/\S+\/ws\/connect\?token=\S+)/.exec(sidecar.text)![1];

    // Both workers take connections with the dev token, and events published to the primary's NATS reach them.
    const [wsUrl, devToken] = connectUrl.split('?token=');
    const byInstance = await connectToEvery(wsUrl, instances, async () => devToken);
    const clients = [...byInstance.values()].flat();
    for (const id of instances) expect(byInstance.get(id)!.length).toBeGreaterThan(0);
    for (const c of clients) {
      c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'p1' } });
      await c.waitForMessage((m) => m.type === 'subscription');
    }
    const nc = await publisher(natsLine.url);
    nc.publish('ws.project.p1', event('task_created', { id: 't1' }));
    await nc.flush();
    await nc.close();
    for (const c of clients) expect((await c.waitForMessage((m) => m.type === 'task_created', 10_000)).data.id).toBe('t1');

    sidecar.proc.kill('SIGTERM');
    for (const c of clients) expect((await c.waitForClose(20_000)).code).toBe(1001);
    expect(await sidecar.exited).toBe(0);
    expect(sidecar.text.match(/Dev token \(/g)).toHaveLength(1);
    // The embedded nats-server went with it.
    await expect(publisher(natsLine.url).then((c) => c.close())).rejects.toThrow();
  }, 120_000);
});

describe('two workers on a port that is taken', () => {
  it('stops, and the parent exits 1 with the reason, instead of restarting workers forever', async () => {
    const taken = createServer();
    await new Promise<void>((ok) => taken.listen(0, '127.0.0.1', ok));
    const port = (taken.address() as { port: number }).port;
    const dataDir = await mkdtemp(join(tmpdir(), 'workers-taken-'));
    // NATS is never reached: the port is bound before NATS is asked.
    const sidecar = run({ NATS_URL: `nats://127.0.0.1:${await freePort()}`, JWT_SECRET: TEST_SECRET, PORT: String(port), SIDECAR_DATA_DIR: dataDir });
    try {
      expect(await sidecar.exited).toBe(1);
      expect(sidecar.lines.find((l) => l.msg === 'a worker cannot start: stopping every worker')?.reason).toMatch(/EADDRINUSE/);
      expect(sidecar.lines.some((l) => l.msg === 'worker exited: restarting it')).toBe(false);
    } finally {
      await sidecar.kill();
      taken.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
