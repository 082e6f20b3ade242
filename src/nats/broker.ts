/**
 * The NATS side of the sidecar: the connection, the JetStream stream that stores every event, live
 * delivery through the stream's republish, and replay from a sequence.
 *
 * Live path: publishers write to `<prefix>.project.P` (etc.); the stream stores it and republishes
 * it on `<prefix>.live.project.P` with `Nats-Sequence` / `Nats-Last-Sequence` headers. This
 * instance holds one core subscription per topic it has local subscribers for, so an event costs
 * NATS one message per interested instance, and each event arrives here already numbered.
 */
import { connect, headers as natsHeaders, type Msg, type NatsConnection, type Subscription as NatsSub } from '@nats-io/transport-node';
import {
  DeliverPolicy,
  DiscardPolicy,
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
import type { BrokerPort, StoredEvent, Topic } from '../core/ports.js';
import { encodeEvent, EventError } from '../protocol.js';

export type BrokerConfig = Pick<
  Config,
  'natsUrl' | 'subjectPrefix' | 'streamName' | 'streamReplicas' | 'maxStoredMessages' | 'messageTTL'
>;

/** Where live events go: the hub, in production. */
export type EventSink = (topic: Topic, event: StoredEvent) => void;

export interface BrokerStats {
  eventsReceived: number;
  eventsInvalid: number;
  reconnects: number;
  gaps: number;
}

const NANOS_PER_MS = 1_000_000;
/** Set on events about one user (user_joined / user_left): that user's own connections skip them. */
const ABOUT_USER_HEADER = 'Ws-About-User';

export class NatsBroker implements BrokerPort {
  readonly stats: BrokerStats = { eventsReceived: 0, eventsInvalid: 0, reconnects: 0, gaps: 0 };
  connected = false;
  streamReady = false;
  private sink: EventSink = () => {};
  private readonly subs = new Map<Topic, NatsSub>();
  private readonly flushes = new Map<Topic, Promise<void>>();
  /** Last seq seen live per topic, for gap detection with Nats-Last-Sequence. */
  private readonly lastLive = new Map<Topic, number>();

  private constructor(
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
    readonly jsm: JetStreamManager,
    private readonly config: BrokerConfig,
    private readonly log: Logger,
  ) {
    this.connected = true;
    void this.watchStatus();
  }

  static async connect(config: BrokerConfig, log: Logger, name: string): Promise<NatsBroker> {
    const servers = config.natsUrl?.length ? config.natsUrl : ['nats://127.0.0.1:4222'];
    const nc = await connect({
      servers,
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      pingInterval: 10_000,
    });
    log.info({ server: nc.getServer() }, 'connected to NATS');
    const jsm = await jetstreamManager(nc, { timeout: 10_000 });
    return new NatsBroker(nc, jetstream(nc, { timeout: 10_000 }), jsm, config, log);
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
    const existing = await this.jsm.streams.info(wanted.name).catch((err: Error) => {
      if (/not found/i.test(err.message)) return null;
      throw err;
    });
    if (!existing) {
      await this.jsm.streams.add(wanted);
      this.log.info({ stream: wanted.name, subjects: wanted.subjects }, 'created JetStream stream');
    } else {
      const { storage: _storage, retention: _retention, ...mutable } = wanted;
      await this.jsm.streams.update(wanted.name, { ...existing.config, ...mutable });
      this.log.info({ stream: wanted.name, messages: existing.state.messages }, 'JetStream stream up to date');
    }
    this.streamReady = true;
  }

  /** Live events go to `sink` (the hub). */
  setSink(sink: EventSink): void {
    this.sink = sink;
  }

  setInterest(topic: Topic, interested: boolean): void {
    if (!interested) {
      this.subs.get(topic)?.unsubscribe();
      this.subs.delete(topic);
      this.flushes.delete(topic);
      this.lastLive.delete(topic);
      return;
    }
    if (this.subs.has(topic) || this.nc.isClosed()) return;
    const projectId = topic.startsWith('project.') ? topic.slice(8) : undefined;
    const sub = this.nc.subscribe(this.liveSubjectOf(topic), {
      callback: (err, msg) => {
        if (err) {
          this.log.warn({ err, topic }, 'live subscription error');
          return;
        }
        this.onLive(topic, projectId, msg);
      },
    });
    this.subs.set(topic, sub);
  }

  interestReady(topic: Topic): Promise<void> {
    let p = this.flushes.get(topic);
    if (!p) {
      // A round trip to the server after SUB: from then on, every stored event of the topic reaches us.
      p = this.nc.flush();
      this.flushes.set(topic, p);
      p.catch(() => this.flushes.delete(topic));
    }
    return p;
  }

  private onLive(topic: Topic, projectId: string | undefined, msg: Msg): void {
    this.stats.eventsReceived += 1;
    const h = msg.headers;
    const seq = Number(h?.get('Nats-Sequence'));
    if (!h || !(seq > 0)) {
      this.stats.eventsInvalid += 1;
      return;
    }
    const previous = Number(h.get('Nats-Last-Sequence'));
    const last = this.lastLive.get(topic);
    if (last !== undefined && previous > last) {
      this.stats.gaps += 1;
      this.log.warn({ topic, expected: last, previous }, 'gap in live events');
    }
    this.lastLive.set(topic, seq);
    let text: string;
    try {
      text = encodeEvent(msg.data, { seq, projectId, msgId: h.get('Nats-Msg-Id') || undefined });
    } catch (err) {
      this.stats.eventsInvalid += 1;
      this.log.warn({ topic, seq, reason: (err as EventError).message }, 'dropped an invalid event');
      return;
    }
    this.sink(topic, { seq, frame: { text }, aboutUser: h.get(ABOUT_USER_HEADER) || undefined });
  }

  async replay(topic: Topic, since: number, onEvent: (event: StoredEvent) => void): Promise<{ truncated: boolean }> {
    const subject = this.subjectOf(topic);
    const stream = this.config.streamName;
    const [last, atSince] = await Promise.all([
      this.jsm.streams.getMessage(stream, { last_by_subj: subject }),
      since > 0 ? this.jsm.streams.getMessage(stream, { seq: since }) : Promise.resolve(undefined),
    ]);
    // The event the client last saw is gone (age or per-subject limit): some history may be missing.
    const truncated = since > 0 && atSince === null;
    if (!last || last.seq <= since) return { truncated };

    const projectId = topic.startsWith('project.') ? topic.slice(8) : undefined;
    const consumer = await this.js.consumers.get(stream, {
      filter_subjects: subject,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: since + 1,
    });
    const messages = await consumer.consume({ max_messages: 1000 });
    try {
      for await (const m of messages) {
        try {
          const text = encodeEvent(m.data, {
            seq: m.seq,
            projectId,
            msgId: m.headers?.get('Nats-Msg-Id') || undefined,
            storedAt: m.timestamp,
          });
          onEvent({ seq: m.seq, frame: { text }, aboutUser: m.headers?.get(ABOUT_USER_HEADER) || undefined });
        } catch (err) {
          if (!(err instanceof EventError)) throw err;
        }
        // Stop at the last event stored when the replay began; later ones arrive live.
        if (m.seq >= last.seq || m.info.pending === 0) break;
      }
    } finally {
      await messages.close().catch(() => {});
    }
    return { truncated };
  }

  /** Publish an envelope to a subject; returns the stored seq. Used by the admin API. */
  async publish(topic: Topic, payload: string, msgId?: string, aboutUser?: string): Promise<number> {
    const h = natsHeaders();
    if (msgId) h.set('Nats-Msg-Id', msgId);
    if (aboutUser) h.set(ABOUT_USER_HEADER, aboutUser);
    const ack = await this.js.publish(this.subjectOf(topic), payload, { headers: h });
    return ack.seq;
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      switch (s.type) {
        case 'disconnect':
          this.connected = false;
          this.log.warn({ server: s.server }, 'NATS disconnected');
          break;
        case 'reconnect':
          this.connected = true;
          this.stats.reconnects += 1;
          this.log.info({ server: s.server }, 'NATS reconnected; subscriptions restored');
          break;
        case 'error':
          this.log.warn({ err: s.error }, 'NATS error');
          break;
        default:
          break;
      }
    }
  }

  async close(): Promise<void> {
    this.connected = false;
    if (this.nc.isClosed()) return;
    await this.nc.drain().catch(() => this.nc.close());
  }
}
