import { describe, expect, it } from 'vitest';
import { ErrorBudget, OutboundPacer, TokenBucket } from '../../src/core/limits.js';

describe('TokenBucket', () => {
  it('allows the burst at once, then the rate', () => {
    const b = new TokenBucket(10, 20, 0);
    let taken = 0;
    while (b.tryTake(0)) taken++;
    expect(taken).toBe(20);
    expect(b.tryTake(50)).toBe(false); // 0.5 token
    expect(b.tryTake(100)).toBe(true); // 1 token after 100 ms at 10/s
    expect(b.takeUpTo(100, 1100)).toBe(10); // one second refills 10
    expect(b.takeUpTo(100, 100_000)).toBe(20); // never more than the burst
  });

  it('tells how long until n tokens are there', () => {
    const b = new TokenBucket(10, 20, 0);
    b.takeUpTo(20, 0);
    expect(b.msUntil(5, 0)).toBe(500);
    expect(b.msUntil(5, 500)).toBe(0);
  });
});

describe('ErrorBudget', () => {
  it('reports exhaustion at maxErrors within the window and resets after it', () => {
    const e = new ErrorBudget(3, 1000);
    expect(e.record(0)).toBe(false);
    expect(e.record(10)).toBe(false);
    expect(e.record(20)).toBe(true);
    const f = new ErrorBudget(3, 1000);
    f.record(0);
    f.record(10);
    expect(f.record(1500)).toBe(false); // new window
  });
});

describe('OutboundPacer', () => {
  it('runs one grant per connection at a time and drops idle limiters', async () => {
    const pacer = new OutboundPacer({ leaseInterval: 10, idleTimeout: 50 });
    let grants = 0;
    await new Promise<void>((ok) => {
      pacer.schedule('c1', () => {
        grants++;
        ok();
      });
      pacer.schedule('c1', () => grants++); // coalesced with the waiting one
    });
    expect(grants).toBe(1);
    expect(pacer.activeLimiters).toBe(1);
    pacer.forget('c1');
    expect(pacer.activeLimiters).toBe(0);
    await pacer.stop();
  });
});
