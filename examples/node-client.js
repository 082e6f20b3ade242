#!/usr/bin/env node
// A Node client with the client SDK (run `npm run build` first): connects, subscribes to a
// project and prints its events; it reconnects and resumes by itself.
//   SIDECAR_URL=ws://127.0.0.1:8098/ws/connect TOKEN=<jwt> PROJECT_ID=demo node examples/node-client.js [--count N] [--since SEQ]
// TOKEN: the dev token the sidecar prints at start-up, or `npm run token -- --sub alice --projects demo`.
import WebSocket from 'ws';
import { Client } from 'nats-ws-sidecar/client';

const url = process.env.SIDECAR_URL || 'ws://127.0.0.1:8098/ws/connect';
const token = process.env.TOKEN;
const projectId = process.env.PROJECT_ID || 'demo';
const arg = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : undefined;
};
const count = arg('--count') ?? Infinity; // exit after this many events
const since = arg('--since'); // replay stored events after this seq first
if (!token) {
  console.error('set TOKEN to a JWT: the dev token the sidecar prints, or `npm run token -- --sub alice`');
  process.exit(2);
}

// Node 20 has no global WebSocket: hand the SDK the `ws` package's.
const client = new Client({ url, token, WebSocket });
client.on('connected', ({ userId, reconnected }) => console.log(`${reconnected ? 'reconnected' : 'connected'} as ${userId}`));
client.on('disconnected', ({ code, reason, willReconnect, delay }) =>
  console.log(`disconnected (${code} ${reason})${willReconnect ? `; reconnecting in ${delay} ms` : ''}`),
);
client.on('error', (err) => console.error(`error ${err.code}: ${err.message}`));
client.on('history_truncated', (t) =>
  console.log(`history of ${t.scope === 'project' ? `project ${t.projectId}` : t.scope} was truncated (epoch ${t.epoch}): refetch its state`),
);

let received = 0;
client.on('event', (e) => {
  console.log(`${e.type} seq=${e.seq}${e.project_id ? ` project=${e.project_id}` : ''} ${JSON.stringify(e.data)}`);
  if (++received >= count) void client.close();
});
process.once('SIGINT', () => void client.close());

await client.connect();
const info = await client.subscribe(projectId, since === undefined ? {} : { since });
console.log(`subscribed to ${projectId}${info.resumed ? ` (${info.replayed} replayed)` : ''}`);
