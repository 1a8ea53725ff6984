// guard: the connection guard's data-path decisions and what it adds to the
// pipeline, each against a baseline in the same run.
//
// - Sensor decisions per second: GuardSensor.inspect over 40 prepared
//   256-packet batches of IPv4 TCP metadata (10,000 sources in
//   198.18.0.0/16, a quarter of the packets SYN, the rest ACK), as the parser
//   fills it. One decision per packet: blocked or not, attempt or not. Run
//   with an empty enforcement table, with 1,000 blocked addresses (no
//   source matches), with those plus three prefixes (a /24, a /24, a /16: a
//   lookup then tests three prefix lengths' bitmaps), and with 10% of the sources
//   blocked (the drop path). Baselines: the same metadata walked by a loop
//   that only reads what the sensor reads, and the C floor
//   (bench/c/guard.c: the same algorithm and stream, cc -O2).
// - Bucket decisions per second: the monitor's per-address evaluation
//   (AddressState.apply: token bucket, window, concurrent, incomplete,
//   score) over 65,536 addresses.
// - The pipeline: parse + flow tracking of Ethernet frames (10,000 TCP
//   flows, established, 1 in 16 packets a SYN), without and with the guard
//   (inspect before tracking, afterTrack after, 1,000 blocked addresses):
//   the ratio pipeline-with-guard/pipeline is what is left of the
//   pipeline's rate.
// - Heap growth per packet of the sensor and of the pipeline with the guard.
//
// The machine these run on is shared (2 cores, other jobs): besides benny's
// mean and margin, the headline figures are also taken as the best of 9
// interleaved timed runs of each case (the least disturbed run is the
// closest to what the code costs; interleaving makes drift hit the cases
// alike), and the pipeline ratio comes from those.
//
// Writes bench/results/guard.json by read-modify-write: keys this suite does
// not own (bench/guard-redis.ts adds redis_block_p99_ms and more) are kept.
//
// Run: node --expose-gc --import=tsx bench/guard.ts   (about 40 s)

import fs from 'node:fs';
import path from 'node:path';
import { Counters } from '../src/counters.js';
import { Batch, Verdict } from '../src/io/batch.js';
import { LinkType, Meta, MetaFlag } from '../src/wire/meta.js';
import { parseBatch } from '../src/wire/parse.js';
import { checksum } from '../src/wire/checksum.js';
import { FlowTable } from '../src/flow/flow-table.js';
import { GuardSensor } from '../src/guard/sensor.js';
import { Blocklist } from '../src/guard/blocklist.js';
import { AddressState } from '../src/guard/monitor.js';
import type { BlockEntry } from '../src/guard/bus.js';
import { formatIpv4 } from '../src/wire/ipv4.js';
import { buildCFloor, runCFloor, runBenny, heapGrowthPerOp, ratio, report, RESULTS_DIR, type Measured, type SuiteResult } from './common.js';

const BATCH = 256;
const BATCHES = 40;
const SOURCES = 10_000;
const BLOCKED = 1000;
const SYN = 0x02, ACK = 0x10;

// ---- the sensor's input: Meta as the parser fills it (same stream as bench/c/guard.c) ----
function lcgStream(n: number): { src: Int32Array; tcp: Uint16Array } {
  const src = new Int32Array(n), tcp = new Uint16Array(n);
  let x = 12345;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    src[i] = (0xc6120000 + ((x >>> 8) % SOURCES) * 5) | 0;
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    tcp[i] = ((x >>> 16) & 3) === 0 ? SYN : ACK;
  }
  return { src, tcp };
}

const stream = lcgStream(BATCHES * BATCH);
const metaBatches: { batch: Batch; meta: Meta }[] = [];
{
  const frame = Buffer.alloc(54);
  for (let b = 0; b < BATCHES; b++) {
    const batch = new Batch(BATCH, BATCH * 64), meta = new Meta(BATCH);
    for (let i = 0; i < BATCH; i++) {
      const j = b * BATCH + i;
      batch.push(frame, 0, 54, 60, 1000, 0, LinkType.EN10MB);
      meta.reset(i);
      meta.flags[i] = MetaFlag.L3 | MetaFlag.L4 | MetaFlag.PORTS | MetaFlag.TCP_FLAGS;
      meta.ipVersion[i] = 4; meta.l3Off[i] = 14; meta.l4Off[i] = 34; meta.l4Proto[i] = 6; meta.l4Len[i] = 20;
      meta.src4[i] = stream.src[j]; meta.dst4[i] = 0xc6130101;
      meta.srcPort[i] = 1024 + (j & 0x7fff); meta.dstPort[i] = 443;
      meta.tcpFlags[i] = stream.tcp[j];
    }
    meta.count = BATCH;
    metaBatches.push({ batch, meta });
  }
}
const FLAGS0 = metaBatches.map(({ meta }) => meta.flags.slice());

function entry(addr: string): BlockEntry {
  return { addr, until: 0, rule: 'manual', score: 0, nodes: [], offences: 1, at: 0 };
}
const exact = Array.from({ length: BLOCKED }, (_, i) => entry(formatIpv4(0xc6130000 + i * 13)));
const prefixes = [entry('203.0.113.0/24'), entry('192.0.2.0/24'), entry('100.64.0.0/16')];

function makeSensor(entries: BlockEntry[]): { s: GuardSensor; counters: Counters } {
  const counters = new Counters();
  const s = new GuardSensor({ seed: 5, capacity: 1 << 16 }, counters);
  if (entries.length) {
    const bl = new Blocklist();
    bl.rebuild(entries, []);
    s.blocklist = bl;
  }
  return { s, counters };
}
const sensors = {
  empty: makeSensor([]),
  exact: makeSensor(exact),
  prefixes: makeSensor([...exact, ...prefixes]),
  // 10% of the sources blocked (every tenth source address), plus the rest.
  dropping: makeSensor([...exact, ...prefixes, ...Array.from({ length: SOURCES / 10 }, (_, k) => entry(formatIpv4(0xc6120000 + k * 10 * 5)))]),
};

let sink = 0;
function inspectAll(s: GuardSensor, restore: boolean): void {
  for (let k = 0; k < BATCHES; k++) {
    const { batch, meta } = metaBatches[k];
    if (restore) {
      // The drop path writes verdicts and clears L3: put the batch back (also paid by nothing else, so it is on the case's bill).
      batch.verdict.fill(Verdict.FORWARD);
      meta.flags.set(FLAGS0[k]);
    }
    s.inspect(batch, meta, 1000);
  }
}

/** The baseline: a loop reading what the sensor reads per packet, deciding nothing. */
function walkAll(): void {
  let acc = 0;
  for (let k = 0; k < BATCHES; k++) {
    const { batch, meta } = metaBatches[k];
    const v = batch.verdict, fl = meta.flags, pr = meta.l4Proto, tf = meta.tcpFlags, src = meta.src4;
    for (let i = 0; i < BATCH; i++) {
      if (v[i] !== 0 || (fl[i] & 1) === 0 || pr[i] !== 6) continue;
      if ((tf[i] & 0x12) === 0x02) acc += src[i] & 1;
    }
  }
  sink += acc;
}

// ---- the monitor's per-address decision ----
const ADDRS = 1 << 16;
const state = new AddressState(ADDRS, [{ rate: 100, burst: 200, totalMax: 6000, totalWindow: 60, concurrent: 512, incomplete: 64 }],
  { rate: 2, total: 1, concurrent: 1, incomplete: 1, suspicious: 25 }, 60);
for (let s = 0; s < ADDRS; s++) state.init(s, 0, false, 0);
// Int32Arrays: counts are integers, as they arrive in delta batches (a double argument would be boxed).
const dAtt = new Int32Array(ADDRS), dDone = new Int32Array(ADDRS), dSusp = new Int32Array(ADDRS);
{
  let x = 777;
  for (let s = 0; s < ADDRS; s++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    dAtt[s] = (x >>> 20) % 150;
    dDone[s] = dAtt[s] - ((x >>> 8) & 3);
    dSusp[s] = (x & 0xff) === 0 ? 1 : 0;
  }
}
let monNow = 0;
function evaluateAll(): void {
  monNow += 1;
  state.clock[0] = monNow;
  const c = state.contrib;
  let pts = 0;
  for (let s = 0; s < ADDRS; s++) {
    state.apply(s, dAtt[s], dSusp[s], dDone[s], dDone[s], true);
    pts += c[5];
  }
  sink += pts > 0 ? 1 : 0;
}

// ---- the pipeline: frames -> parse -> (guard) -> flow tracking ----
const FLOWS = 10_000;
const pipeBatches: Batch[] = [];
{
  const mk = (src: number, dst: number, sp: number, dp: number, flags: number): Buffer => {
    const f = Buffer.alloc(14 + 20 + 20 + 64, 0x61);
    Buffer.from('0200000000020200000000010800', 'hex').copy(f, 0);
    const ip = 14;
    f[ip] = 0x45; f[ip + 1] = 0; f.writeUInt16BE(20 + 20 + 64, ip + 2); f.writeUInt16BE(0, ip + 4); f.writeUInt16BE(0x4000, ip + 6);
    f[ip + 8] = 64; f[ip + 9] = 6; f.writeUInt16BE(0, ip + 10);
    f.writeUInt32BE(src >>> 0, ip + 12); f.writeUInt32BE(dst >>> 0, ip + 16);
    f.writeUInt16BE(checksum(f, ip, 20), ip + 10);
    const t = ip + 20;
    f.writeUInt16BE(sp, t); f.writeUInt16BE(dp, t + 2); f.writeUInt32BE(1, t + 4); f.writeUInt32BE(1, t + 8);
    f[t + 12] = 0x50; f[t + 13] = flags; f.writeUInt16BE(65535, t + 14); f.writeUInt16BE(0, t + 16); f.writeUInt16BE(0, t + 18);
    return f;
  };
  let x = 4242;
  for (let b = 0; b < BATCHES; b++) {
    const batch = new Batch(BATCH, BATCH * 128);
    for (let i = 0; i < BATCH; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const fl = (x >>> 10) % FLOWS;
      const src = 0xc6120000 + (fl % SOURCES) * 5;
      const f = mk(src, 0xc6130101, 1024 + (fl >>> 2), 443, ((x >>> 4) & 15) === 0 ? SYN : ACK);
      batch.push(f, 0, f.length, f.length, 1000, 0, LinkType.EN10MB);
    }
    pipeBatches.push(batch);
  }
}
const pipeMeta = new Meta(BATCH);
const plain = { flows: new FlowTable({ capacity: 1 << 15, seed: 9 }), counters: new Counters(), round: 0 };
const guarded = (() => {
  const counters = new Counters();
  const flows = new FlowTable({ capacity: 1 << 15, seed: 9 }, counters);
  const s = new GuardSensor({ seed: 5 }, counters);
  const bl = new Blocklist();
  bl.rebuild(exact, []);
  s.blocklist = bl;
  return { flows, counters, s, round: 0 };
})();

function pipelinePlain(): void {
  plain.round++;
  for (let k = 0; k < BATCHES; k++) {
    const b = pipeBatches[k];
    b.tsSec[0] = 1000 + plain.round;
    parseBatch(b, pipeMeta);
    plain.flows.trackBatch(b, pipeMeta, plain.counters);
  }
}
function pipelineGuard(): void {
  const g = guarded;
  g.round++;
  for (let k = 0; k < BATCHES; k++) {
    const b = pipeBatches[k];
    b.tsSec[0] = 1000 + g.round;
    parseBatch(b, pipeMeta);
    g.s.inspect(b, pipeMeta, 1000 + g.round);
    g.flows.trackBatch(b, pipeMeta, g.counters);
    g.s.afterTrack(g.flows);
  }
  // The control plane's share, at its real pace (once per interval, here
  // about once per 10 calls): sweep and flush (allocation lives there).
  if (g.round % 10 === 0) {
    g.s.sweep(g.flows);
    sink += g.s.flush('bench', g.round, 0).deltas.length;
  }
}

async function main(): Promise<void> {
  const cBin = buildCFloor('guard');
  const n = BATCHES * BATCH * 32;
  const cEmpty = runCFloor(cBin, [String(n), String(SOURCES), '0', '0']);
  const cExact = runCFloor(cBin, [String(n), String(SOURCES), String(BLOCKED), '0']);
  const cPref = runCFloor(cBin, [String(n), String(SOURCES), String(BLOCKED), '1']);

  const P = BATCHES * BATCH;
  const cases = [
    { name: 'baseline: metadata walk', fn: walkAll, ops: P },
    { name: 'sensor, empty table', fn: () => inspectAll(sensors.empty.s, false), ops: P },
    { name: 'sensor, 1000 blocked', fn: () => inspectAll(sensors.exact.s, false), ops: P },
    { name: 'sensor, 1000 blocked + 3 prefixes', fn: () => inspectAll(sensors.prefixes.s, false), ops: P },
    { name: 'sensor, 10% of sources blocked', fn: () => inspectAll(sensors.dropping.s, true), ops: P },
    { name: 'monitor bucket decisions', fn: evaluateAll, ops: ADDRS },
    { name: 'pipeline (parse + flow)', fn: pipelinePlain, ops: P },
    { name: 'pipeline with guard', fn: pipelineGuard, ops: P },
  ];
  const measured = await runBenny('guard', cases, 1.5);
  measured['c-floor sensor, empty table'] = { rate: cEmpty.decisions_per_s };
  measured['c-floor sensor, 1000 blocked'] = { rate: cExact.decisions_per_s };
  measured['c-floor sensor, 1000 blocked + 3 prefixes'] = { rate: cPref.decisions_per_s };
  const r = (k: string) => measured[k]?.rate ?? NaN;

  await heapGrowthPerOp(() => { for (let k = 0; k < 50; k++) inspectAll(sensors.prefixes.s, false); }, 1);
  const heapSensor = await heapGrowthPerOp(() => { for (let k = 0; k < 50; k++) inspectAll(sensors.prefixes.s, false); }, 50 * P);
  const heapDrop = await heapGrowthPerOp(() => { for (let k = 0; k < 50; k++) inspectAll(sensors.dropping.s, true); }, 50 * P);
  // The pipeline with the guard, without the per-interval flush (that is the control plane's allocation).
  const pipeNoFlush = () => {
    for (let k = 0; k < BATCHES; k++) {
      const b = pipeBatches[k];
      parseBatch(b, pipeMeta);
      guarded.s.inspect(b, pipeMeta, 5000);
      guarded.flows.trackBatch(b, pipeMeta, guarded.counters);
      guarded.s.afterTrack(guarded.flows);
    }
  };
  await heapGrowthPerOp(() => { for (let k = 0; k < 20; k++) pipeNoFlush(); }, 1);
  const heapPipe = await heapGrowthPerOp(() => { for (let k = 0; k < 20; k++) pipeNoFlush(); }, 20 * P);
  const evalOnce = () => { for (let k = 0; k < 10; k++) evaluateAll(); };
  await heapGrowthPerOp(evalOnce, 1);
  const heapEval = await heapGrowthPerOp(evalOnce, 10 * ADDRS);

  // Best of 9 interleaved runs per case (see the head of this file).
  const bestOf: Record<string, number> = {};
  const timed: [string, () => void, number][] = [
    ['sensor, empty table', () => inspectAll(sensors.empty.s, false), P],
    ['sensor, 1000 blocked + 3 prefixes', () => inspectAll(sensors.prefixes.s, false), P],
    ['monitor bucket decisions', evaluateAll, ADDRS],
    ['pipeline (parse + flow)', pipelinePlain, P],
    ['pipeline with guard', pipelineGuard, P],
  ];
  for (let run = 0; run < 9; run++) {
    for (const [name, fn, ops] of timed) {
      const t0 = performance.now();
      for (let k = 0; k < 5; k++) fn();
      const rate = (5 * ops) / ((performance.now() - t0) / 1e3);
      if (!(rate <= (bestOf[name] ?? 0))) bestOf[name] = rate;
    }
  }
  for (const [k, v] of Object.entries(bestOf)) measured[`best of 9: ${k}`] = { rate: v };
  const b = (k: string) => bestOf[k] ?? NaN;
  const decisions = b('sensor, 1000 blocked + 3 prefixes');
  const bucket = b('monitor bucket decisions');
  const pipeRatio = ratio(b('pipeline with guard'), b('pipeline (parse + flow)'));
  const round3 = (x: number) => Math.round(x * 1000) / 1000;
  const ratios: Record<string, number> = {
    'pipeline-with-guard/pipeline': pipeRatio,
    'pipeline-with-guard/pipeline (benny means)': ratio(r('pipeline with guard'), r('pipeline (parse + flow)')),
    'sensor/baseline-walk': ratio(r('sensor, 1000 blocked + 3 prefixes'), r('baseline: metadata walk')),
    'sensor/c-floor (empty table)': ratio(b('sensor, empty table'), r('c-floor sensor, empty table')),
    'sensor/c-floor (1000 blocked)': ratio(r('sensor, 1000 blocked'), r('c-floor sensor, 1000 blocked')),
    'sensor/c-floor (1000 blocked + 3 prefixes)': ratio(decisions, r('c-floor sensor, 1000 blocked + 3 prefixes')),
  };
  // Nanoseconds the guard adds per packet in the pipeline.
  const addedNs = Math.round((1e9 / b('pipeline with guard') - 1e9 / b('pipeline (parse + flow)')) * 10) / 10;

  const mine: SuiteResult = {
    suite: 'guard',
    results: measured as Record<string, Measured & Record<string, unknown>>,
    ratios,
    decisions_per_s: Math.round(decisions),
    decisions_per_s_empty_table: Math.round(b('sensor, empty table')),
    decisions_per_s_mean: Math.round(r('sensor, 1000 blocked + 3 prefixes')),
    bucket_decisions_per_s: Math.round(bucket),
    'pipeline-with-guard/pipeline': pipeRatio,
    guard_ns_per_packet_in_pipeline: addedNs,
    heap_growth_per_packet: {
      sensor: round3(heapSensor.bytesPerOp), 'sensor drop path': round3(heapDrop.bytesPerOp),
      'pipeline with guard': round3(heapPipe.bytesPerOp), 'monitor per address': round3(heapEval.bytesPerOp),
    },
    gcs_during_heap_check: { sensor: heapSensor.gcs, 'sensor drop path': heapDrop.gcs, 'pipeline with guard': heapPipe.gcs, 'monitor per address': heapEval.gcs },
    targets: {
      'sensor decisions/s (1000 blocked + 3 prefixes)': { value: Math.round(decisions), target: '>= 20e6', met: decisions >= 20e6 },
      'monitor bucket decisions/s': { value: Math.round(bucket), target: '>= 20e6', met: bucket >= 20e6 },
      'heap growth per packet': { value: round3(Math.max(heapSensor.bytesPerOp, heapDrop.bytesPerOp, heapPipe.bytesPerOp)), target: '0, no GC during the run',
        met: Math.max(heapSensor.bytesPerOp, heapDrop.bytesPerOp, heapPipe.bytesPerOp) < 0.01 && heapSensor.gcs + heapDrop.gcs + heapPipe.gcs === 0 },
    },
    workload: {
      batches: BATCHES, batch: BATCH, sources: SOURCES, syn_share: 0.25, blocked_exact: BLOCKED, prefixes: prefixes.map((p) => p.addr),
      pipeline_flows: FLOWS, pipeline_syn_share: 1 / 16, monitor_addresses: ADDRS,
    },
  };
  // Read-modify-write: keep what other suites put in this file (bench/guard-redis.ts).
  const file = path.join(RESULTS_DIR, 'guard.json');
  let prev: Record<string, unknown> = {};
  try { prev = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>; } catch { /* first run */ }
  const merged: Record<string, unknown> = { ...prev, ...mine };
  for (const k of ['results', 'ratios', 'targets', 'heap_growth_per_packet', 'gcs_during_heap_check']) {
    const a = prev[k], b = (mine as Record<string, unknown>)[k];
    if (a && typeof a === 'object' && b && typeof b === 'object') merged[k] = { ...(a as object), ...(b as object) };
  }
  report(merged as SuiteResult);
  if (sink === 0) console.log('');
}

await main();
