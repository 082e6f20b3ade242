/**
 * deploy/kubernetes is kept honest by reading it: every manifest parses, the Deployment's probes,
 * port, grace period, drain delay, security context and writable paths agree with the sidecar's
 * configuration (config/default.json overridden by the container's env, as at run time).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { loadConfig } from '../../src/config.js';

const dir = join(import.meta.dirname, '..', '..', 'deploy', 'kubernetes');
const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
const docs = files.flatMap((f) =>
  parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => {
    expect(d.errors, f).toEqual([]);
    return { file: f, doc: d.toJSON() as any };
  }),
);
const manifests = docs.filter((d) => d.doc?.kind && d.doc?.apiVersion && d.file !== 'kustomization.yaml').map((d) => d.doc);
const ofKind = (kind: string) => {
  const found = manifests.filter((m) => m.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0];
};

const deployment = ofKind('Deployment');
const pod = deployment.spec.template.spec;
const container = pod.containers.find((c: any) => c.name === 'sidecar');
/** Plain `value` env vars of the container (secrets and field refs are not config values here). */
const env: Record<string, string> = Object.fromEntries(
  (container.env ?? []).filter((e: any) => typeof e.value === 'string').map((e: any) => [e.name, e.value]),
);
// What the sidecar would run with: default.json, then the container's env; a stand-in key for the Secret.
const config = loadConfig({ env: { ...env, JWT_SECRET: 'x'.repeat(48) } });
const labels = deployment.spec.template.metadata.labels;

describe('deploy/kubernetes', () => {
  it('has a Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler and NetworkPolicy, all listed in the kustomization', () => {
    for (const kind of ['Deployment', 'Service', 'PodDisruptionBudget', 'HorizontalPodAutoscaler', 'NetworkPolicy']) ofKind(kind);
    const kustomization = docs.find((d) => d.file === 'kustomization.yaml')!.doc;
    expect([...kustomization.resources].sort()).toEqual(files.filter((f) => !['kustomization.yaml', 'nats-values.yaml'].includes(f)).sort());
  });

  it('probes readiness on /readyz and liveness on /healthz, at the port the sidecar listens on', () => {
    const port = container.ports.find((p: any) => p.name === 'http');
    expect(port.containerPort).toBe(config.port);
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    for (const probe of [container.readinessProbe, container.livenessProbe, container.startupProbe]) {
      expect([port.name, port.containerPort]).toContain(probe.httpGet.port);
    }
  });

  it('gives the drain a delay and a grace period longer than shutdownTimeout + drainDelay', () => {
    expect(config.drainDelay).toBeGreaterThan(0);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan((config.shutdownTimeout + config.drainDelay) / 1000);
    expect(config.production).toBe(true); // NODE_ENV=production: no dev key in a cluster
  });

  it('runs as non-root on a read-only root filesystem, with emptyDir volumes for the data directory and /tmp', () => {
    expect(pod.securityContext.runAsNonRoot).toBe(true);
    expect(pod.securityContext.runAsUser).toBeGreaterThan(0);
    expect(container.securityContext.readOnlyRootFilesystem).toBe(true);
    expect(container.securityContext.allowPrivilegeEscalation).toBe(false);
    const emptyDirs = new Set(pod.volumes.filter((v: any) => v.emptyDir).map((v: any) => v.name));
    const writable = container.volumeMounts.filter((m: any) => emptyDirs.has(m.name)).map((m: any) => m.mountPath);
    expect(config.dataDir.startsWith('/')).toBe(true);
    expect(writable).toEqual(expect.arrayContaining([config.dataDir, '/tmp']));
  });

  it('sets resource requests and limits', () => {
    expect(container.resources.requests).toMatchObject({ cpu: expect.anything(), memory: expect.anything() });
    expect(container.resources.limits).toMatchObject({ memory: expect.anything() });
  });

  it('points the Service, PodDisruptionBudget, autoscaler and NetworkPolicy at the Deployment and its port', () => {
    const selects = (selector: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v);
    const service = ofKind('Service');
    expect(selects(service.spec.selector)).toBe(true);
    expect(service.spec.ports.map((p: any) => p.targetPort)).toContain('http');
    expect(selects(ofKind('PodDisruptionBudget').spec.selector.matchLabels)).toBe(true);
    const hpa = ofKind('HorizontalPodAutoscaler');
    expect(hpa.spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: deployment.metadata.name });
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2); // the PDB can then always let one go
    const policy = ofKind('NetworkPolicy');
    expect(selects(policy.spec.podSelector.matchLabels)).toBe(true);
    expect(policy.spec.ingress.flatMap((r: any) => r.ports.map((p: any) => p.port))).toContain(config.port);
    expect(policy.spec.egress.flatMap((r: any) => r.ports.map((p: any) => p.port))).toContain(4222);
  });

  it("reaches NATS through the Helm chart's client Service, with JetStream and replicas matching streamReplicas", () => {
    expect(config.natsUrl).toEqual(['nats://nats:4222']);
    const values = docs.find((d) => d.file === 'nats-values.yaml')!.doc;
    expect(values.config.jetstream.enabled).toBe(true);
    expect(values.config.cluster.replicas).toBeGreaterThanOrEqual(config.streamReplicas);
  });
});
