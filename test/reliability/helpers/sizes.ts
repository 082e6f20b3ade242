/**
 * Short versions run in `npm test`; `npm run test:reliability` sets RELIABILITY_FULL=1 for the
 * sizes the issue asks for (and the figures in RELIABILITY.md).
 */
export const FULL = process.env.RELIABILITY_FULL === '1';

/** `ci` in the short version, `full` with RELIABILITY_FULL=1. */
export function size<T>(ci: T, full: T): T {
  return FULL ? full : ci;
}
