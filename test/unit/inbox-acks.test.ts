/** A user's stored acknowledgements (nats/inbox-acks.ts): the floor, the set above it, compaction. */
import { describe, expect, it } from 'vitest';
import { compactAcks, decodeAcks, EMPTY, encodeAcks, isAcked, withAcks, type AckState } from '../../src/nats/inbox-acks.js';

/** The user's stored messages, as direct gets with next_by_subj answer them. */
function stream(seqs: number[]): { next: (from: number) => Promise<number | undefined>; reads: number } {
  const s = {
    reads: 0,
    next: (from: number) => {
      s.reads += 1;
      return Promise.resolve(seqs.find((q) => q >= from));
    },
  };
  return s;
}

describe('the stored value', () => {
  it('round-trips under its epoch and reads as empty under another one or when unreadable', () => {
    const state: AckState = { floor: 7, acked: [9, 12] };
    expect(decodeAcks(encodeAcks(state, 'e1'), 'e1')).toEqual(state);
    expect(decodeAcks(new TextEncoder().encode(encodeAcks(state, 'e1')), 'e1')).toEqual(state);
    expect(decodeAcks(encodeAcks(state, 'e1'), 'e2')).toEqual(EMPTY);
    expect(decodeAcks('not json', 'e1')).toEqual(EMPTY);
    expect(decodeAcks('{"e":"e1","f":-1}', 'e1')).toEqual(EMPTY);
    // Entries at or below the floor, duplicates and non-integers are dropped; the set comes sorted.
    expect(decodeAcks('{"e":"e1","f":5,"a":[9,3,9,"x",6.5,6]}', 'e1')).toEqual({ floor: 5, acked: [6, 9] });
  });
});

describe('adding acknowledgements', () => {
  it('counts a seq as acked at or below the floor or in the set', () => {
    const state: AckState = { floor: 10, acked: [12, 15] };
    expect([9, 10, 11, 12, 13, 15, 16].map((s) => isAcked(state, s))).toEqual([true, true, false, true, false, true, false]);
  });

  it('changes nothing (the same object) for an ack already there: settled once', () => {
    const state: AckState = { floor: 10, acked: [12] };
    expect(withAcks(state, [5, 10, 12])).toBe(state);
    expect(withAcks(state, [], 8)).toBe(state);
  });

  it('adds seqs in order, and an ack on write moves the floor over the set', () => {
    expect(withAcks({ floor: 10, acked: [15] }, [13, 11])).toEqual({ floor: 10, acked: [11, 13, 15] });
    expect(withAcks({ floor: 10, acked: [12, 15] }, [20], 14)).toEqual({ floor: 14, acked: [15, 20] });
  });
});

describe('compaction', () => {
  it('folds acked seqs into the floor up to the first unacknowledged stored message', async () => {
    const s = stream([3, 5, 8, 9, 12]);
    expect(await compactAcks({ floor: 0, acked: [3, 5, 9] }, s.next, 1000)).toEqual({ floor: 7, acked: [9] });
  });

  it('reads once for the common case, acking the next message in order', async () => {
    const s = stream([3, 5, 8]);
    expect(await compactAcks({ floor: 3, acked: [5] }, s.next, 1000)).toEqual({ floor: 5, acked: [] });
    expect(s.reads).toBe(1);
    // Nothing waits above the floor: no read at all.
    expect(await compactAcks({ floor: 5, acked: [] }, s.next, 1000)).toEqual({ floor: 5, acked: [] });
    expect(s.reads).toBe(1);
  });

  it('moves the floor over messages the stream no longer holds and drops their acks', async () => {
    // 3 and 5 were pushed out (or aged out): 8 is the user's first stored message.
    const s = stream([8, 9, 12]);
    expect(await compactAcks({ floor: 0, acked: [5, 8, 12] }, s.next, 1000)).toEqual({ floor: 8, acked: [12] });
  });

  it('never moves the floor on "none": a replica catching up may not have the message yet', async () => {
    const s = stream([]);
    const state: AckState = { floor: 2, acked: [5, 8] };
    expect(await compactAcks(state, s.next, 1000)).toBe(state);
  });

  it('stays bounded: past the cap the lowest acks go (those messages come again, none is skipped)', async () => {
    const s = stream([1, 100]);
    const acked = Array.from({ length: 10 }, (_, i) => 101 + i); // not the user's messages
    expect(await compactAcks({ floor: 0, acked }, s.next, 4)).toEqual({ floor: 0, acked: [107, 108, 109, 110] });
  });
});
