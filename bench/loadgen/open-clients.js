// The clients this process holds open, across commands: counted by arm/collect, dropped by closeAll.

/** @type {Array<import('./nats-ws-client.js').NatsWsClient | import('./contract-client.js').ContractClient>} */
export const clients = [];

/** The history scenario's connection per target URL (also in `clients`). */
export const historyClients = new Map();

/** Forgets every client (after closing them); returns how many there were. */
export function forgetAll() {
  const n = clients.length;
  clients.length = 0;
  historyClients.clear();
  return n;
}
