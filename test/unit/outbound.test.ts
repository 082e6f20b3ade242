import { describe, expect, it } from 'vitest';
import { OutboundQueue } from '../../src/core/outbound.js';

const frame = (text: string) => ({ text });

describe('OutboundQueue', () => {
  it('hands out frames in order, a prefix at a time, keeping the character count', () => {
    const q = new OutboundQueue();
    for (const t of ['aa', 'bbb', 'c', 'dddd']) q.push(frame(t));
    expect([q.length, q.chars]).toEqual([4, 10]);
    expect(q.take(2).map((f) => f.text)).toEqual(['aa', 'bbb']);
    expect([q.length, q.chars]).toEqual([2, 5]);
    q.push(frame('e'));
    expect(q.take(10).map((f) => f.text)).toEqual(['c', 'dddd', 'e']);
    expect([q.length, q.chars]).toEqual([0, 0]);
  });

  it('counts how many frames fit in a room, at least one', () => {
    const q = new OutboundQueue();
    for (const t of ['aaaa', 'bb', 'cc', 'd']) q.push(frame(t));
    expect(q.countWithin(100)).toBe(4);
    expect(q.countWithin(8)).toBe(3);
    expect(q.countWithin(5)).toBe(1);
    expect(q.countWithin(1)).toBe(1); // a big frame still goes
    q.take(1);
    expect(q.countWithin(4)).toBe(2);
  });

  it('inserts ahead of what was queued after a mark (auth_success before frames queued during setup)', () => {
    const q = new OutboundQueue();
    q.push(frame('old'));
    q.take(1);
    const mark = q.length;
    q.push(frame('error'));
    q.insert(mark, frame('auth_success'));
    expect(q.take(2).map((f) => f.text)).toEqual(['auth_success', 'error']);
  });

  it('stays in order across compactions of a long paced queue', () => {
    const q = new OutboundQueue();
    let next = 0;
    let expected = 0;
    for (let round = 0; round < 200; round++) {
      for (let i = 0; i < 7; i++) q.push(frame(String(next++)));
      for (const f of q.take(5)) expect(f.text).toBe(String(expected++));
    }
    for (const f of q.take(q.length)) expect(f.text).toBe(String(expected++));
    expect(expected).toBe(next);
    expect(q.chars).toBe(0);
  });
});
