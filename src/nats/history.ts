/**
 * A subject's stored history in the stream: every event after a seq, in order, and whether some
 * of it is gone. Shared by resume (a client's `since`) and gap repair on the live path.
 */
import { DeliverPolicy, type Consumer, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { errors as natsErrors, type MsgHdrs } from '@nats-io/transport-node';
import { SidecarError } from '../errors.js';

export interface HistoryRead {
  /** Events after `since` may have been removed by the stream's limits. */
  truncated: boolean;
  /** The subject's last seq when the read began; the read delivered everything up to it that is stored. */
  head: number;
}

/** A read that made no progress for this long is abandoned (JetStream unreachable or overloaded). */
const STALL_MS = 5_000;
/**
 * A read's ordered consumer is R1, and nats-server may place it on a peer of the stream that is
 * down: a node killed without a clean shutdown stays a placement candidate for a long time (about
 * one creation in three timed out with one node of three down, the first ones in a row). So
 * creation gets a short timeout and a second try, and then the read falls back to direct gets,
 * which only live replicas answer.
 */
export const READER_CREATE_TIMEOUT_MS = 2_000;
const READER_CREATE_ATTEMPTS = 2;
/** Most events one pull of a read asks for. */
const MAX_BATCH = 10_000;

/** One stored event, from a reader consumer or a direct get. */
export interface StoredMessage {
  seq: number;
  data: Uint8Array;
  headers?: MsgHdrs;
  /** When the stream stored it (RFC 3339). */
  timestamp: string;
  /** A reader's delivery info: the store time as a number, without formatting or parsing a date. */
  info?: { readonly timestampNanos: number };
}

/** When the stream stored `m`, ms since the epoch. */
export function storedMsOf(m: StoredMessage): number {
  return m.info !== undefined ? Math.floor(m.info.timestampNanos / 1e6) : Date.parse(m.timestamp);
}

let isoSecond = NaN;
let isoPrefix = '';

/**
 * `new Date(ms).toISOString()` for a whole number of ms, reusing the part up to the second: the
 * events of a read were mostly stored within the same second, and a Date per event was a third of
 * encoding one that has no timestamp of its own.
 */
export function isoTime(ms: number): string {
  const second = Math.floor(ms / 1000);
  if (second !== isoSecond) {
    const iso = new Date(second * 1000).toISOString();
    // Four-digit years only ("YYYY-MM-DDTHH:MM:SS.000Z"); anything else the slow way.
    if (iso.length !== 24) return new Date(ms).toISOString();
    isoSecond = second;
    isoPrefix = iso.slice(0, 20);
  }
  const fraction = ms - second * 1000;
  return `${isoPrefix}${fraction < 10 ? '00' : fraction < 100 ? '0' : ''}${fraction}Z`;
}

export interface PageQuery {
  limit: number;
  /** Exclusive: events with a lower seq. */
  before?: number;
  /** Exclusive: events with a higher seq. */
  after?: number;
}

export class StreamHistory {
  /** `readerJs` creates the readers' consumers: a client with READER_CREATE_TIMEOUT_MS (default `js`). */
  constructor(
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly stream: string,
    private readonly maxPerSubject: number,
    private readonly readerJs: JetStreamClient = js,
  ) {}

  /** Seq of the last stored event of `subject`; 0 when there is none. */
  async head(subject: string): Promise<number> {
    const m = await this.jsm.streams.getMessage(this.stream, { last_by_subj: subject });
    return m?.seq ?? 0;
  }

  /**
   * Every stored event of `subject` with seq > `since`, in order, through `onMessage`, up to the
   * last one stored when the read began (later ones come live). `beyond`: `since` is past the
   * stream's last seq, so it was taken in an earlier incarnation of the stream.
   */
  async read(
    subject: string,
    since: number,
    onMessage: (m: StoredMessage) => void,
    knownHead?: number,
  ): Promise<HistoryRead & { beyond: boolean }> {
    // `knownHead`: the caller knows a seq up to which every event of the subject has reached it and
    // after which each will (the live path's last one): the read need not ask for the head.
    const head = knownHead ?? (await this.head(subject));
    await this.fetch(subject, since, head, onMessage);
    // Checked after the read, not before: an event pushed out of the window while the read ran
    // (by any newer event, even the reader's own user_joined) is reported, never silently skipped.
    const cut = await this.cut(subject, since);
    return { truncated: cut !== 'kept', beyond: cut === 'beyond', head };
  }

  /** Where the subject's history ends now, and whether part of it after `since` is gone. */
  async plan(subject: string, since: number): Promise<HistoryRead> {
    const [head, truncated] = await Promise.all([this.head(subject), this.lost(subject, since)]);
    return { truncated, head };
  }

  /**
   * The stored events of `subject` in (since, head], in order. One ordered consumer, no acks.
   * `onMessage` returning false ends the read early.
   */
  async fetch(subject: string, since: number, head: number, onMessage: (m: StoredMessage) => void | boolean): Promise<void> {
    if (head <= since) return;
    const consumer = await this.reader(subject, since);
    if (!consumer) return this.fetchDirect(subject, since, head, onMessage);
    let lastActivity = Date.now();
    let stalled = false;
    let failure: Error | undefined;
    let ended = false;
    let end!: () => void;
    const finished = new Promise<void>((resolve) => (end = resolve));
    const stop = (): void => {
      ended = true;
      end();
    };
    // A callback, not the async iterator: no promise and no task per message. One pull asks for
    // as many events as the range can hold (up to a cap), refilled only when it is used up: a
    // request to NATS in the middle of a read is a context switch on a busy host.
    const messages = await consumer.consume({
      max_messages: Math.min(MAX_BATCH, head - since),
      threshold_messages: 1,
      callback: (m) => {
        if (ended) return;
        lastActivity = Date.now();
        try {
          if (onMessage(m) === false || m.seq >= head || m.info.pending === 0) stop();
        } catch (err) {
          failure = err instanceof Error ? err : new Error(String(err));
          stop();
        }
      },
    });
    // One timer per read, not per message: a read that stops moving is given up, not awaited forever.
    const watchdog = setInterval(() => {
      if (Date.now() - lastActivity < STALL_MS) return;
      stalled = true;
      stop();
    }, STALL_MS / 5);
    try {
      // The consumer stopping on its own is an error of the read (the stream went away, say).
      const closed = await Promise.race([finished.then(() => undefined), messages.closed()]);
      if (closed instanceof Error && !ended) failure = closed;
    } finally {
      ended = true;
      clearInterval(watchdog);
      await messages.close().catch(() => {});
      // nats.js closes an ordered consumer without deleting it, and gives it 5 minutes of
      // inactive_threshold: a reconnect storm's resumes would leave one per resume on the server.
      consumer.delete().catch(() => {});
    }
    if (failure !== undefined) throw failure;
    if (stalled) throw new SidecarError('history_stalled', `reading ${subject} from the stream stalled`);
  }

  /** An ordered consumer of `subject` from `since + 1`, or undefined when creating one timed out (READER_CREATE_TIMEOUT_MS). */
  private async reader(subject: string, since: number): Promise<Consumer | undefined> {
    for (let attempt = 1; attempt <= READER_CREATE_ATTEMPTS; attempt++) {
      try {
        return await this.readerJs.consumers.get(this.stream, {
          filter_subjects: subject,
          deliver_policy: DeliverPolicy.StartSequence,
          opt_start_seq: since + 1,
        });
      } catch (err) {
        if (!(err instanceof natsErrors.TimeoutError)) throw err;
      }
    }
    return undefined;
  }

  /**
   * The same read with direct gets, one event per request. A replica still catching up holds a
   * prefix of the stream, so it answers the right next event or nothing: nothing before `head` is
   * an error (the caller retries), never the end of the history.
   */
  private async fetchDirect(subject: string, since: number, head: number, onMessage: (m: StoredMessage) => void | boolean): Promise<void> {
    for (let cursor = since; cursor < head; ) {
      const m = await this.jsm.direct.getMessage(this.stream, { next_by_subj: subject, seq: cursor + 1 });
      if (!m) throw new SidecarError('history_unavailable', `no stored event of ${subject} after ${cursor} answered; retrying`);
      if (m.seq > head) return;
      if (onMessage({ seq: m.seq, data: m.data, headers: m.header, timestamp: m.timestamp }) === false) return;
      cursor = m.seq;
    }
  }

  /**
   * Whether events of `subject` after `since` may be gone. Limits retention removes a subject's
   * events oldest first (by age across the stream, or by max_msgs_per_subject), so what the stream
   * holds of a subject is always its most recent part: when that part reaches back to `since`,
   * nothing after it is missing. Usually one request (the event at `since` is still there).
   */
  async lost(subject: string, since: number): Promise<boolean> {
    return (await this.cut(subject, since)) !== 'kept';
  }

  /**
   * `lost`, telling a cut history from a position past the stream's end (another epoch). The
   * lookups a case may need go out together (one round trip for the usual cases, at the price of
   * a direct get that the commonest one, the event at `since` still stored, does not use).
   */
  private async cut(subject: string, since: number): Promise<'kept' | 'cut' | 'beyond'> {
    if (since > 0) {
      const [at, first] = await Promise.all([this.jsm.streams.getMessage(this.stream, { seq: since }), this.firstStored(subject)]);
      if (at?.subject === subject) return 'kept';
      if (!at) {
        // The event at `since` is gone (aged out or pushed out), or `since` is past the end (the
        // stream was recreated). The subject's stored part starting after `since` says which,
        // without asking for the stream's end: at the next seq nothing can be missing before it.
        if (first !== undefined && first > since) return first > since + 1 ? 'cut' : 'kept';
        const info = await this.jsm.streams.info(this.stream);
        if (since > info.state.last_seq) return 'beyond';
        // Unless the subject still holds an older event, history is cut.
        return first === undefined ? 'cut' : 'kept';
      }
      // `since` is another subject's event, still stored: nothing after it has aged out.
      return (await this.count(subject)) >= this.maxPerSubject && first !== undefined && first > since + 1 ? 'cut' : 'kept';
    }
    // Only the per-subject limit can have dropped events after `since`.
    const [count, first] = await Promise.all([this.count(subject), this.firstStored(subject)]);
    return count >= this.maxPerSubject && first !== undefined && first > since + 1 ? 'cut' : 'kept';
  }

  private async firstStored(subject: string): Promise<number | undefined> {
    const m = await this.jsm.direct.getMessage(this.stream, { next_by_subj: subject, seq: 1 });
    return m?.seq;
  }

  /**
   * A page of `subject`'s stored events (the `history` request), ascending. `accept` is asked for
   * each event in the order of the read's direction (newest first for latest / before) and says
   * whether it still fits in the reply; it must take the `first`, so paging never stalls.
   */
  async page(
    subject: string,
    query: PageQuery,
    accept: (m: StoredMessage, first: boolean) => boolean,
  ): Promise<{ messages: StoredMessage[]; more: boolean }> {
    if (query.after !== undefined) return this.pageAfter(subject, query.after, query.limit, accept);
    const [head, first, count] = await Promise.all([this.head(subject), this.firstStored(subject), this.count(subject)]);
    const end = Math.min(query.before ?? Infinity, head + 1); // exclusive
    if (first === undefined || end <= first) return { messages: [], more: false };
    // Read forward from a start chosen so the window most likely holds `limit` events of the
    // subject, and widen it backwards while it holds fewer: nats-server 2.9 has no backward read
    // (direct gets give only a subject's last event), and the subject's events are spread over
    // the stream. The subject's density over [first, head] sizes the first window.
    const density = count / Math.max(1, head - first + 1);
    const chunks: StoredMessage[][] = [];
    let found = 0;
    let span = Math.ceil((query.limit / Math.max(density, 1e-9)) * 1.25) + 1;
    for (let stop = end; found < query.limit && stop > first; ) {
      const start = Math.max(first, stop - span);
      const chunk: StoredMessage[] = [];
      await this.fetch(subject, start - 1, stop - 1, (m) => {
        if (m.seq < stop) chunk.push(m);
      });
      chunks.push(chunk);
      found += chunk.length;
      // What this window held tells the density just below it better than the average does.
      const seen = Math.max(chunk.length, 1) / Math.max(1, stop - start);
      span = Math.ceil(((query.limit - found) / seen) * 1.25) + 1;
      stop = start;
    }
    const messages: StoredMessage[] = [];
    let more = false;
    // Newest first, so the events kept are those nearest the cursor (or the head).
    outer: for (const chunk of chunks) {
      for (let i = chunk.length - 1; i >= 0; i--) {
        if (messages.length === query.limit || !accept(chunk[i], messages.length === 0)) {
          more = true;
          break outer;
        }
        messages.push(chunk[i]);
      }
    }
    messages.reverse();
    if (!more && messages.length > 0) more = messages[0].seq > first;
    return { messages, more };
  }

  /** The `limit` stored events of `subject` after `after`, and whether newer ones exist. */
  private async pageAfter(
    subject: string,
    after: number,
    limit: number,
    accept: (m: StoredMessage, first: boolean) => boolean,
  ): Promise<{ messages: StoredMessage[]; more: boolean }> {
    const head = await this.head(subject);
    const messages: StoredMessage[] = [];
    let more = false;
    await this.fetch(subject, after, head, (m) => {
      if (m.seq > head) return false;
      if (messages.length === limit || !accept(m, messages.length === 0)) {
        more = true;
        return false;
      }
      messages.push(m);
      return true;
    });
    // Events stored while the page was read are newer ones too.
    if (!more) more = (await this.head(subject)) > (messages.at(-1)?.seq ?? Math.max(after, head));
    return { messages, more };
  }

  /** How many events of `subject` the stream holds. */
  private async count(subject: string): Promise<number> {
    const info = await this.jsm.streams.info(this.stream, { subjects_filter: subject });
    return info.state.subjects?.[subject] ?? 0;
  }
}
