import { describe, expect, it } from 'vitest';
import { EncodedEvents } from '../../src/nats/encoded-events.js';

const event = (text: string, storedMs = 1000) => ({ text, storedMs });

describe('EncodedEvents', () => {
  it('gives back the envelope of a seq stored at the same millisecond', () => {
    const cache = new EncodedEvents(1000);
    cache.set('e1', 7, { text: 'seven', messageId: 'm7', storedMs: 1000 });
    expect(cache.get('e1', 7, 1000)).toEqual({ text: 'seven', messageId: 'm7', storedMs: 1000 });
    expect(cache.get('e1', 8, 1000)).toBeUndefined();
  });

  it('never gives the envelope of another incarnation of the stream for the same seq', () => {
    const cache = new EncodedEvents(1000);
    cache.set('e1', 7, event('old', 1000));
    // The stream was recreated and the broker has not noticed yet: same epoch, seq 7 stored later.
    expect(cache.get('e1', 7, 5000)).toBeUndefined();
    expect(cache.get('e2', 7, 1000)).toBeUndefined();
    // Once the new epoch is known, what the old one left is gone.
    cache.set('e2', 1, event('new', 6000));
    expect(cache.size).toBe(1);
    expect(cache.get('e2', 1, 6000)?.text).toBe('new');
  });

  it('keeps at most maxChars of text, dropping the oldest first', () => {
    const cache = new EncodedEvents(10);
    for (let seq = 1; seq <= 5; seq++) cache.set('e', seq, event('abcd'));
    expect([1, 2, 3, 4, 5].map((seq) => cache.get('e', seq, 1000) !== undefined)).toEqual([false, false, false, true, true]);
    cache.set('e', 6, event('x'.repeat(11))); // bigger than the whole cache: not kept, nothing evicted for it
    expect(cache.size).toBe(2);
  });

  it('keeps nothing with a size of 0, and nothing without a store time', () => {
    const none = new EncodedEvents(0);
    none.set('e', 1, event('a'));
    expect(none.size).toBe(0);
    const cache = new EncodedEvents(100);
    cache.set('e', 1, event('a', NaN));
    expect(cache.get('e', 1, NaN)).toBeUndefined();
  });

  it('stays bounded over many insertions (the eviction order is compacted)', () => {
    const cache = new EncodedEvents(5000);
    for (let seq = 1; seq <= 100_000; seq++) cache.set('e', seq, event('0123456789'));
    expect(cache.size).toBe(500);
    expect(cache.get('e', 100_000, 1000)?.text).toBe('0123456789');
    expect(cache.get('e', 99_500, 1000)).toBeUndefined();
  });
});
