// Fragment trains for the NAT (RFC 4787 REQ-14, RFC 5508 section 6): only
// the first fragment carries ports, so the translation it got (new source,
// new destination, egress side) is remembered per train and applied to the
// IP header of every later fragment. A non-first fragment that arrives
// before its first fragment is COPIED into a fixed hold arena and released
// (translated) when the first fragment comes, or dropped when the train
// times out. This is not reassembly: fragments leave as they came.
//
// Why not src/flow/defrag.ts: that table credits flow statistics and holds no
// bytes; the NAT needs the translation per train and a bounded byte store.
// Same house rules: one fixed table of trains keyed by (src, dst, protocol,
// identification) (RFC 791 2.3) plus the direction, power-of-two slots,
// linear probing limited to `probe`, backward-shift deletion (no
// tombstones), lifetime from creation (a slow drip cannot pin an entry),
// early removal once the data seen covers the datagram length learnt from
// the last fragment, an amortised sweep.
//
// Bounds against hostile fragments: trains that have only held fragments
// (PENDING) may use at most half of the table; a train holds at most
// `maxHeldPerTrain` fragments; the arena has `holdSlots` slots of
// `slotBytes` bytes (larger fragments are refused). Every refusal is counted.

import { NatCounter, NAT_COUNTER_DEFS } from './counters.js';
import * as hash from '../flow/hash.js';

const mix32 = hash.mix32, fmix32 = hash.fmix32;

export const TrainState = {
  EMPTY: 0,
  PENDING: 1, // non-first fragments held, first fragment not seen yet
  FORWARD: 2, // first fragment translated: newSrc/newDst/egress valid
  DROP: 3,    // first fragment dropped: later ones are dropped too
} as const;

export interface NatFragOptions {
  /** Train slots (power of two, default 1024). */
  trains?: number;
  /** Longest linear probe (default 8). */
  probe?: number;
  /** Seconds a train is remembered after its first packet (default 30, as Linux ipfrag_time). */
  timeoutSec?: number;
  /** Fragments that can be held at once (default 256). */
  holdSlots?: number;
  /** Largest held frame in bytes (default 2048). */
  slotBytes?: number;
  /** Held fragments per train (default 16). */
  maxHeldPerTrain?: number;
  seed?: number;
}

export class NatFragTable {
  readonly capacity: number;
  readonly probe: number;
  readonly timeoutSec: number;
  readonly holdSlots: number;
  readonly slotBytes: number;
  readonly maxHeldPerTrain: number;
  readonly pendingLimit: number;
  size = 0;
  pending = 0;
  /** Held fragments right now. */
  held = 0;

  readonly kSrc: Int32Array;
  readonly kDst: Int32Array;
  /** protocol << 24 | direction << 16 | identification (int32). Addresses are int32 too. */
  readonly kPid: Int32Array;
  readonly hash: Int32Array;
  readonly state: Uint8Array;
  readonly newSrc: Int32Array;
  readonly newDst: Int32Array;
  readonly egress: Uint8Array;
  readonly deadline: Float64Array;
  readonly recv: Uint32Array;
  readonly total: Uint32Array;
  readonly heldHead: Int32Array;
  readonly heldTail: Int32Array;
  readonly heldCount: Uint16Array;

  /** Hold arena: slot h holds hLen[h] bytes at h * slotBytes. */
  readonly arena: Buffer;
  readonly hLen: Uint32Array;
  readonly hOrigLen: Uint32Array;
  readonly hLinkType: Uint16Array;
  readonly hL3Off: Uint16Array;
  readonly hNext: Int32Array;
  private hFree = -1;

  /** Counter values (the NAT points this at its caller's counters per batch). */
  cv: Float64Array;

  private readonly mask: number;
  private readonly seed: number;
  private cursor = 0;

  constructor(opts: NatFragOptions = {}, counterValues?: Float64Array) {
    const cap = opts.trains ?? 1024;
    if (!Number.isInteger(cap) || cap < 8 || cap > 1 << 22 || (cap & (cap - 1)) !== 0) {
      throw new RangeError(`fragments.trains must be a power of two between 8 and 2^22, got ${cap}`);
    }
    this.capacity = cap;
    this.mask = cap - 1;
    this.probe = Math.max(1, Math.min(opts.probe ?? 8, cap));
    this.timeoutSec = opts.timeoutSec ?? 30;
    if (!(this.timeoutSec > 0)) throw new RangeError(`fragments.timeoutSec must be > 0, got ${this.timeoutSec}`);
    this.holdSlots = opts.holdSlots ?? 256;
    this.slotBytes = opts.slotBytes ?? 2048;
    this.maxHeldPerTrain = opts.maxHeldPerTrain ?? 16;
    if (!Number.isInteger(this.holdSlots) || this.holdSlots < 0) throw new RangeError(`fragments.holdSlots must be >= 0, got ${this.holdSlots}`);
    if (!Number.isInteger(this.slotBytes) || this.slotBytes < 64) throw new RangeError(`fragments.slotBytes must be >= 64, got ${this.slotBytes}`);
    this.pendingLimit = Math.max(1, cap >>> 1);
    this.seed = (opts.seed ?? hash.randomSeed()) | 0;
    this.kSrc = new Int32Array(cap);
    this.kDst = new Int32Array(cap);
    this.kPid = new Int32Array(cap);
    this.hash = new Int32Array(cap);
    this.state = new Uint8Array(cap);
    this.newSrc = new Int32Array(cap);
    this.newDst = new Int32Array(cap);
    this.egress = new Uint8Array(cap);
    this.deadline = new Float64Array(cap);
    this.recv = new Uint32Array(cap);
    this.total = new Uint32Array(cap);
    this.heldHead = new Int32Array(cap);
    this.heldTail = new Int32Array(cap);
    this.heldCount = new Uint16Array(cap);
    const hs = Math.max(1, this.holdSlots);
    this.arena = Buffer.alloc(hs * this.slotBytes);
    this.hLen = new Uint32Array(hs);
    this.hOrigLen = new Uint32Array(hs);
    this.hLinkType = new Uint16Array(hs);
    this.hL3Off = new Uint16Array(hs);
    this.hNext = new Int32Array(hs);
    this.cv = counterValues ?? new Float64Array(NAT_COUNTER_DEFS.length);
    this.clear();
  }

  clear(): void {
    this.state.fill(0);
    this.size = 0;
    this.pending = 0;
    this.held = 0;
    this.cursor = 0;
    this.hFree = -1;
    for (let h = this.holdSlots - 1; h >= 0; h--) {
      this.hNext[h] = this.hFree;
      this.hFree = h;
    }
  }

  private hashKey(src: number, dst: number, pid: number): number {
    let h = mix32(this.seed, src);
    h = mix32(h, dst);
    h = mix32(h, pid);
    return fmix32(h ^ 12) | 0;
  }

  /** Live train of the key, or -1. A train past its deadline is expired here (its held fragments counted as timed out). */
  find(src: number, dst: number, pid: number, now: number): number {
    const h = this.hashKey(src, dst, pid);
    const mask = this.mask;
    let s = h & mask;
    for (let p = 0; p < this.probe; p++) {
      if (this.state[s] === TrainState.EMPTY) return -1;
      if (this.hash[s] === h && this.kSrc[s] === src && this.kDst[s] === dst && this.kPid[s] === pid) {
        if (this.deadline[s] <= now) {
          this.expireSlot(s);
          return -1;
        }
        return s;
      }
      s = (s + 1) & mask;
    }
    return -1;
  }

  /**
   * Records the first fragment's outcome. Returns the train slot (its held
   * fragments, if any, are for the caller to release or drop, then
   * freeHeld()), or -1 when the table is full (counted).
   */
  first(src: number, dst: number, pid: number, now: number, forward: boolean, newSrc: number, newDst: number, egress: number, dataLen: number): number {
    let s = this.find(src, dst, pid, now);
    if (s < 0) {
      s = this.claim(src, dst, pid, now);
      if (s < 0) {
        this.cv[NatCounter.nat_frag_table_full]++;
        return -1;
      }
      this.recv[s] = 0;
      this.total[s] = 0;
    } else if (this.state[s] === TrainState.PENDING) {
      this.pending--;
    }
    this.state[s] = forward ? TrainState.FORWARD : TrainState.DROP;
    this.newSrc[s] = newSrc;
    this.newDst[s] = newDst;
    this.egress[s] = egress;
    this.recv[s] += dataLen;
    this.cv[NatCounter.nat_frag_first_tracked]++;
    return s;
  }

  /**
   * Accounts a non-first fragment in its train and returns the slot (any
   * state), or -1 when no train is known (the caller may then hold it).
   */
  later(src: number, dst: number, pid: number, now: number, dataLen: number, fragOff: number, mf: boolean): number {
    const s = this.find(src, dst, pid, now);
    if (s < 0) return -1;
    this.recv[s] += dataLen;
    // RFC 791 3.2: the fragment with MF = 0 tells the datagram's data length.
    if (!mf) this.total[s] = fragOff * 8 + dataLen;
    return s;
  }

  /**
   * Holds a copy of the frame `len` bytes at `frameOff` of `src` (IP header
   * at l3Off within it) in train `slot`, or in a new PENDING train when
   * slot < 0. Returns false (nothing kept) when a bound is hit.
   */
  hold(slot: number, src: number, dst: number, pid: number, now: number,
    buf: Buffer, frameOff: number, len: number, origLen: number, linkType: number, l3Off: number,
    dataLen: number, fragOff: number, mf: boolean): boolean {
    if (len > this.slotBytes || this.hFree < 0 || this.holdSlots === 0) return false;
    let s = slot;
    if (s < 0) {
      if (this.pending >= this.pendingLimit) return false;
      s = this.claim(src, dst, pid, now);
      if (s < 0) {
        this.cv[NatCounter.nat_frag_table_full]++;
        return false;
      }
      this.state[s] = TrainState.PENDING;
      this.pending++;
      this.recv[s] = dataLen;
      this.total[s] = mf ? 0 : fragOff * 8 + dataLen;
    }
    if (this.heldCount[s] >= this.maxHeldPerTrain) return false;
    const h = this.hFree;
    this.hFree = this.hNext[h];
    buf.copy(this.arena, h * this.slotBytes, frameOff, frameOff + len);
    this.hLen[h] = len;
    this.hOrigLen[h] = origLen;
    this.hLinkType[h] = linkType;
    this.hL3Off[h] = l3Off;
    this.hNext[h] = -1;
    if (this.heldHead[s] < 0) this.heldHead[s] = h;
    else this.hNext[this.heldTail[s]] = h;
    this.heldTail[s] = h;
    this.heldCount[s]++;
    this.held++;
    return true;
  }

  /** Frees the held fragments of train s (after the caller released or dropped them). */
  freeHeld(s: number): void {
    let h = this.heldHead[s];
    while (h >= 0) {
      const nx = this.hNext[h];
      this.hNext[h] = this.hFree;
      this.hFree = h;
      this.held--;
      h = nx;
    }
    this.heldHead[s] = -1;
    this.heldTail[s] = -1;
    this.heldCount[s] = 0;
  }

  /** Removes train s when the data seen covers the whole datagram (and nothing is pending). */
  maybeComplete(s: number): void {
    if (this.state[s] !== TrainState.PENDING && this.total[s] !== 0 && this.recv[s] >= this.total[s] && this.heldHead[s] < 0) this.remove(s);
  }

  /** Visits `slots` slots from a rotating cursor and expires trains past their deadline. */
  sweep(now: number, slots: number): void {
    const mask = this.mask;
    let s = this.cursor;
    for (let v = 0; v < slots; v++) {
      if (this.state[s] !== TrainState.EMPTY && this.deadline[s] <= now) {
        this.expireSlot(s); // backward shift may pull a later entry into s: look at s again
        continue;
      }
      s = (s + 1) & mask;
    }
    this.cursor = s;
  }

  private expireSlot(s: number): void {
    if (this.heldCount[s] !== 0) this.cv[NatCounter.nat_frag_timeout] += this.heldCount[s];
    this.freeHeld(s);
    if (this.state[s] === TrainState.PENDING) this.pending--;
    this.remove(s);
  }

  /** A slot for a new train: first empty in the probe window, else an expired one (taken over in place). */
  private claim(src: number, dst: number, pid: number, now: number): number {
    const h = this.hashKey(src, dst, pid);
    const mask = this.mask;
    let s = h & mask;
    let victim = -1;
    for (let p = 0; p < this.probe; p++) {
      if (this.state[s] === TrainState.EMPTY) {
        victim = s;
        this.size++;
        break;
      }
      if (victim < 0 && this.deadline[s] <= now) victim = s;
      s = (s + 1) & mask;
    }
    if (victim < 0) return -1;
    if (this.state[victim] !== TrainState.EMPTY) {
      // Taking over an expired train in place: account for what it held.
      if (this.heldCount[victim] !== 0) this.cv[NatCounter.nat_frag_timeout] += this.heldCount[victim];
      this.freeHeld(victim);
      if (this.state[victim] === TrainState.PENDING) this.pending--;
    }
    this.kSrc[victim] = src;
    this.kDst[victim] = dst;
    this.kPid[victim] = pid;
    this.hash[victim] = h;
    this.deadline[victim] = now + this.timeoutSec;
    this.heldHead[victim] = -1;
    this.heldTail[victim] = -1;
    this.heldCount[victim] = 0;
    this.state[victim] = TrainState.PENDING; // caller sets the real state
    return victim;
  }

  /** Backward-shift deletion (Knuth 6.4 algorithm R). */
  private remove(s: number): void {
    const mask = this.mask;
    let hole = s;
    let j = s;
    for (;;) {
      j = (j + 1) & mask;
      if (this.state[j] === TrainState.EMPTY) break;
      const home = this.hash[j] & mask;
      if (((j - home) & mask) >= ((j - hole) & mask)) {
        this.move(j, hole);
        hole = j;
      }
    }
    this.state[hole] = TrainState.EMPTY;
    this.size--;
  }

  private move(from: number, to: number): void {
    this.kSrc[to] = this.kSrc[from];
    this.kDst[to] = this.kDst[from];
    this.kPid[to] = this.kPid[from];
    this.hash[to] = this.hash[from];
    this.state[to] = this.state[from];
    this.newSrc[to] = this.newSrc[from];
    this.newDst[to] = this.newDst[from];
    this.egress[to] = this.egress[from];
    this.deadline[to] = this.deadline[from];
    this.recv[to] = this.recv[from];
    this.total[to] = this.total[from];
    this.heldHead[to] = this.heldHead[from];
    this.heldTail[to] = this.heldTail[from];
    this.heldCount[to] = this.heldCount[from];
  }

  memoryBytes(): number {
    return this.kSrc.byteLength * 3 + this.hash.byteLength + this.state.byteLength + this.newSrc.byteLength * 2 +
      this.egress.byteLength + this.deadline.byteLength + this.recv.byteLength * 2 + this.heldHead.byteLength * 2 +
      this.heldCount.byteLength + this.arena.byteLength + this.hLen.byteLength * 2 + this.hLinkType.byteLength * 2 + this.hNext.byteLength;
  }
}
