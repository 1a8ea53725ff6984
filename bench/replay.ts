// replay: a pcap file of a million packets read, parsed and tracked end to end
// (what `portcullis replay` does), against `pcap-parser` reading the same
// file and `tcpdump -n -r` printing it, in the same run. Ours runs twice:
// everything on one thread, and reading + parsing on a worker thread (the
// replay command's default) with the flow table on the main thread.

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
import { ThreadedCapture } from '../dist/pipeline/threaded-capture.js';
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

function ours(max = PACKETS): number {
  flows.clear();
  const r = openCapture(file);
  let n = 0, k: number;
  while (n < max && (k = r.recv(batch)) > 0) {
    parseBatch(batch, meta);
    flows.trackBatch(batch, meta, counters);
    n += k;
  }
  r.close();
  if (max === PACKETS && n !== PACKETS) throw new Error(`read ${n} packets, expected ${PACKETS}`);
  return n;
}

function oursThreaded(max = PACKETS): number {
  flows.clear();
  const tc = new ThreadedCapture(file);
  let n = 0;
  while (n < max && tc.next()) {
    flows.trackBatch(tc.batch, tc.meta, counters);
    n += tc.batch.count;
    tc.release();
  }
  tc.close();
  if (max === PACKETS && n !== PACKETS) throw new Error(`read ${n} packets, expected ${PACKETS}`);
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
  { name: 'portcullis read+parse+flow (1 thread)', ops: PACKETS, fn: ours },
  { name: 'portcullis read+parse | flow (2 threads)', ops: PACKETS, fn: oursThreaded },
  { name: 'pcap-parser read', ops: PACKETS, fn: async () => { await peerPcapParser(); } },
]);
const td = tcpdumpRate();
const o1 = results['portcullis read+parse+flow (1 thread)'].rate;
const o2 = results['portcullis read+parse | flow (2 threads)'].rate;
const o = Math.max(o1, o2);
const pp = results['pcap-parser read'].rate;
// Each run opens the file (and starts a job on the reader thread): compare a
// full run with a quarter run so that set-up is not counted per packet.
const QUARTER = PACKETS / 4;
const heap = await heapGrowthPerOp(ours, PACKETS, { fn: () => ours(QUARTER), ops: ours(QUARTER) });
const heap2 = await heapGrowthPerOp(oursThreaded, PACKETS, { fn: () => oursThreaded(QUARTER), ops: oursThreaded(QUARTER) });
report({
  suite: 'replay',
  packets: PACKETS,
  file_bytes: fs.statSync(file).size,
  results: { ...results, 'tcpdump -n -r': { rate: td } },
  ratios: {
    'ours/tcpdump': ratio(o, td), 'ours/pcap-parser': ratio(o, pp),
    'ours-1thread/tcpdump': ratio(o1, td), 'ours-2threads/1thread': ratio(o2, o1),
  },
  heap_growth_per_packet: {
    '1 thread': heap.bytesPerOp, '1 thread gcs_during_run': heap.gcs,
    '2 threads (main thread)': heap2.bytesPerOp, '2 threads gcs_during_run': heap2.gcs,
  },
  targets: {
    'packets/s': { value: Math.round(o), target: '>= 5,000,000', met: o >= 5e6 },
    'ours/tcpdump': { value: ratio(o, td), target: '>= 20', met: o / td >= 20 },
    heap: { value: Math.max(heap.bytesPerOp, heap2.bytesPerOp), target: '0 bytes/packet, no GC during the run', met: heap.bytesPerOp === 0 && heap.gcs === 0 && heap2.bytesPerOp === 0 && heap2.gcs === 0 },
  },
});
