/**
 * The seqs of direct messages and broadcasts seen, and whether each was acked: a redelivery (the
 * offline inbox sends again what was not acked) is dropped, and acked again. Bounded: oldest first.
 */
export class SeenSeqs {
  private readonly seen = new Map<number, boolean>();

  constructor(private readonly window: number) {}

  /** Undefined when not seen; else whether it was acked. */
  acked(seq: number): boolean | undefined {
    return this.seen.get(seq);
  }

  add(seq: number): void {
    this.seen.set(seq, false);
    if (this.seen.size > this.window) this.seen.delete(this.seen.keys().next().value!);
  }

  markAcked(seq: number): void {
    if (this.seen.has(seq)) this.seen.set(seq, true);
  }

  /** A new epoch: its seqs start again, so the ones kept mean nothing. */
  clear(): void {
    this.seen.clear();
  }
}
