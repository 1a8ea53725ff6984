// distributor: packets per second of parse + track + distribute against
// parse + track alone, over a VIP-heavy mix of 10,000 flows (80% of packets
// to four NAT services' VIP:port, the rest ordinary traffic), in batches of
// 256 as the appliance holds them. Prints the ratio 'distributor/pipeline'
// (what the stage costs on top of the pipeline it sits in) and heap growth.
//
// This suite imports src/ through tsx: parse, flow and lb bind what they
// import to module-local constants, so tsx's getter-per-import transform
// does not sit on the hot path.
// Run: node --expose-gc --import=tsx bench/distributor.ts   (about 15 s)
import { Counters } from '../src/counters.js';
import { Batch, Verdict } from '../src/io/batch.js';
import { LinkType, Meta } from '../src/wire/meta.js';
import { parseBatch } from '../src/wire/parse.js';
import { checksum, pseudoSum4 } from '../src/wire/checksum.js';
import { parseIpv4 } from '../src/wire/ipv4.js';
import { FlowTable } from '../src/flow/flow-table.js';
import { Distributor, type DistService } from '../src/lb/distributor.js';
import { runBenny, heapGrowthPerOp, ratio, report, type SuiteResult } from './common.js';

const PACKETS = Number(process.env.BENCH_PACKETS ?? 262_144);
const FLOWS = 10_000;
const BATCH = 256;

const services: DistService[] = [0, 1, 2, 3].map((s) => ({
  vip: `192.0.2.${10 + s}`, port: 443, proto: 6, mode: 'nat',
  targets: Array.from({ length: 8 }, (_, k) => ({ id: k, address: `10.9.${s}.${k + 1}`, port: 8443, weight: 1 + (k & 1) })),
}));

/** One Ethernet + IPv4 + TCP (ACK, 64 payload bytes) frame with valid checksums, written at `o`. */
function frame(buf: Buffer, o: number, src: number, dst: number, sp: number, dp: number): number {
  const ipLen = 20 + 20 + 64;
  buf.fill(0, o, o + 14 + ipLen);
  buf.writeUInt16BE(0x0800, o + 12);
  const l3 = o + 14;
  buf[l3] = 0x45;
  buf.writeUInt16BE(ipLen, l3 + 2);
  buf[l3 + 8] = 64;
  buf[l3 + 9] = 6;
  buf.writeUInt32BE(src >>> 0, l3 + 12);
  buf.writeUInt32BE(dst >>> 0, l3 + 16);
  buf.writeUInt16BE(checksum(buf, l3, 20), l3 + 10);
  const l4 = l3 + 20;
  buf.writeUInt16BE(sp, l4);
  buf.writeUInt16BE(dp, l4 + 2);
  buf[l4 + 12] = 5 << 4;
  buf[l4 + 13] = 0x10;
  buf.writeUInt16BE(65535, l4 + 14);
  buf.writeUInt16BE(checksum(buf, l4, 84, pseudoSum4(src, dst, 6, 84)), l4 + 16);
  return 14 + ipLen;
}

// The mix: flow k is to a VIP when k % 5 !== 0; packets cycle through the flows.
const vips = services.map((s) => parseIpv4(s.vip));
const other = parseIpv4('203.0.113.9');
const batches: Batch[] = [];
const pristine: Buffer[] = [];
{
  const scratch = Buffer.alloc(256);
  for (let p = 0; p < PACKETS;) {
    const b = new Batch(BATCH, BATCH * 128);
    for (let j = 0; j < BATCH && p < PACKETS; j++, p++) {
      const k = (p * 7919) % FLOWS;
      const src = parseIpv4(`10.${1 + (k >>> 12)}.${(k >>> 4) & 0xff}.${(k & 15) + 1}`);
      const len = frame(scratch, 0, src, k % 5 === 0 ? other : vips[k & 3], 1024 + k, k % 5 === 0 ? 80 : 443);
      b.push(scratch, 0, len, len, 1000, 0, LinkType.EN10MB);
    }
    batches.push(b);
    pristine.push(Buffer.from(b.arena.subarray(0, b.used)));
  }
}
const meta = new Meta(BATCH);
const counters = new Counters();
const flows = new FlowTable({ capacity: 32768, seed: 1 });
const dist = new Distributor({ flows, seed: 2 });
dist.configure(services);

function pipeline(): void {
  for (let k = 0; k < batches.length; k++) {
    const b = batches[k];
    parseBatch(b, meta);
    flows.trackBatch(b, meta, counters);
  }
}
function withDistributor(): void {
  for (let k = 0; k < batches.length; k++) {
    const b = batches[k];
    // NAT rewrites in place: put the client's bytes back (one copy per batch,
    // measured as its own case below and subtracted from nothing: it is small).
    pristine[k].copy(b.arena, 0);
    b.verdict.fill(Verdict.FORWARD);
    parseBatch(b, meta);
    flows.trackBatch(b, meta, counters);
    dist.distributeBatch(b, meta, flows.flowOf);
  }
}
function restoreOnly(): void {
  for (let k = 0; k < batches.length; k++) {
    pristine[k].copy(batches[k].arena, 0);
    batches[k].verdict.fill(Verdict.FORWARD);
  }
}

// Warm up and check the mix does what it says.
withDistributor();
withDistributor();
const c = dist.counters;
const distributed = c.get('lb_distributed');
if (!(distributed > PACKETS * 1.5 && c.get('lb_flow_assigned') >= FLOWS * 0.8 * 0.9)) {
  throw new Error(`mix not distributed as expected: ${JSON.stringify(c.toObject())}`);
}

const results = await runBenny('distributor', [
  { name: 'parse+track (pipeline)', fn: pipeline, ops: PACKETS },
  { name: 'parse+track+distribute', fn: withDistributor, ops: PACKETS },
  { name: 'restore bytes only', fn: restoreOnly, ops: PACKETS },
], 2);
const pipe = results['parse+track (pipeline)'].rate;
const full = results['parse+track+distribute'].rate;
const heapFull = await heapGrowthPerOp(withDistributor, PACKETS);
const heapPipe = await heapGrowthPerOp(pipeline, PACKETS);
report({
  suite: 'distributor',
  results: results as SuiteResult['results'],
  ratios: { 'distributor/pipeline': ratio(full, pipe) },
  heap_growth_per_packet: {
    'parse+track+distribute': Math.round(heapFull.bytesPerOp * 1e4) / 1e4,
    'parse+track (pipeline)': Math.round(heapPipe.bytesPerOp * 1e4) / 1e4,
  },
  gcs: { distribute: heapFull.gcs, pipeline: heapPipe.gcs },
  mix: { packets: PACKETS, flows: FLOWS, vip_share: 0.8, counters: c.toObject() },
});
