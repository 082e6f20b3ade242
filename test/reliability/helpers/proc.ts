/** What a process holds, read from /proc (Linux): resident memory and open file descriptors. */
import { readdirSync, readFileSync } from 'node:fs';

/** Resident set size in bytes (VmRSS), or NaN when the process is gone. */
export function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Open file descriptors (sockets included), or NaN when the process is gone. */
export function fdsOf(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return Number.NaN;
  }
}

export interface Sample {
  /** ms since the sampler started */
  t: number;
  rss: number;
  fds: number;
}

/** Samples a process every `everyMs` until stopped; `peak` is the largest RSS seen. */
export class ProcSampler {
  readonly samples: Sample[] = [];
  private readonly timer: NodeJS.Timeout;
  private readonly started = Date.now();

  constructor(
    readonly pid: number,
    everyMs = 250,
  ) {
    this.sample();
    this.timer = setInterval(() => this.sample(), everyMs);
    this.timer.unref();
  }

  sample(): Sample {
    const s = { t: Date.now() - this.started, rss: rssOf(this.pid), fds: fdsOf(this.pid) };
    if (!Number.isNaN(s.rss)) this.samples.push(s);
    return s;
  }

  get peakRss(): number {
    return Math.max(...this.samples.map((s) => s.rss));
  }

  stop(): Sample[] {
    clearInterval(this.timer);
    return this.samples;
  }
}
