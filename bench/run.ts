// `make bench [SUITE=name]`: runs each suite in its own process (so one
// suite's heap and JIT state does not colour the next) with --expose-gc.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BENCH_DIR } from './common.js';

const SUITES = ['parse', 'flow', 'replay', 'nat', 'lb', 'guard', 'live'];
/**
 * Suites made of several files, run in order. `lb`: Maglev (bench/lb.ts),
 * the distributor stage in the pipeline (bench/distributor.ts), TLS
 * termination against HAProxy (bench/lb-tls.ts), then bench/lb-merge.ts puts
 * the headline figures of all three into bench/results/lb.json.
 */
const GROUPS: Record<string, string[]> = {
  lb: ['lb', 'distributor', 'lb-tls', 'lb-merge'],
  // guard.ts writes bench/results/guard.json; guard-redis.ts (block propagation over Redis) merges into it.
  guard: ['guard-redis', 'guard'],
};
const want = process.argv.slice(2).filter(Boolean);
const run = (want.length ? want : SUITES).flatMap((s) => GROUPS[s] ?? [s]);
let failed = 0;
for (const s of run) {
  const file = path.join(BENCH_DIR, `${s}.ts`);
  if (!fs.existsSync(file)) {
    console.error(`bench: no suite '${s}' (have: ${SUITES.join(', ')})`);
    failed++;
    continue;
  }
  const r = spawnSync(process.execPath, ['--expose-gc', '--import=tsx', file], { stdio: 'inherit' });
  if (r.status !== 0) failed++;
}
process.exitCode = failed ? 1 : 0;
