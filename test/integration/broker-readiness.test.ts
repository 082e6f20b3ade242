/**
 * A topic's readiness (its SUB confirmed, its gap-check baseline read) against a real nats-server
 * that goes away: every wait is bounded, and a failure is not remembered past the reconnect.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { loadConfig } from '../../src/config.js';
import { NatsBroker } from '../../src/nats/broker.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { waitFor } from '../helpers/wait.js';

let nats: TestNats;
let broker: NatsBroker;

beforeAll(async () => {
  nats = await startTestNats();
  const config = loadConfig({ env: {}, overrides: { natsUrl: nats.url, jwtSecret: 'unit-test-secret-0123456789abcdef' } });
  broker = await NatsBroker.connect(config, pino({ level: 'silent' }), 'readiness-test');
  await broker.ensureStream();
});
afterAll(async () => {
  await broker?.close();
  await nats?.cleanup();
});

describe('topic readiness', () => {
  it('fails within a bound while NATS is away, and succeeds for the next subscriber once NATS is back', async () => {
    await nats.stop();
    await waitFor(() => !broker.connected, 5_000, 'the broker saw the disconnect');
    broker.setInterest('project.ready-later', true);
    const startedAt = Date.now();
    await expect(broker.interestReady('project.ready-later')).rejects.toThrow();
    expect(Date.now() - startedAt).toBeLessThan(10_000);

    await nats.start();
    await waitFor(() => broker.connected && broker.streamReady, 10_000, 'the broker reconnected');
    // The topic still has its local subscriber; a new one must not inherit the old failure.
    await expect(broker.interestReady('project.ready-later')).resolves.toBeUndefined();
  }, 30_000);
});
