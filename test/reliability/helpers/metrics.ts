/** Reads a sidecar's public Prometheus endpoint (works for a child process as for an in-process one). */
import { parsePrometheus, sampleValue } from '../../helpers/http.js';

export async function scrape(httpUrl: string): Promise<(name: string) => number> {
  const samples = parsePrometheus(await (await fetch(`${httpUrl}/metrics`)).text());
  return (name) => sampleValue(samples, name) ?? Number.NaN;
}
