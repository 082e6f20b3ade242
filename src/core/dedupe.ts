import type { StoredEvent, Topic } from './ports.js';

export interface EventRef {
  readonly topic: Topic;
  readonly seq: number;
}

/**
 * Publisher ids (envelope `message_id` or `Nats-Msg-Id`) seen recently, each with the earliest
 * stored event that carried it. JetStream already drops a `Nats-Msg-Id` it saw within its
 * duplicate window; this catches the rest: the same envelope `message_id` without the header,
 * after the window, or sent on two subjects (a project and a user). Checked once per event, never
 * per socket; bounded, oldest forgotten first.
 */
export class RecentIds {
  private readonly ids = new Map<string, EventRef>();

  constructor(private readonly capacity: number) {}

  /** Record the event's id; returns the other event that carried it, if there is one. */
  check(topic: Topic, event: StoredEvent): EventRef | undefined {
    const id = event.messageId;
    if (id === undefined) return undefined;
    const seen = this.ids.get(id);
    if (seen === undefined) {
      this.ids.set(id, { topic, seq: event.seq });
      if (this.ids.size > this.capacity) this.ids.delete(this.ids.keys().next().value!);
      return undefined;
    }
    if (seen.seq === event.seq) return undefined;
    // Keep the earliest: a replay may bring an older copy after a newer one went by live.
    if (event.seq < seen.seq) this.ids.set(id, { topic, seq: event.seq });
    return seen;
  }

  /** A new epoch: seqs of the old one name nothing any more. */
  clear(): void {
    this.ids.clear();
  }
}
