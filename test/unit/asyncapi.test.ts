/**
 * docs/asyncapi.yaml is what services in other languages code against: keep it in step with the
 * subjects the stream stores and the event types the publisher SDK sends. (Checked against the
 * official AsyncAPI parser when written; this test guards the parts that drift.)
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const root = join(import.meta.dirname, '..', '..');
const doc = parse(readFileSync(join(root, 'docs', 'asyncapi.yaml'), 'utf8'));

function resolveRef(ref: string): unknown {
  expect(ref.startsWith('#/'), ref).toBe(true);
  return ref
    .slice(2)
    .split('/')
    .reduce<any>((node, key) => node?.[key.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
}

describe('docs/asyncapi.yaml', () => {
  it('is AsyncAPI 3 and describes the three subjects the stream stores', () => {
    expect(doc.asyncapi).toMatch(/^3\./);
    const addresses = Object.values<any>(doc.channels).map((c) => c.address);
    expect(addresses).toEqual(expect.arrayContaining(['ws.project.{project_id}', 'ws.user.{user_id}', 'ws.broadcast']));
  });

  it('has a message for every event type the publisher SDK sends', () => {
    const source = readFileSync(join(root, 'src', 'publisher', 'publisher.ts'), 'utf8');
    const sent = [...source.matchAll(/sendProjectMessage\(projectId, '([a-z_]+)'/g)].map((m) => m[1]);
    expect(sent.length).toBeGreaterThanOrEqual(5);
    const names = Object.values<any>(doc.components.messages).map((m) => m.name);
    expect(names).toEqual(expect.arrayContaining([...sent, 'direct_message']));
  });

  it('resolves every $ref', () => {
    const refs: string[] = [];
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) node.forEach(walk);
      else if (node && typeof node === 'object') {
        for (const [k, v] of Object.entries(node)) (k === '$ref' ? refs.push(v as string) : walk(v));
      }
    };
    walk(doc);
    expect(refs.length).toBeGreaterThan(10);
    for (const ref of refs) expect(resolveRef(ref), ref).toBeTruthy();
  });
});
