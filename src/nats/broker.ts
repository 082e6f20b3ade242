/**
 * The NATS side of the sidecar: the connection, the JetStream stream that stores every event, live
 * delivery through the stream's republish, and replay from a sequence.
 *
 * Live path: publishers write to `<prefix>.project.P` (etc.); the stream stores it and republishes
 * it on `<prefix>.live.project.P` with `Nats-Sequence` / `Nats-Last-Sequence` headers. This
 * instance holds one core subscription per topic it has local subscribers for, so an event costs
 * NATS one message per interested instance, and each event arrives here already numbered. Direct
 * messages (`user.*`) come by default through one wildcard subscription per instance instead, so a
 * connecting user costs no SUB (config `directSubscription`).
 */
import {
  connect,
  errors as natsErrors,
  headers as natsHeaders,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription as NatsSub,
} from '@nats-io/transport-node';
import {
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { topics, type BrokerPort, type HistoryPage, type HistoryQuery, type ReplayResult, type ResumePosition, type StoredEvent, type Topic } from '../core/ports.js';
import { SidecarError } from '../errors.js';
import { encodeStoredEvent, EventError } from '../protocol.js';
import { EncodedEvents } from './encoded-events.js';
import { isoTime, READER_CREATE_TIMEOUT_MS, StreamHistory, storedMsOf, type StoredMessage } from './history.js';
import { Inboxes } from './inbox.js';
import { JsPublisher } from './js-publisher.js';

export type BrokerConfig = Pick<
  Config,
  | 'natsUrl'
  | 'subjectPrefix'
  | 'streamName'
  | 'streamReplicas'
  | 'maxStoredMessages'
  | 'messageTTL'
  | 'inboxBucket'
  | 'directSubscription'
  | 'streamCheckInterval'
  | 'natsPingInterval'
  | 'eventCacheBytes'
>;

/** Where live events go: the hub, in production. */
export type EventSink = (topic: Topic, event: StoredEvent) => void;
/** Events of a topic after `afterSeq` were lost and the stream no longer has them all. */
export type LossSink = (topic: Topic, afterSeq: number) => void;
/** The stream was created anew: its seqs start again at 1 under `epoch`. */
export type EpochSink = (epoch: string, previous: string) => void;

export interface BrokerStats {
  eventsReceived: number;
  eventsInvalid: number;
  reconnects: number;
  /** Gaps seen on the live path (a Nats-Last-Sequence ahead of the last event delivered). */
  gaps: number;
  /** Events fetched from the stream to fill gaps or catch up after a reconnect. */
  eventsRecovered: number;
  /** Times subscribers were told history was cut (history_truncated). */
  historyLost: number;
  /** Times the stream was found missing (NATS lost its store, or it was deleted) and created again. */
  streamRecreated: number;
  /** Times the stream's incarnation changed under this instance (recreated here or elsewhere). */
  epochChanges: number;
}

/** The stream is not there (deleted, or NATS came back without its store). */
export function isStreamMissing(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound;
}

/** A JetStream request nobody answered: the stream (or JetStream itself) is not there. */
function isNoResponders(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 3; e = e.cause, depth++) {
    if (e instanceof natsErrors.NoRespondersError) return true;
  }
  return false;
}

const NANOS_PER_MS = 1_000_000;
/** Timeout of JetStream requests (publishes, API calls). */
const JS_TIMEOUT_MS = 10_000;
/** Longest wait for a round trip to NATS (a readiness check); past it the caller gets an error. */
const FLUSH_TIMEOUT_MS = 5_000;
/** Pause between a stream advisory and the check it triggers (see watchStream). */
const ADVISORY_CHECK_DELAY_MS = 1_000;
/** JetStream's API error code for "stream name already in use with a different configuration". */
const STREAM_NAME_IN_USE = 10058;
/** "stream configuration update can not change ..." */
const STREAM_INVALID_UPDATE = 10052;
const READY: Promise<void> = Promise.resolve();

/**
 * A header value as a string of its own. `MsgHdrs.get` returns a slice of the whole header block,
 * and a slice keeps its parent alive: the hub's dedupe memory (RecentIds) would hold every
 * event's full header text for the id alone.
 */
function ownString(value: string | undefined): string | undefined {
  return value ? Buffer.from(value, 'utf8').toString('utf8') : undefined;
}
/**
 * The epoch names a stream's incarnation: its creation time, to the nanosecond, as digits. Every
 * instance reads the same value from the stream, and a stream made anew gets another one.
 */
export function epochOf(created: string): string {
  return created.replace(/\D/g, '');
}

/** Set on events about one user (user_joined / user_left): that user's own connections skip them. */
const ABOUT_USER_HEADER = 'Ws-About-User';
/** Live events held per topic while a gap is repaired; past this they are dropped and read from the stream. */
const MAX_HELD = 10_000;
/** Concurrent gap repairs (after a reconnect every topic catches up). */
const MAX_REPAIRS = 8;
/**
 * JetStream API timeout of a gap repair's requests. A repair starts right after a reconnect, often
 * while the stream (or the JetStream meta group) elects a new leader because its old one died with
 * our server: a request sent then is never answered, and with the connection's 10 s timeout the
 * topic's live events were held back up to 10 s after the stream was available again (plus a
 * backoff of up to 5 s). Short attempts, retried soon, end a repair within about a second or two
 * of the election. After REPAIR_QUICK_ATTEMPTS (about half a minute), every other attempt waits
 * the connection's full timeout, in case the server is only slow.
 */
const REPAIR_REQUEST_TIMEOUT_MS = 2_000;
const REPAIR_QUICK_ATTEMPTS = 10;
/** Longest pause between two repair attempts. */
const REPAIR_MAX_BACKOFF_MS = 1_000;
/**
 * A live event arriving while a repair attempt has waited this long for JetStream is proof that
 * the stream has a leader again (republish happens only after the store): the attempt, most likely
 * waiting on a request the old leader never answers, is given up and a new one starts at once.
 */
const REPAIR_WAKE_AFTER_MS = 300;

/** Thrown inside a repair when a live event shows the stream answers again. */
const WOKEN = new Error('woken by a live event');

/** One topic this instance has local subscribers for. */
interface LiveTopic {
  readonly topic: Topic;
  readonly subject: string;
  readonly projectId?: string;
  /** Undefined for user topics heard through the wildcard subscription. */
  readonly sub: NatsSub | undefined;
  ready: Promise<void>;
  /** The last readiness check failed: the next interestReady checks again instead of repeating the failure. */
  failed: boolean;
  /** Highest seq handed to the hub; undefined until the baseline (or a first event) is known. */
  last: number | undefined;
  /** Non-null while a repair reads the stream: live events wait here, in arrival order. */
  held: Msg[] | null;
  overflowed: boolean;
  /** A repair that is retried reports a loss once. */
  lossReported: boolean;
  /** A live event whose epoch was checked (see accept): it is not checked twice. */
  verified?: number;
  /** Counts a repair's attempts: an attempt given up (see REPAIR_WAKE_AFTER_MS) stops delivering. */
  attempt: number;
  /** Set while a repair attempt waits: a held live event calls it. */
  wake?: () => void;
}

export class NatsBroker implements BrokerPort {
  readonly stats: BrokerStats = {
    eventsReceived: 0,
    eventsInvalid: 0,
    reconnects: 0,
    gaps: 0,
    eventsRecovered: 0,
    historyLost: 0,
    streamRecreated: 0,
    epochChanges: 0,
  };
  connected = false;
  streamReady = false;
  /** The stream's incarnation (its creation time), set by ensureStream. */
  epoch = '';
  readonly history: StreamHistory;
  /** The same reads with REPAIR_REQUEST_TIMEOUT_MS, for gap repairs. */
  private readonly quickHistory: StreamHistory;
  readonly inboxes: Inboxes;
  /** JetStream writes of the connect path (presence, lifecycle, events), batched per turn. */
  readonly publisher: JsPublisher;
  private sink: EventSink = () => {};
  private lossSink: LossSink = () => {};
  private epochSink: EpochSink = () => {};
  /** One stream check at a time; callers that come meanwhile share it. */
  private checking: Promise<void> | undefined;
  private checkTimer: NodeJS.Timeout | undefined;
  /** Stream checks failed in a row (for the retry's backoff). */
  private checkFailures = 0;
  /** Set with tracing on: a live event with a publisher's `traceparent` is delivered through it. */
  private traceSink: ((topic: Topic, traceparent: string, deliver: () => void) => void) | undefined;
  private readonly topics = new Map<Topic, LiveTopic>();
  private repairsRunning = 0;
  private readonly repairsWaiting: (() => void)[] = [];
  /** One PING/PONG for every SUB sent in the same tick (a connect storm joins many topics at once). */
  private pendingFlush: Promise<void> | undefined;
  /** Envelopes by seq, for resumes and history pages of what was encoded before. */
  private readonly encoded: EncodedEvents;

  private constructor(
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
    readonly jsm: JetStreamManager,
    private readonly quickJsm: JetStreamManager,
    private readonly config: BrokerConfig,
    private readonly log: Logger,
  ) {
    this.connected = true;
    this.encoded = new EncodedEvents(config.eventCacheBytes);
    const readerJs = jetstream(nc, { timeout: READER_CREATE_TIMEOUT_MS });
    this.history = new StreamHistory(js, jsm, config.streamName, config.maxStoredMessages, readerJs);
    this.quickHistory = new StreamHistory(js, quickJsm, config.streamName, config.maxStoredMessages, readerJs);
    this.inboxes = new Inboxes({ nc, jsm: quickJsm, history: this.quickHistory, config, log, epoch: () => this.epoch });
    this.publisher = new JsPublisher(nc, JS_TIMEOUT_MS);
    if (config.directSubscription === 'wildcard') this.hearAllUsers();
    void this.watchStatus();
  }

  static async connect(config: BrokerConfig, log: Logger, name: string): Promise<NatsBroker> {
    const servers = config.natsUrl?.length ? config.natsUrl : ['nats://127.0.0.1:4222'];
    const nc = await connect({
      servers,
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      // A first connect that hangs (a black-holed address) is retried by the caller, not awaited for 20 s.
      timeout: 5_000,
      // A link that stops answering without a reset (partition, black-holed route) is declared
      // stale after maxPingOut (2) unanswered pings: noticed within three intervals, then reconnected.
      pingInterval: config.natsPingInterval,
      maxPingOut: 2,
      // nats.js otherwise builds two Error objects (stack capture) per request, in case it fails:
      // ~9% of the CPU of a connect storm (profile in BENCHMARKS.md). Errors keep their message and
      // cause; only the stack of the awaiting caller is lost.
      noAsyncTraces: true,
    });
    log.info({ server: nc.getServer() }, 'connected to NATS');
    const jsm = await jetstreamManager(nc, { timeout: JS_TIMEOUT_MS });
    const quickJsm = await jetstreamManager(nc, { timeout: REPAIR_REQUEST_TIMEOUT_MS, checkAPI: false });
    return new NatsBroker(nc, jetstream(nc, { timeout: JS_TIMEOUT_MS }), jsm, quickJsm, config, log);
  }

  get prefix(): string {
    return this.config.subjectPrefix;
  }

  subjectOf(topic: Topic): string {
    return `${this.prefix}.${topic}`;
  }

  private liveSubjectOf(topic: Topic): string {
    return `${this.prefix}.live.${topic}`;
  }

  /** The stream's desired configuration, from config. */
  streamConfig(): Partial<StreamConfig> & { name: string } {
    const p = this.prefix;
    return {
      name: this.config.streamName,
      // Single-token ids only: `ws.project.a.b` is not stored, so a publisher using JetStream gets "no responders".
      subjects: [`${p}.project.*`, `${p}.user.*`, `${p}.broadcast`],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      max_msgs_per_subject: this.config.maxStoredMessages,
      max_age: this.config.messageTTL * NANOS_PER_MS,
      num_replicas: this.config.streamReplicas,
      duplicate_window: 2 * 60_000 * NANOS_PER_MS,
      allow_direct: true,
      republish: { src: `${p}.>`, dest: `${p}.live.>` },
    };
  }

  /** Create the stream, or update its limits in place. Never deletes: stored events survive. */
  async ensureStream(): Promise<void> {
    const wanted = this.streamConfig();
    for (let attempt = 1; ; attempt++) {
      const existing = await this.jsm.streams.info(wanted.name).catch((err: unknown) => {
        if (isStreamMissing(err)) return null;
        throw err;
      });
      if (!existing) {
        try {
          const created = await this.jsm.streams.add(wanted);
          this.epoch = epochOf(created.created);
          this.log.info({ stream: wanted.name, subjects: wanted.subjects, epoch: this.epoch }, 'created JetStream stream');
          break;
        } catch (err) {
          // Another instance created it first (with other settings): update it like any existing one.
          if (attempt < 3 && err instanceof JetStreamApiError && err.code === STREAM_NAME_IN_USE) continue;
          throw err;
        }
      }
      this.epoch = epochOf(existing.created);
      const { storage: _storage, retention: _retention, ...mutable } = wanted;
      await this.jsm.streams.update(wanted.name, { ...existing.config, ...mutable }).catch((err: Error) => {
        // nats-server before 2.10 cannot add or change republish in place (the only setting we
        // ask for that it refuses as an invalid update), and recreating the stream would lose
        // what it stores: say what to do instead.
        if (!(err instanceof JetStreamApiError && err.code === STREAM_INVALID_UPDATE)) throw err;
        throw new SidecarError(
          'stream_incompatible',
          `JetStream stream ${wanted.name} exists without republish ${mutable.republish?.src} -> ${mutable.republish?.dest}, ` +
            `and this nats-server cannot add it in place (${err.message}). Upgrade nats-server to 2.10 or later, ` +
            'or configure another streamName (the old stream is left untouched)',
          { cause: err },
        );
      });
      this.log.info({ stream: wanted.name, messages: existing.state.messages, epoch: this.epoch }, 'JetStream stream up to date');
      break;
    }
    this.streamReady = true;
  }

  /**
   * Keep checking that the stream is there and is the same incarnation: every
   * streamCheckInterval, at once when JetStream announces that it was deleted or created, after
   * every reconnect, and when a publish finds no stream. So its loss is noticed within about one
   * interval whatever the cause (NATS restarted without its store, an operator deleting it).
   */
  watchStream(): void {
    const name = this.config.streamName;
    const check = (): void => void this.checkStream();
    // Not at once: nats-server removes a deleted stream's files after it answers, and a stream
    // created again under the same name meanwhile loses its files (seen on 2.9: "error opening
    // msg block file").
    const soon = (): void => void setTimeout(check, ADVISORY_CHECK_DELAY_MS).unref();
    for (const what of ['DELETED', 'CREATED']) this.nc.subscribe(`$JS.EVENT.ADVISORY.STREAM.${what}.${name}`, { callback: soon });
    this.checkTimer = setInterval(check, this.config.streamCheckInterval);
    this.checkTimer.unref();
  }

  /** Is the stream there, and the incarnation we know? Recreates a missing one. Never rejects. */
  checkStream(): Promise<void> {
    this.checking ??= this.verifyStream()
      .then(
        () => {
          this.checkFailures = 0;
        },
        (err: unknown) => {
          // JetStream not answering yet (a server that just came back): try again soon, not at
          // the next periodic check, so readiness returns within a second or two of it.
          const delay = Math.min(this.config.streamCheckInterval, 250 * 2 ** this.checkFailures++);
          this.log.warn({ err, retryInMs: delay }, 'stream check failed; retrying');
          setTimeout(() => void this.checkStream(), delay).unref();
        },
      )
      .finally(() => (this.checking = undefined));
    return this.checking;
  }

  private async verifyStream(): Promise<void> {
    if (this.nc.isClosed()) return;
    const previous = this.epoch;
    let info;
    try {
      info = await this.quickJsm.streams.info(this.config.streamName);
    } catch (err) {
      // Anything else (a timeout, JetStream electing a leader) says nothing about the stream.
      if (!isStreamMissing(err)) throw err;
      info = null;
    }
    if (info === null) {
      // A nats-server that just started may answer before JetStream is up; a stream created in
      // that window can vanish again, its files with it. Only create it once JetStream answers.
      await this.quickJsm.getAccountInfo();
      if (this.streamReady) {
        this.log.warn({ stream: this.config.streamName, epoch: previous }, 'the JetStream stream is gone (NATS lost its store, or it was deleted): creating it again');
      }
      this.streamReady = false;
      await this.ensureStream();
      this.stats.streamRecreated += 1;
    } else {
      this.epoch = epochOf(info.created);
      this.streamReady = true;
    }
    if (previous !== '' && this.epoch !== previous) this.newEpoch(previous);
  }

  /**
   * The stream numbers from 1 again. Subscribers are told first (the hub restarts their
   * subscriptions), then every topic is read from the new stream's start: events that arrived
   * live before this was noticed were dropped as already seen, and come now.
   */
  private newEpoch(previous: string): void {
    this.stats.epochChanges += 1;
    this.log.warn({ epoch: this.epoch, previous, topics: this.topics.size }, 'new stream epoch: subscribers told, topics read again from its start');
    this.epochSink(this.epoch, previous);
    for (const t of this.topics.values()) {
      t.last = 0;
      if (t.held === null) this.repair(t);
    }
  }

  /** Live events go to `sink` (the hub). */
  setSink(sink: EventSink): void {
    this.sink = sink;
  }

  /** Unrecoverable gaps go to `sink` (the hub tells the topic's subscribers). */
  setLossSink(sink: LossSink): void {
    this.lossSink = sink;
  }

  /** A stream created anew goes to `sink` (the hub tells every subscriber). */
  setEpochSink(sink: EpochSink): void {
    this.epochSink = sink;
  }

  /**
   * One subscription for every user's direct messages: those of users with a connection here go
   * on like any topic's, the rest are dropped. Sent before any baseline request on the same
   * connection, so the server applies it first.
   */
  private hearAllUsers(): void {
    const skip = `${this.prefix}.live.`.length;
    this.nc.subscribe(`${this.prefix}.live.user.*`, {
      callback: (err, msg) => {
        if (err) return this.log.warn({ err }, 'live subscription error (direct messages)');
        const t = this.topics.get(msg.subject.slice(skip));
        if (t) this.onLive(t, msg);
      },
    });
  }

  setInterest(topic: Topic, interested: boolean): void {
    if (!interested) {
      this.topics.get(topic)?.sub?.unsubscribe();
      this.topics.delete(topic);
      return;
    }
    if (this.topics.has(topic) || this.nc.isClosed()) return;
    const heardByWildcard = this.config.directSubscription === 'wildcard' && topic.startsWith('user.');
    const t: LiveTopic = {
      topic,
      subject: this.subjectOf(topic),
      projectId: topics.projectOf(topic),
      sub: heardByWildcard ? undefined : this.subscribeLive(topic),
      ready: READY,
      failed: false,
      last: undefined,
      held: null,
      overflowed: false,
      lossReported: false,
      attempt: 0,
    };
    this.topics.set(topic, t);
    this.track(t);
  }

  /** (Re)establish the topic's readiness: its SUB confirmed and its gap-check baseline read. */
  private track(t: LiveTopic): void {
    const ready = this.follow(t);
    t.ready = ready;
    t.failed = false;
    // Once settled well, the topic holds the one shared resolved promise, not its own (memory per
    // topic). A failure is remembered so that the next subscriber checks again, not fails again.
    ready.then(
      () => {
        if (t.ready === ready) t.ready = READY;
      },
      () => {
        if (t.ready === ready) t.failed = true;
      },
    );
  }

  private subscribeLive(topic: Topic): NatsSub {
    return this.nc.subscribe(this.liveSubjectOf(topic), {
      callback: (err, msg) => {
        if (err) this.log.warn({ err, topic }, 'live subscription error');
        else {
          const t = this.topics.get(topic);
          if (t) this.onLive(t, msg);
        }
      },
    });
  }

  /**
   * The SUB is in place (a round trip after it), and the topic's last stored seq is the baseline
   * for gap checks: every later event must reach us live, so one that does not is a gap. The
   * head request is that round trip: it is sent after the SUB on the same connection, and the
   * server handles a connection's operations in order. Only when it fails does a PING stand in.
   */
  private async follow(t: LiveTopic): Promise<void> {
    const head = await this.head(t.subject).catch((err: Error) => {
      this.log.warn({ err, topic: t.topic }, 'no baseline for gap checks until the first live event');
      return undefined;
    });
    if (head === undefined) {
      await this.flushSoon();
      return;
    }
    if (this.topics.get(t.topic) === t) t.last = Math.max(t.last ?? 0, head);
  }

  /**
   * Seq of the subject's last stored event, 0 for none: a direct get (the stream allows them), one
   * batched request without nats.js's per-request cost; "none" is a status, not an error.
   */
  private async head(subject: string): Promise<number> {
    const msg = await this.publisher.request(
      `$JS.API.DIRECT.GET.${this.config.streamName}`,
      JSON.stringify({ last_by_subj: subject }),
      undefined,
      REPAIR_REQUEST_TIMEOUT_MS,
    );
    const code = msg.headers?.code ?? 0;
    if (code === 404) return 0;
    const seq = Number(msg.headers?.get('Nats-Sequence'));
    if (code !== 0 || !(seq > 0)) throw new SidecarError('nats_unexpected', `direct get of ${subject}: ${code} ${msg.headers?.description ?? 'no Nats-Sequence'}`);
    return seq;
  }

  /**
   * A round trip to the server that covers every SUB sent so far and later in this tick: the PING
   * goes out after the current I/O callbacks, so many new topics share one.
   */
  private flushSoon(): Promise<void> {
    this.pendingFlush ??= new Promise<void>((resolve, reject) => {
      setImmediate(() => {
        this.pendingFlush = undefined;
        // Bounded: while the link is down a PING waits for the reconnect, however long that takes.
        const timer = setTimeout(
          () => reject(new SidecarError('nats_timeout', `NATS did not answer within ${FLUSH_TIMEOUT_MS} ms`)),
          FLUSH_TIMEOUT_MS,
        );
        this.nc.flush().then(resolve, reject).finally(() => clearTimeout(timer));
      });
    });
    return this.pendingFlush;
  }

  interestReady(topic: Topic): Promise<void> {
    const t = this.topics.get(topic);
    if (!t) return Promise.reject(new SidecarError('no_interest', `not subscribed to ${topic}`));
    if (t.failed) this.track(t);
    return t.ready;
  }

  private onLive(t: LiveTopic, msg: Msg): void {
    this.stats.eventsReceived += 1;
    if (t.held !== null) {
      if (t.held.length < MAX_HELD) t.held.push(msg);
      else t.overflowed = true;
      t.wake?.();
      return;
    }
    this.accept(t, msg);
  }

  /** One live event, in order: delivered, dropped as already delivered, or the start of a repair. */
  private accept(t: LiveTopic, msg: Msg): void {
    const h = msg.headers;
    const seq = Number(h?.get('Nats-Sequence'));
    if (!h || !(seq > 0)) {
      this.stats.eventsInvalid += 1;
      return;
    }
    if (t.last !== undefined) {
      const previous = Number(h.get('Nats-Last-Sequence'));
      if (previous === 0 && t.last > 0 && t.verified !== seq) {
        // The subject's first event, though we have seen later ones: the stream was most likely
        // created anew and this seq belongs to its new epoch. Know the stream before delivering.
        t.held = [msg];
        t.verified = seq;
        void this.checkStream().then(() => {
          if (this.topics.get(t.topic) === t && t.held !== null) this.repair(t);
        });
        return;
      }
      if (seq <= t.last) return; // already delivered, e.g. by a repair
      if (previous > t.last) {
        // An event of this subject never reached us (reconnect, slow consumer): fetch it first.
        this.stats.gaps += 1;
        this.log.warn({ topic: t.topic, last: t.last, seq }, 'gap in live events: repairing from the stream');
        t.held = [msg];
        this.repair(t);
        return;
      }
    }
    t.last = seq;
    const storedAt = h.get('Nats-Time-Stamp') || undefined;
    const event = this.toEvent(t.projectId, seq, msg.data, h, storedAt === undefined ? NaN : Date.parse(storedAt), storedAt);
    if (!event) return;
    const traceparent = this.traceSink !== undefined ? h.get('traceparent') : '';
    if (traceparent) this.traceSink!(t.topic, traceparent, () => this.sink(t.topic, event));
    else this.sink(t.topic, event);
  }

  /** With tracing on: deliveries of events that carry a `traceparent` header go through `sink`. */
  setTraceSink(sink: (topic: Topic, traceparent: string, deliver: () => void) => void): void {
    this.traceSink = sink;
  }

  /**
   * Deliver, from the stream, what the live path missed after `t.last`, then the live events held
   * meanwhile. Events the stream no longer has are reported to the topic's subscribers.
   */
  private repair(t: LiveTopic): void {
    t.held ??= [];
    void this.limitRepairs(async () => {
      let woken = 0;
      for (let attempt = 0; this.topics.get(t.topic) === t && !this.nc.isClosed(); attempt++) {
        const run = ++t.attempt;
        const current = () => this.topics.get(t.topic) === t && t.attempt === run;
        const from = t.last ?? 0;
        const history = attempt >= REPAIR_QUICK_ATTEMPTS && attempt % 2 === 1 ? this.history : this.quickHistory;
        try {
          // Each wake doubles the next grace: a stream that is only slow is not given up on forever.
          const grace = Math.min(REPAIR_REQUEST_TIMEOUT_MS, REPAIR_WAKE_AFTER_MS * 2 ** woken);
          await this.untilWoken(t, grace, async (progressed) => {
            const { truncated, head } = await history.plan(t.subject, from);
            if (!current()) return;
            progressed();
            if (truncated && !t.lossReported) {
              // Said before the events that follow it, so a client knows while it processes them.
              t.lossReported = true;
              this.stats.historyLost += 1;
              this.log.warn({ topic: t.topic, after: from }, 'events lost: the stream no longer has them');
              this.lossSink(t.topic, from);
            }
            await history.fetch(t.subject, from, head, (m) => {
              if (!current() || m.seq <= (t.last ?? 0)) return;
              progressed();
              t.last = m.seq;
              this.stats.eventsRecovered += 1;
              this.deliverStored(t.topic, m, t.projectId);
            });
            if (!current()) return;
            t.lossReported = false;
            // Everything up to head that the stream still had is delivered now.
            t.last = Math.max(t.last ?? 0, head);
          });
          if (this.topics.get(t.topic) !== t) return;
          if (t.overflowed) {
            // Held events were dropped; they are in the stream: read again from where we are.
            t.overflowed = false;
            t.held = [];
            attempt = -1;
            continue;
          }
          const held = t.held ?? [];
          t.held = null;
          for (const msg of held) {
            if (t.held !== null) (t.held as Msg[]).push(msg);
            else this.accept(t, msg);
          }
          return;
        } catch (err) {
          if (err === WOKEN) {
            woken += 1;
            this.log.info({ topic: t.topic, attempt }, 'gap repair: the stream answers again; retrying now');
            continue;
          }
          this.log.warn({ err, topic: t.topic, attempt }, 'gap repair failed; retrying');
          const pause = Math.min(REPAIR_MAX_BACKOFF_MS, 250 * 2 ** attempt);
          await new Promise<void>((r) => {
            const timer = setTimeout(r, pause);
            timer.unref();
            t.wake = () => {
              clearTimeout(timer);
              r();
            };
          });
          t.wake = undefined;
        }
      }
    });
  }

  /**
   * Run one repair attempt; reject with WOKEN when a live event arrives after the attempt has
   * made no progress for `grace` ms (the attempt goes on unseen, its deliveries ignored).
   */
  private untilWoken(t: LiveTopic, grace: number, attempt: (progressed: () => void) => Promise<void>): Promise<void> {
    let progress = Date.now();
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let settled = false;
      const settle = (err?: Error) => {
        if (settled) return; // a given-up attempt ending later must not touch the next one's wake
        settled = true;
        if (t.wake === wake) t.wake = undefined;
        if (timer) clearTimeout(timer);
        if (err === undefined) resolve();
        else reject(err);
      };
      const wake = () => {
        const waited = Date.now() - progress;
        if (waited >= grace) settle(WOKEN);
        else if (!timer) {
          // Events also arrive during a healthy repair: look again once it had its grace.
          timer = setTimeout(() => {
            timer = undefined;
            wake();
          }, grace - waited);
          timer.unref();
        }
      };
      t.wake = wake;
      attempt(() => (progress = Date.now())).then(
        () => settle(),
        (err: unknown) => settle(err instanceof Error ? err : new Error(String(err))),
      );
    });
  }

  private async limitRepairs(job: () => Promise<void>): Promise<void> {
    if (this.repairsRunning >= MAX_REPAIRS) await new Promise<void>((r) => this.repairsWaiting.push(r));
    this.repairsRunning += 1;
    try {
      await job();
    } finally {
      this.repairsRunning -= 1;
      this.repairsWaiting.shift()?.();
    }
  }

  /** A stored message (from a repair) to the hub. */
  private deliverStored(topic: Topic, m: StoredMessage, projectId?: string): void {
    const event = this.storedEvent(projectId, m);
    if (event) this.sink(topic, event);
  }

  /** A stored message (from a reader or a direct get) as an event. */
  private storedEvent(projectId: string | undefined, m: StoredMessage): StoredEvent | undefined {
    return this.toEvent(projectId, m.seq, m.data, m.headers, storedMsOf(m), m.info === undefined ? m.timestamp : undefined);
  }

  /**
   * `storedMs`: when the stream stored it; `storedAt`, the same as RFC 3339 when the message came
   * with it as text (else it is made from `storedMs`, and only when the envelope has no timestamp).
   */
  private toEvent(
    projectId: string | undefined,
    seq: number,
    data: Uint8Array,
    h: MsgHdrs | undefined,
    storedMs: number,
    storedAt?: string,
  ): StoredEvent | undefined {
    // The subject, and so the project, of a seq never changes: the envelope kept is this one's.
    const known = this.encoded.get(this.epoch, seq, storedMs);
    if (known !== undefined) return { seq, frame: { text: known.text }, messageId: known.messageId, aboutUser: known.aboutUser };
    try {
      const { text, messageId } = encodeStoredEvent(data, {
        seq,
        projectId,
        msgId: ownString(h?.get('Nats-Msg-Id')),
        storedAt: storedAt ?? (() => isoTime(Number.isFinite(storedMs) ? storedMs : Date.now())),
      });
      const aboutUser = h?.get(ABOUT_USER_HEADER) || undefined;
      this.encoded.set(this.epoch, seq, { text, messageId, aboutUser, storedMs });
      return { seq, frame: { text }, messageId, aboutUser };
    } catch (err) {
      if (!(err instanceof EventError)) throw err;
      this.stats.eventsInvalid += 1;
      this.log.warn({ seq, reason: err.message }, 'dropped an invalid event');
      return undefined;
    }
  }

  async replay(topic: Topic, position: ResumePosition, onEvent: (event: StoredEvent) => void): Promise<ReplayResult> {
    const projectId = topics.projectOf(topic);
    const subject = this.subjectOf(topic);
    const epoch = this.epoch;
    const deliver = (m: StoredMessage): void => {
      const event = this.storedEvent(projectId, m);
      if (event) onEvent(event);
    };
    // With no repair running, every event up to the live path's last one has reached the hub and
    // each later one will (into the subscription's hold): that is as far as the read need go.
    const t = this.topics.get(topic);
    const knownHead = t !== undefined && t.held === null ? t.last : undefined;
    // A position from another incarnation says nothing about this one: everything it holds follows.
    if (position.epoch !== undefined && position.epoch !== epoch) {
      await this.history.read(subject, 0, deliver, knownHead);
      return { truncated: true, epoch, restarted: true };
    }
    const read = await this.history.read(subject, position.since, deliver, knownHead);
    if (read.beyond) await this.history.read(subject, 0, deliver, knownHead);
    return { truncated: read.truncated, epoch, restarted: read.beyond };
  }

  async historyPage(topic: Topic, query: HistoryQuery): Promise<HistoryPage> {
    const projectId = topic.startsWith('project.') ? topic.slice(8) : undefined;
    const epoch = this.epoch;
    const events = new Map<number, StoredEvent | undefined>();
    let bytes = 0;
    // Each event is encoded once, when the read first meets it, and counted against the reply's size cap.
    const accept = (m: StoredMessage, first: boolean): boolean => {
      const event = this.storedEvent(projectId, m);
      const length = event ? Buffer.byteLength(event.frame.text) + 1 : 0;
      if (!first && bytes + length > query.maxBytes) return false;
      bytes += length;
      events.set(m.seq, event);
      return true;
    };
    const { messages, more } = await this.history.page(this.subjectOf(topic), query, accept);
    const out: StoredEvent[] = [];
    for (const m of messages) {
      const event = events.get(m.seq);
      if (event) out.push(event);
    }
    return { epoch, events: out, more };
  }

  async backlog(userId: string, onEvent: (event: StoredEvent) => void): Promise<void> {
    // The user's live topic knows the subject's last stored seq (its baseline, then every live
    // event): 0 there means nothing was ever stored for this user, so the inbox need not ask.
    const t = this.topics.get(`user.${userId}`);
    const nothingStored = t !== undefined && t.last === 0 && t.held === null;
    for (const m of await this.inboxes.backlog(userId, nothingStored)) {
      const event = this.toEvent(undefined, m.seq, m.data, m.headers, Date.parse(m.storedAt), m.storedAt);
      // An invalid payload can never be delivered: acknowledge it so it does not come back.
      if (event) onEvent(event);
      else this.inboxes.acknowledge(userId, m.seq);
    }
  }

  acknowledge(userId: string, seq: number): void {
    this.inboxes.acknowledge(userId, seq);
  }

  written(userId: string, seq: number): void {
    this.inboxes.written(userId, seq);
  }

  /** Publish an envelope to a subject; returns the stored seq. Used by the admin API. */
  async publish(topic: Topic, payload: string, msgId?: string, aboutUser?: string): Promise<number> {
    const h = natsHeaders();
    if (msgId) h.set('Nats-Msg-Id', msgId);
    if (aboutUser) h.set(ABOUT_USER_HEADER, aboutUser);
    try {
      const ack = await this.publisher.publish(this.subjectOf(topic), payload, h);
      return ack.seq;
    } catch (err) {
      if (isNoResponders(err) || isStreamMissing(err)) void this.checkStream();
      throw err;
    }
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      switch (s.type) {
        case 'disconnect':
          this.connected = false;
          // Unknown until checked after the reconnect: the server may come back without its store.
          this.streamReady = false;
          this.log.warn({ server: s.server }, 'NATS disconnected');
          break;
        case 'reconnect':
          this.connected = true;
          this.stats.reconnects += 1;
          this.log.info({ server: s.server, topics: this.topics.size }, 'NATS reconnected; subscriptions restored, catching up');
          // The server may have come back without its store: know the stream first, then catch up.
          void this.checkStream().then(() => this.catchUp());
          break;
        case 'error':
          this.log.warn({ err: s.error }, 'NATS error');
          break;
        default:
          break;
      }
    }
  }

  /** After a reconnect: events stored while we were away never came live; read them from the stream. */
  private catchUp(): void {
    for (const t of this.topics.values()) {
      if (t.last === undefined || t.failed) this.track(t);
      else if (t.held === null) this.repair(t);
    }
  }

  async close(): Promise<void> {
    this.connected = false;
    clearInterval(this.checkTimer);
    if (this.nc.isClosed()) return;
    // Acknowledgements already received reach JetStream before the connection goes.
    await Promise.race([this.inboxes.idle(), new Promise((r) => setTimeout(r, 2_000).unref())]);
    await this.nc.drain().catch(() => this.nc.close());
  }
}
