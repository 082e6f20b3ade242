/**
 * Public API for library use. Everything not exported here is internal; the project's own tests
 * and benchmarks reach internals through src/internal.ts.
 */
export { Sidecar, type SidecarOptions } from './sidecar.js';
export { loadConfig, parseDuration, type Config, type ConfigInput, type LoadConfigOptions } from './config.js';
export { createTokenVerifier, mintToken, type Principal, type TokenVerifier, type MintOptions } from './auth.js';
export { SidecarError, ConfigError, AuthError, AuthErrorCode } from './errors.js';
export {
  MessageType,
  ErrorCode,
  CloseCode,
  ProtocolError,
  type ClientMessage,
  type PublishedEvent,
} from './protocol.js';
export { reconnectPolicy, type ReconnectPolicy } from './protocol-codes.js';
export { findNatsServerBinary, NatsServerNotFoundError } from './nats/embedded-server.js';
export { IdentityHeader, clientEventSubject } from './nats/client-events.js';
export { publishRevocation, revokeSubject, type AuthorizationRequest } from './nats/project-authorizer.js';
