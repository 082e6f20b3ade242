/** Browsers cannot see the server's WebSocket pings, so a silent dead connection is found with app-level pings. */
export class Keepalive {
  private lastReceived = 0;
  private pingSentAt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly interval: number,
    private readonly pongTimeout: number,
  ) {}

  /** Any inbound frame shows the connection alive. */
  received(): void {
    this.lastReceived = Date.now();
  }

  /** `ping` after `interval` of silence; `dead` when nothing answered it within `pongTimeout`. */
  start(hooks: { ping(): void; dead(): void }): void {
    this.stop();
    const { interval, pongTimeout } = this;
    if (interval <= 0) return;
    const tick = (): void => {
      const now = Date.now();
      if (this.pingSentAt > this.lastReceived && now - this.pingSentAt >= pongTimeout) {
        this.timer = undefined;
        hooks.dead();
        return;
      }
      if (this.pingSentAt <= this.lastReceived && now - this.lastReceived >= interval) {
        this.pingSentAt = now;
        hooks.ping();
      }
      this.timer = setTimeout(tick, Math.min(interval, pongTimeout) / 2);
    };
    this.lastReceived = Date.now();
    this.pingSentAt = 0;
    this.timer = setTimeout(tick, Math.min(interval, pongTimeout) / 2);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
