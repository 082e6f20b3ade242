/**
 * Workers mode (`workers` > 1): one primary process and that many worker processes, all serving
 * the one port through Node's cluster module (the primary holds the listening socket and, on
 * Linux, hands connections to the workers in turn).
 *
 * - The primary serves nothing. It owns the embedded nats-server when NATS_URL is unset and gives
 *   its URL to the workers, restarts a worker that dies (at once the first time, then with a
 *   doubling pause up to RESTART_MAX_MS while it keeps dying young), and on SIGTERM/SIGINT asks
 *   every worker to drain, waits for them, stops the embedded NATS and exits 0. A worker that
 *   cannot start for a reason a restart does not fix (the port is taken, the stream cannot be
 *   used) stops them all, and the primary exits 1, as one process would.
 * - Each worker is a whole sidecar (src/sidecar.ts) with its own instance id, so it is an instance
 *   of the fleet like a separate container: presence, fleet scatter-gather and the admin API's
 *   fleet answers count every worker's connections. `/metrics` reaches one worker and answers
 *   with every ready worker's series (labelled with their instance ids), gathered by the primary.
 *
 * With `workers` = 1, main.ts never comes here and the cluster module is not loaded.
 */
import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { AggregatorRegistry } from 'prom-client';
import type { Config } from './config.js';
import { printDevToken } from './dev-key.js';
import { NatsServerNotFoundError, startEmbeddedNats, type EmbeddedNats } from './nats/embedded-server.js';
import type { SidecarMetrics } from './http/metrics.js';
import { Sidecar } from './sidecar.js';

/** Set by the primary in each worker's environment: the worker's slot, 0..workers-1. */
const WORKER_INDEX_ENV = 'SIDECAR_WORKER_INDEX';
/** A worker that dies within this long of starting is crash-looping: its next start waits longer. */
const STABLE_AFTER_MS = 10_000;
const RESTART_MIN_MS = 250;
const RESTART_MAX_MS = 30_000;
/** Beyond the workers' own bound (drainDelay + shutdownTimeout), before the primary kills them. */
const STOP_GRACE_MS = 5_000;

/** A registry's series as prom-client's JSON (SidecarMetrics.json). */
type SeriesJson = Awaited<ReturnType<SidecarMetrics['json']>>;
type ToPrimary =
  | { type: 'ready'; instanceId: string; url: string; wsUrl: string }
  | { type: 'fatal'; reason: string }
  /** A worker was asked for `/metrics`: it wants every worker's series. */
  | { type: 'scrape'; id: number }
  | { type: 'collected'; id: number; series: SeriesJson };
type ToWorker = { type: 'stop' } | { type: 'collect'; id: number } | { type: 'scraped'; id: number; text: string };

/** A scrape answers with the workers that sent their series within this long (a busy or dying one is left out). */
const SCRAPE_TIMEOUT_MS = 2_000;

/** True in a process the primary forked (main.ts runs `runWorker` there). */
export function isWorkerProcess(): boolean {
  return cluster.isWorker && process.env[WORKER_INDEX_ENV] !== undefined;
}

/** The pause before restarting a worker that has died `crashes` times in a row, each young. */
export function restartDelay(crashes: number): number {
  return crashes === 0 ? 0 : Math.min(RESTART_MAX_MS, RESTART_MIN_MS * 2 ** (crashes - 1));
}

interface Slot {
  index: number;
  worker?: Worker;
  instanceId?: string;
  startedAt: number;
  /** Deaths in a row, each within STABLE_AFTER_MS of its start. */
  crashes: number;
  restartTimer?: NodeJS.Timeout;
}

/** The primary: runs until a signal, then drains the workers and exits 0. */
export async function runPrimary(config: Config, baseLog: Logger, devToken: boolean): Promise<void> {
  const log = baseLog.child({ role: 'primary' });
  let embedded: EmbeddedNats | undefined;
  let stopping: Promise<void> | undefined;
  let signalled = 0;
  let starting = true;
  const slots: Slot[] = [];

  const onSignal = (signal: NodeJS.Signals): void => {
    signalled += 1;
    // As in one process: npm and the terminal may both deliver one Ctrl-C; a third means "now".
    if (signalled > 2) {
      log.warn({ signal }, 'repeated signal: exiting now');
      for (const slot of slots) slot.worker?.process.kill('SIGKILL');
      process.exit(1); // the embedded nats-server is killed by its exit hook
    }
    if (signalled > 1) return;
    log.info({ signal }, 'signal received: draining every worker');
    if (!starting) void stop();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  const stop = (exitCode = 0): Promise<void> =>
    (stopping ??= (async () => {
      for (const slot of slots) clearTimeout(slot.restartTimer);
      const live = slots.flatMap((s) => (s.worker && !s.worker.isDead() ? [s.worker] : []));
      const exited = Promise.all(live.map((w) => new Promise<void>((ok) => (w.isDead() ? ok() : w.once('exit', () => ok())))));
      for (const w of live) tell(w, { type: 'stop' });
      let timer: NodeJS.Timeout | undefined;
      const bound = config.drainDelay + config.shutdownTimeout + STOP_GRACE_MS;
      const timedOut = new Promise<boolean>((ok) => (timer = setTimeout(() => ok(true), bound)));
      if (await Promise.race([exited.then(() => false), timedOut])) {
        log.warn({ afterMs: bound }, 'workers still running after the shutdown bound: killing them');
        for (const w of live) if (!w.isDead()) w.process.kill('SIGKILL');
        await exited;
      }
      clearTimeout(timer);
      await embedded?.stop().catch((err: unknown) => log.error({ err }, 'stopping the embedded NATS failed'));
      log.info('stopped');
      process.exit(exitCode);
    })());

  // glibc's malloc keeps up to 8 arenas per core, and the memory a connect storm leaves in them is
  // not given back: with one arena an idle connection costs ~0.9 KB less RSS, at no measured cost to
  // connects or fan-out (BENCHMARKS.md). Read by glibc at exec, so it can only be set for a child.
  const workerEnv: Record<string, string> = { MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1' };
  if (!config.natsUrl?.length) {
    try {
      embedded = await startPrimaryNats(config, log);
    } catch (err) {
      if (err instanceof NatsServerNotFoundError) {
        console.error(`nats-ws-sidecar: ${err.message}`);
        process.exit(69); // EX_UNAVAILABLE
      }
      log.fatal({ err }, 'start-up failed: the embedded NATS did not start');
      process.exit(1);
    }
    workerEnv.NATS_URL = embedded.url;
  }

  // `/metrics` reaches one worker; it answers with every ready worker's series (each labelled with
  // its instance_id), gathered here, so a scrape of the port sees the whole host.
  let nextCollect = 0;
  const collecting = new Map<number, (from: Worker, series: SeriesJson) => void>();
  const scrape = (requester: Worker, id: number): void => {
    const ready = slots.flatMap((s) => (s.worker && s.instanceId && s.worker.isConnected() ? [s.worker] : []));
    const key = nextCollect++;
    const waiting = new Set(ready);
    const got: SeriesJson[] = [];
    const finish = (): void => {
      clearTimeout(timer);
      collecting.delete(key);
      AggregatorRegistry.aggregate(got)
        .metrics()
        .then(
          (text) => tell(requester, { type: 'scraped', id, text }),
          (err: unknown) => log.warn({ err }, 'could not merge the workers\' metrics'),
        );
    };
    const timer = setTimeout(finish, SCRAPE_TIMEOUT_MS);
    collecting.set(key, (from, series) => {
      if (!waiting.delete(from)) return;
      got.push(series);
      if (waiting.size === 0) finish();
    });
    for (const w of ready) tell(w, { type: 'collect', id: key });
    if (ready.length === 0) finish();
  };

  let printed = !devToken;
  const fork = (slot: Slot): void => {
    slot.restartTimer = undefined;
    const env: Record<string, string> = { ...workerEnv, [WORKER_INDEX_ENV]: String(slot.index) };
    // A configured id names the slot (stable across restarts); otherwise each process picks one.
    if (config.instanceId) env.SIDECAR_INSTANCE_ID = `${config.instanceId}-${slot.index}`;
    const worker = cluster.fork(env);
    slot.worker = worker;
    slot.instanceId = undefined;
    slot.startedAt = Date.now();
    log.info({ worker: slot.index, pid: worker.process.pid }, 'worker started');
    worker.on('message', (msg: ToPrimary) => {
      if (msg?.type === 'scrape') return scrape(worker, msg.id);
      if (msg?.type === 'collected') return collecting.get(msg.id)?.(worker, msg.series);
      if (msg?.type === 'fatal') {
        // Every worker would fail the same way (the port is taken, the stream cannot be used).
        log.fatal({ worker: slot.index, reason: msg.reason }, 'a worker cannot start: stopping every worker');
        return void stop(1);
      }
      if (msg?.type !== 'ready') return;
      slot.instanceId = msg.instanceId;
      log.info({ worker: slot.index, pid: worker.process.pid, instance: msg.instanceId, url: msg.url }, 'worker ready');
      if (printed) return;
      printed = true;
      void printDevToken(config.jwtSecret!, msg, log).catch((err: unknown) => log.error({ err }, 'could not mint the dev token'));
    });
    worker.on('exit', (code, signal) => {
      if (slot.worker !== worker) return;
      slot.worker = undefined;
      if (stopping) return;
      const lived = Date.now() - slot.startedAt;
      slot.crashes = lived >= STABLE_AFTER_MS ? 0 : slot.crashes + 1;
      const delay = restartDelay(slot.crashes);
      log.error(
        { worker: slot.index, pid: worker.process.pid, instance: slot.instanceId, code, signal, livedMs: lived, restartInMs: delay },
        'worker exited: restarting it',
      );
      slot.restartTimer = setTimeout(() => fork(slot), delay);
    });
  };

  starting = false;
  if (signalled > 0) return void stop(); // signalled while the embedded NATS started
  log.info({ workers: config.workers, nats: embedded?.url ?? config.natsUrl }, `starting ${config.workers} workers`);
  for (let index = 0; index < config.workers; index++) {
    const slot: Slot = { index, startedAt: Date.now(), crashes: 0 };
    slots.push(slot);
    fork(slot);
  }
}

/** A worker: one sidecar; stops when the primary says so (or goes away). */
export async function runWorker(config: Config, baseLog: Logger): Promise<void> {
  const log = baseLog.child({ worker: Number(process.env[WORKER_INDEX_ENV]) });
  const starting = new AbortController();
  let sidecar: Sidecar | undefined;
  let stopping = false;
  const stop = (why: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'worker stopping');
    if (!sidecar) return starting.abort(new Error(`${why} while starting`));
    sidecar.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  // The primary coordinates a Ctrl-C (the terminal sends SIGINT to every process of the group).
  process.on('SIGINT', () => {});
  process.on('SIGTERM', () => stop('SIGTERM'));
  // `/metrics` answers with every worker's series, through the primary; this one's alone if it is slow.
  let nextScrape = 0;
  const scrapes = new Map<number, (text: string) => void>();
  const metricsText = (own: SidecarMetrics): Promise<string> =>
    new Promise((resolve) => {
      const id = nextScrape++;
      const timer = setTimeout(() => {
        scrapes.delete(id);
        resolve(own.text());
      }, SCRAPE_TIMEOUT_MS + 1_000);
      scrapes.set(id, (text) => {
        clearTimeout(timer);
        scrapes.delete(id);
        resolve(text);
      });
      const ask: ToPrimary = { type: 'scrape', id };
      process.send?.(ask);
    });
  process.on('message', (msg: ToWorker) => {
    if (msg?.type === 'stop') stop('asked by the primary');
    else if (msg?.type === 'scraped') scrapes.get(msg.id)?.(msg.text);
    else if (msg?.type === 'collect' && sidecar) {
      const { id } = msg;
      sidecar.metrics.json().then(
        (series) => process.send?.({ type: 'collected', id, series } satisfies ToPrimary),
        (err: unknown) => log.warn({ err }, 'could not collect metrics for a scrape'),
      );
    }
  });

  try {
    sidecar = await Sidecar.start(config, { logger: log, signal: starting.signal, metricsText });
  } catch (err) {
    if (starting.signal.aborted) process.exit(0);
    log.fatal({ err }, 'start-up failed');
    if (!cannotStart(err)) process.exit(1); // the primary starts it again
    const fatal: ToPrimary = { type: 'fatal', reason: (err as Error).message };
    if (!process.send?.(fatal, undefined, {}, () => process.exit(1))) process.exit(1);
    return;
  }
  const ready: ToPrimary = { type: 'ready', instanceId: sidecar.instanceId, url: sidecar.url, wsUrl: sidecar.wsUrl };
  process.send?.(ready);
}

/** Start-up errors a restart cannot fix: the primary stops rather than restart workers forever. */
function cannotStart(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL' || code === 'stream_incompatible';
}

function tell(worker: Worker, msg: ToWorker): void {
  // A worker whose channel is gone can still be asked to stop, with a signal; the rest is lost with it.
  const failed = (): void => void (msg.type === 'stop' && worker.process.kill('SIGTERM'));
  if (!worker.isConnected()) return failed();
  worker.send(msg, (err: Error | null) => err && failed());
}

/** The embedded nats-server, as Sidecar.start would run it, but owned by the primary. */
async function startPrimaryNats(config: Config, log: Logger): Promise<EmbeddedNats> {
  const storeDir = resolve(join(config.dataDir, 'nats'));
  const serverName = `embedded-${hostname().replace(/[^A-Za-z0-9_-]/g, '').slice(0, 24) || 'sidecar'}-${randomBytes(3).toString('hex')}`;
  const embedded = await startEmbeddedNats({ storeDir, port: config.embeddedNatsPort, serverName }).catch((err: unknown) => {
    if (config.embeddedNatsPort === 0 || err instanceof NatsServerNotFoundError) throw err;
    log.warn(`port ${config.embeddedNatsPort} is taken: embedded NATS uses a free port instead`);
    return startEmbeddedNats({ storeDir, port: 0, serverName });
  });
  log.info({ url: embedded.url, storeDir }, `embedded NATS server running at ${embedded.url} (publish events there)`);
  return embedded;
}
