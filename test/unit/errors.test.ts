import { describe, expect, it } from 'vitest';
import { ClientError } from '../../src/client/errors.js';
import { AuthError, ConfigError, SidecarError } from '../../src/errors.js';
import { InvalidProjectIdError } from '../../src/http/presence-routes.js';
import { NatsServerNotFoundError } from '../../src/nats/embedded-server.js';
import { FleetUnavailableError } from '../../src/nats/fleet.js';
import { InvalidRequestError } from '../../src/operations.js';
import { CloseCode, ErrorCode, EventError, ProtocolError } from '../../src/protocol.js';
import { reconnectPolicy } from '../../src/protocol-codes.js';
import { PublishError, ValidationError } from '../../src/publisher/publisher.js';

describe('errors', () => {
  it('are all SidecarErrors with a stable code, their class name and a temporary flag', () => {
    const cases: [SidecarError, string, boolean][] = [
      [new ConfigError('port', 'bad'), 'config_invalid', false],
      [new AuthError('token_expired', 'expired'), 'token_expired', false],
      [new ProtocolError(ErrorCode.InvalidMessage, 'bad'), 'invalid_message', false],
      [new ProtocolError(ErrorCode.RateLimited, 'slow down'), 'rate_limited', true],
      [new ProtocolError(ErrorCode.ProcessingError, 'try again'), 'processing_error', true],
      [new EventError('not JSON'), 'event_invalid', false],
      [new NatsServerNotFoundError(), 'nats_server_not_found', false],
      [new InvalidProjectIdError(), 'invalid_project_id', false],
      [new InvalidRequestError('field'), 'invalid_request', false],
      [new FleetUnavailableError(), 'fleet_unavailable', true],
      [new ValidationError('invalid_id', 'bad id'), 'invalid_id', false],
      [new PublishError('not stored', 'ws.project.p', 5), 'publish_failed', true],
      [new ClientError('closed', 'closed'), 'closed', false],
      [new ClientError('rate_limited', 'slow down'), 'rate_limited', true],
    ];
    for (const [err, code, temporary] of cases) {
      expect(err).toBeInstanceOf(SidecarError);
      expect(err).toBeInstanceOf(Error);
      expect({ name: err.name, code: err.code, temporary: err.temporary }).toEqual({ name: err.constructor.name, code, temporary });
    }
  });

  it('keep their cause', () => {
    const cause = new Error('nats');
    expect(new PublishError('not stored', 's', 1, { cause }).cause).toBe(cause);
  });
});

describe('close codes', () => {
  it('tell a client whether to reconnect', () => {
    expect(reconnectPolicy(CloseCode.GoingAway)).toBe('reconnect');
    expect(reconnectPolicy(CloseCode.SlowConsumer)).toBe('reconnect');
    expect(reconnectPolicy(CloseCode.InternalError)).toBe('reconnect');
    expect(reconnectPolicy(1006)).toBe('reconnect');
    expect(reconnectPolicy(CloseCode.AuthTimeout)).toBe('reconnect');
    expect(reconnectPolicy(CloseCode.Unauthorized)).toBe('new_token');
    for (const code of [CloseCode.MessageTooBig, CloseCode.DisconnectedByOperator, CloseCode.Forbidden, CloseCode.TooManyErrors]) {
      expect(reconnectPolicy(code)).toBe('stop');
    }
  });
});
