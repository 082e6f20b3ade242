/**
 * shapeDeflateOffers: offers the shared compressed frames cannot serve are dropped (the client is
 * then served uncompressed, not refused), and a client window the server may choose is made small.
 */
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { INBOUND_WINDOW_BITS, shapeDeflateOffers } from '../../src/http/server.js';

function shaped(header: string | undefined): string | undefined {
  const req = { headers: header === undefined ? {} : { 'sec-websocket-extensions': header } } as unknown as IncomingMessage;
  shapeDeflateOffers(req);
  return req.headers['sec-websocket-extensions'];
}

describe('shapeDeflateOffers', () => {
  it('leaves requests without permessage-deflate alone', () => {
    expect(shaped(undefined)).toBeUndefined();
    expect(shaped('x-webkit-deflate-frame')).toBe('x-webkit-deflate-frame');
  });

  it('chooses a small client window where the client lets the server choose one', () => {
    expect(shaped('permessage-deflate; client_max_window_bits')).toBe(`permessage-deflate; client_max_window_bits=${INBOUND_WINDOW_BITS}`);
    expect(shaped('permessage-deflate; client_max_window_bits=12')).toBe(`permessage-deflate; client_max_window_bits=${INBOUND_WINDOW_BITS}`);
    expect(shaped('permessage-deflate; client_max_window_bits="8"')).toBe('permessage-deflate; client_max_window_bits=8');
    expect(shaped('permessage-deflate')).toBe('permessage-deflate');
  });

  it('drops offers that need a server window below 15 bits, keeping the others', () => {
    expect(shaped('permessage-deflate; server_max_window_bits=10')).toBeUndefined();
    expect(shaped('permessage-deflate; server_max_window_bits=10, permessage-deflate')).toBe('permessage-deflate');
    expect(shaped('permessage-deflate; server_max_window_bits=15; server_no_context_takeover')).toBe(
      'permessage-deflate; server_max_window_bits=15; server_no_context_takeover',
    );
  });
});
