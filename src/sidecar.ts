/**
 * Wiring: config -> (embedded NATS) -> broker -> hub -> HTTP/WebSocket server. This is the only
 * module that knows every piece; each piece knows only the small interfaces it is given.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { createTokenVerifier, type TokenVerifier } from './auth.js';
import type { Config } from './config.js';
import { Hub } from './core/hub.js';
import { CloseCode } from './protocol.js';
import { createApi } from './http/api.js';
import { SidecarMetrics } from './http/metrics.js';
import { createHttpServer, WS_PATH } from './http/server.js';
import { SidecarError } from './errors.js';
import { createLogger } from './logger.js';
import { NatsBroker } from './nats/broker.js';
import { NatsClientEvents } from './nats/client-events.js';
import { NatsLifecycle } from './nats/lifecycle.js';
import { NatsPresence } from './nats/presence.js';
import { ProjectAuthorizer } from './nats/project-authorizer.js';
import { NatsServerNotFoundError, startEmbeddedNats, type EmbeddedNats } from './nats/embedded-server.js';
import { Fleet } from './nats/fleet.js';
import { createOperations } from './operations.js';
import { FileService } from './files/service.js';
import { FileStore } from './files/store.js';
import { spanPort, traceDelivery, tracedAuth, tracingEnabled } from './tracing.js';

export interface SidecarOptions {
  logger?: Logger;
  /** Replaces the JWT verifier built from config (library use). */
  verifier?: TokenVerifier;
  /** Gives up waiting for NATS at start-up (a signal before the sidecar was ready). */
  signal?: AbortSignal;
  /** Answers `/metrics` instead of this instance's own series (workers mode: the host's workers'). */
  metricsText?: (own: SidecarMetrics) => Promise<string>;
}

/** Pauses between attempts to reach NATS at start-up: doubling, at most this long. */
const START_RETRY_MIN_MS = 250;
const START_RETRY_MAX_MS = 2_000;

export class Sidecar {
  private draining = false;
  private stopping: Promise<void> | undefined;
  /** @internal File uploads and downloads (set once started). */
  files: FileService | undefined;

  // The parts are for the project's own tests and benchmarks, not API: `@internal` keeps them out
  // of the published type declarations (stripInternal). The API is start, stop, the addresses,
  // config and instanceId.
  private constructor(
    readonly config: Config,
    readonly instanceId: string,
    /** @internal */ readonly log: Logger,
    /** @internal */ readonly broker: NatsBroker,
    /** @internal */ readonly hub: Hub,
    /** @internal */ readonly server: Server,
    /** @internal */ readonly embeddedNats: EmbeddedNats | undefined,
    /** @internal */ readonly fleet: Fleet,
    /** @internal */ readonly metrics: SidecarMetrics,
    /** @internal */ readonly presence: NatsPresence,
    /** @internal */ readonly authorizer: ProjectAuthorizer,
    /** @internal Undefined with lifecycleEvents off. */
    readonly lifecycle: NatsLifecycle | undefined,
  ) {}

  /** Start everything; resolves once the port is listening and the stream is ready. */
  static async start(config: Config, options: SidecarOptions = {}): Promise<Sidecar> {
    const instanceId = config.instanceId ?? `${hostname().replace(/[^A-Za-z0-9_-]/g, '').slice(0, 24) || 'sidecar'}-${randomBytes(3).toString('hex')}`;
    const log = options.logger?.child({ instance: instanceId }) ?? createLogger(config.logLevel, { instance: instanceId });
    const verifier = options.verifier ?? createTokenVerifier(config);

    let embedded: EmbeddedNats | undefined;
    let natsConfig = config;
    if (!config.natsUrl?.length) {
      const storeDir = resolve(join(config.dataDir, 'nats'));
      const serverName = `embedded-${instanceId}`;
      embedded = await startEmbeddedNats({ storeDir, port: config.embeddedNatsPort, serverName }).catch((err) => {
        if (config.embeddedNatsPort === 0 || err instanceof NatsServerNotFoundError) throw err;
        log.warn(`port ${config.embeddedNatsPort} is taken: embedded NATS uses a free port instead`);
        return startEmbeddedNats({ storeDir, port: 0, serverName });
      });
      natsConfig = { ...config, natsUrl: [embedded.url] };
      log.info({ url: embedded.url, storeDir }, `embedded NATS server running at ${embedded.url} (publish events there)`);
    }

    let sidecar: Sidecar | undefined;
    const draining = () => sidecar?.draining ?? false;
    // The port answers from the start: alive, not ready, until NATS does.
    const http = createHttpServer({ config, log, draining });
    const server = http.server;
    let broker: NatsBroker | undefined;
    let fleet: Fleet | undefined;
    let metrics: SidecarMetrics | undefined;
    let presence: NatsPresence | undefined;
    let files: FileService | undefined;
    let lifecycle: NatsLifecycle | undefined;
    try {
      await new Promise<void>((ok, fail) => {
        server.once('error', fail);
        server.listen(config.port, config.host, () => {
          server.off('error', fail);
          ok();
        });
      });
      ({ broker, presence, lifecycle } = await reachNats(natsConfig, instanceId, log, options.signal));
      const b = broker;
      const startedAt = Date.now();
      const authorizer = new ProjectAuthorizer(config, b.nc, instanceId, log.child({ component: 'authz' }));
      const clientEvents = new NatsClientEvents(b.nc, config.subjectPrefix, instanceId, config.clientEvents);
      const hub = new Hub({
        config,
        instanceId,
        log: log.child({ component: 'hub' }),
        broker,
        auth: tracedAuth(verifier),
        presence,
        access: authorizer,
        clientEvents,
        lifecycle,
        spans: spanPort(),
      });
      metrics = new SidecarMetrics({ hub, broker, instanceId, startedAt, presence, lifecycle });
      broker.setSink(metrics.timeDelivery((topic, event) => hub.publish(topic, event)));
      broker.setLossSink((topic, afterSeq) => hub.historyLost(topic, afterSeq));
      // A new epoch is a new stream: NATS lost its store (or an operator deleted it), and the file
      // buckets with it; they are created again now, not on the first upload that fails.
      let fileBuckets: FileStore | undefined;
      broker.setEpochSink((epoch, previous) => {
        hub.epochChanged(epoch, previous);
        void fileBuckets?.recreate('the event stream is new: file buckets created again where they were missing');
      });
      broker.watchStream();
      if (tracingEnabled()) broker.setTraceSink(traceDelivery);
      authorizer.listenForRevocations((userId, projectId) => hub.revoke(userId, projectId));
      // Broadcasts go to every connection: one permanent subscription.
      b.setInterest('broadcast', true);

      const natsLink = broker;
      const operations = createOperations({
        hub,
        metrics: () => metrics!.snapshot(),
        status: { startedAt, draining, natsConnected: () => natsLink.connected },
      });
      fleet = new Fleet(broker, { instanceId, heartbeat: config.fleetHeartbeat, timeout: config.fleetTimeout }, log.child({ component: 'fleet' }));
      fleet.start(operations);
      const fileStore = await FileStore.open(b.nc, b.js, b.jsm, { bucket: config.filesBucket, replicas: config.filesReplicas, fileTTL: config.fileTTL, timeout: 5_000 }, log.child({ component: 'files' }));
      fileBuckets = fileStore;
      files = new FileService({
        store: fileStore,
        access: authorizer,
        publish: (topic, payload, msgId) => b.publish(topic, payload, msgId),
        config,
        instanceId,
        log: log.child({ component: 'files' }),
      });
      files.start();
      const api = createApi({
        hub,
        broker,
        log,
        instanceId,
        draining,
        startedAt,
        metrics,
        fleet,
        operations,
        verifier,
        bodyLimit: config.apiBodyLimit,
        presence,
        presenceReady: () => presence!.ready,
        files,
        metricsText: options.metricsText && (() => options.metricsText!(metrics!)),
      });
      http.serve(hub, api.callback());
      sidecar = new Sidecar(config, instanceId, log, broker, hub, server, embedded, fleet, metrics, presence, authorizer, lifecycle);
      sidecar.files = files;
      log.info({ url: sidecar.url, ws: sidecar.wsUrl }, 'nats-ws-sidecar listening');
      return sidecar;
    } catch (err) {
      await lifecycle?.stop().catch(() => {});
      await presence?.stop().catch(() => {});
      await files?.stop();
      fleet?.stop();
      metrics?.close();
      await broker?.close().catch(() => {});
      await new Promise((ok) => server.close(ok));
      await embedded?.stop().catch(() => {});
      throw err;
    }
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Base HTTP URL, for clients on this machine. */
  get url(): string {
    const host = this.config.host === '0.0.0.0' || this.config.host === '::' ? '127.0.0.1' : this.config.host;
    return `http://${host.includes(':') ? `[${host}]` : host}:${this.port}`;
  }

  get wsUrl(): string {
    return this.url.replace(/^http/, 'ws') + WS_PATH;
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /**
   * Graceful stop: readyz turns 503 and new upgrades are refused at once; after `drainDelay` (time
   * for load balancers to notice) sockets close with 1001 (clients reconnect elsewhere), the
   * instance leaves the fleet, NATS drains and the port closes. Bounded by shutdownTimeout.
   */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.draining = true;
    this.log.info({ connections: this.hub.connections.size }, 'shutting down');
    // Every step runs even when one before it failed: a failing step must not leave NATS
    // connected, the port open or the embedded server running.
    const steps: [string, () => unknown][] = [
      ['drain delay', () => this.config.drainDelay > 0 && new Promise((ok) => setTimeout(ok, this.config.drainDelay))],
      ['connections', () => this.hub.close(CloseCode.GoingAway, 'server shutting down; reconnect to another instance')],
      // Their `disconnected` events go out while this instance is still a live member.
      ['lifecycle', () => this.lifecycle?.stop()],
      // The closed connections' users leave (user_left where they were the last) before NATS goes.
      ['presence', () => this.presence.stop()],
      ['authorizer', () => this.authorizer.stop()],
      // Writes in progress stop and release their upload leases while NATS is still there.
      ['files', () => this.files?.stop()],
      ['fleet', () => this.fleet.stop()],
      ['nats', () => this.broker.close()],
      // The port stays open until here so readyz can answer 503 while the drain runs.
      [
        'http',
        () => {
          const closed = new Promise<void>((ok) => this.server.close(() => ok()));
          this.server.closeAllConnections?.();
          return closed;
        },
      ],
    ];
    const work = (async () => {
      for (const [name, step] of steps) {
        try {
          await step();
        } catch (err) {
          this.log.error({ err, step: name }, 'shutdown step failed; going on with the next');
        }
      }
    })();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((ok) => {
      timer = setTimeout(() => {
        this.log.warn('shutdown timeout: forcing exit of open work');
        ok();
      }, this.config.shutdownTimeout);
    });
    try {
      await Promise.race([work, timeout]);
    } finally {
      clearTimeout(timer);
      this.metrics.close();
      await this.embeddedNats?.stop().catch(() => {});
      this.log.info('stopped');
    }
  }
}

/**
 * Connect to NATS, make sure of the stream and start presence, retrying until it works: NATS may
 * start after the sidecar (containers started together) or be away for a while. Each attempt is
 * logged; the pause doubles up to START_RETRY_MAX_MS, so the sidecar is ready within about that
 * long of NATS answering. Only a configuration NATS cannot take (stream_incompatible) or the
 * signal ends the wait.
 */
async function reachNats(
  config: Config,
  instanceId: string,
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<{ broker: NatsBroker; presence: NatsPresence; lifecycle: NatsLifecycle | undefined }> {
  for (let attempt = 1; ; attempt++) {
    signal?.throwIfAborted();
    let broker: NatsBroker | undefined;
    try {
      broker = await NatsBroker.connect(config, log.child({ component: 'nats' }), `nats-ws-sidecar ${instanceId}`);
      await broker.ensureStream();
      const b = broker;
      const presence = await NatsPresence.start({
        nc: b.nc,
        js: b.js,
        jsm: b.jsm,
        config,
        instanceId,
        log: log.child({ component: 'presence' }),
        publisher: b.publisher,
        publish: (topic, payload, msgId, aboutUser) => b.publish(topic, payload, msgId, aboutUser),
      });
      let lifecycle: NatsLifecycle | undefined;
      if (config.lifecycleEvents) {
        lifecycle = await NatsLifecycle.start({
          nc: b.nc,
          js: b.js,
          jsm: b.jsm,
          config,
          instanceId,
          log: log.child({ component: 'lifecycle' }),
          publisher: b.publisher,
          presence,
        }).catch(async (err: unknown) => {
          await presence.stop().catch(() => {});
          throw err;
        });
      }
      if (attempt > 1) log.info({ attempt }, 'NATS answers: starting');
      return { broker, presence, lifecycle };
    } catch (err) {
      await broker?.close().catch(() => {});
      if (err instanceof SidecarError && err.code === 'stream_incompatible') throw err;
      const delay = Math.min(START_RETRY_MAX_MS, START_RETRY_MIN_MS * 2 ** (attempt - 1));
      log.warn(
        { servers: config.natsUrl, attempt, retryInMs: delay, reason: (err as Error).message },
        'NATS is not reachable (or JetStream not ready) yet: not ready, retrying',
      );
      await new Promise<void>((ok, fail) => {
        const timer = setTimeout(ok, delay);
        signal?.addEventListener('abort', () => {
          clearTimeout(timer);
          fail(signal.reason instanceof Error ? signal.reason : new Error('start-up aborted'));
        }, { once: true });
      });
    }
  }
}
