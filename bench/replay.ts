// replay: a pcap file of a million packets read, parsed and tracked end to end
// (what `portcullis replay` does), against `pcap-parser` reading the same
// file and `tcpdump -n -r` printing it, in the same run.

import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { Batch } from '../dist/io/batch.js';
import { SyntheticSource } from '../dist/io/synth.js';
import { PcapFileWriter, openCapture } from '../dist/io/pcap-file.js';
import { Meta } from '../dist/wire/meta.js';
import { parseBatch } from '../dist/wire/parse.js';
import { FlowTable } from '../dist/flow/flow-table.js';
import { Counters } from '../dist/counters.js';
import { runBenny, heapGrowthPerOp, ratio, report, CACHE_DIR } from './common.js';

const PACKETS = Number(process.env.BENCH_PACKETS ?? 1_000_000);
fs.mkdirSync(CACHE_DIR, { recursive: true });
const file = path.join(CACHE_DIR, `replay-${PACKETS}.pcap`);
if (!fs.existsSync(file)) {
  const src = new SyntheticSource({ packets: PACKETS, flows: 10_000, payload: 64 });
  const w = new PcapFileWriter(file, { linkType: 1 });
  const b = new Batch();
  while (src.recv(b) > 0) w.writeBatch(b);
  w.close();
}

const batch = new Batch();
const meta = new Meta(batch.capacity);
const counters = new Counters();
const flows = new FlowTable({ capacity: 1 << 16, batchCapacity: batch.capacity }, counters);

function ours(): number {
  flows.clear();
  const r = openCapture(file);
  let n = 0, k: number;
  while ((k = r.recv(batch)) > 0) {
    parseBatch(batch, meta);
    flows.trackBatch(batch, meta, counters);
    n += k;
  }
  r.close();
  if (n !== PACKETS) throw new Error(`read ${n} packets, expected ${PACKETS}`);
  return n;
}

const require = createRequire(import.meta.url);
const pcapParser = require('pcap-parser');
function peerPcapParser(): Promise<number> {
  return new Promise((resolve, reject) => {
    let n = 0;
    const p = pcapParser.parse(fs.createReadStream(file));
    p.on('packet', () => { n++; });
    p.on('end', () => resolve(n));
    p.on('error', reject);
  });
}

function tcpdumpRate(): number {
  let best = 0;
  for (let i = 0; i < 3; i++) {
    const t0 = process.hrtime.bigint();
    const r = spawnSync('tcpdump', ['-n', '-r', file], { stdio: ['ignore', 'ignore', 'ignore'] });
    const sec = Number(process.hrtime.bigint() - t0) / 1e9;
    if (r.status !== 0) throw new Error(`tcpdump exited ${r.status}`);
    best = Math.max(best, PACKETS / sec);
  }
  return best;
}

const results = await runBenny('replay', [
  { name: 'portcullis read+parse+flow', ops: PACKETS, fn: ours },
  { name: 'pcap-parser read', ops: PACKETS, fn: async () => { await peerPcapParser(); } },
]);
const td = tcpdumpRate();
const o = results['portcullis read+parse+flow'].rate;
const pp = results['pcap-parser read'].rate;
const heap = await heapGrowthPerOp(ours, PACKETS);
report({
  suite: 'replay',
  packets: PACKETS,
  file_bytes: fs.statSync(file).size,
  results: { ...results, 'tcpdump -n -r': { rate: td } },
  ratios: { 'ours/tcpdump': ratio(o, td), 'ours/pcap-parser': ratio(o, pp) },
  heap_growth_per_packet: { 'portcullis read+parse+flow': heap.bytesPerOp, gcs_during_run: heap.gcs },
  targets: {
    'packets/s': { value: Math.round(o), target: '>= 5,000,000', met: o >= 5e6 },
    'ours/tcpdump': { value: ratio(o, td), target: '>= 20', met: o / td >= 20 },
    heap: { value: heap.bytesPerOp, target: '0 bytes/packet, no GC during the run', met: heap.bytesPerOp === 0 && heap.gcs === 0 },
  },
});
