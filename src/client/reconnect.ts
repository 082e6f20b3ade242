/** Where and when to connect again: the URL of an attempt, and the backoff before it. */
import type { Options } from './types.js';

/** One URL; the next of a list, in turn; or the provider's answer for this attempt. */
export function urlFor(source: Options['url'], attempt: number): string {
  const url = typeof source === 'string' ? source : typeof source === 'function' ? source(attempt) : source[attempt % source.length];
  if (typeof url !== 'string' || url.length === 0) throw new Error('options.url gave no URL');
  return url;
}

/** The first URL, without counting an attempt (for HTTP requests before any connection). */
export function firstUrl(source: Options['url']): string {
  return typeof source === 'string' ? source : typeof source === 'function' ? source(0) : source[0];
}

/** Exponential backoff with "equal jitter": half fixed, half random, so a fleet of clients spreads out. */
export function backoff(attempt: number, min: number, max: number): number {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}
