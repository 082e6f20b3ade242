/**
 * Tokens never reach the log, at any level: not from query strings, headers, first-message auth,
 * refreshes or refusals. The sidecar logs at trace into a captured pino destination while clients
 * connect every way the contract allows, then the captured text is searched for every token.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { mintToken } from '../../src/auth.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { Sidecar } from '../../src/sidecar.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { TEST_SECRET } from '../helpers/sidecar.js';
import { closeAllClients, connectClient, UpgradeRejectedError } from '../helpers/ws-client.js';

let nats: TestNats;
let sidecar: Sidecar;
let dataDir: string;
let logged = '';

beforeAll(async () => {
  nats = await startTestNats();
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'sidecar-log-test-'));
  const config = loadConfig({
    env: {},
    overrides: {
      port: 0,
      host: '127.0.0.1',
      natsUrl: nats.url,
      jwtSecret: TEST_SECRET,
      dataDir,
      logLevel: 'trace',
      allowedOrigins: 'https://app.example.com',
      maxConnectionsPerUser: 2,
    },
  });
  const capture = new Writable({
    write(chunk, _encoding, done) {
      logged += chunk.toString();
      done();
    },
  });
  sidecar = await Sidecar.start(config, { logger: createLogger('trace', {}, capture) });
});
afterAll(async () => {
  await closeAllClients();
  await sidecar?.stop();
  await nats?.cleanup();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

const refused = (p: Promise<unknown>) =>
  p.then(
    () => expect.fail('upgrade should have been refused'),
    (e: unknown) => expect(e).toBeInstanceOf(UpgradeRejectedError),
  );

it('never writes a token, or any part of its payload or signature, to the log', async () => {
  const token = (sub: string, expiresIn?: number) => mintToken(TEST_SECRET, { sub, projects: ['*'], expiresIn });
  const forged = (t: string) => t.slice(0, -6) + 'AAAAAA';
  const tokens: string[] = [];
  const use = async (t: Promise<string> | string) => {
    const value = await t;
    tokens.push(value);
    return value;
  };
  const ws = sidecar.wsUrl;

  // Handshake: query and header, good and bad, and refusals that log the request URL.
  const q = await connectClient(`${ws}?token=${await use(token('q-user'))}&v=1`);
  await q.waitForMessage((m) => m.type === 'auth_success');
  const h = await connectClient(ws, { headers: { Authorization: `Bearer ${await use(token('h-user'))}` } });
  await h.waitForMessage((m) => m.type === 'auth_success');
  await refused(connectClient(`${ws}?token=${await use(forged(await token('f-user')))}`));
  await refused(connectClient(ws, { headers: { Authorization: `Bearer ${await use(forged(await token('f-user')))}` } }));
  await refused(connectClient(`${ws}?token=${await use(token('o-user'))}`, { origin: 'https://evil.example.com' }));
  await refused(connectClient(`${ws}?token=${await use(token('expired', -60))}`));
  const cap = await use(token('capped'));
  await connectClient(`${ws}?token=${cap}`);
  await connectClient(`${ws}?token=${cap}`);
  await refused(connectClient(`${ws}?token=${cap}`)); // 429

  // First-message auth, refresh, failed refresh, failed auth.
  const fm = await connectClient(ws);
  fm.send({ type: 'auth', data: { token: await use(token('fm-user')) } });
  await fm.waitForMessage((m) => m.type === 'auth_success');
  fm.send({ type: 'auth', data: { token: await use(token('fm-user')) } });
  await fm.waitForMessage((m) => m.type === 'auth_success');
  fm.send({ type: 'auth', data: { token: await use(token('someone-else')) } });
  await fm.waitForMessage((m) => m.type === 'auth_failed');
  fm.send({ type: 'auth', data: { token: await use(forged(await token('fm-user'))) } });
  await fm.waitForMessage((m) => m.type === 'auth_failed');
  const bad = await connectClient(ws);
  bad.send({ type: 'auth', data: { token: await use(forged(await token('bad-user'))) } });
  expect((await bad.waitForClose()).code).toBe(4401);
  // A malformed auth message echoes nothing of the token either.
  const malformed = await connectClient(ws);
  malformed.send(`{"type":"auth","data":{"token":"${await use(token('malformed'))}"`);
  await malformed.waitForMessage((m) => m.type === 'error');

  if (process.env.SHOW_LOG) console.log(logged);
  // The log saw all of this (so the search below means something) ...
  expect(logged).toContain('connection authenticated');
  expect(logged.split('\n').some((l) => l.includes('upgrade refused') && l.includes('?token=[redacted]'))).toBe(true);
  expect(logged).toContain('too many connections for this user');
  // ... and holds no token, nor the payload or signature segment of one.
  for (const t of tokens) {
    const [, payload, signature] = t.split('.');
    expect(logged).not.toContain(t);
    expect(logged).not.toContain(payload);
    expect(logged).not.toContain(signature);
  }
});
