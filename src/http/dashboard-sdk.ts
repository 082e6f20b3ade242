/**
 * The client SDK for the dashboard's live view, as browser ES modules: the built files of `dist/`
 * that `dist/client/index.js` loads, found by following its imports (tsc writes one import per
 * line, with the `.js` extension NodeNext requires, which is also what a browser needs).
 *
 * The result is a closed list, served by exact path (dashboard.ts), so no URL (`..`, encoded or
 * not) can reach another file. An import a browser cannot load (a bare package name, `node:`,
 * anything outside `dist/`) makes the whole SDK unavailable rather than half-served.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SidecarError } from '../errors.js';

/** `dist/` at the package root: two levels above `src/http/` and `dist/http/` alike. */
export const DIST_DIR = fileURLToPath(new URL('../../dist/', import.meta.url));
/** The SDK's entry module, relative to DIST_DIR. */
export const SDK_ENTRY = 'client/index.js';

/** Static imports and re-exports (`... from '...'`, `import '...'`) at the start of a line, and `import('...')`. */
const IMPORT_RE = /^\s*(?:import|export)\b[^'"\n]*?\bfrom\s*(['"])([^'"\n]+)\1|^\s*import\s*(['"])([^'"\n]+)\3|\bimport\(\s*(['"])([^'"\n]+)\5\s*\)/gm;

/** The SDK cannot be served to a browser: not built, or it imports something a browser cannot load. */
export class SdkUnavailableError extends SidecarError {
  constructor(message: string, cause?: unknown) {
    super('dashboard_sdk_unavailable', message, { cause });
  }
}

/** The specifiers a built module imports. */
export function importsOf(source: string): string[] {
  return [...source.matchAll(IMPORT_RE)].map((m) => m[2] ?? m[4] ?? m[6]);
}

/**
 * Every module of the SDK's graph: path relative to `distDir` (POSIX separators, as in the URL)
 * -> its bytes. Throws SdkUnavailableError when a module is missing or imports what a browser
 * cannot load.
 */
export function sdkModules(distDir: string = DIST_DIR, entry: string = SDK_ENTRY): Map<string, Buffer> {
  const modules = new Map<string, Buffer>();
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.shift()!;
    if (modules.has(file)) continue;
    let body: Buffer;
    try {
      body = readFileSync(path.join(distDir, ...file.split('/')));
    } catch (err) {
      throw new SdkUnavailableError(`client SDK module ${file} is missing from ${distDir} (run \`npm run build\`)`, err);
    }
    modules.set(file, body);
    for (const spec of importsOf(body.toString('utf8'))) {
      if (!spec.startsWith('./') && !spec.startsWith('../')) {
        throw new SdkUnavailableError(`client SDK module ${file} imports "${spec}", which a browser cannot load`);
      }
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
      if (target.startsWith('../') || !target.endsWith('.js')) {
        throw new SdkUnavailableError(`client SDK module ${file} imports "${spec}", outside dist/ or not a .js module`);
      }
      queue.push(target);
    }
  }
  return modules;
}
