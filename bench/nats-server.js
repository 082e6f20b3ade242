// Starts a throw-away nats-server for one benchmark step: JetStream on (store in a temp dir) and the
// built-in WebSocket listener on (plain ws://, no TLS), all on free loopback ports.
// The server is stopped, and its store removed, by stop() or when the runner exits in any way.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Proc, freePort, registerTempDir, removeTempDir } from './proc.js';

/** nats-server binary: $NATS_SERVER_BIN, else /usr/sbin/nats-server, else from PATH. */
export function natsServerBin() {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  for (const p of ['/usr/sbin/nats-server', '/usr/local/bin/nats-server', '/usr/bin/nats-server']) {
    if (existsSync(p)) return p;
  }
  return 'nats-server';
}

/** "v2.9.10" or "unknown". */
export function natsServerVersion() {
  try {
    return execFileSync(natsServerBin(), ['--version'], { encoding: 'utf8' }).trim().replace(/^nats-server:\s*/, '');
  } catch {
    return 'unknown';
  }
}

/**
 * @typedef {object} NatsServer
 * @property {string} url       nats://127.0.0.1:PORT
 * @property {string} wsUrl     ws://127.0.0.1:WSPORT (the built-in WebSocket listener)
 * @property {number} pid
 * @property {Proc} proc
 * @property {() => Promise<void>} stop
 */

/**
 * @param {{ verbose?: boolean, timeoutMs?: number }} [opts]
 * @returns {Promise<NatsServer>}
 */
export async function startNatsServer({ verbose = false, timeoutMs = 10_000 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'nats-ws-bench-'));
  registerTempDir(dir);
  const [port, wsPort] = [await freePort(), await freePort()];
  const conf = join(dir, 'nats.conf');
  writeFileSync(
    conf,
    [
      `listen: 127.0.0.1:${port}`,
      `server_name: bench_${port}`,
      `jetstream { store_dir: ${JSON.stringify(join(dir, 'js'))}, max_memory_store: 256MB, max_file_store: 4GB }`,
      `websocket { host: 127.0.0.1, port: ${wsPort}, no_tls: true }`,
      '',
    ].join('\n'),
  );
  const proc = new Proc('nats-server', natsServerBin(), ['-c', conf], { verbose, tempDir: dir });
  const stop = async () => {
    await proc.stop(3000);
    removeTempDir(dir);
  };
  // Ready when it logs "Server is ready" (after JetStream and the websocket listener are up).
  const deadline = Date.now() + timeoutMs;
  while (!proc.tail.includes('Server is ready')) {
    if (!proc.running || Date.now() > deadline) {
      await stop();
      throw new Error(`nats-server did not start: ${proc.lastLine() || 'timeout'}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { url: `nats://127.0.0.1:${port}`, wsUrl: `ws://127.0.0.1:${wsPort}`, pid: proc.pid, proc, stop };
}
