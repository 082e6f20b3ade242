/**
 * WebSocket frames built once and shared by every socket they go to (RFC 6455 §5.2, RFC 7692).
 *
 * - A plain text frame per envelope (`OutFrame.wire`).
 * - The same, compressed (`OutFrame.deflated`): with `server_no_context_takeover` a message's
 *   permessage-deflate payload does not depend on the socket, so one deflate serves all of them:
 *   deflate-raw with a sync flush, minus its trailing 00 00 ff ff, in a frame with RSV1 set.
 * - Batched frames (subprotocol nats-ws-sidecar.batch): several envelopes joined by `\n` in one
 *   text frame. Compressed, the payload is the envelopes' own compressed forms strung together
 *   with a compressed `\n` between them: each piece is a complete sync-flushed deflate stream
 *   whose back-references stay inside it, so their concatenation inflates to the joined text, and
 *   no socket ever compresses anything of its own.
 */
import { constants, deflateRawSync } from 'node:zlib';
import type { OutFrame } from '../core/ports.js';

export interface FrameOptions {
  /** Envelopes (or batched frames) shorter than this many bytes are sent uncompressed. */
  readonly compressionThreshold: number;
  /** Largest payload of a batched frame, bytes before compression. */
  readonly batchFrameBytes: number;
}

const FIN_TEXT = 0x81;
const FIN_TEXT_RSV1 = 0xc1;
const SYNC_TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);

function headerLength(length: number): number {
  return length < 126 ? 2 : length < 65_536 ? 4 : 10;
}

/** A frame of `length` payload bytes: the header is written, the payload is the caller's to fill in. */
function allocFrame(first: number, length: number): { frame: Buffer; offset: number } {
  const offset = headerLength(length);
  const frame = Buffer.allocUnsafe(offset + length);
  frame[0] = first;
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
  return { frame, offset };
}

/** The payload of a frame built here (server frames are never masked). */
function payloadOf(frame: Buffer): Buffer {
  const n = frame[1];
  return frame.subarray(n < 126 ? 2 : n === 126 ? 4 : 10);
}

/** An unmasked, final text frame. */
export function encodeTextFrame(text: string): Buffer {
  const length = Buffer.byteLength(text);
  const { frame, offset } = allocFrame(FIN_TEXT, length);
  frame.write(text, offset, 'utf8');
  return frame;
}

/** permessage-deflate of one message with a fresh context, without the sync flush's tail. */
function deflateMessage(text: string): Buffer {
  const out = deflateRawSync(text, { finishFlush: constants.Z_SYNC_FLUSH });
  return out.subarray(0, out.length - SYNC_TAIL.length);
}

/** A compressed, final text frame (RSV1 set) for sockets that negotiated permessage-deflate. */
export function encodeDeflatedFrame(text: string): Buffer {
  const payload = deflateMessage(text);
  const { frame, offset } = allocFrame(FIN_TEXT_RSV1, payload.length);
  payload.copy(frame, offset);
  return frame;
}

/** What goes between two compressed envelopes: the first one's tail, a compressed "\n", its tail. */
const DEFLATED_SEPARATOR = Buffer.concat([SYNC_TAIL, deflateMessage('\n'), SYNC_TAIL]);
const NEWLINE = 0x0a;

/** The frame for one envelope, as a socket with or without compression sends it. */
export function singleFrame(f: OutFrame, deflate: boolean, options: FrameOptions): Buffer {
  if (deflate && f.text.length >= options.compressionThreshold) return (f.deflated ??= encodeDeflatedFrame(f.text)) as Buffer;
  return (f.wire ??= encodeTextFrame(f.text)) as Buffer;
}

/** Batched frames of one run of envelopes, for plain and for compressed sockets, built on first use. */
interface BatchCache {
  readonly frames: readonly OutFrame[];
  plain?: Buffer[];
  deflated?: Buffer[];
}

function sameFrames(a: readonly OutFrame[], b: readonly OutFrame[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The frames that carry `frames` in as few batched frames as `batchFrameBytes` allows. Sockets
 * that write the same run of envelopes in one flush (a room's sockets with nothing else pending)
 * get the same buffers: the run is remembered on its first envelope.
 */
export function batchedFrames(frames: readonly OutFrame[], deflate: boolean, options: FrameOptions): Buffer[] {
  const first = frames[0];
  let cache = first.batch as BatchCache | undefined;
  if (cache === undefined || !sameFrames(cache.frames, frames)) first.batch = cache = { frames };
  if (deflate) return (cache.deflated ??= buildBatches(frames, true, options));
  return (cache.plain ??= buildBatches(frames, false, options));
}

function buildBatches(frames: readonly OutFrame[], deflate: boolean, options: FrameOptions): Buffer[] {
  const out: Buffer[] = [];
  const bound = options.batchFrameBytes;
  let start = 0;
  let bytes = 0;
  const sizes = frames.map((f) => (deflate ? Buffer.byteLength(f.text) : payloadOf(singleFrame(f, false, options)).length));
  for (let i = 0; i < frames.length; i++) {
    const size = sizes[i];
    if (i > start && bytes + 1 + size > bound) {
      out.push(joined(frames, start, i, bytes, deflate, options));
      start = i;
      bytes = size;
    } else {
      bytes += i > start ? 1 + size : size;
    }
  }
  out.push(joined(frames, start, frames.length, bytes, deflate, options));
  return out;
}

/** One frame with frames[from..to) joined by "\n"; `bytes` is the joined text's length. */
function joined(frames: readonly OutFrame[], from: number, to: number, bytes: number, deflate: boolean, options: FrameOptions): Buffer {
  if (to - from === 1) return singleFrame(frames[from], deflate, options);
  if (deflate && bytes >= options.compressionThreshold) {
    const parts: Buffer[] = [];
    let length = 0;
    for (let i = from; i < to; i++) {
      const payload = payloadOf((frames[i].deflated ??= encodeDeflatedFrame(frames[i].text)) as Buffer);
      if (i > from) {
        parts.push(DEFLATED_SEPARATOR);
        length += DEFLATED_SEPARATOR.length;
      }
      parts.push(payload);
      length += payload.length;
    }
    const { frame, offset } = allocFrame(FIN_TEXT_RSV1, length);
    let at = offset;
    for (const p of parts) at += p.copy(frame, at);
    return frame;
  }
  const { frame, offset } = allocFrame(FIN_TEXT, bytes);
  let at = offset;
  for (let i = from; i < to; i++) {
    if (i > from) frame[at++] = NEWLINE;
    at += payloadOf(singleFrame(frames[i], false, options)).copy(frame, at);
  }
  return frame;
}
