/**
 * Envelopes already worked out, by stream seq. A stored message never changes, so the envelope
 * of (epoch, seq) is always the same text: what the live path encoded for a project's clients is
 * what a resume or a history page of that project sends again a moment later, without parsing
 * the payload again. A cache of texts only (no socket frames): what it holds is its characters,
 * bounded by `maxChars`, oldest in first out.
 *
 * A seq names a message only within one incarnation of the stream, and the broker learns of a new
 * one some time after it exists (its next stream check): meanwhile a read may meet seqs of the new
 * stream that the cache holds from the old one. So an entry also carries when the stream stored
 * its message, and is used only for a message stored at that same millisecond.
 */
export interface EncodedEvent {
  readonly text: string;
  readonly messageId?: string;
  readonly aboutUser?: string;
  /** When the stream stored the message, ms since the epoch. */
  readonly storedMs: number;
}

/** Positions taken from the front of the insertion order are dropped from the array only past this many (and half of it). */
const COMPACT_AFTER = 1024;

export class EncodedEvents {
  private readonly bySeq = new Map<number, EncodedEvent>();
  /** Seqs in insertion order from `head` on: the eviction order. */
  private order: number[] = [];
  private head = 0;
  private chars = 0;
  private epoch = '';

  constructor(private readonly maxChars: number) {}

  /** The envelope of the message `seq` of `epoch` stored at `storedMs`, when kept. */
  get(epoch: string, seq: number, storedMs: number): EncodedEvent | undefined {
    if (epoch !== this.epoch) return undefined;
    const event = this.bySeq.get(seq);
    return event !== undefined && event.storedMs === storedMs ? event : undefined;
  }

  set(epoch: string, seq: number, event: EncodedEvent): void {
    if (event.text.length > this.maxChars || !Number.isFinite(event.storedMs)) return;
    // A new incarnation of the stream numbers from 1 again: nothing kept applies to it.
    if (epoch !== this.epoch) this.clear(epoch);
    if (this.bySeq.has(seq)) return;
    this.bySeq.set(seq, event);
    this.order.push(seq);
    this.chars += event.text.length;
    while (this.chars > this.maxChars) this.evict();
  }

  get size(): number {
    return this.bySeq.size;
  }

  private evict(): void {
    const seq = this.order[this.head++];
    this.chars -= this.bySeq.get(seq)!.text.length;
    this.bySeq.delete(seq);
    if (this.head >= COMPACT_AFTER && this.head * 2 >= this.order.length) {
      this.order = this.order.slice(this.head);
      this.head = 0;
    }
  }

  private clear(epoch: string): void {
    this.bySeq.clear();
    this.order = [];
    this.head = 0;
    this.chars = 0;
    this.epoch = epoch;
  }
}
