/**
 * The `ws` adapter: a Transport over one WebSocket. Outbound frames are encoded once per event
 * (shared by every socket, see frames.ts) and written straight to the TCP socket in one corked
 * batch, which is where fan-out speed comes from: one syscall per socket per tick instead of one
 * per message. This is safe because `ws` itself never sends a data frame here (no `ws.send`):
 * it writes only control frames, which it never compresses or holds back, so nothing of its own
 * can sit between two of our frames, with or without permessage-deflate.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import WebSocket from 'ws';
import type { OutFrame, Transport } from '../core/ports.js';
import { BATCH_PROTOCOL } from '../protocol-codes.js';
import { batchedFrames, singleFrame, type FrameOptions } from './frames.js';

export { encodeTextFrame } from './frames.js';

export class WsTransport implements Transport {
  /** permessage-deflate was negotiated: frames over the threshold go compressed. */
  private readonly deflate: boolean;
  /** The client asked for batched frames. */
  private readonly batch: boolean;

  constructor(
    private readonly ws: WebSocket,
    private readonly socket: Duplex,
    private readonly options: FrameOptions = { compressionThreshold: Infinity, batchFrameBytes: 65_536 },
  ) {
    this.deflate = ws.extensions.includes('permessage-deflate');
    this.batch = ws.protocol === BATCH_PROTOCOL;
  }

  write(frames: readonly OutFrame[]): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const socket = this.socket as Socket;
    if (frames.length === 1) {
      socket.write(singleFrame(frames[0], this.deflate, this.options));
      return;
    }
    socket.cork();
    if (this.batch) {
      for (const frame of batchedFrames(frames, this.deflate, this.options)) socket.write(frame);
    } else {
      for (const f of frames) socket.write(singleFrame(f, this.deflate, this.options));
    }
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
