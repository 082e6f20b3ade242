/** The upgrade's request target read without a URL parse when it is the plain `/ws/connect?token=...`. */
import { describe, expect, it } from 'vitest';
import { plainTargetToken, WS_PATH } from '../../src/http/server.js';

describe('plainTargetToken', () => {
  it('gives the token URLSearchParams would, or leaves the target to a full URL parse', () => {
    const queries = ['', 'token=abc.def-ghi_jk', 'token=', 'token', 'a=1&token=x&token=y', '&&token=a=b', 'tok=1', 'TOKEN=x', '=x&token=z', 'x=~.&token=~'];
    const leftToUrl = ['token=a%20b', 'token=a+b', 'token=a#frag', 'token=é'];
    for (const q of queries) {
      const target = `${WS_PATH}?${q}`;
      const plain = plainTargetToken(target);
      expect(plain, target).not.toBeNull();
      const url = new URL(target, 'http://localhost');
      expect(url.pathname).toBe(WS_PATH);
      expect(plain ?? null, target).toBe(url.searchParams.get('token'));
    }
    for (const q of leftToUrl) expect(plainTargetToken(`${WS_PATH}?${q}`), q).toBeNull();
    for (const target of ['/ws/connect/', '/ws/connectx?token=a', '/ws/./connect?token=a', '//ws/connect?token=a', 'http://h/ws/connect?token=a', '/']) {
      expect(plainTargetToken(target), target).toBeNull();
    }
    expect(plainTargetToken(WS_PATH)).toBeUndefined();
  });
});
