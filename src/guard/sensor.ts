// The guard's sensor: on the data path of every node, it finds connection
// attempts and their originating address in each parsed batch, counts them
// per address in a fixed-size typed-array table, and hands the counts to the
// bus once per interval as one DeltaBatch (never a message per packet).
// It also applies the enforcement table (blocklist.ts) first: for a source
// that is not blocked that costs one bitmap test per prefix length, and a
// blocked one is dropped (optionally answered with a reset), neither
// counted nor tracked.
//
// What counts (DESIGN.md "guard/"):
// - An attempt is a TCP segment with SYN and without ACK (RFC 9293 3.5), in
//   an unfragmented packet or a first fragment (offset 0). A packet without
//   SYN is disregarded, and so is a SYN-ACK.
// - Suspicious: a first TCP fragment too short to hold the flags (fewer
//   than 14 bytes of TCP header: the flags are byte 13; RFC 1858 3.1, the
//   "tiny fragment" attack), and a TCP fragment at offset 1 (8 bytes in:
//   it can overwrite the flags of an earlier first fragment; RFC 1858
//   3.2.2 and RFC 3128 say drop it). Both are dropped by default
//   (guard.dropSuspiciousFragments) and counted for their source.
// - A SYN split over fragments is still an attempt. The sensor keeps, per
//   fragment train (RFC 791 2.3 / RFC 8200 4.5: source, destination,
//   protocol, identification), the first WIN bytes of the fragmentable part
//   in a small bounded table, fills them from the first fragment and from
//   fragments whose offset falls inside them, and reads the flags once the
//   first fragment and the flag bytes are there (reassembly of the first
//   bytes only, by the standards' rules, not by recognising a capture).
//   A train is released once its fragments cover the datagram (so a later
//   datagram reusing the identification is a new train, as for the
//   receiver), or after guard.sensor.fragTimeout. Overlapping writes with different bytes are counted (RFC 5722 makes
//   IPv6 receivers drop such datagrams; IPv4 receivers differ in which copy
//   wins, RFC 3128): any SYN-without-ACK an overlap could produce counts.
//
// After the flow table has tracked the batch, afterTrack() marks the flows
// the counted SYNs opened; completions and closes per address come from
// there (src/guard/conns.ts) and travel in the same deltas.
//
// Per packet: typed-array reads and writes only (STYLE.md 3). A packet the
// guard drops gets verdict DROP and its Meta L3 flag cleared, so the later
// stages (flow table, NAT, distributor) leave it alone: the flow table does
// not create flows for a blocked flood.

import { Batch, Verdict } from '../io/batch.js';
import { MetaFlag, type Meta } from '../wire/meta.js';
import { COUNTER_DEFS, Counter, type Counters } from '../counters.js';
import { FlowState, type FlowTable } from '../flow/flow-table.js';
import * as hash from '../flow/hash.js';
import { encodeTcpRstFor, TCP_RST_BYTES } from '../nat/icmp-builder.js';
import type { AttemptDelta, DeltaBatch } from './bus.js';
import { ALLOW_EXEMPT, Blocklist } from './blocklist.js';
import { ConnMarks, Mark, type ConnSink } from './conns.js';
import { formatAddr } from './addr.js';

// Module-local bindings (see src/flow/flow-table.ts: an imported binding is a getter under some loaders).
const mix32 = hash.mix32, fmix32 = hash.fmix32, randomSeed = hash.randomSeed, readBE32 = hash.readBE32;
const C_ATTEMPTS = Counter.guard_attempts;
const C_ASSEMBLED = Counter.guard_assembled_syn;
const C_SUSPICIOUS = Counter.guard_suspicious;
const C_SUSP_DROP = Counter.guard_suspicious_drop;
const C_OVERLAP = Counter.guard_frag_overlap;
const C_FRAG_FULL = Counter.guard_frag_table_full;
const C_TABLE_FULL = Counter.guard_table_full;
const C_BLOCKED = Counter.guard_blocked_drop;
const C_RST = Counter.guard_blocked_rst;
const C_RST_LIMITED = Counter.guard_rst_limited;
const C_EXEMPT = Counter.guard_allow_exempt;
const F_L3 = MetaFlag.L3;
const F_FRAGMENT = MetaFlag.FRAGMENT;
const F_MF = MetaFlag.MF;
const F_TCP_FLAGS = MetaFlag.TCP_FLAGS;
const V_FORWARD = Verdict.FORWARD;
const V_DROP = Verdict.DROP;
const S_SYN_SENT = FlowState.TCP_SYN_SENT;
const M_OPEN = Mark.OPEN;
const PROTO_TCP = 6;
const TCP_SYN = 0x02;
const TCP_ACK = 0x10;
const TCP_RST = 0x04;
/** Bytes of TCP header that hold the flags: they are byte 13 (RFC 9293 3.1). */
const TCP_FLAGS_END = 14;
/** Bytes of the fragmentable part assembled per train (offsets 0..3 in 8-byte units). */
const WIN = 32;
/** Count slots per address: attempts, suspicious, completed, closed. */
const N_ATT = 0, N_SUSP = 1, N_DONE = 2, N_CLOSED = 3;
const IPPROTO_FRAGMENT = 44;
const EMPTY_I32 = new Int32Array(0);

export interface GuardSensorOptions {
  /** Addresses per interval (power of two, default 65536). */
  capacity?: number;
  /** Longest probe in the address table (default 32). */
  probe?: number;
  /** Fragment trains assembled at once (power of two, default 1024). */
  fragCapacity?: number;
  /** Seconds a fragment train is kept (default 15). */
  fragTimeoutSec?: number;
  /** Drop suspicious fragments (default true). */
  dropSuspicious?: boolean;
  /** Answer SYNs from blocked IPv4 sources with a reset (default false). */
  rst?: boolean;
  /** Resets per second at most (default 100). */
  rstRate?: number;
  /** Largest batch the sensor will see (grows once if a larger one comes). */
  batchCapacity?: number;
  /** Seconds a connection may stay not established before its mark goes (default 5). */
  synTimeoutSec?: number;
  seed?: number;
}

export class GuardSensor implements ConnSink {
  readonly capacity: number;
  readonly probe: number;
  readonly dropSuspicious: boolean;
  readonly rst: boolean;
  readonly rstRate: number;
  readonly synTimeoutSec: number;
  /** The enforcement table the data path applies first (null: nothing is blocked). */
  blocklist: Blocklist | null = null;
  /** Resets built this batch (raw IPv4); the owner sends and clears it. */
  readonly rstOut: Batch;

  // ---- address table (cleared by flush) ----
  private readonly key: Int32Array;
  private readonly fam: Uint8Array;
  private readonly cnt: Uint32Array;
  private readonly used: Int32Array;
  private usedCount = 0;
  private readonly mask: number;
  private readonly seed: number;

  // ---- attempts of the current batch, for afterTrack ----
  private attIdx: Int32Array;
  private attW: Int32Array;
  private attFam: Uint8Array;
  private attCount = 0;

  // ---- fragment window ----
  readonly fragCapacity: number;
  private readonly fragTimeout: number;
  private readonly fMask: number;
  private readonly fKey: Int32Array;
  private readonly fHash: Int32Array;
  private readonly fLive: Uint8Array;
  private readonly fT0: Float64Array;
  private readonly fBytes: Uint8Array;
  private readonly fKnown: Int32Array;
  private readonly fFirst: Uint8Array;
  private readonly fStart: Uint8Array;
  private readonly fCounted: Uint8Array;
  private readonly fVote: Uint8Array;
  /** Fragment data bytes seen past the window, and the datagram's length once its last fragment came (-1 before). */
  private readonly fSeen: Int32Array;
  private readonly fTotal: Int32Array;
  private fragLive = 0;
  /** Scratch key of the fragment being looked at: src 4 words, dst 4 words, id, family << 8 | protocol. */
  private readonly fk = new Int32Array(10);

  private marks: ConnMarks | null = null;
  /** The batch inspect() saw last (afterTrack reads its packets again). */
  private lastBatch: Batch | null = null;
  private lastMeta: Meta | null = null;
  private rstTokens: number;
  private rstTime = -Infinity;
  cv: Float64Array;

  constructor(opts: GuardSensorOptions = {}, counters?: Counters) {
    const cap = opts.capacity ?? 1 << 16;
    if (!Number.isInteger(cap) || cap < 16 || (cap & (cap - 1)) !== 0) throw new RangeError(`guard sensor capacity must be a power of two >= 16, got ${cap}`);
    const fcap = opts.fragCapacity ?? 1024;
    if (!Number.isInteger(fcap) || fcap < 16 || (fcap & (fcap - 1)) !== 0) throw new RangeError(`guard fragment capacity must be a power of two >= 16, got ${fcap}`);
    this.capacity = cap;
    this.mask = cap - 1;
    this.probe = Math.max(1, Math.min(opts.probe ?? 32, cap));
    this.seed = (opts.seed ?? randomSeed()) | 0;
    this.dropSuspicious = opts.dropSuspicious ?? true;
    this.rst = opts.rst ?? false;
    this.rstRate = opts.rstRate ?? 100;
    this.rstTokens = this.rstRate;
    this.synTimeoutSec = opts.synTimeoutSec ?? 5;
    this.key = new Int32Array(cap * 4);
    this.fam = new Uint8Array(cap);
    this.cnt = new Uint32Array(cap * 4);
    this.used = new Int32Array(cap);
    const bc = opts.batchCapacity ?? 256;
    this.attIdx = new Int32Array(bc);
    this.attW = new Int32Array(bc * 4);
    this.attFam = new Uint8Array(bc);
    this.fragCapacity = fcap;
    this.fMask = fcap - 1;
    this.fragTimeout = opts.fragTimeoutSec ?? 15;
    this.fKey = new Int32Array(fcap * 10);
    this.fHash = new Int32Array(fcap);
    this.fLive = new Uint8Array(fcap);
    this.fT0 = new Float64Array(fcap);
    this.fBytes = new Uint8Array(fcap * WIN);
    this.fKnown = new Int32Array(fcap);
    this.fFirst = new Uint8Array(fcap);
    this.fStart = new Uint8Array(fcap);
    this.fCounted = new Uint8Array(fcap);
    this.fVote = new Uint8Array(fcap);
    this.fSeen = new Int32Array(fcap);
    this.fTotal = new Int32Array(fcap);
    // Up to 64 resets per batch; the rate limit keeps far fewer.
    this.rstOut = new Batch(64, 64 * TCP_RST_BYTES);
    this.cv = counters ? counters.values : new Float64Array(COUNTER_DEFS.length);
  }

  /** Addresses counted since the last flush. */
  get size(): number {
    return this.usedCount;
  }

  /**
   * The data path for packets [from, to) of a parsed batch (all of it by
   * default): blocklist, then attempts and suspicious fragments. `nowSec`
   * ages the fragment window and paces resets. Packets whose verdict is not
   * FORWARD on entry are left alone.
   */
  inspect(batch: Batch, meta: Meta, nowSec: number, from = 0, to = batch.count): void {
    if (from === 0) this.attCount = 0;
    if (this.attIdx.length < batch.capacity) this.growAttempts(batch.capacity);
    this.lastBatch = batch;
    this.lastMeta = meta;
    const cv = this.cv;
    const verdict = batch.verdict, bOff = batch.off, arena = batch.arena;
    const mFlags = meta.flags, mVer = meta.ipVersion, mProto = meta.l4Proto, mSrc4 = meta.src4, mTcp = meta.tcpFlags, mL3 = meta.l3Off;
    const bl = this.blocklist;
    const blOn = bl !== null && bl.size !== 0;
    // The enforcement table's prefilter, hoisted (blocklist.ts): per IPv4
    // prefix length one multiply and one bitmap load; only a set bit goes on
    // to the table lookup (and the allow list).
    const bt = bl !== null ? bl.table : null;
    const bLens = bt !== null ? bt.lens4 : EMPTY_I32, bMasks = bt !== null ? bt.masks4 : EMPTY_I32, bBits = bt !== null ? bt.bits : EMPTY_I32;
    const bN = bLens.length, bLog = bt !== null ? bt.bitsLog2 - 5 : 0, bShift = bt !== null ? bt.bitsShift : 0;
    const key = this.key, fam = this.fam, cnt = this.cnt, used = this.used, mask = this.mask, probe = this.probe, seed = this.seed;
    const attIdx = this.attIdx, attW = this.attW, attFam = this.attFam;
    for (let i = from; i < to; i++) {
      if (verdict[i] !== V_FORWARD) continue;
      const fl = mFlags[i];
      if ((fl & F_L3) === 0) continue;
      const v6 = mVer[i] === 6;
      if (blOn) {
        let maybe = v6;
        if (!v6) {
          const a = mSrc4[i] | 0;
          for (let k = 0; k < bN; k++) {
            const h = Math.imul((a & bMasks[k]) ^ bLens[k], 0x9e3779b1) >>> bShift;
            if ((bBits[(k << bLog) + (h >>> 5)] & (1 << (h & 31))) !== 0) { maybe = true; break; }
          }
        }
        const e = !maybe ? -1 : v6 ? bl!.match6(arena, bOff[i] + mL3[i] + 8) : bl!.match4(mSrc4[i] | 0);
        if (e >= 0) {
          verdict[i] = V_DROP;
          mFlags[i] = fl & ~F_L3;
          cv[C_BLOCKED]++;
          if (this.rst && mProto[i] === PROTO_TCP) this.answerRst(batch, meta, i, fl, v6, nowSec);
          continue;
        }
        if (e === ALLOW_EXEMPT) cv[C_EXEMPT]++;
      }
      if (mProto[i] !== PROTO_TCP) continue;
      if ((fl & F_FRAGMENT) !== 0) {
        this.fragment(batch, meta, i, fl, v6, nowSec);
        continue;
      }
      if ((fl & F_TCP_FLAGS) === 0 || (mTcp[i] & (TCP_SYN | TCP_ACK)) !== TCP_SYN) continue;
      // An attempt: count it for the source address.
      let s = -1;
      let w0 = 0, w1 = 0, w2 = 0, w3 = 0;
      if (!v6) {
        w3 = mSrc4[i] | 0;
        let h = fmix32(mix32(seed, w3) ^ 4) & mask;
        for (let p = 0; p < probe; p++) {
          const f = fam[h];
          if (f === 0) {
            fam[h] = 4;
            key[(h << 2) + 3] = w3;
            used[this.usedCount++] = h;
            s = h;
            break;
          }
          if (f === 4 && key[(h << 2) + 3] === w3) {
            s = h;
            break;
          }
          h = (h + 1) & mask;
        }
      } else {
        const o = bOff[i] + mL3[i] + 8;
        w0 = readBE32(arena, o); w1 = readBE32(arena, o + 4); w2 = readBE32(arena, o + 8); w3 = readBE32(arena, o + 12);
        s = this.slot(6, w0, w1, w2, w3);
      }
      cv[C_ATTEMPTS]++;
      if (s < 0) {
        cv[C_TABLE_FULL]++;
      } else {
        cnt[s << 2]++;
      }
      const k = this.attCount;
      if (k < attIdx.length) {
        attIdx[k] = i;
        attFam[k] = v6 ? 6 : 4;
        const a = k << 2;
        attW[a] = w0; attW[a + 1] = w1; attW[a + 2] = w2; attW[a + 3] = w3;
        this.attCount = k + 1;
      }
    }
  }

  /**
   * After the flow table tracked the batch inspect() saw: marks the flows
   * the counted SYNs opened, and notes the handshakes their originators
   * completed (a segment with ACK, without SYN and RST, from the originator
   * of a marked flow; src/guard/conns.ts). One pass in packet order, two
   * typed-array reads for a packet of no marked flow.
   */
  afterTrack(flows: FlowTable): void {
    const nAtt = this.attCount;
    this.attCount = 0;
    let marks = this.marks;
    if (nAtt === 0 && (marks === null || marks.count === 0)) return;
    const batch = this.lastBatch, meta = this.lastMeta;
    if (batch === null || meta === null) return;
    if (marks === null || marks.capacity !== flows.capacity) marks = this.marks = new ConnMarks(flows.capacity);
    const flowOf = flows.flowOf, attIdx = this.attIdx, attW = this.attW, attFam = this.attFam;
    const mst = marks.state, mw = marks.w, mfam = marks.fam;
    const mFlags = meta.flags, mTcp = meta.tcpFlags, mVer = meta.ipVersion, mSrc4 = meta.src4, mL3 = meta.l3Off;
    const arena = batch.arena, bOff = batch.off;
    const n = batch.count;
    let k = 0;
    let nextAtt = nAtt > 0 ? attIdx[0] : -1;
    for (let i = 0; i < n; i++) {
      const f = flowOf[i];
      if (i === nextAtt) {
        if (f >= 0 && flows.state(f) === S_SYN_SENT) {
          const a = k << 2;
          marks.mark(f, flows.firstSeen[f], attFam[k], attW[a], attW[a + 1], attW[a + 2], attW[a + 3], this);
        }
        k++;
        nextAtt = k < nAtt ? attIdx[k] : -1;
        continue;
      }
      if (f < 0 || mst[f] !== M_OPEN) continue;
      if ((mFlags[i] & F_TCP_FLAGS) === 0 || (mTcp[i] & (TCP_SYN | TCP_ACK | TCP_RST)) !== TCP_ACK) continue;
      // From the originator (not the server's side of the same flow)?
      const o = f << 2;
      if (mVer[i] === 4) {
        if (mfam[f] !== 4 || (mSrc4[i] | 0) !== mw[o + 3]) continue;
      } else {
        const so = bOff[i] + mL3[i] + 8;
        if (mfam[f] !== 6 || readBE32(arena, so) !== mw[o] || readBE32(arena, so + 4) !== mw[o + 1] ||
          readBE32(arena, so + 8) !== mw[o + 2] || readBE32(arena, so + 12) !== mw[o + 3]) continue;
      }
      marks.complete(f, this);
    }
  }

  /** Control plane, once per interval before flush(): completions and closes from the flow table. */
  sweep(flows: FlowTable): void {
    if (this.marks === null || this.marks.capacity !== flows.capacity) return;
    this.marks.sweep(flows, flows.clock, this.synTimeoutSec, this);
  }

  /** Connections marked and not yet ended (for stats and tests). */
  get openMarks(): number {
    return this.marks ? this.marks.count : 0;
  }

  /**
   * Control plane, once per interval: the counts since the last flush as one
   * batch (deltas empty when nothing was seen), and a fresh table.
   */
  flush(node: string, seq: number, atMs: number): DeltaBatch {
    const deltas: AttemptDelta[] = [];
    const key = this.key, fam = this.fam, cnt = this.cnt, used = this.used;
    for (let k = 0; k < this.usedCount; k++) {
      const s = used[k], o = s << 2;
      deltas.push({
        addr: formatAddr(fam[s], key[o], key[o + 1], key[o + 2], key[o + 3]),
        attempts: cnt[o + N_ATT], suspicious: cnt[o + N_SUSP], completed: cnt[o + N_DONE], closed: cnt[o + N_CLOSED],
      });
      fam[s] = 0;
      cnt[o] = 0; cnt[o + 1] = 0; cnt[o + 2] = 0; cnt[o + 3] = 0;
    }
    this.usedCount = 0;
    return { node, seq, at: atMs, deltas };
  }

  // ---- ConnSink (from the sweep) ----
  addCompleted(family: number, w0: number, w1: number, w2: number, w3: number): void {
    const s = this.slot(family, w0, w1, w2, w3);
    if (s < 0) this.cv[C_TABLE_FULL]++;
    else this.cnt[(s << 2) + N_DONE]++;
  }
  addClosed(family: number, w0: number, w1: number, w2: number, w3: number): void {
    const s = this.slot(family, w0, w1, w2, w3);
    if (s < 0) this.cv[C_TABLE_FULL]++;
    else this.cnt[(s << 2) + N_CLOSED]++;
  }

  /** Slot of an address in the table (claimed if new), -1 when the probe window is full. */
  private slot(family: number, w0: number, w1: number, w2: number, w3: number): number {
    const key = this.key, fam = this.fam, mask = this.mask;
    let h = family === 4
      ? fmix32(mix32(this.seed, w3) ^ 4) & mask
      : fmix32(mix32(mix32(mix32(mix32(this.seed, w0), w1), w2), w3) ^ 16) & mask;
    for (let p = 0; p < this.probe; p++) {
      const f = fam[h];
      const o = h << 2;
      if (f === 0) {
        fam[h] = family;
        key[o] = family === 4 ? 0 : w0; key[o + 1] = family === 4 ? 0 : w1; key[o + 2] = family === 4 ? 0 : w2; key[o + 3] = w3;
        this.used[this.usedCount++] = h;
        return h;
      }
      if (f === family && key[o + 3] === w3 && (family === 4 || (key[o] === w0 && key[o + 1] === w1 && key[o + 2] === w2))) return h;
      h = (h + 1) & mask;
    }
    return -1;
  }

  private growAttempts(n: number): void {
    this.attIdx = new Int32Array(n);
    this.attW = new Int32Array(n * 4);
    this.attFam = new Uint8Array(n);
    this.attCount = 0;
  }

  // ---- fragments (rare: their own method, off the straight path) ----

  /** A TCP fragment (first or not) of packet i. */
  private fragment(batch: Batch, meta: Meta, i: number, fl: number, v6: boolean, nowSec: number): void {
    const arena = batch.arena, start = batch.off[i];
    const capEnd = start + batch.capLen[i];
    const l3 = start + meta.l3Off[i], l4 = start + meta.l4Off[i];
    const declared = meta.l4Len[i];
    let avail = capEnd - l4;
    if (avail > declared) avail = declared;
    if (avail < 0) avail = 0;
    const off = meta.fragOff[i];
    const fk = this.fk;
    if (v6) {
      for (let w = 0; w < 4; w++) { fk[w] = readBE32(arena, l3 + 8 + 4 * w); fk[4 + w] = readBE32(arena, l3 + 24 + 4 * w); }
    } else {
      fk[0] = 0; fk[1] = 0; fk[2] = 0; fk[3] = meta.src4[i] | 0;
      fk[4] = 0; fk[5] = 0; fk[6] = 0; fk[7] = meta.dst4[i] | 0;
    }
    fk[8] = meta.fragId[i] | 0;
    fk[9] = ((v6 ? 6 : 4) << 8) | PROTO_TCP;
    const family = v6 ? 6 : 4;
    if (off === 0) {
      // First fragment: its TCP header starts at l4; in IPv6 the fragmentable
      // part starts after the fragment header, which may be followed by more
      // extension headers (RFC 8200 4.5), so the TCP offset inside it is kept.
      let tcpStart = 0;
      if (v6) {
        const fe = v6FragPayloadStart(arena, l3, capEnd);
        tcpStart = fe >= 0 && l4 >= fe && l4 - fe < 256 ? l4 - fe : 0;
      }
      let syn = false;
      if (declared < TCP_FLAGS_END) {
        this.suspicious(batch, meta, i, fl, family);
      } else {
        const tf = (fl & F_TCP_FLAGS) !== 0 ? meta.tcpFlags[i] : avail >= TCP_FLAGS_END ? ((arena[l4 + 12] & 1) << 8) | arena[l4 + 13] : -1;
        if (tf >= 0 && (tf & (TCP_SYN | TCP_ACK)) === TCP_SYN) syn = true;
      }
      const e = this.train(nowSec, true);
      if (e >= 0) {
        this.fFirst[e] = 1;
        this.fStart[e] = tcpStart;
        // The fragmentable part from its start (IPv6: the extension headers after the fragment header, then TCP).
        this.write(e, 0, arena, l4 - tcpStart, tcpStart + avail, tcpStart + declared);
        if (syn) this.fCounted[e] = 1;
        else this.evaluate(e);
        this.releaseIfWhole(e);
      }
      if (syn) this.attempt(family, fk[0], fk[1], fk[2], fk[3], i);
      return;
    }
    const inWindow = off * 8 < WIN;
    // RFC 1858 3.2.2 / RFC 3128: a TCP fragment at offset 1 can only be meant
    // to rewrite the header of the first one.
    if (off === 1) this.suspicious(batch, meta, i, fl, family);
    // Fragments past the window only tell when a known train is whole.
    const e = this.train(nowSec, inWindow);
    if (e < 0) return;
    this.write(e, off * 8, arena, l4, inWindow ? avail : 0, declared);
    if ((fl & F_MF) === 0) this.fTotal[e] = off * 8 + declared;
    this.evaluate(e);
    this.releaseIfWhole(e);
  }

  /**
   * Frees a train once its data covers the datagram (the last fragment told
   * its length): a later datagram that reuses the identification (hping3
   * does, and a sender may after 2^16 datagrams) is a new train, as it is for
   * the receiver, whose reassembly ends there (RFC 791 3.2, RFC 8200 4.5).
   * Duplicates or overlaps can only make this happen sooner.
   */
  private releaseIfWhole(e: number): void {
    const total = this.fTotal[e];
    if (total < 0) return;
    // Inside the window every byte is known exactly; past it, fragment lengths are summed.
    const w = total < WIN ? total : WIN;
    const need = w >= 32 ? -1 : (1 << w) - 1;
    if ((this.fKnown[e] & need) === need && this.fSeen[e] >= total - w) {
      this.fLive[e] = 0;
      this.fragLive--;
    }
  }

  private suspicious(batch: Batch, meta: Meta, i: number, fl: number, family: number): void {
    const cv = this.cv, fk = this.fk;
    cv[C_SUSPICIOUS]++;
    const s = this.slot(family, fk[0], fk[1], fk[2], fk[3]);
    if (s < 0) cv[C_TABLE_FULL]++;
    else this.cnt[(s << 2) + N_SUSP]++;
    if (this.dropSuspicious) {
      batch.verdict[i] = V_DROP;
      meta.flags[i] = fl & ~F_L3;
      cv[C_SUSP_DROP]++;
    }
  }

  /**
   * Counts an attempt for an address. `i` is the packet that carried the SYN
   * (its flow is marked after tracking), or -1 for a SYN assembled from
   * several fragments (no single packet holds it).
   */
  private attempt(family: number, w0: number, w1: number, w2: number, w3: number, i: number): void {
    const cv = this.cv;
    cv[C_ATTEMPTS]++;
    const s = this.slot(family, w0, w1, w2, w3);
    if (s < 0) cv[C_TABLE_FULL]++;
    else this.cnt[s << 2]++;
    if (i < 0) {
      cv[C_ASSEMBLED]++;
      return;
    }
    const k = this.attCount;
    if (k < this.attIdx.length) {
      this.attIdx[k] = i;
      this.attFam[k] = family;
      const a = k << 2;
      this.attW[a] = w0; this.attW[a + 1] = w1; this.attW[a + 2] = w2; this.attW[a + 3] = w3;
      this.attCount = k + 1;
    }
  }

  /**
   * The window entry of the train in fk; when `create`, made if new (an
   * expired or, failing that, the oldest entry in the probe window is
   * replaced); -1 when absent.
   */
  private train(now: number, create: boolean): number {
    const fk = this.fk, key = this.fKey, live = this.fLive, t0 = this.fT0, mask = this.fMask;
    let h = this.seed;
    for (let w = 0; w < 10; w++) h = mix32(h, fk[w]);
    h = fmix32(h ^ 40);
    let s = h & mask;
    let free = -1, oldest = -1, oldestT = Infinity;
    for (let p = 0; p < 8; p++) {
      if (live[s] !== 0 && t0[s] + this.fragTimeout <= now) {
        live[s] = 0;
        this.fragLive--;
      }
      if (live[s] === 0) {
        if (free < 0) free = s;
      } else {
        if (this.fHash[s] === h) {
          const o = s * 10;
          let eq = true;
          for (let w = 0; w < 10 && eq; w++) eq = key[o + w] === fk[w];
          if (eq) return s;
        }
        if (t0[s] < oldestT) { oldestT = t0[s]; oldest = s; }
      }
      s = (s + 1) & mask;
    }
    if (!create) return -1;
    if (free < 0) {
      if (oldest < 0) return -1;
      this.cv[C_FRAG_FULL]++;
      free = oldest;
      this.fragLive--;
    }
    const o = free * 10;
    for (let w = 0; w < 10; w++) key[o + w] = fk[w];
    this.fHash[free] = h;
    live[free] = 1;
    this.fragLive++;
    t0[free] = now;
    this.fKnown[free] = 0;
    this.fFirst[free] = 0;
    this.fStart[free] = 0;
    this.fCounted[free] = 0;
    this.fVote[free] = 0;
    this.fSeen[free] = 0;
    this.fTotal[free] = -1;
    return free;
  }

  /**
   * Copies `len` captured bytes of fragment data into the window of entry e
   * at position `at` of the fragmentable part; `declared` is the fragment's
   * data length (what lies past the window is only counted).
   */
  private write(e: number, at: number, src: Uint8Array, from: number, len: number, declared: number): void {
    const end = at + declared;
    if (end > WIN) this.fSeen[e] += end - (at > WIN ? at : WIN);
    const bytes = this.fBytes, base = e * WIN;
    let known = this.fKnown[e];
    let overlap = false;
    for (let k = 0; k < len && at + k < WIN; k++) {
      const pos = at + k, v = src[from + k], bit = 1 << pos;
      if ((known & bit) !== 0 && bytes[base + pos] !== v) {
        overlap = true;
        // Either copy may be the one the receiver keeps: remember a SYN the old one held.
        if (pos === 13 + this.fStart[e] && (bytes[base + pos] & (TCP_SYN | TCP_ACK)) === TCP_SYN) this.fVote[e] = 1;
      }
      bytes[base + pos] = v;
      known |= bit;
    }
    this.fKnown[e] = known;
    if (overlap) this.cv[C_OVERLAP]++;
  }

  /** Counts the train's SYN once the first fragment and the flag bytes are known. */
  private evaluate(e: number): void {
    if (this.fCounted[e] !== 0 || this.fFirst[e] === 0) return;
    const st = this.fStart[e];
    if (st + TCP_FLAGS_END > WIN) return;
    const need = (1 << (st + 13)) | (1 << (st + 12));
    if ((this.fKnown[e] & need) !== need) return;
    const f = this.fBytes[e * WIN + st + 13];
    if ((f & (TCP_SYN | TCP_ACK)) !== TCP_SYN && this.fVote[e] === 0) return;
    this.fCounted[e] = 1;
    const o = e * 10, key = this.fKey;
    this.attempt(key[o + 9] >>> 8, key[o], key[o + 1], key[o + 2], key[o + 3], -1);
  }

  // ---- resets for blocked SYNs ----

  private answerRst(batch: Batch, meta: Meta, i: number, fl: number, v6: boolean, nowSec: number): void {
    const cv = this.cv;
    const tf = meta.tcpFlags[i];
    // Only a SYN gets an answer (a reset for every blocked segment would make
    // the appliance an amplifier); never a reset, never a fragment.
    if ((fl & F_TCP_FLAGS) === 0 || (fl & F_FRAGMENT) !== 0 || (tf & (TCP_SYN | TCP_ACK | TCP_RST)) !== TCP_SYN) return;
    const dt = nowSec - this.rstTime;
    if (dt > 0) {
      const tok = this.rstTokens + dt * this.rstRate;
      this.rstTokens = tok > this.rstRate ? this.rstRate : tok;
      this.rstTime = nowSec;
    }
    const out = this.rstOut;
    // raw-tx sends IPv4 only.
    if (v6 || this.rstTokens < 1 || out.count >= out.capacity || out.used + TCP_RST_BYTES > out.arena.length) {
      cv[C_RST_LIMITED]++;
      return;
    }
    const start = batch.off[i];
    const at = out.used;
    const n = encodeTcpRstFor(batch.arena, start + meta.l3Off[i], start + batch.capLen[i], out.arena, at);
    if (n === 0) return;
    this.rstTokens -= 1;
    const k = out.count;
    out.off[k] = at;
    out.capLen[k] = n;
    out.origLen[k] = n;
    out.tsSec[k] = 0;
    out.tsNsec[k] = 0;
    out.linkType[k] = 101; // LINKTYPE_RAW
    out.port[k] = 0;
    out.verdict[k] = V_FORWARD;
    out.used = at + n;
    out.count = k + 1;
    cv[C_RST]++;
  }

  /** Typed-array bytes held (address table, attempt scratch, fragment window, connection marks). */
  memoryBytes(): number {
    return this.key.byteLength + this.fam.byteLength + this.cnt.byteLength + this.used.byteLength +
      this.attIdx.byteLength + this.attW.byteLength + this.attFam.byteLength +
      this.fKey.byteLength + this.fHash.byteLength + this.fLive.byteLength + this.fT0.byteLength + this.fBytes.byteLength +
      this.fKnown.byteLength + this.fFirst.byteLength + this.fStart.byteLength + this.fCounted.byteLength + this.fVote.byteLength +
      this.fSeen.byteLength + this.fTotal.byteLength +
      (this.marks ? this.marks.memoryBytes() : 0);
  }

  stats(): Record<string, number> {
    return {
      guard_sensor_addresses: this.usedCount,
      guard_sensor_frag_trains: this.fragLive,
      guard_conn_marked: this.marks ? this.marks.count : 0,
      guard_conn_timed_out: this.marks ? this.marks.timedOut : 0,
    };
  }
}

/**
 * Where the fragmentable part of an IPv6 packet starts: just after its
 * fragment header (RFC 8200 4.5), found by walking the extension headers
 * from the fixed header at l3. -1 when there is none or the chain is cut.
 */
export function v6FragPayloadStart(buf: Uint8Array, l3: number, capEnd: number): number {
  let nh = buf[l3 + 6];
  let cur = l3 + 40;
  for (let n = 0; n < 8; n++) {
    if (nh === IPPROTO_FRAGMENT) return cur + 8 <= capEnd ? cur + 8 : -1;
    // Hop-by-hop (0), routing (43), destination options (60): length in 8-octet units minus 1 (RFC 8200 4.3).
    if ((nh !== 0 && nh !== 43 && nh !== 60) || cur + 2 > capEnd) return -1;
    const len = (buf[cur + 1] + 1) << 3;
    nh = buf[cur];
    cur += len;
  }
  return -1;
}
