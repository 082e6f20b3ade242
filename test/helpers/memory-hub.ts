/**
 * The transport-agnostic core with in-memory fakes, for unit tests of core logic: a transport
 * that records what is written, a hub whose broker a test can override method by method, and a
 * hub on the memory broker (memory-broker.ts), which stores, numbers and replays for real.
 * (Behaviour against real sockets and NATS belongs in test/integration.)
 */
import pino from 'pino';
import type { Principal } from '../../src/auth.js';
import { loadConfig, type ConfigInput } from '../../src/config.js';
import type { Connection } from '../../src/core/connection.js';
import { Hub } from '../../src/core/hub.js';
import type { AuthPort, BrokerPort, OutFrame, Transport } from '../../src/core/ports.js';
import { MemoryBroker, type MemoryBrokerOptions } from './memory-broker.js';

export class MemoryTransport implements Transport {
  readonly written: string[] = [];
  bufferedAmount = 0;
  closed: { code: number; reason: string } | undefined;
  write(frames: readonly OutFrame[]): void {
    for (const f of frames) this.written.push(f.text);
  }
  pings = 0;
  terminated = false;
  ping(): void {
    this.pings += 1;
  }
  close(code: number, reason: string): void {
    this.closed ??= { code, reason };
  }
  terminate(): void {
    this.terminated = true;
  }
  frames(): any[] {
    return this.written.map((t) => JSON.parse(t));
  }
  types(): string[] {
    return this.frames().map((f) => f.type);
  }
}

export const principal: Principal = { userId: 'u1', roles: [], projects: '*', expiresAt: undefined };

const hubs: Hub[] = [];

function makeHub(broker: BrokerPort, config: ConfigInput, auth: AuthPort): Hub {
  const hub = new Hub({
    config: loadConfig({ env: {}, overrides: { jwtSecret: 'unit-test-secret-0123456789abcdef', ...config } }),
    instanceId: 'unit',
    log: pino({ level: 'silent' }),
    broker,
    auth,
  });
  hubs.push(hub);
  return hub;
}

const anyToken: AuthPort = { verify: async () => principal };

/** A hub on a broker that is always ready, holds nothing and is at epoch `e1`, unless overridden. */
export function memoryHub(broker: Partial<BrokerPort> = {}, config: ConfigInput = {}, auth: AuthPort = anyToken): Hub {
  const fake: BrokerPort = {
    setInterest() {},
    interestReady: async () => {},
    epoch: 'e1',
    replay: async () => ({ truncated: false, epoch: 'e1', restarted: false }),
    historyPage: async () => ({ epoch: 'e1', events: [], more: false }),
    backlog: async () => {},
    acknowledge() {},
    written() {},
    ...broker,
  };
  return makeHub(fake, config, auth);
}

/** A hub on a memory broker that delivers live to it (publish) and tells it of a new epoch (recreate). */
export function memoryBrokerHub(
  options: { config?: ConfigInput; auth?: AuthPort; broker?: MemoryBrokerOptions } = {},
): { hub: Hub; broker: MemoryBroker } {
  const broker = new MemoryBroker(options.broker);
  const hub = makeHub(broker, options.config ?? {}, options.auth ?? anyToken);
  broker.sink = (topic, event) => hub.publish(topic, event);
  broker.epochSink = (epoch, previous) => hub.epochChanged(epoch, previous);
  return { hub, broker };
}

/** A connection with the test principal (or `who`), authenticated, auth_success written and forgotten. */
export async function openConnection(hub: Hub, who: Principal = principal): Promise<{ conn: Connection; transport: MemoryTransport }> {
  const transport = new MemoryTransport();
  const conn = hub.connect(transport, 'test');
  await hub.authenticate(conn, who);
  conn.flush(Date.now());
  transport.written.length = 0;
  return { conn, transport };
}

/** Let the hub's per-tick flush run. */
export const tick = (): Promise<void> => new Promise((ok) => setImmediate(ok));

/** Close every hub made since the last call (for afterEach). */
export async function closeMemoryHubs(): Promise<void> {
  await Promise.all(hubs.splice(0).map((h) => h.close()));
}
