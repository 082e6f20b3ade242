/**
 * The numbers behind `offline_messages` in the metrics, from JetStream: per user, the stored
 * direct messages that the user's key in the inbox bucket does not acknowledge (see
 * Inboxes.stats in inbox.ts).
 */
import type { NatsBroker } from './broker.js';
import type { OfflineStats } from './inbox.js';

export type { OfflineStats };

export function offlineMessageStats(broker: NatsBroker): Promise<OfflineStats> {
  return broker.inboxes.stats();
}

/**
 * Read at most once per `maxAge` ms (unless asked for `fresh` numbers), so scrapes cost one
 * stream-info request per period whatever the number of scrapers; concurrent callers share one
 * request. While NATS is down the last numbers stand.
 */
export function cachedOfflineStats(broker: NatsBroker, maxAge: number): (fresh?: boolean) => Promise<OfflineStats> {
  let value: OfflineStats = { total_messages: 0, users_with_messages: 0 };
  let at = Number.NEGATIVE_INFINITY;
  let pending: Promise<OfflineStats> | undefined;
  return (fresh = false) => {
    if ((!fresh && Date.now() - at < maxAge) || !broker.connected) return Promise.resolve(value);
    pending ??= offlineMessageStats(broker)
      .then((v) => {
        value = v;
        at = Date.now();
        return v;
      })
      .catch(() => value)
      .finally(() => {
        pending = undefined;
      });
    return pending;
  };
}
