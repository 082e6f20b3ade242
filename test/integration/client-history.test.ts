/**
 * The client SDK's history(), batched frames and compression against a real sidecar: in Node
 * (`ws`) it offers permessage-deflate and asks for batched frames by default, and the app sees
 * every event once, in order, whichever way the frames came.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { NatsConnection } from '@nats-io/transport-node';
import { Client, ClientError, type Options } from '../../src/client/index.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { event, publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { storedPublisher } from '../helpers/streams.js';

let nats: TestNats;
let side: TestSidecar;
let nc: NatsConnection;
const clients = new Set<Client>();
/** Every socket the SDK opened, to look at what was negotiated. */
const opened: WebSocket[] = [];

class RecordingWebSocket extends WebSocket {
  constructor(url: string, protocols?: string | string[]) {
    super(url, protocols);
    opened.push(this);
  }
}

beforeAll(async () => {
  nats = await startTestNats();
  side = await startTestSidecar(nats.url, { compression: 'deflate' });
  nc = await publisher(nats.url);
});
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
  opened.length = 0;
});
afterAll(async () => {
  await nc?.close();
  await side?.stop();
  await nats?.cleanup();
});

async function connected(o: Partial<Options> = {}, projects = ['*']): Promise<Client> {
  const client = new Client({ url: side.wsUrl, token: await side.token('u1', { projects }), WebSocket: RecordingWebSocket, ...o });
  clients.add(client);
  await client.connect();
  return client;
}

describe('client SDK: frames', () => {
  it('asks for batched frames and offers compression by default, and delivers every event once in order', async () => {
    const client = await connected();
    expect(opened[0].protocol).toBe('nats-ws-sidecar.batch');
    expect(opened[0].extensions).toMatch(/permessage-deflate/);
    const seen: number[] = [];
    client.on('event', (e) => void (e.type === 'n' && seen.push(e.data.i as number)));
    await client.subscribe('sdk-b');
    const frames: number[] = [];
    opened[0].on('message', () => void frames.push(1));
    for (let i = 0; i < 300; i++) nc.publish('ws.project.sdk-b', event('n', { i, pad: 'x'.repeat(300) }));
    await nc.flush();
    await new Promise<void>((resolve) => {
      const off = client.on('event', () => seen.length === 300 && (off(), resolve()));
    });
    expect(seen).toEqual(Array.from({ length: 300 }, (_, i) => i));
    expect(frames.length).toBeLessThan(300);
  });

  it('takes one envelope per frame with batch: false', async () => {
    await connected({ batch: false });
    expect(opened[0].protocol).toBe('');
  });
});

describe('client SDK: history()', () => {
  let seqs: number[];
  beforeAll(async () => {
    const pub = storedPublisher(nc);
    seqs = [];
    for (let i = 0; i < 30; i++) seqs.push(await pub.publish('ws.project.sdk-h', 'n', { i }));
  });

  it('pages backwards and forwards', async () => {
    const client = await connected();
    const latest = await client.history('sdk-h', { limit: 10 });
    expect(latest).toMatchObject({ projectId: 'sdk-h', epoch: side.sidecar.broker.epoch, more: true });
    expect(latest.events.map((e) => e.data.i)).toEqual(Array.from({ length: 10 }, (_, k) => 20 + k));
    const [older, newer] = await Promise.all([
      client.history('sdk-h', { limit: 10, before: latest.events[0].seq }),
      client.history('sdk-h', { after: seqs[24] }),
    ]);
    expect(older.events.map((e) => e.seq)).toEqual(seqs.slice(10, 20));
    expect(newer.events.map((e) => e.seq)).toEqual(seqs.slice(25));
    expect(newer.more).toBe(false);
  });

  it('rejects bad arguments without sending, and the server\'s refusal with its code', async () => {
    const client = await connected({}, ['other']);
    await expect(client.history('bad id')).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(client.history('sdk-h', { limit: 0 })).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(client.history('sdk-h', { before: 3, after: 1 })).rejects.toMatchObject({ code: 'invalid_argument' });
    const refused = await client.history('sdk-h').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ClientError);
    expect(refused).toMatchObject({ code: 'forbidden', projectId: 'sdk-h' });
  });

  it('rejects when not connected', async () => {
    const client = new Client({ url: side.wsUrl, token: await side.token('u1'), WebSocket: RecordingWebSocket });
    clients.add(client);
    await expect(client.history('sdk-h')).rejects.toMatchObject({ code: 'disconnected' });
  });
});
