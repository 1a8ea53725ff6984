// NAPT (NAT44): inside networks -> outside pool addresses, the library core.
// It sees a Batch and its Meta (filled by parseBatch), never a socket
// (DESIGN.md "nat/"). Per packet: a hash lookup or two in typed arrays, a
// few writes, checksums updated incrementally (RFC 1624 eqn 3) with deltas
// precomputed when the mapping was made (STYLE.md 6, VPP NAT44-ED); no
// allocation (STYLE.md 3).
//
// Direction: translateBatch takes `dirOf`, one byte per packet, 0 = the
// packet came from the inside, 1 = from the outside. When dirOf is null the
// ingress port decides: batch.port 0 = inside, anything else = outside.
// After the call `egress[i]` says where a FORWARD packet goes (0 inside,
// 1 outside: a hairpinned packet goes back inside), `mappingOf[i]` its
// mapping id, and Meta's src4/dst4/srcPort/dstPort hold the translated
// tuple. Verdicts: FORWARD, DROP (one counter per reason), HOLD (the NAT
// copied the packet: a held SYN or an early fragment).
//
// State:
// - Mapping (RFC 4787 REQ-1, RFC 5382 REQ-1, RFC 5508 REQ-1a: endpoint-
//   independent): (inside addr, inside port | ICMP id, protocol) ->
//   (outside addr, outside port). Two indices over one record array: by the
//   inside key (outbound) and by the outside key (inbound). Fixed capacity.
// - Session: (mapping, remote addr, remote port) with its own idle deadline
//   and, for TCP, a state machine (RFC 7857 2.1: SYN seen both ways ->
//   established; FIN both ways or RST -> transitory). A mapping lives as long
//   as one of its sessions does; then its port goes to quarantine. Sessions
//   of a mapping form a list, which serves address-dependent filtering
//   (RFC 4787 REQ-8: admit a remote this mapping has sent to) and listing.
// - Subscriber (inside address): mapping count for the per-subscriber limit
//   (RFC 6888 REQ-4). Paired pooling (RFC 4787 REQ-2, RFC 6888 REQ-2,
//   RFC 7857 2.4): the pool address is a hash of the inside address, so every
//   mapping of a subscriber, for every protocol, uses the same outside
//   address, across restarts too (like Linux's NF_NAT_RANGE_PERSISTENT).
//
// Numbers: addresses, keys and hashes are int32 on the hot path (Int32Array
// records, `meta.src4[i] | 0`): a uint32 >= 2^31 or a fractional time passed
// to a function that is not inlined is boxed into a heap number, which is an
// allocation per packet. The batch time is a field (`now`) for that reason.
// Records are 64 bytes (one cache line) per mapping and per session.
//
// Expiry: a session hit past its deadline is expired on the spot (results
// never depend on how far behind the sweep is); otherwise an amortised sweep
// visits `sweepBudget` session records per batch. Time is the `nowSec` of
// each batch (packet time when replaying captures); the clock only moves
// forward.
//
// Packets the NAT originates (ICMP errors) and held fragments it releases
// are appended to the optional `out` batch: originated packets as raw IPv4
// (linkType RAW), released fragments with their original link header;
// out.port[k] is the side to send them to (0 inside, 1 outside).

import { Address4 } from 'ip-address';
import { Verdict, type Batch } from '../io/batch.js';
import { LinkType, Meta, MetaFlag } from '../wire/meta.js';
import { ParseStatus } from '../wire/status.js';
import { parseNetwork } from '../wire/parse.js';
import * as cks from '../wire/checksum.js';
import { formatIpv4 } from '../wire/ipv4.js';
import * as hash from '../flow/hash.js';
import { NatCounter, NatCounters, NAT_COUNTER_DEFS } from './counters.js';
import * as pa from './port-allocator.js';
import { NatProto, NAT_PROTO_NAMES, PortAllocator } from './port-allocator.js';
import { IdIndex } from './id-index.js';
import { NatFragTable, TrainState } from './frag-track.js';
import {
  IcmpErrorType, UnreachCode, encodeIcmpError, icmpErrorLength, icmpQuoteLength, mayAnswerWithIcmpError,
} from './icmp-builder.js';

// Module-local bindings (see src/flow/flow-table.ts: keeps TurboFan inlining under tsx).

const mix32 = hash.mix32, fmix32 = hash.fmix32, onesSum = cks.onesSum, natProtoOf = pa.natProtoOf;
const fold = cks.foldSmall, addrDelta = cks.delta32, wordDelta = cks.delta16;
const applyDelta = cks.applyDelta, applyDeltaUdp = cks.applyDeltaUdp;

export type Filtering = 'endpoint-independent' | 'address-dependent' | 'address-and-port-dependent';

/** NAPT configuration: plain data (the YAML/schema layer maps onto it). */
export interface NaptConfig {
  /** Inside networks (CIDR). Outbound packets from other sources are dropped. */
  insidePrefixes: string[];
  /**
   * Outside addresses: a list of addresses, or one prefix. For a prefix
   * shorter than /31 the network and broadcast addresses are left out.
   */
  pool: string[] | string;
  /** RFC 4787 REQ-8 / RFC 5382 REQ-3 (default 'address-dependent'). */
  filtering?: Filtering;
  /** Outside ports of the 1024-65535 class (default 1024..65535). */
  portRange?: { min: number; max: number };
  /** RFC 4787 REQ-3: keep the 0-1023 / 1024-65535 class (default true). */
  preserveRangeClass?: boolean;
  /** RFC 4787 REQ-4: keep port parity (default true). */
  preserveParity?: boolean;
  /** Try to keep the inside port (default false: RFC 6056 / RFC 7857 2.9 randomisation). */
  preservePort?: boolean;
  /** Random probes before the bounded bitmap scan (default 16). */
  portProbes?: number;
  /** RFC 6888 REQ-8: seconds before a freed port is reused (default 120). */
  quarantineSec?: number;
  /** RFC 6888 REQ-4: mappings per inside address (default 4096). */
  maxMappingsPerSubscriber?: number;
  /** RFC 6888 REQ-5: sessions (remote endpoints) per mapping (default 64). */
  maxSessionsPerMapping?: number;
  /** Idle timeouts in seconds; the RFC minimums are enforced. */
  timeouts?: { udp?: number; tcpEstablished?: number; tcpTransitory?: number; icmp?: number };
  /** RFC 4787 REQ-6a: inbound packets refresh the session (default true; outbound always does). */
  inboundRefresh?: boolean;
  /** RFC 5382 REQ-4: hold unsolicited inbound SYNs for 6 s instead of dropping them (default false). */
  holdUnsolicitedSyn?: boolean;
  /** RFC 5382 REQ-4: answer a held SYN whose window ended with ICMP port unreachable (default true; false = REQ-4a policy). */
  unsolicitedSynIcmp?: boolean;
  /** Seconds a SYN is held (default 6, the RFC's minimum). */
  synHoldSec?: number;
  /** Held SYNs at once (default 64). */
  synHoldSlots?: number;
  /** Largest IP packet sent outside; larger ones with DF get ICMP fragmentation needed (default 1500). */
  outsideMtu?: number;
  /** Act as a router: decrement TTL, drop and answer TTL <= 1 (default true). */
  decrementTtl?: boolean;
  /** Source of ICMP errors sent to inside hosts (default: the first pool address). */
  insideAddress?: string;
  /** RFC 6888 REQ-11b: answer a refused mapping with ICMP host unreachable (default true). */
  icmpOnResourceLimit?: boolean;
  /** RFC 1812 4.3.2.8: originated ICMP errors per second and burst (default 100 / 50). */
  icmpRate?: { perSec: number; burst: number };
  /** Mapping records (power of two, default 65536). */
  capacity?: number;
  /** Session records (power of two, default 2 * capacity). */
  sessionCapacity?: number;
  /** Longest index probe (default 16). */
  probe?: number;
  /** Session records the sweep visits per batch (default 256). */
  sweepBudget?: number;
  /** Fragment tracking bounds (RFC 4787 REQ-14). */
  fragments?: { trains?: number; holdSlots?: number; slotBytes?: number; maxHeldPerTrain?: number; timeoutSec?: number };
  /** Hash and port-randomisation seed (random when absent; set it in tests). */
  seed?: number;
}

/** One mapping as `portcullis nat list` prints it (built off the hot path). */
export interface NatMappingInfo {
  id: number;
  proto: (typeof NAT_PROTO_NAMES)[number];
  insideAddress: string;
  insidePort: number;
  outsideAddress: string;
  outsidePort: number;
  /** TCP: 'established' when any session is, else 'transitory'; UDP/ICMP: 'active'. */
  state: string;
  createdAt: number;
  /** Seconds since the last packet of any session. */
  idle: number;
  /** When the mapping expires if nothing more is seen (its latest session deadline). */
  expiresAt: number;
  remotes: NatRemoteInfo[];
}
export interface NatRemoteInfo {
  address: string;
  port: number;
  state: string;
  /** The session was opened by an outbound (inside-initiated) packet. */
  outbound: boolean;
  packetsOut: number;
  packetsIn: number;
  idle: number;
  expiresAt: number;
}

// RFC 4787 REQ-5: >= 120 s, 300 s recommended; RFC 5382 REQ-5: >= 2 h 4 min
// established, >= 4 min transitory; RFC 5508 REQ-1b: ICMP query >= 60 s.
export const DEFAULT_NAT_TIMEOUTS = { udp: 300, tcpEstablished: 7440, tcpTransitory: 240, icmp: 60 } as const;
const MIN_TIMEOUTS = { udp: 120, tcpEstablished: 7440, tcpTransitory: 240, icmp: 60 } as const;

// TCP session state bits (RFC 7857 2.1 / RFC 5382 section 5 state tracking).
const T_SYN_OUT = 1, T_SYN_IN = 2, T_FIN_OUT = 4, T_FIN_IN = 8, T_RST = 16;
const TF_FIN = 0x01, TF_SYN = 0x02, TF_RST = 0x04, TF_ACK = 0x10;

/**
 * The flow table as the NAT sees it (src/flow/flow-table.ts FlowTable fits):
 * its per-packet flow ids from the batch just tracked, and its reply alias,
 * so that a translated connection's replies land on the flow of its
 * outbound packets (as a conntrack entry's reply tuple does).
 */
export interface FlowAliasSink {
  readonly flowOf: Int32Array;
  wantsReplyAlias(id: number): boolean;
  setReplyAlias4(id: number, src: number, dst: number, sport: number, dport: number, proto: number): boolean;
}

/** Sides of the NAT: where a packet came from (dirOf) and where it goes (egress, out.port). */
export const NatSide = { INSIDE: 0, OUTSIDE: 1 } as const;
const SIDE_INSIDE = NatSide.INSIDE, SIDE_OUTSIDE = NatSide.OUTSIDE;

// Mapping record: 16 int32 words (64 bytes, one cache line) at id << 4. The
// checksum deltas are folded RFC 1624 sums: IP header (address) and transport
// (address + port; ICMP: identifier only, no pseudo-header), out and in.
const M_IN = 0, M_OUT = 1, M_INPORT = 2, M_OUTPORT = 3, M_PROTO = 4, M_LIVE = 5, M_POOL = 6, M_SESS = 7, M_HEAD = 8,
  M_INHASH = 9, M_OUTHASH = 10, M_D3OUT = 11, M_D4OUT = 12, M_D3IN = 13, M_D4IN = 14, M_NEXT = 15;
// Session record: 64 bytes at id << 4 (int32 words) = id << 3 (float64 slots).
// S_LIVE: 0 free, bit 0 live, bit 1 opened by an outbound packet.
const S_MAP = 0, S_REM = 1, S_REMPORT = 2, S_LIVE = 3, S_HASH = 4, S_NEXT = 5, S_PREV = 6, S_TCP = 7;
const SF_LAST = 4, SF_DEADLINE = 5, SF_PKTS_OUT = 6, SF_PKTS_IN = 7;

const SYN_SLOT_BYTES = 128;
const NO_TIME = -Infinity;

// Results of admitInbound when no session is returned.
const ADMIT_GONE = -2;     // the mapping died (all its sessions had expired)
const ADMIT_FILTERED = -1; // the filter refused the remote
const ADMIT_REFUSED = -3;  // session limit or table full (counted)

function isQuery(t: number): boolean {
  // RFC 792 echo, timestamp, information; RFC 950 address mask: requests and replies.
  return t === 8 || t === 0 || t === 13 || t === 14 || t === 15 || t === 16 || t === 17 || t === 18;
}
function isQueryRequest(t: number): boolean {
  return t === 8 || t === 13 || t === 15 || t === 17;
}

function put16(b: Buffer, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}
function put32(b: Buffer, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}
function get16(b: Buffer, o: number): number {
  return (b[o] << 8) | b[o + 1];
}
/** Big-endian 32 bits as an int32 (see "Numbers" in the header: never a boxed number). */
function get32(b: Buffer, o: number): number {
  return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3];
}
/** Writes a 16-bit word and returns its RFC 1624 term (for a covering checksum such as ICMP's). */
function set16d(b: Buffer, o: number, v: number): number {
  const old = (b[o] << 8) | b[o + 1];
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
  return (~old & 0xffff) + (v & 0xffff);
}

interface Resolved {
  filtering: number; // 0 EIF, 1 ADF, 2 APDF
  maxPerSub: number;
  maxSessPerMap: number;
  tUdp: number;
  tTcpEst: number;
  tTcpTrans: number;
  tIcmp: number;
  inboundRefresh: boolean;
  holdSyn: boolean;
  synIcmp: boolean;
  synHoldSec: number;
  outsideMtu: number;
  decTtl: boolean;
  insideAddr: number;
  icmpOnLimit: boolean;
  icmpPerSec: number;
  icmpBurst: number;
  sweepBudget: number;
}

function parseAddress(s: string, what: string): number {
  if (typeof s !== 'string' || s.includes('/') || !Address4.isValid(s)) throw new Error(`${what}: expected an IPv4 address like 198.51.100.1, got ${JSON.stringify(s)}`);
  const a = new Address4(s).toArray();
  return ((a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]) >>> 0;
}
function parsePrefix(s: string, what: string): [number, number] {
  if (typeof s !== 'string' || !Address4.isValid(s)) throw new Error(`${what}: expected an IPv4 prefix like 10.0.0.0/8, got ${JSON.stringify(s)}`);
  const a = new Address4(s);
  const bits = s.includes('/') ? a.subnetMask : 32;
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  const b = a.startAddress().toArray();
  return [(((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) & mask) >>> 0, mask];
}

export class Napt {
  readonly cfg: Readonly<Resolved>;
  readonly pool: Uint32Array;
  readonly insideNet: Int32Array;
  readonly insideMask: Int32Array;
  readonly alloc: PortAllocator;
  readonly frags: NatFragTable;
  readonly capacity: number;
  readonly sessionCapacity: number;

  /** Per packet of the last batch: 0 inside / 1 outside (where a FORWARD packet goes). */
  egress: Uint8Array;
  /** Per packet of the last batch: mapping id used (the sender's for hairpin), or -1. */
  mappingOf: Int32Array;
  /** Highest batch time seen (seconds). */
  clock = NO_TIME;
  mappings = 0;
  sessions = 0;
  subscribers = 0;

  // ---- mappings: one 64-byte record per id (words M_*), so a packet touches one cache line ----
  readonly mr: Int32Array;
  readonly mCreated: Float64Array;
  /** Folded RFC 1624 deltas: IP header (address) and transport (address + port; ICMP: identifier only), outbound and inbound. */
  private mFree = -1;
  private readonly inIdx: IdIndex;
  private readonly outIdx: IdIndex;

  // ---- sessions: one 64-byte record per id, int words S_* and double slots SF_* over one buffer ----
  readonly sr: Int32Array;
  readonly sf: Float64Array;
  private sFree = -1;
  private readonly sIdx: IdIndex;
  private sweepCursor = 0;

  // ---- subscribers: open addressing keyed by inside address ----
  private readonly subKey: Int32Array;
  private readonly subCount: Uint32Array;
  private readonly subUsed: Uint8Array;
  private readonly subMask: number;
  private readonly subProbe: number;

  // ---- pool address lookup ----
  private readonly poolKey: Int32Array;
  private readonly poolVal: Int32Array;
  private readonly poolMask: number;

  // ---- unsolicited SYN hold ring (RFC 5382 REQ-4) ----
  private readonly synRem: Int32Array;
  private readonly synRemPort: Uint16Array;
  private readonly synLoc: Int32Array;
  private readonly synLocPort: Uint16Array;
  private readonly synTime: Float64Array;
  private readonly synLive: Uint8Array;
  private readonly synLen: Uint16Array;
  private readonly synBytes: Buffer;
  private synHead = 0;
  private synCount = 0;

  // ---- ICMP origination ----
  private icmpTokens: number;
  private icmpTokenTime = NO_TIME;
  private out: Batch | null = null;
  /** Flow table of the batch being translated (translateBatch's `flows`), or null. */
  private flows: FlowAliasSink | null = null;
  /** Time of the batch being translated (a field, not an argument: a double argument is boxed per call). */
  private now = 0;

  private readonly seed: number;
  private cv: Float64Array;
  /** Scratch Meta for quoted packets of ICMP errors (parseNetwork). */
  private readonly qm = new Meta(4); // 4: Meta needs a capacity that keeps its shared buffer 4-byte aligned

  constructor(config: NaptConfig) {
    if (!config || !Array.isArray(config.insidePrefixes) || config.insidePrefixes.length === 0) {
      throw new Error('nat.insidePrefixes: expected a non-empty list of IPv4 prefixes like ["10.0.0.0/8"]');
    }
    const nets = config.insidePrefixes.map((p, k) => parsePrefix(p, `nat.insidePrefixes[${k}]`));
    this.insideNet = Int32Array.from(nets.map((x) => x[0] | 0));
    this.insideMask = Int32Array.from(nets.map((x) => x[1] | 0));
    const pool: number[] = [];
    if (typeof config.pool === 'string') {
      const [net, mask] = parsePrefix(config.pool, 'nat.pool');
      const size = mask === 0 ? 2 ** 32 : ((~mask) >>> 0) + 1;
      if (size > 21845) throw new Error(`nat.pool: prefix ${config.pool} holds ${size} addresses; at most 21845 are supported`);
      for (let k = 0; k < size; k++) {
        if (size > 2 && (k === 0 || k === size - 1)) continue; // network and broadcast
        pool.push((net + k) >>> 0);
      }
    } else if (Array.isArray(config.pool) && config.pool.length > 0) {
      config.pool.forEach((a, k) => pool.push(parseAddress(a, `nat.pool[${k}]`)));
    } else {
      throw new Error('nat.pool: expected a list of IPv4 addresses or one prefix like "198.51.100.0/28"');
    }
    if (new Set(pool).size !== pool.length) throw new Error('nat.pool: an address is listed twice');
    this.pool = Uint32Array.from(pool);
    for (const a of pool) {
      if (this.isInside(a)) throw new Error(`nat.pool: ${formatIpv4(a)} lies inside nat.insidePrefixes; pool addresses must be outside addresses`);
    }

    const filt = config.filtering ?? 'address-dependent';
    const filtering = filt === 'endpoint-independent' ? 0 : filt === 'address-dependent' ? 1 : filt === 'address-and-port-dependent' ? 2 : -1;
    if (filtering < 0) throw new Error(`nat.filtering: expected 'endpoint-independent', 'address-dependent' or 'address-and-port-dependent', got ${JSON.stringify(filt)}`);
    const to = { ...DEFAULT_NAT_TIMEOUTS, ...(config.timeouts ?? {}) };
    const checkMin = (k: keyof typeof MIN_TIMEOUTS, rule: string) => {
      const v = to[k];
      if (!(Number.isFinite(v) && v >= MIN_TIMEOUTS[k])) throw new Error(`nat.timeouts.${k}: ${rule} requires at least ${MIN_TIMEOUTS[k]} s, got ${v}`);
    };
    checkMin('udp', 'RFC 4787 REQ-5');
    checkMin('tcpEstablished', 'RFC 5382 REQ-5');
    checkMin('tcpTransitory', 'RFC 5382 REQ-5');
    checkMin('icmp', 'RFC 5508 REQ-1');
    const synHoldSec = config.synHoldSec ?? 6;
    if (!(synHoldSec >= 6)) throw new Error(`nat.synHoldSec: RFC 5382 REQ-4 requires at least 6 s, got ${synHoldSec}`);
    const mtu = config.outsideMtu ?? 1500;
    if (!(Number.isInteger(mtu) && mtu >= 68 && mtu <= 65535)) throw new Error(`nat.outsideMtu: expected 68..65535 (RFC 791 minimum 68), got ${mtu}`);
    const rate = config.icmpRate ?? { perSec: 100, burst: 50 };
    this.cfg = {
      filtering,
      maxPerSub: config.maxMappingsPerSubscriber ?? 4096,
      maxSessPerMap: config.maxSessionsPerMapping ?? 64,
      tUdp: to.udp,
      tTcpEst: to.tcpEstablished,
      tTcpTrans: to.tcpTransitory,
      tIcmp: to.icmp,
      inboundRefresh: config.inboundRefresh ?? true,
      holdSyn: config.holdUnsolicitedSyn ?? false,
      synIcmp: config.unsolicitedSynIcmp ?? true,
      synHoldSec,
      outsideMtu: mtu,
      decTtl: config.decrementTtl ?? true,
      insideAddr: config.insideAddress !== undefined ? parseAddress(config.insideAddress, 'nat.insideAddress') : pool[0],
      icmpOnLimit: config.icmpOnResourceLimit ?? true,
      icmpPerSec: rate.perSec,
      icmpBurst: rate.burst,
      sweepBudget: config.sweepBudget ?? 256,
    };
    if (!(this.cfg.maxPerSub >= 1)) throw new Error(`nat.maxMappingsPerSubscriber: expected >= 1, got ${this.cfg.maxPerSub}`);
    if (!(this.cfg.maxSessPerMap >= 1)) throw new Error(`nat.maxSessionsPerMapping: expected >= 1, got ${this.cfg.maxSessPerMap}`);
    this.icmpTokens = rate.burst;

    const seed = (config.seed ?? hash.randomSeed()) | 0;
    this.seed = seed;
    this.alloc = new PortAllocator({
      poolSize: pool.length,
      portMin: config.portRange?.min,
      portMax: config.portRange?.max,
      preserveRangeClass: config.preserveRangeClass,
      preserveParity: config.preserveParity,
      preservePort: config.preservePort,
      probes: config.portProbes,
      quarantineSec: config.quarantineSec,
      seed: seed ^ 0x6a09e667,
    });

    const cap = config.capacity ?? 65536;
    if (!Number.isInteger(cap) || cap < 16 || cap > 1 << 22 || (cap & (cap - 1)) !== 0) {
      throw new Error(`nat.capacity: expected a power of two between 16 and 2^22, got ${cap}`);
    }
    const scap = config.sessionCapacity ?? cap * 2;
    if (!Number.isInteger(scap) || scap < 16 || scap > 1 << 23 || (scap & (scap - 1)) !== 0) {
      throw new Error(`nat.sessionCapacity: expected a power of two between 16 and 2^23, got ${scap}`);
    }
    this.capacity = cap;
    this.sessionCapacity = scap;
    const probe = config.probe ?? 16;
    this.mr = new Int32Array(cap * 16);
    this.mCreated = new Float64Array(cap);
    // Index load <= 0.5 even with every record in use.
    this.inIdx = new IdIndex(cap * 2, probe);
    this.outIdx = new IdIndex(cap * 2, probe);

    const sbuf = new ArrayBuffer(scap * 64);
    this.sr = new Int32Array(sbuf);
    this.sf = new Float64Array(sbuf);
    this.sIdx = new IdIndex(scap * 2, probe);

    this.subKey = new Int32Array(cap * 2);
    this.subCount = new Uint32Array(cap * 2);
    this.subUsed = new Uint8Array(cap * 2);
    this.subMask = cap * 2 - 1;
    this.subProbe = Math.max(probe, 32);

    let ps = 8;
    while (ps < pool.length * 4) ps <<= 1;
    this.poolKey = new Int32Array(ps);
    this.poolVal = new Int32Array(ps).fill(-1);
    this.poolMask = ps - 1;
    pool.forEach((a, k) => {
      let s = fmix32(a | 0) & this.poolMask;
      while (this.poolVal[s] >= 0) s = (s + 1) & this.poolMask;
      this.poolKey[s] = a | 0;
      this.poolVal[s] = k;
    });

    const synSlots = config.synHoldSlots ?? 64;
    this.synRem = new Int32Array(synSlots);
    this.synRemPort = new Uint16Array(synSlots);
    this.synLoc = new Int32Array(synSlots);
    this.synLocPort = new Uint16Array(synSlots);
    this.synTime = new Float64Array(synSlots);
    this.synLive = new Uint8Array(synSlots);
    this.synLen = new Uint16Array(synSlots);
    this.synBytes = Buffer.alloc(Math.max(1, synSlots) * SYN_SLOT_BYTES);

    this.cv = new Float64Array(NAT_COUNTER_DEFS.length);
    this.frags = new NatFragTable({ ...(config.fragments ?? {}), seed: seed ^ 0x3c6ef372 }, this.cv);
    this.egress = new Uint8Array(256);
    this.mappingOf = new Int32Array(256);
    this.clear();
  }

  /** Forgets every mapping, session, held packet and quarantined port (off the hot path). */
  clear(): void {
    this.mr.fill(0);
    this.sr.fill(0);
    this.inIdx.clear();
    this.outIdx.clear();
    this.sIdx.clear();
    this.subUsed.fill(0);
    this.mFree = -1;
    for (let m = this.capacity - 1; m >= 0; m--) {
      this.mr[(m << 4) + M_NEXT] = this.mFree;
      this.mFree = m;
    }
    this.sFree = -1;
    for (let s = this.sessionCapacity - 1; s >= 0; s--) {
      this.sr[(s << 4) + S_NEXT] = this.sFree;
      this.sFree = s;
    }
    this.mappings = 0;
    this.sessions = 0;
    this.subscribers = 0;
    this.sweepCursor = 0;
    this.synHead = 0;
    this.synCount = 0;
    this.alloc.clear();
    this.frags.clear();
  }

  // ======================================================================
  // The hot path
  // ======================================================================

  /**
   * Translates every packet of a parsed batch in place. `dirOf[i]`: 0 from
   * inside, 1 from outside (null: batch.port, 0 = inside). Packets whose
   * verdict is not FORWARD on entry are skipped. `out` (optional) receives
   * originated ICMP errors and released fragments. `flows` (optional): the
   * flow table that tracked this batch (before translation); the first
   * translated outbound packet of each flow gives it its reply alias.
   */
  translateBatch(batch: Batch, meta: Meta, dirOf: Uint8Array | null, nowSec: number, counters: NatCounters, out: Batch | null = null,
    flows: FlowAliasSink | null = null): void {
    const n = batch.count;
    if (this.egress.length < n) {
      this.egress = new Uint8Array(batch.capacity);
      this.mappingOf = new Int32Array(batch.capacity);
    }
    const cv = counters.values;
    this.cv = cv;
    this.frags.cv = cv;
    this.out = out;
    this.flows = flows;
    if (nowSec > this.clock) this.clock = nowSec;
    const now = this.clock;
    this.now = now;
    const verdict = batch.verdict, egress = this.egress, mappingOf = this.mappingOf;
    for (let i = 0; i < n; i++) {
      const dir = (dirOf !== null ? dirOf[i] : batch.port[i]) !== 0 ? SIDE_OUTSIDE : SIDE_INSIDE;
      egress[i] = dir ^ 1;
      mappingOf[i] = -1;
      if (verdict[i] !== Verdict.FORWARD) continue;
      verdict[i] = this.translateOne(batch, meta, i, dir);
    }
    this.housekeep(now, this.cfg.sweepBudget);
    this.out = null;
    this.flows = null;
  }

  /** Bounded per-batch work: SYN hold window, quarantine, fragment trains, session sweep. */
  private housekeep(now: number, budget: number): void {
    if (this.synCount !== 0) this.drainSynHold(now);
    this.alloc.drain(now);
    this.frags.sweep(now, 32);
    this.sweep(now, budget);
  }

  private translateOne(batch: Batch, meta: Meta, i: number, dir: number): number {
    const cv = this.cv, now = this.now;
    const fl = meta.flags[i];
    if ((fl & MetaFlag.L3) === 0 || meta.ipVersion[i] !== 4) {
      // NAT44 only: non-IP frames and IPv6 are not ours to judge.
      if (meta.status[i] === ParseStatus.OK || meta.status[i] === ParseStatus.NON_IP || meta.ipVersion[i] === 6) {
        cv[NatCounter.nat_passthrough_not_ipv4]++;
        return Verdict.FORWARD;
      }
      cv[NatCounter.nat_drop_bad_packet]++;
      return Verdict.DROP;
    }
    const st = meta.status[i];
    if (st !== ParseStatus.OK) {
      cv[st === ParseStatus.TRUNCATED_TCP || st === ParseStatus.TRUNCATED_UDP || st === ParseStatus.TRUNCATED_ICMP
        ? NatCounter.nat_drop_no_ports : NatCounter.nat_drop_bad_packet]++;
      return Verdict.DROP;
    }
    const arena = batch.arena;
    const base = batch.off[i];
    const l3 = base + meta.l3Off[i];
    const capEnd = base + batch.capLen[i];
    const proto = meta.l4Proto[i];
    const np = natProtoOf(proto);
    if (np < 0) {
      cv[NatCounter.nat_drop_unsupported_proto]++;
      return Verdict.DROP;
    }
    const src = meta.src4[i] | 0, dst = meta.dst4[i] | 0;
    let dstPool = -1;
    if (dir === SIDE_INSIDE) {
      if (!this.isInside(src)) {
        cv[NatCounter.nat_drop_not_inside]++;
        return Verdict.DROP;
      }
      dstPool = this.poolIndexOf(dst);
    } else if (this.poolIndexOf(dst) < 0) {
      cv[NatCounter.nat_drop_not_pool]++;
      return Verdict.DROP;
    }
    // RFC 1812 5.3.1: a router drops a packet whose TTL would reach zero and
    // sends time exceeded (from its inside address, or from the pool address
    // the packet was sent to).
    if (this.cfg.decTtl && arena[l3 + 8] <= 1) {
      cv[NatCounter.nat_drop_ttl_expired]++;
      this.originateError(IcmpErrorType.TIME_EXCEEDED, 0, 0, dir === SIDE_INSIDE ? this.cfg.insideAddr : dst, src, arena, l3, capEnd, dir, now);
      return Verdict.DROP;
    }
    if ((fl & MetaFlag.FRAGMENT) !== 0 && meta.fragOff[i] !== 0) return this.laterFragment(batch, meta, i, dir, l3, capEnd);

    let v: number;
    if (np === NatProto.ICMP && (fl & MetaFlag.ICMP_ERROR) !== 0) {
      v = this.icmpError(batch, meta, i, dir, l3, capEnd);
    } else {
      // Transport header needed in full: TCP flags (a tiny first fragment
      // has none, RFC 1858), the UDP header, the ICMP header.
      if (np === NatProto.TCP ? (fl & MetaFlag.TCP_FLAGS) === 0 : (fl & MetaFlag.L4) === 0) {
        cv[NatCounter.nat_drop_no_ports]++;
        v = Verdict.DROP;
      } else if (dir === SIDE_INSIDE) {
        v = this.outbound(batch, meta, i, l3, capEnd, np, dstPool);
      } else {
        v = this.inbound(batch, meta, i, l3, capEnd, np);
      }
    }
    if ((fl & MetaFlag.FRAGMENT) !== 0) this.firstFragment(batch, meta, i, dir, src, dst, v);
    return v;
  }

  // ---- outbound (from inside) ----

  private outbound(batch: Batch, meta: Meta, i: number, l3: number, capEnd: number, np: number, dstPool: number): number {
    const cv = this.cv, arena = batch.arena, cfg = this.cfg, now = this.now;
    const l4 = batch.off[i] + meta.l4Off[i];
    const src = meta.src4[i] | 0, dst = meta.dst4[i] | 0;
    let sp: number, dp: number, tf = 0, create = true;
    if (np === NatProto.ICMP) {
      const t = meta.icmpType[i];
      if (!isQuery(t)) {
        cv[NatCounter.nat_drop_unsupported_proto]++;
        return Verdict.DROP;
      }
      // RFC 5508 REQ-1: the query identifier plays the port; only a request opens a mapping.
      create = isQueryRequest(t);
      sp = dp = get16(arena, l4 + 4);
    } else {
      sp = meta.srcPort[i];
      dp = meta.dstPort[i];
      if (np === NatProto.TCP) tf = meta.tcpFlags[i];
    }
    const tot = get16(arena, l3 + 2);
    if (dstPool < 0 && tot > cfg.outsideMtu) {
      if ((arena[l3 + 6] & 0x40) !== 0) {
        // RFC 4787 REQ-13 / RFC 1191: DF set and too big: tell the sender the next-hop MTU.
        cv[NatCounter.nat_drop_frag_needed]++;
        this.originateError(IcmpErrorType.DEST_UNREACH, UnreachCode.FRAG_NEEDED, cfg.outsideMtu, cfg.insideAddr, src, arena, l3, capEnd, SIDE_INSIDE, now);
      } else {
        cv[NatCounter.nat_drop_too_big]++;
      }
      return Verdict.DROP;
    }
    let m = this.findIn(src, sp, np);
    let fresh = false;
    if (m < 0) {
      if (!create) {
        cv[NatCounter.nat_drop_no_outbound_mapping]++;
        return Verdict.DROP;
      }
      m = this.createMapping(src, sp, np, now);
      if (m < 0) {
        // RFC 6888 REQ-11: drop, and (SHOULD) tell the sender with ICMP host unreachable.
        if (cfg.icmpOnLimit) this.originateError(IcmpErrorType.DEST_UNREACH, UnreachCode.HOST, 0, cfg.insideAddr, src, arena, l3, capEnd, SIDE_INSIDE, now);
        return Verdict.DROP;
      }
      fresh = true;
    }
    // Hairpin (RFC 4787 REQ-9, RFC 5382 REQ-8, RFC 5508 REQ-7): the target
    // is the mapping that holds the pool address:port; for ICMP the
    // identifier is shared by both ends, so it is the translated one. The
    // target sees the sender's external address and port (RFC 4787 REQ-9b,
    // RFC 5382 REQ-8a) and its filter judges that endpoint.
    let mt = -1, st = -1;
    if (dstPool >= 0) {
      mt = this.findOut(dst, np === NatProto.ICMP ? this.mr[(m << 4) + M_OUTPORT] : dp, np);
      if (mt >= 0) st = this.admitInbound(mt, this.mr[(m << 4) + M_OUT], np === NatProto.ICMP ? 0 : this.mr[(m << 4) + M_OUTPORT]);
      if (mt < 0 || st < 0) {
        if (mt < 0 || st === ADMIT_GONE) cv[NatCounter.nat_drop_hairpin_no_mapping]++;
        else if (st === ADMIT_FILTERED) cv[NatCounter.nat_drop_filtered]++;
        this.releaseIfEmpty(m, now, fresh);
        return Verdict.DROP;
      }
    }
    const s = this.outboundSession(m, dst, np === NatProto.ICMP ? 0 : dp);
    if (s < 0) {
      this.releaseIfEmpty(m, now, fresh);
      return Verdict.DROP;
    }
    this.touch(s, np, true, tf, true);
    if (st >= 0) this.touch(st, np, false, tf, cfg.inboundRefresh);
    if (np === NatProto.TCP && (tf & (TF_SYN | TF_ACK | TF_RST)) === TF_SYN && this.synCount !== 0 && mt < 0) {
      this.supersedeHeldSyn(this.mr[(m << 4) + M_OUT], this.mr[(m << 4) + M_OUTPORT], dst, dp);
    }

    // Rewrite: source to the mapping's outside endpoint; for hairpin also the
    // destination to the target's inside endpoint.
    const newSrc = this.mr[(m << 4) + M_OUT], newSport = this.mr[(m << 4) + M_OUTPORT];
    let d3 = this.mr[(m << 4) + M_D3OUT], d4 = this.mr[(m << 4) + M_D4OUT];
    let newDst = dst, newDport = dp;
    if (mt >= 0) {
      newDst = this.mr[(mt << 4) + M_IN];
      newDport = this.mr[(mt << 4) + M_INPORT];
      d3 += this.mr[(mt << 4) + M_D3IN];
      d4 += this.mr[(mt << 4) + M_D4IN];
    }
    this.rewrite(arena, l3, l4, np, newSrc, newDst, newSport, newDport, d3, d4, mt >= 0);
    meta.src4[i] = newSrc;
    meta.dst4[i] = newDst;
    if (np !== NatProto.ICMP) {
      meta.srcPort[i] = newSport;
      meta.dstPort[i] = newDport;
    }
    this.mappingOf[i] = m;
    if (mt >= 0) {
      // Hairpin: both ends are inside and both tuples change; no alias.
      this.egress[i] = SIDE_INSIDE;
      cv[NatCounter.nat_hairpinned]++;
    } else {
      cv[NatCounter.nat_out_translated]++;
      const fs = this.flows;
      if (fs !== null) {
        const f = fs.flowOf[i];
        // Replies come to the outside endpoint from the unchanged remote; for
        // ICMP queries the translated identifier plays both ports (as in the flow key).
        if (f >= 0 && fs.wantsReplyAlias(f)) {
          fs.setReplyAlias4(f, newSrc, dst, newSport, np === NatProto.ICMP ? newSport : dp, meta.l4Proto[i]);
        }
      }
    }
    return Verdict.FORWARD;
  }

  // ---- inbound (from outside) ----

  private inbound(batch: Batch, meta: Meta, i: number, l3: number, capEnd: number, np: number): number {
    const cv = this.cv, arena = batch.arena, now = this.now;
    const l4 = batch.off[i] + meta.l4Off[i];
    const src = meta.src4[i] | 0, dst = meta.dst4[i] | 0;
    let sp: number, dp: number, tf = 0;
    if (np === NatProto.ICMP) {
      if (!isQuery(meta.icmpType[i])) {
        cv[NatCounter.nat_drop_unsupported_proto]++;
        return Verdict.DROP;
      }
      sp = dp = get16(arena, l4 + 4);
    } else {
      sp = meta.srcPort[i];
      dp = meta.dstPort[i];
      if (np === NatProto.TCP) tf = meta.tcpFlags[i];
    }
    const unsolicitedSyn = np === NatProto.TCP && (tf & (TF_SYN | TF_ACK | TF_RST)) === TF_SYN;
    const m = this.findOut(dst, dp, np);
    let s = ADMIT_GONE;
    if (m >= 0) s = this.admitInbound(m, src, np === NatProto.ICMP ? 0 : sp);
    if (s < 0) {
      if (s === ADMIT_REFUSED) return Verdict.DROP;
      if (unsolicitedSyn) return this.unsolicitedSyn(arena, l3, capEnd, src, sp, dst, dp, now);
      cv[s === ADMIT_FILTERED ? NatCounter.nat_drop_filtered : NatCounter.nat_drop_no_mapping]++;
      return Verdict.DROP;
    }
    this.touch(s, np, false, tf, this.cfg.inboundRefresh);
    const newDst = this.mr[(m << 4) + M_IN], newDport = this.mr[(m << 4) + M_INPORT];
    this.rewrite(arena, l3, l4, np, src, newDst, sp, newDport, this.mr[(m << 4) + M_D3IN], this.mr[(m << 4) + M_D4IN], true);
    meta.dst4[i] = newDst;
    if (np !== NatProto.ICMP) meta.dstPort[i] = newDport;
    this.mappingOf[i] = m;
    this.egress[i] = SIDE_INSIDE;
    cv[NatCounter.nat_in_translated]++;
    return Verdict.FORWARD;
  }

  /**
   * Writes the new addresses/ports (ICMP: the identifier, which takes the
   * destination value when `dstSide`) and applies the folded deltas: d3 to
   * the IP header checksum (plus the TTL decrement), d4 to the transport
   * checksum.
   */
  private rewrite(b: Buffer, l3: number, l4: number, np: number, src: number, dst: number, sport: number, dport: number, d3: number, d4: number, dstSide: boolean): void {
    put32(b, l3 + 12, src);
    put32(b, l3 + 16, dst);
    if (this.cfg.decTtl) {
      const w = (b[l3 + 8] << 8) | b[l3 + 9];
      b[l3 + 8] = b[l3 + 8] - 1;
      d3 += wordDelta(w, w - 0x100);
    }
    applyDelta(b, l3 + 10, d3);
    if (np === NatProto.TCP) {
      put16(b, l4, sport);
      put16(b, l4 + 2, dport);
      applyDelta(b, l4 + 16, d4);
    } else if (np === NatProto.UDP) {
      put16(b, l4, sport);
      put16(b, l4 + 2, dport);
      applyDeltaUdp(b, l4 + 6, d4);
    } else {
      put16(b, l4 + 4, dstSide ? dport : sport);
      applyDelta(b, l4 + 2, d4);
    }
  }

  // ---- ICMP errors (RFC 5508 section 4) ----

  private icmpError(batch: Batch, meta: Meta, i: number, dir: number, l3: number, capEnd: number): number {
    const cv = this.cv, arena = batch.arena, now = this.now;
    const l4 = batch.off[i] + meta.l4Off[i];
    const tot = get16(arena, l3 + 2);
    const end = tot !== 0 && l3 + tot < capEnd ? l3 + tot : capEnd;
    const q = l4 + 8;
    // RFC 5508 REQ-8: an ICMP error whose checksum fails is dropped silently
    // (verified when the whole message was captured).
    if ((meta.flags[i] & MetaFlag.L4_SHORT) === 0 && onesSum(arena, l4, end - l4) !== 0xffff) {
      cv[NatCounter.nat_icmp_error_bad_checksum]++;
      return Verdict.DROP;
    }
    const qm = this.qm;
    // The quote: an IPv4 header and at least the 8 bytes of transport header RFC 792 promises.
    if (q + 28 > end || parseNetwork(arena, q, end - q, 0, 4, qm, 0) === ParseStatus.BAD_IPV4_VERSION || (qm.flags[0] & MetaFlag.L3) === 0 ||
      qm.fragOff[0] !== 0) {
      cv[NatCounter.nat_icmp_error_bad_quote]++;
      return Verdict.DROP;
    }
    const il3 = q, il4 = q + qm.l4Off[0];
    const inp = natProtoOf(qm.l4Proto[0]);
    if (inp < 0 || il4 + 8 > end) {
      cv[inp < 0 ? NatCounter.nat_drop_unsupported_proto : NatCounter.nat_icmp_error_bad_quote]++;
      return Verdict.DROP;
    }
    const isrc = get32(arena, il3 + 12), idst = get32(arena, il3 + 16);
    let isp: number, idp: number;
    if (inp === NatProto.ICMP) {
      // An error about an error is never sent (RFC 1122 3.2.2): only queries can be quoted.
      if (!isQuery(arena[il4])) {
        cv[NatCounter.nat_icmp_error_bad_quote]++;
        return Verdict.DROP;
      }
      isp = idp = get16(arena, il4 + 4);
    } else {
      isp = get16(arena, il4);
      idp = get16(arena, il4 + 2);
    }
    const icmpRemPort = inp === NatProto.ICMP;
    const osrc = meta.src4[i] | 0, odst = meta.dst4[i] | 0;
    let acc = 0; // RFC 1624 terms of every word changed inside the ICMP message
    let d3 = 0;  // outer IP header
    let newSrc = osrc, newDst = odst;
    if (dir === SIDE_OUTSIDE) {
      // RFC 5508 REQ-3: from outside, the quote is a packet we sent out:
      // its source is our mapping. Revert it, and send the error to the
      // inside host.
      const m = this.findOut(isrc, isp, inp);
      const s = m >= 0 ? this.findSession(m, idst, icmpRemPort ? 0 : idp) : -1;
      if (s < 0 || this.sf[(s << 3) + SF_DEADLINE] <= now) {
        cv[NatCounter.nat_icmp_error_no_mapping]++;
        return Verdict.DROP;
      }
      acc += this.revertQuoted(arena, il3, il4, end, inp, true, this.mr[(m << 4) + M_IN], this.mr[(m << 4) + M_INPORT], this.mr[(m << 4) + M_D3IN], this.mr[(m << 4) + M_D4IN]);
      newDst = this.mr[(m << 4) + M_IN];
      d3 += addrDelta(odst, newDst);
      this.mappingOf[i] = m;
      this.egress[i] = SIDE_INSIDE;
    } else {
      // RFC 5508 REQ-4: from inside, the quote is a packet we delivered in:
      // its destination is the inside end of a mapping.
      const m = this.findIn(idst, idp, inp);
      const s = m >= 0 ? this.findSession(m, isrc, icmpRemPort ? 0 : isp) : -1;
      if (s < 0 || this.sf[(s << 3) + SF_DEADLINE] <= now) {
        cv[NatCounter.nat_icmp_error_no_mapping]++;
        return Verdict.DROP;
      }
      acc += this.revertQuoted(arena, il3, il4, end, inp, false, this.mr[(m << 4) + M_OUT], this.mr[(m << 4) + M_OUTPORT], this.mr[(m << 4) + M_D3OUT], this.mr[(m << 4) + M_D4OUT]);
      // Like Linux (nf_nat_icmp_reply_translation): the error leaves from
      // the mapping's outside address, whoever inside sent it.
      newSrc = this.mr[(m << 4) + M_OUT];
      d3 += addrDelta(osrc, newSrc);
      this.mappingOf[i] = m;
      if (this.poolIndexOf(odst) >= 0) {
        // Hairpinned error (RFC 5508 REQ-7 as updated by RFC 7857 2.12): the
        // quoted source is another mapping's outside endpoint; revert it too.
        const mt = this.findOut(isrc, inp === NatProto.ICMP ? this.mr[(m << 4) + M_OUTPORT] : isp, inp);
        if (mt < 0) {
          cv[NatCounter.nat_icmp_error_no_mapping]++;
          return Verdict.DROP;
        }
        acc += this.revertQuoted(arena, il3, il4, end, inp, true, this.mr[(mt << 4) + M_IN], this.mr[(mt << 4) + M_INPORT], this.mr[(mt << 4) + M_D3IN], this.mr[(mt << 4) + M_D4IN]);
        newDst = this.mr[(mt << 4) + M_IN];
        d3 += addrDelta(odst, newDst);
        this.egress[i] = SIDE_INSIDE;
        cv[NatCounter.nat_hairpinned]++;
      } else {
        this.egress[i] = SIDE_OUTSIDE;
      }
    }
    put32(arena, l3 + 12, newSrc);
    put32(arena, l3 + 16, newDst);
    if (this.cfg.decTtl) {
      const w = (arena[l3 + 8] << 8) | arena[l3 + 9];
      arena[l3 + 8] = arena[l3 + 8] - 1;
      d3 += wordDelta(w, w - 0x100);
    }
    applyDelta(arena, l3 + 10, d3);
    // The outer ICMP checksum covers the quote (no pseudo-header): fold in every changed word.
    applyDelta(arena, l4 + 2, fold(acc));
    meta.src4[i] = newSrc;
    meta.dst4[i] = newDst;
    cv[NatCounter.nat_icmp_error_translated]++;
    return Verdict.FORWARD;
  }

  /**
   * Rewrites one endpoint of the quoted packet (its source when `srcSide`,
   * else its destination) to addr:port, updating the quoted IP header
   * checksum and, when the quote holds it, the quoted transport checksum
   * (like Linux: TCP only with >= 18 bytes quoted, UDP unless 0, ICMP query).
   * Returns the RFC 1624 terms of the changed words for the ICMP checksum.
   */
  private revertQuoted(b: Buffer, il3: number, il4: number, end: number, inp: number, srcSide: boolean, addr: number, port: number, d3: number, d4: number): number {
    let acc = 0;
    const ao = il3 + (srcSide ? 12 : 16);
    acc += set16d(b, ao, addr >>> 16);
    acc += set16d(b, ao + 2, addr & 0xffff);
    const hc = get16(b, il3 + 10);
    acc += set16d(b, il3 + 10, ~fold((~hc & 0xffff) + d3) & 0xffff);
    if (inp === NatProto.ICMP) {
      acc += set16d(b, il4 + 4, port);
      const ic = get16(b, il4 + 2);
      acc += set16d(b, il4 + 2, ~fold((~ic & 0xffff) + d4) & 0xffff);
      return acc;
    }
    acc += set16d(b, il4 + (srcSide ? 0 : 2), port);
    if (inp === NatProto.TCP) {
      if (il4 + 18 <= end) {
        const tc = get16(b, il4 + 16);
        acc += set16d(b, il4 + 16, ~fold((~tc & 0xffff) + d4) & 0xffff);
      }
    } else {
      const uc = get16(b, il4 + 6);
      if (uc !== 0) {
        let v = ~fold((~uc & 0xffff) + d4) & 0xffff;
        if (v === 0) v = 0xffff;
        acc += set16d(b, il4 + 6, v);
      }
    }
    return acc;
  }

  // ---- fragments (RFC 4787 REQ-14) ----

  private firstFragment(batch: Batch, meta: Meta, i: number, dir: number, src: number, dst: number, v: number): void {
    const frags = this.frags, now = this.now;
    const pid = (meta.l4Proto[i] << 24) | (dir << 16) | (meta.fragId[i] & 0xffff);
    const fwd = v === Verdict.FORWARD;
    const s = frags.first(src, dst, pid, now, fwd, meta.src4[i] | 0, meta.dst4[i] | 0, this.egress[i], meta.l4Len[i]);
    if (s < 0) return;
    if (frags.heldHead[s] >= 0) {
      if (fwd) this.releaseHeld(s, now);
      else this.cv[NatCounter.nat_frag_dropped] += frags.heldCount[s];
      frags.freeHeld(s);
    }
    frags.maybeComplete(s);
  }

  private laterFragment(batch: Batch, meta: Meta, i: number, dir: number, l3: number, capEnd: number): number {
    const cv = this.cv, frags = this.frags, arena = batch.arena, now = this.now;
    const proto = meta.l4Proto[i];
    const fo = meta.fragOff[i];
    // RFC 1858 3.4: a TCP fragment at offset 1 rewrites the ports and flags.
    if (proto === 6 && fo === 1) {
      cv[NatCounter.nat_frag_bad]++;
      return Verdict.DROP;
    }
    const src = meta.src4[i] | 0, dst = meta.dst4[i] | 0;
    const pid = (proto << 24) | (dir << 16) | (meta.fragId[i] & 0xffff);
    const mf = (meta.flags[i] & MetaFlag.MF) !== 0;
    const s = frags.later(src, dst, pid, now, meta.l4Len[i], fo, mf);
    if (s >= 0) {
      const tst = frags.state[s];
      if (tst === TrainState.FORWARD) {
        const eg = frags.egress[s];
        if (eg === SIDE_OUTSIDE && get16(arena, l3 + 2) > this.cfg.outsideMtu) {
          cv[NatCounter.nat_drop_too_big]++;
          frags.maybeComplete(s);
          return Verdict.DROP;
        }
        this.rewriteIpOnly(arena, l3, frags.newSrc[s], frags.newDst[s]);
        meta.src4[i] = frags.newSrc[s];
        meta.dst4[i] = frags.newDst[s];
        this.egress[i] = eg;
        cv[NatCounter.nat_frag_translated]++;
        frags.maybeComplete(s);
        return Verdict.FORWARD;
      }
      if (tst === TrainState.DROP) {
        cv[NatCounter.nat_frag_dropped]++;
        frags.maybeComplete(s);
        return Verdict.DROP;
      }
    }
    // Out of order: keep a copy until the first fragment tells the translation.
    const base = batch.off[i];
    if (frags.hold(s, src, dst, pid, now, arena, base, capEnd - base, batch.origLen[i], batch.linkType[i], meta.l3Off[i], meta.l4Len[i], fo, mf)) {
      cv[NatCounter.nat_frag_held]++;
      return Verdict.HOLD;
    }
    cv[NatCounter.nat_frag_hold_full]++;
    return Verdict.DROP;
  }

  /** IP header only (a non-first fragment): addresses, TTL, header checksum. */
  private rewriteIpOnly(b: Buffer, l3: number, src: number, dst: number): void {
    let d = addrDelta(get32(b, l3 + 12), src) + addrDelta(get32(b, l3 + 16), dst);
    put32(b, l3 + 12, src);
    put32(b, l3 + 16, dst);
    if (this.cfg.decTtl) {
      const w = (b[l3 + 8] << 8) | b[l3 + 9];
      b[l3 + 8] = b[l3 + 8] - 1;
      d += wordDelta(w, w - 0x100);
    }
    applyDelta(b, l3 + 10, d);
  }

  /** Copies the held fragments of train s into the side output, translated. */
  private releaseHeld(s: number, now: number): void {
    const frags = this.frags, cv = this.cv, out = this.out;
    const eg = frags.egress[s];
    const sec = Math.floor(now), nsec = Math.floor((now - sec) * 1e9);
    for (let h = frags.heldHead[s]; h >= 0; h = frags.hNext[h]) {
      const at = h * frags.slotBytes, len = frags.hLen[h], l3 = at + frags.hL3Off[h];
      if (this.cfg.decTtl && frags.arena[l3 + 8] <= 1) {
        cv[NatCounter.nat_drop_ttl_expired]++;
        continue;
      }
      if (eg === SIDE_OUTSIDE && get16(frags.arena, l3 + 2) > this.cfg.outsideMtu) {
        cv[NatCounter.nat_drop_too_big]++;
        continue;
      }
      if (out === null || !out.push(frags.arena, at, len, frags.hOrigLen[h], sec, nsec, frags.hLinkType[h], eg)) {
        cv[NatCounter.nat_originated_no_room]++;
        continue;
      }
      const k = out.count - 1;
      this.rewriteIpOnly(out.arena, out.off[k] + frags.hL3Off[h], frags.newSrc[s], frags.newDst[s]);
      cv[NatCounter.nat_frag_released]++;
    }
  }

  // ---- unsolicited SYN (RFC 5382 REQ-4) ----

  private unsolicitedSyn(b: Buffer, l3: number, capEnd: number, src: number, sp: number, dst: number, dp: number, now: number): number {
    const cv = this.cv;
    const n = this.synRem.length;
    if (!this.cfg.holdSyn || n === 0) {
      // REQ-4a: security policy may drop it silently.
      cv[NatCounter.nat_syn_dropped]++;
      return Verdict.DROP;
    }
    for (let k = 0, j = this.synHead; k < this.synCount; k++, j = j + 1 === n ? 0 : j + 1) {
      if (this.synLive[j] !== 0 && this.synRem[j] === src && this.synRemPort[j] === sp && this.synLoc[j] === dst && this.synLocPort[j] === dp) {
        cv[NatCounter.nat_syn_dropped]++; // a retransmission of a SYN already held
        return Verdict.DROP;
      }
    }
    if (this.synCount === n) {
      cv[NatCounter.nat_syn_hold_full]++;
      return Verdict.DROP;
    }
    let j = this.synHead + this.synCount;
    if (j >= n) j -= n;
    const len = Math.min(icmpQuoteLength(b, l3, capEnd), SYN_SLOT_BYTES);
    b.copy(this.synBytes, j * SYN_SLOT_BYTES, l3, l3 + len);
    this.synLen[j] = len;
    this.synRem[j] = src;
    this.synRemPort[j] = sp;
    this.synLoc[j] = dst;
    this.synLocPort[j] = dp;
    this.synTime[j] = now;
    this.synLive[j] = 1;
    this.synCount++;
    cv[NatCounter.nat_syn_held]++;
    return Verdict.HOLD;
  }

  /** An outbound SYN was translated for loc -> rem: a SYN held for that connection is dropped silently (REQ-4). */
  private supersedeHeldSyn(loc: number, locPort: number, rem: number, remPort: number): void {
    const n = this.synRem.length;
    for (let k = 0, j = this.synHead; k < this.synCount; k++, j = j + 1 === n ? 0 : j + 1) {
      if (this.synLive[j] !== 0 && this.synLoc[j] === loc && this.synLocPort[j] === locPort && this.synRem[j] === rem && this.synRemPort[j] === remPort) {
        this.synLive[j] = 0;
        this.cv[NatCounter.nat_syn_hold_superseded]++;
      }
    }
  }

  /** Ends the hold window of SYNs older than synHoldSec: ICMP port unreachable (REQ-4) unless disabled (REQ-4a). */
  private drainSynHold(now: number): void {
    const n = this.synRem.length, hold = this.cfg.synHoldSec;
    while (this.synCount !== 0 && this.synTime[this.synHead] + hold <= now) {
      const j = this.synHead;
      if (this.synLive[j] !== 0) {
        this.synLive[j] = 0;
        this.cv[NatCounter.nat_syn_hold_expired]++;
        if (this.cfg.synIcmp) {
          const at = j * SYN_SLOT_BYTES;
          this.originateError(IcmpErrorType.DEST_UNREACH, UnreachCode.PORT, 0, this.synLoc[j], this.synRem[j],
            this.synBytes, at, at + this.synLen[j], SIDE_OUTSIDE, now);
        }
      }
      this.synHead = j + 1 === n ? 0 : j + 1;
      this.synCount--;
    }
  }

  /** Held SYNs (waiting for their 6 s window). */
  heldSyns(): number {
    let c = 0;
    const n = this.synRem.length;
    for (let k = 0, j = this.synHead; k < this.synCount; k++, j = j + 1 === n ? 0 : j + 1) c += this.synLive[j];
    return c;
  }

  // ---- originated ICMP errors ----

  /**
   * Appends an ICMP error about the packet at `l3` of `b` (captured to
   * capEnd) to the side output, sent towards `side` (the side the offending
   * packet came from). Silently skipped, with a counter, when the packet
   * must not be answered, the rate limit says no, or there is no room.
   */
  private originateError(type: number, code: number, rest: number, from: number, to: number, b: Buffer, l3: number, capEnd: number, side: number, now: number): void {
    if (!mayAnswerWithIcmpError(b, l3, capEnd)) return;
    const cv = this.cv, out = this.out;
    // RFC 1812 4.3.2.8: rate-limit originated errors (token bucket in packet time).
    const dt = now - this.icmpTokenTime;
    if (dt > 0) {
      const t = this.icmpTokenTime === NO_TIME ? this.cfg.icmpBurst : this.icmpTokens + dt * this.cfg.icmpPerSec;
      this.icmpTokens = t > this.cfg.icmpBurst ? this.cfg.icmpBurst : t;
      this.icmpTokenTime = now;
    }
    if (this.icmpTokens < 1) {
      cv[NatCounter.nat_icmp_rate_limited]++;
      return;
    }
    const qlen = icmpQuoteLength(b, l3, capEnd);
    const len = icmpErrorLength(qlen);
    if (out === null || out.count >= out.capacity || out.used + len > out.arena.length) {
      cv[NatCounter.nat_originated_no_room]++;
      return;
    }
    this.icmpTokens -= 1;
    const k = out.count, at = out.used;
    encodeIcmpError(type, code, rest, from, to, b, l3, qlen, out.arena, at);
    out.off[k] = at;
    out.capLen[k] = len;
    out.origLen[k] = len;
    const sec = Math.floor(now);
    out.tsSec[k] = sec;
    out.tsNsec[k] = Math.floor((now - sec) * 1e9);
    out.linkType[k] = LinkType.RAW;
    out.port[k] = side;
    out.verdict[k] = Verdict.FORWARD;
    out.used = at + len;
    out.count = k + 1;
    cv[NatCounter.nat_icmp_originated]++;
  }

  // ======================================================================
  // Tables
  // ======================================================================

  isInside(a: number): boolean {
    const net = this.insideNet, mask = this.insideMask;
    for (let k = 0; k < net.length; k++) if ((a & mask[k]) === net[k]) return true;
    return false;
  }

  /** Index of `a` in the pool, or -1. */
  poolIndexOf(a: number): number {
    a |= 0;
    const mask = this.poolMask;
    let s = fmix32(a) & mask;
    for (;;) {
      const v = this.poolVal[s];
      if (v < 0) return -1;
      if (this.poolKey[s] === a) return v;
      s = (s + 1) & mask;
    }
  }

  /** RFC 4787 REQ-2 paired pooling: the subscriber's pool address, a pure function of its inside address. */
  pairedPool(inAddr: number): number {
    const n = this.pool.length;
    return n === 1 ? 0 : (fmix32(inAddr ^ 0x9e3779b9) >>> 0) % n;
  }

  private inHash(a: number, port: number, np: number): number {
    return fmix32(mix32(mix32(this.seed, a), (np << 16) | port) ^ 8) | 0;
  }
  private outHash(a: number, port: number, np: number): number {
    return fmix32(mix32(mix32(this.seed ^ 0x1b873593, a), (np << 16) | port) ^ 8) | 0;
  }
  private sessHash(m: number, rem: number, rport: number): number {
    return fmix32(mix32(mix32(mix32(this.seed ^ 0x85ebca6b, m), rem), rport) ^ 12) | 0;
  }

  /** Mapping id of an inside endpoint, or -1. */
  findIn(a: number, port: number, np: number): number {
    const h = this.inHash(a, port, np);
    const pairs = this.inIdx.pairs, mask = this.inIdx.mask;
    let s = h & mask;
    for (let p = 0; p < this.inIdx.probe; p++) {
      const e = pairs[2 * s + 1];
      if (e === 0) return -1;
      if (pairs[2 * s] === h) {
        const m = e - 1;
        if (this.mr[(m << 4) + M_IN] === a && this.mr[(m << 4) + M_INPORT] === port && this.mr[(m << 4) + M_PROTO] === np) return m;
      }
      s = (s + 1) & mask;
    }
    return -1;
  }

  /** Mapping id of an outside endpoint, or -1. */
  findOut(a: number, port: number, np: number): number {
    const h = this.outHash(a, port, np);
    const pairs = this.outIdx.pairs, mask = this.outIdx.mask;
    let s = h & mask;
    for (let p = 0; p < this.outIdx.probe; p++) {
      const e = pairs[2 * s + 1];
      if (e === 0) return -1;
      if (pairs[2 * s] === h) {
        const m = e - 1;
        if (this.mr[(m << 4) + M_OUT] === a && this.mr[(m << 4) + M_OUTPORT] === port && this.mr[(m << 4) + M_PROTO] === np) return m;
      }
      s = (s + 1) & mask;
    }
    return -1;
  }

  /** Session id of (mapping, remote endpoint), or -1 (live or past its deadline: the caller checks). */
  findSession(m: number, rem: number, rport: number): number {
    // Most mappings talk to one remote: its session heads the mapping's list,
    // found without touching the session index.
    const hs = this.mr[(m << 4) + M_HEAD];
    if (hs >= 0 && this.sr[(hs << 4) + S_REM] === rem && this.sr[(hs << 4) + S_REMPORT] === rport) return hs;
    const h = this.sessHash(m, rem, rport);
    const pairs = this.sIdx.pairs, mask = this.sIdx.mask;
    let s = h & mask;
    for (let p = 0; p < this.sIdx.probe; p++) {
      const e = pairs[2 * s + 1];
      if (e === 0) return -1;
      if (pairs[2 * s] === h) {
        const x = e - 1;
        if (this.sr[(x << 4) + S_MAP] === m && this.sr[(x << 4) + S_REM] === rem && this.sr[(x << 4) + S_REMPORT] === rport) return x;
      }
      s = (s + 1) & mask;
    }
    return -1;
  }

  private createMapping(inAddr: number, inPort: number, np: number, now: number): number {
    const cv = this.cv, cfg = this.cfg;
    const sub = this.subFind(inAddr);
    if (sub >= 0 && this.subCount[sub] >= cfg.maxPerSub) {
      cv[NatCounter.nat_drop_subscriber_limit]++;
      return -1;
    }
    if (this.mFree < 0) {
      cv[NatCounter.nat_drop_mapping_table_full]++;
      return -1;
    }
    const pool = this.pairedPool(inAddr);
    const port = this.alloc.allocate(np, pool, inPort, now);
    if (port < 0) {
      cv[NatCounter.nat_drop_pool_empty]++;
      return -1;
    }
    const outAddr = this.pool[pool] | 0;
    const m = this.mFree;
    const hIn = this.inHash(inAddr, inPort, np), hOut = this.outHash(outAddr, port, np);
    if (!this.inIdx.insert(hIn, m)) {
      this.alloc.release(np, pool, port, now, false);
      cv[NatCounter.nat_drop_mapping_table_full]++;
      return -1;
    }
    if (!this.outIdx.insert(hOut, m)) {
      this.inIdx.remove(hIn, m);
      this.alloc.release(np, pool, port, now, false);
      cv[NatCounter.nat_drop_mapping_table_full]++;
      return -1;
    }
    if (!this.subInc(inAddr, sub)) {
      this.inIdx.remove(hIn, m);
      this.outIdx.remove(hOut, m);
      this.alloc.release(np, pool, port, now, false);
      cv[NatCounter.nat_drop_mapping_table_full]++;
      return -1;
    }
    this.mFree = this.mr[(m << 4) + M_NEXT];
    this.mr[(m << 4) + M_IN] = inAddr;
    this.mr[(m << 4) + M_OUT] = outAddr;
    this.mr[(m << 4) + M_INPORT] = inPort;
    this.mr[(m << 4) + M_OUTPORT] = port;
    this.mr[(m << 4) + M_PROTO] = np;
    this.mr[(m << 4) + M_POOL] = pool;
    this.mr[(m << 4) + M_SESS] = 0;
    this.mr[(m << 4) + M_HEAD] = -1;
    this.mr[(m << 4) + M_INHASH] = hIn;
    this.mr[(m << 4) + M_OUTHASH] = hOut;
    this.mCreated[m] = now;
    // STYLE.md 6: the per-packet checksum work is one add of these.
    const da = addrDelta(inAddr, outAddr), dp = wordDelta(inPort, port);
    const ra = addrDelta(outAddr, inAddr), rp = wordDelta(port, inPort);
    this.mr[(m << 4) + M_D3OUT] = fold(da);
    this.mr[(m << 4) + M_D3IN] = fold(ra);
    // ICMP has no pseudo-header: only the identifier counts.
    this.mr[(m << 4) + M_D4OUT] = np === NatProto.ICMP ? fold(dp) : fold(da + dp);
    this.mr[(m << 4) + M_D4IN] = np === NatProto.ICMP ? fold(rp) : fold(ra + rp);
    this.mr[(m << 4) + M_LIVE] = 1;
    this.mappings++;
    cv[NatCounter.nat_mapping_created]++;
    return m;
  }

  /** Frees mapping m; its port goes to quarantine when it was used on the wire. */
  private freeMapping(m: number, now: number, quarantine: boolean): void {
    this.inIdx.remove(this.mr[(m << 4) + M_INHASH], m);
    this.outIdx.remove(this.mr[(m << 4) + M_OUTHASH], m);
    this.alloc.release(this.mr[(m << 4) + M_PROTO], this.mr[(m << 4) + M_POOL], this.mr[(m << 4) + M_OUTPORT], now, quarantine);
    this.subDec(this.mr[(m << 4) + M_IN]);
    this.mr[(m << 4) + M_LIVE] = 0;
    this.mr[(m << 4) + M_NEXT] = this.mFree;
    this.mFree = m;
    this.mappings--;
  }

  /**
   * Frees mapping m if it holds no session (its packet was refused). A fresh
   * mapping never carried a packet, so its port is free at once; an older
   * one's port goes to quarantine.
   */
  private releaseIfEmpty(m: number, now: number, fresh: boolean): void {
    if (this.mr[(m << 4) + M_LIVE] === 0 || this.mr[(m << 4) + M_SESS] !== 0) return;
    this.freeMapping(m, now, !fresh);
    this.cv[NatCounter.nat_mapping_expired]++;
  }

  /** The session of an outbound packet: found, restarted in place when past its deadline, or created. */
  private outboundSession(m: number, rem: number, rport: number): number {
    const now = this.now;
    const s = this.findSession(m, rem, rport);
    if (s >= 0) {
      if (this.sf[(s << 3) + SF_DEADLINE] <= now) {
        // Same key: restart in place rather than free and re-insert.
        this.cv[NatCounter.nat_session_expired]++;
        this.cv[NatCounter.nat_session_created]++;
        this.initSession(s, now, true);
      }
      return s;
    }
    if (this.mr[(m << 4) + M_SESS] >= this.cfg.maxSessPerMap) {
      // Pinned so that expiring dead sessions cannot free m under us.
      this.mr[(m << 4) + M_SESS]++;
      this.pruneSessions(m, now);
      this.mr[(m << 4) + M_SESS]--;
    }
    return this.newSession(m, rem, rport, now, true);
  }

  /**
   * The session an inbound packet from rem:rport to mapping m may use:
   * its live session, or a new one if the filter admits the remote
   * (RFC 4787 REQ-8). Walks the mapping's sessions (bounded by
   * maxSessionsPerMapping) to expire dead ones and find the remote's
   * address; the mapping dies here when none is left (ADMIT_GONE).
   */
  private admitInbound(m: number, rem: number, rport: number): number {
    const now = this.now;
    const s = this.findSession(m, rem, rport);
    if (s >= 0 && this.sf[(s << 3) + SF_DEADLINE] > now) return s;
    const f = this.cfg.filtering;
    let admit = f === 0;
    let x = this.mr[(m << 4) + M_HEAD];
    let budget = this.cfg.maxSessPerMap + 1;
    while (x >= 0 && budget-- > 0) {
      const nx = this.sr[(x << 4) + S_NEXT];
      if (this.sf[(x << 3) + SF_DEADLINE] <= now) this.expireSession(x, now);
      else if (f === 1 && this.sr[(x << 4) + S_REM] === rem) admit = true;
      x = nx;
    }
    if (this.mr[(m << 4) + M_LIVE] === 0) return ADMIT_GONE;
    if (!admit) return ADMIT_FILTERED;
    const ns = this.newSession(m, rem, rport, now, false);
    return ns < 0 ? ADMIT_REFUSED : ns;
  }

  /** Expires the dead sessions of m (bounded walk). */
  private pruneSessions(m: number, now: number): void {
    let x = this.mr[(m << 4) + M_HEAD];
    let budget = this.cfg.maxSessPerMap + 1;
    while (x >= 0 && budget-- > 0) {
      const nx = this.sr[(x << 4) + S_NEXT];
      if (this.sf[(x << 3) + SF_DEADLINE] <= now) this.expireSession(x, now);
      x = nx;
    }
  }

  private newSession(m: number, rem: number, rport: number, now: number, outbound: boolean): number {
    const cv = this.cv;
    if (this.mr[(m << 4) + M_SESS] >= this.cfg.maxSessPerMap) {
      cv[NatCounter.nat_drop_session_limit]++;
      return -1;
    }
    const s = this.sFree;
    if (s < 0) {
      cv[NatCounter.nat_drop_session_table_full]++;
      return -1;
    }
    const h = this.sessHash(m, rem, rport);
    if (!this.sIdx.insert(h, s)) {
      cv[NatCounter.nat_drop_session_table_full]++;
      return -1;
    }
    this.sFree = this.sr[(s << 4) + S_NEXT];
    this.sr[(s << 4) + S_MAP] = m;
    this.sr[(s << 4) + S_REM] = rem;
    this.sr[(s << 4) + S_REMPORT] = rport;
    this.sr[(s << 4) + S_HASH] = h;
    this.sr[(s << 4) + S_LIVE] = 1;
    this.initSession(s, now, outbound);
    // Link at the head of the mapping's list.
    const head = this.mr[(m << 4) + M_HEAD];
    this.sr[(s << 4) + S_NEXT] = head;
    this.sr[(s << 4) + S_PREV] = -1;
    if (head >= 0) this.sr[(head << 4) + S_PREV] = s;
    this.mr[(m << 4) + M_HEAD] = s;
    this.mr[(m << 4) + M_SESS]++;
    this.sessions++;
    cv[NatCounter.nat_session_created]++;
    return s;
  }

  private initSession(s: number, now: number, outbound: boolean): void {
    this.sr[(s << 4) + S_TCP] = 0;
    this.sr[(s << 4) + S_LIVE] = outbound ? 3 : 1; // bit 1: opened by an outbound packet
    this.sf[(s << 3) + SF_LAST] = now;
    this.sf[(s << 3) + SF_DEADLINE] = now + this.timeoutOf(this.mr[(this.sr[(s << 4) + S_MAP] << 4) + M_PROTO], 0);
    this.sf[(s << 3) + SF_PKTS_OUT] = 0;
    this.sf[(s << 3) + SF_PKTS_IN] = 0;
  }

  private timeoutOf(np: number, tcpBits: number): number {
    if (np === NatProto.UDP) return this.cfg.tUdp;
    if (np === NatProto.ICMP) return this.cfg.tIcmp;
    return tcpEstablished(tcpBits) ? this.cfg.tTcpEst : this.cfg.tTcpTrans;
  }

  /**
   * A packet of session s: TCP state (RFC 7857 2.1: established once SYN
   * was seen both ways; transitory again after FIN both ways, or after RST
   * (RFC 7857 2.2: the session is kept for the transitory timeout, not
   * deleted), and the deadline: refreshed when `refresh`, else only ever
   * shortened by a state change.
   */
  private touch(s: number, np: number, outbound: boolean, tf: number, refresh: boolean): void {
    const now = this.now;
    let bits = this.sr[(s << 4) + S_TCP];
    if (np === NatProto.TCP && tf !== 0) {
      if ((tf & TF_RST) !== 0) {
        bits |= T_RST;
      } else {
        if ((tf & (TF_SYN | TF_ACK)) === TF_SYN && (bits & (T_RST | T_FIN_OUT | T_FIN_IN)) !== 0) {
          // A new connection on a closed 4-tuple (RFC 9293 3.6.1 TIME-WAIT reuse).
          bits = 0;
        }
        if ((tf & TF_SYN) !== 0) bits |= outbound ? T_SYN_OUT : T_SYN_IN;
        if ((tf & TF_FIN) !== 0) bits |= outbound ? T_FIN_OUT : T_FIN_IN;
      }
      this.sr[(s << 4) + S_TCP] = bits;
    }
    const d = now + this.timeoutOf(np, bits);
    if (refresh || d < this.sf[(s << 3) + SF_DEADLINE]) this.sf[(s << 3) + SF_DEADLINE] = d;
    if (refresh) this.sf[(s << 3) + SF_LAST] = now;
    this.sf[(s << 3) + (outbound ? SF_PKTS_OUT : SF_PKTS_IN)]++;
  }

  private expireSession(s: number, now: number): void {
    this.sIdx.remove(this.sr[(s << 4) + S_HASH], s);
    const m = this.sr[(s << 4) + S_MAP];
    const p = this.sr[(s << 4) + S_PREV], nx = this.sr[(s << 4) + S_NEXT];
    if (p >= 0) this.sr[(p << 4) + S_NEXT] = nx;
    else this.mr[(m << 4) + M_HEAD] = nx;
    if (nx >= 0) this.sr[(nx << 4) + S_PREV] = p;
    this.sr[(s << 4) + S_LIVE] = 0;
    this.sr[(s << 4) + S_NEXT] = this.sFree;
    this.sFree = s;
    this.sessions--;
    this.cv[NatCounter.nat_session_expired]++;
    if (--this.mr[(m << 4) + M_SESS] === 0) {
      this.freeMapping(m, now, true);
      this.cv[NatCounter.nat_mapping_expired]++;
    }
  }

  /** Visits `budget` session records from a rotating cursor and expires those past their deadline. */
  private sweep(now: number, budget: number): void {
    const cap = this.sessionCapacity;
    let c = this.sweepCursor;
    for (let v = 0; v < budget; v++) {
      if (this.sr[(c << 4) + S_LIVE] !== 0 && this.sf[(c << 3) + SF_DEADLINE] <= now) this.expireSession(c, now);
      c = c + 1 === cap ? 0 : c + 1;
    }
    this.sweepCursor = c;
  }

  // ---- subscribers ----

  private subFind(a: number): number {
    const mask = this.subMask;
    let s = fmix32(a ^ this.seed) & mask;
    for (let p = 0; p < this.subProbe; p++) {
      if (this.subUsed[s] === 0) return -1;
      if (this.subKey[s] === a) return s;
      s = (s + 1) & mask;
    }
    return -1;
  }

  private subInc(a: number, found: number): boolean {
    if (found >= 0) {
      this.subCount[found]++;
      return true;
    }
    const mask = this.subMask;
    let s = fmix32(a ^ this.seed) & mask;
    for (let p = 0; p < this.subProbe; p++) {
      if (this.subUsed[s] === 0) {
        this.subUsed[s] = 1;
        this.subKey[s] = a;
        this.subCount[s] = 1;
        this.subscribers++;
        return true;
      }
      s = (s + 1) & mask;
    }
    return false;
  }

  private subDec(a: number): void {
    const s = this.subFind(a);
    if (s < 0) return;
    if (--this.subCount[s] !== 0) return;
    // Backward-shift deletion.
    const mask = this.subMask, seed = this.seed;
    let hole = s, j = s;
    for (;;) {
      j = (j + 1) & mask;
      if (this.subUsed[j] === 0) break;
      const home = fmix32(this.subKey[j] ^ seed) & mask;
      if (((j - home) & mask) >= ((j - hole) & mask)) {
        this.subKey[hole] = this.subKey[j];
        this.subCount[hole] = this.subCount[j];
        hole = j;
      }
    }
    this.subUsed[hole] = 0;
    this.subscribers--;
  }

  /** Mappings held by an inside address (control plane, tests). */
  mappingsOf(inAddr: number): number {
    const s = this.subFind(inAddr | 0);
    return s < 0 ? 0 : this.subCount[s];
  }

  // ======================================================================
  // Control plane (allocation fine)
  // ======================================================================

  /** Advances the clock and runs every expiry now (off the hot path). */
  expire(nowSec: number, counters?: NatCounters): void {
    if (counters) {
      this.cv = counters.values;
      this.frags.cv = counters.values;
    }
    if (nowSec > this.clock) this.clock = nowSec;
    const now = this.clock;
    this.now = now;
    if (this.synCount !== 0) this.drainSynHold(now);
    this.alloc.drain(now);
    this.frags.sweep(now, this.frags.capacity * 2);
    this.sweep(now, this.sessionCapacity);
  }

  /** Every live mapping with its sessions, for `portcullis nat list`. */
  listMappings(nowSec: number = this.clock): NatMappingInfo[] {
    const out: NatMappingInfo[] = [];
    for (let m = 0; m < this.capacity; m++) {
      if (this.mr[(m << 4) + M_LIVE] === 0) continue;
      const np = this.mr[(m << 4) + M_PROTO];
      const remotes: NatRemoteInfo[] = [];
      let last = -Infinity, deadline = -Infinity, est = false;
      for (let s = this.mr[(m << 4) + M_HEAD]; s >= 0; s = this.sr[(s << 4) + S_NEXT]) {
        const bits = this.sr[(s << 4) + S_TCP];
        const e = np === NatProto.TCP && tcpEstablished(bits);
        if (e) est = true;
        if (this.sf[(s << 3) + SF_LAST] > last) last = this.sf[(s << 3) + SF_LAST];
        if (this.sf[(s << 3) + SF_DEADLINE] > deadline) deadline = this.sf[(s << 3) + SF_DEADLINE];
        remotes.push({
          address: formatIpv4(this.sr[(s << 4) + S_REM]),
          port: this.sr[(s << 4) + S_REMPORT],
          state: np === NatProto.TCP ? tcpStateName(bits) : 'active',
          outbound: (this.sr[(s << 4) + S_LIVE] & 2) !== 0,
          packetsOut: this.sf[(s << 3) + SF_PKTS_OUT],
          packetsIn: this.sf[(s << 3) + SF_PKTS_IN],
          idle: nowSec - this.sf[(s << 3) + SF_LAST],
          expiresAt: this.sf[(s << 3) + SF_DEADLINE],
        });
      }
      out.push({
        id: m,
        proto: NAT_PROTO_NAMES[np],
        insideAddress: formatIpv4(this.mr[(m << 4) + M_IN]),
        insidePort: this.mr[(m << 4) + M_INPORT],
        outsideAddress: formatIpv4(this.mr[(m << 4) + M_OUT]),
        outsidePort: this.mr[(m << 4) + M_OUTPORT],
        state: np === NatProto.TCP ? (est ? 'established' : 'transitory') : 'active',
        createdAt: this.mCreated[m],
        idle: nowSec - last,
        expiresAt: deadline,
        remotes,
      });
    }
    return out;
  }

  /** Table occupancy and allocator state (control plane, /metrics gauges). */
  stats(): Record<string, number> {
    return {
      mappings: this.mappings,
      sessions: this.sessions,
      subscribers: this.subscribers,
      mapping_capacity: this.capacity,
      session_capacity: this.sessionCapacity,
      ports_quarantined: this.alloc.quarantined,
      syn_held: this.heldSyns(),
      frag_trains: this.frags.size,
      frag_held: this.frags.held,
    };
  }

  /** Typed-array bytes held (records, indices, subscribers, allocator, fragment arena, SYN hold). */
  memoryBytes(): number {
    return this.mr.byteLength + this.mCreated.byteLength + this.inIdx.pairs.byteLength + this.outIdx.pairs.byteLength +
      this.sr.byteLength + this.sIdx.pairs.byteLength + this.subKey.byteLength + this.subCount.byteLength + this.subUsed.byteLength +
      this.alloc.memoryBytes() + this.frags.memoryBytes() + this.synBytes.byteLength;
  }

  /** Outside port (or ICMP identifier) of mapping m. */
  outsidePortOf(m: number): number {
    return this.mr[(m << 4) + M_OUTPORT];
  }
  /** Outside address of mapping m (unsigned). */
  outsideAddressOf(m: number): number {
    return this.mr[(m << 4) + M_OUT] >>> 0;
  }
  insidePortOf(m: number): number {
    return this.mr[(m << 4) + M_INPORT];
  }
  insideAddressOf(m: number): number {
    return this.mr[(m << 4) + M_IN] >>> 0;
  }

}

function tcpEstablished(bits: number): boolean {
  return (bits & (T_SYN_OUT | T_SYN_IN)) === (T_SYN_OUT | T_SYN_IN) && (bits & T_RST) === 0 && (bits & (T_FIN_OUT | T_FIN_IN)) !== (T_FIN_OUT | T_FIN_IN);
}

function tcpStateName(bits: number): string {
  if ((bits & T_RST) !== 0) return 'reset';
  if ((bits & (T_FIN_OUT | T_FIN_IN)) === (T_FIN_OUT | T_FIN_IN)) return 'closed';
  if (tcpEstablished(bits)) return (bits & (T_FIN_OUT | T_FIN_IN)) !== 0 ? 'half-closed' : 'established';
  if ((bits & T_SYN_OUT) !== 0) return 'syn-out';
  if ((bits & T_SYN_IN) !== 0) return 'syn-in';
  return 'transitory';
}

