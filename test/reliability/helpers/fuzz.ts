/**
 * Frame generator and oracle for the fuzz run. The generator is seeded (same seed, same frames);
 * the oracle says what PROTOCOL.md promises for each frame, written independently of
 * src/protocol.ts so the run checks the server against the document, not against itself.
 */
import { Opcode, type FrameSpec } from './raw-ws.js';

/** mulberry32: small, fast, good enough to spread cases. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Limits {
  maxMessageSize: number;
  /** ws maxPayload: maxTokenLength + 1024 */
  maxPayload: number;
}

/** What the server must do with a case. */
export type Expectation =
  /** A protocol violation below the app: the socket closes with this code. */
  | { close: number }
  /** A whole message reaches the app; `answer` (below) judges what came back. */
  | { message: Buffer; binary: boolean };

export interface FuzzCase {
  kind: string;
  frames: FrameSpec[];
  expect: Expectation;
}

const ID = /^[A-Za-z0-9_-]{1,128}$/;
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isId = (v: unknown) => typeof v === 'string' && ID.test(v);
const isSeq = (v: unknown, min: number) => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= Number.MAX_SAFE_INTEGER;

/** PROTOCOL.md § Client → server messages, as a plain predicate: is this a valid client message? */
export function validMessage(m: unknown): boolean {
  if (!isObj(m) || typeof m.type !== 'string') return false;
  if ('timestamp' in m && !(typeof m.timestamp === 'string' && m.timestamp.length <= 64)) return false;
  if ('message_id' in m && !(typeof m.message_id === 'string' && m.message_id.length <= 128)) return false;
  const d = m.data;
  switch (m.type) {
    case 'ping':
      return true;
    case 'auth':
      return isObj(d) && typeof d.token === 'string' && d.token.length > 0;
    case 'subscription':
      if (!isObj(d) || !isId(d.project_id)) return false;
      if (d.action === 'unsubscribe') return true;
      return d.action === 'subscribe' && (!('since' in d) || isSeq(d.since, 0));
    case 'ack':
      return isObj(d) && isSeq(d.seq, 1);
    case 'presence':
      return isObj(d) && isId(d.project_id);
    case 'client_event':
      return isObj(d) && isId(d.project_id) && isId(d.event) && (!('payload' in d) || isObj(d.payload));
    case 'history':
      return (
        isObj(d) &&
        isId(d.project_id) &&
        (!('limit' in d) || (isSeq(d.limit, 1) && (d.limit as number) <= 1000)) &&
        (!('before' in d) || isSeq(d.before, 1)) &&
        (!('after' in d) || isSeq(d.after, 0)) &&
        !('before' in d && 'after' in d)
      );
    default:
      return false;
  }
}

const ERROR_CODES = new Set(['invalid_message', 'rate_limited', 'unauthorized', 'forbidden', 'processing_error', 'token_expired', 'connection_closed']);
const SERVER_TYPES = new Set(['auth_required', 'auth_success', 'auth_failed', 'subscription', 'presence', 'pong', 'error', 'history_truncated', 'history']);

/** Checks a server frame's envelope; returns a problem or undefined. */
export function envelopeProblem(m: any): string | undefined {
  if (!isObj(m)) return 'not a JSON object';
  if (typeof m.type !== 'string' || !SERVER_TYPES.has(m.type)) return `unexpected type ${JSON.stringify(m.type)}`;
  if (!isObj(m.data)) return 'data is not an object';
  if (typeof m.timestamp !== 'string' || Number.isNaN(Date.parse(m.timestamp))) return 'bad timestamp';
  if (typeof m.message_id !== 'string') return 'no message_id';
  if (m.type === 'error' && !ERROR_CODES.has(String(m.data.code))) return `undocumented error code ${String(m.data.code)}`;
  return undefined;
}

export type Outcome = { answers: any[]; close?: number };

/**
 * Judges the answers to one app-level message against PROTOCOL.md. Returns a problem, or
 * undefined when the answer is what the document promises.
 */
export function judge(c: FuzzCase, out: Outcome, limits: Limits): string | undefined {
  const e = c.expect;
  if ('close' in e) return out.close === e.close ? undefined : `expected close ${e.close}, got ${summarize(out)}`;
  for (const a of out.answers) {
    const p = envelopeProblem(a);
    if (p) return `bad answer (${p}): ${JSON.stringify(a).slice(0, 200)}`;
  }
  const errors = out.answers.filter((a) => a.type === 'error');
  const only = (pred: (a: any) => boolean) => out.close === undefined && out.answers.length === 1 && pred(out.answers[0]);
  const invalid = () => (only((a) => a.type === 'error' && a.data.code === 'invalid_message') ? undefined : `expected one invalid_message, got ${summarize(out)}`);
  if (e.binary) return invalid();
  const text = e.message.toString('utf8');
  let parsed: unknown;
  let isJson = true;
  try {
    parsed = JSON.parse(text);
  } catch {
    isJson = false;
  }
  const valid = isJson && validMessage(parsed);
  const type = isJson && isObj(parsed) ? parsed.type : undefined;
  if (e.message.length > limits.maxMessageSize && !(valid && type === 'auth')) {
    return out.close === 1009 ? undefined : `expected close 1009 for ${e.message.length} bytes, got ${summarize(out)}`;
  }
  if (!valid) return invalid();
  if (out.close !== undefined) return `a valid message closed the connection: ${summarize(out)}`;
  if (errors.some((a) => a.data.code === 'processing_error')) return `processing_error: ${JSON.stringify(errors[0].data)}`;
  const d = (parsed as { data: Record<string, unknown> }).data;
  switch (type) {
    case 'ping':
      return only((a) => a.type === 'pong') ? undefined : `ping: ${summarize(out)}`;
    case 'auth':
      return only((a) => a.type === 'auth_success' || a.type === 'auth_failed') ? undefined : `auth: ${summarize(out)}`;
    case 'subscription':
      return only(
        (a) =>
          (a.type === 'subscription' && a.data.project_id === d.project_id && a.data.action === `${String(d.action)}d`) ||
          (a.type === 'error' && a.data.code === 'forbidden'),
      )
        ? undefined
        : `subscription: ${summarize(out)}`;
    case 'presence':
      return only((a) => (a.type === 'presence' && a.data.project_id === d.project_id) || (a.type === 'error' && a.data.code === 'forbidden'))
        ? undefined
        : `presence: ${summarize(out)}`;
    case 'ack':
      return out.answers.length === 0 ? undefined : `ack answered: ${summarize(out)}`;
    case 'history':
      return only(
        (a) =>
          (a.type === 'history' && a.data.project_id === d.project_id && Array.isArray(a.data.events) && typeof a.data.more === 'boolean') ||
          (a.type === 'error' && a.data.code === 'forbidden'),
      )
        ? undefined
        : `history: ${summarize(out)}`;
    case 'client_event':
      // No client event types are allowed in the run.
      return only((a) => a.type === 'error' && a.data.code === 'forbidden') ? undefined : `client_event: ${summarize(out)}`;
    default:
      return `unhandled type ${String(type)}`;
  }
}

function summarize(out: Outcome): string {
  const a = out.answers.map((m) => (m?.type === 'error' ? `error:${m.data?.code}` : String(m?.type))).join(',') || 'no answer';
  return out.close !== undefined ? `${a}; close ${out.close}` : a;
}

// ---- generation -------------------------------------------------------------------------------

export class FuzzGenerator {
  private readonly r: () => number;
  constructor(
    seed: number,
    private readonly limits: Limits,
    private readonly token: string,
    private readonly projects: string[],
  ) {
    this.r = prng(seed);
  }

  private int(n: number): number {
    return Math.floor(this.r() * n);
  }
  private pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  /** Valid messages the mutations start from. */
  private seed(): Record<string, unknown> {
    const p = this.pick(this.projects);
    const id = `m${this.int(1e6)}`;
    return this.pick([
      () => ({ type: 'ping' }),
      () => ({ type: 'ping', data: { n: this.int(100) }, message_id: id }),
      () => ({ type: 'subscription', data: { action: 'subscribe', project_id: p } }),
      () => ({ type: 'subscription', data: { action: 'subscribe', project_id: p, since: this.int(50) }, message_id: id }),
      () => ({ type: 'subscription', data: { action: 'unsubscribe', project_id: p } }),
      () => ({ type: 'ack', data: { seq: 1 + this.int(1000) } }),
      () => ({ type: 'presence', data: { project_id: p } }),
      () => ({ type: 'client_event', data: { project_id: p, event: 'typing', payload: { x: 1 } } }),
      () => ({ type: 'history', data: { project_id: p, limit: 1 + this.int(20) }, message_id: id }),
      () => ({ type: 'history', data: { project_id: p, before: 1 + this.int(50), limit: 5 } }),
      () => ({ type: 'history', data: { project_id: p, after: this.int(50) } }),
      () => ({ type: 'auth', data: { token: this.token } }),
      () => ({ type: 'auth', data: { token: 'not.a.token' }, timestamp: new Date().toISOString() }),
    ])();
  }

  private hostileValue(): unknown {
    return this.pick<() => unknown>([
      () => null,
      () => true,
      () => 0,
      () => -1,
      () => -0,
      () => 1.5,
      () => 2 ** 53 + 2,
      () => Number.MAX_VALUE,
      () => -Number.MAX_VALUE,
      () => '',
      () => 'x'.repeat(this.int(300)),
      () => 'a.b',
      () => '*',
      () => '>',
      () => '../../etc/passwd',
      () => '\u0000',
      () => '\ud83d\ude00',
      () => '\u202e',
      () => [],
      () => [1, 2, 3],
      () => ({}),
      () => JSON.parse('{"__proto__":{"polluted":true}}') as unknown,
      () => ({ constructor: { prototype: { polluted: true } } }),
      () => this.nested(this.int(30) + 1),
      () => this.pick(this.projects),
      () => this.int(1000),
      () => String(this.int(1000)),
    ])();
  }

  private nested(depth: number): unknown {
    let v: unknown = 1;
    for (let i = 0; i < depth; i++) v = this.r() < 0.5 ? [v] : { a: v };
    return v;
  }

  /** Replace, delete or add a field somewhere in the message. */
  private mutateStructure(m: Record<string, unknown>): Record<string, unknown> {
    const out: Record<string, unknown> = JSON.parse(JSON.stringify(m));
    const target: Record<string, unknown> = isObj(out.data) && this.r() < 0.6 ? out.data : out;
    const keys = [...Object.keys(target), 'type', 'data', 'message_id', 'timestamp', 'since', 'seq', 'project_id', 'action', 'token', 'extra'];
    const key = this.pick(keys);
    const op = this.int(10);
    if (op < 6) target[key] = this.hostileValue();
    else if (op < 8) delete target[key];
    else if (op < 9) out.type = this.pick(['Ping', 'PING', 'subscribe', 'auth_success', 'error', '', 'x'.repeat(200), 'constructor', '__proto__', 'toString']);
    else out.data = this.hostileValue();
    return out;
  }

  /** Byte-level damage to the text. */
  private mutateText(text: string): string {
    const ops = 1 + this.int(3);
    let t = text;
    for (let i = 0; i < ops; i++) {
      const at = this.int(t.length + 1);
      switch (this.int(6)) {
        case 0:
          t = t.slice(0, at) + t.slice(at + 1 + this.int(4));
          break;
        case 1:
          t = t.slice(0, at) + this.pick(['{', '}', '[', ']', '"', '\\', ',', ':', '\\u0000', '\\ud800', 'NaN', 'Infinity', '1e999', '\u00ff', '\u2028']) + t.slice(at);
          break;
        case 2:
          t = t.slice(0, at);
          break;
        case 3:
          t = t.slice(0, at) + t.slice(Math.max(0, at - 10), at) + t.slice(at);
          break;
        case 4:
          t = t.replace(/"[a-z_]+":/, `"__proto__":`);
          break;
        default:
          t = t.slice(0, at) + String.fromCharCode(32 + this.int(95)) + t.slice(at);
      }
    }
    return t;
  }

  private app(kind: string, message: Buffer | string, binary = false): FuzzCase {
    const payload = Buffer.isBuffer(message) ? message : Buffer.from(message);
    if (payload.length > this.limits.maxPayload) return { kind, frames: [{ opcode: binary ? Opcode.Binary : Opcode.Text, payload }], expect: { close: 1009 } };
    return { kind, frames: [{ opcode: binary ? Opcode.Binary : Opcode.Text, payload }], expect: { message: payload, binary } };
  }

  /** Splits a message into 2-5 fragments (a valid fragmented message). */
  private fragments(payload: Buffer, opcode: number): FrameSpec[] {
    const parts = 2 + this.int(4);
    const frames: FrameSpec[] = [];
    let at = 0;
    for (let i = 0; i < parts; i++) {
      const end = i === parts - 1 ? payload.length : Math.min(payload.length, at + this.int(Math.ceil(payload.length / 2) + 1));
      frames.push({ opcode: i === 0 ? opcode : Opcode.Continuation, payload: payload.subarray(at, end), fin: i === parts - 1 });
      at = end;
    }
    return frames;
  }

  next(): FuzzCase {
    const x = this.r() * 100;
    const valid = () => Buffer.from(JSON.stringify(this.seed()));
    if (x < 25) {
      let m = this.seed();
      for (let i = 1 + this.int(3); i > 0; i--) m = this.mutateStructure(m);
      return this.app('wrong types and fields', JSON.stringify(m));
    }
    if (x < 40) return this.app('mutated text', this.mutateText(JSON.stringify(this.seed())));
    if (x < 45) return this.app('valid', valid());
    if (x < 50) return this.app('truncated JSON', JSON.stringify(this.seed()).slice(0, this.int(30)));
    if (x < 55) {
      const chars = ' {}[]":,0123456789abcdefnulltrue\\';
      return this.app('random ASCII', Array.from({ length: 1 + this.int(200) }, () => this.pick([...chars])).join(''));
    }
    if (x < 60) {
      // Deep nesting: inside a ping (fits 512 bytes), a bare array, or inside an auth message (up to maxPayload).
      const which = this.int(3);
      if (which === 0) return this.app('deep nesting', JSON.stringify({ type: 'ping', data: this.nested(100 + this.int(140)) }));
      if (which === 1) return this.app('deep nesting', '['.repeat(200 + this.int(5000)) + ']'.repeat(this.int(3) ? 0 : 1));
      const depth = 1000 + this.int(3000);
      return this.app('deep nesting', `{"type":"auth","data":{"token":"t","x":${'['.repeat(depth)}${']'.repeat(depth)}}}`);
    }
    if (x < 65) {
      const n = this.pick(['1e309', '-1e309', '123456789012345678901234567890', '9007199254740993', '-0', '0.0000001', '1e-400', '-9223372036854775808', '1E2', '0x10', '01']);
      const which = this.int(3);
      if (which === 0) return this.app('huge numbers', `{"type":"subscription","data":{"action":"subscribe","project_id":"${this.pick(this.projects)}","since":${n}}}`);
      if (which === 1) return this.app('huge numbers', `{"type":"ack","data":{"seq":${n}}}`);
      return this.app('huge numbers', `{"type":"ping","data":{"n":${n}}}`);
    }
    if (x < 70) return this.app('binary frame', this.r() < 0.5 ? valid() : Buffer.from(Array.from({ length: this.int(300) }, () => this.int(256))), true);
    if (x < 76) {
      const m = valid();
      return { kind: 'fragmented', frames: this.fragments(m, Opcode.Text), expect: { message: m, binary: false } };
    }
    if (x < 79) {
      // Invalid UTF-8: a lone continuation byte, an overlong form, a surrogate, a truncated sequence.
      const bad = this.pick([[0x80], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82], [0xff]]);
      const payload = Buffer.concat([Buffer.from('{"type":"ping","data":{"s":"'), Buffer.from(bad), Buffer.from('"}}')]);
      if (this.r() < 0.5) return { kind: 'invalid UTF-8', frames: [{ opcode: Opcode.Text, payload }], expect: { close: 1007 } };
      return { kind: 'invalid UTF-8', frames: this.fragments(payload, Opcode.Text), expect: { close: 1007 } };
    }
    if (x < 84) {
      // Frame-level protocol violations: 1002.
      const m = valid();
      const frames = this.pick<() => FrameSpec[]>([
        () => [{ opcode: Opcode.Continuation, payload: m }],
        () => [{ opcode: Opcode.Text, payload: m.subarray(0, 5), fin: false }, { opcode: Opcode.Text, payload: m }],
        () => [{ opcode: Opcode.Ping, payload: Buffer.alloc(4), fin: false }],
        () => [{ opcode: Opcode.Ping, payload: Buffer.alloc(126) }],
        () => [{ opcode: Opcode.Text, payload: m, rsv: 1 + this.int(7) }],
        () => [{ opcode: this.pick([3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf]), payload: m }],
        () => [{ opcode: Opcode.Text, payload: m, mask: false }],
        () => [{ opcode: Opcode.Close, payload: Buffer.from([0x03, 0xed]) }], // 1005 may not be sent
        () => [{ opcode: Opcode.Close, payload: Buffer.from([0x00]) }],
      ])();
      return { kind: 'protocol violation', frames, expect: { close: 1002 } };
    }
    if (x < 88) {
      // Over maxMessageSize (1009 unless it is an auth message), or over the socket's maxPayload.
      const big = this.r() < 0.7 ? this.limits.maxMessageSize + 1 + this.int(2000) : this.limits.maxPayload + 1 + this.int(20_000);
      const m = JSON.stringify({ type: this.pick(['ping', 'subscription', 'auth', 'nope']), data: { pad: 'x'.repeat(big) } });
      if (this.r() < 0.3 && m.length <= this.limits.maxPayload * 2) return { kind: 'oversized', frames: this.fragments(Buffer.from(m), Opcode.Text), expect: Buffer.byteLength(m) > this.limits.maxPayload ? { close: 1009 } : { message: Buffer.from(m), binary: false } };
      return this.app('oversized', m);
    }
    if (x < 92) {
      // Control frames between fragments are allowed; client pings are answered by the socket, not the app.
      const m = valid();
      const [first, ...rest] = this.fragments(m, Opcode.Text);
      return { kind: 'control frames inside a message', frames: [first, { opcode: Opcode.Ping, payload: Buffer.from('hi') }, { opcode: Opcode.Pong, payload: Buffer.alloc(0) }, ...rest], expect: { message: m, binary: false } };
    }
    if (x < 94) {
      const code = this.pick([1000, 1001, 3000, 4000, 4999]);
      const payload = Buffer.alloc(2);
      payload.writeUInt16BE(code);
      return { kind: 'close frame', frames: [{ opcode: Opcode.Close, payload }], expect: { close: code } };
    }
    // Unicode: escapes, surrogate halves and odd characters in valid JSON.
    const s = this.pick(['\\ud800', '\\udfff', '\\u0000', '\u{1F600}', '\u00e9', '\u202e', '\\u2028']);
    return this.app('unicode', `{"type":"${this.pick(['ping', 'presence', 'subscription'])}","data":{"project_id":"p${s}","action":"subscribe"},"message_id":"${s}"}`);
  }
}
