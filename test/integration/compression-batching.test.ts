/**
 * Compression and batched frames against real sockets: negotiation (permessage-deflate with
 * server_no_context_takeover, the batch subprotocol), compressed and plain sockets in one room,
 * frames at the batch bound, the two combined, and hostile inbound frames (a zip bomb).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { NatsConnection } from '@nats-io/transport-node';
import type { ConfigInput } from '../../src/config.js';
import { constants, inflateRawSync } from 'node:zlib';
import { rawUpgrade, type RawWebSocket, type ServerFrame } from '../reliability/helpers/raw-ws.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { event, publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';

const BATCH = 'nats-ws-sidecar.batch';

let nats: TestNats;
let nc: NatsConnection;
const sidecars: TestSidecar[] = [];
const sockets: WebSocket[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  nc = await publisher(nats.url);
});
afterEach(async () => {
  await Promise.all(
    sockets.splice(0).map((ws) =>
      ws.readyState === WebSocket.CLOSED ? Promise.resolve() : new Promise<void>((r) => (ws.once('close', () => r()), ws.terminate())),
    ),
  );
});
afterAll(async () => {
  for (const s of sidecars.splice(0)) await s.stop();
  await nc?.close();
  await nats?.cleanup();
});

async function sidecar(prefix: string, overrides: ConfigInput = {}): Promise<TestSidecar> {
  const s = await startTestSidecar(nats.url, { subjectPrefix: prefix, streamName: prefix.toUpperCase(), ...overrides });
  sidecars.push(s);
  return s;
}

interface RawClient {
  ws: WebSocket;
  /** Every text frame, as received. */
  frames: string[];
  /** Every envelope, frames split on "\n". */
  envelopes: any[];
  /** Resolves once `n` envelopes matching `pred` have arrived. */
  until(n: number, pred: (m: any) => boolean): Promise<any[]>;
  closed: Promise<{ code: number; reason: string }>;
  /** Bytes read from the TCP socket so far. */
  bytesRead(): number;
  /** The server's Sec-WebSocket-Extensions answer. */
  extensionsHeader: string;
}

async function rawClient(
  s: TestSidecar,
  user: string,
  opts: { deflate?: boolean | WebSocket.PerMessageDeflateOptions; batch?: boolean; maxPayload?: number } = {},
): Promise<RawClient> {
  const url = `${s.wsUrl}?token=${await s.token(user)}`;
  const ws = new WebSocket(url, opts.batch ? [BATCH] : [], { perMessageDeflate: opts.deflate ?? false, maxPayload: opts.maxPayload });
  sockets.push(ws);
  const frames: string[] = [];
  const envelopes: any[] = [];
  let check = (): void => {};
  ws.on('message', (data) => {
    const text = data.toString();
    frames.push(text);
    for (const piece of text.split('\n')) envelopes.push(JSON.parse(piece));
    check();
  });
  let extensionsHeader = '';
  ws.once('upgrade', (res) => (extensionsHeader = String(res.headers['sec-websocket-extensions'] ?? '')));
  const closed = new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
  const client: RawClient = {
    ws,
    frames,
    envelopes,
    until(n, pred) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${envelopes.filter(pred).length} of ${n} envelopes arrived`)), 10_000);
        check = () => {
          const got = envelopes.filter(pred);
          if (got.length >= n) {
            clearTimeout(timer);
            resolve(got);
          }
        };
        check();
      });
    },
    closed,
    bytesRead: () => ((ws as any)._socket?.bytesRead as number) ?? 0,
    get extensionsHeader() {
      return extensionsHeader;
    },
  };
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  await client.until(1, (m) => m.type === 'auth_success');
  return client;
}

async function subscribe(c: RawClient, project: string): Promise<void> {
  c.ws.send(JSON.stringify({ type: 'subscription', data: { action: 'subscribe', project_id: project } }));
  await c.until(1, (m) => m.type === 'subscription' && m.data.project_id === project);
}

/** ~1 KB JSON task events, as a tracker would publish them. */
function taskEvent(i: number): string {
  return event('task_updated', {
    i,
    task: {
      id: `task-${i}`,
      title: `Write the quarterly report section ${i}`,
      description: 'Collect the figures from the finance dashboard, compare them with last quarter, and summarise the main changes for the team.',
      status: i % 2 ? 'in_progress' : 'review',
      assignee: { id: `user-${i % 17}`, name: 'Alex Example', email: 'alex@example.com' },
      labels: ['reporting', 'finance', 'q3'],
      updated_at: '2026-12-01T10:00:00.000Z',
      comments: Array.from({ length: 4 }, (_, k) => ({ id: `c${k}`, author: `user-${k}`, text: `Looks good, one more pass on paragraph ${k} please.` })),
    },
  });
}

async function publishMany(subject: string, n: number, body: (i: number) => string): Promise<void> {
  for (let i = 0; i < n; i++) nc.publish(subject, body(i));
  await nc.flush();
}

const ofType = (t: string) => (m: any) => m.type === t;

describe('compression', () => {
  it('is off by default: an offer of permessage-deflate is not taken up', async () => {
    const s = await sidecar('coff');
    const c = await rawClient(s, 'u1', { deflate: true });
    expect(c.ws.extensions).toBe('');
  });

  it('negotiates permessage-deflate with server_no_context_takeover, and serves compressed and plain sockets in one room', async () => {
    const s = await sidecar('cdef', { compression: 'deflate' });
    const zipped = await rawClient(s, 'u1', { deflate: true });
    const plain = await rawClient(s, 'u2', { deflate: false });
    expect(zipped.ws.extensions).toMatch(/permessage-deflate/);
    expect(zipped.extensionsHeader).toMatch(/server_no_context_takeover/);
    expect(plain.ws.extensions).toBe('');
    await subscribe(zipped, 'p');
    await subscribe(plain, 'p');
    const start = [zipped.bytesRead(), plain.bytesRead()];
    await publishMany('cdef.project.p', 200, taskEvent);
    const [a, b] = await Promise.all([zipped.until(200, ofType('task_updated')), plain.until(200, ofType('task_updated'))]);
    expect(a.map((m) => m.data.i)).toEqual(b.map((m) => m.data.i));
    expect(a).toEqual(b);
    expect(a[199].data.task.comments).toHaveLength(4);
    const zippedBytes = zipped.bytesRead() - start[0];
    const plainBytes = plain.bytesRead() - start[1];
    expect(zippedBytes).toBeLessThan(plainBytes * 0.5);
  });

  it('sends the same compressed bytes to every socket, inflating to the event', async () => {
    const s = await sidecar('csame', { compression: 'deflate' });
    const port = Number(new URL(s.httpUrl).port);
    const open = async (user: string): Promise<{ ws: RawWebSocket; frames: ServerFrame[] }> => {
      const answer = await rawUpgrade(port, `/ws/connect?token=${await s.token(user)}`, { 'Sec-WebSocket-Extensions': 'permessage-deflate' });
      expect(answer.status).toBe(101);
      expect(answer.headers['sec-websocket-extensions']).toMatch(/server_no_context_takeover/);
      const frames: ServerFrame[] = [];
      answer.ws!.onFrame((f) => frames.push(f));
      return { ws: answer.ws!, frames };
    };
    const text = (f: ServerFrame, compressed: boolean) =>
      compressed
        ? inflateRawSync(Buffer.concat([f.payload, Buffer.from([0, 0, 0xff, 0xff])]), { finishFlush: constants.Z_SYNC_FLUSH }).toString()
        : f.payload.toString();
    const a = await open('u1');
    const b = await open('u2');
    /** Resolves once the socket has received `n` frames (a frame listener, not a poll). */
    const waitFrames = (c: { ws: RawWebSocket; frames: ServerFrame[] }, n: number) =>
      new Promise<void>((resolve, reject) => {
        if (c.frames.length >= n) return resolve();
        const timer = setTimeout(() => reject(new Error(`only ${c.frames.length} of ${n} frames`)), 5_000);
        const off = c.ws.onFrame(() => {
          if (c.frames.length < n) return;
          clearTimeout(timer);
          off();
          resolve();
        });
      });
    for (const c of [a, b]) {
      await waitFrames(c, 1); // auth_success: small, so uncompressed
      expect(JSON.parse(text(c.frames[0], false)).type).toBe('auth_success');
      c.ws.text(JSON.stringify({ type: 'subscription', data: { action: 'subscribe', project_id: 'p' } }));
      await waitFrames(c, 2);
    }
    // The event's frame, among presence events (u2's user_joined reaches u1 at some point).
    const isTask = (f: ServerFrame) => {
      try {
        return JSON.parse(text(f, true)).type === 'task_updated';
      } catch {
        return false; // a small, uncompressed frame
      }
    };
    const taskFrame = (c: { ws: RawWebSocket; frames: ServerFrame[] }) =>
      new Promise<ServerFrame>((resolve, reject) => {
        const found = c.frames.find(isTask);
        if (found) return resolve(found);
        const timer = setTimeout(() => reject(new Error('no task_updated frame')), 5_000);
        const off = c.ws.onFrame((f) => {
          if (!isTask(f)) return;
          clearTimeout(timer);
          off();
          resolve(f);
        });
      });
    nc.publish('csame.project.p', taskEvent(7));
    const [fa, fb] = await Promise.all([taskFrame(a), taskFrame(b)]);
    expect(fa.payload.equals(fb.payload)).toBe(true);
    const event = JSON.parse(text(fa, true));
    expect(event).toMatchObject({ type: 'task_updated', project_id: 'p', data: { i: 7 } });
    a.ws.destroy();
    b.ws.destroy();
  });

  it('serves a client whose offer needs a smaller server window uncompressed, not refused', async () => {
    const s = await sidecar('cnar', { compression: 'deflate' });
    const c = await rawClient(s, 'u1', { deflate: { serverMaxWindowBits: 10 } });
    expect(c.ws.extensions).toBe('');
    await subscribe(c, 'p');
    await publishMany('cnar.project.p', 3, taskEvent);
    expect(await c.until(3, ofType('task_updated'))).toHaveLength(3);
  });

  it('inflates client frames with a small window where the client lets the server choose it', async () => {
    const s = await sidecar('cwin', { compression: 'deflate' });
    const c = await rawClient(s, 'u1', { deflate: { threshold: 0 } });
    expect(c.extensionsHeader).toMatch(/client_max_window_bits=9/);
    c.ws.send(JSON.stringify({ type: 'ping', data: { note: 'compressed with a 512-byte window '.repeat(10) } }));
    await c.until(1, ofType('pong'));
  });

  it('closes 1009 on a compressed frame that inflates past maxMessageSize (a zip bomb), and answers nothing else', async () => {
    const s = await sidecar('cbomb', { compression: 'deflate' });
    const c = await rawClient(s, 'u1', { deflate: { threshold: 0 } });
    const before = c.envelopes.length;
    // 16 MB of zeros compress to ~16 KB: ws stops inflating at maxPayload.
    c.ws.send(JSON.stringify({ type: 'ping', data: { pad: '0'.repeat(16 * 1024 * 1024) } }));
    expect((await c.closed).code).toBe(1009);
    expect(c.envelopes.length).toBe(before);
    // A compressed frame within the limit is processed as usual, one over maxMessageSize closes 1009 too.
    const d = await rawClient(s, 'u2', { deflate: { threshold: 0 } });
    d.ws.send(JSON.stringify({ type: 'ping', data: {} }));
    await d.until(1, ofType('pong'));
    d.ws.send(JSON.stringify({ type: 'ping', data: { pad: 'a'.repeat(2000) } }));
    expect((await d.closed).code).toBe(1009);
    // The sidecar is unharmed.
    const e = await rawClient(s, 'u3', { deflate: true });
    e.ws.send(JSON.stringify({ type: 'ping', data: {} }));
    await e.until(1, ofType('pong'));
  });
});

describe('batched frames', () => {
  it('selects the subprotocol when asked, and packs a burst into few frames joined by newlines', async () => {
    const s = await sidecar('bat', { batchFrameBytes: 4096 });
    const batched = await rawClient(s, 'u1', { batch: true });
    const single = await rawClient(s, 'u2');
    expect(batched.ws.protocol).toBe(BATCH);
    expect(single.ws.protocol).toBe('');
    await subscribe(batched, 'p');
    await subscribe(single, 'p');
    const framesBefore = [batched.frames.length, single.frames.length];
    await publishMany('bat.project.p', 300, (i) => event('n', { i, pad: 'x'.repeat(100) }));
    const [a, b] = await Promise.all([batched.until(300, ofType('n')), single.until(300, ofType('n'))]);
    expect(a.map((m) => m.data.i)).toEqual(Array.from({ length: 300 }, (_, i) => i));
    expect(a).toEqual(b);
    const batchedFrames = batched.frames.slice(framesBefore[0]);
    const singleFrames = single.frames.slice(framesBefore[1]).filter((f) => f.includes('"type":"n"'));
    expect(singleFrames).toHaveLength(300); // without the subprotocol: one envelope per frame
    for (const f of singleFrames) expect(f.includes('\n')).toBe(false);
    expect(batchedFrames.length).toBeLessThan(300);
    for (const f of batchedFrames) {
      // At the bound: a frame holds more than one envelope only while it stays within batchFrameBytes.
      if (f.includes('\n')) expect(Buffer.byteLength(f)).toBeLessThanOrEqual(4096);
    }
  });

  it('combines with compression', async () => {
    const s = await sidecar('batz', { compression: 'deflate', batchFrameBytes: 16_384 });
    const c = await rawClient(s, 'u1', { batch: true, deflate: true });
    const plain = await rawClient(s, 'u2', { batch: true });
    expect(c.ws.protocol).toBe(BATCH);
    expect(c.ws.extensions).toMatch(/permessage-deflate/);
    await subscribe(c, 'p');
    await subscribe(plain, 'p');
    await publishMany('batz.project.p', 200, taskEvent);
    const [a, b] = await Promise.all([c.until(200, ofType('task_updated')), plain.until(200, ofType('task_updated'))]);
    expect(a).toEqual(b);
    expect(c.frames.length).toBeLessThan(c.envelopes.length);
    for (const f of c.frames) if (f.includes('\n')) expect(Buffer.byteLength(f)).toBeLessThanOrEqual(16_384);
  });

  it('still reads client frames as one envelope each', async () => {
    const s = await sidecar('batin');
    const c = await rawClient(s, 'u1', { batch: true });
    c.ws.send(`${JSON.stringify({ type: 'ping', data: {} })}\n${JSON.stringify({ type: 'ping', data: {} })}`);
    const [err] = await c.until(1, ofType('error'));
    expect(err.data.code).toBe('invalid_message');
  });
});
