/**
 * `nats-ws-sidecar/client`: the browser and Node client SDK. Dependency-free: in a browser it
 * uses the native WebSocket; in Node 20 pass `WebSocket` from the `ws` package.
 */
export {
  Client,
  type Options,
  type ConnectionState,
  type SidecarEvent,
  type SubscribedInfo,
  type HistoryTruncatedInfo,
  type LifecycleEvents,
  type ClientEvents,
  type EventTypes,
  type TokenProvider,
  type UrlProvider,
  type WebSocketLike,
  type WebSocketConstructor,
} from './client.js';
export type { HistoryOptions, HistoryPage } from './history.js';
export { ClientError, ClientErrorCode } from './errors.js';
export { uploadFile, httpBaseOf, type FileInfo, type UploadOptions, type UploadSource, type UploadContext } from './uploads.js';
export { tokenExpiresAt } from './token.js';
export {
  BATCH_PROTOCOL,
  CloseCode,
  ErrorCode,
  MessageType,
  reconnectPolicy,
  type ReconnectPolicy,
  type Envelope,
  type EventEnvelope,
} from '../protocol-codes.js';
export type * from '../events.js';
