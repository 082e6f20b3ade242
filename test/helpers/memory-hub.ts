/**
 * The transport-agnostic core with in-memory fakes, for unit tests of core logic: a transport
 * that records what is written, and a hub whose broker a test can override method by method.
 * (Behaviour against real sockets and NATS belongs in test/integration.)
 */
import pino from 'pino';
import type { Principal } from '../../src/auth.js';
import { loadConfig, type ConfigInput } from '../../src/config.js';
import { Hub } from '../../src/core/hub.js';
import type { BrokerPort, OutFrame, Transport } from '../../src/core/ports.js';

export class MemoryTransport implements Transport {
  readonly written: string[] = [];
  bufferedAmount = 0;
  closed: { code: number; reason: string } | undefined;
  write(frames: readonly OutFrame[]): void {
    for (const f of frames) this.written.push(f.text);
  }
  ping(): void {}
  close(code: number, reason: string): void {
    this.closed ??= { code, reason };
  }
  terminate(): void {}
  frames(): any[] {
    return this.written.map((t) => JSON.parse(t));
  }
  types(): string[] {
    return this.frames().map((f) => f.type);
  }
}

export const principal: Principal = { userId: 'u1', roles: [], projects: '*', expiresAt: undefined };

const hubs: Hub[] = [];

/** A hub on a broker that is always ready, holds nothing and is at epoch `e1`, unless overridden. */
export function memoryHub(broker: Partial<BrokerPort> = {}, config: ConfigInput = {}): Hub {
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
  const hub = new Hub({
    config: loadConfig({ env: {}, overrides: { jwtSecret: 'unit-test-secret-0123456789abcdef', ...config } }),
    instanceId: 'unit',
    log: pino({ level: 'silent' }),
    broker: fake,
    auth: { verify: async () => principal },
  });
  hubs.push(hub);
  return hub;
}

/** Close every hub made since the last call (for afterEach). */
export async function closeMemoryHubs(): Promise<void> {
  await Promise.all(hubs.splice(0).map((h) => h.close()));
}
