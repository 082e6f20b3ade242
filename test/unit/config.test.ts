import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { envNameOf, loadConfig, parseDuration } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';

const load = (env: Record<string, string> = {}, file?: string) => loadConfig({ env, file });

function refusal(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('accepted');
}

describe('loadConfig', () => {
  it('applies the seed defaults', () => {
    const c = load();
    expect(c).toMatchObject({
      port: 8098,
      host: '0.0.0.0',
      subjectPrefix: 'ws',
      requestsPerSecond: 10,
      burstSize: 20,
      maxErrors: 5,
      errorResetInterval: 600_000,
      maxStoredMessages: 1000,
      messageTTL: 86_400_000,
      pingInterval: 54_000,
      pongTimeout: 60_000,
      maxMessageSize: 512,
      authTimeout: 10_000,
      logLevel: 'info',
    });
    expect(c.natsUrl).toBeUndefined();
    expect(c.jwtSecret).toBeUndefined();
    expect(c.allowedOrigins).toBeUndefined();
  });

  it('reads the contract environment variables, with lists split on commas', () => {
    const c = load({
      PORT: '9000',
      HOST: '127.0.0.1',
      NATS_URL: 'nats://a:4222, nats://b:4222',
      NATS_SUBJECT_PREFIX: 'rt',
      JWT_SECRET: 's',
      JWT_ISSUER: 'iss',
      JWT_AUDIENCE: 'aud',
      JWT_ALGORITHMS: 'HS256,HS512',
      ALLOWED_ORIGINS: 'https://a.example,https://b.example',
      LOG_LEVEL: 'debug',
    });
    expect(c).toMatchObject({
      port: 9000,
      host: '127.0.0.1',
      natsUrl: ['nats://a:4222', 'nats://b:4222'],
      subjectPrefix: 'rt',
      jwtSecret: 's',
      jwtIssuer: 'iss',
      jwtAudience: 'aud',
      jwtAlgorithms: ['HS256', 'HS512'],
      allowedOrigins: ['https://a.example', 'https://b.example'],
      logLevel: 'debug',
    });
  });

  it('treats an empty environment value as unset', () => {
    const c = load({ PORT: '', NATS_URL: '' });
    expect(c.port).toBe(8098);
    expect(c.natsUrl).toBeUndefined();
  });

  it('reads every other key from SIDECAR_<KEY>, durations included', () => {
    expect(envNameOf('requestsPerSecond')).toBe('SIDECAR_REQUESTS_PER_SECOND');
    const c = load({ SIDECAR_REQUESTS_PER_SECOND: '50', SIDECAR_PING_INTERVAL: '5s', SIDECAR_PONG_TIMEOUT: '8000' });
    expect(c).toMatchObject({ requestsPerSecond: 50, pingInterval: 5000, pongTimeout: 8000 });
  });

  it('layers defaults < file < environment', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
    const file = join(dir, 'c.json');
    writeFileSync(file, JSON.stringify({ port: 7000, burstSize: 40, messageTTL: '1h' }));
    const c = load({ PORT: '7001' }, file);
    expect(c).toMatchObject({ port: 7001, burstSize: 40, messageTTL: 3_600_000 });
    expect(loadConfig({ env: { SIDECAR_CONFIG: file } }).burstSize).toBe(40);
  });

  it('stops on a bad value with one line naming the key', () => {
    const e = refusal(() => load({ PORT: 'eighty' }));
    expect(e.key).toBe('port');
    expect(e.message).toMatch(/^config port: /);
    expect(e.message.includes('\n')).toBe(false);
    expect(refusal(() => load({ SIDECAR_PING_INTERVAL: 'soon' })).key).toBe('pingInterval');
    expect(refusal(() => load({ LOG_LEVEL: 'loud' })).key).toBe('logLevel');
    expect(refusal(() => load({ NATS_SUBJECT_PREFIX: 'a.b' })).key).toBe('subjectPrefix');
    expect(refusal(() => load({ JWT_ALGORITHMS: 'none' })).key).toBe('jwtAlgorithms');
    expect(refusal(() => load({ SIDECAR_PONG_TIMEOUT: '1s' })).key).toBe('pongTimeout');
  });

  it('refuses unknown keys in a file and a file that is not JSON', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
    writeFileSync(join(dir, 'typo.json'), JSON.stringify({ prot: 1 }));
    expect(refusal(() => load({}, join(dir, 'typo.json'))).key).toBe('prot');
    writeFileSync(join(dir, 'bad.json'), '{');
    expect(refusal(() => load({}, join(dir, 'bad.json'))).key).toBe('file');
    expect(refusal(() => load({}, join(dir, 'missing.json'))).key).toBe('file');
  });

  it('refuses to run in production without a JWT key', () => {
    expect(refusal(() => load({ NODE_ENV: 'production' })).key).toBe('jwtSecret');
    expect(load({ NODE_ENV: 'production', JWT_SECRET: 'k' }).production).toBe(true);
  });

  it('refuses two JWT key sources at once', () => {
    expect(refusal(() => load({ JWT_SECRET: 'k', JWT_JWKS_URL: 'https://idp.example/jwks' })).key).toBe('jwtSecret');
  });
});

describe('parseDuration', () => {
  it('reads numbers as milliseconds and unit strings', () => {
    expect(parseDuration(250)).toBe(250);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('54s')).toBe(54_000);
    expect(parseDuration('10m')).toBe(600_000);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('1d')).toBe(86_400_000);
    expect(parseDuration('500')).toBe(500);
    expect(parseDuration('ten')).toBeNaN();
  });
});
