/**
 * The `ws` adapter: a Transport over one WebSocket. Outbound frames are encoded once per event
 * (shared by every socket) and written straight to the TCP socket in one corked batch, which is
 * where fan-out speed comes from: one syscall per socket per tick instead of one per message.
 * This is safe because the server never negotiates permessage-deflate, so `ws` itself writes
 * every frame synchronously and never holds a partial frame of its own.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import WebSocket from 'ws';
import type { OutFrame, Transport } from '../core/ports.js';

/** An unmasked, final text frame (RFC 6455 §5.2). */
export function encodeTextFrame(text: string): Buffer {
  const length = Buffer.byteLength(text);
  const header = length < 126 ? 2 : length < 65_536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(header + length);
  frame[0] = 0x81;
  if (length < 126) {
    frame[1] = length;
  } else if (length < 65_536) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2);
    frame.writeUInt32BE(length >>> 0, 6);
  }
  frame.write(text, header, 'utf8');
  return frame;
}

export class WsTransport implements Transport {
  constructor(
    private readonly ws: WebSocket,
    private readonly socket: Duplex,
  ) {}

  write(frames: readonly OutFrame[]): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const socket = this.socket as Socket;
    if (frames.length === 1) {
      const f = frames[0];
      socket.write((f.wire ??= encodeTextFrame(f.text)) as Buffer);
      return;
    }
    socket.cork();
    for (const f of frames) socket.write((f.wire ??= encodeTextFrame(f.text)) as Buffer);
    socket.uncork();
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  ping(): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.ping();
  }

  close(code: number, reason: string): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
  }

  terminate(): void {
    this.ws.terminate();
  }
}
