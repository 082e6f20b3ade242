/** Messages to the server, paced by a token bucket below the server's inbound limit (10/s, burst 20). */
import type { WebSocketLike } from './types.js';

export class Outbox {
  private queue: string[] = [];
  private budget = 0;
  private budgetAt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private socket: WebSocketLike | undefined;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
  ) {}

  /** A new connection: nothing queued, a full burst. */
  open(ws: WebSocketLike): void {
    this.close();
    this.socket = ws;
    this.budget = this.burst;
    this.budgetAt = Date.now();
  }

  /** The connection is gone: what is queued goes with it. */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.socket = undefined;
    this.queue = [];
  }

  /** `first`: ahead of everything queued (authentication). */
  push(text: string, first = false): void {
    if (first) this.queue.unshift(text);
    else this.queue.push(text);
    this.flush();
  }

  private flush(): void {
    const ws = this.socket;
    if (!ws) return;
    const now = Date.now();
    this.budget = Math.min(this.burst, this.budget + ((now - this.budgetAt) * this.rate) / 1000);
    this.budgetAt = now;
    while (this.queue.length > 0 && this.budget >= 1) {
      ws.send(this.queue.shift()!);
      this.budget -= 1;
    }
    if (this.queue.length > 0 && !this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.flush();
      }, Math.ceil(((1 - this.budget) * 1000) / this.rate));
    }
  }
}
