/** Real nats-server instances for tests: one per call, on free ports, in throwaway directories. */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager, StorageType } from '@nats-io/jetstream';
import { startEmbeddedNats, type EmbeddedNats, type EmbeddedNatsOptions } from '../../src/nats/embedded-server.js';
import { freePorts } from './ports.js';

export interface TestNats extends EmbeddedNats {
  readonly storeDir: string;
  /** Stops the server and removes its directory. */
  cleanup(): Promise<void>;
}

export async function startTestNats(opts: Partial<EmbeddedNatsOptions> = {}): Promise<TestNats> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'nats-ws-test-'));
  const storeDir = opts.storeDir ?? path.join(dir, 'store');
  let server: EmbeddedNats;
  try {
    server = await startEmbeddedNats({ ...opts, storeDir });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const cleanup = async (): Promise<void> => {
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  };
  // Extend the instance itself so its live getters (pid, exited change on restart) keep working.
  return Object.assign(server, { storeDir, cleanup });
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
