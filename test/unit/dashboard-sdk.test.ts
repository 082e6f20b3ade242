/**
 * Which built files the dashboard serves as the client SDK: the entry's import graph, and no SDK
 * at all when it imports what a browser cannot load.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SdkUnavailableError, importsOf, sdkModules } from '../../src/http/dashboard-sdk.js';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** A dist/ with these files (path -> source). */
async function dist(files: Record<string, string>): Promise<string> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'sdk-dist-'));
  for (const [file, source] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, file)), { recursive: true });
    await writeFile(path.join(dir, file), source);
  }
  return dir;
}

describe('the dashboard SDK module graph', () => {
  it('reads imports, re-exports and dynamic imports, not words in strings', () => {
    const source = [
      "import { a } from './a.js';",
      "export { b, } from '../b.js';",
      "export * from \"./c.js\";",
      "import './side-effect.js';",
      "const d = await import('./d.js');",
      'const msg = `unsubscribed from "${id}"`;',
      "// copied from 'elsewhere'",
    ].join('\n');
    expect(importsOf(source)).toEqual(['./a.js', '../b.js', './c.js', './side-effect.js', './d.js']);
  });

  it('serves exactly the files the entry reaches, once each, with their path under dist/', async () => {
    const d = await dist({
      'client/index.js': "export { Client } from './client.js';\nexport { Code } from '../codes.js';\n",
      'client/client.js': "import { Code } from '../codes.js';\nexport class Client {}\n",
      'codes.js': 'export const Code = {};\n',
      'main.js': "import 'node:http';\n",
    });
    expect([...sdkModules(d).keys()].sort()).toEqual(['client/client.js', 'client/index.js', 'codes.js']);
  });

  it.each([
    ['a package', "import WebSocket from 'ws';\n"],
    ['a Node built-in', "import { readFile } from 'node:fs';\n"],
    ['a file outside dist/', "export * from '../../package.js';\n"],
    ['a specifier without .js', "export * from './client';\n"],
    ['a missing module', "export * from './missing.js';\n"],
  ])('is unavailable when the graph imports %s', async (_what, source) => {
    const d = await dist({ 'client/index.js': source });
    expect(() => sdkModules(d)).toThrow(SdkUnavailableError);
  });

  it('is unavailable when dist/ is not built', () => {
    expect(() => sdkModules(path.join(os.tmpdir(), 'no-such-dist-dir'))).toThrow(/npm run build/);
  });
});
