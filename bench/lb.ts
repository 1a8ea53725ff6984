// lb: the workload distributor's Maglev consistent hashing (src/lb/maglev.ts).
// - Lookups per second: per lookup one flow hash of a random IPv4 5-tuple and
//   one table read, over a precomputed stream of 1,048,576 tuples (xorshift32,
//   the C floor uses the same); each benchmark call runs the next 65,536.
//   Measured through MaglevTable.lookup4 (what the LB stage calls) and through
//   the free functions flowHash4 + maglevLookup, with 10 backends at 65,537
//   entries and 1,000 backends at 131,071.
// - Table build time (control plane) for 3, 10, 100 and 1,000 backends at the
//   size maglevSizeFor picks: 65,537 for up to 655 backends, 131,071 for
//   1,000 (65,537 entries are refused for 1,000 backends: fewer than 100 per
//   backend). Weights i % 4 + 1.
// - C floor (bench/c/maglev.c, cc -O2 in the same run): the same table build
//   and the same lookup. Both sides print a fingerprint of each table and the
//   sum of the backend ids the stream picked; the run fails if they differ.
// - Heap growth per lookup (target 0, and no GC during the run).
//
// This suite imports src/ through tsx. src/lb/maglev.ts binds what it imports
// to module-local constants (as src/flow/ does), and so does this file below,
// so tsx's getter-per-import transform does not sit on the hot path.
//
// Run: node --expose-gc --import=tsx bench/lb.ts   (about 25 s)

import * as maglev from '../src/lb/maglev.js';
import { buildCFloor, runCFloor, runBenny, heapGrowthPerOp, ratio, report, type Measured } from './common.js';

const MaglevTable = maglev.MaglevTable, buildMaglevTable = maglev.buildMaglevTable, maglevSizeFor = maglev.maglevSizeFor;
const flowHash4 = maglev.flowHash4, maglevLookup = maglev.maglevLookup, MAGLEV_FLOW_SEED = maglev.MAGLEV_FLOW_SEED;

const STREAM = 1 << 20; // 5-tuples in the precomputed stream
const QUERIES = 1 << 16; // lookups per benchmark call
const PROTO = 6;
const BUILD_SIZES = [3, 10, 100, 1000] as const;
const LOOKUP_SIZES = [10, 1000] as const;

type Backend = { id: number; weight: number; key: string };
function backends(n: number): Backend[] {
  return Array.from({ length: n }, (_, i) => ({ id: i, weight: (i % 4) + 1, key: `10.${Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${i % 256}:443` }));
}

// The lookup stream (as bench/c/maglev.c: xorshift32 from 2463534242).
const qs = new Int32Array(STREAM), qd = new Int32Array(STREAM), qsp = new Int32Array(STREAM), qdp = new Int32Array(STREAM);
{
  let x = 2463534242;
  const next = () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
  for (let j = 0; j < STREAM; j++) {
    qs[j] = next() | 0;
    qd[j] = next() | 0;
    const p = next();
    qsp[j] = p >>> 16;
    qdp[j] = p & 0xffff;
  }
}

const tables = LOOKUP_SIZES.map((n) => {
  const t = new MaglevTable({ size: maglevSizeFor(n), seed: MAGLEV_FLOW_SEED });
  t.build(backends(n));
  return t;
});
const pos = LOOKUP_SIZES.map(() => 0);
let sink = 0;

/** QUERIES lookups through MaglevTable.lookup4 (the method the LB stage calls). */
function lookupMethod(k: number): void {
  const t = tables[k];
  const j0 = pos[k];
  pos[k] = (j0 + QUERIES) & (STREAM - 1);
  let s = 0;
  for (let j = j0; j < j0 + QUERIES; j++) s += t.lookup4(qs[j], qd[j], qsp[j], qdp[j], PROTO);
  sink += s;
}

/** The same through the free functions over the bare Int32Array. */
function lookupFree(k: number): void {
  const table = tables[k].table;
  const j0 = pos[k];
  pos[k] = (j0 + QUERIES) & (STREAM - 1);
  let s = 0;
  for (let j = j0; j < j0 + QUERIES; j++) s += maglevLookup(table, flowHash4(qs[j], qd[j], qsp[j], qdp[j], PROTO));
  sink += s;
}

/** Sum of the backend ids the whole stream picks (compared with the C floor's). */
function streamSum(k: number): number {
  const t = tables[k];
  let s = 0;
  for (let j = 0; j < STREAM; j++) s += t.lookup4(qs[j], qd[j], qsp[j], qdp[j], PROTO);
  return s;
}

function fingerprint(a: Int32Array): number {
  let fp = 0x811c9dc5;
  for (let i = 0; i < a.length; i++) fp = Math.imul(fp ^ a[i], 0x01000193);
  return fp >>> 0;
}

async function main(): Promise<void> {
  const cBin = buildCFloor('maglev');
  const configs = BUILD_SIZES.map((n) => ({ n, size: maglevSizeFor(n), bs: backends(n) }));
  const c = runCFloor(cBin, [String(STREAM), ...configs.map((x) => `${x.n}:${x.size}`)]);

  // Same tables and same picks as the C floor, or the comparison means nothing.
  for (const x of configs) {
    const fp = fingerprint(buildMaglevTable(x.bs, x.size));
    if (fp !== c[`fp_${x.n}_${x.size}`]) throw new Error(`table for ${x.n} backends @${x.size}: fingerprint ${fp} differs from the C floor's ${c[`fp_${x.n}_${x.size}`]}`);
  }
  LOOKUP_SIZES.forEach((n, k) => {
    const s = streamSum(k), cs = c[`sum_${n}_${tables[k].size}`];
    if (s !== cs) throw new Error(`lookups with ${n} backends: id sum ${s} differs from the C floor's ${cs}`);
  });
  let refused = '';
  try {
    buildMaglevTable(backends(1000), 65537);
  } catch (e) {
    refused = (e as Error).message;
  }
  if (!refused) throw new Error('1,000 backends at 65,537 entries should be refused');

  const label = (n: number) => `${n} backends @${maglevSizeFor(n)}`;
  const cases = [
    ...LOOKUP_SIZES.map((n, k) => ({ name: `ours lookup4 (MaglevTable) ${label(n)}`, fn: () => lookupMethod(k), ops: QUERIES })),
    ...LOOKUP_SIZES.map((n, k) => ({ name: `ours flowHash4+maglevLookup ${label(n)}`, fn: () => lookupFree(k), ops: QUERIES })),
    ...configs.map((x) => ({ name: `ours build ${label(x.n)} (tables)`, fn: () => { sink += buildMaglevTable(x.bs, x.size)[0]; }, ops: 1 })),
  ];
  const measured = await runBenny('lb', cases, 1);
  for (const n of LOOKUP_SIZES) measured[`c-floor lookup ${label(n)}`] = { rate: c[`lookup_per_s_${n}_${maglevSizeFor(n)}`] };
  for (const x of configs) measured[`c-floor build ${label(x.n)} (tables)`] = { rate: 1e3 / c[`build_ms_${x.n}_${x.size}`] };

  const heap = await heapGrowthPerOp(() => { for (let r = 0; r < 16; r++) lookupMethod(0); }, 16 * QUERIES);

  const r = (name: string) => measured[name]?.rate ?? NaN;
  const ratios: Record<string, number> = {};
  for (const n of LOOKUP_SIZES) {
    ratios[`ours/c-floor-maglev ${label(n)}`] = ratio(r(`ours lookup4 (MaglevTable) ${label(n)}`), r(`c-floor lookup ${label(n)}`));
    ratios[`free functions/c-floor-maglev ${label(n)}`] = ratio(r(`ours flowHash4+maglevLookup ${label(n)}`), r(`c-floor lookup ${label(n)}`));
  }
  for (const x of configs) ratios[`build ours/c-floor-maglev ${label(x.n)}`] = ratio(r(`ours build ${label(x.n)} (tables)`), r(`c-floor build ${label(x.n)} (tables)`));
  // The headline ratio: the lookup at 10 backends.
  ratios['ours/c-floor-maglev'] = ratios[`ours/c-floor-maglev ${label(LOOKUP_SIZES[0])}`];

  const ms = (rate: number) => Math.round((1e3 / rate) * 1000) / 1000;
  const buildMs: Record<string, { ours: number; c_floor: number }> = {};
  for (const x of configs) buildMs[label(x.n)] = { ours: ms(r(`ours build ${label(x.n)} (tables)`)), c_floor: ms(r(`c-floor build ${label(x.n)} (tables)`)) };
  const lookups = Math.round(r(`ours lookup4 (MaglevTable) ${label(LOOKUP_SIZES[0])}`));
  const round3 = (x: number) => Math.round(x * 1000) / 1000;
  console.log('  build time (ms):');
  for (const [k, v] of Object.entries(buildMs)) console.log(`    ${k.padEnd(24)}  ours ${v.ours}  c-floor ${v.c_floor}`);
  report({
    suite: 'lb',
    maglev_lookups_per_s: lookups,
    results: measured as Record<string, Measured & Record<string, unknown>>,
    ratios,
    heap_growth_per_packet: { lookup: round3(heap.bytesPerOp) },
    gcs_during_heap_check: { lookup: heap.gcs },
    build_ms: buildMs,
    refused_1000_backends_at_65537: refused,
    targets: {
      'maglev lookups/s': { value: lookups, target: '>= 20e6', met: lookups >= 20e6 },
      'heap growth per lookup': { value: round3(heap.bytesPerOp), target: '0, no GC during the run', met: heap.bytesPerOp < 0.01 && heap.gcs === 0 },
    },
    lookup_stream: STREAM,
    queries_per_call: QUERIES,
    backend_weights: 'i % 4 + 1',
    c_floor_matches: 'table fingerprints and per-stream backend id sums equal',
  });
  if (sink === 0.5) console.log('');
}

await main();
