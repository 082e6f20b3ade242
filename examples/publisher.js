#!/usr/bin/env node
// A backend service that publishes task events to NATS instead of calling HTTP.
//   NATS_URL=nats://127.0.0.1:4222 PROJECT_ID=demo node examples/publisher.js [--count N]
import { connect } from '@nats-io/transport-node';

const servers = (process.env.NATS_URL || 'nats://127.0.0.1:4222').split(',');
const projectId = process.env.PROJECT_ID || 'demo';
const prefix = process.env.NATS_SUBJECT_PREFIX || 'ws';
const countArg = process.argv.indexOf('--count');
const count = countArg > 0 ? Number(process.argv[countArg + 1]) : Infinity;
const intervalMs = Number(process.env.INTERVAL_MS || 2000);

const nc = await connect({ servers, maxReconnectAttempts: -1 });
console.log(`publishing to ${prefix}.project.${projectId} on ${nc.getServer()}`);

let n = 0;
async function publishOne() {
  n += 1;
  const event = {
    type: 'task_created',
    data: { task: { id: `task-${n}`, title: `Task number ${n}`, status: 'todo' } },
    timestamp: new Date().toISOString(),
    message_id: `example-${process.pid}-${n}`,
  };
  // A request gets JetStream's ack: the event is stored (and numbered) before we go on.
  const ack = await nc.request(`${prefix}.project.${projectId}`, JSON.stringify(event), { timeout: 5000 });
  console.log(`task_created ${event.data.task.id} stored: ${ack.string()}`);
}

while (n < count) {
  await publishOne().catch((err) => console.error(`publish failed: ${err.message}`));
  if (n < count) await new Promise((r) => setTimeout(r, intervalMs));
}
await nc.drain();
