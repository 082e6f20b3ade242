/**
 * JetStream publishes (and small JetStream requests) on the connect path, without nats.js's
 * per-request machinery, and written to NATS once per event-loop turn.
 *
 * Why: a connect costs several JetStream writes (presence compare-and-set, `user_joined`, the
 * lifecycle record and events). Through `js.publish` each is a nats.js request: a timer, two
 * deferreds, a mux entry and an `Error` built on completion (`RequestOne.cancel`, ~5% of a
 * connect storm's CPU), and nats.js writes the commands of every I/O callback in a socket write
 * of its own (~10% more). Here every request is a PUB with a reply subject under one wildcard
 * subscription, the answers are matched by token, one interval timer expires the late ones, and
 * the PUBs of one turn go out together in one write (setImmediate, after the turn's I/O callbacks).
 *
 * The wire is what nats.js sends for `js.publish` / `kv.put` / `kv.delete` (same subjects and
 * headers), so the streams, KV watchers and deduplication see the same messages; errors have the
 * same classes (`JetStreamApiError` with the server's code, nats.js's `TimeoutError`, no
 * responders as the cause).
 */
import { JetStreamApiError, JetStreamError } from '@nats-io/jetstream';
import { createInbox, errors as natsErrors, headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';

export interface PubAck {
  readonly stream: string;
  readonly seq: number;
  readonly duplicate: boolean;
}

export interface JsPublisherStats {
  /** Requests sent, and the event-loop turns they went out in (one NATS write each, mostly). */
  sent: number;
  batches: number;
  timeouts: number;
}

interface Pending {
  readonly resolve: (msg: Msg) => void;
  readonly reject: (err: Error) => void;
  readonly subject: string;
  readonly deadline: number;
}

interface Outgoing {
  readonly subject: string;
  readonly payload: Uint8Array | string;
  readonly headers: MsgHdrs | undefined;
  readonly reply: string;
}

const EMPTY = new Uint8Array(0);
/** How often late answers are looked for: timeouts are seconds, so they fire at most this late. */
const EXPIRY_CHECK_MS = 250;

/** A KV key's subject, as nats.js writes it (no JetStream API prefix, no key encoding). */
export const kvSubject = (bucket: string, key: string): string => `$KV.${bucket}.${key}`;

export class JsPublisher {
  readonly stats: JsPublisherStats = { sent: 0, batches: 0, timeouts: 0 };
  private readonly inbox: string;
  private readonly pending = new Map<string, Pending>();
  private queue: Outgoing[] = [];
  private scheduled = false;
  private next = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs: number,
  ) {
    this.inbox = `${createInbox()}.`;
    nc.subscribe(`${this.inbox}*`, { callback: (err, msg) => (err ? undefined : this.answer(msg)) });
    void nc.closed().then(() => this.failAll(new natsErrors.ClosedConnectionError()));
  }

  /** A JetStream publish: resolves with the stored seq, rejects with the server's error. */
  async publish(subject: string, payload: Uint8Array | string, headers?: MsgHdrs): Promise<PubAck> {
    const msg = await this.request(subject, payload, headers);
    const ack = JSON.parse(msg.string()) as Partial<PubAck> & { error?: ConstructorParameters<typeof JetStreamApiError>[0] };
    if (ack.error) throw new JetStreamApiError(ack.error);
    if (!ack.stream) throw new JetStreamError('invalid ack response');
    return { stream: ack.stream, seq: ack.seq ?? 0, duplicate: ack.duplicate ?? false };
  }

  /** `kv.put(key, value, { previousSeq })` (previousSeq 0: the key must not exist); the new revision. */
  async kvPut(bucket: string, key: string, value: string, previousSeq?: number): Promise<number> {
    let h: MsgHdrs | undefined;
    if (previousSeq !== undefined) {
      h = natsHeaders();
      h.set('Nats-Expected-Last-Subject-Sequence', `${previousSeq}`);
    }
    return (await this.publish(kvSubject(bucket, key), value, h)).seq;
  }

  /** `kv.delete(key, { previousSeq })`: a delete marker, written only if the key is at that revision. */
  async kvDelete(bucket: string, key: string, previousSeq: number): Promise<number> {
    const h = natsHeaders();
    h.set('KV-Operation', 'DEL');
    if (previousSeq) h.set('Nats-Expected-Last-Subject-Sequence', `${previousSeq}`);
    return (await this.publish(kvSubject(bucket, key), EMPTY, h)).seq;
  }

  /** A request whose answer is taken as it comes (a status message included); no responders rejects. */
  request(subject: string, payload: Uint8Array | string, headers?: MsgHdrs, timeoutMs = this.timeoutMs): Promise<Msg> {
    if (this.nc.isClosed()) return Promise.reject(new natsErrors.ClosedConnectionError());
    const token = (this.next++).toString(36);
    return new Promise<Msg>((resolve, reject) => {
      this.pending.set(token, { resolve, reject, subject, deadline: Date.now() + timeoutMs });
      this.queue.push({ subject, payload, headers, reply: this.inbox + token });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flush);
      }
      this.timer ??= setInterval(() => this.expire(), EXPIRY_CHECK_MS).unref();
    });
  }

  /** After this turn's I/O callbacks: every queued request in one go (nats.js writes them together). */
  private readonly flush = (): void => {
    this.scheduled = false;
    const queue = this.queue;
    this.queue = [];
    this.stats.batches += 1;
    for (const o of queue) {
      try {
        this.nc.publish(o.subject, o.payload, { reply: o.reply, headers: o.headers });
        this.stats.sent += 1;
      } catch (err) {
        this.settle(o.reply.slice(this.inbox.length))?.reject(err as Error);
      }
    }
  };

  private settle(token: string): Pending | undefined {
    const p = this.pending.get(token);
    if (p) this.pending.delete(token);
    if (this.pending.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
    return p;
  }

  private answer(msg: Msg): void {
    const p = this.settle(msg.subject.slice(this.inbox.length));
    if (!p) return; // expired meanwhile
    if (msg.data.length === 0 && msg.headers?.code === 503) {
      // nats.js's shape for a JetStream publish nobody stored: "jetstream is not enabled", the cause no responders.
      const cause = new natsErrors.RequestError(`no responders: '${p.subject}'`, { cause: new natsErrors.NoRespondersError(p.subject) });
      return p.reject(new JetStreamError('jetstream is not enabled', { cause }));
    }
    p.resolve(msg);
  }

  private expire(): void {
    const now = Date.now();
    for (const [token, p] of this.pending) {
      if (p.deadline > now) continue;
      this.settle(token);
      this.stats.timeouts += 1;
      p.reject(new natsErrors.TimeoutError());
    }
  }

  private failAll(err: Error): void {
    for (const token of [...this.pending.keys()]) this.settle(token)?.reject(err);
  }
}
