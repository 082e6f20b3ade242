/** Real nats-server instances for tests: one per call, on free ports, in throwaway directories. */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager, StorageType } from '@nats-io/jetstream';
import { natsConfigValue, startEmbeddedNats, type EmbeddedNats, type EmbeddedNatsOptions } from '../../src/nats/embedded-server.js';
import { freePorts } from './ports.js';

/** The test launcher's options: the product's, plus a cluster and the server's WebSocket listener. */
export interface TestNatsOptions extends Partial<Omit<EmbeddedNatsOptions, 'extraConfig' | 'extraPorts'>> {
  /** When set (0 = a free port), the server's own WebSocket listener, without TLS. */
  websocketPort?: number;
  /** A cluster member: its route port and the `nats-route://host:port` URLs of the others. */
  cluster?: { name: string; port: number; routes: string[] };
  /** Appended verbatim to the generated config. */
  extraConfig?: string;
}

export interface TestNats extends EmbeddedNats {
  readonly storeDir: string;
  /** ws://127.0.0.1:WSPORT when websocketPort was given. */
  readonly websocketUrl?: string;
  readonly clusterPort?: number;
  /** SIGKILL; resolves once exited. */
  kill(): Promise<void>;
  /** Stops, then starts again on the same ports with the same store. */
  restart(): Promise<void>;
  /** Stops the server and removes its directory. */
  cleanup(): Promise<void>;
}

export async function startTestNats(opts: TestNatsOptions = {}): Promise<TestNats> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'nats-ws-test-'));
  const { websocketPort, cluster, extraConfig, ...base } = opts;
  const storeDir = opts.storeDir ?? path.join(dir, 'store');
  const host = opts.host ?? '127.0.0.1';
  const q = natsConfigValue;
  let server: EmbeddedNats;
  try {
    server = await startEmbeddedNats({
      ...base,
      storeDir,
      // A websocket port of 0 is picked with the client port.
      extraPorts: websocketPort === 0 ? 1 : 0,
      extraConfig: (ports) => {
        const lines: string[] = [];
        if (websocketPort !== undefined) {
          lines.push(`websocket {`, `  host: ${q(host)}`, `  port: ${websocketPort || ports[0]}`, `  no_tls: true`, `}`);
        }
        if (cluster) {
          lines.push(`cluster {`, `  name: ${q(cluster.name)}`, `  host: ${q(host)}`, `  port: ${cluster.port}`, `  routes: [${cluster.routes.map(q).join(', ')}]`, `}`);
        }
        if (extraConfig) lines.push(extraConfig);
        return lines.join('\n');
      },
    });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const wsPort = websocketPort === undefined ? undefined : websocketPort || server.extraPorts[0];
  const cleanup = async (): Promise<void> => {
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  };
  // Extend the instance itself so its live getters (pid, exited change on restart) keep working.
  return Object.assign(server, {
    storeDir,
    websocketUrl: wsPort === undefined ? undefined : `ws://127.0.0.1:${wsPort}`,
    clusterPort: cluster?.port,
    kill: () => server.stop('SIGKILL'),
    restart: async () => {
      await server.stop();
      await server.start();
    },
    cleanup,
  });
}

export interface TestCluster {
  servers: TestNats[];
  urls: string[];
  cleanup(): Promise<void>;
}

const META_LEADER_TIMEOUT_MS = 15_000;

/**
 * Starts `size` clustered JetStream servers routed to each other and resolves once a JetStream
 * meta leader answers through every member (so R3 streams can be placed).
 */
export async function startTestCluster(size = 3): Promise<TestCluster> {
  const clusterPorts = await freePorts(size);
  const routes = clusterPorts.map((p) => `nats-route://127.0.0.1:${p}`);
  const started = await Promise.allSettled(
    clusterPorts.map((port, i) =>
      startTestNats({
        serverName: `n${i + 1}`,
        cluster: { name: 'test-cluster', port, routes: routes.filter((_, j) => j !== i) },
      }),
    ),
  );
  const servers = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const cleanup = async (): Promise<void> => {
    await Promise.all(servers.map((s) => s.cleanup()));
  };
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await cleanup();
    throw failed.reason;
  }

  try {
    const deadline = Date.now() + META_LEADER_TIMEOUT_MS;
    await Promise.all(servers.map((s) => waitForJetStream(s.url, deadline)));
    await waitForPlacement(servers[0].url, size, deadline);
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { servers, urls: servers.map((s) => s.url), cleanup };
}

/**
 * A meta leader can answer before it knows every peer; until it does, an R`size` stream fails
 * with "no suitable peers for placement" (seen on a loaded machine). Place a throwaway stream of
 * that size, retrying, then delete it.
 */
async function waitForPlacement(url: string, size: number, deadline: number): Promise<void> {
  const nc = await connect({ servers: url, reconnect: false });
  try {
    const jsm = await jetstreamManager(nc, { timeout: 2_000, checkAPI: false });
    let lastError: unknown;
    for (let delay = 50; Date.now() < deadline; delay = Math.min(delay * 2, 500)) {
      try {
        await jsm.streams.add({ name: 'PLACEMENT_PROBE', subjects: ['placement-probe.>'], num_replicas: size, storage: StorageType.Memory });
        await jsm.streams.delete('PLACEMENT_PROBE');
        return;
      } catch (err) {
        lastError = err;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    throw new Error(`the cluster cannot place an R${size} stream within ${META_LEADER_TIMEOUT_MS} ms`, { cause: lastError });
  } finally {
    await nc.close();
  }
}

/** Retries a JetStream account-info request until it succeeds (meta leader elected) or the deadline. */
async function waitForJetStream(url: string, deadline: number): Promise<void> {
  const nc = await connect({ servers: url, reconnect: false });
  try {
    const jsm = await jetstreamManager(nc, { timeout: 1_000, checkAPI: false });
    let lastError: unknown;
    for (let delay = 50; Date.now() < deadline; delay = Math.min(delay * 2, 500)) {
      try {
        await jsm.getAccountInfo();
        return;
      } catch (err) {
        lastError = err;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    throw new Error(`no JetStream meta leader reachable via ${url} within ${META_LEADER_TIMEOUT_MS} ms`, {
      cause: lastError,
    });
  } finally {
    await nc.close();
  }
}
