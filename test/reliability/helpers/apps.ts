/** Apps built on the client SDK, as a frontend would use it, with quick reconnects for tests. */
import WebSocket from 'ws';
import { connect } from '@nats-io/transport-node';
import { Client, type Options } from '../../../src/client/index.js';
import { Publisher } from '../../../src/publisher/index.js';
import { mintToken } from '../../../src/auth.js';
import { TEST_SECRET } from '../../helpers/sidecar.js';
import { DeliveryLedger, type StreamKey } from './ledger.js';

const clients = new Set<Client>();

export function sdkClient(url: Options['url'], userId: string, projects: string[], extra: Partial<Options> = {}): Client {
  const client = new Client({
    url,
    token: () => mintToken(TEST_SECRET, { sub: userId, projects }),
    WebSocket: WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 1000,
    timeout: 5000,
    ...extra,
  });
  clients.add(client);
  return client;
}

export async function closeAllApps(): Promise<void> {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
}

/**
 * A publisher for failovers: short attempts (the ledger tries again with the same message id).
 * It reconnects faster than the sidecar (100 ms against 500 ms), as one of many backends would:
 * its retries can land while the sidecar is still reconnecting, which is what a live-path gap is.
 */
export async function reliablePublisher(servers: string | string[]): Promise<Publisher> {
  const nc = await connect({ servers, maxReconnectAttempts: -1, reconnectTimeWait: 100, name: 'reliability publisher' });
  const pub = new Publisher(nc, { timeout: 2000, maxAttempts: 4, retryDelay: 100 });
  return Object.assign(pub, { close: () => nc.drain().catch(() => nc.close()) });
}

export interface AppPlan {
  name: string;
  userId: string;
  projects: string[];
  /** The client follows its user's direct messages too. */
  direct: boolean;
  url: Options['url'];
}

/** Connect each app, subscribe its projects, and register it with the ledger. */
export async function startApps(ledger: DeliveryLedger, plans: AppPlan[], extra: Partial<Options> = {}): Promise<Client[]> {
  return Promise.all(
    plans.map(async (p) => {
      const client = sdkClient(p.url, p.userId, p.projects, extra);
      const streams: StreamKey[] = p.projects.map((id) => `project:${id}`);
      if (p.direct) streams.push(`user:${p.userId}`);
      ledger.watch(p.name, client, streams);
      await client.connect();
      await Promise.all(p.projects.map((id) => client.subscribe(id)));
      return client;
    }),
  );
}

/** Polls until every confirmed event reached every app (that `only` accepts); false at the deadline. */
export async function waitComplete(ledger: DeliveryLedger, timeoutMs: number, only?: (app: string, stream: string) => boolean): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!ledger.complete(only)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}
