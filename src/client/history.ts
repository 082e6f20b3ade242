/**
 * `client.history()`: pages of a project's stored events. The server answers a connection's
 * requests in the order they were sent, so an answer belongs to the oldest request for its
 * project still waiting; an error names its request by `in_reply_to`.
 */
import { MessageType, TOKEN_PATTERN, type EventEnvelope } from '../protocol-codes.js';
import { ClientError, ClientErrorCode } from './errors.js';

export interface HistoryOptions {
  /** How many events, 1–1000. Default (server side) 100. */
  limit?: number;
  /** The events just before this seq (older ones: page backwards with the first event's seq). */
  before?: number;
  /** The events just after this seq (page forwards with the last event's seq). Not with `before`. */
  after?: number;
}

export interface HistoryPage<D = Record<string, unknown>> {
  projectId: string;
  /** The stream incarnation the seqs belong to. */
  epoch: string;
  /** Ascending by seq. */
  events: EventEnvelope<D>[];
  /** More events exist in the direction read: older ones (latest, `before`) or newer ones (`after`). */
  more: boolean;
}

interface Pending {
  id: string;
  projectId: string;
  resolve(page: HistoryPage): void;
  reject(err: ClientError): void;
  timer: ReturnType<typeof setTimeout>;
}

const isSeq = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

export class HistoryRequests {
  private readonly pending: Pending[] = [];
  private nextId = 0;

  /** `send` returns false when there is no connection to send on. */
  constructor(
    private readonly send: (message: Record<string, unknown>) => boolean,
    private readonly timeoutMs: number,
  ) {}

  request(projectId: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    const invalid = (message: string) => Promise.reject(new ClientError(ClientErrorCode.InvalidArgument, message, { projectId }));
    if (typeof projectId !== 'string' || !TOKEN_PATTERN.test(projectId)) return invalid('project id must match [A-Za-z0-9_-]{1,128}');
    const { limit, before, after } = options;
    if (limit !== undefined && !(Number.isSafeInteger(limit) && limit >= 1 && limit <= 1000)) return invalid('limit must be an integer from 1 to 1000');
    if (before !== undefined && !(isSeq(before) && before >= 1)) return invalid('before must be a positive integer');
    if (after !== undefined && !isSeq(after)) return invalid('after must be a non-negative integer');
    if (before !== undefined && after !== undefined) return invalid('give before or after, not both');
    const data: Record<string, unknown> = { project_id: projectId };
    if (limit !== undefined) data.limit = limit;
    if (before !== undefined) data.before = before;
    if (after !== undefined) data.after = after;
    const id = `h${(++this.nextId).toString(36)}`;
    if (!this.send({ type: MessageType.History, data, message_id: id })) {
      return Promise.reject(new ClientError(ClientErrorCode.Disconnected, 'not connected', { projectId }));
    }
    return new Promise<HistoryPage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.remove(id);
        reject(new ClientError(ClientErrorCode.Disconnected, 'no answer to the history request in time', { projectId }));
      }, this.timeoutMs);
      this.pending.push({ id, projectId, resolve, reject, timer });
    });
  }

  /** Every frame from the server: settles the request a `history` answer or an `error` is about. */
  onMessage(msg: { type: string; data?: unknown }): void {
    if (this.pending.length === 0) return;
    const data = (msg.data && typeof msg.data === 'object' ? msg.data : {}) as Record<string, unknown>;
    if (msg.type === MessageType.History) {
      const p = this.pending.find((r) => r.projectId === data.project_id);
      if (!p) return;
      this.settle(p);
      p.resolve({
        projectId: p.projectId,
        epoch: String(data.epoch ?? ''),
        events: Array.isArray(data.events) ? (data.events as EventEnvelope[]) : [],
        more: data.more === true,
      });
    } else if (msg.type === MessageType.Error && typeof data.in_reply_to === 'string') {
      const p = this.pending.find((r) => r.id === data.in_reply_to);
      if (!p) return;
      this.settle(p);
      p.reject(new ClientError(String(data.code) as ClientErrorCode, String(data.message ?? data.code), { projectId: p.projectId, data }));
    }
  }

  /** The connection ended: nothing sent on it will be answered. */
  failAll(error: ClientError): void {
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(error);
    }
  }

  private settle(p: Pending): void {
    clearTimeout(p.timer);
    this.remove(p.id);
  }

  private remove(id: string): void {
    const i = this.pending.findIndex((r) => r.id === id);
    if (i >= 0) this.pending.splice(i, 1);
  }
}
