// The targets and the load-generator processes, as the runner sees them.
// Each benchmark step gets a fresh nats-server and a fresh target process, so no target inherits
// another one's heap, connections or stored messages, and RSS/CPU readings are its own.

import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startNatsServer } from './nats-server.js';
import { Proc, freePort, waitHealthy } from './proc.js';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = dirname(here);

/**
 * kind: which client protocol the load generator speaks.
 * checkSeq: the contract requires `seq` (and `project_id`) on events from NATS.
 */
export const TARGETS = /** @type {const} */ ({
  nats: { label: 'NATS WS listener', kind: 'nats', checkSeq: false },
  sidecar: { label: 'sidecar', kind: 'contract', checkSeq: true },
  // The same sidecar with SIDECAR_COMPRESSION=deflate (the compression scenario's "on").
  'sidecar-deflate': { label: 'sidecar, compression on', kind: 'contract', checkSeq: true },
  naive: { label: 'naive bridge', kind: 'contract', checkSeq: false },
  // The naive bridge without its token check: what `ws` on Node.js costs for the same handshake
  // and two frames, the floor under any bridge built on it (connect and idle rows only).
  'ws-floor': { label: 'ws floor (no auth)', kind: 'contract', checkSeq: false },
});

/**
 * @typedef {object} Target
 * @property {string} name         nats | sidecar | sidecar-deflate | naive | ws-floor
 * @property {'nats' | 'contract'} kind
 * @property {boolean} checkSeq
 * @property {string} wsUrl        where clients connect (base URL for contract targets)
 * @property {string} natsUrl      where the publisher connects
 * @property {number} pid          the process whose RSS/CPU is "the target"
 * @property {number} natsPid      the nats-server (same as pid for the nats target)
 * @property {string} secret       JWT_SECRET (contract targets)
 * @property {() => Promise<void>} stop
 */

/** Thrown when the sidecar cannot be started; the runner then reports it as "unavailable". */
export class Unavailable extends Error {}

/**
 * @param {'nats' | 'sidecar' | 'sidecar-deflate' | 'naive' | 'ws-floor'} name
 * @param {{ verbose?: boolean, sidecarBin?: string, nodeArgs?: string[], startTimeoutMs?: number, sidecarEnv?: Record<string, string> }} opts
 * @returns {Promise<Target>}
 */
export async function startTarget(name, { verbose = false, sidecarBin = 'bin/nats-ws-sidecar.js', nodeArgs = [], startTimeoutMs = 30_000, sidecarEnv = {} } = {}) {
  const def = TARGETS[name];
  if (!def) throw new Error(`unknown target ${name}`);
  const sidecar = name === 'sidecar' || name === 'sidecar-deflate';
  if (sidecar && !existsSync(join(ROOT, sidecarBin))) {
    throw new Unavailable(`${sidecarBin} not found (sidecar not built yet)`);
  }
  const nats = await startNatsServer({ verbose });
  if (name === 'nats') {
    return { name, ...def, wsUrl: nats.wsUrl, natsUrl: nats.url, pid: nats.pid, natsPid: nats.pid, secret: '', stop: nats.stop };
  }
  const port = await freePort();
  const secret = randomBytes(32).toString('hex');
  const env = {
    PORT: String(port),
    HOST: '127.0.0.1',
    NATS_URL: nats.url,
    JWT_SECRET: secret,
    LOG_LEVEL: 'warn',
    // configuration must come from the env above and the shipped defaults only
    SIDECAR_CONFIG: '',
    ...(name === 'sidecar-deflate' ? { SIDECAR_COMPRESSION: 'deflate' } : {}),
    // As the container image and the workers' primary run it (one malloc arena: less RSS per connection).
    ...(sidecar ? { MALLOC_ARENA_MAX: '1' } : {}),
    ...(name === 'ws-floor' ? { NAIVE_NO_AUTH: '1' } : {}),
    // --sidecar-env: e.g. the cost of one feature (SIDECAR_LIFECYCLE_EVENTS=false), for the sidecar and the bridge
    ...sidecarEnv,
  };
  const script = sidecar ? join(ROOT, sidecarBin) : join(here, 'naive-bridge.js');
  const proc = new Proc(name, process.execPath, [...nodeArgs, script], { env, cwd: ROOT, verbose });
  const stop = async () => {
    await proc.stop(2000);
    await nats.stop();
  };
  try {
    // The sidecar's port answers before NATS does: wait until it is ready, not only alive.
    await waitHealthy(`http://127.0.0.1:${port}/${sidecar ? 'readyz' : 'healthz'}`, proc, startTimeoutMs);
  } catch (e) {
    await stop();
    throw sidecar ? new Unavailable(String(e.message)) : e;
  }
  return { name, ...def, wsUrl: `ws://127.0.0.1:${port}`, natsUrl: nats.url, pid: proc.pid, natsPid: nats.pid, secret, stop };
}

/** A load-generator process (bench/loadgen/main.js) and its IPC request/response channel. */
export class Loader {
  /** @param {Proc} proc */
  constructor(proc) {
    this.proc = proc;
    this.pid = proc.pid;
    this.nextId = 1;
    /** @type {Map<number, { resolve: (v: any) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }>} */
    this.pending = new Map();
    proc.child.on('message', (m) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m);
      else p.reject(new Error(`loadgen ${m.error}`));
    });
    proc.exited.then(({ code, signal }) => {
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`loadgen exited (${signal ?? code}): ${proc.lastLine()}`));
      }
      this.pending.clear();
    });
  }

  /** Forks bench/loadgen/main.js (fd limit raised, see proc.js) and waits for its ready message. */
  static async start(verbose = false) {
    const proc = new Proc('loadgen', process.execPath, [join(here, 'loadgen', 'main.js')], { ipc: true, verbose });
    const loader = new Loader(proc);
    // loadgen/main.js announces itself with id 0 once its IPC handler is installed
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        loader.pending.delete(0);
        reject(new Error(`loadgen did not start: ${proc.lastLine()}`));
      }, 10_000);
      loader.pending.set(0, { resolve, reject, timer });
    });
    return loader;
  }

  /**
   * @param {string} cmd @param {object} args
   * @param {number} timeoutMs bound on the answer (the command's own timeouts are shorter)
   */
  request(cmd, args = {}, timeoutMs = 60_000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`loadgen: no answer to ${cmd} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.proc.child.send({ id, cmd, ...args });
    });
  }

  /** Resets all client sockets (see loadgen/phase-commands.js closeAll), then kills the process. */
  async stop() {
    if (this.proc.running) await this.request('closeAll', {}, 5000).catch(() => {});
    await this.proc.kill();
  }
}
