/**
 * The numbers behind `offline_messages` in the metrics.
 *
 * For now they count the direct messages the stream holds on `<prefix>.user.*` (one stream-info
 * request with a subject filter). The offline inbox (per-user durable consumers) may replace this
 * with its consumers' pending counts: keep the shape, change the body of `offlineMessageStats`.
 */
import type { NatsBroker } from './broker.js';

export interface OfflineStats {
  total_messages: number;
  users_with_messages: number;
}

export async function offlineMessageStats(broker: NatsBroker): Promise<OfflineStats> {
  const info = await broker.jsm.streams.info(broker.streamConfig().name, {
    subjects_filter: `${broker.prefix}.user.*`,
  });
  let total = 0;
  let users = 0;
  for (const n of Object.values(info.state.subjects ?? {})) {
    total += n;
    if (n > 0) users += 1;
  }
  return { total_messages: total, users_with_messages: users };
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
