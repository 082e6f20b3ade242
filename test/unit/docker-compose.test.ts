/**
 * docker compose cannot run on the test machines, so the stack is kept honest by reading it:
 * docker-compose.yml's services, ports, env and volumes, the files it refers to, and the
 * Dockerfile's shape (multi-stage, non-root, HEALTHCHECK, everything the services run is in the image).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const root = join(import.meta.dirname, '..', '..');
const compose = parse(readFileSync(join(root, 'docker-compose.yml'), 'utf8'));
const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const services: Record<string, any> = compose.services;

/** Compose allows env as a map or a list of KEY=VALUE. */
function envOf(service: any): Record<string, string> {
  const env = service.environment ?? {};
  if (!Array.isArray(env)) return env;
  return Object.fromEntries(env.map((kv: string) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

/** "8099:8098" -> { host: 8099, container: 8098 } */
function portsOf(service: any): { host: number; container: number }[] {
  return (service.ports ?? []).map((p: string | { published: number; target: number }) => {
    if (typeof p === 'object') return { host: Number(p.published), container: Number(p.target) };
    const parts = String(p).split(':');
    return { host: Number(parts[parts.length - 2]), container: Number(parts[parts.length - 1]) };
  });
}

/** The Dockerfile's instructions by stage (continuation lines joined). */
const stages = dockerfile
  .replace(/\\\n/g, ' ')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'))
  .reduce<string[][]>((acc, line) => {
    if (/^FROM\s/i.test(line)) acc.push([]);
    acc[acc.length - 1]?.push(line);
    return acc;
  }, []);
const finalStage = stages[stages.length - 1];

const sidecars = Object.entries(services).filter(([, s]) => envOf(s).NATS_URL && !s.entrypoint && !s.command);

describe('docker-compose.yml', () => {
  it('runs NATS with JetStream on a persistent named volume, with a health check', () => {
    const nats = services.nats;
    expect(nats.image).toMatch(/^nats:/);
    const args: string[] = Array.isArray(nats.command) ? nats.command : String(nats.command).split(/\s+/);
    expect(args.some((a) => a === '-js' || a === '--jetstream')).toBe(true);
    const storeDir = args[args.findIndex((a) => a === '-sd' || a === '--store_dir') + 1];
    expect(storeDir).toBeTruthy();
    const mount = (nats.volumes ?? []).map((v: string) => v.split(':')).find(([, target]: string[]) => target === storeDir);
    expect(mount, `a volume mounted at the store dir ${storeDir}`).toBeTruthy();
    expect(compose.volumes).toHaveProperty(mount[0]); // a named volume, so data outlives the container
    expect(nats.healthcheck?.test).toBeTruthy();
  });

  it('runs two sidecars from this Dockerfile on distinct host ports, on the same NATS, with one JWT secret', () => {
    expect(sidecars.map(([name]) => name)).toHaveLength(2);
    const hostPorts = sidecars.flatMap(([, s]) => portsOf(s).map((p) => p.host));
    expect(new Set(hostPorts).size).toBe(2);
    const secrets = new Set<string>();
    for (const [name, s] of sidecars) {
      const env = envOf(s);
      expect(s.build === '.' || s.build?.context === '.', `${name} builds this repository`).toBe(true);
      expect(env.NATS_URL, name).toBe('nats://nats:4222');
      expect(env.JWT_SECRET, `${name} has a JWT key (the image runs with NODE_ENV=production)`).toBeTruthy();
      secrets.add(env.JWT_SECRET);
      // The container listens on PORT (default 8098); the mapping must target it.
      const containerPort = Number(env.PORT ?? 8098);
      expect(portsOf(s).map((p) => p.container), name).toEqual([containerPort]);
      expect(s.depends_on?.nats?.condition ?? s.depends_on, name).toBeTruthy();
    }
    expect(secrets.size, 'tokens must verify on either instance').toBe(1);
    const ids = sidecars.map(([, s]) => envOf(s).SIDECAR_INSTANCE_ID);
    expect(new Set(ids).size).toBe(2);
  });

  it('runs the example publisher against the same NATS, after a sidecar has created the stream', () => {
    const p = services.publisher;
    const cmd: string[] = [...(p.entrypoint ?? []), ...(p.command ?? [])];
    expect(cmd).toContain('examples/publisher.js');
    expect(envOf(p).NATS_URL).toBe('nats://nats:4222');
    expect(Object.keys(p.depends_on ?? {}).some((d) => sidecars.some(([name]) => name === d))).toBe(true);
    // It runs the sidecar's image, whose HEALTHCHECK probes the sidecar's port: that would mark it unhealthy forever.
    expect(p.healthcheck?.disable === true || Boolean(p.healthcheck?.test), 'publisher overrides the image health check').toBe(true);
  });

  it('refers only to files that exist', () => {
    for (const [name, s] of Object.entries(services)) {
      if (!s.build) continue;
      const context = typeof s.build === 'string' ? s.build : s.build.context;
      const file = typeof s.build === 'object' && s.build.dockerfile ? s.build.dockerfile : 'Dockerfile';
      expect(existsSync(join(root, context, file)), `${name}: ${file}`).toBe(true);
      for (const arg of [...(s.entrypoint ?? []), ...(s.command ?? [])]) {
        if (/\.(m?js|json)$/.test(arg)) expect(existsSync(join(root, arg)), `${name}: ${arg}`).toBe(true);
      }
    }
  });
});

describe('Dockerfile', () => {
  it('is multi-stage: the runtime stage takes the build output from an earlier stage', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(finalStage.some((l) => /^COPY\s+--from=/i.test(l))).toBe(true);
  });

  it('runs as a non-root user, with a HEALTHCHECK', () => {
    const user = finalStage.filter((l) => /^USER\s/i.test(l)).pop()?.split(/\s+/)[1];
    expect(user).toBeTruthy();
    expect(['root', '0', '0:0']).not.toContain(user);
    expect(finalStage.some((l) => /^HEALTHCHECK\s+.*CMD\s/i.test(l))).toBe(true);
  });

  it('puts into the image what the services run, with production dependencies only', () => {
    const copied = finalStage.filter((l) => /^COPY\s/i.test(l)).map((l) => l.split(/\s+/).slice(-2)[0]);
    for (const dir of ['bin', 'config', 'examples']) expect(copied.some((c) => c.replace(/^\.\//, '') === dir), dir).toBe(true);
    expect(finalStage.some((l) => /npm ci\b.*--omit=dev/.test(l))).toBe(true);
    // The example publisher runs in that image: each bare import must be the package itself or a runtime dependency.
    const code = readFileSync(join(root, 'examples', 'publisher.js'), 'utf8');
    for (const [, spec] of code.matchAll(/^\s*import\b[^'"]*?from\s*['"]([^'"]+)['"]/gm)) {
      if (spec.startsWith('.') || spec.startsWith('node:')) continue;
      const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
      if (name === pkg.name) {
        expect(pkg.exports, spec).toHaveProperty(`.${spec.slice(name.length)}`);
      } else {
        expect(pkg.dependencies, spec).toHaveProperty(name);
      }
    }
  });
});
