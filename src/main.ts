/**
 * The process: parse the command line, load config, start the sidecar, stop it on signals.
 * `npm start` and the `nats-ws-sidecar` bin both land here.
 */
import { parseArgs } from 'node:util';
import { mintToken } from './auth.js';
import { loadConfig, type Config } from './config.js';
import { ensureDevSecret } from './dev-key.js';
import { ConfigError } from './errors.js';
import { createLogger } from './logger.js';
import { NatsServerNotFoundError } from './nats/embedded-server.js';
import { Sidecar } from './sidecar.js';
import { startTracing, type TracingHandle } from './tracing.js';

const USAGE = `usage: nats-ws-sidecar [--config FILE]

Configuration: config/default.json, then --config FILE (or SIDECAR_CONFIG), then environment
variables (PORT, HOST, NATS_URL, JWT_SECRET, ... see README).`;

export async function main(argv = process.argv.slice(2)): Promise<void> {
  let args;
  try {
    args = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } } });
  } catch (err) {
    console.error(`nats-ws-sidecar: ${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (args.values.help) {
    console.log(USAGE);
    return;
  }

  let config: Config;
  try {
    config = loadConfig({ file: args.values.config });
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`nats-ws-sidecar: ${err.message}`);
      process.exit(78); // EX_CONFIG
    }
    throw err;
  }

  const log = createLogger(config.logLevel);
  let devToken = false;
  if (!config.jwtSecret && !config.jwtPublicKey && !config.jwtJwksUrl) {
    // loadConfig already refused this in production.
    config = { ...config, jwtSecret: ensureDevSecret(config.dataDir) };
    devToken = true;
  }

  // Only with OTEL_* settings; otherwise nothing is loaded.
  let tracing: TracingHandle | undefined;
  try {
    tracing = await startTracing();
    if (tracing) log.info('OpenTelemetry tracing on (OTEL_* settings)');
  } catch (err) {
    log.error({ err }, 'OpenTelemetry could not start: running without tracing');
  }

  // Signals are handled from here on: while the sidecar waits for NATS, one ends the wait.
  const starting = new AbortController();
  let sidecar: Sidecar | undefined;
  let signalled = 0;
  const stop = (signal: NodeJS.Signals) => {
    signalled += 1;
    // npm and the terminal may both deliver one Ctrl-C; a third signal means "now".
    if (signalled > 2) {
      log.warn({ signal }, 'repeated signal: exiting now');
      process.exit(1);
    }
    if (signalled > 1) return;
    log.info({ signal }, 'signal received');
    if (!sidecar) return starting.abort(new Error(`${signal} while starting`));
    sidecar
      .stop()
      .then(() => tracing?.shutdown().catch(() => {})) // exports the last spans
      .then(
        () => process.exit(0),
        (err) => {
          log.error({ err }, 'shutdown failed');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  try {
    sidecar = await Sidecar.start(config, { logger: log, signal: starting.signal }); // it adds its instance id to every line
  } catch (err) {
    if (starting.signal.aborted) {
      log.info('stopped before NATS answered');
      process.exit(0);
    }
    if (err instanceof NatsServerNotFoundError) {
      console.error(`nats-ws-sidecar: ${err.message}`);
      process.exit(69); // EX_UNAVAILABLE
    }
    log.fatal({ err }, 'start-up failed');
    process.exit(1);
  }

  if (devToken) {
    const token = await mintToken(config.jwtSecret!, { sub: 'demo', roles: ['admin'], projects: ['*'] });
    log.warn(
      { user: 'demo', roles: ['admin'], projects: ['*'] },
      'no JWT key configured: using a development key (set JWT_SECRET, or NODE_ENV=production to forbid this)',
    );
    // Printed plainly (not through the logger's redaction) so a developer can copy it.
    console.log(`\nDev token (user "demo", role admin, all projects; valid 24 h):\n${token}\n`);
    console.log(`Connect: ${sidecar.wsUrl}?token=${token}\n`);
    console.log(`Dashboard: ${sidecar.url}/dashboard#token=${token}\n`);
  }
}
