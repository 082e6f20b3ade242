import { describe, expect, it } from 'vitest';
import { ErrorBudget, OutboundPacer, TokenBucket } from '../../src/core/limits.js';

describe('TokenBucket', () => {
  it('admits a burst, then refills at its rate without any timer', () => {
    const bucket = new TokenBucket(10, 20, 0);
    let admitted = 0;
    for (let i = 0; i < 100; i++) if (bucket.tryTake(0)) admitted++;
    expect(admitted).toBe(20);
    expect(bucket.tryTake(50)).toBe(false); // half a token
    expect(bucket.tryTake(100)).toBe(true); // 100 ms at 10/s = 1 token
    expect(bucket.tryTake(100)).toBe(false);
  });

  it('never holds more than its burst, however long it idles', () => {
    const bucket = new TokenBucket(10, 20, 0);
    expect(bucket.takeUpTo(1000, 3_600_000)).toBe(20);
  });

  it('grants whole tokens only in takeUpTo', () => {
    const bucket = new TokenBucket(1000, 10, 0);
    expect(bucket.takeUpTo(25, 0)).toBe(10);
    expect(bucket.takeUpTo(25, 5)).toBe(5);
    expect(bucket.takeUpTo(25, 5)).toBe(0);
  });
});

describe('ErrorBudget', () => {
  it('is exhausted by maxErrors errors within the window', () => {
    const budget = new ErrorBudget(3, 1000);
    expect(budget.record(0)).toBe(false);
    expect(budget.record(10)).toBe(false);
    expect(budget.record(20)).toBe(true);
  });

  it('starts a fresh window after errorResetInterval', () => {
    const budget = new ErrorBudget(3, 1000);
    budget.record(0);
    budget.record(10);
    expect(budget.record(1000)).toBe(false); // new window: 1 error
    expect(budget.record(1500)).toBe(false);
    expect(budget.record(1999)).toBe(true);
  });

  it('reports the errors of the current window and 0 once it has passed', () => {
    const budget = new ErrorBudget(5, 60_000);
    expect(budget.errors).toBe(0);
    budget.record(Date.now());
    budget.record(Date.now());
    expect(budget.errors).toBe(2);
    const old = new ErrorBudget(5, 1000);
    old.record(Date.now() - 5000);
    expect(old.errors).toBe(0);
  });
});

describe('OutboundPacer', () => {
  it('creates a limiter on first use, runs one grant per schedule, and holds none after forget', async () => {
    const pacer = new OutboundPacer({ leaseInterval: 10, idleTimeout: 60_000 });
    expect(pacer.activeLimiters).toBe(0);
    let grants = 0;
    const granted = new Promise<void>((ok) =>
      pacer.schedule('c1', () => {
        grants++;
        ok();
      }),
    );
    pacer.schedule('c1', () => grants++); // already waiting: a no-op
    expect(pacer.activeLimiters).toBe(1);
    await granted;
    expect(grants).toBe(1);
    pacer.forget('c1');
    expect(pacer.activeLimiters).toBe(0);
    await pacer.stop();
  });

  it('spaces the leases of one connection by leaseInterval', async () => {
    const pacer = new OutboundPacer({ leaseInterval: 100, idleTimeout: 60_000 });
    const times: number[] = [];
    await new Promise<void>((ok) => pacer.schedule('c', () => ok(void times.push(Date.now()))));
    await new Promise<void>((ok) => pacer.schedule('c', () => ok(void times.push(Date.now()))));
    expect(times[1] - times[0]).toBeGreaterThanOrEqual(90);
    pacer.forget('c');
    await pacer.stop();
  });
});
