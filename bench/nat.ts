// nat: translateBatch over 256-packet batches of an established-mapping mix
// (10,000 conversations: 50% TCP with the handshake done, 30% UDP, 20% ICMP
// echo; half the packets outbound, half inbound replies; 64-byte payloads),
// measured against the parse-only pass over the same batches, in the same run.
//
// Every call restores each batch's bytes from a pristine copy (translation is
// in place), parses it and, in the NAT case, translates it. Both cases pay the
// restore and the parse, so
//   NAT cost per packet = 1/rate(parse+nat) - 1/rate(parse)
// and the ratio 'nat/parse' is the NAT's cost per packet over the parser's.
// Heap growth is measured over the whole NAT pass (target 0).
//
// No peer here: the kernel's NAT is measured by bench/live/ against the
// running appliance; this suite isolates the library core.
//
// Run: node --expose-gc --import=tsx bench/nat.ts   (about 20 s)

import { Batch, Verdict } from '../src/io/batch.js';
import { LinkType, Meta } from '../src/wire/meta.js';
import { parseBatch } from '../src/wire/parse.js';
import { checksum, pseudoSum4 } from '../src/wire/checksum.js';
import { Napt } from '../src/nat/napt.js';
import { NatCounters } from '../src/nat/counters.js';
import { runBenny, heapGrowthPerOp, ratio, report } from './common.js';

const FLOWS = Number(process.env.BENCH_NAT_FLOWS ?? 10_000);
const BATCHES = Number(process.env.BENCH_NAT_BATCHES ?? 400);
const BATCH = 256;
const T0 = 1_700_000_000;
const REMOTE_BASE = 0xc6130000; // 198.19.0.0/16 (benchmark range)
const INSIDE_BASE = 0x0a000000; // 10.0.0.0/8
const ETH = Buffer.from('0200000000020200000000010800', 'hex');

function frame(src: number, dst: number, proto: number, l4: Buffer): Buffer {
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + l4.length, 2);
  ip.writeUInt16BE(0x4000, 6);
  ip[8] = 64;
  ip[9] = proto;
  ip.writeUInt32BE(src >>> 0, 12);
  ip.writeUInt32BE(dst >>> 0, 16);
  ip.writeUInt16BE(checksum(ip, 0, 20), 10);
  return Buffer.concat([ETH, ip, l4]);
}
function tcp(src: number, dst: number, sp: number, dp: number, flags: number, payload: number): Buffer {
  const b = Buffer.alloc(20 + payload, 0x61);
  b.writeUInt16BE(sp, 0); b.writeUInt16BE(dp, 2); b.writeUInt32BE(1000, 4); b.writeUInt32BE(2000, 8);
  b[12] = 0x50; b[13] = flags; b.writeUInt16BE(65535, 14); b.writeUInt16BE(0, 16);
  b.writeUInt16BE(checksum(b, 0, b.length, pseudoSum4(src, dst, 6, b.length)), 16);
  return frame(src, dst, 6, b);
}
function udp(src: number, dst: number, sp: number, dp: number, payload: number): Buffer {
  const b = Buffer.alloc(8 + payload, 0x62);
  b.writeUInt16BE(sp, 0); b.writeUInt16BE(dp, 2); b.writeUInt16BE(b.length, 4); b.writeUInt16BE(0, 6);
  const c = checksum(b, 0, b.length, pseudoSum4(src, dst, 17, b.length));
  b.writeUInt16BE(c === 0 ? 0xffff : c, 6);
  return frame(src, dst, 17, b);
}
function echo(src: number, dst: number, type: number, id: number, payload: number): Buffer {
  const b = Buffer.alloc(8 + payload, 0x63);
  b[0] = type; b[1] = 0; b.writeUInt16BE(0, 2); b.writeUInt16BE(id, 4); b.writeUInt16BE(1, 6);
  b.writeUInt16BE(checksum(b, 0, b.length), 2);
  return frame(src, dst, 1, b);
}

// ---- the NAT and its established mappings ----
const napt = new Napt({
  insidePrefixes: ['10.0.0.0/8'], pool: ['198.18.0.1', '198.18.0.2', '198.18.0.3', '198.18.0.4'],
  capacity: 1 << 15, filtering: 'address-dependent', seed: 42,
});
const counters = new NatCounters();
const setup = new Batch(BATCH, BATCH * 256);
const setupMeta = new Meta(BATCH);
const setupDir = new Uint8Array(BATCH);

interface Flow { kind: number; ins: number; isp: number; rem: number; rp: number; P: number; p: number }
const flows: Flow[] = [];
let x = 0x12345678;
const rnd = () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0);
for (let f = 0; f < FLOWS; f++) {
  const r = f % 10;
  flows.push({
    kind: r < 5 ? 6 : r < 8 ? 17 : 1,
    ins: INSIDE_BASE + 1 + (f % 2000), isp: 20000 + Math.floor(f / 2000) * 2 + (f & 1), rem: REMOTE_BASE + (rnd() & 0xffff), rp: 443, P: 0, p: 0,
  });
}
function runSetup(pkts: Buffer[], dirs: number[]): void {
  setup.clear();
  pkts.forEach((p, k) => { setup.push(p, 0, p.length, p.length, T0, 0, LinkType.EN10MB); setupDir[k] = dirs[k]; });
  parseBatch(setup, setupMeta);
  napt.translateBatch(setup, setupMeta, setupDir, T0, counters);
  for (let k = 0; k < setup.count; k++) if (setup.verdict[k] !== Verdict.FORWARD) throw new Error(`setup packet ${k} dropped: ${JSON.stringify(counters.toObject())}`);
}
for (let f0 = 0; f0 < FLOWS; f0 += BATCH) {
  const chunk = flows.slice(f0, f0 + BATCH);
  runSetup(chunk.map((fl) => fl.kind === 6 ? tcp(fl.ins, fl.rem, fl.isp, fl.rp, 0x02, 0) : fl.kind === 17 ? udp(fl.ins, fl.rem, fl.isp, fl.rp, 64) : echo(fl.ins, fl.rem, 8, fl.isp, 56)), chunk.map(() => 0));
  chunk.forEach((fl, k) => { fl.P = setupMeta.src4[k]; fl.p = napt.outsidePortOf(napt.mappingOf[k]); });
  // Finish the TCP handshakes so the mix runs on established sessions.
  const syns = chunk.filter((fl) => fl.kind === 6);
  if (syns.length) runSetup(syns.map((fl) => tcp(fl.rem, fl.P, fl.rp, fl.p, 0x12, 0)), syns.map(() => 1));
}
if (napt.mappings !== FLOWS) throw new Error(`expected ${FLOWS} mappings, have ${napt.mappings}`);

// ---- the mix: BATCHES batches of 256 packets, pristine copies kept ----
const batches: Batch[] = [];
const pristine: Buffer[] = [];
const dirs: Uint8Array[] = [];
for (let b = 0; b < BATCHES; b++) {
  const batch = new Batch(BATCH, BATCH * 160);
  const dir = new Uint8Array(BATCH);
  for (let k = 0; k < BATCH; k++) {
    const fl = flows[rnd() % FLOWS];
    const inbound = (rnd() & 1) === 1;
    let p: Buffer;
    if (fl.kind === 6) p = inbound ? tcp(fl.rem, fl.P, fl.rp, fl.p, 0x18, 64) : tcp(fl.ins, fl.rem, fl.isp, fl.rp, 0x18, 64);
    else if (fl.kind === 17) p = inbound ? udp(fl.rem, fl.P, fl.rp, fl.p, 64) : udp(fl.ins, fl.rem, fl.isp, fl.rp, 64);
    else p = inbound ? echo(fl.rem, fl.P, 0, fl.p, 56) : echo(fl.ins, fl.rem, 8, fl.isp, 56);
    batch.push(p, 0, p.length, p.length, T0, 0, LinkType.EN10MB);
    dir[k] = inbound ? 1 : 0;
  }
  batches.push(batch);
  pristine.push(Buffer.from(batch.arena.subarray(0, batch.used)));
  dirs.push(dir);
}
const meta = new Meta(BATCH);
const PACKETS = BATCHES * BATCH;

function restore(b: number): Batch {
  const batch = batches[b];
  pristine[b].copy(batch.arena, 0);
  batch.verdict.fill(Verdict.FORWARD);
  return batch;
}
function parseOnly(): void {
  for (let b = 0; b < BATCHES; b++) parseBatch(restore(b), meta);
}
let dropped = 0;
function parseAndNat(): void {
  for (let b = 0; b < BATCHES; b++) {
    const batch = restore(b);
    parseBatch(batch, meta);
    napt.translateBatch(batch, meta, dirs[b], T0 + 1.25, counters); // fractional: packet time is tsSec + tsNsec / 1e9
    if (batch.verdict[0] !== Verdict.FORWARD) dropped++;
  }
}

parseAndNat();
if (dropped !== 0) throw new Error(`mix packets dropped: ${JSON.stringify(counters.toObject())}`);
const before = counters.toObject();

const results = await runBenny('nat', [
  { name: 'parse only', ops: PACKETS, fn: parseOnly },
  { name: 'parse + translateBatch', ops: PACKETS, fn: parseAndNat },
], 2);
const heap = await heapGrowthPerOp(parseAndNat, PACKETS);
const after = counters.toObject();
const parseRate = results['parse only'].rate;
const bothRate = results['parse + translateBatch'].rate;
const natNsPerPkt = 1e9 / bothRate - 1e9 / parseRate;
const parseNsPerPkt = 1e9 / parseRate;
const natRate = natNsPerPkt > 0 ? 1e9 / natNsPerPkt : NaN;

report({
  suite: 'nat',
  packets: PACKETS,
  flows: FLOWS,
  results: {
    ...results,
    'translateBatch (derived)': { rate: Math.round(natRate), ns_per_packet: Math.round(natNsPerPkt * 10) / 10 },
  },
  ratios: {
    'nat/parse': ratio(natNsPerPkt, parseNsPerPkt),
    'parse+nat vs parse (throughput)': ratio(bothRate, parseRate),
  },
  heap_growth_per_packet: { 'parse + translateBatch': heap.bytesPerOp },
  gcs_during_heap_run: heap.gcs,
  translated_during_run: (after.nat_out_translated - before.nat_out_translated) + (after.nat_in_translated - before.nat_in_translated),
  drops_during_run: Object.entries(after).filter(([k]) => k.startsWith('nat_drop')).reduce((s, [k, v]) => s + v - (before[k] ?? 0), 0),
  targets: {
    // Per packet nothing is allocated; per batch the caller's fractional nowSec
    // argument is boxed (16 bytes / 256 packets = 0.06), hence < 0.1.
    heap_growth_per_packet: { value: heap.bytesPerOp, target: '< 0.1 bytes (0 per packet)', met: heap.bytesPerOp < 0.1 && heap.gcs === 0 },
  },
});
