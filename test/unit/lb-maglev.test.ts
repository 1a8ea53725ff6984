// Maglev consistent hashing (src/lb/maglev.ts): table size rules, weighted
// balance (in table entries, exactly, and over random flows, statistically),
// disruption when a backend leaves or joins (Maglev paper §3.4 / §5.3),
// drained backends, determinism, the flow hashes, and a fast-check property
// over random backend sets.
//
// Flows are random 5-tuples from a seeded PRNG (mulberry32), so a run is
// reproducible; the tolerances are chosen so that any seed passes with
// overwhelming probability, never tuned to this seed (see shareTolerance).

import t from 'tap';
import fc from 'fast-check';
import {
  MAGLEV_DEFAULT_SIZE, MAGLEV_SIZES, MAGLEV_FLOW_SEED, NO_BACKEND, MaglevTable, buildMaglevTable, flowHash4, flowHash6, isPrime,
  maglevLookup, maglevPermutation, maglevSizeFor, murmur3Bytes, validateMaglevSize, type MaglevBackend,
} from '../../src/lb/maglev.js';
import { fmix32, mix32 } from '../../src/flow/hash.js';

// ---- helpers ----

function mulberry32(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return (x ^ (x >>> 14)) >>> 0;
  };
}

interface Flows { src: Int32Array; dst: Int32Array; sp: Uint16Array; dp: Uint16Array; proto: Uint8Array; n: number }

function randomFlows(n: number, seed: number): Flows {
  const r = mulberry32(seed);
  const f: Flows = { src: new Int32Array(n), dst: new Int32Array(n), sp: new Uint16Array(n), dp: new Uint16Array(n), proto: new Uint8Array(n), n };
  for (let i = 0; i < n; i++) {
    f.src[i] = r() | 0;
    f.dst[i] = r() | 0;
    const p = r();
    f.sp[i] = p >>> 16;
    f.dp[i] = p & 0xffff;
    f.proto[i] = (r() & 1) === 0 ? 6 : 17;
  }
  return f;
}

/** Backend id chosen for every flow. */
function assign(table: Int32Array, f: Flows): Int32Array {
  const out = new Int32Array(f.n);
  for (let i = 0; i < f.n; i++) out[i] = maglevLookup(table, flowHash4(f.src[i], f.dst[i], f.sp[i], f.dp[i], f.proto[i]));
  return out;
}

const backendsOf = (weights: number[], prefix = '10.0.0.'): MaglevBackend[] =>
  weights.map((weight, i) => ({ id: i, weight, key: `${prefix}${i + 1}:443` }));

const weightedShare = (bs: MaglevBackend[], id: number): number => {
  const total = bs.reduce((s, b) => s + b.weight, 0);
  return bs.find((b) => b.id === id)!.weight / total;
};

/**
 * Relative tolerance on a backend's share of `n` random flows: the 10% the
 * design asks for, or four binomial standard deviations when sampling noise
 * alone is larger than that (10 backends over 3,000 flows: a share of 0.1
 * has a relative standard deviation of 5.5%, so even a perfectly fair table
 * misses 10% for some backend in about half of all seeds).
 */
const shareTolerance = (p: number, n: number): number => Math.max(0.1, 4 * Math.sqrt((1 - p) / (p * n)));

function entryCounts(table: Int32Array): Map<number, number> {
  const m = new Map<number, number>();
  for (let i = 0; i < table.length; i++) m.set(table[i], (m.get(table[i]) ?? 0) + 1);
  return m;
}

const WEIGHT_SETS: Record<string, number[]> = {
  'weights 1,1,1': [1, 1, 1],
  'weights 1,2,3': [1, 2, 3],
  '10 backends, equal': [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
  '10 backends, weights 1..5': [1, 2, 3, 4, 5, 5, 4, 3, 2, 1],
};

const FLOWS_3K = randomFlows(3_000, 0x5eed0001);
const FLOWS_100K = randomFlows(100_000, 0x5eed0002);

// ---- table size ----

t.test('maglevSizeFor picks the smallest listed prime with 100 entries per backend', async (t) => {
  for (const m of MAGLEV_SIZES) {
    t.ok(isPrime(m), `${m} is prime`);
    let composite = false; // independent check: trial division by every odd number
    for (let d = 3; d * d <= m; d += 2) if (m % d === 0) composite = true;
    t.notOk(composite, `${m} has no divisor`);
  }
  t.equal(maglevSizeFor(0), 65537);
  t.equal(maglevSizeFor(3), 65537);
  t.equal(maglevSizeFor(655), 65537);
  t.equal(maglevSizeFor(656), 131071);
  t.equal(maglevSizeFor(1000), 131071);
  t.equal(maglevSizeFor(5000), 524287);
  for (const n of [1, 10, 100, 1000, 10_000, 100_000]) {
    const m = maglevSizeFor(n);
    t.ok(m >= 100 * n, `size ${m} >= 100 x ${n}`);
    const i = MAGLEV_SIZES.indexOf(m);
    t.ok(i === 0 || MAGLEV_SIZES[i - 1] < 100 * n, `no smaller listed size fits ${n}`);
  }
  t.throws(() => maglevSizeFor(200_000), /200000 backends need a table of at least 20000000 entries.*split the service/);
  t.throws(() => maglevSizeFor(-1), /non-negative integer/);
  t.throws(() => maglevSizeFor(2.5), /non-negative integer/);
  t.ok(isPrime(2) && isPrime(3) && !isPrime(1) && !isPrime(9) && !isPrime(65535) && !isPrime(1.5));
});

t.test('table size validation gives errors a person can act on', async (t) => {
  const three = backendsOf([1, 1, 1]);
  t.throws(() => buildMaglevTable(three, 65536), /table size 65536 is not prime; use one of 65537, 131071/);
  t.throws(() => buildMaglevTable(three, 299), /table size 299 is not prime/); // 13 x 23
  // 293 is prime but below 100 x 3.
  t.throws(() => buildMaglevTable(three, 293), /table size 293 is too small for 3 backends.*M >= 300.*maglevSizeFor\(3\) = 65537/);
  t.throws(() => buildMaglevTable(backendsOf(new Array(700).fill(1)), 65537), /too small for 700 backends.*maglevSizeFor\(700\) = 131071/);
  t.throws(() => buildMaglevTable(three, 0), /integer between 2 and 16777213, got 0/);
  t.throws(() => buildMaglevTable(three, 1e9 + 7), /integer between 2 and 16777213/);
  t.throws(() => buildMaglevTable(three, 65537.5), /integer between/);
  t.throws(() => validateMaglevSize(131071, 2000), /too small for 2000 backends.*maglevSizeFor\(2000\) = 262139/);
  t.doesNotThrow(() => validateMaglevSize(307, 3)); // a prime >= 300 is fine even when not in the list
  t.equal(buildMaglevTable(three, 307).length, 307);
  t.throws(() => new MaglevTable({ size: 100_000 }), /not prime/);
  // 655 backends fit 65537; 656 do not.
  t.doesNotThrow(() => validateMaglevSize(65537, 655));
  t.throws(() => validateMaglevSize(65537, 656), /too small for 656 backends/);
});

t.test('backend validation names the bad entry', async (t) => {
  const ok = backendsOf([1, 1]);
  t.throws(() => buildMaglevTable([...ok, { id: 1, weight: 1, key: 'other' }]), /backends\[2\]\.id 1 is used by another backend/);
  t.throws(() => buildMaglevTable([...ok, { id: 5, weight: 1, key: '10.0.0.1:443' }]), /backends\[2\]\.key "10.0.0.1:443" is used by another backend/);
  t.throws(() => buildMaglevTable([{ id: 0, weight: -1, key: 'a' }]), /backends\[0\]\.weight must be an integer from 0 \(drained\) to 1000000, got -1/);
  t.throws(() => buildMaglevTable([{ id: 0, weight: 1.5, key: 'a' }]), /weight must be an integer/);
  t.throws(() => buildMaglevTable([{ id: 0, weight: 2e6, key: 'a' }]), /weight must be an integer/);
  t.throws(() => buildMaglevTable([{ id: -1, weight: 1, key: 'a' }]), /backends\[0\]\.id must be an integer from 0 to 2147483647/);
  t.throws(() => buildMaglevTable([{ id: 0, weight: 1, key: '' }]), /backends\[0\]\.key must be a non-empty string/);
  t.throws(() => buildMaglevTable(null as unknown as MaglevBackend[]), /backends must be an array/);
});

// ---- permutation and hashes ----

t.test('MurmurHash3 x86_32 of the keys matches the reference vectors', async (t) => {
  const e = new TextEncoder();
  t.equal(murmur3Bytes(e.encode(''), 0), 0);
  t.equal(murmur3Bytes(e.encode(''), 1), 0x514e28b7);
  t.equal(murmur3Bytes(e.encode('hello'), 0), 0x248bfa47);
  t.equal(murmur3Bytes(e.encode('The quick brown fox jumps over the lazy dog'), 0x9747b28c), 0x2fa826cd);
});

t.test('each backend permutation visits every slot exactly once', async (t) => {
  for (const m of [101, 307, 65537]) {
    for (const key of ['10.0.0.1:443', 'b', 'backend-with-a-much-longer-key-ü']) {
      const { offset, skip } = maglevPermutation(key, m);
      t.ok(offset >= 0 && offset < m && skip >= 1 && skip < m, `offset ${offset} and skip ${skip} in range for M=${m}`);
      const seen = new Uint8Array(m);
      let c = offset, dup = 0;
      for (let j = 0; j < m; j++) {
        if (seen[c]) dup++;
        seen[c] = 1;
        c = (c + skip) % m;
      }
      t.equal(dup, 0, `${key} @ ${m}: a full permutation`);
    }
  }
  // offset and skip come from two different hashes: across many keys they are not tied together.
  let same = 0;
  for (let i = 0; i < 1000; i++) {
    const { offset, skip } = maglevPermutation(`k${i}`, 65537);
    if (offset === skip || offset === skip - 1) same++;
  }
  t.ok(same < 5, `offset and skip independent (${same} coincidences in 1000)`);
});

t.test('flowHash4: seeded, direction-sensitive, good avalanche', async (t) => {
  const h = flowHash4(0x0a000001, 0xc0a80001 | 0, 40000, 443, 6);
  t.equal(h, flowHash4(0x0a000001, 0xc0a80001 | 0, 40000, 443, 6, MAGLEV_FLOW_SEED), 'default seed');
  t.equal(h | 0, h, 'an int32');
  t.not(h, flowHash4(0x0a000001, 0xc0a80001 | 0, 40000, 443, 6, 1), 'the seed changes the hash');
  t.not(h, flowHash4(0xc0a80001 | 0, 0x0a000001, 443, 40000, 6), 'the reverse direction hashes differently');
  t.not(h, flowHash4(0x0a000001, 0xc0a80001 | 0, 40000, 443, 17), 'the protocol counts');
  // Avalanche: flipping one input bit flips each output bit about half the time.
  const r = mulberry32(99);
  const flips = new Float64Array(32);
  let samples = 0, totalBits = 0;
  for (let s = 0; s < 400; s++) {
    const a = r() | 0, b = r() | 0, sp = r() & 0xffff, dp = r() & 0xffff;
    const base = flowHash4(a, b, sp, dp, 6, 7);
    const variants = [
      ...Array.from({ length: 32 }, (_, k) => flowHash4(a ^ (1 << k), b, sp, dp, 6, 7)),
      ...Array.from({ length: 32 }, (_, k) => flowHash4(a, b ^ (1 << k), sp, dp, 6, 7)),
      ...Array.from({ length: 16 }, (_, k) => flowHash4(a, b, sp ^ (1 << k), dp, 6, 7)),
      ...Array.from({ length: 16 }, (_, k) => flowHash4(a, b, sp, dp ^ (1 << k), 6, 7)),
    ];
    for (const v of variants) {
      const d = base ^ v;
      samples++;
      for (let bit = 0; bit < 32; bit++) if ((d >>> bit) & 1) { flips[bit]++; totalBits++; }
    }
  }
  const mean = totalBits / samples;
  t.ok(mean > 15.5 && mean < 16.5, `mean flipped output bits ${mean.toFixed(2)} ~ 16`);
  for (let bit = 0; bit < 32; bit++) {
    const p = flips[bit] / samples; // 38,400 samples: sd of p is 0.0026
    t.ok(p > 0.47 && p < 0.53, `output bit ${bit} flips with p=${p.toFixed(3)}`);
  }
});

t.test('flowHash6 reads both addresses in place and matches a DataView reference', async (t) => {
  const buf = new Uint8Array(200);
  const r = mulberry32(6);
  for (let i = 0; i < buf.length; i++) buf[i] = r() & 255;
  const ref = (off: number, sp: number, dp: number, proto: number, seed: number) => {
    const dv = new DataView(buf.buffer, buf.byteOffset);
    let h = seed;
    for (let i = 0; i < 8; i++) h = mix32(h, dv.getInt32(off + 4 * i));
    h = mix32(h, (sp << 16) | dp);
    h = mix32(h, proto);
    return fmix32(h ^ 40);
  };
  for (const off of [0, 3, 22, 77, 168]) {
    t.equal(flowHash6(buf, off, 40000, 443, 6), ref(off, 40000, 443, 6, MAGLEV_FLOW_SEED), `offset ${off}`);
    t.equal(flowHash6(buf, off, 1, 65535, 17, 5), ref(off, 1, 65535, 17, 5), `offset ${off}, seed 5`);
  }
  const h = flowHash6(buf, 22, 40000, 443, 6);
  buf[22 + 31] ^= 1; // last byte of the destination
  t.not(flowHash6(buf, 22, 40000, 443, 6), h, 'the destination counts');
  buf[22 + 31] ^= 1;
  buf[22] ^= 0x80; // first bit of the source
  t.not(flowHash6(buf, 22, 40000, 443, 6), h, 'the source counts');
});

// ---- balance ----

t.test('every backend holds its weighted share of the table entries', async (t) => {
  for (const [name, ws] of Object.entries(WEIGHT_SETS)) {
    const bs = backendsOf(ws);
    const table = buildMaglevTable(bs);
    t.equal(table.length, MAGLEV_DEFAULT_SIZE);
    const counts = entryCounts(table);
    t.equal([...counts.values()].reduce((a, b) => a + b, 0), table.length);
    t.notOk(counts.has(NO_BACKEND), `${name}: no empty entry`);
    const n = bs.length, total = ws.reduce((a, b) => a + b, 0);
    for (const b of bs) {
      const want = (table.length * b.weight) / total;
      const got = counts.get(b.id) ?? 0;
      // Credits give floor(R w / maxW) +- 1 turns over R rounds: off by at most 2 + N w / W entries.
      t.ok(Math.abs(got - want) <= 2 + (n * b.weight) / total, `${name}: backend ${b.id} has ${got} entries, ${want.toFixed(1)} expected`);
    }
  }
});

for (const [label, flows] of [['3,000', FLOWS_3K], ['100,000', FLOWS_100K]] as const) {
  t.test(`every backend's share of ${label} random flows is within 10% of its weighted share`, async (t) => {
    for (const [name, ws] of Object.entries(WEIGHT_SETS)) {
      const bs = backendsOf(ws);
      const got = assign(buildMaglevTable(bs), flows);
      const counts = new Float64Array(bs.length);
      for (let i = 0; i < got.length; i++) counts[got[i]]++;
      for (const b of bs) {
        const p = weightedShare(bs, b.id);
        const share = counts[b.id] / flows.n;
        const tol = shareTolerance(p, flows.n);
        t.ok(Math.abs(share - p) <= tol * p, `${name}: backend ${b.id} share ${share.toFixed(4)}, weighted ${p.toFixed(4)} (relative tolerance ${(tol * 100).toFixed(1)}%)`);
      }
    }
  });
}

t.test('a skewed table is caught: the share check can fail', async (t) => {
  // The same check as above applied to a table where backend 0 holds 40% instead of a third.
  const table = new Int32Array(MAGLEV_DEFAULT_SIZE);
  for (let i = 0; i < table.length; i++) table[i] = i < table.length * 0.4 ? 0 : i % 2 === 0 ? 1 : 2;
  const got = assign(table, FLOWS_100K);
  let zero = 0;
  for (let i = 0; i < got.length; i++) if (got[i] === 0) zero++;
  const p = 1 / 3, share = zero / FLOWS_100K.n;
  t.ok(Math.abs(share - p) > shareTolerance(p, FLOWS_100K.n) * p, `share ${share.toFixed(3)} falls outside the tolerance`);
});

// ---- drained backends ----

t.test('a zero-weight (drained) backend gets no entry and no flow', async (t) => {
  const bs = backendsOf([1, 0, 3, 0, 2]);
  const table = buildMaglevTable(bs);
  const counts = entryCounts(table);
  t.notOk(counts.has(1), 'backend 1 has no entry');
  t.notOk(counts.has(3), 'backend 3 has no entry');
  t.notOk(counts.has(NO_BACKEND));
  const got = assign(table, FLOWS_100K);
  t.notOk(got.includes(1) || got.includes(3), 'no flow goes to a drained backend');
  // Draining a backend is the same as removing it: the table is identical.
  t.equal(moved(table, buildMaglevTable(bs.filter((b) => b.weight > 0))), 0, 'draining is the same as removing');

  const none = buildMaglevTable(backendsOf([0, 0]));
  t.ok(none.every((x) => x === NO_BACKEND), 'all drained: every entry is NO_BACKEND');
  t.ok(buildMaglevTable([]).every((x) => x === NO_BACKEND), 'no backends: every entry is NO_BACKEND');
  t.equal(maglevLookup(none, 12345), NO_BACKEND);
  const one = buildMaglevTable(backendsOf([0, 5]));
  t.ok(one.every((x) => x === 1), 'a single live backend takes every entry');
});

// ---- disruption ----

function moved(a: Int32Array, b: Int32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) m++;
  return m;
}

t.test('removing a backend moves little more than its own flows', async (t) => {
  for (const [name, ws] of Object.entries(WEIGHT_SETS)) {
    const bs = backendsOf(ws);
    const before = assign(buildMaglevTable(bs), FLOWS_100K);
    for (const gone of bs) {
      const after = assign(buildMaglevTable(bs.filter((b) => b !== gone)), FLOWS_100K);
      let own = 0, otherMoved = 0;
      for (let i = 0; i < before.length; i++) {
        if (before[i] === gone.id) own++;
        else if (before[i] !== after[i]) otherMoved++;
      }
      t.notOk(after.includes(gone.id), `${name}: no flow left on removed backend ${gone.id}`);
      const total = moved(before, after) / before.length;
      const share = weightedShare(bs, gone.id);
      t.ok(total <= share + 0.02, `${name}: removing ${gone.id} (share ${share.toFixed(3)}) moved ${total.toFixed(4)} of flows`);
      // The Maglev paper's disruption: flows that were NOT on the removed backend and still moved.
      t.ok(otherMoved / (before.length - own) < 0.02, `${name}: ${(otherMoved / (before.length - own) * 100).toFixed(2)}% of the other flows moved`);
    }
  }
});

t.test('adding a backend moves little more than the flows it takes', async (t) => {
  for (const [name, ws] of Object.entries(WEIGHT_SETS)) {
    const bs = backendsOf(ws);
    const grown = [...bs, { id: bs.length, weight: 2, key: '10.0.9.9:443' }];
    const before = assign(buildMaglevTable(bs), FLOWS_100K);
    const after = assign(buildMaglevTable(grown), FLOWS_100K);
    let taken = 0, shuffled = 0;
    for (let i = 0; i < before.length; i++) {
      if (after[i] === bs.length) taken++;
      else if (after[i] !== before[i]) shuffled++;
    }
    const share = weightedShare(grown, bs.length);
    const total = moved(before, after) / before.length;
    t.ok(taken > 0, `${name}: the new backend gets flows`);
    t.ok(total <= share + 0.02, `${name}: adding a backend of share ${share.toFixed(3)} moved ${total.toFixed(4)} of flows`);
    t.ok(shuffled / before.length < 0.02, `${name}: ${(shuffled / before.length * 100).toFixed(2)}% moved between old backends`);
  }
});

t.test('changing a weight moves about the weight difference', async (t) => {
  const bs = backendsOf([1, 1, 1, 1]);
  const heavier = bs.map((b) => (b.id === 2 ? { ...b, weight: 2 } : b));
  const a = buildMaglevTable(bs), b = buildMaglevTable(heavier);
  const frac = moved(a, b) / a.length;
  // Backend 2 goes from 1/4 to 2/5 of the table: at least 15% must move, and not much more.
  t.ok(frac >= 0.15 - 0.005 && frac <= 0.15 + 0.05, `moved ${frac.toFixed(4)} of entries`);
});

// ---- determinism ----

t.test('the table is a function of the backend set: deterministic and order-independent', async (t) => {
  const bs = backendsOf([1, 2, 3, 0, 5, 1, 1, 4, 2, 2]);
  const a = buildMaglevTable(bs);
  t.equal(moved(buildMaglevTable(bs), a), 0, 'same input, same table');
  t.equal(moved(buildMaglevTable([...bs].reverse()), a), 0, 'reversed order, same table');
  const r = mulberry32(3);
  const shuffled = [...bs].sort(() => (r() & 1 ? 1 : -1));
  t.equal(moved(buildMaglevTable(shuffled), a), 0, 'shuffled order, same table');
  // Keys, not ids, place a backend: renumbering the ids renames the entries and moves none.
  const renumbered = bs.map((b) => ({ ...b, id: 100 + b.id }));
  const c = buildMaglevTable(renumbered);
  let same = true;
  for (let i = 0; i < a.length; i++) if (c[i] !== a[i] + 100) same = false;
  t.ok(same, 'renumbered ids: the same slots');
  // Different keys give a different layout.
  t.not(moved(a, buildMaglevTable(backendsOf([1, 2, 3, 0, 5, 1, 1, 4, 2, 2], '10.9.0.'))), 0);
  // A golden fingerprint (FNV-1a over the entries) guards the algorithm
  // against silent change: every node of a service, of any version, must
  // build the same table, or flows move when nodes are upgraded one by one.
  t.equal(fingerprint(a), GOLDEN_FINGERPRINT, `fingerprint 0x${fingerprint(a).toString(16)}`);
});

const GOLDEN_FINGERPRINT = 0xb6470580;

function fingerprint(a: Int32Array): number {
  let fp = 0x811c9dc5;
  for (let i = 0; i < a.length; i++) fp = Math.imul(fp ^ a[i], 0x01000193);
  return fp >>> 0;
}

// ---- the class ----

t.test('MaglevTable swaps a new table in whole and looks up with its seed', async (t) => {
  const mt = new MaglevTable({ seed: 1234 });
  t.equal(mt.size, MAGLEV_DEFAULT_SIZE);
  t.equal(mt.lookup(77), NO_BACKEND, 'empty until built');
  const bs = backendsOf([1, 1, 1]);
  const first = mt.build(bs);
  t.equal(mt.table, first);
  t.equal(mt.generation, 1);
  const snapshot = first.slice();
  const second = mt.build([...bs, { id: 3, weight: 1, key: 'x' }]);
  t.not(second, first, 'a new array');
  t.equal(moved(first, snapshot), 0, 'the old table is never written');
  t.equal(mt.table, second);
  t.equal(mt.generation, 2);
  t.equal(mt.backendCount, 4);

  const f = FLOWS_3K;
  for (let i = 0; i < 200; i++) {
    const h = flowHash4(f.src[i], f.dst[i], f.sp[i], f.dp[i], f.proto[i], 1234);
    t.equal(mt.lookup4(f.src[i], f.dst[i], f.sp[i], f.dp[i], f.proto[i]), second[(h >>> 0) % second.length]);
    if (i < 20) t.equal(mt.lookup(h), maglevLookup(second, h));
  }
  // Hashes are int32: a negative one is read as its unsigned value, mod M.
  for (const h of [-1, -2147483648, 0x7fffffff, 0]) {
    t.equal(mt.lookup(h), second[(h >>> 0) % second.length], `lookup(${h})`);
    t.equal(maglevLookup(second, h), second[(h >>> 0) % second.length], `maglevLookup(${h})`);
  }
  const buf = new Uint8Array(80);
  for (let i = 0; i < buf.length; i++) buf[i] = (i * 37) & 255;
  const h6 = flowHash6(buf, 8, 5000, 80, 6, 1234);
  t.equal(mt.lookup6(buf, 8, 5000, 80, 6), second[(h6 >>> 0) % second.length]);

  // A bad build throws and keeps the old table.
  t.throws(() => mt.build([{ id: 0, weight: 1, key: 'a' }, { id: 0, weight: 1, key: 'b' }]), /used by another backend/);
  t.equal(mt.table, second);
  t.equal(mt.generation, 2);

  // Automatic sizing grows only when it must, and never shrinks.
  mt.build(backendsOf(new Array(700).fill(1)));
  t.equal(mt.size, 131071);
  mt.build(bs);
  t.equal(mt.size, 131071, 'does not shrink (a new size moves nearly every flow)');
  const fixed = new MaglevTable({ size: 307 });
  fixed.build(bs);
  t.equal(fixed.size, 307);
  t.throws(() => fixed.build(backendsOf([1, 1, 1, 1])), /table size 307 is too small for 4 backends/);
  t.equal(fixed.size, 307);
});

// ---- property ----

t.test('property: random backend sets give valid, balanced, order-independent tables with small disruption', async (t) => {
  const backendArb = fc
    .uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 30 })
    .chain((keys) =>
      fc.tuple(
        fc.constant(keys),
        fc.array(fc.integer({ min: 0, max: 8 }), { minLength: keys.length, maxLength: keys.length }),
        fc.shuffledSubarray(Array.from({ length: 1000 }, (_, i) => i), { minLength: keys.length, maxLength: keys.length }),
        fc.nat(),
      ),
    );
  let runs = 0;
  fc.assert(
    fc.property(backendArb, ([keys, weights, ids, pick]) => {
      runs++;
      const bs: MaglevBackend[] = keys.map((key, i) => ({ id: ids[i], weight: weights[i], key }));
      const table = buildMaglevTable(bs);
      const live = bs.filter((b) => b.weight > 0);
      const total = live.reduce((s, b) => s + b.weight, 0);
      const counts = entryCounts(table);
      if (live.length === 0) return counts.size === 1 && counts.has(NO_BACKEND);
      // Only live ids, every one of them, each near its weighted share.
      for (const id of counts.keys()) if (!live.some((b) => b.id === id)) return false;
      for (const b of live) {
        const want = (table.length * b.weight) / total;
        if (Math.abs((counts.get(b.id) ?? 0) - want) > 2 + (live.length * b.weight) / total) return false;
      }
      // Listing order does not matter.
      if (moved(table, buildMaglevTable([...bs].reverse())) !== 0) return false;
      // Removing one live backend: besides its own entries, under 2% of the table moves.
      if (live.length > 1) {
        const gone = live[pick % live.length];
        const after = buildMaglevTable(bs.filter((b) => b !== gone));
        let extra = 0;
        for (let i = 0; i < table.length; i++) if (table[i] !== gone.id && after[i] !== table[i]) extra++;
        if (extra / table.length >= 0.02) return false;
      }
      return true;
    }),
    { numRuns: 60 },
  );
  t.equal(runs, 60);
});
