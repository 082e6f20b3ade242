#!/usr/bin/env node
// A backend service that publishes task events through NATS instead of calling HTTP, with the
// publisher SDK (run `npm run build` first):
//   NATS_URL=nats://127.0.0.1:4222 PROJECT_ID=demo node examples/publisher.js [--count N]
import { Publisher } from 'nats-ws-sidecar/publisher';

const projectId = process.env.PROJECT_ID || 'demo';
const prefix = process.env.NATS_SUBJECT_PREFIX || 'ws';
const countArg = process.argv.indexOf('--count');
const count = countArg > 0 ? Number(process.argv[countArg + 1]) : Infinity;
const intervalMs = Number(process.env.INTERVAL_MS || 2000);

const publisher = await Publisher.connect({ servers: process.env.NATS_URL || 'nats://127.0.0.1:4222', prefix });
console.log(`publishing to ${prefix}.project.${projectId} on ${publisher.connection.getServer()}`);
process.once('SIGTERM', () => void publisher.close().then(() => process.exit(0)));

let failed = 0;
for (let n = 1; n <= count; n++) {
  const task = { id: `task-${Date.now().toString(36)}-${n}`, title: `Task number ${n}`, status: 'todo' };
  try {
    // Resolves once JetStream has stored (and numbered) the event; retries reuse the Nats-Msg-Id.
    const { seq, duplicate } = await publisher.notifyTaskCreated(task, projectId);
    console.log(`task_created ${task.id} stored as seq ${seq}${duplicate ? ' (duplicate)' : ''}`);
  } catch (err) {
    failed += 1;
    console.error(`publish failed: ${err.code ?? ''} ${err.message}`);
  }
  if (n < count) await new Promise((r) => setTimeout(r, intervalMs));
}
await publisher.close();
process.exitCode = failed ? 1 : 0;
