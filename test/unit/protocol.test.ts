import { describe, expect, it } from 'vitest';
import { CloseCode, encodeEvent, ErrorCode, EventError, parseClientMessage, ProtocolError, errorMessage } from '../../src/protocol.js';

function refusal(text: string): ProtocolError {
  try {
    parseClientMessage(text);
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error(`accepted: ${text}`);
}

describe('parseClientMessage', () => {
  it('accepts every client message of the contract', () => {
    expect(parseClientMessage('{"type":"auth","data":{"token":"abc"}}').type).toBe('auth');
    expect(parseClientMessage('{"type":"subscription","data":{"action":"subscribe","project_id":"p-1","since":7}}')).toMatchObject({
      data: { action: 'subscribe', project_id: 'p-1', since: 7 },
    });
    expect(parseClientMessage('{"type":"subscription","data":{"action":"unsubscribe","project_id":"p_1"}}').type).toBe('subscription');
    expect(parseClientMessage('{"type":"ping"}').type).toBe('ping');
    expect(parseClientMessage('{"type":"ping","data":{"anything":[1]}}').type).toBe('ping');
    expect(parseClientMessage('{"type":"ack","data":{"seq":3},"message_id":"m1","timestamp":"2026-01-01T00:00:00Z"}')).toMatchObject({
      data: { seq: 3 },
      message_id: 'm1',
    });
  });

  it('returns the frames of a connect with their known fields only, in the schema order, as the full schema does', () => {
    const parsed = (text: string) => JSON.stringify(parseClientMessage(text));
    expect(parsed('{"x":1,"message_id":"m1","data":{"z":2,"project_id":"p1","action":"subscribe"},"type":"subscription","timestamp":"t"}')).toBe(
      '{"type":"subscription","data":{"action":"subscribe","project_id":"p1"},"timestamp":"t","message_id":"m1"}',
    );
    expect(parsed('{"type":"subscription","data":{"project_id":"p1","action":"unsubscribe","since":3}}')).toBe(
      '{"type":"subscription","data":{"action":"unsubscribe","project_id":"p1"}}',
    );
    expect(parsed('{"type":"ack","data":{"seq":7,"x":1},"y":2}')).toBe('{"type":"ack","data":{"seq":7}}');
    expect(parsed('{"type":"ping","data":null,"message_id":"m"}')).toBe('{"type":"ping","data":null,"message_id":"m"}');
    expect(parsed('{"type":"ping"}')).toBe('{"type":"ping"}');
    // A resume keeps since and epoch; bad envelopes keep the schema's messages.
    expect(parsed('{"type":"subscription","data":{"action":"subscribe","project_id":"p1","since":0,"epoch":"e"}}')).toBe(
      '{"type":"subscription","data":{"action":"subscribe","project_id":"p1","since":0,"epoch":"e"}}',
    );
    expect(refusal(`{"type":"ping","message_id":"${'m'.repeat(129)}"}`).message).toMatch(/field "message_id"/);
    expect(refusal('{"type":"ack","data":{"seq":1},"timestamp":5}').message).toMatch(/field "timestamp"/);
    expect(refusal('{"type":"ack","data":{"seq":0}}').message).toMatch(/field "data\.seq"/);
    expect(refusal('{"type":"subscription","data":{"action":"leave","project_id":"p1"}}').message).toMatch(/field "data\.action"/);
  });

  it('refuses text that is not a JSON object with invalid_message', () => {
    for (const text of ['', 'nope', '[]', '1', 'null', '"s"', '{"type":1}', '{}']) {
      expect(refusal(text).code).toBe(ErrorCode.InvalidMessage);
    }
  });

  it('names an unknown type, and the bad field of a known one', () => {
    expect(refusal('{"type":"fly","data":{}}').message).toMatch(/unknown message type "fly"/);
    expect(refusal('{"type":"ack","data":{"seq":-1}}').message).toMatch(/data\.seq/);
    expect(refusal('{"type":"subscription","data":{"action":"subscribe"}}').message).toMatch(/project_id/);
    expect(refusal('{"type":"auth","data":{}}').message).toMatch(/token/);
  });

  it('refuses project ids that are not NATS-safe tokens and non-integer since', () => {
    for (const id of ['a.b', 'a b', '*', '>', '', 'é', 'x'.repeat(129)]) {
      const text = JSON.stringify({ type: 'subscription', data: { action: 'subscribe', project_id: id } });
      expect(refusal(text).code).toBe(ErrorCode.InvalidMessage);
    }
    expect(refusal('{"type":"subscription","data":{"action":"subscribe","project_id":"p","since":1.5}}').code).toBe('invalid_message');
    expect(refusal('{"type":"subscription","data":{"action":"subscribe","project_id":"p","since":1e300}}').code).toBe('invalid_message');
  });

  it('survives deeply nested and huge-number input', () => {
    expect(refusal('['.repeat(10_000) + ']'.repeat(10_000)).code).toBe('invalid_message');
    expect(refusal('{"type":"ack","data":{"seq":1e400}}').code).toBe('invalid_message');
  });
});

describe('encodeEvent', () => {
  it('adds seq and project_id and keeps type, data, timestamp and message_id', () => {
    const text = encodeEvent('{"type":"task_created","data":{"id":1},"timestamp":"T","message_id":"M"}', { seq: 9, projectId: 'p' });
    expect(JSON.parse(text)).toEqual({ type: 'task_created', data: { id: 1 }, timestamp: 'T', message_id: 'M', seq: 9, project_id: 'p' });
  });

  it('fills a missing message_id from Nats-Msg-Id, else from the seq, so replays keep the same id', () => {
    expect(JSON.parse(encodeEvent('{"type":"a","data":{}}', { seq: 4, msgId: 'x1' })).message_id).toBe('x1');
    const once = JSON.parse(encodeEvent('{"type":"a","data":{}}', { seq: 4 }));
    expect(once.message_id).toBe('seq-4');
    expect(once.project_id).toBeUndefined();
    expect(new Date(once.timestamp).toString()).not.toBe('Invalid Date');
  });

  it('gives the same envelope whether it keeps the published text or rebuilds it', () => {
    const cases: [string, Record<string, unknown>][] = [
      ['{"type":"a","data":{"x":[1,"}"]}}  ', { type: 'a', data: { x: [1, '}'] }, timestamp: 'S', message_id: 'seq-7', seq: 7, project_id: 'p' }],
      ['{"type":"a","data":{},"message_id":"M"}', { type: 'a', data: {}, timestamp: 'S', message_id: 'M', seq: 7, project_id: 'p' }],
      // Rebuilt: fields that are not the envelope's, an empty id, a timestamp that is no string.
      ['{"type":"a","data":{},"seq":1,"project_id":"q","extra":true}', { type: 'a', data: {}, timestamp: 'S', message_id: 'seq-7', seq: 7, project_id: 'p' }],
      ['{"type":"a","data":{},"message_id":""}', { type: 'a', data: {}, timestamp: 'S', message_id: 'seq-7', seq: 7, project_id: 'p' }],
      ['{"type":"a","data":{},"timestamp":5}', { type: 'a', data: {}, timestamp: 'S', message_id: 'seq-7', seq: 7, project_id: 'p' }],
    ];
    for (const [payload, expected] of cases) {
      expect(JSON.parse(encodeEvent(payload, { seq: 7, projectId: 'p', storedAt: () => 'S' }))).toEqual(expected);
    }
  });

  it('never puts a raw newline in an envelope, even when the published JSON had one', () => {
    const text = encodeEvent('{\n  "type": "a",\n  "data": {"s": "line\\nbreak"}\n}\n', { seq: 3 });
    expect(text).not.toContain('\n');
    expect(JSON.parse(text)).toMatchObject({ type: 'a', data: { s: 'line\nbreak' }, seq: 3 });
  });

  it('refuses payloads without a string type or an object data', () => {
    for (const bad of ['x', '[]', '{"data":{}}', '{"type":"","data":{}}', '{"type":"a"}', '{"type":"a","data":[1]}']) {
      expect(() => encodeEvent(bad, { seq: 1 })).toThrow(EventError);
    }
  });
});

describe('codes', () => {
  it('keeps the contract close codes', () => {
    expect(CloseCode).toMatchObject({ GoingAway: 1001, MessageTooBig: 1009, Unauthorized: 4401, AuthTimeout: 4408, TooManyErrors: 4429 });
  });

  it('serialises errors in the envelope with code and message', () => {
    const m = JSON.parse(errorMessage(ErrorCode.Forbidden, 'no', { project_id: 'p' }));
    expect(m).toMatchObject({ type: 'error', data: { code: 'forbidden', message: 'no', project_id: 'p' } });
    expect(typeof m.timestamp).toBe('string');
    expect(typeof m.message_id).toBe('string');
  });
});
