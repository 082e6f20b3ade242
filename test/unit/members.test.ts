import { describe, expect, it } from 'vitest';
import { addMember, countMembers, membersOf, removeMember, type Members } from '../../src/core/members.js';

class M {
  constructor(readonly name: string) {}
}

describe('membership maps', () => {
  it('keeps a single member bare, grows to a Set for two, and shrinks back to the bare member', () => {
    const map = new Map<string, Members<M>>();
    const [a, b] = [new M('a'), new M('b')];
    expect(addMember(map, 'k', a)).toBe(true);
    expect(map.get('k')).toBe(a);
    expect(addMember(map, 'k', a)).toBe(false);
    expect(countMembers(map.get('k'))).toBe(1);
    expect(addMember(map, 'k', b)).toBe(false);
    expect(map.get('k')).toBeInstanceOf(Set);
    expect([...membersOf(map.get('k'))]).toEqual([a, b]);
    expect(removeMember(map, 'k', a)).toBe(false);
    expect(map.get('k')).toBe(b);
    expect(removeMember(map, 'k', b)).toBe(true);
    expect(map.has('k')).toBe(false);
  });

  it('says a key emptied only when its last member leaves, and ignores strangers', () => {
    const map = new Map<string, Members<M>>();
    const [a, b, c] = [new M('a'), new M('b'), new M('c')];
    expect(removeMember(map, 'none', a)).toBe(false);
    for (const m of [a, b, c]) addMember(map, 'k', m);
    expect(removeMember(map, 'k', new M('x'))).toBe(false);
    expect(countMembers(map.get('k'))).toBe(3);
    expect(removeMember(map, 'k', b)).toBe(false);
    expect(removeMember(map, 'k', c)).toBe(false);
    expect(removeMember(map, 'k', new M('y'))).toBe(false);
    expect(removeMember(map, 'k', a)).toBe(true);
    expect(countMembers(map.get('k'))).toBe(0);
    expect([...membersOf(undefined)]).toEqual([]);
  });

  it('lets a delivery loop finish over a Set whose members leave during it', () => {
    const map = new Map<string, Members<M>>();
    const all = ['a', 'b', 'c'].map((n) => new M(n));
    for (const m of all) addMember(map, 'k', m);
    const seen: string[] = [];
    for (const m of membersOf(map.get('k'))) {
      seen.push(m.name);
      if (m.name === 'a') removeMember(map, 'k', all[2]);
      if (m.name === 'b') removeMember(map, 'k', all[0]);
    }
    expect(seen).toEqual(['a', 'b']);
    expect(map.get('k')).toBe(all[1]);
  });
});
