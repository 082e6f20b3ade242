import { execFile } from 'node:child_process';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { createLogger, logFormat } from '../../src/logger.js';
import { ensureBuilt } from '../reliability/helpers/child-sidecar.js';

function capture() {
  let text = '';
  const stream = new Writable({
    write(chunk, _enc, done) {
      text += chunk.toString();
      done();
    },
  });
  return { stream, text: () => text };
}

describe('log format', () => {
  it('is pretty on a terminal outside production, JSON otherwise', () => {
    expect(logFormat({}, true)).toBe('pretty');
    expect(logFormat({ NODE_ENV: 'development' }, true)).toBe('pretty');
    expect(logFormat({ NODE_ENV: 'production' }, true)).toBe('json');
    expect(logFormat({}, false)).toBe('json');
    expect(logFormat({ NODE_ENV: 'production' }, false)).toBe('json');
  });

  it('writes one JSON object per line in json format', () => {
    const out = capture();
    createLogger('info', { instance: 'i1' }, out.stream, 'json').info({ user: 'u1' }, 'connection authenticated');
    const line = JSON.parse(out.text().trim());
    expect(line).toMatchObject({ level: 30, msg: 'connection authenticated', user: 'u1', instance: 'i1' });
  });

  it('writes readable lines in pretty format, with tokens still redacted', () => {
    const out = capture();
    createLogger('info', {}, out.stream, 'pretty').info({ url: '/ws/connect?token=abc.def.ghi', user: 'u1' }, 'upgrade refused');
    const text = out.text();
    expect(() => JSON.parse(text)).toThrow();
    expect(text).toMatch(/INFO.*upgrade refused/);
    expect(text).toContain('user: "u1"');
    expect(text).not.toContain('abc.def.ghi');
  });

  it('is chosen from the process: a pipe gets JSON, a pseudo-terminal pretty lines, production JSON on a terminal', async () => {
    const run = promisify(execFile);
    await ensureBuilt();
    const script = "import('./dist/logger.js').then(m => m.createLogger('info').info('hello from the logger'))";
    const node = `${JSON.stringify(process.execPath)} -e ${JSON.stringify(script)}`;
    const piped = await run('sh', ['-c', node], { cwd: process.cwd() });
    expect(JSON.parse(piped.stdout.trim()).msg).toBe('hello from the logger');
    // `script` runs the command on a pseudo-terminal.
    const tty = await run('script', ['-qec', node, '/dev/null'], { cwd: process.cwd(), env: { ...process.env, NODE_ENV: '' } });
    expect(tty.stdout).toMatch(/INFO.*hello from the logger/);
    expect(tty.stdout).not.toContain('"msg"');
    const prod = await run('script', ['-qec', node, '/dev/null'], { cwd: process.cwd(), env: { ...process.env, NODE_ENV: 'production' } });
    expect(prod.stdout).toContain('"msg":"hello from the logger"');
  });
});
