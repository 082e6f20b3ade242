/**
 * Per-connection budgets. Two kinds of limiter live here, each where it is cheap enough:
 *
 * - TokenBucket: a lazily refilled counter, no timers. It admits or refuses synchronously, so a
 *   flooding client is turned away before its frame is parsed, and an event within budget costs
 *   one subtraction. (Bottleneck costs ~400 µs of CPU per job, measured: BENCHMARKS.md).)
 * - OutboundPacer: Bottleneck, for the slow lane only. When a connection has spent its burst, its
 *   queued frames wait for a Bottleneck job that grants the next lease of budget; one job buys a
 *   whole lease of sends, never one per message. Limiters are created lazily in a Bottleneck.Group
 *   and dropped as soon as the connection's backlog drains (the Group's idle timeout is a backstop),
 *   so connections within budget, idle or not, hold no limiter and no timer.
 *
 * Measured on the 2-core dev machine (bench/limiter-cost.js, figures in docs/protection.md): a
 * bucket check costs a few ns; a Bottleneck job costs hundreds of µs of CPU and milliseconds of
 * latency, and can only answer through a promise.
 */
import Bottleneck from 'bottleneck';

export class TokenBucket {
  private tokens: number;
  private last: number;
  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }

  private refill(now: number): void {
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.ratePerSecond) / 1000);
      this.last = now;
    }
  }

  /** Take one token if there is one. */
  tryTake(now: number): boolean {
    this.refill(now);
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    return false;
  }

  /** Take up to `wanted` whole tokens; returns how many were taken. */
  takeUpTo(wanted: number, now: number): number {
    this.refill(now);
    const n = Math.min(wanted, Math.floor(this.tokens));
    this.tokens -= n;
    return n;
  }
}

/** Fixed-window error counter: the Go package's MaxErrors per ErrorResetInterval. */
export class ErrorBudget {
  private count = 0;
  private windowStart = 0;
  constructor(
    private readonly maxErrors: number,
    private readonly windowMs: number,
  ) {}

  /** Record one error; true when this error exhausts the budget. */
  record(now: number): boolean {
    if (now - this.windowStart >= this.windowMs) {
      this.windowStart = now;
      this.count = 0;
    }
    this.count += 1;
    return this.count >= this.maxErrors;
  }

  /** Errors counted in the current window; 0 once the window has passed. */
  get errors(): number {
    return Date.now() - this.windowStart >= this.windowMs ? 0 : this.count;
  }
}

export interface PacerOptions {
  /** How often a slow connection may be granted a new lease, ms. */
  leaseInterval: number;
  /** Drop a connection's limiter after this long without jobs, ms. */
  idleTimeout: number;
}

export class OutboundPacer {
  private readonly group: Bottleneck.Group;
  private readonly waiting = new Set<string>();

  constructor(options: PacerOptions) {
    this.group = new Bottleneck.Group({ maxConcurrent: 1, minTime: options.leaseInterval, timeout: options.idleTimeout });
  }

  /**
   * Run `grant` on the connection's limiter once its turn comes. At most one job per connection
   * is queued at a time; a second call while one waits is a no-op.
   */
  schedule(connectionId: string, grant: () => void): void {
    if (this.waiting.has(connectionId)) return;
    this.waiting.add(connectionId);
    this.group
      .key(connectionId)
      .schedule(async () => {
        this.waiting.delete(connectionId);
        grant();
      })
      .catch(() => this.waiting.delete(connectionId));
  }

  /** Drop the connection's limiter (its backlog drained, or it closed). */
  forget(connectionId: string): void {
    this.waiting.delete(connectionId);
    void this.group.deleteKey(connectionId);
  }

  /** Limiters currently alive (created lazily, removed when idle). */
  get activeLimiters(): number {
    return this.group.keys().length;
  }

  async stop(): Promise<void> {
    await Promise.all(this.group.limiters().map(({ limiter }) => limiter.stop({ dropWaitingJobs: true })));
  }
}
