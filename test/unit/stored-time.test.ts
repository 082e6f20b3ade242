import { describe, expect, it } from 'vitest';
import { isoTime, storedMsOf } from '../../src/nats/history.js';

describe('isoTime', () => {
  it('formats like Date#toISOString, within a second and across seconds', () => {
    const base = Date.parse('2026-12-02T06:41:12.000Z');
    for (const ms of [base, base + 7, base + 42, base + 999, base + 1000, base + 61_005, 0, Date.parse('1999-12-31T23:59:59.999Z')]) {
      expect(isoTime(ms)).toBe(new Date(ms).toISOString());
    }
    const far = Date.parse('+012026-01-01T00:00:00.001Z');
    expect(isoTime(far)).toBe(new Date(far).toISOString());
  });
});

describe('storedMsOf', () => {
  it('takes the store time of a reader message from its delivery info, and of a direct get from its timestamp', () => {
    const ms = Date.parse('2026-12-02T06:41:12.345Z');
    expect(storedMsOf({ seq: 1, data: new Uint8Array(), timestamp: 'unused', info: { timestampNanos: ms * 1e6 + 678_901 } })).toBe(ms);
    expect(storedMsOf({ seq: 1, data: new Uint8Array(), timestamp: '2026-12-02T06:41:12.345678901Z' })).toBe(ms);
  });
});
