/**
 * The publisher SDK: the Go package's service API (notifyTaskCreated, sendDirectMessage, ...) over NATS.
 *
 * Each call is one JetStream publish to `<prefix>.project.<id>`, `<prefix>.user.<id>` or
 * `<prefix>.broadcast` with a `Nats-Msg-Id`, and resolves with the seq the stream stored it
 * under. Transient failures (timeouts, NATS reconnecting, the stream not ready) are retried with
 * the same `Nats-Msg-Id`, so a retry of a publish that did land is answered as a duplicate with
 * the original seq instead of being stored twice.
 */
import { randomUUID } from 'node:crypto';
import {
  AuthorizationError,
  ClosedConnectionError,
  connect,
  DrainingConnectionError,
  InvalidArgumentError,
  InvalidSubjectError,
  PermissionViolationError,
  type NatsConnection,
} from '@nats-io/transport-node';
import { jetstream, JetStreamApiError, type JetStreamClient } from '@nats-io/jetstream';
import { SidecarError } from '../errors.js';
import type { Task } from '../events.js';
import { publishedEventSchema } from '../protocol.js';
import { TOKEN_PATTERN, TOKEN_SYNTAX } from '../protocol-codes.js';

export interface PublisherOptions {
  /** Subject prefix; must equal the sidecar's `NATS_SUBJECT_PREFIX`. Default `"ws"`. */
  prefix?: string;
  /** How long one attempt waits for JetStream's ack, ms. Default `5000`. */
  timeout?: number;
  /** Attempts per publish for transient failures. Default `5`. */
  maxAttempts?: number;
  /** Delay before the first retry, ms; doubles with each retry. Default `250`. */
  retryDelay?: number;
}

export interface ConnectOptions extends PublisherOptions {
  /** NATS servers (`nats://host:port`), an array or a comma-separated string. Default `"nats://127.0.0.1:4222"`. */
  servers?: string | string[];
  /** The connection's name in NATS monitoring. Default `"nats-ws-sidecar publisher"`. */
  name?: string;
}

export interface PublishOptions {
  /** The `Nats-Msg-Id` (and envelope `message_id`): the same id within 2 min is stored once. Default: a random UUID. */
  msgId?: string;
}

export interface PublishResult {
  /** The stream sequence the event is stored under; clients see it as `seq`. */
  seq: number;
  stream: string;
  /** True when the stream already had this `msgId`: nothing new was stored; `seq` is the original's. */
  duplicate: boolean;
  msgId: string;
  subject: string;
}

/** An id or an event was refused before anything was sent. `code`: `invalid_id` or `invalid_event`. */
export class ValidationError extends SidecarError {}

/** JetStream did not store the event. `code`: `publish_failed`; `cause` has the last NATS error. */
export class PublishError extends SidecarError {
  constructor(
    message: string,
    readonly subject: string,
    readonly attempts: number,
    options?: { cause?: unknown },
  ) {
    super('publish_failed', message, { ...options, temporary: true });
  }
}

const DEFAULTS: Required<PublisherOptions> = { prefix: 'ws', timeout: 5000, maxAttempts: 5, retryDelay: 250 };

/** Errors that another attempt cannot fix: the connection is gone, or the server refused the request itself. */
function isPermanent(err: unknown): boolean {
  return (
    err instanceof ClosedConnectionError ||
    err instanceof DrainingConnectionError ||
    err instanceof PermissionViolationError ||
    err instanceof AuthorizationError ||
    err instanceof InvalidSubjectError ||
    err instanceof InvalidArgumentError ||
    (err instanceof JetStreamApiError && err.status !== 503)
  );
}

function checkId(kind: 'project' | 'user', id: unknown): string {
  if (typeof id !== 'string' || !TOKEN_PATTERN.test(id)) {
    throw new ValidationError('invalid_id', `${kind} id must match ${TOKEN_SYNTAX} (got ${JSON.stringify(id)?.slice(0, 140)})`);
  }
  return id;
}

export class Publisher {
  readonly options: Required<PublisherOptions>;
  private readonly js: JetStreamClient;
  /** Opened by `Publisher.connect`, so `close()` closes it. */
  private ownsConnection = false;

  /** Uses an open connection, which `close()` leaves open. */
  constructor(
    readonly connection: NatsConnection,
    options: PublisherOptions = {},
  ) {
    this.options = { ...DEFAULTS, ...options };
    if (!TOKEN_PATTERN.test(this.options.prefix)) {
      throw new ValidationError('invalid_id', `prefix must match ${TOKEN_SYNTAX}`);
    }
    this.js = jetstream(connection, { timeout: this.options.timeout });
  }

  /** Connects to NATS (reconnecting forever) and returns a publisher that closes the connection on `close()`. */
  static async connect(options: ConnectOptions = {}): Promise<Publisher> {
    const { servers = 'nats://127.0.0.1:4222', name = 'nats-ws-sidecar publisher', ...rest } = options;
    const list = (Array.isArray(servers) ? servers : servers.split(',')).map((s) => s.trim()).filter(Boolean);
    const nc = await connect({ servers: list, name, maxReconnectAttempts: -1 });
    try {
      const publisher = new Publisher(nc, rest);
      publisher.ownsConnection = true;
      return publisher;
    } catch (err) {
      await nc.close();
      throw err;
    }
  }

  // ---- the Go package's service API -----------------------------------------------------------------

  notifyTaskCreated(task: Task, projectId: string, options?: PublishOptions): Promise<PublishResult> {
    return this.sendProjectMessage(projectId, 'task_created', { project_id: projectId, task }, options);
  }

  notifyTaskUpdated(
    taskId: string,
    projectId: string,
    changes: Record<string, unknown>,
    task?: Task,
    options?: PublishOptions,
  ): Promise<PublishResult> {
    const data: Record<string, unknown> = { project_id: projectId, task_id: taskId, changes };
    if (task !== undefined) data.task = task;
    return this.sendProjectMessage(projectId, 'task_updated', data, options);
  }

  notifyTaskDeleted(taskId: string, projectId: string, options?: PublishOptions): Promise<PublishResult> {
    return this.sendProjectMessage(projectId, 'task_deleted', { project_id: projectId, task_id: taskId }, options);
  }

  notifyProjectUpdated(projectId: string, changes: Record<string, unknown>, options?: PublishOptions): Promise<PublishResult> {
    return this.sendProjectMessage(projectId, 'project_updated', { project_id: projectId, changes }, options);
  }

  /** `data`'s fields go next to `project_id` and `status` (which win on a clash). */
  notifyStatusChanged(
    projectId: string,
    status: string,
    data: Record<string, unknown> = {},
    options?: PublishOptions,
  ): Promise<PublishResult> {
    return this.sendProjectMessage(projectId, 'status_changed', { ...data, project_id: projectId, status }, options);
  }

  /** To every connection of the user; kept for offline delivery. */
  sendDirectMessage(userId: string, type: string, data: Record<string, unknown>, options?: PublishOptions): Promise<PublishResult> {
    return this.publish(`user.${checkId('user', userId)}`, type, data, options);
  }

  /** To every connection subscribed to the project. */
  sendProjectMessage(projectId: string, type: string, data: Record<string, unknown>, options?: PublishOptions): Promise<PublishResult> {
    return this.publish(`project.${checkId('project', projectId)}`, type, data, options);
  }

  /** To every connection. */
  broadcast(type: string, data: Record<string, unknown>, options?: PublishOptions): Promise<PublishResult> {
    return this.publish('broadcast', type, data, options);
  }

  // ---- publishing -----------------------------------------------------------------------------

  private async publish(topic: string, type: string, data: Record<string, unknown>, options: PublishOptions = {}): Promise<PublishResult> {
    const msgId = options.msgId ?? randomUUID();
    const parsed = publishedEventSchema.safeParse({ type, data, message_id: msgId });
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const field = issue.path.join('.') || 'event';
      throw new ValidationError(field === 'message_id' ? 'invalid_id' : 'invalid_event', `${field}: ${issue.message}`);
    }
    let payload: string;
    try {
      payload = JSON.stringify({ type, data, timestamp: new Date().toISOString(), message_id: msgId });
    } catch (err) {
      throw new ValidationError('invalid_event', `data is not serialisable to JSON: ${(err as Error).message}`);
    }
    const subject = `${this.options.prefix}.${topic}`;
    const { maxAttempts, retryDelay, timeout } = this.options;
    for (let attempt = 1; ; attempt++) {
      try {
        const ack = await this.js.publish(subject, payload, { msgID: msgId, timeout });
        return { seq: ack.seq, stream: ack.stream, duplicate: ack.duplicate, msgId, subject };
      } catch (err) {
        if (isPermanent(err) || attempt >= maxAttempts) {
          throw new PublishError(`publish to ${subject} failed after ${attempt} attempt(s): ${(err as Error).message}`, subject, attempt, {
            cause: err,
          });
        }
        await new Promise((resolve) => setTimeout(resolve, retryDelay * 2 ** (attempt - 1)));
      }
    }
  }

  /** Flushes pending publishes; closes the connection only if `Publisher.connect` opened it. */
  async close(): Promise<void> {
    if (!this.ownsConnection) return;
    if (!this.connection.isClosed()) await this.connection.drain();
  }
}
