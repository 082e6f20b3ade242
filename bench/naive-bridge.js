// The deliberately naive "afternoon version" of a NATS -> WebSocket bridge, as a baseline peer in the
// benchmark. Run as its own process: PORT, HOST, NATS_URL, JWT_SECRET from the environment.
//
// It speaks the subset of the sidecar's client protocol the benchmark uses (so the same load
// generator drives both): `/ws/connect?token=JWT` (HS256, 401 on a bad token), first frame
// `auth_success`, then `{"type":"subscription","data":{"action":"subscribe","project_id":P}}` ->
// `subscribed`; one NATS subscription on `ws.project.*`; `GET /healthz`.
//
// What makes it naive, on purpose: every event is sent with one `ws.send` per socket per event, i.e.
// one frame and one write syscall per delivery, no batching, no corking, no backpressure handling,
// no limiter, no JetStream (no `seq`, no resume). It does parse and serialize each event once (not
// per socket), as most afternoon versions would.
//
// NAIVE_NO_AUTH=1 (the benchmark's `ws-floor` target): the token is not checked, every client is a
// user allowed every project. What is left is what `ws` on Node.js costs for the handshake and the
// two frames: the floor under any bridge built on it.

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { jwtVerify } from 'jose';
import { WebSocketServer } from 'ws';

const port = Number(process.env.PORT ?? 8099);
const host = process.env.HOST ?? '127.0.0.1';
const secret = process.env.JWT_SECRET;
if (!secret) {
  console.error('naive-bridge: JWT_SECRET is required');
  process.exit(2);
}
const key = new TextEncoder().encode(secret);
const noAuth = process.env.NAIVE_NO_AUTH === '1';
const FLOOR_CLAIMS = { sub: 'floor', projects: ['*'] };

const nc = await connect({ servers: (process.env.NATS_URL ?? 'nats://127.0.0.1:4222').split(',') });

/** project id -> sockets subscribed to it */
const rooms = new Map();

nc.subscribe('ws.project.*', {
  callback: (err, msg) => {
    if (err) return;
    const projectId = msg.subject.slice('ws.project.'.length);
    const room = rooms.get(projectId);
    if (!room) return;
    let event;
    try {
      event = msg.json();
    } catch {
      return;
    }
    event.project_id = projectId;
    event.timestamp ??= new Date().toISOString();
    const text = JSON.stringify(event);
    for (const ws of room) ws.send(text); // the naive part: one frame + one write per socket per event
  },
});

const envelope = (type, data) => JSON.stringify({ type, data, timestamp: new Date().toISOString() });

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 512 });

wss.on('connection', (ws, claims) => {
  const projects = Array.isArray(claims.projects) ? claims.projects : [];
  const mine = new Set();
  ws.send(envelope('auth_success', { user_id: claims.sub, connection_id: randomUUID() }));
  ws.on('message', (raw) => {
    let msg;
    try {
      msg = JSON.parse(raw.toString());
    } catch {
      ws.send(envelope('error', { code: 'invalid_message', message: 'not JSON' }));
      return;
    }
    if (msg?.type === 'ping') {
      ws.send(envelope('pong', {}));
      return;
    }
    const d = msg?.data;
    if (msg?.type !== 'subscription' || typeof d?.project_id !== 'string') {
      ws.send(envelope('error', { code: 'invalid_message', message: 'unsupported message' }));
      return;
    }
    const p = d.project_id;
    if (d.action === 'subscribe') {
      if (!projects.includes('*') && !projects.includes(p)) {
        ws.send(envelope('error', { code: 'forbidden', message: 'project not allowed' }));
        return;
      }
      if (!rooms.has(p)) rooms.set(p, new Set());
      rooms.get(p).add(ws);
      mine.add(p);
      ws.send(envelope('subscription', { action: 'subscribed', project_id: p }));
    } else if (d.action === 'unsubscribe') {
      rooms.get(p)?.delete(ws);
      mine.delete(p);
      ws.send(envelope('subscription', { action: 'unsubscribed', project_id: p }));
    }
  });
  ws.on('close', () => {
    for (const p of mine) {
      const room = rooms.get(p);
      room?.delete(ws);
      if (room?.size === 0) rooms.delete(p);
    }
  });
  ws.on('error', () => {});
});

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
  } else {
    res.writeHead(404).end();
  }
});

server.on('upgrade', async (req, socket, head) => {
  socket.on('error', () => {});
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (url.pathname !== '/ws/connect') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  let claims;
  try {
    if (noAuth) claims = FLOOR_CLAIMS;
    else ({ payload: claims } = await jwtVerify(url.searchParams.get('token') ?? '', key, { algorithms: ['HS256'] }));
    if (typeof claims.sub !== 'string') throw new Error('no sub');
  } catch {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, claims));
});

server.listen(port, host);

const shutdown = async () => {
  for (const ws of wss.clients) ws.terminate();
  server.close();
  await nc.close().catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// Exit if the benchmark runner that started us is gone (e.g. it was SIGKILLed): no orphans.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 1000).unref();
