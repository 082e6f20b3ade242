import type { OutFrame } from './ports.js';

/**
 * A connection's frames waiting for its socket, in order (the writer beside the connection, as
 * centrifuge's writer.go stands beside client.go). Taking a prefix advances a head index instead
 * of copying what stays: a paced connection takes part of its queue at every lease. The array is
 * compacted once the taken part is most of it.
 */
export class OutboundQueue {
  private frames: OutFrame[] = [];
  private head = 0;
  /** Characters of text waiting (a cheap stand-in for their bytes). */
  chars = 0;

  get length(): number {
    return this.frames.length - this.head;
  }

  push(frame: OutFrame): void {
    this.frames.push(frame);
    this.chars += frame.text.length;
  }

  /** Put `frame` at `position` (0 = next to go), ahead of what was queued after that point. */
  insert(position: number, frame: OutFrame): void {
    this.frames.splice(this.head + position, 0, frame);
    this.chars += frame.text.length;
  }

  /** Remove and return the first `n` frames (all of them when `n` is the length). */
  take(n: number): OutFrame[] {
    if (n >= this.length) {
      const all = this.head === 0 ? this.frames : this.frames.slice(this.head);
      this.clear();
      return all;
    }
    const taken = this.frames.slice(this.head, this.head + n);
    this.head += n;
    for (const f of taken) this.chars -= f.text.length;
    if (this.head >= COMPACT_AFTER && this.head * 2 >= this.frames.length) {
      this.frames = this.frames.slice(this.head);
      this.head = 0;
    }
    return taken;
  }

  /** How many frames from the front fit in `room` characters; at least one, so a big frame still goes. */
  countWithin(room: number): number {
    if (this.chars <= room) return this.length;
    const end = this.frames.length;
    let i = this.head;
    let chars = this.frames[i++].text.length;
    while (i < end && chars + this.frames[i].text.length <= room) chars += this.frames[i++].text.length;
    return i - this.head;
  }

  clear(): void {
    this.frames = [];
    this.head = 0;
    this.chars = 0;
  }
}

/** Taken frames are dropped from the array only past this many (and half of it). */
const COMPACT_AFTER = 256;
