// Child-process management and /proc readers for the benchmark runner.
// Every process the bench starts goes through start(); all of them are killed when the runner exits,
// whether normally, on an exception or on SIGINT/SIGTERM/SIGHUP.

import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { sleep } from './common.js';

/** @type {Set<Proc>} */
const live = new Set();
/** @type {Set<string>} temp directories removed at exit */
const tempDirs = new Set();
let hooked = false;

function hookExit() {
  if (hooked) return;
  hooked = true;
  // 'exit' handlers must be synchronous: SIGKILL whatever is still running, remove temp dirs.
  process.on('exit', () => {
    for (const p of live) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {}
    }
    for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping child processes\n`);
      process.exit(130);
    });
  }
  process.on('uncaughtException', (e) => {
    process.stderr.write(`bench: ${e?.stack ?? e}\n`);
    process.exit(1);
  });
  process.on('unhandledRejection', (e) => {
    process.stderr.write(`bench: unhandled rejection: ${e?.stack ?? e}\n`);
    process.exit(1);
  });
}

/** @param {string} dir */
export function registerTempDir(dir) {
  hookExit();
  tempDirs.add(dir);
}

/** @param {string} dir */
export function removeTempDir(dir) {
  rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

// Raises the soft fd limit to the hard limit (or 65536 if the hard limit is higher) before exec:
// idle/spread scenarios hold 5,000-10,000 sockets per process. `exec` keeps the pid, env and any
// IPC channel fd, so the pid we get is the real process.
const RAISE_FD = 'h=$(ulimit -Hn); if [ "$h" = unlimited ] || [ "$h" -gt 65536 ]; then h=65536; fi; ulimit -n "$h" 2>/dev/null; exec "$@"';

// If the runner itself is SIGKILLed, no exit handler runs. A tiny shell guard per child then kills
// the child (and removes its temp dir) once the runner is gone; it ends by itself when the child does.
const GUARD =
  'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 2; done; ' +
  'kill -0 "$2" 2>/dev/null && kill -9 "$2"; [ -n "$3" ] && rm -rf "$3"; exit 0';

/** @param {number} pid @param {string} tempDir */
function guardOrphan(pid, tempDir) {
  const g = spawn('/bin/sh', ['-c', GUARD, 'guard', String(process.pid), String(pid), tempDir], { stdio: 'ignore', detached: true });
  g.on('error', () => {});
  g.unref();
}

export class Proc {
  /**
   * @param {string} name
   * @param {string} cmd
   * @param {string[]} args
   * @param {{ env?: NodeJS.ProcessEnv, ipc?: boolean, cwd?: string, verbose?: boolean, tempDir?: string }} [opts]
   *   tempDir: removed by the orphan guard if the runner dies
   */
  constructor(name, cmd, args, { env, ipc = false, cwd, verbose = false, tempDir = '' } = {}) {
    hookExit();
    this.name = name;
    this.tail = '';
    this.exitInfo = null;
    this.child = spawn('/bin/sh', ['-c', RAISE_FD, 'sh', cmd, ...args], {
      env: { ...process.env, ...env },
      cwd,
      stdio: ['ignore', 'pipe', 'pipe', ...(ipc ? ['ipc'] : [])],
    });
    this.pid = /** @type {number} */ (this.child.pid);
    live.add(this);
    guardOrphan(this.pid, tempDir);
    // Keep the last few KB of output for error messages; the pipes must be drained anyway.
    const keep = (chunk) => {
      const s = chunk.toString();
      if (verbose) process.stderr.write(`[${name}] ${s}`);
      this.tail = (this.tail + s).slice(-4000);
    };
    this.child.stdout.on('data', keep);
    this.child.stderr.on('data', keep);
    /** @type {Promise<{ code: number | null, signal: string | null }>} */
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        live.delete(this);
        resolve(this.exitInfo);
      });
    });
    this.child.on('error', (e) => {
      this.tail += `\nspawn error: ${e.message}`;
    });
  }

  get running() {
    return this.exitInfo === null;
  }

  /**
   * The most telling recent output line, for error messages: the last line that names an error
   * (a Node crash ends with a stack and "Node.js v20...", so the plain last line says little),
   * else the last non-empty line.
   */
  lastLine() {
    const lines = this.tail.split('\n').map((l) => l.trim()).filter(Boolean);
    const err = lines.findLast((l) => /\b\w*(Error|error|ERR|FATAL|fatal)\b/.test(l) && !l.startsWith('at '));
    return (err ?? lines[lines.length - 1] ?? '').slice(0, 300);
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 2000) {
    if (!this.running) return;
    try {
      this.child.kill('SIGTERM');
    } catch {}
    const t = setTimeout(() => {
      try {
        this.child.kill('SIGKILL');
      } catch {}
    }, graceMs);
    await this.exited;
    clearTimeout(t);
  }

  kill() {
    if (!this.running) return Promise.resolve();
    try {
      this.child.kill('SIGKILL');
    } catch {}
    return this.exited;
  }
}

/** A free TCP port on 127.0.0.1 (bind to 0, read, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (s.address());
      s.close(() => resolve(port));
    });
  });
}

/** One GET with a 2 s timeout; resolves to the status code or 0 on error. */
export function httpStatus(url) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 2000, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

/**
 * Polls `url` every 100 ms until it answers 200, the process exits, or `timeoutMs` passes.
 * @param {string} url @param {Proc} proc @param {number} timeoutMs
 */
export async function waitHealthy(url, proc, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!proc.running) {
      const { code, signal } = proc.exitInfo ?? {};
      throw new Error(`${proc.name} exited (${signal ?? `code ${code}`}) before ${url} answered: ${proc.lastLine()}`);
    }
    if ((await httpStatus(url)) === 200) return;
    await sleep(100);
  }
  throw new Error(`${proc.name}: ${url} not healthy within ${timeoutMs} ms ${proc.lastLine()}`);
}

/** Resident set size of a process in bytes (VmRSS from /proc/PID/status). */
export function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

// USER_HZ is 100 on every Linux we run on (getconf CLK_TCK); /proc/PID/stat counts in it.
const CLK_TCK = 100;

/** CPU seconds (utime + stime, fields 14 and 15 of /proc/PID/stat) used so far by a process. */
export function cpuSeconds(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may contain spaces; fields after it start behind the last ')'.
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** Soft and hard "Max open files" of a process (from /proc/PID/limits). */
export function fdLimits(pid = process.pid) {
  const m = /Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  const n = (v) => (v === undefined ? NaN : v === 'unlimited' ? Infinity : Number(v));
  return { soft: n(m?.[1]), hard: n(m?.[2]) };
}
