// Outside port (and ICMP identifier) allocation for NAPT (DESIGN.md "nat/").
//
// One bitmap per (protocol, pool address): 65536 bits = 8 KiB, so a pool of
// 256 addresses costs 6 MiB for TCP, UDP and ICMP together. A set bit means
// "not available": in use by a mapping, or in quarantine.
//
// Rules, and where they come from:
// - RFC 4787 REQ-3 / RFC 5382 REQ-7: no port overloading: a port belongs to
//   one mapping at a time (the bitmap).
// - RFC 4787 REQ-3: an inside port in 0-1023 gets an outside port in 0-1023,
//   one in 1024-65535 gets one in 1024-65535 (the "range class";
//   `preserveRangeClass`). Port 0 is never allocated.
// - RFC 4787 REQ-4: port parity preserved (RECOMMENDED, `preserveParity`), for
//   RTP/RTCP pairs. ICMP identifiers have no class and no parity.
// - RFC 6056 section 3.3.1 (Algorithm 1, "simple port randomization") as
//   RFC 7857 section 2.9 and RFC 6888 recommend: `probes` uniformly random
//   candidates, then a bounded word-wise scan of the bitmap from a random
//   word (32 candidates per read), so an allocation costs at most
//   probes + rangeWords reads and fails only when the class really is full.
// - RFC 6888 REQ-8 (port reuse): a freed port stays unavailable for at least
//   `quarantineSec` (default 120 s) before a new mapping may take it, so a
//   late packet of the old conversation cannot reach a new subscriber.
//   Quarantine is a FIFO ring of (port key, release time): releases happen in
//   time order (the NAT's clock only moves forward), so the ring is sorted by
//   expiry and draining it is O(1) per port. The port's bit stays set until
//   the ring gives it back. The ring is bounded; when it is full the oldest
//   entry is released early and counted (`quarantineOverflow`).

import { randomSeed } from '../flow/hash.js';

/** Protocol index of the allocator and the mapping table. */
export const NatProto = {
  TCP: 0,
  UDP: 1,
  ICMP: 2,
} as const;
export type NatProto = (typeof NatProto)[keyof typeof NatProto];
export const NAT_PROTO_COUNT = 3;
export const NAT_PROTO_NAMES = ['tcp', 'udp', 'icmp'] as const;

/** NatProto for an IP protocol number, -1 when the NAT does not translate it. */
export function natProtoOf(ipProto: number): number {
  return ipProto === 6 ? NatProto.TCP : ipProto === 17 ? NatProto.UDP : ipProto === 1 ? NatProto.ICMP : -1;
}

/** IP protocol number of a NatProto. */
export function ipProtoOf(np: number): number {
  return np === NatProto.TCP ? 6 : np === NatProto.UDP ? 17 : 1;
}

export interface PortAllocatorOptions {
  /** Pool addresses (bitmaps are kept per address). */
  poolSize: number;
  /** Range of the 1024-65535 class (default 1024..65535). */
  portMin?: number;
  portMax?: number;
  /** RFC 4787 REQ-3 (default true). When false every TCP/UDP port comes from portMin..portMax. */
  preserveRangeClass?: boolean;
  /** RFC 4787 REQ-4 (default true). */
  preserveParity?: boolean;
  /** Try the inside port itself first (default false: RFC 6056 randomisation). */
  preservePort?: boolean;
  /** Random candidates before the scan (default 16). */
  probes?: number;
  /** Seconds before a freed port may be reused (default 120, RFC 6888 REQ-8). */
  quarantineSec?: number;
  /** Ports that can be in quarantine at once (default 65536). */
  quarantineCapacity?: number;
  seed?: number;
}

const WORDS_PER_MAP = 2048; // 65536 bits / 32

export class PortAllocator {
  readonly poolSize: number;
  readonly portMin: number;
  readonly portMax: number;
  readonly preserveRangeClass: boolean;
  readonly preserveParity: boolean;
  readonly preservePort: boolean;
  readonly probes: number;
  readonly quarantineSec: number;
  /** Bit set = port unavailable; bitmap k = proto * poolSize + poolIndex starts at word k * 2048. */
  readonly used: Uint32Array;
  /** Unavailable ports (in use or quarantined) per bitmap. */
  readonly taken: Uint32Array;
  /** Allocation failures per NatProto (pool exhausted for the class asked). */
  readonly exhausted: Float64Array;
  /** Ports currently in quarantine. */
  quarantined = 0;
  /** Ports released early because the ring was full. */
  quarantineOverflow = 0;

  private readonly qKey: Uint32Array;
  private readonly qTime: Float64Array;
  private qHead = 0;
  private rng: number;

  constructor(opts: PortAllocatorOptions) {
    const n = opts.poolSize;
    if (!Number.isInteger(n) || n < 1 || n * NAT_PROTO_COUNT > 0xffff) {
      throw new RangeError(`port allocator: pool size must be 1..21845 addresses, got ${n}`);
    }
    this.poolSize = n;
    this.portMin = opts.portMin ?? 1024;
    this.portMax = opts.portMax ?? 65535;
    this.preserveRangeClass = opts.preserveRangeClass ?? true;
    this.preserveParity = opts.preserveParity ?? true;
    this.preservePort = opts.preservePort ?? false;
    if (!(Number.isInteger(this.portMin) && Number.isInteger(this.portMax) && this.portMin >= 1 && this.portMax <= 65535 && this.portMin <= this.portMax)) {
      throw new RangeError(`port allocator: port range must satisfy 1 <= min <= max <= 65535, got ${this.portMin}..${this.portMax}`);
    }
    if (this.preserveRangeClass && this.portMax < 1024) {
      throw new RangeError(`port allocator: with preserveRangeClass the range must reach into 1024-65535, got ${this.portMin}..${this.portMax}`);
    }
    this.probes = Math.max(0, Math.min(opts.probes ?? 16, 1024));
    const q = opts.quarantineSec ?? 120;
    if (!(q >= 0) || !Number.isFinite(q)) throw new RangeError(`port allocator: quarantineSec must be >= 0, got ${q}`);
    this.quarantineSec = q;
    this.used = new Uint32Array(n * NAT_PROTO_COUNT * WORDS_PER_MAP);
    this.taken = new Uint32Array(n * NAT_PROTO_COUNT);
    this.exhausted = new Float64Array(NAT_PROTO_COUNT);
    const qc = opts.quarantineCapacity ?? 65536;
    this.qKey = new Uint32Array(Math.max(1, qc));
    this.qTime = new Float64Array(Math.max(1, qc));
    this.rng = ((opts.seed ?? randomSeed()) | 0) || 0x2545f491;
  }

  /** Lowest and highest port of the class `want` belongs to. */
  private classLo(np: number, want: number): number {
    if (np === NatProto.ICMP) return 1;
    if (!this.preserveRangeClass) return this.portMin;
    return want < 1024 ? 1 : Math.max(1024, this.portMin);
  }
  private classHi(np: number, want: number): number {
    if (np === NatProto.ICMP) return 65535;
    if (!this.preserveRangeClass) return this.portMax;
    return want < 1024 ? 1023 : this.portMax;
  }

  private rand(): number {
    let x = this.rng;
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    this.rng = x;
    return x >>> 0;
  }

  /**
   * An outside port for inside port `want` on pool address `pool`, or -1 when
   * none is free in its class (counted in `exhausted`). Quarantined ports
   * whose time is up are returned to the pool first.
   */
  allocate(np: number, pool: number, want: number, now: number): number {
    this.drain(now);
    const map = np * this.poolSize + pool;
    const base = map * WORDS_PER_MAP;
    const used = this.used;
    const lo = this.classLo(np, want), hi = this.classHi(np, want);
    const par = this.preserveParity && np !== NatProto.ICMP ? want & 1 : -1;
    if (this.preservePort && want >= lo && want <= hi && (used[base + (want >>> 5)] & (1 << (want & 31))) === 0) {
      return this.take(map, want);
    }
    const span = hi - lo + 1;
    for (let k = 0; k < this.probes; k++) {
      let p = lo + (this.rand() % span);
      if (par >= 0 && (p & 1) !== par) p = p + 1 <= hi ? p + 1 : p - 1;
      if (p < lo || p > hi) continue;
      if ((used[base + (p >>> 5)] & (1 << (p & 31))) === 0) return this.take(map, p);
    }
    // Bounded scan: every word of the class once, from a random word.
    const w0 = lo >>> 5, w1 = hi >>> 5, nw = w1 - w0 + 1;
    const pmask = par < 0 ? 0xffffffff : par === 0 ? 0x55555555 : 0xaaaaaaaa;
    let w = w0 + (this.rand() % nw);
    for (let v = 0; v < nw; v++) {
      let free = ~used[base + w] & pmask;
      if (w === w0) free &= ~0 << (lo & 31);
      if (w === w1 && (hi & 31) !== 31) free &= (1 << ((hi & 31) + 1)) - 1;
      if (free !== 0) {
        // Lowest free bit (free & -free isolates it).
        const bit = 31 - Math.clz32(free & -free);
        return this.take(map, (w << 5) | bit);
      }
      w = w === w1 ? w0 : w + 1;
    }
    this.exhausted[np]++;
    return -1;
  }

  /** Marks `port` unavailable (a static reservation, or a test); false if it already was. */
  reserve(np: number, pool: number, port: number): boolean {
    const map = np * this.poolSize + pool;
    const wi = map * WORDS_PER_MAP + (port >>> 5), b = 1 << (port & 31);
    if ((this.used[wi] & b) !== 0) return false;
    this.take(map, port);
    return true;
  }

  private take(map: number, port: number): number {
    this.used[map * WORDS_PER_MAP + (port >>> 5)] |= 1 << (port & 31);
    this.taken[map]++;
    return port;
  }

  /**
   * Gives a port back. With `quarantine` (the normal case: the port was seen
   * on the wire) it stays unavailable for quarantineSec; without (a mapping
   * refused before its first packet left) it is free at once.
   */
  release(np: number, pool: number, port: number, now: number, quarantine = true): void {
    const map = np * this.poolSize + pool;
    if (!quarantine || this.quarantineSec === 0) {
      this.clearBit(map, port);
      return;
    }
    const cap = this.qKey.length;
    if (this.quarantined === cap) {
      // Full ring: the oldest quarantined port goes back early.
      const k = this.qKey[this.qHead];
      this.clearBit(k >>> 16, k & 0xffff);
      this.qHead = this.qHead + 1 === cap ? 0 : this.qHead + 1;
      this.quarantined--;
      this.quarantineOverflow++;
    }
    let tail = this.qHead + this.quarantined;
    if (tail >= cap) tail -= cap;
    this.qKey[tail] = ((map << 16) | port) >>> 0;
    this.qTime[tail] = now;
    this.quarantined++;
  }

  /** Returns every quarantined port whose time is up (also called by allocate). */
  drain(now: number): void {
    const cap = this.qKey.length, q = this.quarantineSec;
    while (this.quarantined !== 0 && this.qTime[this.qHead] + q <= now) {
      const k = this.qKey[this.qHead];
      this.clearBit(k >>> 16, k & 0xffff);
      this.qHead = this.qHead + 1 === cap ? 0 : this.qHead + 1;
      this.quarantined--;
    }
  }

  private clearBit(map: number, port: number): void {
    const wi = map * WORDS_PER_MAP + (port >>> 5), b = 1 << (port & 31);
    if ((this.used[wi] & b) !== 0) {
      this.used[wi] &= ~b;
      this.taken[map]--;
    }
  }

  /** True when `port` is in use or in quarantine. */
  isTaken(np: number, pool: number, port: number): boolean {
    const map = np * this.poolSize + pool;
    return (this.used[map * WORDS_PER_MAP + (port >>> 5)] & (1 << (port & 31))) !== 0;
  }

  /** Unavailable ports on one pool address for one protocol. */
  takenCount(np: number, pool: number): number {
    return this.taken[np * this.poolSize + pool];
  }

  /** Forgets every allocation and quarantine (off the hot path). */
  clear(): void {
    this.used.fill(0);
    this.taken.fill(0);
    this.qHead = 0;
    this.quarantined = 0;
  }

  memoryBytes(): number {
    return this.used.byteLength + this.taken.byteLength + this.qKey.byteLength + this.qTime.byteLength;
  }
}
