// Shared pieces of the benchmark suites: benny cases that report packets per
// second, the C floors (compiled with `cc -O2` in the same run), heap growth
// per packet, and the results file with its `ratios` object.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PerformanceObserver } from 'node:perf_hooks';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const RESULTS_DIR = path.join(BENCH_DIR, 'results');
export const CACHE_DIR = path.join(BENCH_DIR, '.cache');

/** Compiles bench/c/<name>.c with cc -O2 (again only when the source is newer) and returns the binary. */
export function buildCFloor(name: string): string {
  const src = path.join(BENCH_DIR, 'c', `${name}.c`);
  const bin = path.join(BENCH_DIR, 'c', `${name}.bin`);
  if (!fs.existsSync(bin) || fs.statSync(bin).mtimeMs < fs.statSync(src).mtimeMs) {
    execFileSync('cc', ['-O2', '-Wall', '-o', bin, src], { stdio: 'inherit' });
  }
  return bin;
}

/** Runs a C floor that prints one JSON object on its last line. */
export function runCFloor(bin: string, args: string[]): Record<string, number> {
  const out = execFileSync(bin, args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  const last = out.trim().split('\n').pop() ?? '{}';
  return JSON.parse(last) as Record<string, number>;
}

export interface Measured {
  /** Operations (packets, lookups) per second. */
  rate: number;
  /** Relative margin of error in percent, when benny measured it. */
  margin?: number;
}

export interface BenchCase {
  name: string;
  /** One call performs `ops` operations (packets, lookups). */
  fn: () => void;
  ops: number;
}

/**
 * Runs the cases as one benny suite (benchmark.js underneath: warm-up,
 * samples, margin of error) and returns operations per second per case, with
 * benny's ops/s (calls per second) multiplied by the operations per call.
 */
export async function runBenny(suite: string, cases: BenchCase[], maxTime = 2): Promise<Record<string, Measured>> {
  const b = (await import('benny')).default;
  const summary = await b.suite(
    suite,
    ...cases.map((c) => b.add(c.name, c.fn)),
    b.configure({ cases: { maxTime, minSamples: 5 } }),
  );
  const out: Record<string, Measured> = {};
  for (const r of summary.results) {
    const c = cases.find((x) => x.name === r.name)!;
    // benny rounds ops (calls/s) to a whole number, too coarse when one call
    // is a million packets: use the mean time per call it measured.
    const mean = r.details?.mean;
    out[r.name] = { rate: mean ? c.ops / mean : r.ops * c.ops, margin: r.margin };
  }
  return out;
}

/**
 * Heap growth per operation: after a full GC, run `fn` (performing `ops`
 * operations) once and twice, comparing heapUsed without collecting in
 * between, while counting the garbage collections that ran. Zero growth with
 * zero collections means nothing was allocated per operation (a collection
 * during the run would hide garbage, so callers require gcs === 0 too).
 */
export async function heapGrowthPerOp(fn: () => void, ops: number, small?: { fn: () => void; ops: number }): Promise<{ bytesPerOp: number; gcs: number }> {
  const gc = (globalThis as { gc?: () => void }).gc;
  // The measurement itself (memoryUsage, the observer) allocates a little:
  // measure an empty run the same way and subtract it.
  const measure = async (f: () => void) => {
    let gcs = 0;
    const obs = new PerformanceObserver((list) => { gcs += list.getEntries().length; });
    gc?.();
    obs.observe({ entryTypes: ['gc'] });
    const before = process.memoryUsage().heapUsed;
    f();
    const after = process.memoryUsage().heapUsed;
    // GC entries are delivered asynchronously: let them arrive before counting.
    await new Promise((r) => setTimeout(r, 20));
    obs.disconnect();
    return { grew: after - before, gcs };
  };
  fn(); // warm-up: JIT, inline caches, lazily created tables
  await measure(fn);
  if (small) {
    // A run that has set-up work of its own (opening a file, starting a job)
    // is compared with a shorter run of the same kind: the difference is
    // what the extra packets cost.
    small.fn();
    const big = await measure(fn);
    const little = await measure(small.fn);
    const per = Math.max(0, big.grew - little.grew) / (ops - small.ops);
    return { bytesPerOp: per < 0.001 ? 0 : Math.round(per * 1000) / 1000, gcs: big.gcs + little.gcs };
  }
  // One run and two runs: the difference is what a run allocates and keeps,
  // free of the constant cost of measuring (and of one-off JIT artefacts).
  const one = await measure(fn);
  const two = await measure(() => { fn(); fn(); });
  const perOp = Math.max(0, two.grew - one.grew) / ops;
  // Below a thousandth of a byte per packet nothing is allocated per packet
  // (one object per packet would be 16 bytes or more): report it as 0.
  return { bytesPerOp: perOp < 0.001 ? 0 : Math.round(perOp * 1000) / 1000, gcs: one.gcs + two.gcs };
}

export interface SuiteResult {
  suite: string;
  results: Record<string, Measured & Record<string, unknown>>;
  ratios: Record<string, number>;
  heap_growth_per_packet: Record<string, number>;
  targets?: Record<string, { value: number; target: string; met: boolean }>;
  [extra: string]: unknown;
}

export function ratio(a: number, b: number): number {
  return b > 0 ? Math.round((a / b) * 100) / 100 : NaN;
}

export function fmtRate(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M/s`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k/s`;
  return `${n.toFixed(0)} /s`;
}

/** Prints the suite's table and writes bench/results/<suite>.json. */
export function report(r: SuiteResult): void {
  const rows = Object.entries(r.results).map(([name, m]) => ({ name, rate: fmtRate(m.rate), margin: m.margin === undefined ? '' : `±${m.margin}%` }));
  const w = Math.max(...rows.map((x) => x.name.length), 4);
  console.log(`\n## ${r.suite}`);
  for (const x of rows) console.log(`  ${x.name.padEnd(w)}  ${x.rate.padStart(12)}  ${x.margin}`);
  console.log('  ratios:');
  for (const [k, v] of Object.entries(r.ratios)) console.log(`    ${k.padEnd(w)}  ${v}`);
  console.log('  heap growth per packet (bytes):');
  for (const [k, v] of Object.entries(r.heap_growth_per_packet)) console.log(`    ${k.padEnd(w)}  ${v}`);
  if (r.targets) {
    console.log('  targets:');
    for (const [k, t] of Object.entries(r.targets)) console.log(`    ${k.padEnd(w)}  ${t.value} (${t.target}) ${t.met ? 'met' : 'NOT met'}`);
  }
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${r.suite}.json`);
  const out = { ...r, date: new Date().toISOString(), node: process.version, cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length };
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  console.log(`  wrote ${path.relative(process.cwd(), file)}`);
}
