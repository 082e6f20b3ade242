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
import { createHttpServer, WS_PATH } from './http/server.js';
import { createLogger } from './logger.js';
import { NatsBroker } from './nats/broker.js';
import { NatsServerNotFoundError, startEmbeddedNats, type EmbeddedNats } from './nats/embedded-server.js';

export interface SidecarOptions {
  logger?: Logger;
  /** Replaces the JWT verifier built from config (library use). */
  verifier?: TokenVerifier;
}

export class Sidecar {
  private draining = false;
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly config: Config,
    readonly instanceId: string,
    readonly log: Logger,
    readonly broker: NatsBroker,
    readonly hub: Hub,
    readonly server: Server,
    readonly embeddedNats: EmbeddedNats | undefined,
  ) {}

  /** Start everything; resolves once the port is listening and the stream is ready. */
  static async start(config: Config, options: SidecarOptions = {}): Promise<Sidecar> {
    const instanceId = config.instanceId ?? `${hostname().replace(/[^A-Za-z0-9_-]/g, '').slice(0, 24) || 'sidecar'}-${randomBytes(3).toString('hex')}`;
    const log = options.logger ?? createLogger(config.logLevel, { instance: instanceId });
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

    let broker: NatsBroker | undefined;
    try {
      broker = await NatsBroker.connect(natsConfig, log.child({ component: 'nats' }), `nats-ws-sidecar ${instanceId}`);
      await broker.ensureStream();
      const hub = new Hub({ config, instanceId, log: log.child({ component: 'hub' }), broker, auth: verifier });
      broker.setSink((topic, event) => hub.publish(topic, event));
      broker.setLossSink((topic, afterSeq) => hub.historyLost(topic, afterSeq));
      // Broadcasts go to every connection: one permanent subscription.
      hub.broker.setInterest('broadcast', true);

      let sidecar: Sidecar | undefined;
      const draining = () => sidecar?.draining ?? false;
      const api = createApi({ hub, broker, log, instanceId, draining, startedAt: Date.now() });
      const server = createHttpServer({ config, hub, log, api: api.callback(), draining });
      await new Promise<void>((ok, fail) => {
        server.once('error', fail);
        server.listen(config.port, config.host, () => {
          server.off('error', fail);
          ok();
        });
      });
      sidecar = new Sidecar(config, instanceId, log, broker, hub, server, embedded);
      log.info({ url: sidecar.url, ws: sidecar.wsUrl }, 'nats-ws-sidecar listening');
      return sidecar;
    } catch (err) {
      await broker?.close().catch(() => {});
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
   * Graceful stop: refuse new upgrades, close sockets with 1001 (clients reconnect elsewhere),
   * drain NATS, stop the embedded server. Bounded by shutdownTimeout.
   */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.draining = true;
    this.log.info({ connections: this.hub.connections.size }, 'shutting down');
    const work = (async () => {
      const closed = new Promise<void>((ok) => this.server.close(() => ok()));
      await this.hub.close(CloseCode.GoingAway, 'server shutting down; reconnect');
      this.server.closeAllConnections?.();
      await this.broker.close();
      await closed;
    })();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((ok) => {
      timer = setTimeout(() => {
        this.log.warn('shutdown timeout: forcing exit of open work');
        ok();
      }, this.config.shutdownTimeout);
    });
    await Promise.race([work, timeout]);
    clearTimeout(timer);
    await this.embeddedNats?.stop().catch(() => {});
    this.log.info('stopped');
  }
}
