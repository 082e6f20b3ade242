/** Config keys and client messages of presence, project authorization and client-sent events. */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { ProtocolError, parseClientMessage } from '../../src/protocol.js';

const load = (env: Record<string, string> = {}) => loadConfig({ env });

function refusedKey(env: Record<string, string>): string {
  try {
    load(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).key;
  }
  throw new Error('accepted');
}

describe('config', () => {
  it('defaults to claims authorization, no client events and a 30 s presence TTL', () => {
    expect(load()).toMatchObject({
      projectAuthorization: 'claims',
      authorizationTimeout: 2_000,
      authorizationCacheTTL: 60_000,
      clientEvents: [],
      presenceBucket: 'WS_PRESENCE',
      presenceTTL: 30_000,
    });
    expect(load().authorizationSubject).toBeUndefined();
  });

  it('reads every key from SIDECAR_ environment variables', () => {
    const c = load({
      SIDECAR_PROJECT_AUTHORIZATION: 'request',
      SIDECAR_AUTHORIZATION_SUBJECT: 'acme.authz.projects',
      SIDECAR_AUTHORIZATION_TIMEOUT: '500ms',
      SIDECAR_AUTHORIZATION_CACHE_TTL: '0',
      SIDECAR_CLIENT_EVENTS: 'typing, cursor_moved',
      SIDECAR_PRESENCE_TTL: '5s',
    });
    expect(c).toMatchObject({
      projectAuthorization: 'request',
      authorizationSubject: 'acme.authz.projects',
      authorizationTimeout: 500,
      authorizationCacheTTL: 0,
      clientEvents: ['typing', 'cursor_moved'],
      presenceTTL: 5_000,
    });
  });

  it('refuses an unknown mode, a wildcard subject, an unsafe event type and a TTL under a second', () => {
    for (const [env, key] of [
      [{ SIDECAR_PROJECT_AUTHORIZATION: 'maybe' }, 'projectAuthorization'],
      [{ SIDECAR_AUTHORIZATION_SUBJECT: 'acme.*' }, 'authorizationSubject'],
      [{ SIDECAR_CLIENT_EVENTS: 'typing,a.b' }, 'clientEvents.1'],
      [{ SIDECAR_PRESENCE_TTL: '500ms' }, 'presenceTTL'],
    ] as const) {
      expect(refusedKey(env)).toBe(key);
    }
  });
});

describe('client messages', () => {
  it('parses presence and client_event', () => {
    expect(parseClientMessage('{"type":"presence","data":{"project_id":"p1"}}')).toMatchObject({
      type: 'presence',
      data: { project_id: 'p1' },
    });
    expect(
      parseClientMessage('{"type":"client_event","data":{"project_id":"p1","event":"typing","payload":{"x":1}}}'),
    ).toMatchObject({ type: 'client_event', data: { project_id: 'p1', event: 'typing', payload: { x: 1 } } });
  });

  it('drops identity fields a client adds to a client_event', () => {
    const m = parseClientMessage(
      '{"type":"client_event","data":{"project_id":"p1","event":"typing","user_id":"mallory"},"user_id":"mallory"}',
    );
    expect(m).toEqual({ type: 'client_event', data: { project_id: 'p1', event: 'typing' } });
  });

  it('refuses event names that are not single NATS tokens, and payloads that are not objects', () => {
    for (const bad of [
      '{"type":"client_event","data":{"project_id":"p1","event":"a.b"}}',
      '{"type":"client_event","data":{"project_id":"p1","event":">"}}',
      '{"type":"client_event","data":{"project_id":"p1","event":"typing","payload":[1]}}',
      '{"type":"presence","data":{}}',
    ]) {
      expect(() => parseClientMessage(bad)).toThrow(ProtocolError);
    }
  });
});
