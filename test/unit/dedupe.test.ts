import { describe, expect, it } from 'vitest';
import { RecentIds } from '../../src/core/dedupe.js';
import type { StoredEvent } from '../../src/core/ports.js';

const ev = (seq: number, messageId?: string): StoredEvent => ({ seq, frame: { text: '' }, messageId });

describe('RecentIds', () => {
  it('points a later event with a known id at the first one, on any topic', () => {
    const ids = new RecentIds(10);
    expect(ids.check('project.a', ev(1, 'm1'))).toBeUndefined();
    expect(ids.check('project.a', ev(5, 'm1'))).toEqual({ topic: 'project.a', seq: 1 });
    expect(ids.check('user.u', ev(7, 'm1'))).toEqual({ topic: 'project.a', seq: 1 });
  });

  it('does not call an event a duplicate of itself (the same seq live and replayed)', () => {
    const ids = new RecentIds(10);
    ids.check('project.a', ev(3, 'm1'));
    expect(ids.check('project.a', ev(3, 'm1'))).toBeUndefined();
  });

  it('keeps the earliest seq when an older copy turns up after a newer one', () => {
    const ids = new RecentIds(10);
    ids.check('project.a', ev(9, 'm1')); // live
    expect(ids.check('project.a', ev(4, 'm1'))).toEqual({ topic: 'project.a', seq: 9 }); // replayed later
    expect(ids.check('project.a', ev(9, 'm1'))).toEqual({ topic: 'project.a', seq: 4 });
  });

  it('ignores events without a publisher id and forgets the oldest ids past its capacity', () => {
    const ids = new RecentIds(2);
    expect(ids.check('project.a', ev(1))).toBeUndefined();
    ids.check('project.a', ev(1, 'a'));
    ids.check('project.a', ev(2, 'b'));
    ids.check('project.a', ev(3, 'c'));
    expect(ids.check('project.a', ev(4, 'a'))).toBeUndefined();
    expect(ids.check('project.a', ev(5, 'c'))).toEqual({ topic: 'project.a', seq: 3 });
  });
});
