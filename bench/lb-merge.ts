// The last step of `make bench SUITE=lb`: bench/results/lb.json gets the
// headline figures of the three lb suites run just before it (Maglev
// lookups from bench/lb.ts, the distributor stage from bench/distributor.ts,
// TLS termination against HAProxy from bench/lb-tls.ts), so one file answers
// "how fast is the distributor" with the ratios measured in the same run.

import fs from 'node:fs';
import path from 'node:path';
import { RESULTS_DIR } from './common.js';

function read(name: string): Record<string, unknown> {
  const file = path.join(RESULTS_DIR, `${name}.json`);
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`lb-merge: cannot read ${file} (run the ${name} suite first): ${(err as Error).message}`);
  }
}

const lb = read('lb');
const dist = read('distributor');
const tls = read('lb-tls');
const ratios = { ...(lb.ratios as Record<string, number>) };
const tlsRatios = tls.ratios as Record<string, number>;
for (const k of ['ours/haproxy-tls-handshakes', 'ours/haproxy-https-requests', 'ours/haproxy-tls-handshakes per proxy cpu-s', 'ours/haproxy-https-requests per proxy cpu-s']) ratios[k] = tlsRatios[k];
ratios['distributor/pipeline'] = (dist.ratios as Record<string, number>)['distributor/pipeline'];
const dres = dist.results as Record<string, { rate: number }>;
const merged: Record<string, unknown> & { ratios: Record<string, number> } = {
  ...lb,
  ratios,
  distributor_pps: Math.round(dres['parse+track+distribute'].rate),
  pipeline_pps: Math.round(dres['parse+track (pipeline)'].rate),
  tls: { results: tls.results, setup: tls.setup, targets: tls.targets },
  targets: { ...(lb.targets as object), ...(tls.targets as object) },
  merged_from: ['lb.json (bench/lb.ts)', 'distributor.json (bench/distributor.ts)', 'lb-tls.json (bench/lb-tls.ts)'],
};
fs.writeFileSync(path.join(RESULTS_DIR, 'lb.json'), JSON.stringify(merged, null, 2) + '\n');
console.log('\n## lb (merged)');
console.log(`  maglev_lookups_per_s          ${merged.maglev_lookups_per_s}`);
console.log(`  distributor pkt/s (pipeline)  ${merged.distributor_pps} (parse+track alone ${merged.pipeline_pps}, ratio ${ratios['distributor/pipeline']})`);
console.log(`  ours/haproxy-tls-handshakes   ${ratios['ours/haproxy-tls-handshakes']}`);
console.log(`  ours/haproxy-https-requests   ${ratios['ours/haproxy-https-requests']}`);
console.log('  wrote bench/results/lb.json');
