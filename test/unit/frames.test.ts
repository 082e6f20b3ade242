/**
 * Shared frames (src/http/frames.ts): compressed frames inflate to the envelope as a
 * permessage-deflate receiver does it; batched frames join envelopes by "\n" within the size
 * bound, compressed or not; a run of envelopes written by several sockets is built once.
 */
import { inflateRawSync, constants } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import type { OutFrame } from '../../src/core/ports.js';
import { batchedFrames, encodeDeflatedFrame, encodeTextFrame, singleFrame } from '../../src/http/frames.js';

/** A frame's RSV1 bit and its payload, as the receiving side decodes it (RFC 7692 §7.2.2). */
function decode(frame: Buffer): { compressed: boolean; text: string; payloadBytes: number } {
  expect(frame[0] & 0x80).toBe(0x80); // FIN
  expect(frame[0] & 0x0f).toBe(1); // text
  const n = frame[1] & 0x7f;
  const offset = n < 126 ? 2 : n === 126 ? 4 : 10;
  const length = n < 126 ? n : n === 126 ? frame.readUInt16BE(2) : Number(frame.readBigUInt64BE(2));
  expect(frame.length).toBe(offset + length);
  const payload = frame.subarray(offset);
  const compressed = (frame[0] & 0x40) !== 0;
  const text = compressed
    ? inflateRawSync(Buffer.concat([payload, Buffer.from([0, 0, 0xff, 0xff])]), { finishFlush: constants.Z_SYNC_FLUSH }).toString('utf8')
    : payload.toString('utf8');
  return { compressed, text, payloadBytes: length };
}

const envelope = (i: number, pad = 0) => JSON.stringify({ type: 'task_updated', data: { i, title: 'é'.repeat(pad) }, seq: i });
const frames = (n: number, pad = 0): OutFrame[] => Array.from({ length: n }, (_, i) => ({ text: envelope(i, pad) }));
const options = { compressionThreshold: 100, batchFrameBytes: 4096 };

describe('single frames', () => {
  it('encodes text frames of each length class', () => {
    for (const size of [0, 125, 126, 65_535, 65_536, 200_000]) {
      const text = 'a'.repeat(size);
      expect(decode(encodeTextFrame(text))).toMatchObject({ compressed: false, text });
    }
  });

  it('compresses with RSV1 and without the sync tail, and inflates back to the text', () => {
    const text = envelope(1, 500);
    const frame = encodeDeflatedFrame(text);
    const decoded = decode(frame);
    expect(decoded).toMatchObject({ compressed: true, text });
    expect(decoded.payloadBytes).toBeLessThan(Buffer.byteLength(text) / 4);
    expect(frame.subarray(-4).equals(Buffer.from([0, 0, 0xff, 0xff]))).toBe(false);
  });

  it('keeps frames under compressionThreshold plain, and encodes each form once', () => {
    const small: OutFrame = { text: envelope(1) };
    expect(decode(singleFrame(small, true, { ...options, compressionThreshold: 1000 })).compressed).toBe(false);
    const big: OutFrame = { text: envelope(2, 300) };
    const a = singleFrame(big, true, options);
    expect(decode(a).compressed).toBe(true);
    expect(singleFrame(big, true, options)).toBe(a);
    expect(decode(singleFrame(big, false, options)).compressed).toBe(false);
  });
});

describe('batched frames', () => {
  it('joins envelopes by newline, in order, in as few frames as the bound allows', () => {
    const run = frames(200);
    const built = batchedFrames(run, false, options);
    const texts = built.map((f) => decode(f));
    expect(texts.flatMap((t) => t.text.split('\n'))).toEqual(run.map((f) => f.text));
    for (const t of texts) expect(t.payloadBytes).toBeLessThanOrEqual(options.batchFrameBytes);
    const total = run.reduce((n, f) => n + Buffer.byteLength(f.text) + 1, -1);
    expect(built.length).toBe(Math.ceil(total / options.batchFrameBytes)); // full frames but the last
    // Exactly at the bound: two envelopes whose joined size is the bound share one frame.
    const half = 'x'.repeat((options.batchFrameBytes - 1) / 2 - 2);
    const exact: OutFrame[] = [{ text: `"${half}"` }, { text: `"${half}!"` }];
    const atBound = batchedFrames(exact, false, { ...options, batchFrameBytes: Buffer.byteLength(exact[0].text) + Buffer.byteLength(exact[1].text) + 1 });
    expect(atBound).toHaveLength(1);
    const overBound = batchedFrames([{ ...exact[0] }, { ...exact[1] }], false, { ...options, batchFrameBytes: Buffer.byteLength(exact[0].text) + Buffer.byteLength(exact[1].text) });
    expect(overBound).toHaveLength(2);
  });

  it('sends an envelope bigger than the bound alone, and multi-byte text by its bytes', () => {
    const run: OutFrame[] = [{ text: envelope(0) }, { text: envelope(1, 5000) }, { text: envelope(2) }];
    const built = batchedFrames(run, false, options);
    expect(built.map((f) => decode(f).text)).toEqual(run.map((f) => f.text));
    const wide = frames(100, 40); // 'é' is two bytes
    for (const f of batchedFrames(wide, false, options)) expect(decode(f).payloadBytes).toBeLessThanOrEqual(options.batchFrameBytes);
  });

  it('compresses a batch as one message, inflating to the joined text', () => {
    const run = frames(60, 20);
    const built = batchedFrames(run, true, options);
    const decoded = built.map((f) => decode(f));
    expect(decoded.every((d) => d.compressed)).toBe(true);
    expect(decoded.flatMap((d) => d.text.split('\n'))).toEqual(run.map((f) => f.text));
    // Envelopes of one batch share their keys and phrasing: far smaller than each compressed alone.
    const wire = decoded.reduce((n, d) => n + d.payloadBytes, 0);
    const alone = run.reduce((n, f) => n + decode(encodeDeflatedFrame(f.text)).payloadBytes, 0);
    expect(wire).toBeLessThan(alone / 2);
  });

  it('builds a run once for every socket that writes the same envelopes, and again for another run', () => {
    const run = frames(30);
    const first = batchedFrames(run, false, options);
    expect(batchedFrames([...run], false, options)).toBe(first);
    const other = batchedFrames([run[0], run[2]], false, options);
    expect(other).not.toBe(first);
    expect(other.map((f) => decode(f).text)).toEqual([`${run[0].text}\n${run[2].text}`]);
  });
});

describe('batch reuse', () => {
  it('keeps a few runs that start with the same envelope, so alternating sockets do not rebuild', () => {
    const run = frames(10);
    const extra: OutFrame = { text: envelope(99) };
    const a = batchedFrames(run, false, options);
    const b = batchedFrames([...run, extra], false, options);
    expect(batchedFrames([...run], false, options)).toBe(a);
    expect(batchedFrames([...run, extra], false, options)).toBe(b);
    expect(decode(b[0]).text.split('\n')).toHaveLength(11);
  });
});
