/** An in-process sidecar on a free port, attached to a test nats-server, and token minting. */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { mintToken, type MintOptions } from '../../src/auth.js';
import { loadConfig, type ConfigInput } from '../../src/config.js';
import { Sidecar } from '../../src/sidecar.js';

export const TEST_SECRET = 'test-secret-that-is-long-enough-for-hs256-0123456789';

export interface TestSidecar {
  sidecar: Sidecar;
  wsUrl: string;
  httpUrl: string;
  token(sub: string, o?: Omit<MintOptions, 'sub'>): Promise<string>;
  stop(): Promise<void>;
}

export async function startTestSidecar(natsUrl: string, overrides: ConfigInput = {}): Promise<TestSidecar> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'sidecar-test-'));
  const config = loadConfig({
    env: {},
    overrides: { port: 0, host: '127.0.0.1', natsUrl, jwtSecret: TEST_SECRET, dataDir, logLevel: 'silent', ...overrides },
  });
  const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
  const sidecar = await Sidecar.start(config, { logger });
  return {
    sidecar,
    wsUrl: sidecar.wsUrl,
    httpUrl: sidecar.url,
    token: (sub, o = {}) => mintToken(config.jwtSecret ?? TEST_SECRET, { sub, projects: ['*'], ...o }),
    async stop() {
      await sidecar.stop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** A publisher's NATS connection (plain core NATS, as a backend service would use). */
export function publisher(url: string): Promise<NatsConnection> {
  return connect({ servers: url });
}

export const event = (type: string, data: Record<string, unknown> = {}) => JSON.stringify({ type, data });
