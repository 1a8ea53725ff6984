// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016, §3.4), weighted as in Katran's
// MaglevHashV2. The control plane builds a lookup table of M entries (M
// prime) holding backend ids; the data plane picks a backend with one
// typed-array read, `table[hash % M]` (STYLE.md 6: slow path prepares, fast
// path applies). A change of backends builds a new Int32Array and swaps it in
// whole (DESIGN.md "Control plane builds, data plane reads"), so a packet
// never sees a half-built table.
//
// Population (paper §3.4, Pseudocode 1): each backend has a permutation of
// the M slots, offset = h1(key) mod M and skip = h2(key) mod (M - 1) + 1, its
// j-th preference being (offset + j * skip) mod M (a full permutation because
// M is prime, so every skip is coprime to it). Backends take turns claiming
// their next preferred free slot until the table is full.
//
// Weights (Katran MaglevHashV2): every round each backend adds its weight to
// a credit and takes a turn only when the credit reaches the largest weight
// (then pays that much back). Over R rounds a backend takes
// floor(R * weight / maxWeight) +- 1 turns, so its share of the table is
// proportional to its weight, and a weight-w backend's turns are spread
// across the rounds rather than bunched (Katran's first version gave `weight`
// turns in the first round only and one per round after, which is not
// proportional). Weight 0 (drained) takes no turn and gets no entry.
//
// Determinism: backends are sorted by key before population, so the table is
// a function of the set {(id, weight, key)} and the size only, not of the
// order the configuration lists them in; two load balancers with the same
// configuration pick the same backend for a flow (paper §3.4: consistent
// hashing is what lets any Maglev machine serve any packet of a connection).
//
// Size: the paper (§3.4, §5.3) asks for M prime and much larger than the
// number of backends N. A backend of weight w (total W) gets within
// 2 + N w / W entries of its share M w / W, so M >= 100 N keeps every share
// within 3% of fair even at the limit (in practice a fraction of a percent),
// and keeps the flows moved by a change close to the minimum. We require
// exactly that and refuse anything else with an error that names the size to
// use (maglevSizeFor).

import * as hash from '../flow/hash.js';

// Module-local bindings: under some loaders (tsx's CommonJS interop) an imported
// name is a getter on every use, which stops TurboFan inlining the hash on the hot path.
const mix32 = hash.mix32, fmix32 = hash.fmix32, readBE32 = hash.readBE32;

/** Table entry with no backend (every backend drained, or none configured). */
export const NO_BACKEND = -1;

/** Default table size: Katran's default ring size (the prime 2^16 + 1). */
export const MAGLEV_DEFAULT_SIZE = 65537;

/**
 * Table sizes maglevSizeFor picks from: the largest prime below each power of
 * two from 2^17 up (65537 = 2^16 + 1 first). Roughly doubling keeps the
 * memory (4 bytes per entry) within twice what the backends need.
 */
export const MAGLEV_SIZES: readonly number[] = [
  65537, 131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213,
];

/** Entries per backend the paper asks for (M >= 100 N, §3.4). */
export const MAGLEV_MIN_ENTRIES_PER_BACKEND = 100;

/** Largest weight accepted: credits stay small exact integers. */
export const MAGLEV_MAX_WEIGHT = 1_000_000;

/** Default seed of the flow hashes; a deployment may set its own (the same on every node). */
export const MAGLEV_FLOW_SEED = 0x4d61676c; // "Magl"

// Seeds of the two key hashes (h1 for the offset, h2 for the skip). Any two
// distinct seeds give independent-looking hashes; these are Katran's
// kHashSeed2 and kHashSeed3.
const SEED_OFFSET = 42;
const SEED_SKIP = 2718281828 | 0;

export interface MaglevBackend {
  /** What the table stores and lookup returns: the caller's index into its backend arrays. */
  id: number;
  /** Relative share of flows; 0 drains the backend (no entries). */
  weight: number;
  /** Stable name the permutation is derived from (for example "10.0.0.7:443"); never the id, which may be reused. */
  key: string;
}

/** True when n is prime (trial division: at most 4,096 divisions for the sizes we accept; control plane only). */
export function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/**
 * The smallest size from MAGLEV_SIZES with at least 100 entries per backend
 * (paper §3.4). Throws when even the largest is too small.
 */
export function maglevSizeFor(backends: number): number {
  if (!Number.isInteger(backends) || backends < 0) throw new RangeError(`maglev: backend count must be a non-negative integer, got ${backends}`);
  const need = backends * MAGLEV_MIN_ENTRIES_PER_BACKEND;
  for (const m of MAGLEV_SIZES) if (m >= need) return m;
  const max = MAGLEV_SIZES[MAGLEV_SIZES.length - 1];
  throw new RangeError(
    `maglev: ${backends} backends need a table of at least ${need} entries, more than the largest size ${max} ` +
      `(at most ${Math.floor(max / MAGLEV_MIN_ENTRIES_PER_BACKEND)} backends per table); split the service into several pools`,
  );
}

/** Throws an error naming the size to use when `size` cannot hold `backends` backends. */
export function validateMaglevSize(size: number, backends: number): void {
  const max = MAGLEV_SIZES[MAGLEV_SIZES.length - 1];
  if (!Number.isInteger(size) || size < 2 || size > max) {
    throw new RangeError(`maglev: table size must be an integer between 2 and ${max}, got ${size}`);
  }
  if (!isPrime(size)) {
    // A composite M lets a skip share a factor with M, and that backend's
    // "permutation" then cycles through a fraction of the slots (paper §3.4).
    throw new RangeError(`maglev: table size ${size} is not prime; use one of ${MAGLEV_SIZES.join(', ')} (maglevSizeFor picks one)`);
  }
  if (size < backends * MAGLEV_MIN_ENTRIES_PER_BACKEND) {
    let hint: string;
    try {
      hint = `use maglevSizeFor(${backends}) = ${maglevSizeFor(backends)}`;
    } catch {
      hint = 'split the service into several pools';
    }
    throw new RangeError(
      `maglev: table size ${size} is too small for ${backends} backends: balance needs at least ` +
        `${MAGLEV_MIN_ENTRIES_PER_BACKEND} entries per backend (M >= ${backends * MAGLEV_MIN_ENTRIES_PER_BACKEND}); ${hint}`,
    );
  }
}

/** MurmurHash3 x86_32 of bytes (the whole algorithm, with its tail and length), as uint32. Control plane only. */
export function murmur3Bytes(bytes: Uint8Array, seed: number): number {
  const n = bytes.length, blocks = n & ~3;
  let h = seed | 0;
  for (let i = 0; i < blocks; i += 4) {
    h = mix32(h, bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24));
  }
  const tail = n & 3;
  if (tail !== 0) {
    // The 1 to 3 trailing bytes, little-endian, mixed without the rotate-multiply-add of a full block.
    let k = bytes[blocks];
    if (tail > 1) k ^= bytes[blocks + 1] << 8;
    if (tail > 2) k ^= bytes[blocks + 2] << 16;
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  return fmix32(h ^ n) >>> 0;
}

/** A backend's permutation of the M slots (paper §3.4): its j-th choice is (offset + j * skip) mod M. */
export function maglevPermutation(key: string, size: number): { offset: number; skip: number } {
  const bytes = new TextEncoder().encode(key);
  return { offset: murmur3Bytes(bytes, SEED_OFFSET) % size, skip: (murmur3Bytes(bytes, SEED_SKIP) % (size - 1)) + 1 };
}

function validateBackends(backends: readonly MaglevBackend[]): void {
  if (!Array.isArray(backends)) throw new TypeError('maglev: backends must be an array of { id, weight, key }');
  const ids = new Set<number>(), keys = new Set<string>();
  backends.forEach((b, i) => {
    const where = `maglev: backends[${i}]`;
    if (b === null || typeof b !== 'object') throw new TypeError(`${where} must be an object { id, weight, key }`);
    if (!Number.isInteger(b.id) || b.id < 0 || b.id > 0x7fffffff) throw new RangeError(`${where}.id must be an integer from 0 to 2147483647, got ${b.id}`);
    if (!Number.isInteger(b.weight) || b.weight < 0 || b.weight > MAGLEV_MAX_WEIGHT) {
      throw new RangeError(`${where}.weight must be an integer from 0 (drained) to ${MAGLEV_MAX_WEIGHT}, got ${b.weight}`);
    }
    if (typeof b.key !== 'string' || b.key.length === 0) throw new TypeError(`${where}.key must be a non-empty string (a stable name such as "10.0.0.7:443")`);
    if (ids.has(b.id)) throw new RangeError(`${where}.id ${b.id} is used by another backend`);
    // Equal keys give equal permutations: the two backends would fight over
    // the same slots and one removal would disturb the other's flows.
    if (keys.has(b.key)) throw new RangeError(`${where}.key "${b.key}" is used by another backend`);
    ids.add(b.id);
    keys.add(b.key);
  });
}

/**
 * Builds a Maglev lookup table of `size` entries (a prime >= 100 x the
 * number of backends) holding backend ids, NO_BACKEND everywhere when no
 * backend has a weight. Control plane: allocates freely; returns a new array
 * for the caller to swap in.
 */
export function buildMaglevTable(backends: readonly MaglevBackend[], size = MAGLEV_DEFAULT_SIZE): Int32Array {
  validateBackends(backends);
  validateMaglevSize(size, backends.length);
  const table = new Int32Array(size).fill(NO_BACKEND);
  // Sorted by key (code units, locale-independent): the table depends on the set, not the listing order.
  const live = backends.filter((b) => b.weight > 0).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const n = live.length;
  if (n === 0) return table;
  const id = new Int32Array(n), weight = new Int32Array(n), pos = new Int32Array(n), skip = new Int32Array(n), credit = new Int32Array(n);
  let maxWeight = 0;
  for (let i = 0; i < n; i++) {
    const p = maglevPermutation(live[i].key, size);
    id[i] = live[i].id;
    weight[i] = live[i].weight;
    pos[i] = p.offset; // the next preference to try: offset + next * skip, kept reduced mod M
    skip[i] = p.skip;
    if (live[i].weight > maxWeight) maxWeight = live[i].weight;
  }
  // Paper §3.4 Pseudocode 1, with Katran V2's credits. The backend(s) of the
  // largest weight take a turn every round, so every round fills at least one
  // slot and the loop ends after at most M rounds.
  let filled = 0;
  for (;;) {
    for (let i = 0; i < n; i++) {
      const c0 = credit[i] + weight[i];
      if (c0 < maxWeight) {
        credit[i] = c0;
        continue;
      }
      credit[i] = c0 - maxWeight;
      const s = skip[i];
      let c = pos[i];
      while (table[c] !== NO_BACKEND) {
        c += s; // c < M and s < M: one subtraction reduces it (no overflow: M < 2^24)
        if (c >= size) c -= size;
      }
      table[c] = id[i];
      c += s;
      if (c >= size) c -= size;
      pos[i] = c;
      if (++filled === size) return table;
    }
  }
}

/**
 * Backend id for a flow hash (int32 or uint32): one typed-array read, entry
 * `hash mod M` of the unsigned hash. For callers holding a bare table;
 * MaglevTable.lookup is faster (see MaglevTable.size).
 */
export function maglevLookup(table: Int32Array, h: number): number {
  return table[((h >>> 0) % (table.length >>> 0)) | 0];
}

/**
 * Seeded 32-bit hash of an IPv4 5-tuple in the direction given (client to
 * virtual address: the load balancer only chooses on that direction), as an
 * int32: MurmurHash3 block mixing over the key words, then its finaliser for
 * avalanche. Every node of a service must use the same seed.
 */
export function flowHash4(src: number, dst: number, sport: number, dport: number, proto: number, seed = MAGLEV_FLOW_SEED): number {
  let h = seed;
  h = mix32(h, src);
  h = mix32(h, dst);
  h = mix32(h, ((sport & 0xffff) << 16) | (dport & 0xffff));
  h = mix32(h, proto);
  return fmix32(h ^ 16);
}

/**
 * flowHash4 for IPv6: the source address at `addrOff` in `buf` and the
 * destination right after it, as in the IPv6 header (RFC 8200 §3: source at
 * byte 8, destination at byte 24), so pass packet offset + l3Off + 8. Reads
 * the words in place (no view, no copy); the caller has checked the header
 * was captured (the parser's checkLen).
 */
export function flowHash6(buf: Uint8Array, addrOff: number, sport: number, dport: number, proto: number, seed = MAGLEV_FLOW_SEED): number {
  let h = seed;
  for (let i = 0; i < 32; i += 4) h = mix32(h, readBE32(buf, addrOff + i));
  h = mix32(h, ((sport & 0xffff) << 16) | (dport & 0xffff));
  h = mix32(h, proto);
  return fmix32(h ^ 40);
}

export interface MaglevTableOptions {
  /** A prime >= 100 x backends, or 'auto' (default): maglevSizeFor at the first build, grown only when backends outgrow it. */
  size?: number | 'auto';
  /** Flow hash seed; the same on every node that serves the service. */
  seed?: number;
}

/**
 * A service's current table. build() makes a new Int32Array and swaps it in
 * (with its size) between batches, so a packet sees either the old table or
 * the new one. Worker threads each hold their own MaglevTable and rebuild it
 * from the same backend list: the table is a function of that list.
 */
export class MaglevTable {
  /** The live table (backend ids). Replaced whole by build(); never written in place. */
  table: Int32Array;
  /**
   * Its length, kept as a plain field and swapped together with the table:
   * V8 types a typed array's length as any safe integer, and reading it per
   * lookup cost about a third of the rate (Node 20: 74 vs 114 M lookups/s).
   */
  size: number;
  readonly seed: number;
  /** Fixed size, or 0 when sized automatically. */
  readonly fixedSize: number;
  /** Builds so far (a change counter for the control plane and metrics). */
  generation = 0;
  /** Backends given to the last build (drained ones included). */
  backendCount = 0;

  constructor(opts: MaglevTableOptions = {}) {
    const size = opts.size ?? 'auto';
    if (size !== 'auto') validateMaglevSize(size, 0);
    this.fixedSize = size === 'auto' ? 0 : size;
    this.seed = (opts.seed ?? MAGLEV_FLOW_SEED) | 0;
    this.table = new Int32Array(size === 'auto' ? MAGLEV_DEFAULT_SIZE : size).fill(NO_BACKEND);
    this.size = this.table.length;
  }


  /**
   * Builds the table for `backends` and swaps it in; returns it. Throws (and
   * keeps the old table) when the backends are invalid. With automatic
   * sizing the size never shrinks and grows only when it must: a new M moves
   * nearly every flow.
   */
  build(backends: readonly MaglevBackend[]): Int32Array {
    let size = this.fixedSize;
    if (size === 0) {
      size = this.table.length;
      if (size < backends.length * MAGLEV_MIN_ENTRIES_PER_BACKEND) size = maglevSizeFor(backends.length);
    }
    const next = buildMaglevTable(backends, size);
    // Both fields change together, between two batches (single-threaded):
    // no lookup sees one without the other.
    this.table = next;
    this.size = size;
    this.backendCount = backends.length;
    this.generation++;
    return next;
  }

  /** Backend id for a flow hash, NO_BACKEND when none is up. */
  // The lookups write `((h >>> 0) % (size >>> 0)) | 0`, which is exactly
  // `hash mod M` over the unsigned hash: both operands typed uint32 and the
  // result truncated let V8 use its unsigned integer modulus; the plain
  // `(h >>> 0) % size` compiled to a float modulus (a call) and ran at 65
  // instead of 114 M lookups/s (Node 20, bench/lb.ts's stream).
  lookup(h: number): number {
    return this.table[((h >>> 0) % (this.size >>> 0)) | 0];
  }

  /** Backend id for an IPv4 5-tuple (client to virtual address). */
  lookup4(src: number, dst: number, sport: number, dport: number, proto: number): number {
    return this.table[((flowHash4(src, dst, sport, dport, proto, this.seed) >>> 0) % (this.size >>> 0)) | 0];
  }

  /** Backend id for an IPv6 5-tuple whose addresses are at `addrOff` of `buf` (source, then destination). */
  lookup6(buf: Uint8Array, addrOff: number, sport: number, dport: number, proto: number): number {
    return this.table[((flowHash6(buf, addrOff, sport, dport, proto, this.seed) >>> 0) % (this.size >>> 0)) | 0];
  }
}
