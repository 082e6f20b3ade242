import { pickFreePorts } from '../../src/nats/embedded-server.js';

/** Asks the OS for free ports; holding them all open at once keeps a batch distinct. */
export const freePorts = pickFreePorts;

/** A port that was free a moment ago (another process may still take it before you bind it). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const [port] = await freePorts(1, host);
  return port;
}
