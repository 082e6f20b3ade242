/**
 * The wire protocol, and the only module that parses or serialises it. PROTOCOL.md is the prose
 * version of this file; keep them in step.
 *
 * Envelope, both directions, one JSON object per text frame:
 *   {"type": string, "data": object, "timestamp": RFC 3339, "message_id": string}
 * Events from NATS add "seq" (stream sequence) and, for project events, "project_id".
 */
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { TOKEN_PATTERN } from './config.js';
import { SidecarError } from './errors.js';
import { ErrorCode, MessageType, TOKEN_SYNTAX } from './protocol-codes.js';

export { MessageType, ErrorCode, CloseCode, BATCH_PROTOCOL, type Envelope, type EventEnvelope } from './protocol-codes.js';

/** An inbound message was refused; the connection lives (unless the error budget runs out). */
export class ProtocolError extends SidecarError {
  declare readonly code: ErrorCode;
  readonly details?: Record<string, unknown>;
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, { temporary: code === ErrorCode.RateLimited || code === ErrorCode.ProcessingError });
    this.details = details;
  }
}

const id = z.string().regex(TOKEN_PATTERN, `must match ${TOKEN_SYNTAX}`);
const seq = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const envelope = {
  timestamp: z.string().max(64).optional(),
  message_id: z.string().max(128).optional(),
};

/** Events a history request returns when it gives no `limit`, and the most it may ask for. */
export const HISTORY_DEFAULT_LIMIT = 100;
export const HISTORY_MAX_LIMIT = 1000;

const historyQuerySchema = z
  .object({
    project_id: id,
    limit: z.number().int().min(1).max(HISTORY_MAX_LIMIT).optional(),
    before: seq.min(1).optional(),
    after: seq.optional(),
  })
  .refine((q) => q.before === undefined || q.after === undefined, { message: 'give before or after, not both', path: ['before'] });

const clientMessageSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('auth'), data: z.object({ token: z.string().min(1) }), ...envelope }),
  z.object({
    type: z.literal('subscription'),
    data: z.discriminatedUnion('action', [
      z.object({ action: z.literal('subscribe'), project_id: id, since: seq.optional(), epoch: z.string().min(1).max(64).optional() }),
      z.object({ action: z.literal('unsubscribe'), project_id: id }),
    ]),
    ...envelope,
  }),
  z.object({ type: z.literal('ping'), data: z.unknown().optional(), ...envelope }),
  z.object({ type: z.literal('ack'), data: z.object({ seq: seq.min(1) }), ...envelope }),
  z.object({ type: z.literal('presence'), data: z.object({ project_id: id }), ...envelope }),
  z.object({ type: z.literal('history'), data: historyQuerySchema, ...envelope }),
  z.object({
    type: z.literal('client_event'),
    // `event` becomes a subject token; unknown fields (a forged user_id, say) are dropped here.
    data: z.object({ project_id: id, event: id, payload: z.record(z.string(), z.unknown()).optional() }),
    ...envelope,
  }),
]);

export type ClientMessage = z.infer<typeof clientMessageSchema>;
export const CLIENT_MESSAGE_TYPES: readonly string[] = ['auth', 'subscription', 'ping', 'ack', 'presence', 'client_event', 'history'];

/** Parse one inbound text frame. Throws ProtocolError(invalid_message) with a precise reason. */
export function parseClientMessage(text: string): ClientMessage {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ProtocolError(ErrorCode.InvalidMessage, 'message is not valid JSON');
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ProtocolError(ErrorCode.InvalidMessage, 'message must be a JSON object');
  }
  const type = (raw as { type?: unknown }).type;
  if (typeof type !== 'string') throw new ProtocolError(ErrorCode.InvalidMessage, 'field "type" must be a string');
  if (!CLIENT_MESSAGE_TYPES.includes(type)) {
    throw new ProtocolError(ErrorCode.InvalidMessage, `unknown message type "${type.slice(0, 64)}"`, {
      type: type.slice(0, 64),
    });
  }
  const fast = fastClientMessage(raw as Record<string, unknown>, type);
  if (fast !== undefined) return fast;
  const result = clientMessageSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0];
    const field = issue.path.join('.') || 'message';
    throw new ProtocolError(ErrorCode.InvalidMessage, `field "${field}": ${issue.message}`, { type, field });
  }
  return result.data;
}

/**
 * The schema's result for the frames of a connect and of a live connection (subscribe,
 * unsubscribe, ping, ack) when they are valid, without zod (~2% of a connect storm's CPU); the
 * same object zod returns (known keys only, in the schema's order). Undefined for anything else,
 * which zod then parses, so every refusal keeps zod's message.
 */
function fastClientMessage(raw: Record<string, unknown>, type: string): ClientMessage | undefined {
  const { timestamp, message_id: messageId, data } = raw;
  if (timestamp !== undefined && (typeof timestamp !== 'string' || timestamp.length > 64)) return undefined;
  if (messageId !== undefined && (typeof messageId !== 'string' || messageId.length > 128)) return undefined;
  let out: Record<string, unknown>;
  if (type === 'ping') {
    out = 'data' in raw ? { type, data } : { type };
  } else {
    if (data === null || typeof data !== 'object' || Array.isArray(data)) return undefined;
    const d = data as Record<string, unknown>;
    if (type === 'subscription') {
      const { action, project_id: projectId } = d;
      if ((action !== 'subscribe' && action !== 'unsubscribe') || typeof projectId !== 'string' || !TOKEN_PATTERN.test(projectId)) return undefined;
      if (action === 'subscribe' && (d.since !== undefined || d.epoch !== undefined)) return undefined; // a resume: zod
      out = { type, data: { action, project_id: projectId } };
    } else if (type === 'ack') {
      const s = d.seq;
      if (typeof s !== 'number' || !Number.isSafeInteger(s) || s < 1) return undefined;
      out = { type, data: { seq: s } };
    } else {
      return undefined;
    }
  }
  if (timestamp !== undefined) out.timestamp = timestamp;
  if (messageId !== undefined) out.message_id = messageId;
  return out as ClientMessage;
}

export type HistoryRequest = Extract<ClientMessage, { type: 'history' }>['data'];

/**
 * A history request from HTTP query parameters (`limit`, `before`, `after`: decimal digits).
 * Throws ProtocolError(invalid_message) naming the parameter, like a WebSocket request's fields.
 */
export function parseHistoryParams(projectId: string, params: Record<string, string | string[] | undefined>): HistoryRequest {
  const raw: Record<string, unknown> = { project_id: projectId };
  for (const key of ['limit', 'before', 'after']) {
    const value = params[key];
    if (value === undefined) continue;
    if (typeof value !== 'string' || !/^\d{1,16}$/.test(value)) {
      throw new ProtocolError(ErrorCode.InvalidMessage, `parameter "${key}" must be a non-negative integer`, { field: key });
    }
    raw[key] = Number(value);
  }
  const result = historyQuerySchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0];
    const field = issue.path.join('.') || 'query';
    throw new ProtocolError(ErrorCode.InvalidMessage, `parameter "${field}": ${issue.message}`, { field });
  }
  return result.data;
}

/**
 * The `data` of a history answer as JSON, with the events' texts spliced in as they are (each
 * already serialised once, when read): no parse and re-serialise of what may be a megabyte.
 */
export function historyData(projectId: string, epoch: string, eventTexts: readonly string[], more: boolean): string {
  return `{"project_id":${JSON.stringify(projectId)},"epoch":${JSON.stringify(epoch)},"events":[${eventTexts.join(',')}],"more":${more}}`;
}

/** The WebSocket answer to a history request, around `historyData`'s JSON. */
export function historyMessage(data: string, messageId: string = randomUUID()): string {
  return `{"type":"${MessageType.History}","data":${data},"timestamp":"${new Date().toISOString()}","message_id":${JSON.stringify(messageId)}}`;
}

/** Best effort: the client's message_id, to echo on errors about it. */
export function peekMessageId(text: string): string | undefined {
  const m = /"message_id"\s*:\s*"([^"\\]{1,128})"/.exec(text);
  return m?.[1];
}

/** Serialise a server-originated message (not an event from NATS). */
export function serverMessage(type: string, data: Record<string, unknown>, messageId: string = randomUUID()): string {
  return JSON.stringify({ type, data, timestamp: new Date().toISOString(), message_id: messageId });
}

export function errorMessage(code: ErrorCode, message: string, details?: Record<string, unknown>): string {
  return serverMessage(MessageType.Error, { code, message, ...details });
}

/** What a publisher puts on a subject: the envelope with `type` and `data` required. */
export interface PublishedEvent {
  type: string;
  data: Record<string, unknown>;
  timestamp?: string;
  message_id?: string;
}

/** A published payload that is not an envelope clients can be given. */
export class EventError extends SidecarError {
  constructor(message: string) {
    super('event_invalid', message);
  }
}

/**
 * Turn a published payload into the text sent to clients: validated, with `seq` (and
 * `project_id`) added, and `timestamp` / `message_id` filled in when the publisher left them out.
 * Runs once per event, never per socket.
 */
export function encodeEvent(
  payload: Uint8Array | string,
  meta: { seq: number; projectId?: string; msgId?: string; storedAt?: string | (() => string) },
): string {
  return encodeStoredEvent(payload, meta).text;
}

/**
 * `encodeEvent`, also returning the publisher's id for the event (the envelope's `message_id`,
 * else the `Nats-Msg-Id` header), which delivery uses to drop duplicates. Undefined when the
 * publisher gave none (the id sent is then `seq-<seq>`, unique anyway).
 */
export function encodeStoredEvent(
  payload: Uint8Array | string,
  meta: { seq: number; projectId?: string; msgId?: string; storedAt?: string | (() => string) },
): { text: string; messageId?: string } {
  const source = typeof payload === 'string' ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8');
  let raw: unknown;
  try {
    raw = JSON.parse(source);
  } catch {
    throw new EventError('event payload is not valid JSON');
  }
  const ev = raw as Partial<PublishedEvent> | null;
  if (!ev || typeof ev !== 'object' || Array.isArray(ev)) throw new EventError('event must be a JSON object');
  if (typeof ev.type !== 'string' || ev.type.length === 0 || ev.type.length > 128) {
    throw new EventError('event "type" must be a non-empty string');
  }
  if (!ev.data || typeof ev.data !== 'object' || Array.isArray(ev.data)) {
    throw new EventError('event "data" must be an object');
  }
  // An empty id is no id: deduplicating on "" would drop every later event that has one.
  const messageId = (typeof ev.message_id === 'string' && ev.message_id) || meta.msgId || undefined;
  const storedAt = (): string => (typeof meta.storedAt === 'function' ? meta.storedAt() : (meta.storedAt ?? new Date().toISOString()));
  const spliced = spliceEnvelope(source, ev, messageId, storedAt, meta);
  if (spliced !== undefined) return { text: spliced, messageId };
  const out: Record<string, unknown> = {
    type: ev.type,
    data: ev.data,
    timestamp: typeof ev.timestamp === 'string' ? ev.timestamp : storedAt(),
    // Stable across replays, so a client can dedupe on it too.
    message_id: messageId ?? `seq-${meta.seq}`,
    seq: meta.seq,
  };
  if (meta.projectId !== undefined) out.project_id = meta.projectId;
  return { text: JSON.stringify(out), messageId };
}

/**
 * The envelope as the publisher wrote it, with the missing fields and `seq` (and `project_id`)
 * appended before its closing brace: the same object as the rebuilt one, without serialising
 * `data` again (that was half of an event's encode). Only for text that already is an envelope
 * and nothing else: top-level fields among type, data, a string timestamp and a non-empty string
 * message_id, and no raw newline (batched frames are split on it). Anything else (extra fields,
 * pretty-printed JSON) is rebuilt. Undefined when it does not apply.
 */
function spliceEnvelope(
  source: string,
  ev: Partial<PublishedEvent>,
  messageId: string | undefined,
  storedAt: () => string,
  meta: { seq: number; projectId?: string },
): string | undefined {
  let hasTimestamp = false;
  let hasId = false;
  for (const key in ev) {
    if (key === 'type' || key === 'data') continue;
    if (key === 'timestamp' && typeof ev.timestamp === 'string') hasTimestamp = true;
    else if (key === 'message_id' && typeof ev.message_id === 'string' && ev.message_id !== '') hasId = true;
    else return undefined;
  }
  if (source.includes('\n')) return undefined;
  // JSON.parse gave an object, so the text ends with its brace and perhaps spaces, tabs or CRs.
  let end = source.length - 1;
  while (source.charCodeAt(end) !== CLOSE_BRACE) end--;
  let tail = '';
  if (!hasTimestamp) tail += `,"timestamp":${JSON.stringify(storedAt())}`;
  if (!hasId) tail += `,"message_id":${messageId === undefined ? `"seq-${meta.seq}"` : JSON.stringify(messageId)}`;
  tail += `,"seq":${meta.seq}`;
  if (meta.projectId !== undefined) tail += `,"project_id":${JSON.stringify(meta.projectId)}`;
  return `${source.slice(0, end)}${tail}}`;
}

const CLOSE_BRACE = 0x7d;

/** Validate an event body given to the admin API or the publisher SDK before it goes to NATS. */
export const publishedEventSchema = z.object({
  type: z.string().min(1).max(128),
  data: z.record(z.string(), z.unknown()),
  timestamp: z.string().max(64).optional(),
  message_id: z.string().min(1).max(128).optional(),
});

/** A close reason must fit in 123 UTF-8 bytes (RFC 6455 §5.5); cut on a character boundary. */
export function truncateCloseReason(reason: string): string {
  if (Buffer.byteLength(reason) <= 123) return reason;
  let out = '';
  for (const ch of reason) {
    if (Buffer.byteLength(out + ch) > 123) break;
    out += ch;
  }
  return out;
}
