// The guard's enforcement table (DESIGN.md "guard/": control plane builds,
// data plane reads). The blacklist the monitor decides (exact addresses and
// prefixes, IPv4 and IPv6) and the allow list are compiled on the control
// plane into open-addressing tables over typed arrays and swapped in whole;
// the data path asks "is this source blocked?" with a few integer reads and
// never sees a string, a Map or an object per packet.
//
// Layout of an AddrTable: one slot per key, key = (address masked to the
// prefix length, family, length). A lookup walks the distinct prefix lengths
// present for the family, longest first (exact addresses are length 32/128,
// so with no prefixes it is one step), hashing the masked address with the
// length. The table is built whole, never deleted from, load <= 1/2, so a
// probe ends at the first empty slot. The hash is seeded per build
// (MurmurHash3 words, src/flow/hash.ts).
//
// Nearly every packet is NOT blocked, and a miss in an open-addressing table
// costs a full hash and a probe run that ends at an unpredictable place
// (branch mispredictions: measured ~20 ns per length even in C). So each
// prefix length also has a bitmap (a one-hash Bloom filter) indexed by a
// multiplicative hash of the masked address: a clear bit answers "not here"
// with one multiply and one load; only a set bit (a blocked key, or a false
// positive at a rate of keys/bits) goes on to the table. Bits per length:
// 32 per key of that length, at least 2^16, at most 2^20.
//
// Allow list: the same structure, consulted only when a block matched, so
// an allow-listed host inside a blocked prefix passes (counted) at no cost
// to anyone else.

import * as hash from '../flow/hash.js';
import type { BlockEntry } from './bus.js';
import { parsePrefix, wordMask, type Prefix } from './addr.js';

const mix32 = hash.mix32, fmix32 = hash.fmix32, randomSeed = hash.randomSeed, readBE32 = hash.readBE32;

/** match4/match6 result when a block matched but the source is on the allow list. */
export const ALLOW_EXEMPT = -2;

export class AddrTable {
  readonly capacity: number;
  /** Number of keys. */
  readonly size: number;
  /** Key words per slot (IPv4: word 3 only). */
  private readonly w: Int32Array;
  /** family << 8 | length, 0 = empty slot. */
  private readonly tag: Int32Array;
  /** Value per slot (an entry index). */
  private readonly val: Int32Array;
  // The prefilter is public so that the sensor can run it inline in its
  // packet loop (its arrays hoisted out of the loop) and call lookup4 only
  // on a set bit; see bitTest4 for the one definition of the test.
  /** Distinct prefix lengths per family, longest first, and the word masks of the IPv4 ones. */
  readonly lens4: Int32Array;
  readonly lens6: Int32Array;
  readonly masks4: Int32Array;
  /** One bitmap per length index (IPv4 lengths, then IPv6), `1 << bitsLog2` bits each. */
  readonly bits: Int32Array;
  readonly bitsLog2: number;
  readonly bitsShift: number;
  private readonly mask: number;
  private readonly seed: number;

  constructor(keys: { p: Prefix; v: number }[], seed: number = randomSeed()) {
    let cap = 16;
    while (cap < keys.length * 2) cap *= 2;
    this.capacity = cap;
    this.mask = cap - 1;
    this.seed = seed | 0;
    this.w = new Int32Array(cap * 4);
    this.tag = new Int32Array(cap);
    this.val = new Int32Array(cap);
    const per = new Map<number, number>();
    let n = 0;
    for (const { p, v } of keys) {
      if (this.insert(p, v)) n++;
      const k = (p.family << 8) | p.len;
      per.set(k, (per.get(k) ?? 0) + 1);
    }
    this.size = n;
    this.lens4 = Int32Array.from([...per.keys()].filter((k) => k >>> 8 === 4).map((k) => k & 0xff).sort((a, b) => b - a));
    this.lens6 = Int32Array.from([...per.keys()].filter((k) => k >>> 8 === 6).map((k) => k & 0xff).sort((a, b) => b - a));
    this.masks4 = Int32Array.from(this.lens4, (l) => wordMask(l));
    let most = 0;
    for (const c of per.values()) if (c > most) most = c;
    let lg = 16;
    while (lg < 20 && (1 << lg) < most * 32) lg++;
    this.bitsLog2 = lg;
    this.bitsShift = 32 - lg;
    const nl = this.lens4.length + this.lens6.length;
    this.bits = new Int32Array(nl << (lg - 5));
    for (const { p } of keys) {
      const li = p.family === 4 ? this.lens4.indexOf(p.len) : this.lens4.length + this.lens6.indexOf(p.len);
      const [a, b, c, d] = p.words;
      const h = p.family === 4 ? this.bit4(d, p.len) : this.bit6(a, b, c, d, p.len);
      this.bits[(li << (lg - 5)) + (h >>> 5)] |= 1 << (h & 31);
    }
  }

  /** The prefilter alone: true when some IPv4 length's bitmap has the address's bit (a lookup4 may then hit). */
  bitTest4(a: number): boolean {
    const lens = this.lens4, masks = this.masks4, bits = this.bits, bl = this.bitsLog2 - 5, sh = this.bitsShift;
    for (let k = 0; k < lens.length; k++) {
      const h = Math.imul((a & masks[k]) ^ lens[k], 0x9e3779b1) >>> sh;
      if ((bits[(k << bl) + (h >>> 5)] & (1 << (h & 31))) !== 0) return true;
    }
    return false;
  }

  /** Bitmap index of a masked IPv4 key of length len. */
  private bit4(m: number, len: number): number {
    return Math.imul(m ^ len, 0x9e3779b1) >>> this.bitsShift;
  }

  private bit6(m0: number, m1: number, m2: number, m3: number, len: number): number {
    return Math.imul(m0 ^ Math.imul(m1, 0x85ebca6b) ^ Math.imul(m2, 0xc2b2ae35) ^ Math.imul(m3 ^ len, 0x27d4eb2f), 0x9e3779b1) >>> this.bitsShift;
  }

  /** Inserts a key (first one wins on duplicates); false when it was already there. */
  private insert(p: Prefix, v: number): boolean {
    const t = (p.family << 8) | p.len;
    const [a, b, c, d] = p.words;
    let s = (p.family === 4 ? this.hash4(d, t) : this.hash6(a, b, c, d, t)) & this.mask;
    for (;;) {
      const o = s << 2;
      if (this.tag[s] === 0) {
        this.tag[s] = t;
        this.w[o] = a; this.w[o + 1] = b; this.w[o + 2] = c; this.w[o + 3] = d;
        this.val[s] = v;
        return true;
      }
      if (this.tag[s] === t && this.w[o] === a && this.w[o + 1] === b && this.w[o + 2] === c && this.w[o + 3] === d) return false;
      s = (s + 1) & this.mask;
    }
  }

  private hash4(a: number, t: number): number {
    return fmix32(mix32(mix32(this.seed, a), t) ^ 8);
  }

  private hash6(a: number, b: number, c: number, d: number, t: number): number {
    return fmix32(mix32(mix32(mix32(mix32(mix32(this.seed, a), b), c), d), t) ^ 20);
  }

  /** Value of the longest key holding IPv4 address `a` (int32 or u32), or -1. */
  lookup4(a: number): number {
    const lens = this.lens4, n = lens.length;
    if (n === 0) return -1;
    const w = this.w, tag = this.tag, mask = this.mask, masks = this.masks4, bits = this.bits, bl = this.bitsLog2 - 5, sh = this.bitsShift;
    for (let k = 0; k < n; k++) {
      const len = lens[k];
      const m = a & masks[k];
      const h = Math.imul(m ^ len, 0x9e3779b1) >>> sh;
      if ((bits[(k << bl) + (h >>> 5)] & (1 << (h & 31))) === 0) continue;
      const t = (4 << 8) | len;
      let s = this.hash4(m, t) & mask;
      for (;;) {
        const g = tag[s];
        if (g === 0) break;
        if (g === t && w[(s << 2) + 3] === m) return this.val[s];
        s = (s + 1) & mask;
      }
    }
    return -1;
  }

  /** Value of the longest key holding the IPv6 address at buf[off..off+16), or -1. */
  lookup6(buf: Uint8Array, off: number): number {
    const lens = this.lens6, n = lens.length;
    if (n === 0) return -1;
    return this.lookup6w(readBE32(buf, off), readBE32(buf, off + 4), readBE32(buf, off + 8), readBE32(buf, off + 12));
  }

  /** As lookup6, the address given as four big-endian words. */
  lookup6w(a0: number, a1: number, a2: number, a3: number): number {
    const lens = this.lens6, n = lens.length;
    const w = this.w, tag = this.tag, mask = this.mask, bits = this.bits, bl = this.bitsLog2 - 5, base = this.lens4.length;
    for (let k = 0; k < n; k++) {
      const len = lens[k];
      const m0 = (a0 & wordMask(len)) | 0, m1 = (a1 & wordMask(len - 32)) | 0;
      const m2 = (a2 & wordMask(len - 64)) | 0, m3 = (a3 & wordMask(len - 96)) | 0;
      const h = this.bit6(m0, m1, m2, m3, len);
      if ((bits[((base + k) << bl) + (h >>> 5)] & (1 << (h & 31))) === 0) continue;
      const t = (6 << 8) | len;
      let s = this.hash6(m0, m1, m2, m3, t) & mask;
      for (;;) {
        const g = tag[s];
        if (g === 0) break;
        const o = s << 2;
        if (g === t && w[o] === m0 && w[o + 1] === m1 && w[o + 2] === m2 && w[o + 3] === m3) return this.val[s];
        s = (s + 1) & mask;
      }
    }
    return -1;
  }

  /** Distinct prefix lengths a lookup walks (IPv4, IPv6). */
  lengths(): { v4: number[]; v6: number[] } {
    return { v4: [...this.lens4], v6: [...this.lens6] };
  }

  memoryBytes(): number {
    return this.w.byteLength + this.tag.byteLength + this.val.byteLength + this.lens4.byteLength + this.lens6.byteLength + this.bits.byteLength;
  }
}

const EMPTY = new AddrTable([], 1);

/**
 * What the data path holds: the current block table, the allow table and,
 * per entry, a packet counter. rebuild() replaces all three at once; a batch
 * in progress keeps reading the table it started with only if it holds a
 * reference, which the sensor does not need to (JavaScript is single
 * threaded: a swap happens between batches).
 */
export class Blocklist {
  /** The current block table (swapped whole by rebuild()). */
  table: AddrTable = EMPTY;
  private allow: AddrTable = EMPTY;
  /** Entries of the current table, indexed by the table's values. */
  entries: BlockEntry[] = [];
  /** Packets dropped per entry of the current table. */
  hits: Float64Array = new Float64Array(0);
  /** Number of block entries (0: the data path skips the lookup). */
  size = 0;
  /** Times the tables were rebuilt. */
  builds = 0;
  /** Drops per address text, carried across rebuilds (so a rebuild does not reset the counts the admin API shows). */
  private readonly carried = new Map<string, number>();

  /**
   * Builds the tables from blacklist entries (expired ones are left out;
   * `nowMs` decides) and allow-list prefixes, and swaps them in.
   */
  rebuild(entries: Iterable<BlockEntry>, allow: readonly Prefix[], nowMs: number = Date.now()): void {
    // Keep the per-address drop counts of the table being replaced.
    for (let i = 0; i < this.entries.length; i++) this.carried.set(this.entries[i].addr, this.hits[i]);
    const list: BlockEntry[] = [];
    const keys: { p: Prefix; v: number }[] = [];
    for (const e of entries) {
      if (e.until !== 0 && e.until <= nowMs) continue;
      const p = parsePrefix(e.addr);
      if (!p) continue;
      keys.push({ p, v: list.length });
      list.push(e);
    }
    const blocks = new AddrTable(keys);
    const allowT = new AddrTable(allow.map((p, i) => ({ p, v: i })));
    const hits = new Float64Array(list.length);
    const live = new Map<string, number>();
    for (let i = 0; i < list.length; i++) {
      const h = this.carried.get(list[i].addr);
      if (h !== undefined) { hits[i] = h; live.set(list[i].addr, h); }
    }
    this.carried.clear();
    for (const [k, v] of live) this.carried.set(k, v);
    this.table = blocks;
    this.allow = allowT;
    this.entries = list;
    this.hits = hits;
    this.size = list.length;
    this.builds++;
  }

  /** Entry index blocking IPv4 source `a`, -1 when none, ALLOW_EXEMPT when the allow list exempts it. */
  match4(a: number): number {
    const e = this.table.lookup4(a);
    if (e < 0) return -1;
    if (this.allow.size !== 0 && this.allow.lookup4(a) >= 0) return ALLOW_EXEMPT;
    this.hits[e]++;
    return e;
  }

  /** As match4 for the IPv6 source at buf[off..off+16). */
  match6(buf: Uint8Array, off: number): number {
    const e = this.table.lookup6(buf, off);
    if (e < 0) return -1;
    if (this.allow.size !== 0 && this.allow.lookup6(buf, off) >= 0) return ALLOW_EXEMPT;
    this.hits[e]++;
    return e;
  }

  /** The current entries with their drop counters (control plane). */
  list(): (BlockEntry & { drops: number })[] {
    return this.entries.map((e, i) => ({ ...e, drops: this.hits[i] }));
  }

  memoryBytes(): number {
    return this.table.memoryBytes() + this.allow.memoryBytes() + this.hits.byteLength;
  }

  lengths(): { v4: number[]; v6: number[] } {
    return this.table.lengths();
  }
}
