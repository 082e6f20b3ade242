// WebSocket plumbing shared by both client kinds: opening a socket for a client's setup (with a
// deadline), the bytes its TCP socket read, and dropping it with a TCP reset.

import WebSocket from 'ws';
import { phase } from './measurement.js';

const WS_OPTS = {
  perMessageDeflate: false,
  // Frames are not decoded as text in the hot path; the 1-in-1024 sample is parsed strictly (measurement.js).
  skipUTF8Validation: true,
  maxPayload: 16 * 1024 * 1024,
};

/** Sockets of ready clients that closed without us closing them, over the process's life. */
let closedByServer = 0;
export const closedByServerTotal = () => closedByServer;

/**
 * Opens `client.ws` (to `client.url`) for a client's setup. `fail` (also called at the deadline,
 * or when the socket closes before the client is ready) drops the socket and rejects; `settled`
 * ends the deadline once setup is done. A socket closed after that counts as closed by the server.
 * @param {{ url: string, ws?: WebSocket, ready: boolean }} client
 * @param {number} timeoutMs
 * @param {(err: Error) => void} reject
 * @param {{ protocols?: string[], perMessageDeflate?: boolean }} [opts] subprotocols to offer; offer permessage-deflate
 */
export function openForSetup(client, timeoutMs, reject, { protocols = [], perMessageDeflate = false } = {}) {
  const timer = setTimeout(() => fail(new Error('setup timeout')), timeoutMs);
  const fail = (err) => {
    clearTimeout(timer);
    client.ws?.terminate();
    reject(err);
  };
  const ws = (client.ws = new WebSocket(client.url, protocols, {
    ...WS_OPTS,
    perMessageDeflate,
    handshakeTimeout: timeoutMs,
  }));
  ws.on('close', (code) => {
    if (!client.ready) return fail(new Error(`closed during setup (${code})`));
    closedByServer++;
    if (phase) phase.closed++;
  });
  return { ws, fail, settled: () => clearTimeout(timer) };
}

/** Bytes the client's TCP socket has read (ws keeps it in the private `_socket`). */
export function bytesRead(c) {
  return /** @type {any} */ (c.ws)?._socket?.bytesRead ?? 0;
}

/** @param {WebSocket | undefined} ws */
export function resetClose(ws) {
  // ws keeps its net.Socket in the (private) _socket field; fall back to terminate() without it.
  const sock = /** @type {any} */ (ws)?._socket;
  if (sock && typeof sock.resetAndDestroy === 'function' && !sock.destroyed) sock.resetAndDestroy();
  else ws?.terminate();
}
