/**
 * The sidecar as its own process (`node bin/nats-ws-sidecar.js`), for what an in-process sidecar
 * cannot show: `kill -9`, a crash under hostile input, and the memory and descriptors of the
 * process alone (/proc/PID). Logs at info on stdout are parsed for the port and for warnings.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { mintToken, type MintOptions } from '../../../src/auth.js';
import { TEST_SECRET } from '../../helpers/sidecar.js';
import { fdsOf, rssOf } from './proc.js';

const root = join(import.meta.dirname, '..', '..', '..');
const bin = join(root, 'bin', 'nats-ws-sidecar.js');
const START_TIMEOUT_MS = 30_000;
const TAIL_LINES = 200;

export interface ChildSidecar {
  readonly pid: number;
  readonly port: number;
  readonly httpUrl: string;
  readonly wsUrl: string;
  readonly instanceId: string;
  /** Exit code and signal once the process is gone. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly alive: boolean;
  /** Log lines at warn or above, by message, and the last lines of output (for failures). */
  readonly warnings: Map<string, number>;
  tail(): string;
  /** With `keepOutput`: everything the process printed so far. */
  output(): string;
  rss(): number;
  fds(): number;
  token(sub: string, o?: Omit<MintOptions, 'sub'>): Promise<string>;
  /** With `gcProbe`: a full GC in the child, then its memory (heap used is what is retained). */
  heapAfterGc(): Promise<{ heapUsed: number; external: number; arrayBuffers: number; rss: number }>;
  /** SIGKILL; resolves once the process is gone and its port refuses connections. */
  kill9(): Promise<void>;
  /** SIGTERM (graceful drain); SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

let built: Promise<unknown> | undefined;
/** `npm test` builds first; a lone `vitest run` may find dist/ stale: build once per worker. */
export function ensureBuilt(): Promise<unknown> {
  built ??= promisify(execFile)(process.execPath, ['-e', "import('./bin/ensure-built.js').then((m) => m.ensureBuilt())"], { cwd: root });
  return built;
}

/** Resolves true once nothing listens on `port` (a killed process's port is free again). */
export function portRefuses(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

/** Sidecar config as SIDECAR_* / contract environment variables (see README). */
export type SidecarEnv = Record<string, string | number>;

export interface ChildOptions {
  /** Preload gc-probe.cjs (with --expose-gc) so that heapAfterGc() works. */
  gcProbe?: boolean;
  /** Keep all of stdout and stderr (for output(); tail() keeps only the last lines). */
  keepOutput?: boolean;
}

export async function startChildSidecar(natsUrl: string | string[], env: SidecarEnv = {}, opts: ChildOptions = {}): Promise<ChildSidecar> {
  await ensureBuilt();
  const dataDir = await mkdtemp(join(tmpdir(), 'sidecar-child-'));
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^(SIDECAR_|JWT_|NATS_URL$|PORT$|HOST$|NODE_ENV$|ALLOWED_ORIGINS$|LOG_LEVEL$)/.test(k)) continue;
    base[k] = v;
  }
  const childEnv: Record<string, string> = {
    ...base,
    PORT: '0',
    HOST: '127.0.0.1',
    NATS_URL: Array.isArray(natsUrl) ? natsUrl.join(',') : natsUrl,
    JWT_SECRET: TEST_SECRET,
    SIDECAR_DATA_DIR: dataDir,
    LOG_LEVEL: 'info',
    ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)])),
  };
  if (opts.gcProbe) {
    const probe = join(import.meta.dirname, 'gc-probe.cjs');
    childEnv.NODE_OPTIONS = `${base.NODE_OPTIONS ?? ''} --expose-gc --require ${JSON.stringify(probe)}`.trim();
  }
  const child = spawn(process.execPath, [bin], { cwd: root, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  // RELIABILITY_LOG_DIR keeps each child's whole output, for a post-mortem.
  const logFile = process.env.RELIABILITY_LOG_DIR ? createWriteStream(join(process.env.RELIABILITY_LOG_DIR, `sidecar-${child.pid}.log`)) : undefined;
  logFile?.on('error', () => undefined);
  const lines: string[] = [];
  const warnings = new Map<string, number>();
  let listening: ((v: { url: string; instance: string }) => void) | undefined;
  const probes: ((m: { heapUsed: number; external: number; arrayBuffers: number; rss: number }) => void)[] = [];
  let partial = '';
  let all = '';
  const onText = (chunk: string) => {
    logFile?.write(chunk);
    if (opts.keepOutput) all += chunk;
    const parts = (partial + chunk).split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      lines.push(line);
      if (lines.length > TAIL_LINES) lines.shift();
      if (!line.startsWith('{')) continue;
      let rec: { level?: number; msg?: string; url?: string; instance?: string; heapUsed?: number; external?: number; arrayBuffers?: number; rss?: number };
      try {
        rec = JSON.parse(line);
      } catch {
        continue;
      }
      if ((rec.level ?? 0) >= 40) warnings.set(String(rec.msg), (warnings.get(String(rec.msg)) ?? 0) + 1);
      if (rec.msg === 'nats-ws-sidecar listening' && rec.url) listening?.({ url: rec.url, instance: String(rec.instance) });
      if (rec.msg === 'gc probe') {
        const m = { heapUsed: rec.heapUsed!, external: rec.external!, arrayBuffers: rec.arrayBuffers!, rss: rec.rss! };
        for (const fn of probes.splice(0)) fn(m);
      }
    }
  };
  child.stdout.setEncoding('utf8').on('data', onText); // always drained, or the child would block on a full pipe
  child.stderr.setEncoding('utf8').on('data', onText);
  let alive = true;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      alive = false;
      logFile?.end();
      live.delete(child);
      resolve({ code, signal });
    });
  });
  void exited.then(() => rm(dataDir, { recursive: true, force: true }));

  const tail = () => lines.join('\n');
  const started = await Promise.race([
    new Promise<{ url: string; instance: string }>((resolve) => (listening = resolve)),
    exited.then(({ code, signal }) => {
      throw new Error(`sidecar exited (${code ?? signal}) before listening:\n${tail()}`);
    }),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`sidecar not listening within ${START_TIMEOUT_MS} ms:\n${tail()}`)), START_TIMEOUT_MS).unref()),
  ]).catch(async (err) => {
    child.kill('SIGKILL');
    await exited;
    throw err;
  });
  const httpUrl = started.url;
  const port = Number(new URL(httpUrl).port);
  const pid = child.pid!;

  return {
    pid,
    port,
    httpUrl,
    wsUrl: `${httpUrl.replace(/^http/, 'ws')}/ws/connect`,
    instanceId: started.instance,
    exited,
    get alive() {
      return alive;
    },
    warnings,
    tail,
    output: () => all,
    rss: () => rssOf(pid),
    fds: () => fdsOf(pid),
    token: (sub, o = {}) => mintToken(TEST_SECRET, { sub, projects: ['*'], ...o }),
    heapAfterGc() {
      if (!opts.gcProbe) return Promise.reject(new Error('started without gcProbe'));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no gc probe answer within 10 s')), 10_000);
        probes.push((m) => {
          clearTimeout(timer);
          resolve(m);
        });
        child.kill('SIGUSR2');
      });
    },
    async kill9() {
      if (alive) child.kill('SIGKILL');
      await exited;
      const deadline = Date.now() + 5_000;
      while (!(await portRefuses(port))) {
        if (Date.now() > deadline) throw new Error(`port ${port} still accepts connections after kill -9`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop(graceMs = 15_000) {
      if (!alive) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}
