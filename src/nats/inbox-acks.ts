/**
 * One user's acknowledgements as the inbox bucket stores them (see inbox.ts): a floor and the
 * acknowledged seqs above it. Pure functions; the reads of the stream they need come in as a
 * callback.
 *
 * Value: `{"e":EPOCH,"f":FLOOR,"a":[SEQ,...]}`. A seq names a message only within its stream's
 * incarnation, so a value written under another epoch says nothing and reads as empty: the stream
 * was created anew while the bucket stayed (an operator deleted only the stream).
 */

export interface AckState {
  /** Every direct message of the user with seq <= floor is acknowledged, or gone from the stream. */
  readonly floor: number;
  /** Acknowledged seqs above the floor, ascending. */
  readonly acked: readonly number[];
}

export const EMPTY: AckState = { floor: 0, acked: [] };

export function decodeAcks(value: Uint8Array | string | undefined, epoch: string): AckState {
  if (value === undefined || value.length === 0) return EMPTY;
  try {
    const v = JSON.parse(typeof value === 'string' ? value : Buffer.from(value).toString('utf8')) as { e?: unknown; f?: unknown; a?: unknown };
    if (v.e !== epoch || typeof v.f !== 'number' || !(v.f >= 0)) return EMPTY;
    const floor = v.f;
    const acked = Array.isArray(v.a) ? v.a.filter((s): s is number => Number.isSafeInteger(s) && s > floor) : [];
    return { floor, acked: [...new Set(acked)].sort((x, y) => x - y) };
  } catch {
    return EMPTY; // unreadable: the next write replaces it
  }
}

export function encodeAcks(state: AckState, epoch: string): string {
  return JSON.stringify({ e: epoch, f: state.floor, a: state.acked });
}

export function isAcked(state: AckState, seq: number): boolean {
  return seq <= state.floor || binaryHas(state.acked, seq);
}

/** `state` with `seqs` acknowledged and everything up to `upTo` (ack on write); the same object when nothing changes. */
export function withAcks(state: AckState, seqs: Iterable<number>, upTo = 0): AckState {
  const floor = Math.max(state.floor, upTo);
  const added = [...seqs].filter((s) => s > floor && !binaryHas(state.acked, s));
  if (floor === state.floor && added.length === 0) return state;
  const acked = [...new Set([...state.acked.filter((s) => s > floor), ...added])].sort((x, y) => x - y);
  return { floor, acked };
}

/**
 * Move the floor up over what is acknowledged or no longer stored, so the set keeps only the
 * acked seqs above the user's first unacknowledged stored message. `next(from)` is the seq of
 * the user's first stored message at or after `from` (a direct get with next_by_subj), or
 * undefined for none.
 *
 * A found message is trusted; "none" is not: a replica still catching up answers direct gets
 * with a prefix of the stream, so a message it has is the right next one, but its "none" may
 * hide an unacknowledged message. So "none" never moves the floor.
 *
 * Bounded: the stream keeps at most `cap` (maxStoredMessages) messages per user, so after this
 * the set holds fewer than `cap` of the user's seqs. Should it still hold more (seqs that are
 * not the user's messages), the lowest are dropped: those messages, if any, come again; none is
 * ever skipped.
 */
export async function compactAcks(state: AckState, next: (from: number) => Promise<number | undefined>, cap: number): Promise<AckState> {
  let { floor } = state;
  let acked = state.acked;
  // Each step either stops or drops at least one entry: at most acked.length + 1 reads.
  while (acked.length > 0) {
    const seq = await next(floor + 1);
    if (seq === undefined) break;
    // Nothing of the user's is stored in (floor, seq): those seqs count as settled.
    floor = seq - 1;
    let i = 0;
    while (i < acked.length && acked[i] < seq) i++;
    if (acked[i] !== seq) {
      acked = acked.slice(i);
      break; // seq is the first unacknowledged message
    }
    floor = seq;
    acked = acked.slice(i + 1);
  }
  if (acked.length > cap) acked = acked.slice(acked.length - cap);
  return floor === state.floor && acked === state.acked ? state : { floor, acked };
}

function binaryHas(sorted: readonly number[], x: number): boolean {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] === x) return true;
    if (sorted[mid] < x) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}
