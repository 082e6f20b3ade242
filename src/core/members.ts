/**
 * Membership maps (topic -> subscriptions, user -> connections) whose value is the bare member
 * while there is only one: most users have one connection and every user topic one subscriber
 * per connection, and an empty Set alone costs ~150 bytes of heap per key.
 */
export type Members<T extends object> = T | Set<T>;

/** Adds `member` under `key`. True when the key is new. */
export function addMember<K, T extends object>(map: Map<K, Members<T>>, key: K, member: T): boolean {
  const current = map.get(key);
  if (current === undefined) {
    map.set(key, member);
    return true;
  }
  if (current instanceof Set) current.add(member);
  else if (current !== member) map.set(key, new Set([current, member]));
  return false;
}

/** Removes `member` from `key`. True when that left the key without members (it is deleted). */
export function removeMember<K, T extends object>(map: Map<K, Members<T>>, key: K, member: T): boolean {
  const current = map.get(key);
  if (current === undefined) return false;
  if (!(current instanceof Set)) {
    if (current !== member) return false;
    map.delete(key);
    return true;
  }
  // A Set being iterated (delivery) stays valid when the map moves on to a bare member.
  current.delete(member);
  if (current.size > 1) return false;
  const [last] = current;
  if (last === undefined) {
    map.delete(key);
    return true;
  }
  map.set(key, last);
  return false;
}

export function countMembers<T extends object>(members: Members<T> | undefined): number {
  return members === undefined ? 0 : members instanceof Set ? members.size : 1;
}

/** The members as something to iterate (no copy of a Set). */
export function membersOf<T extends object>(members: Members<T> | undefined): Iterable<T> {
  return members === undefined ? [] : members instanceof Set ? members : [members];
}
