// parse: our parser over one in-memory batch of a million packets with a
// realistic mix (IPv4 and IPv6, TCP, UDP, ICMP, VLAN, fragments, 10,000
// flows), against the `cap` package's decoders and a C floor (bench/c/parse.c)
// that extracts the same fields from the same packets, in the same run.
//
// The million packets sit in memory as the appliance holds them: batches of
// 256 packets, each parsed into one reused Meta. A second case parses all of
// them as one batch into a Meta of a million entries (memory-bound: 22 typed
// arrays of a million entries each are written).
//
// Benchmarks import the compiled code in dist/ (what the CLI runs): tsx's
// module transform turns every imported binding into a getter call and would
// measure that instead.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { Batch } from '../dist/io/batch.js';
import { SyntheticSource } from '../dist/io/synth.js';
import { PcapFileWriter } from '../dist/io/pcap-file.js';
import { Meta, MetaFlag } from '../dist/wire/meta.js';
import { parseBatch } from '../dist/wire/parse.js';
import { buildCFloor, runCFloor, runBenny, heapGrowthPerOp, ratio, report, CACHE_DIR } from './common.js';

const PACKETS = Number(process.env.BENCH_PACKETS ?? 1_000_000);
const CAP_PACKETS = 100_000; // cap's decoders build strings per packet: a subset keeps the run short

const big = new Batch(PACKETS, PACKETS * 160);
new SyntheticSource({ packets: PACKETS, flows: 10_000, payload: 64 }).recv(big);
if (big.count !== PACKETS) throw new Error(`mix holds ${big.count} packets, wanted ${PACKETS}`);
const bigMeta = new Meta(PACKETS);
// The same packets (same seed) in 256-packet batches.
const batches: Batch[] = [];
{
  const src = new SyntheticSource({ packets: PACKETS, flows: 10_000, payload: 64 });
  for (;;) {
    const b = new Batch(256, 256 * 160);
    if (src.recv(b) === 0) break;
    batches.push(b);
  }
}
const meta = new Meta(256);
function parseAll(): void {
  for (let k = 0; k < batches.length; k++) parseBatch(batches[k], meta);
}

// The same packets on disk for the C floor.
fs.mkdirSync(CACHE_DIR, { recursive: true });
const mixFile = path.join(CACHE_DIR, 'parse-mix.pcap');
const w = new PcapFileWriter(mixFile, { linkType: 1 });
w.writeBatch(big);
w.close();

/** The sum the C floor computes too: proves both extracted the same fields. */
function checkSum(m: Meta, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) {
    const f = m.flags[i];
    if (!(f & MetaFlag.L3)) continue;
    const p = m.l4Proto[i];
    s += p + m.fragOff[i] + m.l4Off[i];
    if (p === 1 || p === 58) { if (f & MetaFlag.L4) s += m.icmpType[i] + m.icmpCode[i]; }
    else if (f & MetaFlag.PORTS) s += m.srcPort[i] + m.dstPort[i];
    if (f & MetaFlag.TCP_FLAGS) s += m.tcpFlags[i];
  }
  return s;
}

// cap's decoders, as its README uses them.
const require = createRequire(import.meta.url);
const decoders = require('cap').decoders;
function capDecode(b: Batch, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) {
    const buf = b.arena.subarray(b.off[i], b.off[i] + b.capLen[i]);
    const eth = decoders.Ethernet(buf);
    let r;
    if (eth.info.type === 0x0800) r = decoders.IPV4(buf, eth.offset);
    else if (eth.info.type === 0x86dd) r = decoders.IPV6(buf, eth.offset);
    else continue;
    const proto = r.info.protocol;
    if (proto === 6) s += decoders.TCP(buf, r.offset).info.srcport;
    else if (proto === 17) s += decoders.UDP(buf, r.offset).info.srcport;
  }
  return s;
}

let check = 0;
for (const b of batches) { parseBatch(b, meta); check += checkSum(meta, b.count); }
parseBatch(big, bigMeta);
const checkBig = checkSum(bigMeta, PACKETS);
const cfloor = runCFloor(buildCFloor('parse'), [mixFile, '10']);

const results = await runBenny('parse', [
  { name: 'portcullis parseBatch (256-packet batches)', ops: PACKETS, fn: parseAll },
  { name: 'portcullis parseBatch (one 1M batch)', ops: PACKETS, fn: () => parseBatch(big, bigMeta) },
  { name: 'cap decoders', ops: CAP_PACKETS, fn: () => capDecode(big, CAP_PACKETS) },
]);
const ours = results['portcullis parseBatch (256-packet batches)'].rate;
const capRate = results['cap decoders'].rate;
const heap = await heapGrowthPerOp(parseAll, PACKETS);

report({
  suite: 'parse',
  packets: PACKETS,
  results: { ...results, 'C floor (cc -O2)': { rate: cfloor.pps } },
  ratios: {
    'ours/c-floor': ratio(ours, cfloor.pps),
    'ours/cap': ratio(ours, capRate),
    'ours-one-batch/c-floor': ratio(results['portcullis parseBatch (one 1M batch)'].rate, cfloor.pps),
  },
  fields_agree_with_c_floor: cfloor.check === check && checkBig === check,
  heap_growth_per_packet: { 'portcullis parseBatch (256-packet batches)': heap.bytesPerOp, gcs_during_run: heap.gcs },
  targets: {
    'ours/c-floor': { value: ratio(ours, cfloor.pps), target: '>= 0.5', met: ours / cfloor.pps >= 0.5 },
    'ours/cap': { value: ratio(ours, capRate), target: '>= 30', met: ours / capRate >= 30 },
    heap: { value: heap.bytesPerOp, target: '0 bytes/packet, no GC during the run', met: heap.bytesPerOp === 0 && heap.gcs === 0 },
  },
});
if (cfloor.check !== check || checkBig !== check) console.log(`  WARNING: field checksum differs: ours ${check} (one batch ${checkBig}), C floor ${cfloor.check}`);
