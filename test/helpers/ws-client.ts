/**
 * A raw WebSocket test client (in the style of graphql-ws's tests): records every message and
 * lets a test wait for the next one matching a predicate, or for the close frame.
 */
import WebSocket from 'ws';

type Pred = (m: any) => boolean;

export interface TestClient {
  ws: WebSocket;
  /** Every message received, in order: parsed JSON, or the raw text when it is not JSON. */
  messages: any[];
  /** JSON.stringify unless already a string or Buffer. */
  send(msg: unknown): void;
  /**
   * The first message (already received or future) matching `pred` that no earlier
   * waitForMessage call returned. Rejects after `timeoutMs` (default 5000) listing what arrived.
   */
  waitForMessage(pred?: Pred, timeoutMs?: number): Promise<any>;
  /** `n` such messages, in order, within one overall timeout. */
  waitForMessages(n: number, pred?: Pred, timeoutMs?: number): Promise<any[]>;
  waitForClose(timeoutMs?: number): Promise<{ code: number; reason: string }>;
  close(code?: number, reason?: string): void;
}

/** An upgrade the server refused; `status` is its HTTP status code. */
export class UpgradeRejectedError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
  ) {
    super(`WebSocket upgrade rejected with HTTP ${status}${body ? `: ${body}` : ''}`);
    this.name = 'UpgradeRejectedError';
  }
}

const DEFAULT_TIMEOUT_MS = 5_000;
const clients = new Set<TestClient>();

const describeMessage = (m: any): string => (m && typeof m === 'object' ? String(m.type) : JSON.stringify(m));

export function connectClient(
  url: string,
  opts: { headers?: Record<string, string>; origin?: string } = {},
): Promise<TestClient> {
  const ws = new WebSocket(url, { headers: opts.headers, origin: opts.origin });
  const messages: any[] = [];
  const taken = new Set<number>(); // indexes already handed out by waitForMessage
  const waiters: { pred: Pred; resolve: (m: any) => void }[] = [];
  let closed: { code: number; reason: string } | undefined;
  const closeWaiters: ((c: { code: number; reason: string }) => void)[] = [];

  ws.on('message', (data, isBinary) => {
    const text = isBinary ? undefined : data.toString();
    let msg: any = text ?? data;
    if (text !== undefined) {
      try {
        msg = JSON.parse(text);
      } catch {
        /* keep the raw text: a test may assert on it */
      }
    }
    const index = messages.push(msg) - 1;
    const w = waiters.findIndex((x) => x.pred(msg));
    if (w >= 0) {
      taken.add(index);
      waiters.splice(w, 1)[0].resolve(msg);
    }
  });
  ws.on('close', (code, reason) => {
    closed = { code, reason: reason.toString() };
    for (const fn of closeWaiters.splice(0)) fn(closed);
  });

  const client: TestClient = {
    ws,
    messages,
    send(msg) {
      ws.send(typeof msg === 'string' || Buffer.isBuffer(msg) ? msg : JSON.stringify(msg));
    },
    waitForMessage(pred = () => true, timeoutMs = DEFAULT_TIMEOUT_MS) {
      const index = messages.findIndex((m, i) => !taken.has(i) && pred(m));
      if (index >= 0) {
        taken.add(index);
        return Promise.resolve(messages[index]);
      }
      return new Promise((resolve, reject) => {
        const waiter = {
          pred,
          resolve: (m: any) => {
            clearTimeout(timer);
            resolve(m);
          },
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1);
          const seen = messages.map(describeMessage).join(', ') || 'none';
          const state = closed ? `; socket closed ${closed.code} ${closed.reason}` : '';
          reject(new Error(`no matching message within ${timeoutMs} ms (received: ${seen}${state})`));
        }, timeoutMs);
        waiters.push(waiter);
      });
    },
    async waitForMessages(n, pred, timeoutMs = DEFAULT_TIMEOUT_MS) {
      const deadline = Date.now() + timeoutMs;
      const out: any[] = [];
      while (out.length < n) out.push(await client.waitForMessage(pred, Math.max(0, deadline - Date.now())));
      return out;
    },
    waitForClose(timeoutMs = DEFAULT_TIMEOUT_MS) {
      if (closed) return Promise.resolve(closed);
      return new Promise((resolve, reject) => {
        const done = (c: { code: number; reason: string }) => {
          clearTimeout(timer);
          resolve(c);
        };
        const timer = setTimeout(() => {
          closeWaiters.splice(closeWaiters.indexOf(done), 1);
          reject(new Error(`socket not closed within ${timeoutMs} ms`));
        }, timeoutMs);
        closeWaiters.push(done);
      });
    },
    close(code, reason) {
      ws.close(code, reason);
    },
  };
  clients.add(client);
  ws.once('close', () => clients.delete(client));

  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      reject(err);
    };
    ws.once('open', () => {
      settled = true;
      resolve(client);
    });
    ws.on('error', (err) => fail(err)); // later errors surface through close codes instead
    // Listening here stops ws from turning the refusal into a bare 'error'; read the body for the message.
    ws.once('unexpected-response', (req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (body.length < 2_000) body += chunk;
      });
      res.on('end', () => {
        fail(new UpgradeRejectedError(res.statusCode ?? 0, body));
        ws.terminate();
      });
      res.on('error', () => {
        fail(new UpgradeRejectedError(res.statusCode ?? 0, body));
        req.destroy();
      });
    });
  });
}

/** Terminates every client still open (for afterEach). */
export async function closeAllClients(): Promise<void> {
  const open = [...clients];
  clients.clear();
  await Promise.all(
    open.map((c) => {
      if (c.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
      const closed = new Promise<void>((resolve) => c.ws.once('close', () => resolve()));
      c.ws.terminate();
      return closed;
    }),
  );
}
