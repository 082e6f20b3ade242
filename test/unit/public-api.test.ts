import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');

describe('the public API', () => {
  it('exports what library users use, and nothing of the internals', async () => {
    const api = await import('../../src/index.js');
    expect(Object.keys(api).sort()).toEqual(EXPORTS);
    for (const internal of ['Hub', 'NatsBroker', 'startEmbeddedNats', 'parseClientMessage', 'encodeEvent', 'projectPresence']) {
      expect(api).not.toHaveProperty(internal);
    }
  });

  it("keeps the Sidecar's parts out of its published type declarations", async () => {
    // npm test builds first; dist/ is what the package ships.
    const dts = await readFile(join(root, 'dist', 'sidecar.d.ts'), 'utf8');
    for (const part of ['broker', 'hub', 'presence', 'fleet', 'metrics', 'authorizer', 'embeddedNats', 'lifecycle', 'files']) {
      expect(dts).not.toMatch(new RegExp(`\\b${part}\\s*[:?]`));
    }
    expect(dts).toMatch(/static start\(/);
    expect(dts).toMatch(/stop\(\): Promise<void>/);
  });
});

const EXPORTS = [
  'AuthError',
  'AuthErrorCode',
  'CloseCode',
  'ConfigError',
  'ErrorCode',
  'IdentityHeader',
  'MessageType',
  'NatsServerNotFoundError',
  'ProtocolError',
  'Sidecar',
  'SidecarError',
  'clientEventSubject',
  'createTokenVerifier',
  'findNatsServerBinary',
  'loadConfig',
  'mintToken',
  'parseDuration',
  'publishRevocation',
  'reconnectPolicy',
  'revokeSubject',
];
