/**
 * WebSocket frames built once and shared by every socket they go to (RFC 6455 §5.2, RFC 7692).
 *
 * - A plain text frame per envelope (`OutFrame.wire`).
 * - The same, compressed (`OutFrame.deflated`): with `server_no_context_takeover` a message's
 *   permessage-deflate payload does not depend on the socket, so one deflate serves all of them:
 *   deflate-raw with a sync flush, minus its trailing 00 00 ff ff, in a frame with RSV1 set.
 * - Batched frames (subprotocol nats-ws-sidecar.batch): several envelopes joined by `\n` in one
 *   text frame, compressed as one message when compressed: envelopes of one batch share most of
 *   their text (keys, ids, phrasing), so a batch of ~1 KB task events compresses to a fraction of
 *   what the same envelopes compress to one by one (measured: 0.12 of the text for 10 of them,
 *   against 0.55 each). A batch is built once for every socket that writes the same run of
 *   envelopes in a flush (a room's sockets), so compression costs one deflate per distinct run
 *   per flush, never one per socket per message.
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
  const frame = Buffer.allocUnsafe(headerLength(length) + length);
  return { frame, offset: writeHeader(frame, 0, first, length) };
}

/** Writes a frame header at `at`; returns where the payload starts. */
function writeHeader(frame: Buffer, at: number, first: number, length: number): number {
  frame[at] = first;
  if (length < 126) {
    frame[at + 1] = length;
    return at + 2;
  }
  if (length < 65_536) {
    frame[at + 1] = 126;
    frame.writeUInt16BE(length, at + 2);
    return at + 4;
  }
  frame[at + 1] = 127;
  frame.writeUInt32BE(Math.floor(length / 2 ** 32), at + 2);
  frame.writeUInt32BE(length >>> 0, at + 6);
  return at + 10;
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

/**
 * permessage-deflate of one message with a fresh context, without the sync flush's tail. Setting
 * up a zlib context costs more than compressing a 1 KB envelope, and most of it is the window
 * and hash tables: a window no bigger than the message (a receiver with the full 15-bit window
 * inflates it all the same) and memLevel 4 halve that, at the same size for such messages.
 */
function deflateMessage(text: string | Buffer): Buffer {
  const length = typeof text === 'string' ? text.length : text.length;
  const windowBits = Math.min(15, Math.max(9, Math.ceil(Math.log2(length + 1))));
  const out = deflateRawSync(text, { finishFlush: constants.Z_SYNC_FLUSH, windowBits, memLevel: windowBits < 15 ? 4 : 8 });
  return out.subarray(0, out.length - SYNC_TAIL.length);
}

/** A compressed, final text frame (RSV1 set) for sockets that negotiated permessage-deflate. */
export function encodeDeflatedFrame(text: string): Buffer {
  const payload = deflateMessage(text);
  const { frame, offset } = allocFrame(FIN_TEXT_RSV1, payload.length);
  payload.copy(frame, offset);
  return frame;
}

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
  let runs = first.batch as BatchCache[] | undefined;
  let cache = runs?.find((c) => sameFrames(c.frames, frames));
  if (cache === undefined) {
    cache = { frames };
    // A few runs per first envelope: sockets of a room that also have a message of their own
    // pending alternate between two or three runs, which must not evict each other.
    if (runs === undefined) first.batch = runs = [cache];
    else if (runs.push(cache) > MAX_RUNS) runs.shift();
  }
  if (deflate) return (cache.deflated ??= buildBatches(frames, true, options));
  return (cache.plain ??= buildBatches(frames, false, options));
}

const MAX_RUNS = 4;

function buildBatches(frames: readonly OutFrame[], deflate: boolean, options: FrameOptions): Buffer[] {
  const out: Buffer[] = [];
  const bound = options.batchFrameBytes;
  let start = 0;
  let bytes = 0;
  const sizes = frames.map((f) => payloadOf(singleFrame(f, false, options)).length);
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
  const plain = allocFrame(FIN_TEXT, bytes);
  let at = plain.offset;
  for (let i = from; i < to; i++) {
    if (i > from) plain.frame[at++] = NEWLINE;
    at += payloadOf(singleFrame(frames[i], false, options)).copy(plain.frame, at);
  }
  if (!deflate || bytes < options.compressionThreshold) return plain.frame;
  const payload = deflateMessage(plain.frame.subarray(plain.offset));
  const { frame, offset } = allocFrame(FIN_TEXT_RSV1, payload.length);
  payload.copy(frame, offset);
  return frame;
}
