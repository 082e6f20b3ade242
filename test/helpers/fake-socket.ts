/**
 * An in-memory WebSocket for the client SDK that plays the server's side of the protocol: it
 * records what the client sends and delivers what a test makes the server say. Every socket made
 * is kept in `FakeSocket.all`, in order, so a test finds the one a reconnect opened.
 */
import type { WebSocketLike } from '../../src/client/index.js';

export class FakeSocket implements WebSocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: any[] = [];
  onopen: ((e: any) => void) | null = null;
  onmessage: ((e: any) => void) | null = null;
  onclose: ((e: any) => void) | null = null;
  onerror: ((e: any) => void) | null = null;
  private sentWaiters: { pred: (m: any) => boolean; resolve: (m: any) => void }[] = [];

  constructor(readonly url: string) {
    FakeSocket.all.push(this);
    queueMicrotask(() => {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.({});
    });
  }

  send(text: string): void {
    const m = JSON.parse(text);
    this.sent.push(m);
    const i = this.sentWaiters.findIndex((w) => w.pred(m));
    if (i >= 0) this.sentWaiters.splice(i, 1)[0].resolve(m);
  }

  close(code = 1005, reason = ''): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  // ---- the server's side ----
  deliver(msg: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify({ timestamp: 't', message_id: 'm', data: {}, ...msg }) });
  }

  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The next message the client sends that matches (or one it already sent). */
  nextSent(pred: (m: any) => boolean): Promise<any> {
    const found = this.sent.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve) => this.sentWaiters.push({ pred, resolve }));
  }

  /** Plays the handshake: auth_required, then auth_success once the client sent its token. */
  async accept(user = 'u1', epoch?: string): Promise<string> {
    await new Promise((r) => queueMicrotask(() => r(undefined)));
    this.deliver({ type: 'auth_required', data: { message: 'auth' } });
    const auth = await this.nextSent((m) => m.type === 'auth');
    this.deliver({ type: 'auth_success', data: { user_id: user, connection_id: `c${FakeSocket.all.length}`, epoch } });
    return auth.data.token;
  }

  /** Answers a subscribe for `projectId` and returns its data (with `since`). */
  async answerSubscribe(projectId: string, extra: Record<string, unknown> = {}): Promise<any> {
    const req = await this.nextSent((m) => m.type === 'subscription' && m.data.project_id === projectId && !m.answered);
    req.answered = true;
    this.deliver({ type: 'subscription', data: { action: 'subscribed', project_id: projectId, ...extra } });
    return req.data;
  }
}
