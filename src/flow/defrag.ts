// Fragment tracking: remembers, per fragment train, which flow the train
// belongs to, so that non-first fragments (which carry no ports) are counted
// in their flow and later stages can act on them (DESIGN.md "flow/").
//
// This is not reassembly: no payload is kept. One fixed-size table of trains,
// keyed by (src, dst, protocol, identification) as RFC 791 section 2.3
// ("Fragmentation and reassembly") and RFC 8200 section 4.5 define a train;
// IPv4 ids are 16 bits, IPv6 ids 32 bits, both live in one u32 word.
//
// Decisions:
// - Out of order: a non-first fragment that arrives before its first fragment
//   opens a PENDING entry that counts its packets and bytes. When the first
//   fragment arrives it turns the entry MATCHED and hands the pending counts to
//   the flow table, which credits them to the flow (those packets had already
//   left with no flow, so flowOf was -1 for them; only the accounting is
//   repaired). A PENDING entry that times out counts its packets in
//   `frag_unmatched`.
// - Lifetime: an entry lives `timeoutSec` (default 30 s, as Linux's
//   ipfrag_time; RFC 791 suggests a 15 s reassembly timer) from its creation,
//   not from its last fragment, so a slow drip cannot pin it. It is freed
//   early when the fragment data seen covers the datagram length learnt from
//   the last fragment (MF = 0). Overlapping or duplicated fragments can only
//   make that happen sooner (later fragments are then unmatched); they never
//   add memory.
// - Bounds: capacity slots, linear probing limited to `probe` slots, deletion
//   by backward shift (entries are referenced by nobody outside, so they may
//   move; no tombstones, so a flood of short-lived trains cannot degrade the
//   probe lengths). PENDING entries may use at most `pendingShare` of the
//   slots: a flood of unique-id non-first fragments (which costs an attacker
//   nothing) cannot crowd out trains whose first fragment was seen. When the
//   probe window is full a new train may take an expired entry, and a first
//   fragment may also take the oldest PENDING entry; otherwise it is refused
//   with `frag_table_full`.
// - Expiry is amortised: each call to sweep() visits a fixed number of slots.

import { COUNTER_DEFS, Counter } from '../counters.js';
import * as hash from './hash.js';

// Module-local bindings: under some loaders (tsx's CommonJS interop) an imported
// name is a getter on every use, which stops TurboFan inlining the hash on the hot path.
const mix32 = hash.mix32, fmix32 = hash.fmix32, randomSeed = hash.randomSeed, readBE32 = hash.readBE32;
// Counter indices and Meta flag bits, read once (same reason).
const C_FRAG_TABLE_FULL = Counter.frag_table_full;
const C_FRAG_TRACKED = Counter.frag_tracked;
const C_FRAG_UNMATCHED = Counter.frag_unmatched;

export const FragState = {
  EMPTY: 0,
  PENDING: 1, // non-first fragments seen, first fragment not yet
  MATCHED: 2, // first fragment seen: flowId is valid
} as const;

export interface FragTableOptions {
  /** Slots (power of two). */
  capacity?: number;
  /** Seconds a train is remembered after its first packet. */
  timeoutSec?: number;
  /** Longest linear probe. */
  probe?: number;
  /** Hash seed (random when absent). */
  seed?: number;
  /** Largest share of the slots PENDING entries may hold (0..1). */
  pendingShare?: number;
}

const KEY_WORDS = 10; // 8 address words, identification, protocol | family

export class FragTable {
  readonly capacity: number;
  readonly timeoutSec: number;
  readonly probe: number;
  readonly seed: number;
  readonly pendingLimit: number;
  /** Live entries. */
  size = 0;
  /** Live PENDING entries. */
  pending = 0;
  /**
   * Scratch key the caller fills (setKey4 / setKey6) before first() or
   * later(): words 0-3 source, 4-7 destination (IPv4 uses words 3 and 7),
   * 8 identification, 9 protocol | 0x100 for IPv6.
   */
  readonly k = new Int32Array(KEY_WORDS);
  readonly key: Int32Array;
  readonly hash: Int32Array;
  readonly state: Uint8Array;
  /** Direction of the train in its flow (0 from the client, 1 from the server). */
  readonly dir: Uint8Array;
  readonly flowId: Int32Array;
  /** The flow's hash when recorded: lets the flow table reject a flow id reused since. */
  readonly flowHash: Int32Array;
  readonly deadline: Float64Array;
  readonly pendPkts: Uint32Array;
  readonly pendBytes: Float64Array;
  /** Fragment data bytes seen (sum of fragment payload lengths, overlaps included). */
  readonly recv: Uint32Array;
  /** Datagram data length once the last fragment was seen, else 0. */
  readonly total: Uint32Array;
  /** Counter values of the caller's Counters (set by the flow table per batch). */
  cv: Float64Array;

  /** Packet time for first() / later(), set by the caller (a field, so no double crosses a call). */
  now = 0;
  // Outputs of first() / later(), read by the caller right after the call.
  outDir = 0;
  outFlowHash = 0;
  creditPkts = 0;
  creditBytes = 0;

  private readonly mask: number;
  private cursor = 0;

  constructor(opts: FragTableOptions = {}, counterValues?: Float64Array) {
    const cap = opts.capacity ?? 4096;
    if (!Number.isInteger(cap) || cap < 8 || (cap & (cap - 1)) !== 0 || cap > 1 << 24) {
      throw new RangeError(`fragment table capacity must be a power of two between 8 and 2^24, got ${cap}`);
    }
    this.capacity = cap;
    this.mask = cap - 1;
    this.timeoutSec = opts.timeoutSec ?? 30;
    this.probe = Math.min(opts.probe ?? 8, cap);
    this.seed = (opts.seed ?? randomSeed()) | 0;
    this.pendingLimit = Math.max(1, Math.floor(cap * (opts.pendingShare ?? 0.5)));
    this.key = new Int32Array(cap * KEY_WORDS);
    this.hash = new Int32Array(cap);
    this.state = new Uint8Array(cap);
    this.dir = new Uint8Array(cap);
    this.flowId = new Int32Array(cap);
    this.flowHash = new Int32Array(cap);
    this.deadline = new Float64Array(cap);
    this.pendPkts = new Uint32Array(cap);
    this.pendBytes = new Float64Array(cap);
    this.recv = new Uint32Array(cap);
    this.total = new Uint32Array(cap);
    this.cv = counterValues ?? new Float64Array(COUNTER_DEFS.length);
  }

  setKey4(src: number, dst: number, proto: number, id: number): void {
    const k = this.k;
    k[0] = 0; k[1] = 0; k[2] = 0; k[3] = src | 0;
    k[4] = 0; k[5] = 0; k[6] = 0; k[7] = dst | 0;
    k[8] = id | 0;
    k[9] = proto;
  }

  /** `l3` is the byte offset of the IPv6 header in `buf` (addresses at +8 and +24). */
  setKey6(buf: Uint8Array, l3: number, proto: number, id: number): void {
    const k = this.k;
    k[0] = readBE32(buf, l3 + 8); k[1] = readBE32(buf, l3 + 12);
    k[2] = readBE32(buf, l3 + 16); k[3] = readBE32(buf, l3 + 20);
    k[4] = readBE32(buf, l3 + 24); k[5] = readBE32(buf, l3 + 28);
    k[6] = readBE32(buf, l3 + 32); k[7] = readBE32(buf, l3 + 36);
    k[8] = id | 0;
    k[9] = proto | 0x100;
  }

  /**
   * The first fragment (offset 0) of the train in `k` belongs to `flowId`.
   * Returns true when the train is remembered. creditPkts/creditBytes say
   * what earlier (out-of-order) fragments the caller should credit to the flow.
   */
  first(flowId: number, flowHash: number, dir: number, dataLen: number): boolean {
    const now = this.now;
    this.creditPkts = 0;
    this.creditBytes = 0;
    const h = this.hashKey();
    let s = this.find(h);
    if (s >= 0 && this.deadline[s] <= now) {
      this.expireSlot(s);
      s = -1;
    }
    if (s >= 0) {
      if (this.state[s] === FragState.PENDING) {
        this.creditPkts = this.pendPkts[s];
        this.creditBytes = this.pendBytes[s];
        this.pendPkts[s] = 0;
        this.pendBytes[s] = 0;
        this.pending--;
      }
      this.state[s] = FragState.MATCHED;
      this.flowId[s] = flowId;
      this.flowHash[s] = flowHash;
      this.dir[s] = dir;
      this.recv[s] = this.recv[s] + dataLen;
      this.cv[C_FRAG_TRACKED]++;
      if (this.total[s] !== 0 && this.recv[s] >= this.total[s]) this.remove(s);
      return true;
    }
    s = this.claim(h, true);
    if (s < 0) {
      this.cv[C_FRAG_TABLE_FULL]++;
      return false;
    }
    this.state[s] = FragState.MATCHED;
    this.flowId[s] = flowId;
    this.flowHash[s] = flowHash;
    this.dir[s] = dir;
    this.recv[s] = dataLen;
    this.total[s] = 0;
    this.cv[C_FRAG_TRACKED]++;
    return true;
  }

  /**
   * A non-first fragment of the train in `k`. Returns the flow id recorded by
   * the first fragment (outDir / outFlowHash set), or -1: then the fragment is
   * PENDING (credited later if its first fragment comes) or refused
   * (`frag_table_full` and `frag_unmatched` counted here).
   */
  later(dataLen: number, fragOff: number, mf: boolean, wireLen: number): number {
    const now = this.now;
    const h = this.hashKey();
    let s = this.find(h);
    if (s >= 0 && this.deadline[s] <= now) {
      this.expireSlot(s);
      s = -1;
    }
    if (s >= 0) {
      this.recv[s] = this.recv[s] + dataLen;
      // RFC 791 3.2: the fragment with MF = 0 tells the datagram's data length.
      if (!mf) this.total[s] = fragOff * 8 + dataLen;
      if (this.state[s] === FragState.MATCHED) {
        const fid = this.flowId[s];
        this.outDir = this.dir[s];
        this.outFlowHash = this.flowHash[s];
        if (this.total[s] !== 0 && this.recv[s] >= this.total[s]) this.remove(s);
        return fid;
      }
      this.pendPkts[s]++;
      this.pendBytes[s] += wireLen;
      return -1;
    }
    if (this.pending >= this.pendingLimit) {
      this.cv[C_FRAG_TABLE_FULL]++;
      this.cv[C_FRAG_UNMATCHED]++;
      return -1;
    }
    s = this.claim(h, false);
    if (s < 0) {
      this.cv[C_FRAG_TABLE_FULL]++;
      this.cv[C_FRAG_UNMATCHED]++;
      return -1;
    }
    this.state[s] = FragState.PENDING;
    this.pending++;
    this.flowId[s] = -1;
    this.flowHash[s] = 0;
    this.dir[s] = 0;
    this.pendPkts[s] = 1;
    this.pendBytes[s] = wireLen;
    this.recv[s] = dataLen;
    this.total[s] = mf ? 0 : fragOff * 8 + dataLen;
    return -1;
  }

  /** Visits `slots` slots from a rotating cursor and drops entries expired at `this.now`: amortised expiry. */
  sweep(slots: number): void {
    const mask = this.mask, now = this.now;
    let s = this.cursor;
    for (let v = 0; v < slots; v++) {
      if (this.state[s] !== FragState.EMPTY && this.deadline[s] <= now) {
        // Backward shift may pull a later entry into s: look at s again.
        this.expireSlot(s);
        continue;
      }
      s = (s + 1) & mask;
    }
    this.cursor = s;
  }

  /** Drops every expired entry now (off the hot path). */
  expireAll(now: number): void {
    if (now > this.now) this.now = now;
    this.sweep(this.capacity * 2);
  }

  memoryBytes(): number {
    return this.key.byteLength + this.hash.byteLength + this.state.byteLength + this.dir.byteLength +
      this.flowId.byteLength + this.flowHash.byteLength + this.deadline.byteLength + this.pendPkts.byteLength +
      this.pendBytes.byteLength + this.recv.byteLength + this.total.byteLength;
  }

  clear(): void {
    this.state.fill(0);
    this.size = 0;
    this.pending = 0;
    this.cursor = 0;
  }

  private hashKey(): number {
    const k = this.k;
    let h = this.seed;
    for (let i = 0; i < KEY_WORDS; i++) h = mix32(h, k[i]);
    return fmix32(h ^ (KEY_WORDS * 4));
  }

  private matches(s: number): boolean {
    const key = this.key, k = this.k;
    const b = s * KEY_WORDS;
    for (let i = 0; i < KEY_WORDS; i++) if (key[b + i] !== k[i]) return false;
    return true;
  }

  private find(h: number): number {
    const mask = this.mask;
    let s = h & mask;
    for (let p = 0; p < this.probe; p++) {
      if (this.state[s] === FragState.EMPTY) return -1;
      if (this.hash[s] === h && this.matches(s)) return s;
      s = (s + 1) & mask;
    }
    return -1;
  }

  /**
   * A slot for a new train with hash h (key copied from k): the first empty
   * slot of the probe window, else an expired entry in it, else (first
   * fragments only) the oldest PENDING entry. Taking over an occupied slot in
   * place keeps linear probing's invariant because the window has no hole.
   */
  private claim(h: number, mayEvictPending: boolean): number {
    const now = this.now;
    const mask = this.mask;
    let s = h & mask;
    let victim = -1;
    let victimDeadline = Infinity;
    let victimExpired = false;
    for (let p = 0; p < this.probe; p++) {
      const st = this.state[s];
      if (st === FragState.EMPTY) {
        victim = s;
        this.size++;
        break;
      }
      if (!victimExpired) {
        if (this.deadline[s] <= now) {
          victim = s;
          victimExpired = true;
        } else if (mayEvictPending && st === FragState.PENDING && this.deadline[s] < victimDeadline) {
          victim = s;
          victimDeadline = this.deadline[s];
        }
      }
      s = (s + 1) & mask;
    }
    if (victim < 0) return -1;
    if (this.state[victim] === FragState.PENDING) {
      this.cv[C_FRAG_UNMATCHED] += this.pendPkts[victim];
      this.pending--;
    }
    const key = this.key, k = this.k, b = victim * KEY_WORDS;
    for (let i = 0; i < KEY_WORDS; i++) key[b + i] = k[i];
    this.hash[victim] = h;
    this.deadline[victim] = now + this.timeoutSec;
    this.pendPkts[victim] = 0;
    this.pendBytes[victim] = 0;
    return victim;
  }

  private expireSlot(s: number): void {
    if (this.state[s] === FragState.PENDING) {
      this.cv[C_FRAG_UNMATCHED] += this.pendPkts[s];
      this.pending--;
    }
    this.remove(s);
  }

  /** Backward-shift deletion (Knuth 6.4 algorithm R): no tombstones. */
  private remove(s: number): void {
    const mask = this.mask;
    let hole = s;
    let j = s;
    for (;;) {
      j = (j + 1) & mask;
      // j === s: a completely full table was walked all the way round.
      if (this.state[j] === FragState.EMPTY || j === s) break;
      const home = this.hash[j] & mask;
      // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
      if (((j - home) & mask) >= ((j - hole) & mask)) {
        this.move(j, hole);
        hole = j;
      }
    }
    this.state[hole] = FragState.EMPTY;
    this.size--;
  }

  private move(from: number, to: number): void {
    const key = this.key, a = from * KEY_WORDS, b = to * KEY_WORDS;
    for (let i = 0; i < KEY_WORDS; i++) key[b + i] = key[a + i];
    this.hash[to] = this.hash[from];
    this.state[to] = this.state[from];
    this.dir[to] = this.dir[from];
    this.flowId[to] = this.flowId[from];
    this.flowHash[to] = this.flowHash[from];
    this.deadline[to] = this.deadline[from];
    this.pendPkts[to] = this.pendPkts[from];
    this.pendBytes[to] = this.pendBytes[from];
    this.recv[to] = this.recv[from];
    this.total[to] = this.total[from];
  }
}
