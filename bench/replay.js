// Replay benchmark: how long a client resuming with `since` waits for N stored events.
//
//   npm run build && node bench/replay.js [events=1000] [rounds=20]
//
// Starts a nats-server (temp store) and an in-process sidecar, stores N events of one project
// with JetStream acks, then, per round: the broker's replay alone (JetStream read + encoding),
// and end to end (a WebSocket client sends `subscription` with since 0 and waits for the last
// replayed event). Prints min / median / p90 in milliseconds.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import pino from 'pino';
import WebSocket from 'ws';
import { mintToken } from '../dist/internal.js';
import { loadConfig } from '../dist/internal.js';
import { startEmbeddedNats } from '../dist/internal.js';
import { Sidecar } from '../dist/internal.js';

const events = Number(process.argv[2] ?? 1000);
const rounds = Number(process.argv[3] ?? 20);
const secret = 'bench-secret-bench-secret-bench-secret-0123456789';

const dir = await mkdtemp(path.join(os.tmpdir(), 'replay-bench-'));
const nats = await startEmbeddedNats({ storeDir: path.join(dir, 'nats'), port: 0 });
let sidecar;
let nc;
try {
  // Room for the events and each round's user_joined / user_left, which the project stores too.
  const config = loadConfig({
    env: {},
    overrides: { port: 0, host: '127.0.0.1', natsUrl: nats.url, jwtSecret: secret, dataDir: dir, maxStoredMessages: Math.max(1000, events + 2 * rounds + 10) },
  });
  sidecar = await Sidecar.start(config, { logger: pino({ level: 'silent' }) });
  nc = await connect({ servers: nats.url });
  const js = jetstream(nc);
  const payload = (i) => JSON.stringify({ type: 'task_updated', data: { id: `t-${i}`, title: 'x'.repeat(120), i } });
  const acks = [];
  for (let i = 0; i < events; i++) acks.push(js.publish('ws.project.bench', payload(i)));
  await Promise.all(acks);

  const broker = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    let n = 0;
    await sidecar.broker.replay('project.bench', 0, () => n++);
    broker.push(performance.now() - t0);
    if (n !== events) throw new Error(`replayed ${n} of ${events}`);
  }

  const token = await mintToken(secret, { sub: 'bench', projects: ['*'] });
  const endToEnd = [];
  for (let r = 0; r < rounds; r++) endToEnd.push(await resume(`${sidecar.wsUrl}?token=${token}`));

  const stats = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))].toFixed(1);
    return `min ${s[0].toFixed(1)}  median ${at(0.5)}  p90 ${at(0.9)} ms`;
  };
  console.log(`replay of ${events} stored events, ${rounds} rounds (node ${process.version}, ${os.cpus().length} cpus)`);
  console.log(`  broker.replay (JetStream read + encode): ${stats(broker)}`);
  console.log(`  end to end (subscribe since 0 -> last event on the socket): ${stats(endToEnd)}`);
} finally {
  await nc?.close();
  await sidecar?.stop();
  await nats.stop();
  await rm(dir, { recursive: true, force: true });
}

/** One client: connect, subscribe with since 0, time until the last replayed event arrives. */
function resume(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let t0 = 0;
    let got = 0;
    ws.on('error', reject);
    ws.on('message', (data) => {
      const m = JSON.parse(data.toString());
      if (m.type === 'auth_success') {
        t0 = performance.now();
        ws.send(JSON.stringify({ type: 'subscription', data: { action: 'subscribe', project_id: 'bench', since: 0 } }));
      } else if (m.type === 'task_updated' && ++got === events) {
        const ms = performance.now() - t0;
        ws.once('close', () => resolve(ms));
        ws.close();
      }
    });
  });
}
