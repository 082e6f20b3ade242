/**
 * A WebSocket client written against the wire (RFC 6455) rather than a library, so a test can send
 * what no well-behaved client would: bad opcodes, reserved bits, unmasked or fragmented frames,
 * invalid UTF-8, oversized control frames, and handshakes with hostile headers.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';

export const Opcode = { Continuation: 0x0, Text: 0x1, Binary: 0x2, Close: 0x8, Ping: 0x9, Pong: 0xa } as const;

export interface FrameSpec {
  opcode: number;
  payload: Buffer;
  /** Default true. */
  fin?: boolean;
  /** RSV1-3 bits (0..7). Default 0. */
  rsv?: number;
  /** Clients must mask (default true); false sends an unmasked frame. */
  mask?: boolean;
}

/** Encodes one client frame. */
export function encodeFrame({ opcode, payload, fin = true, rsv = 0, mask = true }: FrameSpec): Buffer {
  const len = payload.length;
  const ext = len < 126 ? 0 : len < 65_536 ? 2 : 8;
  const head = Buffer.alloc(2 + ext + (mask ? 4 : 0));
  head[0] = (fin ? 0x80 : 0) | ((rsv & 7) << 4) | (opcode & 0x0f);
  head[1] = (mask ? 0x80 : 0) | (ext === 0 ? len : ext === 2 ? 126 : 127);
  if (ext === 2) head.writeUInt16BE(len, 2);
  if (ext === 8) head.writeBigUInt64BE(BigInt(len), 2);
  if (!mask) return Buffer.concat([head, payload]);
  const key = randomBytes(4);
  key.copy(head, 2 + ext);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
  return Buffer.concat([head, body]);
}

export interface ServerFrame {
  opcode: number;
  fin: boolean;
  payload: Buffer;
}

export interface HandshakeAnswer {
  status: number;
  /** Lower-cased header names. */
  headers: Record<string, string>;
  body: string;
  /** Set when the server answered 101. */
  ws?: RawWebSocket;
}

export class RawWebSocket {
  /** Text and binary messages (fragments already joined), and control frames, in order. */
  private readonly listeners = new Set<(f: ServerFrame) => void>();
  private buffer: Buffer = Buffer.alloc(0);
  closeFrame: { code?: number; reason: string } | undefined;
  ended = false;
  readonly done: Promise<{ code?: number; reason: string }>;

  constructor(
    readonly socket: net.Socket,
    leftover: Buffer,
  ) {
    this.done = new Promise((resolve) => {
      socket.once('close', () => {
        this.ended = true;
        resolve(this.closeFrame ?? { reason: 'socket closed without a close frame' });
      });
    });
    socket.on('data', (chunk) => this.onData(chunk));
    if (leftover.length) this.onData(leftover);
  }

  /** Frames that arrived while nobody listened (e.g. with the 101 answer), for the next listener. */
  private backlog: ServerFrame[] = [];

  onFrame(fn: (f: ServerFrame) => void): () => void {
    this.listeners.add(fn);
    // After the caller has its unsubscribe function; no socket data can arrive before a microtask.
    if (this.backlog.length > 0) queueMicrotask(() => {
      while (this.backlog.length > 0 && this.listeners.has(fn)) fn(this.backlog.shift()!);
    });
    return () => this.listeners.delete(fn);
  }

  send(...frames: FrameSpec[]): void {
    if (this.socket.destroyed) return;
    this.socket.write(Buffer.concat(frames.map(encodeFrame)));
  }

  sendRaw(bytes: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  text(s: string | Buffer): void {
    this.send({ opcode: Opcode.Text, payload: Buffer.isBuffer(s) ? s : Buffer.from(s) });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) return;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      if (b.length < off + len) return;
      const frame = { opcode: b[0] & 0x0f, fin: (b[0] & 0x80) !== 0, payload: b.subarray(off, off + len) };
      this.buffer = b.subarray(off + len);
      if (frame.opcode === Opcode.Close) {
        this.closeFrame = {
          code: frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : undefined,
          reason: frame.payload.subarray(2).toString(),
        };
      }
      if (this.listeners.size === 0) this.backlog.push(frame);
      for (const fn of [...this.listeners]) fn(frame);
    }
  }
}

/**
 * Sends an upgrade request for `path` with `headers` (name -> value; an array value repeats the
 * header) and reads the answer. `raw` replaces the whole request when given.
 */
export function rawUpgrade(
  port: number,
  path: string,
  headers: Record<string, string | string[]> = {},
  opts: { raw?: Buffer | string; timeoutMs?: number; standard?: boolean } = {},
): Promise<HandshakeAnswer> {
  const standard = opts.standard ?? true;
  const lines = [`GET ${path} HTTP/1.1`, `Host: 127.0.0.1:${port}`];
  const std: Record<string, string> = standard
    ? { Upgrade: 'websocket', Connection: 'Upgrade', 'Sec-WebSocket-Key': randomBytes(16).toString('base64'), 'Sec-WebSocket-Version': '13' }
    : {};
  for (const [k, v] of Object.entries({ ...headers, ...std })) for (const one of Array.isArray(v) ? v : [v]) lines.push(`${k}: ${one}`);
  const request = opts.raw ?? `${lines.join('\r\n')}\r\n\r\n`;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    let data = Buffer.alloc(0);
    let settled = false;
    const timer = setTimeout(() => finish(new Error(`no handshake answer within ${opts.timeoutMs ?? 10_000} ms`)), opts.timeoutMs ?? 10_000);
    const finish = (err?: Error, answer?: HandshakeAnswer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('data', onData);
      if (err) {
        socket.destroy();
        reject(err);
      } else resolve(answer!);
    };
    const parseHead = (): { status: number; headers: Record<string, string>; rest: Buffer } | undefined => {
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return undefined;
      const [statusLine, ...headerLines] = data.subarray(0, end).toString('latin1').split('\r\n');
      const h: Record<string, string> = {};
      for (const l of headerLines) {
        const i = l.indexOf(':');
        if (i > 0) h[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      return { status: Number(statusLine.split(' ')[1]), headers: h, rest: data.subarray(end + 4) };
    };
    const onData = (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      const head = parseHead();
      if (!head) return;
      if (head.status === 101) {
        finish(undefined, { status: 101, headers: head.headers, body: '', ws: new RawWebSocket(socket, head.rest) });
        return;
      }
      const length = Number(head.headers['content-length'] ?? Number.NaN);
      if (!Number.isNaN(length) && head.rest.length >= length) {
        finish(undefined, { status: head.status, headers: head.headers, body: head.rest.subarray(0, length).toString() });
        socket.destroy();
      }
    };
    socket.on('data', onData);
    socket.once('connect', () => socket.write(request));
    socket.once('error', () => undefined); // 'close' reports it
    socket.once('close', () => {
      const head = parseHead();
      if (head) finish(undefined, { status: head.status, headers: head.headers, body: head.rest.toString() });
      else finish(undefined, { status: 0, headers: {}, body: data.toString('latin1') });
    });
  });
}
