/**
 * Internals for the project's own tests and benchmarks (bench/ imports the built dist/internal.js).
 * Not API: anything here may change without notice. Library users import from the package root.
 */
export { createTokenVerifier, mintToken } from './auth.js';
export { loadConfig } from './config.js';
export { Hub } from './core/hub.js';
export { OutboundPacer, TokenBucket } from './core/limits.js';
export { createLogger } from './logger.js';
export { NatsBroker } from './nats/broker.js';
export { startEmbeddedNats, pickFreePorts } from './nats/embedded-server.js';
export { Inboxes } from './nats/inbox.js';
export { encodeEvent, parseClientMessage } from './protocol.js';
export { projectPresence } from './http/presence-routes.js';
export { Sidecar } from './sidecar.js';
