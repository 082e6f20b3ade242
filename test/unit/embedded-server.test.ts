import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  findNatsServerBinary,
  NatsServerNotFoundError,
  startEmbeddedNats,
} from '../../src/nats/embedded-server.js';

let dir: string;

/** Writes a shell script standing in for nats-server. */
async function fakeBinary(name: string, body: string, mode = 0o755): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, `#!/bin/sh\n${body}\n`);
  await chmod(file, mode);
  return file;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'embedded-nats-unit-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('findNatsServerBinary', () => {
  it('prefers NATS_SERVER_BIN over PATH', async () => {
    const explicit = await fakeBinary('my-nats', 'exit 0');
    const binDir = path.join(dir, 'bin-a');
    await mkdir(binDir, { recursive: true });
    await writeFile(path.join(binDir, 'nats-server'), '#!/bin/sh\n', { mode: 0o755 });

    expect(findNatsServerBinary({ NATS_SERVER_BIN: explicit, PATH: binDir }, { fallbacks: [] })).toBe(explicit);
  });

  it('finds nats-server on PATH, skipping directories without an executable one', async () => {
    const empty = path.join(dir, 'bin-empty');
    const withBin = path.join(dir, 'bin-b');
    await mkdir(empty, { recursive: true });
    await mkdir(withBin, { recursive: true });
    await writeFile(path.join(empty, 'nats-server'), 'not executable', { mode: 0o644 });
    await writeFile(path.join(withBin, 'nats-server'), '#!/bin/sh\n', { mode: 0o755 });

    const PATH = ['', empty, withBin].join(path.delimiter);
    expect(findNatsServerBinary({ PATH }, { fallbacks: [] })).toBe(path.join(withBin, 'nats-server'));
  });

  it('falls through an unusable NATS_SERVER_BIN and returns undefined when nothing is found', () => {
    const env = { NATS_SERVER_BIN: path.join(dir, 'does-not-exist'), PATH: '' };
    expect(findNatsServerBinary(env, { fallbacks: [] })).toBeUndefined();
    expect(findNatsServerBinary({}, { fallbacks: [path.join(dir, 'nope')] })).toBeUndefined();
  });

  it('uses the fixed fallback locations last', async () => {
    const fallback = await fakeBinary('fallback-nats', 'exit 0');
    expect(findNatsServerBinary({ PATH: '' }, { fallbacks: ['/nonexistent/nats-server', fallback] })).toBe(fallback);
  });
});

describe('NatsServerNotFoundError', () => {
  it('has a stable code and says how to get a server', () => {
    const err = new NatsServerNotFoundError('/opt/missing');
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('nats_server_not_found');
    expect(err.name).toBe('NatsServerNotFoundError');
    expect(err.message).toContain('apt-get install nats-server');
    expect(err.message).toContain('github.com/nats-io/nats-server/releases');
    expect(err.message).toContain('NATS_SERVER_BIN');
    expect(err.message).toContain('NATS_URL');
    expect(err.message).toContain('/opt/missing');
  });
});

describe('startEmbeddedNats failures', () => {
  it('rejects with the server output when the process exits early', async () => {
    const bin = await fakeBinary('crashing-nats', 'echo "nats: config is bogus" >&2\nexit 3');
    const err = await startEmbeddedNats({ binary: bin, storeDir: path.join(dir, 'store-crash') }).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/exited early with code 3/);
    expect(err.message).toContain('nats: config is bogus');
  });

  it('rejects when the binary cannot be run', async () => {
    const err = await startEmbeddedNats({
      binary: path.join(dir, 'no-such-binary'),
      storeDir: path.join(dir, 'store-missing'),
    }).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/cannot run .*no-such-binary/);
  });
});
