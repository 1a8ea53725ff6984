// The flow table: one entry per bidirectional 5-tuple, over typed arrays
// whose size is fixed at construction (STYLE.md 5, after Katran's BPF maps and
// VPP's bihash). The hot path is trackBatch(): per packet one hash, one or two
// cache lines of index and record, a few writes; no allocation.
//
// Layout (bytes per flow at full capacity: 64 record + 24 IPv6 high words +
// 8 wheel links + 8 first seen + 16 index = 120, plus a fixed timer wheel):
// - Records are addressed by a stable flow id (0..capacity-1). The id is what
//   trackBatch stores in flowOf, so NAT and LB can keep it: a record never
//   moves while its flow lives. One record is one 64-byte cache line holding
//   everything a packet reads or writes (so a tracked packet touches one index
//   line and one record line), viewed through four typed arrays over one
//   ArrayBuffer:
//     word 0      endpoint A address (IPv4; for IPv6 its last word)
//     word 1      endpoint B address (same)
//     word 2      port A << 16 | port B
//     word 3      protocol | 0x100 for IPv6 (the family tag)
//     word 4      hash of the key
//     byte 20     state (FlowState), byte 21 flags (FlowFlag), byte 22 reply alias tag
//     f64 3       last seen (seconds, packet time)
//     f64 4-5     packets from the client, from the server
//     f64 6-7     bytes from the client, from the server
//   Cold per-flow data lives in side arrays indexed by id: the first three
//   words of each IPv6 address (`hi`, only compared after the hot words
//   matched; an IPv4 flow keeps its reply alias there, see below), the timer
//   wheel links and the first-seen time.
//   A is the lower endpoint (address, then port), so both directions of a
//   conversation give the same key; FlowFlag.CLIENT_IS_B remembers which side
//   sent the first packet (the client).
// - The index is a separate open-addressing array of (hash, id + 1) pairs with
//   twice as many slots as records (load <= 0.5 even when every record is in
//   use), linear probing bounded to `probe` slots. Deletion is by backward
//   shift, not tombstones: tombstones would lengthen probes until a rebuild,
//   and a rebuild is a full pause on the hot path; backward shift moves a few
//   8-byte index pairs and never moves a record, so flow ids stay stable. The
//   full 32-bit hash in the index entry acts as the tag: a mismatch (another
//   key in the probe window) almost never touches its record.
// - Times are seconds as Float64 (packet time: tsSec + tsNsec / 1e9), so the
//   table works on replayed captures. The table clock only moves forward
//   (the highest packet time seen), which keeps expiry sane on captures with
//   timestamps out of order.
// - Expiry: a single-level timer wheel of `wheelSlots` buckets (doubly linked
//   lists in two Int32Arrays indexed by flow id, the bucket heads after the
//   last flow so a link is never a special case) with a tick chosen so that the longest
//   timeout fits in the wheel. A flow sits in the bucket of the deadline it had
//   when it was linked; packets only refresh lastSeen (no list work per
//   packet), and when its bucket comes due a flow is either expired or
//   re-linked at its real deadline (so a busy flow costs one wheel visit per
//   timeout period). State changes that shorten the timeout (FIN, RST) re-link
//   at once. trackBatch() visits at most `expireBudget` flows per batch; a hit
//   on a flow past its deadline expires it on the spot, so results never
//   depend on how far behind the wheel is.
// - Eviction (when the probe window is full or every record is in use): the
//   first expired flow in the window is recycled (`flow_expired`); otherwise
//   the least recently seen "unassured" flow in the window (TCP not
//   ESTABLISHED, or a non-TCP flow seen in one direction only) is evicted
//   (`flow_evicted`), like Linux conntrack's early_drop. Established and
//   two-way flows are never evicted for a newcomer: the insert is refused with
//   `flow_table_full`.
// - Flood guard: above `highWater` occupancy new flows are admitted only from a
//   token bucket refilled in packet time (`floodRate` per second, `floodBurst`
//   deep); the rest are refused with `flow_flood_guard`. Below the watermark
//   there is no limit, so the guard lets go as soon as expiry brings occupancy
//   down.
// - Reply alias (IPv4; like Linux conntrack's reply tuple): a NAT rewrites a
//   flow's packets, so its replies come back on another 5-tuple. The NAT
//   gives that tuple to setReplyAlias4() once per flow; it becomes a second
//   index entry, stored as -(id + 1) so the probe tells it from a primary
//   entry only after a hash match. The server end of the alias is the
//   record's own, so only the translated end is stored, in the IPv6 high
//   words that an IPv4 flow leaves unused (hi words 0 and 1: no extra bytes),
//   with a tag byte in the record (byte 22) saying which endpoints are which.
//   A packet on the alias is counted, timed and run through the TCP machine
//   as a packet of the same flow. Removing the flow removes both entries.

import type { Batch } from '../io/batch.js';
import { MetaFlag, type Meta } from '../wire/meta.js';
import { COUNTER_DEFS, Counter, type Counters } from '../counters.js';
import { FragTable } from './defrag.js';
import { formatIpv4 } from '../wire/ipv4.js';
import { formatIpv6Words } from '../wire/ipv6.js';
import * as hash from './hash.js';

// Module-local bindings: under some loaders (tsx's CommonJS interop) an imported
// name is a getter on every use, which stops TurboFan inlining the hash on the hot path.
const mix32 = hash.mix32, fmix32 = hash.fmix32, randomSeed = hash.randomSeed, readBE32 = hash.readBE32;
// Counter indices and Meta flag bits, read once (same reason).
const C_FLOW_ALIAS_REFUSED = Counter.flow_alias_refused;
const C_FLOW_CREATED = Counter.flow_created;
const C_FLOW_EVICTED = Counter.flow_evicted;
const C_FLOW_EXPIRED = Counter.flow_expired;
const C_FLOW_FLOOD_GUARD = Counter.flow_flood_guard;
const C_FLOW_NOT_TRACKED = Counter.flow_not_tracked;
const C_FLOW_REUSED = Counter.flow_reused;
const C_FLOW_TABLE_FULL = Counter.flow_table_full;
const C_FRAG_MATCHED = Counter.frag_matched;
const C_FRAG_UNMATCHED = Counter.frag_unmatched;
const M_FRAGMENT = MetaFlag.FRAGMENT;
const M_L3 = MetaFlag.L3;
const M_L4 = MetaFlag.L4;
const M_MF = MetaFlag.MF;
const M_PORTS = MetaFlag.PORTS;
const M_TCP_FLAGS = MetaFlag.TCP_FLAGS;

/** Per-flow state; TCP states follow a reduced RFC 9293 3.3.2 machine as seen by a middlebox. */
export const FlowState = {
  FREE: 0,
  TCP_SYN_SENT: 1,
  TCP_SYN_RECV: 2, // SYN-ACK seen, or picked up mid-stream: waiting for traffic both ways
  TCP_ESTABLISHED: 3,
  TCP_FIN_WAIT: 4, // one side sent FIN
  TCP_TIME_WAIT: 5, // both sides sent FIN
  TCP_CLOSED: 6, // RST seen
  UDP: 7,
  ICMP: 8,
  OTHER: 9,
} as const;
export type FlowState = (typeof FlowState)[keyof typeof FlowState];

export const FLOW_STATE_NAMES = [
  'free', 'syn_sent', 'syn_recv', 'established', 'fin_wait', 'time_wait', 'closed', 'udp', 'icmp', 'other',
] as const;

export const FlowFlag = {
  CLIENT_IS_B: 1, // the first packet came from endpoint B
  FIN_CLIENT: 2,
  FIN_SERVER: 4,
} as const;

/** Idle timeouts in seconds. */
export interface FlowTimeouts {
  tcpSynSent: number;
  tcpSynRecv: number;
  tcpEstablished: number;
  tcpFinWait: number;
  tcpTimeWait: number;
  tcpClosed: number;
  udp: number;
  icmp: number;
  other: number;
}

export const DEFAULT_FLOW_TIMEOUTS: Readonly<FlowTimeouts> = {
  tcpSynSent: 240, // RFC 5382 REQ-5: transitory connection idle timeout >= 4 min
  tcpSynRecv: 240,
  tcpEstablished: 7440, // RFC 5382 REQ-5: established idle timeout >= 2 h 4 min
  tcpFinWait: 240,
  tcpTimeWait: 240, // RFC 5382 REQ-5 (4 min, 2 MSL)
  tcpClosed: 10, // after RST nothing legitimate follows; Linux conntrack uses 10 s
  udp: 300, // RFC 4787 REQ-5: >= 2 min, 5 min recommended
  icmp: 60, // RFC 5508 REQ-1: ICMP query mapping >= 60 s
  other: 600,
};

export interface FlowTableOptions {
  /** Flow records (power of two, 16 .. 2^24). */
  capacity: number;
  /** Longest linear probe in the index (default 16). */
  probe?: number;
  /** Hash seed (random when absent; set it for reproducible tests). */
  seed?: number;
  timeouts?: Partial<FlowTimeouts>;
  /** Occupancy (0..1) above which the flood guard rations new flows (default 0.9). */
  highWater?: number;
  /** New flows per second admitted above the watermark (default max(64, capacity / 128)). */
  floodRate?: number;
  /** Token bucket depth (default floodRate). */
  floodBurst?: number;
  /** Timer wheel buckets (power of two, default 8192). */
  wheelSlots?: number;
  /** Wheel visits per trackBatch call (default 4096). */
  expireBudget?: number;
  /** Fragment train slots (power of two; 0 turns fragment tracking off; default 4096). */
  fragCapacity?: number;
  fragTimeout?: number;
  /** Largest batch trackBatch will see (flowOf grows once if a larger one comes). */
  batchCapacity?: number;
}

/** A flow as printed by `--flows` (built off the hot path). */
export interface FlowInfo {
  id: number;
  family: 4 | 6;
  proto: number;
  state: (typeof FLOW_STATE_NAMES)[number];
  client: string;
  clientPort: number;
  server: string;
  serverPort: number;
  packetsFromClient: number;
  packetsFromServer: number;
  bytesFromClient: number;
  bytesFromServer: number;
  firstSeen: number;
  lastSeen: number;
  expiresAt: number;
}

const REC_WORDS = 16; // 64-byte record
// Record fields (word, byte and f64 indices within a record).
const W_A = 0;
const W_B = 1;
const W_PORTS = 2;
const W_PF = 3;
const W_HASH = 4;
const B_STATE = 20;
const B_FLAGS = 21;
const F_LAST = 3;
const F_PKTS = 4; // + dir
const F_BYTES = 6; // + dir
/** Int32 words per flow in `hi`: words 0-2 of address A, then words 0-2 of address B. */
const HI_WORDS = 6;
const B_ATAG = 22;
/**
 * Reply alias tag bits: an alias is set; a packet's side on the alias is the
 * opposite of its side in the record's key (its A stands for the record's B);
 * the record's server is its endpoint A; the alias's A is the translated end.
 */
const A_SET = 1;
const A_CROSS = 2;
const A_SRV_A = 4;
const A_XLAT_A = 8;
/** Tag value of a flow whose alias was refused: the NAT does not ask again for it (nor count it again). */
const A_REFUSED = 16;

const TCP_FIN = 0x01;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;
const TCP_ACK = 0x10;

const PROTO_ICMP = 1;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_ICMPV6 = 58;

const NO_TIME = -Infinity;

const S_TCP_SYN_RECV = FlowState.TCP_SYN_RECV;
const S_TCP_TIME_WAIT = FlowState.TCP_TIME_WAIT;
const S_TCP_CLOSED = FlowState.TCP_CLOSED;
const S_TCP_FIN_WAIT = FlowState.TCP_FIN_WAIT;
const CLIENT_IS_B = FlowFlag.CLIENT_IS_B;

/** Protocols whose flows need ports: without them (cut header, tiny first fragment) a packet is not tracked. */
function needsPorts(proto: number): boolean {
  // TCP, UDP, DCCP, SCTP, UDP-Lite
  return proto === 6 || proto === 17 || proto === 33 || proto === 132 || proto === 136;
}

function initialTcpState(tf: number): number {
  if (tf & TCP_RST) return FlowState.TCP_CLOSED;
  if (tf & TCP_SYN) return tf & TCP_ACK ? FlowState.TCP_SYN_RECV : FlowState.TCP_SYN_SENT;
  if (tf & TCP_FIN) return FlowState.TCP_FIN_WAIT;
  // Mid-stream pickup (capture or restart began inside a connection): it
  // becomes ESTABLISHED only once traffic is seen both ways, so a one-way ACK
  // flood only ever holds transitory, evictable entries.
  return FlowState.TCP_SYN_RECV;
}

function nonTcpState(proto: number): number {
  if (proto === PROTO_UDP) return FlowState.UDP;
  if (proto === PROTO_ICMP || proto === PROTO_ICMPV6) return FlowState.ICMP;
  return FlowState.OTHER;
}

export class FlowTable {
  readonly capacity: number;
  readonly probe: number;
  readonly seed: number;
  readonly wheelSlots: number;
  /** Seconds per wheel tick. */
  readonly tickSec: number;
  readonly expireBudget: number;
  readonly highWaterCount: number;
  readonly floodRate: number;
  readonly floodBurst: number;
  /** Idle timeout in seconds, indexed by FlowState. */
  readonly timeout: Float64Array;
  /** Live flows. */
  size = 0;
  /** Table clock: the highest packet time seen (seconds). */
  clock = NO_TIME;
  /** Per packet of the last batch: flow id, or -1 when the packet was not tracked. */
  flowOf: Int32Array;
  readonly frags: FragTable | null;

  /** Records (see the layout above), four views over one buffer. */
  readonly u32: Uint32Array;
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
  readonly f64: Float64Array;
  /**
   * Per flow: words 0-2 of IPv6 address A, then of B. For IPv4 flows (never
   * compared: the family tag differs) words 0 and 1 hold the translated
   * address and port of the reply alias, when the record's tag says there is one.
   */
  readonly hi: Int32Array;
  readonly firstSeen: Float64Array;
  /** Index: (hash, id + 1) pairs, id + 1 = 0 means empty, -(id + 1) a reply alias of flow id. */
  readonly idx: Int32Array;

  private readonly imask: number;
  private readonly wmask: number;
  /**
   * Timer wheel links: node ids 0..capacity-1 are flows, capacity + b is the
   * head (sentinel) of bucket b. next doubles as the free list link (-1 ends it).
   */
  private readonly wNext: Int32Array;
  private readonly wPrev: Int32Array;
  private cursor = 0;
  private wheelVisits = 0;
  private wheelExpired = 0;
  private freeHead = 0;
  private tokens: number;
  private tokenTime = NO_TIME;
  private cv: Float64Array;
  /** Scratch key for inserts and IPv6: 8 address words, ports, protocol | family. */
  private readonly k = new Int32Array(10);

  constructor(opts: FlowTableOptions, counters?: Counters) {
    const cap = opts.capacity;
    if (!Number.isInteger(cap) || cap < 16 || cap > 1 << 24 || (cap & (cap - 1)) !== 0) {
      throw new RangeError(`flow table capacity must be a power of two between 16 and 2^24, got ${cap}`);
    }
    this.capacity = cap;
    this.probe = Math.max(1, Math.min(opts.probe ?? 16, cap));
    this.seed = (opts.seed ?? randomSeed()) | 0;
    const to = { ...DEFAULT_FLOW_TIMEOUTS, ...(opts.timeouts ?? {}) };
    this.timeout = new Float64Array(16);
    this.timeout[FlowState.FREE] = Infinity;
    this.timeout[FlowState.TCP_SYN_SENT] = to.tcpSynSent;
    this.timeout[FlowState.TCP_SYN_RECV] = to.tcpSynRecv;
    this.timeout[FlowState.TCP_ESTABLISHED] = to.tcpEstablished;
    this.timeout[FlowState.TCP_FIN_WAIT] = to.tcpFinWait;
    this.timeout[FlowState.TCP_TIME_WAIT] = to.tcpTimeWait;
    this.timeout[FlowState.TCP_CLOSED] = to.tcpClosed;
    this.timeout[FlowState.UDP] = to.udp;
    this.timeout[FlowState.ICMP] = to.icmp;
    this.timeout[FlowState.OTHER] = to.other;
    let maxTimeout = 0;
    for (const v of Object.values(to)) {
      if (!(v > 0) || !Number.isFinite(v)) throw new RangeError(`flow timeouts must be positive and finite, got ${v}`);
      if (v > maxTimeout) maxTimeout = v;
    }
    const ws = opts.wheelSlots ?? 8192;
    if (!Number.isInteger(ws) || ws < 16 || (ws & (ws - 1)) !== 0) throw new RangeError(`wheelSlots must be a power of two >= 16, got ${ws}`);
    this.wheelSlots = ws;
    this.wmask = ws - 1;
    // The longest timeout spans less than the wheel, so a freshly linked flow
    // is never due "a lap ago" (late laps would still be correct, only slower).
    this.tickSec = Math.max(1, Math.ceil(maxTimeout / (ws - 2)));
    this.expireBudget = opts.expireBudget ?? 4096;
    this.highWaterCount = Math.floor(cap * (opts.highWater ?? 0.9));
    this.floodRate = opts.floodRate ?? Math.max(64, cap >>> 7);
    this.floodBurst = opts.floodBurst ?? this.floodRate;
    this.tokens = this.floodBurst;

    const rec = new ArrayBuffer(cap * REC_WORDS * 4);
    this.u32 = new Uint32Array(rec);
    this.i32 = new Int32Array(rec);
    this.u8 = new Uint8Array(rec);
    this.f64 = new Float64Array(rec);
    this.hi = new Int32Array(cap * HI_WORDS);
    this.firstSeen = new Float64Array(cap);
    this.idx = new Int32Array(cap * 2 * 2);
    this.imask = cap * 2 - 1;
    this.wNext = new Int32Array(cap + ws);
    this.wPrev = new Int32Array(cap + ws);
    this.flowOf = new Int32Array(opts.batchCapacity ?? 256);
    this.cv = counters ? counters.values : new Float64Array(COUNTER_DEFS.length);
    const fragCap = opts.fragCapacity ?? 4096;
    this.frags = fragCap > 0 ? new FragTable({ capacity: fragCap, timeoutSec: opts.fragTimeout ?? 30, seed: this.seed ^ 0x5bd1e995 }, this.cv) : null;
    this.clear();
  }

  /** Forgets every flow (off the hot path). */
  clear(): void {
    const cap = this.capacity, wNext = this.wNext, wPrev = this.wPrev;
    this.u32.fill(0);
    this.hi.fill(0);
    this.idx.fill(0);
    for (let f = 0; f < cap; f++) wNext[f] = f + 1 < cap ? f + 1 : -1;
    this.freeHead = 0;
    for (let b = cap; b < cap + this.wheelSlots; b++) {
      wNext[b] = b;
      wPrev[b] = b;
    }
    this.size = 0;
    this.clock = NO_TIME;
    this.cursor = 0;
    this.tokens = this.floodBurst;
    this.tokenTime = NO_TIME;
    if (this.frags) this.frags.clear();
  }

  /**
   * Tracks every packet of a parsed batch: finds or creates its flow, counts
   * it, advances TCP state, fills flowOf. Then lets the timer wheel expire a
   * bounded number of flows.
   *
   * The per-packet path is written out by hand (hash and probe inlined, typed
   * arrays in locals, rare cases in methods): TurboFan's inlining budget is
   * spent differently from run to run on a function this size, and a missed
   * inline of the hash or the probe cost a third of the throughput.
   */
  trackBatch(batch: Batch, meta: Meta, counters: Counters): void {
    const n = batch.count;
    if (this.flowOf.length < n) this.flowOf = new Int32Array(batch.capacity);
    const cv = counters.values;
    this.cv = cv;
    const frags = this.frags;
    if (frags) frags.cv = cv;
    const flowOf = this.flowOf, arena = batch.arena;
    const bOff = batch.off, bCapLen = batch.capLen, bOrigLen = batch.origLen, bSec = batch.tsSec, bNsec = batch.tsNsec;
    const mFlags = meta.flags, mProto = meta.l4Proto, mVer = meta.ipVersion, mL3 = meta.l3Off, mL4 = meta.l4Off;
    const mFragOff = meta.fragOff, mSrc4 = meta.src4, mDst4 = meta.dst4, mSport = meta.srcPort, mDport = meta.dstPort;
    const mTcpFlags = meta.tcpFlags, mIcmpType = meta.icmpType;
    const i32 = this.i32, u8 = this.u8, f64 = this.f64, to = this.timeout, idx = this.idx;
    const mask = this.imask, probe = this.probe, seed = this.seed;
    const k = this.k;
    let clock = this.clock;
    for (let i = 0; i < n; i++) {
      const fl = mFlags[i];
      if ((fl & M_L3) === 0) {
        flowOf[i] = -1;
        continue;
      }
      const t = bSec[i] + bNsec[i] * 1e-9;
      if (t > clock) {
        // (inline: a double passed to a call that is not inlined is boxed)
        if (clock === NO_TIME) this.cursor = Math.floor(t / this.tickSec) - 1;
        clock = t;
        this.clock = t;
      }
      const now = clock;
      const proto = mProto[i];
      const v6 = mVer[i] === 6;
      const wire = bOrigLen[i];

      if ((fl & M_FRAGMENT) !== 0 && mFragOff[i] !== 0) {
        // Non-first fragment: no ports here; its train tells the flow.
        let fid = -1;
        if (frags) {
          frags.now = now; // (a field, not an argument: a double passed to a call is boxed)
          fid = this.laterFragment(arena, bOff[i] + mL3[i], meta, i, fl, proto, v6, wire);
        }
        if (fid < 0) cv[C_FLOW_NOT_TRACKED]++;
        flowOf[i] = fid;
        continue;
      }

      let sp = 0, dp = 0;
      if ((fl & M_PORTS) !== 0) {
        sp = mSport[i];
        dp = mDport[i];
      } else if ((proto === PROTO_ICMP || proto === PROTO_ICMPV6) && (fl & M_L4) !== 0) {
        const ty = mIcmpType[i];
        // RFC 792 / RFC 4443 4.1-4.2: echo request and reply carry an
        // identifier that both directions share; it plays the port.
        if (ty === 8 || ty === 0 || ty === 128 || ty === 129) {
          const io = bOff[i] + mL4[i] + 4;
          if (mL4[i] + 6 <= bCapLen[i]) sp = dp = (arena[io] << 8) | arena[io + 1];
        }
      } else if (needsPorts(proto) || proto === PROTO_ICMP || proto === PROTO_ICMPV6) {
        cv[C_FLOW_NOT_TRACKED]++;
        flowOf[i] = -1;
        continue;
      }

      // Canonical key: endpoint A is the lower (address, port).
      let swap = 0;
      let h = 0;
      let f = -1;
      let a = 0, b = 0, ports = 0;
      let viaAlias = false, cross = 0;
      const pf = v6 ? proto | 0x100 : proto;
      if (!v6) {
        // Key words are int32 bit patterns (small integers in V8, never boxed);
        // the signed order is as good a canonical order as any.
        const s4 = mSrc4[i] | 0, d4 = mDst4[i] | 0;
        if (s4 < d4 || (s4 === d4 && sp <= dp)) {
          a = s4; b = d4; ports = (sp << 16) | dp;
        } else {
          a = d4; b = s4; ports = (dp << 16) | sp; swap = 1;
        }
        // hash4 and find4, inlined by hand (see above).
        let x = Math.imul(a, 0xcc9e2d51);
        x = Math.imul((x << 15) | (x >>> 17), 0x1b873593);
        h = seed ^ x;
        h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
        x = Math.imul(b, 0xcc9e2d51);
        x = Math.imul((x << 15) | (x >>> 17), 0x1b873593);
        h ^= x;
        h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
        x = Math.imul(ports, 0xcc9e2d51);
        x = Math.imul((x << 15) | (x >>> 17), 0x1b873593);
        h ^= x;
        h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
        x = Math.imul(pf, 0xcc9e2d51);
        x = Math.imul((x << 15) | (x >>> 17), 0x1b873593);
        h ^= x;
        h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
        h ^= 16;
        h ^= h >>> 16;
        h = Math.imul(h, 0x85ebca6b);
        h ^= h >>> 13;
        h = Math.imul(h, 0xc2b2ae35);
        h ^= h >>> 16;
        let s = h & mask;
        for (let p = 0; p < probe; p++) {
          const e = idx[2 * s + 1];
          if (e === 0) break;
          if (idx[2 * s] === h) {
            if (e > 0) {
              const r = (e - 1) << 4;
              if (i32[r + W_A] === a && i32[r + W_B] === b && i32[r + W_PORTS] === ports && i32[r + W_PF] === pf) {
                f = e - 1;
                break;
              }
            } else {
              // A reply alias: from here on the packet is one of flow g's,
              // its side told in the record's terms.
              const g = -e - 1;
              if (this.aliasIs(g, a, b, ports, pf)) {
                f = g;
                cross = (u8[(g << 6) + B_ATAG] & A_CROSS) >>> 1;
                swap ^= cross;
                viaAlias = true;
                break;
              }
            }
          }
          s = (s + 1) & mask;
        }
      } else {
        swap = this.key6(arena, bOff[i] + mL3[i] + 8, bOff[i] + mL3[i] + 24, sp, dp, pf);
        h = this.hash6();
        f = this.find6(h);
      }

      let created = false;
      const tf = proto === PROTO_TCP && (fl & M_TCP_FLAGS) !== 0 ? mTcpFlags[i] : 0;
      if (f >= 0) {
        const st = u8[(f << 6) + B_STATE];
        if (f64[(f << 3) + F_LAST] + to[st] <= now) {
          // Past its deadline though the wheel has not got to it yet.
          this.removeFlow(f, true);
          cv[C_FLOW_EXPIRED]++;
          f = -1;
        } else if ((tf & (TCP_SYN | TCP_ACK | TCP_RST)) === TCP_SYN && (st === S_TCP_TIME_WAIT || st === S_TCP_CLOSED)) {
          this.reopen(f, swap, now, viaAlias);
        }
      }
      if (f < 0) {
        // An expired flow hit on its alias: the key is the alias's, so is the side.
        swap ^= cross;
        if (!v6) {
          k[0] = 0; k[1] = 0; k[2] = 0; k[3] = a;
          k[4] = 0; k[5] = 0; k[6] = 0; k[7] = b;
          k[8] = ports; k[9] = pf;
        }
        const st = proto === PROTO_TCP ? initialTcpState(tf) : nonTcpState(proto);
        f = this.insertNew(h, now, swap, st, st === S_TCP_FIN_WAIT ? FlowFlag.FIN_CLIENT : 0);
        if (f < 0) {
          cv[C_FLOW_NOT_TRACKED]++;
          flowOf[i] = -1;
          continue;
        }
        created = true;
      }

      const fo = f << 3;
      const dir = swap ^ (u8[(fo << 3) + B_FLAGS] & CLIENT_IS_B);
      f64[fo + F_PKTS + dir]++;
      f64[fo + F_BYTES + dir] += wire;
      f64[fo + F_LAST] = now;
      // Only RST, SYN, FIN, or the ACK that establishes a SYN_RECV flow (traffic
      // seen both ways) can move the state: the call is skipped otherwise.
      if (!created && tf !== 0 && ((tf & (TCP_RST | TCP_SYN | TCP_FIN)) !== 0 ||
        ((tf & TCP_ACK) !== 0 && u8[(fo << 3) + B_STATE] === S_TCP_SYN_RECV && f64[fo + F_PKTS] !== 0 && f64[fo + F_PKTS + 1] !== 0))) {
        this.tcpUpdate(f, dir, tf);
      }
      flowOf[i] = f;

      if ((fl & M_FRAGMENT) !== 0 && frags) {
        frags.now = now;
        // (the record's hash, not the probed one: the packet may have come on the alias)
        this.firstFragment(arena, bOff[i] + mL3[i], meta, i, proto, v6, f, i32[(f << 4) + W_HASH], dir);
      }
    }
    this.runWheel(this.expireBudget, false);
    if (frags && this.clock !== NO_TIME) {
      frags.now = this.clock;
      frags.sweep(64);
    }
  }

  /**
   * A non-first fragment at time frags.now: the flow its train was given by
   * the first fragment, or -1 (counted by the caller).
   */
  private laterFragment(arena: Uint8Array, l3: number, meta: Meta, i: number, fl: number, proto: number, v6: boolean, wire: number): number {
    const frags = this.frags!;
    if (v6) frags.setKey6(arena, l3, proto, meta.fragId[i]);
    else frags.setKey4(meta.src4[i], meta.dst4[i], proto, meta.fragId[i]);
    const now = frags.now;
    const fid = frags.later(meta.l4Len[i], meta.fragOff[i], (fl & M_MF) !== 0, wire);
    if (fid < 0) return -1;
    if (this.u8[(fid << 6) + B_STATE] !== FlowState.FREE && this.i32[(fid << 4) + W_HASH] === frags.outFlowHash) {
      const o = (fid << 3) + frags.outDir;
      const f64 = this.f64;
      f64[o + F_PKTS]++;
      f64[o + F_BYTES] += wire;
      f64[(fid << 3) + F_LAST] = now;
      this.cv[C_FRAG_MATCHED]++;
      return fid;
    }
    // The flow ended and its id was reused since the first fragment.
    this.cv[C_FRAG_UNMATCHED]++;
    return -1;
  }

  /** A first fragment of flow f at time frags.now: remember the train for the fragments that follow, credit any that came early. */
  private firstFragment(arena: Uint8Array, l3: number, meta: Meta, i: number, proto: number, v6: boolean, f: number, h: number, dir: number): void {
    const frags = this.frags!;
    if (v6) frags.setKey6(arena, l3, proto, meta.fragId[i]);
    else frags.setKey4(meta.src4[i], meta.dst4[i], proto, meta.fragId[i]);
    frags.first(f, h, dir, meta.l4Len[i]);
    if (frags.creditPkts !== 0) {
      const o = (f << 3) + dir;
      this.f64[o + F_PKTS] += frags.creditPkts;
      this.f64[o + F_BYTES] += frags.creditBytes;
      this.cv[C_FRAG_MATCHED] += frags.creditPkts;
    }
  }

  // ---- lookups and inserts by key (tests, benchmarks, control plane) ----

  /** Flow id of an IPv4 5-tuple in either direction, or -1. */
  lookup4(src: number, dst: number, sport: number, dport: number, proto: number): number {
    src |= 0;
    dst |= 0;
    let a, b, ports;
    if (src < dst || (src === dst && sport <= dport)) {
      a = src; b = dst; ports = (sport << 16) | dport;
    } else {
      a = dst; b = src; ports = (dport << 16) | sport;
    }
    return this.find4(this.hash4(a, b, ports, proto), a, b, ports, proto);
  }

  /** Flow id of an IPv6 5-tuple (addresses as 4 big-endian u32 words) in either direction, or -1. */
  lookup6(src: ArrayLike<number>, dst: ArrayLike<number>, sport: number, dport: number, proto: number): number {
    this.key6Words(src, dst, sport, dport, proto | 0x100);
    return this.find6(this.hash6());
  }

  /**
   * Finds or creates the flow of an IPv4 5-tuple as if `src` sent its first
   * packet at `now` (TCP flows start in SYN_SENT). Returns the flow id, or -1
   * when refused (flood guard, table full; counted). Counts no packet.
   */
  insert4(src: number, dst: number, sport: number, dport: number, proto: number, now: number): number {
    if (now > this.clock) this.setClock(now);
    src |= 0;
    dst |= 0;
    let a, b, ports, swap = 0;
    if (src < dst || (src === dst && sport <= dport)) {
      a = src; b = dst; ports = (sport << 16) | dport;
    } else {
      a = dst; b = src; ports = (dport << 16) | sport; swap = 1;
    }
    const h = this.hash4(a, b, ports, proto);
    const f = this.find4(h, a, b, ports, proto);
    const k = this.k;
    k[0] = 0; k[1] = 0; k[2] = 0; k[3] = a;
    k[4] = 0; k[5] = 0; k[6] = 0; k[7] = b;
    k[8] = ports; k[9] = proto;
    return this.findOrInsertKey(f, h, swap, proto);
  }

  insert6(src: ArrayLike<number>, dst: ArrayLike<number>, sport: number, dport: number, proto: number, now: number): number {
    if (now > this.clock) this.setClock(now);
    const swap = this.key6Words(src, dst, sport, dport, proto | 0x100);
    const h = this.hash6();
    return this.findOrInsertKey(this.find6(h), h, swap, proto);
  }

  /**
   * Gives IPv4 flow `id` its reply alias (control path: the NAT calls it when
   * it translates the flow's first outbound packet): the 5-tuple the flow's
   * packets carry on the other side of the translation, `src`:`sport` being
   * the translated client and `dst`:`dport` the server, which must be one of
   * the flow's endpoints. Afterwards packets on that tuple (either way) are
   * the same flow, like the reply tuple of a Linux conntrack entry. Returns
   * false without a change when the id is not a live IPv4 flow of `proto`,
   * the server is not one of its endpoints, or the tuple is the flow's own;
   * refuses (`flow_alias_refused`) a tuple that is another live flow's key
   * or alias, or whose probe window is full. Replaces an earlier alias.
   */
  setReplyAlias4(id: number, src: number, dst: number, sport: number, dport: number, proto: number): boolean {
    if (!this.isLive(id)) return false;
    const i32 = this.i32, r = id << 4;
    if (i32[r + W_PF] !== proto) return false;
    src |= 0;
    dst |= 0;
    // Which record endpoint is the server (the untranslated destination)?
    // For ICMP queries the identifier is both "ports" and the NAT changes it
    // (RFC 5508 REQ-1), so only the address tells.
    const anyPort = proto === PROTO_ICMP;
    if (anyPort) dport = sport;
    const pa = i32[r + W_PORTS] >>> 16, pb = i32[r + W_PORTS] & 0xffff;
    let serverIsA: boolean;
    if (i32[r + W_B] === dst && (anyPort || pb === dport)) serverIsA = false;
    else if (i32[r + W_A] === dst && (anyPort || pa === dport)) serverIsA = true;
    else return false;
    let a, b, ports, aSwap = 0;
    if (src < dst || (src === dst && sport <= dport)) {
      a = src; b = dst; ports = (sport << 16) | dport;
    } else {
      a = dst; b = src; ports = (dport << 16) | sport; aSwap = 1;
    }
    if (a === i32[r + W_A] && b === i32[r + W_B] && ports === i32[r + W_PORTS]) return false;
    const h = this.hash4(a, b, ports, proto);
    let other = this.find4(h, a, b, ports, proto);
    if (other === id) {
      // Already this flow's alias.
      return true;
    }
    if (other >= 0 && this.deadline(other) <= this.clock) {
      // A stale flow on the tuple (say, an earlier connection through the same mapping).
      this.removeFlow(other, true);
      this.cv[C_FLOW_EXPIRED]++;
      other = -1;
    }
    if (other >= 0) {
      this.refuseAlias(id);
      return false;
    }
    if ((this.u8[(id << 6) + B_ATAG] & A_SET) !== 0) this.removeAlias(id);
    const idx = this.idx, mask = this.imask;
    let s = h & mask;
    for (let p = 0; p < this.probe; p++, s = (s + 1) & mask) {
      if (idx[2 * s + 1] !== 0) continue;
      idx[2 * s] = h;
      idx[2 * s + 1] = -(id + 1);
      this.hi[id * HI_WORDS] = src;
      this.hi[id * HI_WORDS + 1] = sport;
      // The alias's source (aSwap: its B) stands for the record's client
      // side, the endpoint that is not the server.
      const srcIsRecB = serverIsA;
      this.u8[(id << 6) + B_ATAG] = A_SET | ((aSwap === 1) !== srcIsRecB ? A_CROSS : 0) |
        (serverIsA ? A_SRV_A : 0) | (aSwap === 0 ? A_XLAT_A : 0);
      return true;
    }
    this.refuseAlias(id);
    return false;
  }

  private refuseAlias(id: number): void {
    this.cv[C_FLOW_ALIAS_REFUSED]++;
    if ((this.u8[(id << 6) + B_ATAG] & A_SET) === 0) this.u8[(id << 6) + B_ATAG] = A_REFUSED;
  }

  /** Whether flow `id` has a reply alias. */
  hasReplyAlias(id: number): boolean {
    return (this.u8[(id << 6) + B_ATAG] & A_SET) !== 0;
  }

  /**
   * Whether flow `id` is yet to be offered a reply alias: neither set nor
   * refused (one read; the NAT asks it per translated packet, so a refused
   * tuple is not retried, and counted, on every packet).
   */
  wantsReplyAlias(id: number): boolean {
    return this.u8[(id << 6) + B_ATAG] === 0;
  }

  /** Removes a live flow by id; returns false if the id is not live. */
  remove(id: number): boolean {
    if (!(id >= 0 && id < this.capacity) || this.u8[(id << 6) + B_STATE] === FlowState.FREE) return false;
    this.removeFlow(id, true);
    return true;
  }

  /** Advances the clock to `nowSec` and expires every flow due by then (exactly); returns how many. */
  expire(nowSec: number): number {
    if (nowSec > this.clock) this.setClock(nowSec);
    return this.runWheel(Infinity, true);
  }

  // ---- per-flow reads for later stages ----

  isLive(id: number): boolean {
    return id >= 0 && id < this.capacity && this.u8[(id << 6) + B_STATE] !== FlowState.FREE;
  }
  state(id: number): number {
    return this.u8[(id << 6) + B_STATE];
  }
  flags(id: number): number {
    return this.u8[(id << 6) + B_FLAGS];
  }
  lastSeen(id: number): number {
    return this.f64[(id << 3) + F_LAST];
  }
  /** dir 0: from the client, 1: from the server. */
  packets(id: number, dir: number): number {
    return this.f64[(id << 3) + F_PKTS + dir];
  }
  bytes(id: number, dir: number): number {
    return this.f64[(id << 3) + F_BYTES + dir];
  }
  deadline(id: number): number {
    return this.f64[(id << 3) + F_LAST] + this.timeout[this.u8[(id << 6) + B_STATE]];
  }

  /** Typed-array bytes held by the table (records, IPv6 words, wheel, first seen, index, fragment table). */
  memoryBytes(): number {
    return this.u32.byteLength + this.hi.byteLength + this.firstSeen.byteLength + this.idx.byteLength +

      this.wNext.byteLength + this.wPrev.byteLength + this.timeout.byteLength + this.flowOf.byteLength + this.k.byteLength +
      (this.frags ? this.frags.memoryBytes() : 0);
  }

  /** Live flows, in id order (allocates; off the hot path). */
  *flows(): IterableIterator<FlowInfo> {
    for (let f = 0; f < this.capacity; f++) {
      if (this.u8[(f << 6) + B_STATE] !== FlowState.FREE) yield this.info(f);
    }
  }

  forEach(cb: (flow: FlowInfo) => void): void {
    for (const fi of this.flows()) cb(fi);
  }

  info(f: number): FlowInfo {
    const u32 = this.u32, r = f << 4, hi = this.hi, ho = f * HI_WORDS;
    const v6 = (u32[r + W_PF] & 0x100) !== 0;
    const clientIsB = (this.u8[(f << 6) + B_FLAGS] & FlowFlag.CLIENT_IS_B) !== 0;
    const addrA = formatAddr(hi[ho], hi[ho + 1], hi[ho + 2], u32[r + W_A], v6);
    const addrB = formatAddr(hi[ho + 3], hi[ho + 4], hi[ho + 5], u32[r + W_B], v6);
    const portA = u32[r + W_PORTS] >>> 16, portB = u32[r + W_PORTS] & 0xffff;
    return {
      id: f,
      family: v6 ? 6 : 4,
      proto: u32[r + W_PF] & 0xff,
      state: FLOW_STATE_NAMES[this.u8[(f << 6) + B_STATE]] ?? 'free',
      client: clientIsB ? addrB : addrA,
      clientPort: clientIsB ? portB : portA,
      server: clientIsB ? addrA : addrB,
      serverPort: clientIsB ? portA : portB,
      packetsFromClient: this.packets(f, 0),
      packetsFromServer: this.packets(f, 1),
      bytesFromClient: this.bytes(f, 0),
      bytesFromServer: this.bytes(f, 1),
      firstSeen: this.firstSeen[f],
      lastSeen: this.lastSeen(f),
      expiresAt: this.deadline(f),
    };
  }

  // ---- internals ----

  private setClock(t: number): void {
    // The wheel starts at the first time the table sees.
    if (this.clock === NO_TIME) this.cursor = Math.floor(t / this.tickSec) - 1;
    this.clock = t;
  }

  /** MurmurHash3 of the canonical IPv4 key (trackBatch has a hand-inlined copy). */
  private hash4(a: number, b: number, ports: number, pf: number): number {
    let h = this.seed;
    h = mix32(h, a);
    h = mix32(h, b);
    h = mix32(h, ports);
    h = mix32(h, pf);
    return fmix32(h ^ 16);
  }

  private hash6(): number {
    const k = this.k;
    let h = this.seed;
    for (let i = 0; i < 10; i++) h = mix32(h, k[i]);
    return fmix32(h ^ 40);
  }

  /** Probe for an IPv4 key (trackBatch has a hand-inlined copy). */
  private find4(h: number, a: number, b: number, ports: number, pf: number): number {
    const idx = this.idx, i32 = this.i32, mask = this.imask, probe = this.probe;
    let s = h & mask;
    for (let p = 0; p < probe; p++) {
      const e = idx[2 * s + 1];
      if (e === 0) return -1;
      if (idx[2 * s] === h) {
        if (e > 0) {
          const r = (e - 1) << 4;
          if (i32[r + W_A] === a && i32[r + W_B] === b && i32[r + W_PORTS] === ports && i32[r + W_PF] === pf) return e - 1;
        } else {
          if (this.aliasIs(-e - 1, a, b, ports, pf)) return -e - 1;
        }
      }
      s = (s + 1) & mask;
    }
    return -1;
  }

  private find6(h: number): number {
    const idx = this.idx, i32 = this.i32, hi = this.hi, k = this.k, mask = this.imask;
    let s = h & mask;
    for (let p = 0; p < this.probe; p++) {
      const e = idx[2 * s + 1];
      if (e === 0) return -1;
      if (idx[2 * s] === h && e > 0) { // (aliases are IPv4 only)
        const r = (e - 1) << 4, o = (e - 1) * HI_WORDS;
        if (i32[r + W_A] === k[3] && i32[r + W_B] === k[7] && i32[r + W_PORTS] === k[8] && i32[r + W_PF] === k[9] &&
          hi[o] === k[0] && hi[o + 1] === k[1] && hi[o + 2] === k[2] &&
          hi[o + 3] === k[4] && hi[o + 4] === k[5] && hi[o + 5] === k[6]) return e - 1;
      }
      s = (s + 1) & mask;
    }
    return -1;
  }

  /** Fills k with the canonical IPv6 key read from buf; returns 1 when the source is endpoint B. */
  private key6(buf: Uint8Array, so: number, dso: number, sp: number, dp: number, pf: number): number {
    const k = this.k;
    // Compare word by word; the first differing word decides the order.
    let order = 0;
    for (let w = 0; w < 4 && order === 0; w++) {
      const x = readBE32(buf, so + 4 * w), y = readBE32(buf, dso + 4 * w);
      order = x < y ? -1 : x > y ? 1 : 0;
    }
    if (order === 0) order = sp <= dp ? -1 : 1;
    const swap = order > 0 ? 1 : 0;
    const ao = swap ? dso : so, bo = swap ? so : dso;
    for (let w = 0; w < 4; w++) {
      k[w] = readBE32(buf, ao + 4 * w);
      k[4 + w] = readBE32(buf, bo + 4 * w);
    }
    k[8] = swap ? (dp << 16) | sp : (sp << 16) | dp;
    k[9] = pf;
    return swap;
  }

  private key6Words(src: ArrayLike<number>, dst: ArrayLike<number>, sp: number, dp: number, pf: number): number {
    const k = this.k;
    let order = 0;
    for (let w = 0; w < 4 && order === 0; w++) {
      const x = src[w] | 0, y = dst[w] | 0;
      order = x < y ? -1 : x > y ? 1 : 0;
    }
    if (order === 0) order = sp <= dp ? -1 : 1;
    const swap = order > 0 ? 1 : 0;
    for (let w = 0; w < 4; w++) {
      k[w] = swap ? dst[w] : src[w];
      k[4 + w] = swap ? src[w] : dst[w];
    }
    k[8] = swap ? (dp << 16) | sp : (sp << 16) | dp;
    k[9] = pf;
    return swap;
  }

  private findOrInsertKey(f: number, h: number, swap: number, proto: number): number {
    const now = this.clock;
    if (f >= 0 && this.deadline(f) <= now) {
      this.removeFlow(f, true);
      this.cv[C_FLOW_EXPIRED]++;
      f = -1;
    }
    if (f >= 0) return f;
    const st = proto === PROTO_TCP ? FlowState.TCP_SYN_SENT : nonTcpState(proto);
    return this.insertNew(h, now, swap, st, 0);
  }

  /** Flood guard: a token bucket in packet time, consulted only above the watermark. */
  private admit(now: number): boolean {
    if (this.size < this.highWaterCount) return true;
    const dt = now - this.tokenTime;
    if (dt > 0 && this.floodRate > 0) {
      const tok = this.tokens + dt * this.floodRate;
      this.tokens = tok > this.floodBurst ? this.floodBurst : tok;
    }
    if (dt > 0 || this.tokenTime === NO_TIME) this.tokenTime = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  private evictable(f: number, st: number): boolean {
    if (st <= FlowState.TCP_CLOSED) return st !== FlowState.TCP_ESTABLISHED;
    return this.f64[(f << 3) + F_PKTS] === 0 || this.f64[(f << 3) + F_PKTS + 1] === 0;
  }

  /** Inserts the key in k (hash h, not present). Returns the new flow id or -1 (counted). */
  private insertNew(h: number, now: number, swap: number, state: number, flags: number): number {
    const cv = this.cv;
    if (!this.admit(now)) {
      cv[C_FLOW_FLOOD_GUARD]++;
      return -1;
    }
    const idx = this.idx, mask = this.imask, probe = this.probe;
    let s = h & mask;
    let empty = -1;
    let emptyAt = probe;
    for (let p = 0; p < probe; p++) {
      if (idx[2 * s + 1] === 0) {
        empty = s;
        emptyAt = p;
        break;
      }
      s = (s + 1) & mask;
    }
    if (empty >= 0 && this.freeHead >= 0) {
      const f = this.freeHead;
      this.freeHead = this.wNext[f];
      idx[2 * empty] = h;
      idx[2 * empty + 1] = f + 1;
      this.size++;
      this.initFlow(f, h, now, swap, state, flags);
      return f;
    }
    // No room: pick a victim among the flows in the probe window.
    const f64 = this.f64, u8 = this.u8, to = this.timeout;
    let vs = -1, vAt = -1, vf = -1, vLast = Infinity, vExpired = false;
    s = h & mask;
    for (let p = 0; p < probe; p++) {
      const e = idx[2 * s + 1];
      if (e !== 0) {
        const f = e > 0 ? e - 1 : -e - 1;
        const last = f64[(f << 3) + F_LAST];
        const st = u8[(f << 6) + B_STATE];
        if (last + to[st] <= now) {
          vs = s; vAt = p; vf = f; vExpired = true;
          break;
        }
        if (last < vLast && this.evictable(f, st)) {
          vs = s; vAt = p; vf = f; vLast = last;
        }
      }
      s = (s + 1) & mask;
    }
    if (vs < 0) {
      cv[C_FLOW_TABLE_FULL]++;
      return -1;
    }
    cv[vExpired ? C_FLOW_EXPIRED : C_FLOW_EVICTED]++;
    if ((this.u8[(vf << 6) + B_ATAG] & A_SET) !== 0) {
      // The victim holds two index entries (or was seen through its alias):
      // delete both, then look again for a hole in the window, which the two
      // backward shifts may have filled or opened anywhere.
      this.removeFlow(vf, true);
      s = h & mask;
      for (let p = 0; p < probe; p++, s = (s + 1) & mask) {
        if (idx[2 * s + 1] === 0) {
          const f = this.freeHead;
          this.freeHead = this.wNext[f];
          idx[2 * s] = h;
          idx[2 * s + 1] = f + 1;
          this.size++;
          this.initFlow(f, h, now, swap, state, flags);
          return f;
        }
      }
      cv[C_FLOW_TABLE_FULL]++;
      return -1;
    }
    if (vAt < emptyAt) {
      // The victim sits before any hole in the window: the newcomer takes its
      // index slot and its record in place (no hole opens between the new
      // key's home and its slot, so every other key stays findable).
      this.unlink(vf);
      idx[2 * vs] = h;
      this.initFlow(vf, h, now, swap, state, flags);
      return vf;
    }
    // The victim is past the hole: delete it (its backward shift only touches
    // slots after it) and put the newcomer in the hole with the freed record.
    this.removeFlow(vf, true);
    const f = this.freeHead;
    this.freeHead = this.wNext[f];
    idx[2 * empty] = h;
    idx[2 * empty + 1] = f + 1;
    this.size++;
    this.initFlow(f, h, now, swap, state, flags);
    return f;
  }

  private initFlow(f: number, h: number, now: number, swap: number, state: number, flags: number): void {
    const i32 = this.i32, hi = this.hi, k = this.k, r = f << 4, o = f * HI_WORDS;
    i32[r + W_A] = k[3];
    i32[r + W_B] = k[7];
    i32[r + W_PORTS] = k[8];
    i32[r + W_PF] = k[9];
    i32[r + W_HASH] = h;
    hi[o] = k[0]; hi[o + 1] = k[1]; hi[o + 2] = k[2];
    hi[o + 3] = k[4]; hi[o + 4] = k[5]; hi[o + 5] = k[6];
    this.u8[(f << 6) + B_STATE] = state;
    this.u8[(f << 6) + B_FLAGS] = (swap ? FlowFlag.CLIENT_IS_B : 0) | flags;
    this.u8[(f << 6) + B_ATAG] = 0;
    const f64 = this.f64, fo = f << 3;
    f64[fo + F_LAST] = now;
    f64[fo + F_PKTS] = 0; f64[fo + F_PKTS + 1] = 0; f64[fo + F_BYTES] = 0; f64[fo + F_BYTES + 1] = 0;
    this.firstSeen[f] = now;
    this.link(f, Math.ceil((now + this.timeout[state]) / this.tickSec));
    this.cv[C_FLOW_CREATED]++;
  }

  /** A new SYN on a closed 5-tuple starts a new connection in the same record (RFC 9293 3.6.1 TIME-WAIT reuse). */
  private reopen(f: number, swap: number, now: number, viaAlias: boolean): void {
    // A new connection on the original tuple may get another NAT mapping:
    // drop the alias, the NAT sets it again when it translates this SYN.
    // (On the alias itself the mapping is the one the packet came through.)
    if (!viaAlias) {
      if ((this.u8[(f << 6) + B_ATAG] & A_SET) !== 0) this.removeAlias(f);
      else this.u8[(f << 6) + B_ATAG] = 0;
    }
    this.u8[(f << 6) + B_STATE] = FlowState.TCP_SYN_SENT;
    this.u8[(f << 6) + B_FLAGS] = swap ? FlowFlag.CLIENT_IS_B : 0;
    this.firstSeen[f] = now;
    const f64 = this.f64, fo = f << 3;
    f64[fo + F_PKTS] = 0; f64[fo + F_PKTS + 1] = 0; f64[fo + F_BYTES] = 0; f64[fo + F_BYTES + 1] = 0;
    this.unlink(f);
    this.link(f, Math.ceil((now + this.timeout[FlowState.TCP_SYN_SENT]) / this.tickSec));
    this.cv[C_FLOW_REUSED]++;
  }

  private tcpUpdate(f: number, dir: number, tf: number): void {
    const u8 = this.u8, sb = (f << 6) + B_STATE;
    const s = u8[sb];
    let ns = s;
    if (tf & TCP_RST) {
      ns = FlowState.TCP_CLOSED;
    } else if (tf & TCP_SYN) {
      // SYN-ACK from the server answers the client's SYN.
      if ((tf & TCP_ACK) !== 0 && s === FlowState.TCP_SYN_SENT && dir === 1) ns = FlowState.TCP_SYN_RECV;
    } else if (tf & TCP_FIN) {
      if (s !== FlowState.TCP_CLOSED) {
        const fb = (u8[sb + 1] |= dir ? FlowFlag.FIN_SERVER : FlowFlag.FIN_CLIENT);
        ns = (fb & (FlowFlag.FIN_CLIENT | FlowFlag.FIN_SERVER)) === (FlowFlag.FIN_CLIENT | FlowFlag.FIN_SERVER)
          ? FlowState.TCP_TIME_WAIT : FlowState.TCP_FIN_WAIT;
      }
    } else if ((tf & TCP_ACK) !== 0 && s === FlowState.TCP_SYN_RECV &&
      this.f64[(f << 3) + F_PKTS] !== 0 && this.f64[(f << 3) + F_PKTS + 1] !== 0) {
      ns = FlowState.TCP_ESTABLISHED;
    }
    if (ns !== s) {
      u8[sb] = ns;
      // A shorter timeout must not wait in the bucket of the longer one.
      if (this.timeout[ns] < this.timeout[s]) {
        this.unlink(f);
        this.link(f, Math.ceil((this.clock + this.timeout[ns]) / this.tickSec));
      }
    }
  }

  /** Deletes flow f: backward-shifts its index slot, optionally unlinks it from the wheel, frees the record. */
  private removeFlow(f: number, unlinkWheel: boolean): void {
    if ((this.u8[(f << 6) + B_ATAG] & A_SET) !== 0) this.removeAlias(f);
    this.removeEntry(this.i32[(f << 4) + W_HASH], f + 1);
    if (unlinkWheel) this.unlink(f);
    this.u8[(f << 6) + B_STATE] = FlowState.FREE;
    this.wNext[f] = this.freeHead;
    this.freeHead = f;
    this.size--;
  }

  private removeAlias(f: number): void {
    // (the alias's hash is recomputed: removal is rare, 4 bytes per flow are not)
    const k = this.k;
    this.aliasKey(f);
    this.removeEntry(this.hash4(k[3], k[7], k[8], k[9]), -(f + 1));
    this.u8[(f << 6) + B_ATAG] = 0;
    this.hi[f * HI_WORDS] = 0;
    this.hi[f * HI_WORDS + 1] = 0;
  }

  /** Fills k[3], k[7], k[8], k[9] with the canonical key of flow g's reply alias. */
  private aliasKey(g: number): void {
    const i32 = this.i32, r = g << 4, tag = this.u8[(g << 6) + B_ATAG], k = this.k;
    const pf = i32[r + W_PF], xa = this.hi[g * HI_WORDS], xp = this.hi[g * HI_WORDS + 1];
    const sa = (tag & A_SRV_A) !== 0;
    const srv = sa ? i32[r + W_A] : i32[r + W_B];
    // ICMP queries: the translated identifier is both "ports" of the alias.
    const sp = pf === PROTO_ICMP ? xp : sa ? i32[r + W_PORTS] >>> 16 : i32[r + W_PORTS] & 0xffff;
    if ((tag & A_XLAT_A) !== 0) {
      k[3] = xa; k[7] = srv; k[8] = (xp << 16) | sp;
    } else {
      k[3] = srv; k[7] = xa; k[8] = (sp << 16) | xp;
    }
    k[9] = pf;
  }

  /** Whether the canonical IPv4 key (a, b, ports, pf) is flow g's reply alias (rebuilt from the record and its hi words). */
  private aliasIs(g: number, a: number, b: number, ports: number, pf: number): boolean {
    const i32 = this.i32, r = g << 4, tag = this.u8[(g << 6) + B_ATAG];
    if (i32[r + W_PF] !== pf) return false;
    const xa = this.hi[g * HI_WORDS], xp = this.hi[g * HI_WORDS + 1];
    const sa = (tag & A_SRV_A) !== 0;
    const srv = sa ? i32[r + W_A] : i32[r + W_B];
    const sp = pf === PROTO_ICMP ? xp : sa ? i32[r + W_PORTS] >>> 16 : i32[r + W_PORTS] & 0xffff;
    if ((tag & A_XLAT_A) !== 0) return a === xa && b === srv && ports === ((xp << 16) | sp);
    return a === srv && b === xa && ports === ((sp << 16) | xp);
  }

  /** Deletes the index entry holding `val` in the probe window of hash h, by backward shift. */
  private removeEntry(h: number, val: number): void {
    const idx = this.idx, mask = this.imask;
    let s = h & mask;
    for (let p = 0; p < this.probe && idx[2 * s + 1] !== val; p++) s = (s + 1) & mask;
    if (idx[2 * s + 1] === val) {
      // Backward shift (Knuth 6.4 algorithm R).
      let hole = s, j = s;
      for (;;) {
        j = (j + 1) & mask;
        const e = idx[2 * j + 1];
        if (e === 0) break;
        const home = idx[2 * j] & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
          idx[2 * hole] = idx[2 * j];
          idx[2 * hole + 1] = e;
          hole = j;
        }
      }
      idx[2 * hole] = 0;
      idx[2 * hole + 1] = 0;
    }
  }

  // Timer wheel lists: node f < capacity is a flow, capacity + b the head of bucket b.
  private link(f: number, tick: number): void {
    const head = this.capacity + (tick & this.wmask);
    const wNext = this.wNext, wPrev = this.wPrev;
    const p = wPrev[head];
    wNext[p] = f;
    wPrev[f] = p;
    wNext[f] = head;
    wPrev[head] = f;
  }

  private unlink(f: number): void {
    const wNext = this.wNext, wPrev = this.wPrev;
    const p = wPrev[f], n = wNext[f];
    wNext[p] = n;
    wPrev[n] = p;
  }

  /**
   * Processes due wheel buckets up to the clock, visiting at most `budget`
   * flows; stops mid-bucket when the budget runs out and resumes there.
   * `exact` also sweeps the bucket of the tick in progress (without moving
   * past it), so every flow due by the clock goes, not only those due by the
   * last whole tick; trackBatch leaves that to the next tick (and to the
   * check on hit) so that a bucket is not rescanned on every batch.
   */
  private runWheel(budget: number, exact: boolean): number {
    if (this.clock === NO_TIME) return 0;
    const target = Math.floor(this.clock / this.tickSec);
    // After a long gap one lap visits every bucket once; that is enough.
    if (target - this.cursor > this.wheelSlots) this.cursor = target - this.wheelSlots;
    this.wheelVisits = 0;
    this.wheelExpired = 0;
    while (this.cursor < target) {
      if (!this.sweepBucket((this.cursor + 1) & this.wmask, budget)) return this.wheelExpired;
      this.cursor++;
    }
    if (exact) this.sweepBucket((this.cursor + 1) & this.wmask, budget);
    return this.wheelExpired;
  }

  /** Visits the flows of bucket b: expires those due, re-links the rest at their deadline. False when out of budget. */
  private sweepBucket(b: number, budget: number): boolean {
    const tick = this.tickSec, clock = this.clock, to = this.timeout;
    const f64 = this.f64, u8 = this.u8, wNext = this.wNext, wPrev = this.wPrev, cv = this.cv;
    const s = this.capacity + b;
    let cur = wNext[s];
    if (cur === s) return true;
    // Detach the bucket: flows re-linked into it during this pass (due a lap
    // later, or later in the tick in progress) are not visited again now.
    const last = wPrev[s];
    wNext[s] = s;
    wPrev[s] = s;
    while (cur !== s) {
      if (this.wheelVisits >= budget) {
        // Put the unvisited rest back at the head of the bucket.
        const head = wNext[s];
        wNext[s] = cur;
        wPrev[cur] = s;
        wNext[last] = head;
        wPrev[head] = last;
        return false;
      }
      this.wheelVisits++;
      const nxt = wNext[cur];
      const deadline = f64[(cur << 3) + F_LAST] + to[u8[(cur << 6) + B_STATE]];
      if (deadline <= clock) {
        this.removeFlow(cur, false);
        cv[C_FLOW_EXPIRED]++;
        this.wheelExpired++;
      } else {
        this.link(cur, Math.ceil(deadline / tick));
      }
      cur = nxt;
    }
    return true;
  }

  /** Wheel consistency check for tests: every live flow is linked exactly once. Off the hot path. */
  checkWheel(): boolean {
    const cap = this.capacity;
    let linked = 0;
    for (let b = 0; b < this.wheelSlots; b++) {
      const s = cap + b;
      let prev = s;
      for (let r = this.wNext[s]; r !== s; r = this.wNext[r]) {
        if (r < 0 || r >= cap || this.u8[(r << 6) + B_STATE] === FlowState.FREE) return false;
        if (this.wPrev[r] !== prev) return false;
        prev = r;
        if (++linked > this.size) return false;
      }
      if (this.wPrev[s] !== prev) return false;
    }
    return linked === this.size;
  }
}

/** Dotted quad (IPv4: w3 only) or RFC 5952 text (IPv6: big-endian words w0..w3). */
function formatAddr(w0: number, w1: number, w2: number, w3: number, v6: boolean): string {
  return v6 ? formatIpv6Words(w0, w1, w2, w3) : formatIpv4(w3 >>> 0);
}
