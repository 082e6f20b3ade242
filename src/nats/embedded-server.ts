/**
 * Runs a nats-server child process: the sidecar's embedded broker when NATS_URL is unset, and the
 * real server every test talks to. The server is driven by a generated config file (readable when
 * something goes wrong, unlike a long command line) and is told its ports explicitly so that
 * restart() comes back on the same address with the same JetStream store.
 */
import { SidecarError } from '../errors.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { accessSync, constants as fsConstants, createWriteStream, statSync, unlinkSync, type WriteStream } from 'node:fs';
import { mkdir, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const BINARY_NAME = 'nats-server';
const DEFAULT_FALLBACKS = ['/usr/sbin/nats-server', '/usr/local/bin/nats-server', '/usr/bin/nats-server'] as const;
const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5_000;
const OUTPUT_LINES_KEPT = 100;
/** A port picked by us can be taken by someone else before the server binds it: retry that case. */
const PORT_RACE_ATTEMPTS = 3;

export class NatsServerNotFoundError extends SidecarError {
  constructor(unusableBin?: string) {
    const bad = unusableBin ? ` (NATS_SERVER_BIN=${unusableBin} is not an executable file)` : '';
    super(
      'nats_server_not_found',
      `nats-server binary not found${bad}. Install one with "apt-get install nats-server" (Debian/Ubuntu), ` +
        'or download it from https://github.com/nats-io/nats-server/releases, ' +
        'or set NATS_SERVER_BIN to its path, or set NATS_URL to use an existing NATS server.',
    );
  }
}

function isExecutableFile(file: string): boolean {
  try {
    accessSync(file, fsConstants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * Locates nats-server: NATS_SERVER_BIN, then PATH, then the usual install locations.
 * `fallbacks` replaces those fixed locations (tests pass [] to simulate a machine without one).
 */
export function findNatsServerBinary(
  env: NodeJS.ProcessEnv = process.env,
  opts: { fallbacks?: readonly string[] } = {},
): string | undefined {
  const explicit = env.NATS_SERVER_BIN;
  if (explicit && isExecutableFile(explicit)) return path.resolve(explicit);
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, BINARY_NAME);
    if (isExecutableFile(candidate)) return candidate;
  }
  return (opts.fallbacks ?? DEFAULT_FALLBACKS).find(isExecutableFile);
}

/**
 * What `npm start` needs to run its own nats-server. The test helpers (test/helpers/nats.ts) add
 * clusters, the server's WebSocket listener, restarts and kills on top, through `extraConfig`.
 */
export interface EmbeddedNatsOptions {
  /** Client port; 0 or undefined picks a free one (then kept across start()s). */
  port?: number;
  /** Listen address, default 127.0.0.1. */
  host?: string;
  /** JetStream store directory, created if missing (nats-server keeps its files in `jetstream/` inside). */
  storeDir: string;
  /** Default true. */
  jetstream?: boolean;
  serverName?: string;
  /** Default findNatsServerBinary(); when none is found start fails with NatsServerNotFoundError. */
  binary?: string;
  /**
   * Appended to the generated config file. As a function it gets `extraPorts` free ports, picked
   * with the client port (and picked again with it when another process took one first). Do not
   * set log_file here: use logFile.
   */
  extraConfig?: string | ((ports: number[]) => string);
  /** How many free ports extraConfig gets. Default 0. */
  extraPorts?: number;
  /** Server output is appended here; the last lines are kept in memory either way for errors. */
  logFile?: string;
}

export interface EmbeddedNats {
  /** nats://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** The ports picked for extraConfig. */
  readonly extraPorts: readonly number[];
  readonly pid: number | undefined;
  /** Graceful stop (SIGTERM by default, SIGKILL after 5 s); resolves once exited. Idempotent. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts again after stop(), on the same ports, with whatever the store directory holds then. */
  start(): Promise<void>;
  /** Exit code of the current process (null when it died from a signal). */
  readonly exited: Promise<number | null>;
}

// --- children must not outlive this process --------------------------------------------------

const liveChildren = new Set<ChildProcess>();
const liveConfigFiles = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: SIGKILL and unlink are.
  process.on('exit', () => {
    for (const child of liveChildren) {
      try {
        child.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
    for (const file of liveConfigFiles) {
      try {
        unlinkSync(file);
      } catch {
        /* already gone */
      }
    }
  });
}

// --- helpers -----------------------------------------------------------------------------------

/** Reserves `count` distinct free ports by holding them all open at once, then releases them. */
export async function pickFreePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const srv = net.createServer();
      servers.push(srv);
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, host, () => resolve());
      });
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

function connectHost(host: string): string {
  return host === '0.0.0.0' || host === '::' || host === '' ? '127.0.0.1' : host;
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => {
      sock.destroy();
      resolve(false);
    });
  });
}

/** Last N lines of output, for error messages. */
class OutputTail {
  private readonly lines: string[] = [];
  private partial = '';
  private readonly listeners = new Set<(line: string) => void>();

  push(chunk: string): void {
    const parts = (this.partial + chunk).split(/\r?\n/);
    this.partial = parts.pop() ?? '';
    for (const line of parts) this.add(line);
  }

  flush(): void {
    if (this.partial) this.add(this.partial);
    this.partial = '';
  }

  onLine(fn: (line: string) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  text(): string {
    return this.lines.join('\n');
  }

  private add(line: string): void {
    this.lines.push(line);
    if (this.lines.length > OUTPUT_LINES_KEPT) this.lines.shift();
    for (const fn of this.listeners) fn(line);
  }
}

interface ResolvedConfig {
  binary: string;
  host: string;
  port: number;
  storeDir: string;
  jetstream: boolean;
  serverName?: string;
  extraPorts: number[];
  extraConfig?: string;
  logFile?: string;
}

/** A value in nats-server's config syntax (JSON strings are valid there and escape paths safely). */
export const natsConfigValue = (value: string): string => JSON.stringify(value);
const q = natsConfigValue;

function renderConfig(c: ResolvedConfig): string {
  const lines = [`host: ${q(c.host)}`, `port: ${c.port}`];
  if (c.serverName) lines.push(`server_name: ${q(c.serverName)}`);
  if (c.jetstream) lines.push(`jetstream {`, `  store_dir: ${q(c.storeDir)}`, `}`);
  if (c.extraConfig) lines.push(c.extraConfig);
  return lines.join('\n') + '\n';
}

class PortInUseError extends SidecarError {
  constructor(message: string) {
    super('port_in_use', message, { temporary: true });
  }
}

// --- the server --------------------------------------------------------------------------------

class EmbeddedNatsServer implements EmbeddedNats {
  private child: ChildProcess | undefined;
  private running = false;
  private exitedPromise: Promise<number | null> = Promise.resolve(null);
  private stopping: Promise<void> | undefined;
  private readonly output = new OutputTail();

  constructor(private readonly config: ResolvedConfig) {}

  get port(): number {
    return this.config.port;
  }
  get url(): string {
    return `nats://${connectHost(this.config.host)}:${this.config.port}`;
  }
  get extraPorts(): readonly number[] {
    return this.config.extraPorts;
  }
  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
  }
  get exited(): Promise<number | null> {
    return this.exitedPromise;
  }

  async start(): Promise<void> {
    if (this.running) throw new Error(`nats-server already running (pid ${this.child?.pid})`);
    const c = this.config;
    await mkdir(c.storeDir, { recursive: true });
    const configFile = path.join(os.tmpdir(), `nats-server-${process.pid}-${randomUUID().slice(0, 8)}.conf`);
    await writeFile(configFile, renderConfig(c));
    liveConfigFiles.add(configFile);
    const log: WriteStream | undefined = c.logFile ? createWriteStream(c.logFile, { flags: 'a' }) : undefined;
    // An unwritable log file must not crash the process through an unhandled 'error' event.
    log?.on('error', (err) => this.output.push(`[embedded-nats] cannot write ${c.logFile}: ${err.message}\n`));

    installExitHook();
    const child = spawn(c.binary, ['-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.running = true;
    liveChildren.add(child);

    const onData = (chunk: string): void => {
      log?.write(chunk);
      this.output.push(chunk);
    };
    for (const stream of [child.stdout, child.stderr]) {
      stream.setEncoding('utf8'); // decodes characters split across chunks
      stream.on('data', onData);
    }

    let spawnError: Error | undefined;
    this.exitedPromise = new Promise((resolve) => {
      let done = false;
      const finish = (code: number | null): void => {
        if (done) return;
        done = true;
        this.output.flush();
        if (this.child === child) this.running = false;
        liveChildren.delete(child);
        liveConfigFiles.delete(configFile);
        unlink(configFile).catch(() => undefined);
        log?.end();
        resolve(code);
      };
      // 'close' (not 'exit') so every line of output has been read when we report it.
      child.once('close', (code) => finish(code));
      // 'on', not 'once': a later 'error' (e.g. a failed kill) must not go unhandled.
      child.on('error', (err) => {
        spawnError = err;
        finish(null);
      });
    });

    try {
      await this.waitUntilReady(child, configFile);
    } catch (err) {
      if (this.child === child && this.running) {
        child.kill('SIGKILL');
        await this.exitedPromise;
      }
      throw spawnError ? new Error(`cannot run ${c.binary}: ${spawnError.message}`, { cause: spawnError }) : err;
    }
  }

  /** Ready = the client port accepts connections and, with JetStream, the server said "Server is ready". */
  private waitUntilReady(child: ChildProcess, configFile: string): Promise<void> {
    const c = this.config;
    const host = connectHost(c.host);
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      let sawReadyLine = !c.jetstream;
      let tcpOk = false;
      let probing = false;
      let wakeProbe: (() => void) | undefined;

      const describe = (what: string): string =>
        `nats-server ${what} (config ${configFile}, port ${c.port}). Output:\n${this.output.text()}`;
      const settle = (err?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        offLine();
        wakeProbe?.();
        if (err) reject(err);
        else resolve();
      };
      const check = (): void => {
        if (sawReadyLine && tcpOk) settle();
      };

      const offLine = this.output.onLine((line) => {
        if (line.includes('Server is ready')) sawReadyLine = true;
        wakeProbe?.(); // new output often means a new listener: probe again now
        check();
      });

      const timer = setTimeout(
        () => settle(new Error(describe(`was not ready within ${READY_TIMEOUT_MS} ms`))),
        READY_TIMEOUT_MS,
      );

      void this.exitedPromise.then((code) => {
        if (settled || this.child !== child) return;
        const text = this.output.text();
        if (/address already in use/i.test(text)) settle(new PortInUseError(describe('could not bind its port')));
        else settle(new Error(describe(`exited early with code ${code}`)));
      });

      // The TCP probe is driven by output lines; the short delay only covers a silent server.
      const probe = async (): Promise<void> => {
        if (probing) return;
        probing = true;
        while (!settled && !tcpOk) {
          if (await canConnect(host, c.port)) {
            tcpOk = true;
            break;
          }
          if (settled) break;
          await new Promise<void>((wake) => {
            const t = setTimeout(wake, 100);
            wakeProbe = () => {
              clearTimeout(t);
              wakeProbe = undefined;
              wake();
            };
          });
        }
        probing = false;
        check();
      };
      void probe();
    });
  }

  stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.running || !this.child) return Promise.resolve();
    const child = this.child;
    if (this.stopping) {
      if (signal === 'SIGKILL') child.kill('SIGKILL'); // kill() must not wait out a graceful stop
      return this.stopping;
    }
    const exited = this.exitedPromise;
    child.kill(signal);
    const escalate = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    this.stopping = exited.then(() => {
      clearTimeout(escalate);
      this.stopping = undefined;
    });
    return this.stopping;
  }
}

/**
 * Starts nats-server and resolves once it accepts clients (and JetStream is up).
 * Rejects with NatsServerNotFoundError when no binary is available, or with the server's output
 * when it exits early or is not ready within 10 s.
 */
export async function startEmbeddedNats(opts: EmbeddedNatsOptions): Promise<EmbeddedNats> {
  const binary = opts.binary ?? findNatsServerBinary();
  if (!binary) throw new NatsServerNotFoundError(process.env.NATS_SERVER_BIN || undefined);
  const host = opts.host ?? '127.0.0.1';
  // Ports we pick (0/undefined) are fixed in the config so that a later start() reuses them.
  const pickClient = !opts.port;
  const extra = opts.extraPorts ?? 0;
  const picksPorts = pickClient || extra > 0;

  for (let attempt = 1; ; attempt++) {
    const free = await pickFreePorts((pickClient ? 1 : 0) + extra, host);
    const port = pickClient ? free.shift()! : opts.port!;
    const config: ResolvedConfig = {
      binary,
      host,
      port,
      storeDir: path.resolve(opts.storeDir),
      jetstream: opts.jetstream ?? true,
      serverName: opts.serverName,
      extraPorts: free,
      extraConfig: typeof opts.extraConfig === 'function' ? opts.extraConfig(free) : opts.extraConfig,
      logFile: opts.logFile,
    };
    const server = new EmbeddedNatsServer(config);
    try {
      await server.start();
      return server;
    } catch (err) {
      if (!(err instanceof PortInUseError) || !picksPorts || attempt >= PORT_RACE_ATTEMPTS) throw err;
    }
  }
}
