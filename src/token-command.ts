/** `npm run token`: mint a development JWT with the configured HS key (or the dev key). */
import { parseArgs } from 'node:util';
import { mintToken } from './auth.js';
import { loadConfig, parseDuration } from './config.js';
import { readDevSecret } from './dev-key.js';
import { ConfigError } from './errors.js';

const USAGE = 'usage: npm run token -- --sub USER [--projects p1,p2|*] [--roles admin] [--ttl 24h] [--config FILE]';

export async function tokenCommand(argv: string[]): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        sub: { type: 'string' },
        projects: { type: 'string' },
        roles: { type: 'string' },
        ttl: { type: 'string' },
        config: { type: 'string' },
      },
    }));
  } catch (err) {
    console.error(`${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (!values.sub) {
    console.error(USAGE);
    process.exit(2);
  }
  let config;
  try {
    config = loadConfig({ file: values.config });
  } catch (err) {
    console.error((err as ConfigError).message);
    process.exit(78);
  }
  const secret = config.jwtSecret ?? readDevSecret(config.dataDir);
  if (!secret) {
    console.error(
      config.jwtPublicKey || config.jwtJwksUrl
        ? 'the sidecar verifies with a public key: sign tokens with your identity provider'
        : `no JWT_SECRET and no development key yet in ${config.dataDir}/ (start the sidecar once, or set JWT_SECRET)`,
    );
    process.exit(1);
  }
  const split = (v?: string) => (v ? v.split(',').map((s) => s.trim()).filter(Boolean) : []);
  const ttl = values.ttl ? parseDuration(values.ttl) : 86_400_000;
  if (!(ttl > 0)) {
    console.error('--ttl must be a duration like 30m, 24h');
    process.exit(2);
  }
  const token = await mintToken(secret, {
    sub: values.sub,
    projects: split(values.projects),
    roles: split(values.roles),
    expiresIn: Math.round(ttl / 1000),
    issuer: config.jwtIssuer,
    audience: config.jwtAudience,
  });
  console.log(token);
}
