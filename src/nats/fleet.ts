/**
 * Fleet control on core NATS. Every sidecar instance attached to one NATS listens on
 * `<prefix>.ctl.<op>`, subjects the event stream does not capture, so:
 *
 * - an action aimed at a user or project (disconnect) reaches every instance, whoever publishes it
 *   (the admin API of any instance, or a backend with `nats pub`);
 * - a question (counts, connection lists, metrics) is asked of every instance with one publish and
 *   answered by each on a private inbox (scatter-gather).
 *
 * Instances know each other from heartbeats on `<prefix>.ctl.hello`, which lets a gather finish as
 * soon as every known instance has answered instead of waiting out a timer; `timeout` only bounds
 * the wait for an instance that died without saying `bye`.
 */
import { EventEmitter } from 'node:events';
import { createInbox, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { SidecarError } from '../errors.js';

/** What a handler answers; the fleet adds `instance_id`. */
export type FleetAnswerBody = Record<string, unknown>;
export type FleetHandler = (body: unknown) => FleetAnswerBody | Promise<FleetAnswerBody>;

export interface FleetAnswer extends FleetAnswerBody {
  instance_id: string;
}

export interface Gathered {
  /** One per instance that answered in time, ordered by instance id. */
  answers: FleetAnswer[];
  /** Known instances that did not answer within the timeout. */
  missing: string[];
}

/** The NATS side the fleet needs: the broker's connection and its state. */
export interface FleetLink {
  readonly nc: NatsConnection;
  readonly connected: boolean;
  readonly prefix: string;
}

export interface FleetOptions {
  instanceId: string;
  /** ms between announcements; a peer silent for 3 of them is forgotten. */
  heartbeat: number;
  /** ms a gather waits for known instances before answering without them. */
  timeout: number;
}

/** A fleet request could not be sent: NATS is unreachable. */
export class FleetUnavailableError extends SidecarError {
  /** Koa's error convention: answered 503 with this message. */
  readonly status = 503;
  readonly expose = true;
  constructor() {
    super('fleet_unavailable', 'NATS is unreachable: the fleet cannot be asked (use scope=local)', { temporary: true });
  }
}

/** Ops the fleet itself uses; handlers cannot take these names. */
const RESERVED = new Set(['hello', 'bye']);
const EXPIRE_AFTER_BEATS = 3;

export class Fleet extends EventEmitter<{ peers: [instances: string[]] }> {
  /** Other instances by id -> when last heard from (ms). */
  private readonly peers = new Map<string, number>();
  private handlers: Record<string, FleetHandler> = {};
  private sub: Subscription | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly opOffset: number;

  constructor(
    private readonly link: FleetLink,
    private readonly options: FleetOptions,
    private readonly log: Logger,
  ) {
    super();
    this.opOffset = `${link.prefix}.ctl.`.length;
  }

  get instanceId(): string {
    return this.options.instanceId;
  }

  /** Every instance this one knows to be alive, itself included, sorted. */
  get instances(): string[] {
    return [this.instanceId, ...this.peers.keys()].sort();
  }

  subject(op: string): string {
    return `${this.link.prefix}.ctl.${op}`;
  }

  /** Answer fleet requests with `handlers` (by op) and join the fleet. */
  start(handlers: Record<string, FleetHandler>): void {
    for (const op of Object.keys(handlers)) if (RESERVED.has(op)) throw new Error(`fleet op "${op}" is reserved`);
    this.handlers = handlers;
    this.sub = this.link.nc.subscribe(this.subject('*'), {
      callback: (err, msg) => {
        if (err) this.log.warn({ err }, 'fleet subscription error');
        else void this.onMessage(msg);
      },
    });
    this.announce();
    this.timer = setInterval(() => {
      this.expire(Date.now());
      this.announce();
    }, this.options.heartbeat);
    this.timer.unref();
  }

  /**
   * Ask every instance (this one included, through NATS like the others) and collect the answers.
   * Resolves when every known instance answered, or after the timeout with the silent ones listed.
   */
  gather(op: string, body: unknown = {}): Promise<Gathered> {
    const { nc } = this.link;
    if (!this.link.connected || nc.isClosed()) return Promise.reject(new FleetUnavailableError());
    const expected = this.instances;
    const answers = new Map<string, FleetAnswer>();
    const inbox = createInbox();
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        sub.unsubscribe();
        resolve({
          answers: [...answers.values()].sort((a, b) => a.instance_id.localeCompare(b.instance_id)),
          missing: expected.filter((id) => !answers.has(id)),
        });
      };
      const sub = nc.subscribe(inbox, {
        callback: (err, msg) => {
          const answer = err ? undefined : parseJson(msg);
          if (!answer || typeof answer.instance_id !== 'string') return;
          answers.set(answer.instance_id, answer as FleetAnswer);
          this.heard(answer.instance_id);
          if (expected.every((id) => answers.has(id))) finish();
        },
      });
      const timer = setTimeout(finish, this.options.timeout);
      nc.publish(this.subject(op), JSON.stringify(body), { reply: inbox });
    });
  }

  /** Leave the fleet: peers stop waiting for this instance at once. */
  stop(): void {
    clearInterval(this.timer);
    if (!this.sub) return;
    this.sub.unsubscribe();
    this.sub = undefined;
    if (!this.link.nc.isClosed()) this.link.nc.publish(this.subject('bye'), JSON.stringify({ instance_id: this.instanceId }));
  }

  private announce(): void {
    if (this.link.nc.isClosed()) return;
    this.link.nc.publish(this.subject('hello'), JSON.stringify({ instance_id: this.instanceId }));
  }

  private async onMessage(msg: Msg): Promise<void> {
    const op = msg.subject.slice(this.opOffset);
    if (op === 'hello' || op === 'bye') {
      const id = parseJson(msg)?.instance_id;
      if (typeof id !== 'string' || id === this.instanceId) return;
      if (op === 'hello') this.heard(id);
      else if (this.peers.delete(id)) this.changed(`instance ${id} left the fleet`);
      return;
    }
    const handler = Object.hasOwn(this.handlers, op) ? this.handlers[op] : undefined;
    if (!handler) return; // an op of a newer version, or a typo: not ours to answer
    let answer: FleetAnswerBody;
    try {
      answer = await handler(parseJson(msg));
    } catch (err) {
      const code = err instanceof SidecarError ? err.code : 'internal_error';
      if (code === 'internal_error') this.log.warn({ err, op }, 'fleet request failed');
      answer = { error: code, message: err instanceof SidecarError ? err.message : 'internal error' };
    }
    if (msg.reply) msg.respond(JSON.stringify({ ...answer, instance_id: this.instanceId }));
  }

  /** A sign of life from an instance; a new one hears from us at once so it learns the fleet. */
  private heard(id: string): void {
    if (id === this.instanceId) return;
    const known = this.peers.has(id);
    this.peers.set(id, Date.now());
    if (known) return;
    this.changed(`instance ${id} joined the fleet`);
    this.announce();
  }

  private expire(now: number): void {
    const limit = EXPIRE_AFTER_BEATS * this.options.heartbeat;
    for (const [id, last] of this.peers) {
      if (now - last <= limit) continue;
      this.peers.delete(id);
      this.changed(`instance ${id} silent for ${limit} ms: forgotten`);
    }
  }

  private changed(what: string): void {
    const instances = this.instances;
    this.log.info({ instances }, what);
    this.emit('peers', instances);
  }
}

function parseJson(msg: Msg): Record<string, unknown> | undefined {
  try {
    const v: unknown = msg.data.length ? JSON.parse(msg.string()) : {};
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
