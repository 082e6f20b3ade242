import { findNatsServerBinary, NatsServerNotFoundError } from '../../src/nats/embedded-server.js';

/** Every integration test needs a real nats-server: say how to get one before running anything. */
export default function setup(): void {
  if (!findNatsServerBinary()) throw new NatsServerNotFoundError(process.env.NATS_SERVER_BIN || undefined);
}
