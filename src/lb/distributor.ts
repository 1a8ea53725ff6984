// The workload distributor's packet path (DESIGN.md "lb/"): packets to a
// virtual address (VIP:port) go to one of the service's targets, chosen by
// Maglev over the flow hash on a flow's first packet and remembered per flow
// id, so an established flow stays on its target when the table changes
// (Maglev paper §3.4 keeps most flows in place; the per-flow memory, like
// Katran's LRU connection table, keeps all of them).
//
// Four ways to hand a packet to its target:
// - nat: destination rewritten to the target's address:port in place, with
//   RFC 1624 incremental checksums whose deltas are computed per target on
//   the control plane (STYLE.md 6, after VPP NAT44-ED); replies from the
//   target get their source rewritten back to VIP:port.
// - dsr-l2: only the destination MAC changes (IPVS "DR": the target holds
//   the VIP on a local interface and answers the client directly).
// - dsr-ipip: IPv4-in-IPv4 (RFC 2003) to the target. The batch has no
//   headroom, so the encapsulated packet is written into the caller's `out`
//   batch and the original is marked DROP (consumed).
// - dsr-gue: the inner packet in UDP (draft-ietf-intarea-gue), also into
//   `out`: outer IPv4 + UDP to the service's GUE port (6080 by default, as
//   Katran) + the 4-byte GUE header (variant 0) or none (variant 1, direct
//   IP: Katran's wire format, the same bytes as Linux FOU with ipproto 4).
//   See encapsulateGue() for the field choices.
//
// Flow memory: two Int32Arrays indexed by the flow table's stable flow id
// (src/flow/flow-table.ts). `stTarget` holds target slot + 1 for a forward
// (client to VIP) flow, -(slot + 1) for the reverse flow of a NAT target's
// replies, 0 for nothing. `stHash` holds flowHash4 of the packet tuple the
// entry was made for: a flow id reused by another flow carries another hash,
// so it never inherits the old flow's target (the generation check).
//
// Replies in NAT mode: after the rewrite the target answers target -> client,
// a 5-tuple the flow table keys apart from client -> VIP. The first reply of
// such a flow finds its target through a small index of NAT targets
// (address, port, protocol), then the forward flow through
// FlowTable.lookup4(client -> VIP) and checks that flow's entry names this
// target; the answer is remembered under the reply flow's id, so later
// replies cost one hash and two reads.
//
// Targets live in slots that are never reused for another endpoint: a target
// removed from a service leaves the Maglev table (new flows avoid it) but
// keeps its slot, so established flows still reach it. Slots are keyed by
// (service, mode, target id, address, port, MAC).
//
// Per-target limits (TCP services only; see "Limits" below the Distributor
// class header): maxconn, maxqueue and a queue timeout per target slot, and
// per service what to do on each event (onFull: queue | redispatch | backup |
// reject; onQueueFull and onQueueTimeout: redispatch | backup | reject).
//
// Hot path: no allocation per packet (STYLE.md 3); imported functions and
// enum values are copied into module constants (see src/flow/flow-table.ts).

import { Batch, Verdict } from '../io/batch.js';
import { MetaFlag, type Meta } from '../wire/meta.js';
import { parseIpv4 } from '../wire/ipv4.js';
import { ParseStatus } from '../wire/status.js';
import type { FlowTable } from '../flow/flow-table.js';
import * as hash from '../flow/hash.js';
import * as cks from '../wire/checksum.js';
import { MaglevTable, MAGLEV_FLOW_SEED, NO_BACKEND } from './maglev.js';
import * as icmpBuilder from '../nat/icmp-builder.js';

const mix32 = hash.mix32, fmix32 = hash.fmix32;
const fold = cks.foldSmall, addrDelta = cks.delta32, wordDelta = cks.delta16;
const applyDelta = cks.applyDelta, applyDeltaUdp = cks.applyDeltaUdp;
const F_L3 = MetaFlag.L3;
const F_L4 = MetaFlag.L4;
const F_PORTS = MetaFlag.PORTS;
const F_FRAGMENT = MetaFlag.FRAGMENT;
const S_OK = ParseStatus.OK;
const V_FORWARD = Verdict.FORWARD;
const V_DROP = Verdict.DROP;
const V_HOLD = Verdict.HOLD;
const TCP_RST_BYTES = icmpBuilder.TCP_RST_BYTES, encodeTcpRstFor = icmpBuilder.encodeTcpRstFor;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_IPIP = 4;
const LINK_RAW = 101;

// ---- counters (one list, STYLE.md 8; prefixed `lb_` like nat_) ----

export const DIST_COUNTER_DEFS = [
  ['lb_distributed', 'packets to a VIP:port handed to a target (rewritten, MAC-swapped or encapsulated)'],
  ['lb_flow_assigned', 'flows given a target by Maglev on their first packet'],
  ['lb_sticky_hit', 'packets sent to the target their flow was given earlier'],
  ['lb_reply_rewritten', 'NAT replies from a target rewritten to come from VIP:port'],
  ['lb_no_target', 'packets to a VIP:port dropped: every target drained (weight 0) or none configured'],
  ['lb_out_full', 'dsr-ipip / dsr-gue packets dropped: no out batch, or it had no room for the encapsulated copy'],
  ['lb_not_for_vip', 'packets left untouched: not to a VIP:port and not a reply of a NAT flow'],
  ['lb_untracked', 'packets to a VIP:port without a flow id (flow table refused them): target chosen without memory'],
  ['lb_drop_fragment', 'fragments to a VIP:port dropped (later fragments carry no ports to follow the first)'],
  ['lb_bad_packet', 'packets to a VIP:port left untouched: a parse error or a transport header not fully captured'],
  ['lb_drop_no_l2', 'dsr-l2 packets dropped: not on an Ethernet link, so there is no MAC to rewrite'],
  ['lb_syn_rechosen', 'SYNs of a flow id that already had a target, given a fresh Maglev choice (a new connection on a reused tuple, as Katran does)'],
  ['lb_dsr_return', 'replies from a DSR or local VIP:port passed on untouched (no NAT, no flow memory needed)'],
  ['lb_local', 'packets to a locally terminated VIP:port (TLS terminator) handed to the host untouched'],
  // Per-target limits (TCP services with a maxconn; see "Limits" in distributor.ts).
  ['lb_limit_queued', 'SYNs held in their target\'s queue: the target was at maxconn (onFull queue)'],
  ['lb_limit_dequeued', 'held SYNs sent on to their target when one of its connections ended'],
  ['lb_limit_redispatched', 'new connections sent to another target with room (a redispatch action on any event)'],
  ['lb_limit_to_backup', 'new connections sent to a backup target (a backup action on any event)'],
  ['lb_limit_rejected', 'new connections refused: SYN dropped, TCP RST to the client (reject, or redispatch/backup with no room anywhere)'],
  ['lb_limit_queue_full', 'SYNs that found their target\'s queue full (maxqueue, the hold arena used up, or a SYN too long to hold)'],
  ['lb_limit_queue_timeout', 'held SYNs that waited longer than their target\'s queue timeout (then onQueueTimeout)'],
  ['lb_limit_queued_retransmit', 'retransmitted SYNs of a connection already held, dropped (the held copy stands for them)'],
  ['lb_limit_abandoned', 'held SYNs discarded: the client reset, or its flow left the flow table while it waited'],
  ['lb_limit_rst_limited', 'resets for refused connections not sent: rate limit, or no room in the originated batch'],
  ['lb_conn_counted', 'connections counted against a target of a limited service (from their assigned SYN)'],
  ['lb_conn_closed', 'counted connections ended by the client\'s FIN or RST, or by the target\'s RST (NAT replies)'],
  ['lb_conn_expired', 'counted connections ended by the sweep: their flow left the flow table, or its id now holds another flow'],
  ['lb_conn_reused', 'counted connections ended by a new connection (a SYN of another tuple or ISN) on the same flow id'],
] as const;

export type DistCounterName = (typeof DIST_COUNTER_DEFS)[number][0];
export const DistCounter = Object.fromEntries(DIST_COUNTER_DEFS.map((d, i) => [d[0], i])) as { readonly [K in DistCounterName]: number };

export class DistCounters {
  readonly values = new Float64Array(DIST_COUNTER_DEFS.length);
  get(name: DistCounterName): number {
    return this.values[DistCounter[name]];
  }
  toObject(): Record<string, number> {
    const o: Record<string, number> = {};
    for (let i = 0; i < DIST_COUNTER_DEFS.length; i++) o[DIST_COUNTER_DEFS[i][0]] = this.values[i];
    return o;
  }
}

const C_DISTRIBUTED = DistCounter.lb_distributed;
const C_ASSIGNED = DistCounter.lb_flow_assigned;
const C_STICKY = DistCounter.lb_sticky_hit;
const C_REPLY = DistCounter.lb_reply_rewritten;
const C_NO_TARGET = DistCounter.lb_no_target;
const C_OUT_FULL = DistCounter.lb_out_full;
const C_NOT_VIP = DistCounter.lb_not_for_vip;
const C_UNTRACKED = DistCounter.lb_untracked;
const C_FRAGMENT = DistCounter.lb_drop_fragment;
const C_BAD = DistCounter.lb_bad_packet;
const C_NO_L2 = DistCounter.lb_drop_no_l2;
const C_SYN_RECHOSEN = DistCounter.lb_syn_rechosen;
const C_DSR_RETURN = DistCounter.lb_dsr_return;
const C_LOCAL = DistCounter.lb_local;
const C_Q_QUEUED = DistCounter.lb_limit_queued;
const C_Q_DEQUEUED = DistCounter.lb_limit_dequeued;
const C_Q_REDISPATCHED = DistCounter.lb_limit_redispatched;
const C_Q_BACKUP = DistCounter.lb_limit_to_backup;
const C_Q_REJECTED = DistCounter.lb_limit_rejected;
const C_Q_FULL = DistCounter.lb_limit_queue_full;
const C_Q_TIMEOUT = DistCounter.lb_limit_queue_timeout;
const C_Q_RETRANSMIT = DistCounter.lb_limit_queued_retransmit;
const C_Q_ABANDONED = DistCounter.lb_limit_abandoned;
const C_RST_LIMITED = DistCounter.lb_limit_rst_limited;
const C_CONN_COUNTED = DistCounter.lb_conn_counted;
const C_CONN_CLOSED = DistCounter.lb_conn_closed;
const C_CONN_EXPIRED = DistCounter.lb_conn_expired;
const C_CONN_REUSED = DistCounter.lb_conn_reused;

// ---- configuration (plain data; control/ maps YAML onto it) ----

/**
 * LOCAL: the VIP:port is served by this host (the TLS terminator listens on
 * it): packets to it and from it pass untouched and are marked so that the
 * NAT leaves them alone and the caller hands them to the host's stack.
 */
export const DistMode = { NAT: 0, DSR_L2: 1, DSR_IPIP: 2, LOCAL: 3, DSR_GUE: 4 } as const;
const M_NAT = DistMode.NAT;
const M_DSR_L2 = DistMode.DSR_L2;
const M_LOCAL = DistMode.LOCAL;
const M_DSR_GUE = DistMode.DSR_GUE;
const MODE_OF = { nat: DistMode.NAT, 'dsr-l2': DistMode.DSR_L2, 'dsr-ipip': DistMode.DSR_IPIP, local: DistMode.LOCAL, 'dsr-gue': DistMode.DSR_GUE } as const;

/** GUE destination port by default: Katran's GUE_DPORT (configurable per service). */
export const GUE_DEFAULT_PORT = 6080;
/** Per-slot GUE flags (tGueFlags). */
const GUE_V1 = 1, GUE_CSUM = 2;
const TTL_OUTER = 64;

/**
 * What distributeBatch did with packet i (Distributor.handled[i]); the
 * caller keeps these packets away from the NAT.
 * ROUTED: addresses final (rewritten to a target, rewritten back to the VIP,
 * or a DSR/local reply passed on): route by the destination address.
 * L2: dsr-l2, the destination MAC is the target's: only the source MAC is
 * the egress interface's. LOCAL: for this host's own stack.
 */
export const Handled = { NONE: 0, ROUTED: 1, L2: 2, LOCAL: 3 } as const;
const H_NONE = Handled.NONE, H_ROUTED = Handled.ROUTED, H_L2 = Handled.L2, H_LOCAL = Handled.LOCAL;
const TCP_FIN = 0x01, TCP_SYN = 0x02, TCP_RST = 0x04, TCP_ACK = 0x10;

/** What a limited service does on a limit event (numeric on the hot path, STYLE.md 4; the names are src/lb/queue.ts's). */
export const LimitAction = { QUEUE: 0, REDISPATCH: 1, BACKUP: 2, REJECT: 3 } as const;
const A_QUEUE = LimitAction.QUEUE, A_REDISPATCH = LimitAction.REDISPATCH, A_BACKUP = LimitAction.BACKUP;
const ACTION_OF = { queue: LimitAction.QUEUE, redispatch: LimitAction.REDISPATCH, backup: LimitAction.BACKUP, reject: LimitAction.REJECT } as const;
/** Bytes of one hold slot: an Ethernet (+ two VLAN tags) + IPv4 + TCP SYN with a full set of options fits. */
export const HOLD_SLOT_BYTES = 192;
/** Maglev probes with derived hashes before the deterministic walk over the service's targets (redispatch). */
export const REDISPATCH_PROBES = 8;
/** The sweep of counted connections runs every SWEEP_EVERY batches over at most SWEEP_BUDGET of them. */
const SWEEP_EVERY = 8;
const SWEEP_BUDGET = 512;
/** Queue timeouts handled per batch at most (the rest wait for the next one). */
const TIMEOUT_BUDGET = 256;

export interface DistTarget {
  /** Caller's id, unique within the service. */
  id: number;
  /** IPv4 address (dotted quad). */
  address: string;
  port: number;
  /** Next-hop MAC "aa:bb:cc:dd:ee:ff": required for dsr-l2; for dsr-ipip the outer frame's destination when given. */
  mac?: string;
  /** Relative share of new flows; 0 drains (established flows stay). For a backup target, 0 leaves it out. */
  weight: number;
  /** TCP services: concurrent connections (0 or absent: unlimited). */
  maxconn?: number;
  /** SYNs held while the target is at maxconn (default 1024; 0: no queue, a full target goes straight to onQueueFull). */
  maxqueue?: number;
  /** Longest wait of a held SYN in ms (default 5000; 0: no limit). */
  queueTimeoutMs?: number;
}

export type LimitActionName = keyof typeof ACTION_OF;

/** Actions on the limit events of a TCP service (defaults: queue, reject, reject, as config.ts). */
export interface DistLimits {
  /** A new connection's target is at maxconn. */
  onFull?: LimitActionName;
  /** ...and its queue is full. */
  onQueueFull?: Exclude<LimitActionName, 'queue'>;
  /** A held SYN waited longer than its target's queue timeout. */
  onQueueTimeout?: Exclude<LimitActionName, 'queue'>;
}

export interface DistService {
  vip: string;
  port: number;
  proto: 6 | 17;
  mode: 'nat' | 'dsr-l2' | 'dsr-ipip' | 'local' | 'dsr-gue';
  /** Empty for mode 'local'. */
  targets: DistTarget[];
  /** dsr-gue only (defaults: port 6080, variant 0, checksum off); see encapsulateGue(). */
  gue?: GueOptions;
  /** TCP only: the limit actions (used when some target or backup has a maxconn). */
  limits?: DistLimits;
  /** TCP only: targets outside the Maglev table for the 'backup' action, tried in order (the first with room). */
  backupTargets?: DistTarget[];
}

export interface GueOptions {
  /** UDP destination port the targets' decapsulators listen on (default 6080). */
  port?: number;
  /** 0: a 4-byte GUE header (draft-ietf-intarea-gue variant 0, proto 4); 1: direct IP (variant 1, Katran's format). Default 0. */
  variant?: 0 | 1;
  /** Compute the UDP checksum (default false: 0, "no checksum", RFC 768). */
  checksum?: boolean;
}

export interface DistributorOptions {
  /** The flow table whose ids arrive in flowOf (its capacity sizes the flow memory; NAT replies look up the forward flow in it). */
  flows: FlowTable;
  /** Outer source address for dsr-ipip and dsr-gue (required when a service uses either). */
  localAddress?: string;
  /** Flow hash seed (the same on every node of a service). */
  seed?: number;
  /** Target slots kept over the life of the distributor (default 4096). */
  maxTargets?: number;
  /** Held SYNs at once over all targets (the hold arena, HOLD_SLOT_BYTES each; default 1024). */
  holdSlots?: number;
  /** Resets for refused connections per second at most (a token bucket in packet time; default 1000). */
  rstRate?: number;
}

/** What the hot path reads, built whole by configure() and swapped in (DESIGN.md "Control plane builds, data plane reads"). */
class Plan {
  /** VIP index: open addressing over (vip, port << 8 | proto) -> service. */
  readonly vKey: Int32Array;
  readonly vPP: Int32Array;
  readonly vSvc: Int32Array; // service + 1, 0 empty
  readonly vMask: number;
  /** Mode per service (DistMode). */
  readonly svcMode: Uint8Array;
  /** Per-service Maglev tables (target slots) and their sizes. */
  readonly tables: Int32Array[];
  readonly sizes: Int32Array;
  /** NAT target index for replies: (addr, port << 8 | proto) -> slot + 1. */
  readonly rKey: Int32Array;
  readonly rPP: Int32Array;
  readonly rSlot: Int32Array;
  readonly rMask: number;
  /** Limits per service: 1 when some target or backup has a maxconn (TCP only), and the three actions (LimitAction). */
  readonly svcLimited: Uint8Array;
  readonly svcOnFull: Uint8Array;
  readonly svcOnQFull: Uint8Array;
  readonly svcOnQTimeout: Uint8Array;
  /** Per service, ranges of `svcList`: its targets of weight > 0 (the redispatch walk) and its backups, in order. */
  readonly svcTStart: Int32Array;
  readonly svcTCount: Int32Array;
  readonly svcBStart: Int32Array;
  readonly svcBCount: Int32Array;
  svcList: Int32Array;
  constructor(vSize: number, rSize: number, services: number) {
    this.vKey = new Int32Array(vSize);
    this.vPP = new Int32Array(vSize);
    this.vSvc = new Int32Array(vSize);
    this.vMask = vSize - 1;
    this.svcMode = new Uint8Array(services);
    this.tables = new Array<Int32Array>(services);
    this.sizes = new Int32Array(services);
    this.rKey = new Int32Array(rSize);
    this.rPP = new Int32Array(rSize);
    this.rSlot = new Int32Array(rSize);
    this.rMask = rSize - 1;
    this.svcLimited = new Uint8Array(services);
    this.svcOnFull = new Uint8Array(services);
    this.svcOnQFull = new Uint8Array(services);
    this.svcOnQTimeout = new Uint8Array(services);
    this.svcTStart = new Int32Array(services);
    this.svcTCount = new Int32Array(services);
    this.svcBStart = new Int32Array(services);
    this.svcBCount = new Int32Array(services);
    this.svcList = new Int32Array(0);
  }
}

function pow2AtLeast(n: number): number {
  let p = 16;
  while (p < n) p <<= 1;
  return p;
}
function keyHash(a: number, b: number): number {
  return fmix32(mix32(mix32(0x9747b28c, a), b));
}
function parseMac(s: string, where: string): Uint8Array {
  const m = /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(s);
  if (!m) throw new TypeError(`${where} must be a MAC address like "02:00:00:00:00:01", got ${JSON.stringify(s)}`);
  return Uint8Array.from(m.slice(1).map((x) => parseInt(x, 16)));
}
function parseAddr(s: string, where: string): number {
  try {
    return parseIpv4(s) | 0;
  } catch {
    throw new TypeError(`${where} must be an IPv4 address, got ${JSON.stringify(s)}`);
  }
}

/** Validated GUE options of a service: port and GUE_V1 | GUE_CSUM flags. */
function gueOf(g: GueOptions | undefined, where: string): { port: number; flags: number } {
  const port = g?.port ?? GUE_DEFAULT_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`${where}.port must be 1..65535, got ${port}`);
  const variant = g?.variant ?? 0;
  if (variant !== 0 && variant !== 1) throw new RangeError(`${where}.variant must be 0 (GUE header) or 1 (direct IP), got ${String(variant)}`);
  return { port, flags: (variant === 1 ? GUE_V1 : 0) | (g?.checksum === true ? GUE_CSUM : 0) };
}

/** A limit action name as LimitAction; throws naming the key and the accepted values. */
function actionOf(name: unknown, where: string, allowQueue: boolean): number {
  const ok = allowQueue ? ['queue', 'redispatch', 'backup', 'reject'] : ['redispatch', 'backup', 'reject'];
  if (typeof name !== 'string' || !ok.includes(name)) throw new RangeError(`${where} must be one of ${ok.map((x) => `'${x}'`).join(', ')}, got ${JSON.stringify(name)}`);
  return ACTION_OF[name as LimitActionName];
}

/** flowHash4 of maglev.ts, written over module-local mix32/fmix32 (same value). */
function flowHash(src: number, dst: number, sport: number, dport: number, proto: number, seed: number): number {
  let h = seed;
  h = mix32(h, src);
  h = mix32(h, dst);
  h = mix32(h, ((sport & 0xffff) << 16) | (dport & 0xffff));
  h = mix32(h, proto);
  return fmix32(h ^ 16);
}

/** Stands in for a Maglev table in a local service (never read: local services have no targets). */
const LOCAL_TABLE = { table: new Int32Array(1).fill(NO_BACKEND), size: 1 };

// ---- Limits ----
//
// The events and actions are HAProxy's (maxconn, maxqueue, timeout queue,
// redispatch, backup; src/lb/queue.ts applies them to the TLS terminator's
// proxied connections); here they act on packets, the way a kernel-bypass
// load balancer would:
//
// - Counting. IPVS counts a connection against its real server from
//   ip_vs_bind_dest (the scheduled first packet) to the expiry of its
//   connection entry, and marks the server IP_VS_DEST_F_OVERLOAD when the
//   count reaches u_threshold, after which schedulers skip it (ip_vs_mh's
//   fallback rehashes). Here a TCP connection of a limited service counts
//   against its target slot (tConns) from its assigned SYN until the
//   client's FIN or RST, the target's RST on a NAT reply, a new connection on
//   its flow id (a SYN with another tuple hash, or the same tuple with
//   another initial sequence number: the generation check), or until the
//   flow table no longer has it: every SWEEP_EVERY batches a bounded sweep
//   walks the counted flows (a dense list) and ends those whose id is no
//   longer live, or now holds another flow (FlowTable.firstSeen changed).
//   maxconn is a hard bound, not IPVS's advisory threshold. DSR targets
//   answer the client directly, so a target's own close or reset is not seen:
//   such a connection counts until the client's FIN/RST or its flow expires.
//   Half-open connections (SYNs never answered) count until the flow table
//   expires them (tcpSynSent), as IPVS counts its inactive connections.
// - onFull (a SYN whose target is at maxconn, or has SYNs waiting: no
//   overtaking the queue):
//   queue: the SYN is copied into a fixed HOLD_SLOT_BYTES slot of one
//     preallocated hold arena (like the NAT's unsolicited-SYN hold, a Batch
//     whose slot k sits at k * HOLD_SLOT_BYTES) and linked at the tail of
//     its target's FIFO (doubly linked through node arrays, so a client's
//     reset unlinks it in O(1)); verdict HOLD. When a connection of that
//     target ends, the head is checked (its flow still live with the same
//     firstSeen), rewritten for the target and appended to the caller's
//     `out` batch (verdict FORWARD: the appliance sends it like a dsr-ipip
//     copy; outKind says how), in the same call. The client retransmits its
//     SYN after ~1 s, 3 s...: a SYN of a flow already held (same id, same
//     hash) is dropped (lb_limit_queued_retransmit) and never takes a second
//     slot. A held SYN older than its target's queue timeout gets
//     onQueueTimeout (checked at the end of every batch and by
//     serviceLimits()). A full queue (maxqueue, or the arena used up, or a
//     SYN longer than a slot) gives onQueueFull.
//   redispatch: the next candidate with room, as IPVS's MH fallback: up to
//     REDISPATCH_PROBES Maglev lookups with hashes derived from the flow
//     hash (fmix32(h ^ k * golden), k = 1, 2...), then a walk over the
//     service's targets of weight > 0 starting at h mod n. The candidates
//     and their order are a function of the flow hash and the table only, so
//     the choice is deterministic for a given set of counts, and bounded
//     (REDISPATCH_PROBES + n lookups); the flow memory keeps the connection
//     where it went. Nothing with room: reject.
//   backup: the first backup target (outside the Maglev table, in
//     configuration order) with room (HAProxy without allbackups); none:
//     reject.
//   reject: the SYN is dropped and a TCP RST (RFC 9293 3.10.7.1, from the
//     VIP:port) is written into the caller's `originated` batch (raw IPv4,
//     for RawTx), rate limited (rstRate per second in packet time).
// - UDP services are not limited (a configuration error): there is no
//   handshake to hold a first datagram against and no close to end a count,
//   only the flow table's idle timeout (300 s), so a count would measure that
//   timeout rather than the load on a target.
// - A packet the flow table did not track (no flow id) cannot be counted: it
//   is distributed as without limits (lb_untracked).
// Per-flow limit state (stConn, stSeq, stBorn, stNode, the counted list) and
// the hold arena are allocated at the first configure() with a limited
// service: a distributor without limits carries none of it, and its packets
// pay one predictable branch for FIN/RST packets on the sticky path.

export class Distributor {
  readonly flows: FlowTable;
  readonly seed: number;
  readonly localAddress: number;
  readonly maxTargets: number;
  readonly counters = new DistCounters();
  /** Flow memory, indexed by flow id (see the header). */
  readonly stTarget: Int32Array;
  readonly stHash: Int32Array;
  // Target slots (never reused for another endpoint).
  readonly tAddr: Int32Array;
  readonly tPort: Int32Array;
  readonly tVip: Int32Array;
  readonly tVport: Int32Array;
  readonly tMode: Uint8Array;
  readonly tProto: Uint8Array;
  readonly tHasMac: Uint8Array;
  readonly tMac: Uint8Array;
  /** Folded RFC 1624 deltas, forward (VIP:port -> target) for the IP header and the transport checksum. */
  readonly tD3: Int32Array;
  readonly tD4: Int32Array;
  /** Reply deltas (target -> VIP:port). */
  readonly rD3: Int32Array;
  readonly rD4: Int32Array;
  /** dsr-gue per slot: UDP destination port, GUE_V1 | GUE_CSUM flags, and the unfolded sums of the outer fields fixed per target. */
  readonly tGuePort: Uint16Array;
  readonly tGueFlags: Uint8Array;
  /** Outer IPv4 header words that do not change per packet: version/IHL, TTL/protocol, source, destination. */
  readonly tGueIpSum: Int32Array;
  /** UDP pseudo-header words fixed per target (RFC 768): source, destination, protocol, plus the destination port and the GUE header. */
  readonly tGueUdpSum: Int32Array;
  /** Limits per slot (set by configure for the slots of the current services). */
  readonly tMaxconn: Int32Array;
  readonly tMaxqueue: Int32Array;
  /** Seconds; 0: no limit. */
  readonly tQTimeout: Float64Array;
  /** Connections counted against the slot now. */
  readonly tConns: Int32Array;
  /** The slot's FIFO of held SYNs (hold nodes, -1 none) and its length. */
  readonly tQHead: Int32Array;
  readonly tQTail: Int32Array;
  readonly tQCount: Int32Array;
  /** True once a configure() had a limited service (the state below exists from then on). */
  limitsOn = false;
  /** Per flow id: slot + 1 the flow is counted against (0: not counted), the SYN's ISN, FlowTable.firstSeen when counted, hold node + 1 while held. */
  stConn: Int32Array = new Int32Array(0);
  stSeq: Int32Array = new Int32Array(0);
  stBorn: Float64Array = new Float64Array(0);
  stNode: Int32Array = new Int32Array(0);
  /** Counted flow ids, dense (cPos: index + 1 per flow id), for the sweep. */
  private cList: Int32Array = new Int32Array(0);
  private cPos: Int32Array = new Int32Array(0);
  private cCount = 0;
  private cCursor = 0;
  /** The hold arena: slot k at k * HOLD_SLOT_BYTES, with the packet's batch fields (capLen, origLen, ts, linkType, port). */
  readonly holdSlots: number;
  hold: Batch | null = null;
  private holdView: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
  /** Hold nodes: FIFO links, slot (-1 free), flow id, flow hash, ISN, firstSeen, time held, L3 offset in the frame. */
  private qNext: Int32Array = new Int32Array(0);
  private qPrev: Int32Array = new Int32Array(0);
  private qTarget: Int32Array = new Int32Array(0);
  private qFlow: Int32Array = new Int32Array(0);
  private qHash: Int32Array = new Int32Array(0);
  private qBorn: Float64Array = new Float64Array(0);
  private qTime: Float64Array = new Float64Array(0);
  private qL3: Uint16Array = new Uint16Array(0);
  private qSeq: Int32Array = new Int32Array(0);
  private qFree = -1;
  /** Held SYNs now (all targets). */
  heldCount = 0;
  private batchNo = 0;
  /** Time of the batch (packet time, the flow table's clock): a field, since a double argument is boxed per call. */
  private now = 0;
  /** The caller's batches during distributeBatch / serviceLimits (released SYNs, resets). */
  private bOut: Batch | null = null;
  private bRst: Batch | null = null;
  /** Reset token bucket (packet time). */
  readonly rstRate: number;
  private rstTokens: number;
  private rstTime = -Infinity;
  /**
   * Per packet appended to `out` by the last call, what it is (Handled):
   * ROUTED (encapsulated, or a released NAT SYN: route by the IPv4
   * destination) or L2 (a released dsr-l2 SYN: the destination MAC is the
   * target's already). Grown to out's capacity once.
   */
  outKind = new Uint8Array(0);
  /** Slots in use. */
  targetCount = 0;
  private readonly slotOf = new Map<string, number>();
  private readonly maglevs = new Map<string, MaglevTable>();
  private plan: Plan;
  /** Identification of the next outer IPIP header. */
  private ipId = 0;
  /**
   * DataViews over the last source and out arenas (dsr-gue copies the inner
   * packet 4 bytes at a time: about 3.5x faster than a byte loop, and unlike
   * Buffer#copy no view is made per packet). Remade only when an arena changes.
   */
  private srcArena: Buffer | null = null;
  private srcView: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
  private outArena: Buffer | null = null;
  private outView: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
  /** Services of the last configure(), for inspection. */
  services: DistService[] = [];
  /** Per packet of the last batch: what was done with it (Handled). Grown to the batch capacity once. */
  handled = new Uint8Array(0);

  constructor(opts: DistributorOptions) {
    this.flows = opts.flows;
    this.seed = (opts.seed ?? MAGLEV_FLOW_SEED) | 0;
    this.localAddress = opts.localAddress === undefined ? 0 : parseAddr(opts.localAddress, 'distributor: localAddress');
    const mt = opts.maxTargets ?? 4096;
    if (!Number.isInteger(mt) || mt < 1 || mt > 1 << 20) throw new RangeError(`distributor: maxTargets must be an integer from 1 to ${1 << 20}, got ${mt}`);
    this.maxTargets = mt;
    const cap = opts.flows.capacity;
    this.stTarget = new Int32Array(cap);
    this.stHash = new Int32Array(cap);
    this.tAddr = new Int32Array(mt);
    this.tPort = new Int32Array(mt);
    this.tVip = new Int32Array(mt);
    this.tVport = new Int32Array(mt);
    this.tMode = new Uint8Array(mt);
    this.tProto = new Uint8Array(mt);
    this.tHasMac = new Uint8Array(mt);
    this.tMac = new Uint8Array(mt * 6);
    this.tD3 = new Int32Array(mt);
    this.tD4 = new Int32Array(mt);
    this.rD3 = new Int32Array(mt);
    this.rD4 = new Int32Array(mt);
    this.tGuePort = new Uint16Array(mt);
    this.tGueFlags = new Uint8Array(mt);
    this.tGueIpSum = new Int32Array(mt);
    this.tGueUdpSum = new Int32Array(mt);
    this.tMaxconn = new Int32Array(mt);
    this.tMaxqueue = new Int32Array(mt);
    this.tQTimeout = new Float64Array(mt);
    this.tConns = new Int32Array(mt);
    this.tQHead = new Int32Array(mt).fill(-1);
    this.tQTail = new Int32Array(mt).fill(-1);
    this.tQCount = new Int32Array(mt);
    const hs = opts.holdSlots ?? 1024;
    if (!Number.isInteger(hs) || hs < 0 || hs > 1 << 20) throw new RangeError(`distributor: holdSlots must be an integer from 0 to ${1 << 20}, got ${hs}`);
    this.holdSlots = hs;
    const rr = opts.rstRate ?? 1000;
    if (!(rr >= 0) || !Number.isFinite(rr)) throw new RangeError(`distributor: rstRate must be a finite number >= 0, got ${rr}`);
    this.rstRate = rr;
    this.rstTokens = rr;
    this.plan = new Plan(16, 16, 0);
  }

  /** The per-flow limit state and the hold arena, made once (control plane, first limited service). */
  private ensureLimitState(): void {
    if (this.limitsOn) return;
    const cap = this.flows.capacity, hs = this.holdSlots;
    this.stConn = new Int32Array(cap);
    this.stSeq = new Int32Array(cap);
    this.stBorn = new Float64Array(cap);
    this.stNode = new Int32Array(cap);
    this.cList = new Int32Array(cap);
    this.cPos = new Int32Array(cap);
    // The hold arena's lifetime is the distributor's: held copies are read from it until released.
    const hold = new Batch(Math.max(1, hs), Math.max(1, hs) * HOLD_SLOT_BYTES);
    for (let k = 0; k < hs; k++) hold.off[k] = k * HOLD_SLOT_BYTES;
    this.hold = hold;
    this.holdView = new DataView(hold.arena.buffer, hold.arena.byteOffset, hold.arena.length);
    this.qNext = new Int32Array(hs);
    this.qPrev = new Int32Array(hs);
    this.qTarget = new Int32Array(hs).fill(-1);
    this.qFlow = new Int32Array(hs);
    this.qHash = new Int32Array(hs);
    this.qBorn = new Float64Array(hs);
    this.qTime = new Float64Array(hs);
    this.qL3 = new Uint16Array(hs);
    this.qSeq = new Int32Array(hs);
    for (let k = 0; k < hs; k++) this.qNext[k] = k + 1 < hs ? k + 1 : -1;
    this.qFree = hs > 0 ? 0 : -1;
    this.limitsOn = true;
  }

  /**
   * Control plane: validates `services`, builds every table and swaps the
   * whole plan in (between batches). Throws with the path of the bad field
   * and keeps the old plan on any error.
   */
  configure(services: DistService[]): void {
    const seen = new Set<string>();
    interface Row { vip: number; pp: number; mode: number; maglevKey: string; backends: { id: number; weight: number; key: string }[]; backups: number[]; limited: boolean; actions: [number, number, number] }
    const svcRows: Row[] = [];
    const pending: { key: string; vip: number; vport: number; proto: number; mode: number; addr: number; port: number; mac: Uint8Array | null; guePort: number; gueFlags: number }[] = [];
    /** Limits per slot (negative: a pending slot), applied at commit. */
    const limitRows: { slot: number; maxconn: number; maxqueue: number; qto: number }[] = [];
    services.forEach((s, si) => {
      const w = `distributor: services[${si}]`;
      const vip = parseAddr(s.vip, `${w}.vip`);
      if (!Number.isInteger(s.port) || s.port < 1 || s.port > 65535) throw new RangeError(`${w}.port must be 1..65535, got ${s.port}`);
      if (s.proto !== 6 && s.proto !== 17) throw new RangeError(`${w}.proto must be 6 (TCP) or 17 (UDP), got ${s.proto}`);
      const mode = MODE_OF[s.mode];
      if (mode === undefined) throw new RangeError(`${w}.mode must be 'nat', 'dsr-l2', 'dsr-ipip', 'dsr-gue' or 'local', got ${JSON.stringify(s.mode)}`);
      if (mode === M_LOCAL && (s.targets ?? []).length !== 0) throw new RangeError(`${w}.targets must be empty in mode local (this host serves the VIP:port)`);
      if (mode === DistMode.DSR_IPIP && this.localAddress === 0) throw new RangeError(`${w}: mode dsr-ipip needs the distributor's localAddress (outer source)`);
      if (mode === M_DSR_GUE && this.localAddress === 0) throw new RangeError(`${w}: mode dsr-gue needs the distributor's localAddress (outer source)`);
      if (s.gue !== undefined && mode !== M_DSR_GUE) throw new RangeError(`${w}.gue is only for mode dsr-gue (mode is ${s.mode})`);
      const gue = gueOf(s.gue, `${w}.gue`);
      const svcKey = `${s.proto}/${s.vip}:${s.port}`;
      if (seen.has(svcKey)) throw new RangeError(`${w}: ${svcKey} is configured twice`);
      seen.add(svcKey);
      const backupList = s.backupTargets ?? [];
      if (!Array.isArray(backupList)) throw new TypeError(`${w}.backupTargets must be an array of targets`);
      // See "Limits": UDP has no handshake to hold and no close to count to.
      if (s.proto === 17 && s.limits !== undefined) throw new RangeError(`${w}.limits: UDP services are not limited (no handshake to hold, no close to end a count)`);
      if (s.proto === 17 && backupList.length !== 0) throw new RangeError(`${w}.backupTargets: UDP services are not limited, so they have no backups`);
      if (mode === M_LOCAL && (s.limits !== undefined || backupList.length !== 0)) throw new RangeError(`${w}: mode local takes no limits or backupTargets (the terminator has its own)`);
      const actions: [number, number, number] = [
        actionOf(s.limits?.onFull ?? 'queue', `${w}.limits.onFull`, true),
        actionOf(s.limits?.onQueueFull ?? 'reject', `${w}.limits.onQueueFull`, false),
        actionOf(s.limits?.onQueueTimeout ?? 'reject', `${w}.limits.onQueueTimeout`, false),
      ];
      const names = ['onFull', 'onQueueFull', 'onQueueTimeout'];
      actions.forEach((a, k) => {
        if (a === A_BACKUP && backupList.length === 0) throw new RangeError(`${w}.limits.${names[k]}: 'backup' needs backupTargets`);
      });
      let limited = false;
      /** Validates a target (or backup), finds or reserves its slot, records its limits; returns the slot (negative: pending). */
      const slotFor = (t: DistTarget, tw: string, role: string): number => {
        const addr = parseAddr(t.address, `${tw}.address`);
        if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65535) throw new RangeError(`${tw}.port must be 1..65535, got ${t.port}`);
        const mac = t.mac === undefined ? null : parseMac(t.mac, `${tw}.mac`);
        if (mode === DistMode.DSR_L2 && mac === null) throw new RangeError(`${tw}.mac is required in mode dsr-l2`);
        if (mode !== M_NAT && t.port !== s.port) throw new RangeError(`${tw}.port must equal the service port ${s.port} in mode ${s.mode} (DSR does not rewrite ports)`);
        const maxconn = t.maxconn ?? 0, maxqueue = t.maxqueue ?? 1024, qto = t.queueTimeoutMs ?? 5000;
        if (!Number.isInteger(maxconn) || maxconn < 0 || maxconn > 1_000_000) throw new RangeError(`${tw}.maxconn must be an integer 0..1000000 (0: unlimited), got ${maxconn}`);
        if (!Number.isInteger(maxqueue) || maxqueue < 0 || maxqueue > 1_000_000) throw new RangeError(`${tw}.maxqueue must be an integer 0..1000000, got ${maxqueue}`);
        if (!(qto >= 0) || !Number.isFinite(qto)) throw new RangeError(`${tw}.queueTimeoutMs must be a finite number >= 0, got ${qto}`);
        if (maxconn > 0 && s.proto === 17) throw new RangeError(`${tw}.maxconn: UDP services are not limited (no handshake to hold, no close to end a count); leave it 0`);
        if (maxconn > 0) limited = true;
        // The GUE port and format are part of a slot's key: a change makes new slots, and flows already
        // on a target keep the encapsulation their target's decapsulator was getting.
        const key = `${svcKey}/${s.mode}${role}/${t.id}/${t.address}:${t.port}/${t.mac ?? ''}${mode === M_DSR_GUE ? `/gue${gue.port}.${gue.flags}` : ''}`;
        let slot = this.slotOf.get(key);
        if (slot === undefined) {
          slot = pending.findIndex((p) => p.key === key);
          if (slot >= 0) slot = -1 - slot;
          else {
            slot = -1 - pending.length;
            pending.push({ key, vip, vport: s.port, proto: s.proto, mode, addr, port: t.port, mac, guePort: gue.port, gueFlags: gue.flags });
          }
        }
        limitRows.push({ slot, maxconn, maxqueue, qto: qto / 1000 });
        return slot;
      };
      const backends: { id: number; weight: number; key: string }[] = [];
      const endpoints = new Map<string, number>();
      (s.targets ?? []).forEach((t, ti) => {
        const slot = slotFor(t, `${w}.targets[${ti}]`, '');
        endpoints.set(`${t.address}:${t.port}`, ti);
        backends.push({ id: slot, weight: t.weight, key: `${t.address}:${t.port}#${t.id}` });
      });
      const backups: number[] = [];
      backupList.forEach((t, bi) => {
        const bw = `${w}.backupTargets[${bi}]`;
        // One endpoint, one slot in the reply index: a backup that is also a target would have its NAT replies matched to the other slot.
        const dup = endpoints.get(`${t.address}:${t.port}`);
        if (dup !== undefined) throw new RangeError(`${bw}: ${t.address}:${t.port} is already targets[${dup}]`);
        if (!Number.isInteger(t.weight) || t.weight < 0) throw new RangeError(`${bw}.weight must be an integer >= 0 (0 leaves it out), got ${t.weight}`);
        const slot = slotFor(t, bw, '/backup');
        if (t.weight > 0) backups.push(slot);
      });
      svcRows.push({ vip, pp: (s.port << 8) | s.proto, mode, maglevKey: svcKey, backends, backups, limited: limited && s.proto === 6 && mode !== M_LOCAL, actions });
    });
    if (this.targetCount + pending.length > this.maxTargets) {
      throw new RangeError(`distributor: ${this.targetCount + pending.length} target slots needed, maxTargets is ${this.maxTargets} (slots of removed targets are kept for their established flows)`);
    }
    // Build the Maglev tables. MaglevTable.build swaps its own array; the
    // live plan keeps the arrays it holds, so an error here (bad weight)
    // leaves the data path on the old plan.
    const base = this.targetCount;
    const nextSlot = (k: number): number => (k >= 0 ? k : base + (-1 - k));
    const built: { table: Int32Array; size: number }[] = [];
    for (const row of svcRows) {
      if (row.mode === M_LOCAL) {
        built.push(LOCAL_TABLE);
        continue;
      }
      let m = this.maglevs.get(row.maglevKey);
      if (m === undefined) m = new MaglevTable({ seed: this.seed });
      m.build(row.backends.map((b) => ({ id: nextSlot(b.id), weight: b.weight, key: b.key })));
      built.push(m);
    }
    if (svcRows.some((r) => r.limited)) this.ensureLimitState();
    // Commit: new target slots, their limits, then the plan.
    for (const p of pending) {
      const t = this.targetCount++;
      this.slotOf.set(p.key, t);
      this.tAddr[t] = p.addr;
      this.tPort[t] = p.port;
      this.tVip[t] = p.vip;
      this.tVport[t] = p.vport;
      this.tMode[t] = p.mode;
      this.tProto[t] = p.proto;
      this.tHasMac[t] = p.mac ? 1 : 0;
      if (p.mac) this.tMac.set(p.mac, t * 6);
      const d3 = addrDelta(p.vip, p.addr);
      this.tD3[t] = fold(d3);
      this.tD4[t] = fold(d3 + wordDelta(p.vport, p.port));
      const r3 = addrDelta(p.addr, p.vip);
      this.rD3[t] = fold(r3);
      this.rD4[t] = fold(r3 + wordDelta(p.port, p.vport));
      if (p.mode === M_DSR_GUE) {
        const la = this.localAddress;
        this.tGuePort[t] = p.guePort;
        this.tGueFlags[t] = p.gueFlags;
        // Unfolded sums of 16-bit words (each term < 2^16, a handful of them): far below 2^32, so
        // the foldSmall() on the hot path is exact.
        const addrs = (la >>> 16) + (la & 0xffff) + (p.addr >>> 16) + (p.addr & 0xffff);
        this.tGueIpSum[t] = 0x4500 + ((TTL_OUTER << 8) | PROTO_UDP) + addrs;
        // Pseudo-header (source, destination, zero/protocol) + destination port + the GUE header's
        // first word (variant 0: version 0, C 0, hlen 0, proto 4; its flags word is 0).
        this.tGueUdpSum[t] = addrs + PROTO_UDP + p.guePort + ((p.gueFlags & GUE_V1) !== 0 ? 0 : PROTO_IPIP);
      }
    }
    // Limits of the configured slots; a slot no longer configured keeps its
    // own (its counted flows and held SYNs finish under them).
    for (const l of limitRows) {
      const t = nextSlot(l.slot);
      this.tMaxconn[t] = l.maxconn;
      this.tMaxqueue[t] = l.maxqueue;
      this.tQTimeout[t] = l.qto;
    }
    const n = svcRows.length;
    let natSlots = 0;
    for (let t = 0; t < this.targetCount; t++) if (this.tMode[t] === M_NAT) natSlots++;
    const plan = new Plan(pow2AtLeast(n * 4), pow2AtLeast(natSlots * 4), n);
    const list: number[] = [];
    for (let si = 0; si < n; si++) {
      const row = svcRows[si];
      let s = keyHash(row.vip, row.pp) & plan.vMask;
      while (plan.vSvc[s] !== 0) s = (s + 1) & plan.vMask;
      plan.vKey[s] = row.vip;
      plan.vPP[s] = row.pp;
      plan.vSvc[s] = si + 1;
      plan.svcMode[si] = row.mode;
      plan.tables[si] = built[si].table;
      plan.sizes[si] = built[si].size;
      if (row.mode !== M_LOCAL) this.maglevs.set(row.maglevKey, built[si] as MaglevTable);
      plan.svcLimited[si] = row.limited ? 1 : 0;
      plan.svcOnFull[si] = row.actions[0];
      plan.svcOnQFull[si] = row.actions[1];
      plan.svcOnQTimeout[si] = row.actions[2];
      plan.svcTStart[si] = list.length;
      for (const b of row.backends) if (b.weight > 0) list.push(nextSlot(b.id));
      plan.svcTCount[si] = list.length - plan.svcTStart[si];
      plan.svcBStart[si] = list.length;
      for (const b of row.backups) list.push(nextSlot(b));
      plan.svcBCount[si] = list.length - plan.svcBStart[si];
    }
    plan.svcList = Int32Array.from(list);
    // Replies: every NAT slot, removed targets included (their flows live on).
    // Several slots may share one target endpoint (two services on the same
    // target, or a target re-added under another id): each gets an entry,
    // and reply() tries them in probe order until the forward-flow check
    // names one.
    for (let t = 0; t < this.targetCount; t++) {
      if (this.tMode[t] !== M_NAT) continue;
      const pp = (this.tPort[t] << 8) | this.tProto[t];
      let s = keyHash(this.tAddr[t], pp) & plan.rMask;
      while (plan.rSlot[s] !== 0) s = (s + 1) & plan.rMask;
      plan.rKey[s] = this.tAddr[t];
      plan.rPP[s] = pp;
      plan.rSlot[s] = t + 1;
    }
    this.plan = plan;
    this.services = services;
  }

  /** Connections counted against target slot t, SYNs held for it, and its maxconn (admin API, tests). */
  targetLoad(t: number): { conns: number; queued: number; maxconn: number } {
    return { conns: this.tConns[t], queued: this.tQCount[t], maxconn: this.tMaxconn[t] };
  }

  /** Slot of a configured target or backup (service as given to configure), or -1 (admin API, tests). */
  slotOfTarget(s: DistService, t: DistTarget, backup = false): number {
    const gue = s.mode === 'dsr-gue' ? gueOf(s.gue, 'gue') : null;
    const key = `${s.proto}/${s.vip}:${s.port}/${s.mode}${backup ? '/backup' : ''}/${t.id}/${t.address}:${t.port}/${t.mac ?? ''}${gue ? `/gue${gue.port}.${gue.flags}` : ''}`;
    return this.slotOf.get(key) ?? -1;
  }

  /** Target slot of a flow id's forward entry, or -1 (tests, admin API). */
  targetOfFlow(f: number): number {
    const v = this.stTarget[f];
    return v > 0 ? v - 1 : -1;
  }
  /** Address (uint32) of a target slot. */
  targetAddress(t: number): number {
    return this.tAddr[t] >>> 0;
  }

  /**
   * Walks a parsed, tracked batch (flowOf from FlowTable.trackBatch) and
   * hands every FORWARD packet to a VIP:port to its target; rewrites NAT
   * replies. dsr-ipip packets are written into `out` (appended) and their
   * originals marked DROP.
   *
   * Limited services (see "Limits"): a held SYN gets verdict HOLD, a
   * refused one DROP with a TCP RST appended to `originated` (raw IPv4);
   * held SYNs whose target got room are appended to `out`, rewritten (what
   * each `out` packet is: outKind). Queue timeouts and the sweep of counted
   * connections run at the end, bounded.
   */
  distributeBatch(batch: Batch, meta: Meta, flowOf: Int32Array, out?: Batch, originated?: Batch): void {
    const n = batch.count;
    const cv = this.counters.values;
    const plan = this.plan;
    const limOn = this.limitsOn;
    if (out !== undefined && this.outKind.length < out.capacity) this.outKind = new Uint8Array(out.capacity);
    if (limOn) {
      this.now = this.flows.clock;
      this.bOut = out ?? null;
      this.bRst = originated ?? null;
    }
    const svcLimited = plan.svcLimited, stConn = this.stConn;
    const vKey = plan.vKey, vPP = plan.vPP, vSvc = plan.vSvc, vMask = plan.vMask, tables = plan.tables, sizes = plan.sizes;
    const stTarget = this.stTarget, stHash = this.stHash, seed = this.seed;
    const tMode = this.tMode, tAddr = this.tAddr, tPort = this.tPort;
    const arena = batch.arena, bOff = batch.off, verdict = batch.verdict;
    const mStatus = meta.status, mFlags = meta.flags, mVer = meta.ipVersion, mProto = meta.l4Proto, mSrc = meta.src4, mDst = meta.dst4;
    const mSport = meta.srcPort, mDport = meta.dstPort, mL3 = meta.l3Off, mL4 = meta.l4Off, mTcp = meta.tcpFlags;
    if (this.handled.length < batch.capacity) this.handled = new Uint8Array(batch.capacity);
    const handled = this.handled, svcMode = plan.svcMode;
    for (let i = 0; i < n; i++) {
      handled[i] = H_NONE;
      if (verdict[i] !== V_FORWARD) continue;
      const fl = mFlags[i];
      const proto = mProto[i];
      if ((fl & (F_L3 | F_PORTS)) !== (F_L3 | F_PORTS) || mVer[i] !== 4 || (proto !== PROTO_TCP && proto !== PROTO_UDP)) {
        cv[C_NOT_VIP]++;
        continue;
      }
      const src = mSrc[i] | 0, dst = mDst[i] | 0, sp = mSport[i], dp = mDport[i];
      const pp = (dp << 8) | proto;
      // VIP index probe (load <= 1/4: a miss ends at the first empty slot).
      let s = keyHash(dst, pp) & vMask;
      let svc = -1;
      for (;;) {
        const e = vSvc[s];
        if (e === 0) break;
        if (vKey[s] === dst && vPP[s] === pp) {
          svc = e - 1;
          break;
        }
        s = (s + 1) & vMask;
      }
      const f = flowOf[i];
      if (svc < 0) {
        if (f >= 0 && mStatus[i] === S_OK && this.reply(arena, bOff[i] + mL3[i], bOff[i] + mL4[i], fl, f, src, dst, sp, dp, proto)) {
          mSrc[i] = this.tVip[-stTarget[f] - 1];
          mSport[i] = this.tVport[-stTarget[f] - 1];
          handled[i] = H_ROUTED;
          // The target reset its connection: it no longer counts there.
          if (limOn && (mTcp[i] & TCP_RST) !== 0 && proto === PROTO_TCP) this.targetReset(f, dst, dp);
        } else if (this.fromDirectVip(src, (sp << 8) | proto)) {
          // A DSR target (or this host's terminator) answering from the VIP:
          // nothing to rewrite, and the NAT must not take it for a stranger.
          handled[i] = H_ROUTED;
          cv[C_DSR_RETURN]++;
        } else {
          cv[C_NOT_VIP]++;
        }
        continue;
      }
      if (svcMode[svc] === M_LOCAL) {
        handled[i] = H_LOCAL;
        cv[C_LOCAL]++;
        continue;
      }
      if ((fl & F_FRAGMENT) !== 0) {
        verdict[i] = V_DROP;
        cv[C_FRAGMENT]++;
        continue;
      }
      if ((fl & F_L4) === 0 || mStatus[i] !== S_OK) {
        // Cut or lying headers (a named parse status): left as they are for
        // the guard to judge, never rewritten on the strength of a bad header.
        cv[C_BAD]++;
        continue;
      }
      const h = flowHash(src, dst, sp, dp, proto, seed);
      let t = -1;
      // A SYN starts a new connection: it gets a fresh choice even on a flow
      // id that remembers a target (a tuple reused after close, or a target
      // removed meanwhile), as in Katran, which skips its LRU for SYNs.
      const syn = proto === PROTO_TCP && (mTcp[i] & (TCP_SYN | TCP_ACK)) === TCP_SYN;
      if (f >= 0 && stHash[f] === h && stTarget[f] > 0 && !syn) {
        t = stTarget[f] - 1;
        cv[C_STICKY]++;
        // The client's FIN or RST ends the connection's count (see "Limits").
        if (limOn && (mTcp[i] & (TCP_FIN | TCP_RST)) !== 0 && proto === PROTO_TCP && stConn[f] !== 0) this.endConn(f, C_CONN_CLOSED);
      } else if (svcLimited[svc] !== 0 && f >= 0) {
        t = this.admit(batch, meta, i, svc, f, h, syn);
        if (t < 0) continue;
      } else {
        if (syn && f >= 0 && stHash[f] === h && stTarget[f] > 0) cv[C_SYN_RECHOSEN]++;
        t = tables[svc][((h >>> 0) % (sizes[svc] >>> 0)) | 0];
        if (t === NO_BACKEND) {
          verdict[i] = V_DROP;
          cv[C_NO_TARGET]++;
          continue;
        }
        if (f >= 0) {
          stTarget[f] = t + 1;
          stHash[f] = h;
          cv[C_ASSIGNED]++;
        } else {
          cv[C_UNTRACKED]++;
        }
      }
      const mode = tMode[t];
      const po = bOff[i];
      if (mode === M_NAT) {
        const l3 = po + mL3[i], l4 = po + mL4[i];
        const a = tAddr[t], p = tPort[t];
        arena[l3 + 16] = a >>> 24;
        arena[l3 + 17] = (a >>> 16) & 0xff;
        arena[l3 + 18] = (a >>> 8) & 0xff;
        arena[l3 + 19] = a & 0xff;
        arena[l4 + 2] = p >>> 8;
        arena[l4 + 3] = p & 0xff;
        applyDelta(arena, l3 + 10, this.tD3[t]);
        if (proto === PROTO_TCP) applyDelta(arena, l4 + 16, this.tD4[t]);
        else applyDeltaUdp(arena, l4 + 6, this.tD4[t]);
        // Later stages (routing, the next hop) read the new destination.
        mDst[i] = a;
        mDport[i] = p;
        handled[i] = H_ROUTED;
      } else if (mode === M_DSR_L2) {
        // The destination MAC is the first 6 bytes of an Ethernet frame.
        if (batch.linkType[i] !== 1 || mL3[i] < 14) {
          verdict[i] = V_DROP;
          cv[C_NO_L2]++;
          continue;
        }
        const mo = t * 6, tMac = this.tMac;
        arena[po] = tMac[mo];
        arena[po + 1] = tMac[mo + 1];
        arena[po + 2] = tMac[mo + 2];
        arena[po + 3] = tMac[mo + 3];
        arena[po + 4] = tMac[mo + 4];
        arena[po + 5] = tMac[mo + 5];
        handled[i] = H_L2;
      } else {
        // The original is consumed either way: sent on encapsulated, or lost for want of room.
        verdict[i] = V_DROP;
        if (out === undefined || !(mode === M_DSR_GUE ? this.encapsulateGue(batch, i, mL3[i], t, h, out) : this.encapsulate(batch, i, mL3[i], t, out))) {
          cv[C_OUT_FULL]++;
          continue;
        }
      }
      cv[C_DISTRIBUTED]++;
    }
    if (limOn) {
      this.housekeep(false);
      this.bOut = null;
      this.bRst = null;
    }
  }

  /**
   * The limits' timed work without a batch (the appliance's timer, tests):
   * releases held SYNs whose target has room, handles queue timeouts at
   * `nowSec` (or the flow table's clock, if later) and sweeps counted
   * connections; released SYNs go to `out`, resets to `originated`.
   */
  serviceLimits(nowSec: number, out?: Batch, originated?: Batch): void {
    if (!this.limitsOn) return;
    const c = this.flows.clock;
    this.now = nowSec > c ? nowSec : c;
    if (out !== undefined && this.outKind.length < out.capacity) this.outKind = new Uint8Array(out.capacity);
    this.bOut = out ?? null;
    this.bRst = originated ?? null;
    this.housekeep(true);
    this.bOut = null;
    this.bRst = null;
  }

  // ---- limits (see "Limits" above the class) ----

  /**
   * A limited TCP service's packet on tracked flow f that has no remembered
   * target, or is a SYN. Returns its target slot, or -1 when the packet was
   * held, dropped or refused (verdict set, counted).
   */
  private admit(batch: Batch, meta: Meta, i: number, svc: number, f: number, h: number, syn: boolean): number {
    const cv = this.counters.values, plan = this.plan;
    const stTarget = this.stTarget, stHash = this.stHash, stConn = this.stConn;
    const tf = meta.tcpFlags[i];
    if (!syn) {
      const k = this.heldNode(f, h);
      if (k >= 0) {
        // A held connection's client sends nothing but SYNs; its reset withdraws the SYN.
        if ((tf & TCP_RST) !== 0) this.dropNode(k);
        batch.verdict[i] = V_DROP;
        return -1;
      }
      // Picked up mid-stream (no SYN seen: a restart, or a flow that left the
      // table and came back): the connection lives on its Maglev target
      // already, so it goes there whatever the count, and counts unless closing.
      const t = plan.tables[svc][((h >>> 0) % (plan.sizes[svc] >>> 0)) | 0];
      if (t === NO_BACKEND) {
        batch.verdict[i] = V_DROP;
        cv[C_NO_TARGET]++;
        return -1;
      }
      if (stConn[f] !== 0) this.endConn(f, C_CONN_REUSED);
      stTarget[f] = t + 1;
      stHash[f] = h;
      cv[C_ASSIGNED]++;
      if ((tf & (TCP_FIN | TCP_RST)) === 0) this.countConn(f, t, 0);
      return t;
    }
    const arena = batch.arena, l4 = batch.off[i] + meta.l4Off[i];
    const seq = (arena[l4 + 4] << 24) | (arena[l4 + 5] << 16) | (arena[l4 + 6] << 8) | arena[l4 + 7];
    if (stHash[f] === h) {
      if (this.heldNode(f, h) >= 0) {
        // The client's retransmission (~1 s, 3 s...): the held copy stands for it.
        cv[C_Q_RETRANSMIT]++;
        batch.verdict[i] = V_DROP;
        return -1;
      }
      if (stConn[f] !== 0 && this.stSeq[f] === seq && stTarget[f] > 0) {
        // A retransmission of a SYN already let through goes where the first went (and counts once).
        cv[C_STICKY]++;
        return stTarget[f] - 1;
      }
      if (stTarget[f] > 0) cv[C_SYN_RECHOSEN]++;
    }
    // A new connection on this flow id: the previous one (another tuple, or
    // another ISN on the same tuple) no longer counts, nor waits.
    if (stConn[f] !== 0) this.endConn(f, C_CONN_REUSED);
    const old = this.stNode[f];
    if (old !== 0) {
      if (this.qTarget[old - 1] >= 0 && this.qFlow[old - 1] === f) this.dropNode(old - 1);
      this.stNode[f] = 0;
    }
    let t = plan.tables[svc][((h >>> 0) % (plan.sizes[svc] >>> 0)) | 0];
    if (t === NO_BACKEND) {
      batch.verdict[i] = V_DROP;
      cv[C_NO_TARGET]++;
      return -1;
    }
    const mc = this.tMaxconn[t];
    // At maxconn, or SYNs already waiting there (no overtaking the queue).
    if (mc !== 0 && (this.tConns[t] >= mc || this.tQCount[t] !== 0)) {
      let action = plan.svcOnFull[svc];
      if (action === A_QUEUE) {
        if (this.enqueue(batch, meta, i, t, f, h, seq)) {
          batch.verdict[i] = V_HOLD;
          cv[C_Q_QUEUED]++;
          return -1;
        }
        cv[C_Q_FULL]++;
        action = plan.svcOnQFull[svc];
      }
      const t2 = this.chooseOther(action, svc, h, t);
      if (t2 < 0) {
        cv[C_Q_REJECTED]++;
        this.sendReset(arena, batch.off[i] + meta.l3Off[i], batch.off[i] + batch.capLen[i]);
        batch.verdict[i] = V_DROP;
        stTarget[f] = 0;
        stHash[f] = h;
        return -1;
      }
      cv[action === A_BACKUP ? C_Q_BACKUP : C_Q_REDISPATCHED]++;
      t = t2;
    }
    stTarget[f] = t + 1;
    stHash[f] = h;
    cv[C_ASSIGNED]++;
    this.countConn(f, t, seq);
    return t;
  }

  /** True when slot c may take a new connection now. */
  private hasRoom(c: number): boolean {
    const m = this.tMaxconn[c];
    return m === 0 || (this.tConns[c] < m && this.tQCount[c] === 0);
  }

  /** The target a redispatch or backup action gives (not t0), or -1 when none has room (then: reject). */
  private chooseOther(action: number, svc: number, h: number, t0: number): number {
    const plan = this.plan, list = plan.svcList;
    if (action === A_REDISPATCH) {
      // IPVS MH fallback: Maglev lookups with derived hashes keep the load
      // spread as the weights say; then a walk over every target of weight > 0
      // so a target with room is never missed. Bounded: PROBES + n lookups.
      const table = plan.tables[svc], size = plan.sizes[svc] >>> 0;
      for (let k = 1; k <= REDISPATCH_PROBES; k++) {
        const x = fmix32(h ^ Math.imul(k, 0x9e3779b9));
        const c = table[((x >>> 0) % size) | 0];
        if (c !== NO_BACKEND && c !== t0 && this.hasRoom(c)) return c;
      }
      const start = plan.svcTStart[svc], n = plan.svcTCount[svc];
      let j = n === 0 ? 0 : ((h >>> 0) % n) | 0;
      for (let k = 0; k < n; k++) {
        const c = list[start + j];
        if (c !== t0 && this.hasRoom(c)) return c;
        j = j + 1 === n ? 0 : j + 1;
      }
      return -1;
    }
    if (action === A_BACKUP) {
      // HAProxy without allbackups: the first backup with room, in configuration order.
      const end = plan.svcBStart[svc] + plan.svcBCount[svc];
      for (let j = plan.svcBStart[svc]; j < end; j++) if (this.hasRoom(list[j])) return list[j];
    }
    return -1;
  }

  private countConn(f: number, t: number, seq: number): void {
    this.tConns[t]++;
    this.stConn[f] = t + 1;
    this.stSeq[f] = seq;
    this.stBorn[f] = this.flows.firstSeen[f];
    const c = this.cCount++;
    this.cList[c] = f;
    this.cPos[f] = c + 1;
    this.counters.values[C_CONN_COUNTED]++;
  }

  /** Ends flow f's count (counted under `counter`); a slot freed on a target with SYNs waiting releases them. */
  private endConn(f: number, counter: number): void {
    const t = this.stConn[f] - 1;
    this.stConn[f] = 0;
    this.tConns[t]--;
    const p = this.cPos[f] - 1, last = --this.cCount, g = this.cList[last];
    this.cList[p] = g;
    this.cPos[g] = p + 1;
    this.cPos[f] = 0;
    this.counters.values[counter]++;
    if (this.tQCount[t] !== 0) this.release(t);
  }

  /** A NAT target's RST to `client`:`cport` on reply flow f: its forward flow no longer counts. */
  private targetReset(f: number, client: number, cport: number): void {
    const t = -this.stTarget[f] - 1;
    const fwd = this.flows.lookup4(client, this.tVip[t], cport, this.tVport[t], PROTO_TCP);
    if (fwd >= 0 && this.stConn[fwd] === t + 1) this.endConn(fwd, C_CONN_CLOSED);
  }

  /** Hold node of flow f's held SYN with flow hash h, or -1. */
  private heldNode(f: number, h: number): number {
    const e = this.stNode[f];
    if (e === 0) return -1;
    const k = e - 1;
    return this.qTarget[k] >= 0 && this.qFlow[k] === f && this.qHash[k] === h ? k : -1;
  }

  /** Copies packet i into a free hold slot at the tail of t's queue; false when the queue or the arena is full, or the SYN does not fit. */
  private enqueue(batch: Batch, meta: Meta, i: number, t: number, f: number, h: number, seq: number): boolean {
    const k = this.qFree, len = batch.capLen[i];
    if (k < 0 || this.tQCount[t] >= this.tMaxqueue[t] || len > HOLD_SLOT_BYTES || len !== batch.origLen[i]) return false;
    // dsr-l2 rewrites a MAC: a frame without one could never be released.
    if (this.tMode[t] === M_DSR_L2 && (batch.linkType[i] !== 1 || meta.l3Off[i] < 14)) return false;
    this.qFree = this.qNext[k];
    const hb = this.hold!, ho = k * HOLD_SLOT_BYTES, po = batch.off[i], src = batch.arena, dst = hb.arena;
    for (let b = 0; b < len; b++) dst[ho + b] = src[po + b];
    hb.capLen[k] = len;
    hb.origLen[k] = len;
    hb.tsSec[k] = batch.tsSec[i];
    hb.tsNsec[k] = batch.tsNsec[i];
    hb.linkType[k] = batch.linkType[i];
    hb.port[k] = batch.port[i];
    hb.verdict[k] = V_FORWARD;
    this.qL3[k] = meta.l3Off[i];
    this.qFlow[k] = f;
    this.qHash[k] = h;
    this.qSeq[k] = seq;
    this.qBorn[k] = this.flows.firstSeen[f];
    this.qTime[k] = this.now;
    this.qTarget[k] = t;
    const tail = this.tQTail[t];
    this.qPrev[k] = tail;
    this.qNext[k] = -1;
    if (tail >= 0) this.qNext[tail] = k;
    else this.tQHead[t] = k;
    this.tQTail[t] = k;
    this.tQCount[t]++;
    this.heldCount++;
    this.stNode[f] = k + 1;
    this.stTarget[f] = 0;
    this.stHash[f] = h;
    return true;
  }

  /** Unlinks hold node k from its target's queue and frees it. */
  private freeNode(k: number): void {
    const t = this.qTarget[k], p = this.qPrev[k], nx = this.qNext[k];
    if (p >= 0) this.qNext[p] = nx;
    else this.tQHead[t] = nx;
    if (nx >= 0) this.qPrev[nx] = p;
    else this.tQTail[t] = p;
    this.tQCount[t]--;
    this.heldCount--;
    this.qTarget[k] = -1;
    this.qNext[k] = this.qFree;
    this.qFree = k;
  }

  /** Discards held SYN k (its client reset, or its flow is gone). */
  private dropNode(k: number): void {
    const f = this.qFlow[k];
    if (this.stNode[f] === k + 1) this.stNode[f] = 0;
    this.freeNode(k);
    this.counters.values[C_Q_ABANDONED]++;
  }

  /** True while held SYN k's flow is the one that was held (not expired, its id not reused). */
  private nodeValid(k: number): boolean {
    const f = this.qFlow[k];
    return this.stNode[f] === k + 1 && this.flows.isLive(f) && this.flows.firstSeen[f] === this.qBorn[k];
  }

  /** Releases t's held SYNs, oldest first, while t has room and `out` has space. */
  private release(t: number): void {
    if (this.bOut === null) return;
    const cv = this.counters.values;
    while (this.tQCount[t] !== 0) {
      const mc = this.tMaxconn[t];
      if (mc !== 0 && this.tConns[t] >= mc) return;
      const k = this.tQHead[t];
      if (!this.nodeValid(k)) {
        this.dropNode(k);
        continue;
      }
      if (!this.admitHeld(k, t)) return;
      this.freeNode(k);
      cv[C_Q_DEQUEUED]++;
    }
  }

  /** Sends held SYN k to slot t (rewritten into `out`) and counts its connection there; false when `out` has no room. */
  private admitHeld(k: number, t: number): boolean {
    if (!this.emitHeld(k, t)) return false;
    const f = this.qFlow[k];
    this.stTarget[f] = t + 1;
    this.stHash[f] = this.qHash[k];
    this.stNode[f] = 0;
    this.counters.values[C_ASSIGNED]++;
    this.countConn(f, t, this.qSeq[k]);
    return true;
  }

  /** Writes held SYN k into `out` as the data path would have sent it to slot t (outKind says how it leaves). */
  private emitHeld(k: number, t: number): boolean {
    const out = this.bOut;
    if (out === null) return false;
    const hb = this.hold!, po = hb.off[k], len = hb.capLen[k], l3Rel = this.qL3[k];
    const mode = this.tMode[t], kk = out.count;
    if (mode === M_NAT || mode === M_DSR_L2) {
      const at = out.used;
      if (kk >= out.capacity || at + len > out.arena.length) return false;
      const o = out.arena, src = hb.arena;
      for (let b = 0; b < len; b++) o[at + b] = src[po + b];
      if (mode === M_NAT) {
        const l3 = at + l3Rel, l4 = l3 + ((o[l3] & 15) << 2);
        const a = this.tAddr[t], p = this.tPort[t];
        o[l3 + 16] = a >>> 24;
        o[l3 + 17] = (a >>> 16) & 0xff;
        o[l3 + 18] = (a >>> 8) & 0xff;
        o[l3 + 19] = a & 0xff;
        o[l4 + 2] = p >>> 8;
        o[l4 + 3] = p & 0xff;
        applyDelta(o, l3 + 10, this.tD3[t]);
        applyDelta(o, l4 + 16, this.tD4[t]);
        this.outKind[kk] = H_ROUTED;
      } else {
        const mo = t * 6, tMac = this.tMac;
        for (let b = 0; b < 6; b++) o[at + b] = tMac[mo + b];
        this.outKind[kk] = H_L2;
      }
      out.off[kk] = at;
      out.capLen[kk] = len;
      out.origLen[kk] = hb.origLen[k];
      out.tsSec[kk] = hb.tsSec[k];
      out.tsNsec[kk] = hb.tsNsec[k];
      out.linkType[kk] = hb.linkType[k];
      out.port[kk] = hb.port[k];
      out.verdict[kk] = V_FORWARD;
      out.used = at + len;
      out.count = kk + 1;
    } else {
      // Encapsulated from the hold arena: its DataView stands in for the
      // batch's while the copy is made (no view made per packet).
      const sa = this.srcArena, sv = this.srcView;
      this.srcArena = hb.arena;
      this.srcView = this.holdView;
      const ok = mode === M_DSR_GUE ? this.encapsulateGue(hb, k, l3Rel, t, this.qHash[k], out) : this.encapsulate(hb, k, l3Rel, t, out);
      this.srcArena = sa;
      this.srcView = sv;
      if (!ok) return false;
    }
    this.counters.values[C_DISTRIBUTED]++;
    return true;
  }

  /** A TCP RST answering the SYN at `l3` (RFC 9293 3.10.7.1: from the VIP:port it was sent to) into the originated batch, rate limited. */
  private sendReset(arena: Buffer, l3: number, capEnd: number): void {
    const out = this.bRst, rate = this.rstRate, now = this.now;
    if (rate > 0 && now > this.rstTime) {
      const tok = this.rstTokens + (now - this.rstTime) * rate;
      this.rstTokens = tok > rate ? rate : tok;
      this.rstTime = now;
    }
    if (out === null || this.rstTokens < 1 || out.count >= out.capacity || out.used + TCP_RST_BYTES > out.arena.length) {
      this.counters.values[C_RST_LIMITED]++;
      return;
    }
    const at = out.used;
    const n = encodeTcpRstFor(arena, l3, capEnd, out.arena, at);
    if (n === 0) return;
    this.rstTokens -= 1;
    const k = out.count;
    out.off[k] = at;
    out.capLen[k] = n;
    out.origLen[k] = n;
    out.tsSec[k] = 0;
    out.tsNsec[k] = 0;
    out.linkType[k] = LINK_RAW;
    out.port[k] = 0;
    out.verdict[k] = V_FORWARD;
    out.used = at + n;
    out.count = k + 1;
  }

  /** The service index of VIP:port (pp = port << 8 | proto) in the live plan, or -1. */
  private serviceOf(vip: number, pp: number): number {
    const plan = this.plan, vKey = plan.vKey, vPP = plan.vPP, vSvc = plan.vSvc, vMask = plan.vMask;
    let s = keyHash(vip, pp) & vMask;
    for (;;) {
      const e = vSvc[s];
      if (e === 0) return -1;
      if (vKey[s] === vip && vPP[s] === pp) return e - 1;
      s = (s + 1) & vMask;
    }
  }

  /** Bounded timed work: releases where a target has room, queue timeouts, and every SWEEP_EVERY batches (or `sweepNow`) the sweep. */
  private housekeep(sweepNow: boolean): void {
    if (this.heldCount !== 0) {
      let budget = TIMEOUT_BUDGET;
      for (let t = 0; t < this.targetCount && this.heldCount !== 0; t++) {
        if (this.tQCount[t] === 0) continue;
        this.release(t);
        budget = this.expireQueue(t, budget);
      }
    }
    if (++this.batchNo >= SWEEP_EVERY || sweepNow) {
      this.batchNo = 0;
      if (this.cCount !== 0) this.sweep(SWEEP_BUDGET);
    }
  }

  /** Held SYNs of t past its queue timeout, oldest first: onQueueTimeout of t's service. Returns the budget left. */
  private expireQueue(t: number, budget: number): number {
    const to = this.tQTimeout[t];
    if (to <= 0) return budget;
    const cv = this.counters.values, plan = this.plan, hb = this.hold!;
    while (budget > 0 && this.tQCount[t] !== 0) {
      const k = this.tQHead[t];
      if (!this.nodeValid(k)) {
        this.dropNode(k);
        continue;
      }
      if (this.qTime[k] + to > this.now) break;
      budget--;
      // The service as configured now (it may have been reloaded while the SYN waited).
      const svc = this.serviceOf(this.tVip[t], (this.tVport[t] << 8) | this.tProto[t]);
      const action = svc < 0 ? LimitAction.REJECT : plan.svcOnQTimeout[svc];
      const t2 = svc < 0 ? -1 : this.chooseOther(action, svc, this.qHash[k], t);
      if (t2 >= 0) {
        if (!this.admitHeld(k, t2)) break; // no room in `out`: next time
        cv[action === A_BACKUP ? C_Q_BACKUP : C_Q_REDISPATCHED]++;
      } else {
        cv[C_Q_REJECTED]++;
        this.sendReset(hb.arena, hb.off[k] + this.qL3[k], hb.off[k] + hb.capLen[k]);
        const f = this.qFlow[k];
        this.stNode[f] = 0;
        this.stTarget[f] = 0;
      }
      cv[C_Q_TIMEOUT]++;
      this.freeNode(k);
    }
    return budget;
  }

  /** Ends the counts of up to `budget` counted flows the flow table no longer has (or whose id holds another flow now). */
  private sweep(budget: number): void {
    const flows = this.flows, cList = this.cList, stBorn = this.stBorn, firstSeen = flows.firstSeen;
    let i = this.cCursor;
    for (let b = 0; b < budget && this.cCount !== 0; b++) {
      if (i >= this.cCount) i = 0;
      const f = cList[i];
      if (!flows.isLive(f) || firstSeen[f] !== stBorn[f]) {
        // Swapped out: entry i now holds another flow (looked at next round).
        this.endConn(f, C_CONN_EXPIRED);
        continue;
      }
      i++;
    }
    this.cCursor = i;
  }

  /** True when (src, sport << 8 | proto) is the VIP:port of a dsr-* or local service. */
  private fromDirectVip(src: number, pp: number): boolean {
    const plan = this.plan, vKey = plan.vKey, vPP = plan.vPP, vSvc = plan.vSvc, vMask = plan.vMask;
    let s = keyHash(src, pp) & vMask;
    for (;;) {
      const e = vSvc[s];
      if (e === 0) return false;
      if (vKey[s] === src && vPP[s] === pp) return plan.svcMode[e - 1] !== M_NAT;
      s = (s + 1) & vMask;
    }
  }

  /**
   * A packet not to a VIP on flow `f`: when it is a reply from a NAT target
   * to the client of a flow that target serves, rewrites its source to
   * VIP:port and returns true.
   */
  private reply(arena: Buffer, l3: number, l4: number, fl: number, f: number, src: number, dst: number, sp: number, dp: number, proto: number): boolean {
    const stTarget = this.stTarget, stHash = this.stHash;
    const h = flowHash(src, dst, sp, dp, proto, this.seed);
    let t = -1;
    const e = stTarget[f];
    if (e < 0 && stHash[f] === h) {
      t = -e - 1;
    } else {
      // First reply of this flow id: from a NAT target's address:port?
      const plan = this.plan;
      const pp = (sp << 8) | proto;
      let s = keyHash(src, pp) & plan.rMask;
      let slot = -1;
      for (;;) {
        const r = plan.rSlot[s];
        if (r === 0) break;
        if (plan.rKey[s] === src && plan.rPP[s] === pp) {
          // ...to a client whose forward flow (client -> VIP) was given this slot?
          const c = r - 1;
          const vip = this.tVip[c], vport = this.tVport[c];
          const fwd = this.flows.lookup4(dst, vip, dp, vport, proto);
          if (fwd >= 0 && stTarget[fwd] === r && stHash[fwd] === flowHash(dst, vip, dp, vport, proto, this.seed)) {
            slot = c;
            break;
          }
        }
        s = (s + 1) & plan.rMask;
      }
      if (slot < 0) return false;
      t = slot;
      stTarget[f] = -(t + 1);
      stHash[f] = h;
    }
    if ((fl & F_FRAGMENT) !== 0 || (fl & F_L4) === 0) return false;
    const a = this.tVip[t], p = this.tVport[t];
    arena[l3 + 12] = a >>> 24;
    arena[l3 + 13] = (a >>> 16) & 0xff;
    arena[l3 + 14] = (a >>> 8) & 0xff;
    arena[l3 + 15] = a & 0xff;
    arena[l4] = p >>> 8;
    arena[l4 + 1] = p & 0xff;
    applyDelta(arena, l3 + 10, this.rD3[t]);
    if (proto === PROTO_TCP) applyDelta(arena, l4 + 16, this.rD4[t]);
    else applyDeltaUdp(arena, l4 + 6, this.rD4[t]);
    this.counters.values[C_REPLY]++;
    return true;
  }

  /**
   * RFC 2003 §3: writes [link header][outer IPv4][inner IP packet] at the end
   * of `out`. Outer: TOS copied (§3.1), DF copied (§3.1: MUST when the inner
   * has DF), TTL 64, protocol 4, source localAddress, destination the
   * target, checksum computed over the 20 bytes. The link header is copied
   * (its EtherType is already IPv4) with the destination MAC set to the
   * target's when one is configured. Returns false when `out` is full.
   */
  private encapsulate(batch: Batch, i: number, l3Rel: number, t: number, out: Batch): boolean {
    const src = batch.arena, po = batch.off[i];
    const l3 = po + l3Rel;
    const cap = batch.capLen[i];
    // The inner packet: its declared length when captured whole (drops Ethernet padding), else what was captured.
    const tot = (src[l3 + 2] << 8) | src[l3 + 3];
    const innerCap = tot <= cap - l3Rel ? tot : cap - l3Rel;
    const len = l3Rel + 20 + innerCap;
    const k = out.count;
    const at = out.used;
    if (k >= out.capacity || at + len > out.arena.length || tot + 20 > 0xffff) return false;
    const o = out.arena;
    this.copyLinkHeader(batch, i, l3Rel, t, o, at);
    const h = at + l3Rel;
    this.outerIpv4(o, h, src[l3 + 1], tot + 20, src[l3 + 6] & 0x40, PROTO_IPIP, t);
    // RFC 1071 over the 20-byte outer header.
    let sum = 0;
    for (let b = 0; b < 20; b += 2) sum += (o[h + b] << 8) | o[h + b + 1];
    sum = fold(sum);
    const c = ~sum & 0xffff;
    o[h + 10] = c >>> 8;
    o[h + 11] = c & 0xff;
    this.copyInner(src, l3, o, h + 20, innerCap);
    this.commitOut(batch, i, out, at, len, 20);
    return true;
  }

  // ---- pieces shared by the two encapsulations (IPIP, GUE) ----

  /** The packet's link header at o[at..), with the target's MAC as destination when one is configured. */
  private copyLinkHeader(batch: Batch, i: number, l3Rel: number, t: number, o: Buffer, at: number): void {
    const src = batch.arena, po = batch.off[i];
    // Byte loops, not Buffer#copy: on Node 20 copy() makes a Uint8Array view per call.
    for (let b = 0; b < l3Rel; b++) o[at + b] = src[po + b];
    if (this.tHasMac[t] !== 0 && batch.linkType[i] === 1 && l3Rel >= 14) {
      const mo = t * 6, tMac = this.tMac;
      for (let b = 0; b < 6; b++) o[at + b] = tMac[mo + b];
    }
  }

  /**
   * The outer IPv4 header at o[h..h+20) with its checksum field 0: TOS and DF
   * as given (copied from the inner header, RFC 2003 §3.1), TTL_OUTER, the
   * next identification, source localAddress, destination target t's
   * address. Returns the identification used.
   */
  private outerIpv4(o: Buffer, h: number, tos: number, outerTot: number, df: number, proto: number, t: number): number {
    const id = this.ipId;
    this.ipId = (id + 1) & 0xffff;
    const a = this.localAddress, d = this.tAddr[t];
    o[h] = 0x45;
    o[h + 1] = tos;
    o[h + 2] = outerTot >>> 8;
    o[h + 3] = outerTot & 0xff;
    o[h + 4] = id >>> 8;
    o[h + 5] = id & 0xff;
    o[h + 6] = df;
    o[h + 7] = 0;
    o[h + 8] = TTL_OUTER;
    o[h + 9] = proto;
    o[h + 10] = 0;
    o[h + 11] = 0;
    o[h + 12] = a >>> 24;
    o[h + 13] = (a >>> 16) & 0xff;
    o[h + 14] = (a >>> 8) & 0xff;
    o[h + 15] = a & 0xff;
    o[h + 16] = d >>> 24;
    o[h + 17] = (d >>> 16) & 0xff;
    o[h + 18] = (d >>> 8) & 0xff;
    o[h + 19] = d & 0xff;
    return id;
  }

  /** DataViews over the source and out arenas, made again only when an arena changes (no allocation per packet). */
  private refreshViews(src: Buffer, o: Buffer): void {
    if (src !== this.srcArena) {
      this.srcArena = src;
      this.srcView = new DataView(src.buffer, src.byteOffset, src.length);
    }
    if (o !== this.outArena) {
      this.outArena = o;
      this.outView = new DataView(o.buffer, o.byteOffset, o.length);
    }
  }

  /** Copies n bytes src[from..) to o[to..): four at a time through the DataViews (about 3x the byte loop), then the tail. */
  private copyInner(src: Buffer, from: number, o: Buffer, to: number, n: number): void {
    this.refreshViews(src, o);
    const sv = this.srcView, ov = this.outView;
    const e4 = n & ~3;
    let b = 0;
    for (; b < e4; b += 4) ov.setUint32(to + b, sv.getUint32(from + b));
    for (; b < n; b++) o[to + b] = src[from + b];
  }

  /** Appends the packet written at out.arena[at..at+len) as out's next entry (packet i's metadata, `encap` bytes longer). */
  private commitOut(batch: Batch, i: number, out: Batch, at: number, len: number, encap: number): void {
    const k = out.count;
    out.off[k] = at;
    out.capLen[k] = len;
    out.origLen[k] = batch.origLen[i] + encap;
    out.tsSec[k] = batch.tsSec[i];
    out.tsNsec[k] = batch.tsNsec[i];
    out.linkType[k] = batch.linkType[i];
    out.port[k] = batch.port[i];
    out.verdict[k] = V_FORWARD;
    out.used = at + len;
    out.count = k + 1;
    this.outKind[k] = H_ROUTED;
  }
  /**
   * GUE (draft-ietf-intarea-gue) over UDP over IPv4: writes [link header]
   * [outer IPv4][UDP][GUE header, variant 0 only][inner IP packet] at the end
   * of `out`, as Katran's gue_encap_v4 lays it out. Returns false when `out`
   * is full.
   * - Outer IPv4 as for IPIP: TOS and DF copied from the inner header (the
   *   ECN/DSCP and PMTU reasoning of RFC 2003 §3.1 holds for any IP tunnel;
   *   Katran copies the TOS too), TTL 64, source localAddress, destination
   *   the target; the checksum starts from the per-target sum of the fixed
   *   words (tGueIpSum) and adds TOS, length, identification and DF.
   * - UDP source port: flow entropy (the draft's flow entropy rule, as
   *   RFC 8086 §3.2.1): a function of the flow hash in the ephemeral range
   *   49152-65535, so routers hashing the outer 5-tuple keep each flow on one
   *   path and spread the flows; Katran derives it from the client's port
   *   and address.
   * - UDP checksum: 0 by default (RFC 768: "no checksum" is legal over IPv4,
   *   and the draft lets an encapsulator send 0 over IPv4). The outer IPv4
   *   checksum already guards the addresses against misdelivery, the inner
   *   packet carries its own end-to-end checksum, and the decapsulator
   *   validates the UDP and GUE headers field by field (version, C, proto,
   *   lengths); a non-zero checksum makes every target verify a sum over the
   *   whole packet (measured in src/lb/decap.ts: ~0.8 us per 1 KB packet
   *   against ~0.1 us without). Katran sends 0 (GUE_CSUM). With `checksum:
   *   true` it is computed here in the same pass as the copy (RFC 1071): no
   *   measurable extra cost on this side.
   * - GUE header, variant 0 (the draft's base header): version 0, C = 0
   *   (data), hlen 0, proto/ctype 4 (IPv4), flags 0. Variant 1 (direct IP)
   *   has none: the inner IPv4 header's first nibble (0100) reads as
   *   version 1.
   */
  private encapsulateGue(batch: Batch, i: number, l3Rel: number, t: number, hash: number, out: Batch): boolean {
    const src = batch.arena, po = batch.off[i];
    const l3 = po + l3Rel;
    const cap = batch.capLen[i];
    const tot = (src[l3 + 2] << 8) | src[l3 + 3];
    const innerCap = tot <= cap - l3Rel ? tot : cap - l3Rel;
    const gf = this.tGueFlags[t];
    const gueLen = (gf & GUE_V1) !== 0 ? 0 : 4;
    const encap = 28 + gueLen;
    const len = l3Rel + encap + innerCap;
    const k = out.count;
    const at = out.used;
    if (k >= out.capacity || at + len > out.arena.length || tot + encap > 0xffff) return false;
    const o = out.arena;
    this.copyLinkHeader(batch, i, l3Rel, t, o, at);
    const h = at + l3Rel;
    const outerTot = tot + encap;
    const udpLen = outerTot - 20;
    const tos = src[l3 + 1], df = src[l3 + 6] & 0x40;
    const id = this.outerIpv4(o, h, tos, outerTot, df, PROTO_UDP, t);
    const ipc = ~fold(this.tGueIpSum[t] + tos + outerTot + id + (df << 8)) & 0xffff;
    o[h + 10] = ipc >>> 8;
    o[h + 11] = ipc & 0xff;
    const u = h + 20;
    const sport = 0xc000 | (hash >>> 18);
    const dport = this.tGuePort[t];
    o[u] = sport >>> 8;
    o[u + 1] = sport & 0xff;
    o[u + 2] = dport >>> 8;
    o[u + 3] = dport & 0xff;
    o[u + 4] = udpLen >>> 8;
    o[u + 5] = udpLen & 0xff;
    o[u + 6] = 0;
    o[u + 7] = 0;
    if (gueLen !== 0) {
      o[u + 8] = 0; // version 0, C 0, hlen 0
      o[u + 9] = PROTO_IPIP;
      o[u + 10] = 0;
      o[u + 11] = 0;
    }
    const ib = u + 8 + gueLen;
    if ((gf & GUE_CSUM) === 0 || innerCap !== tot) {
      // No checksum, or an inner packet not captured whole (no sum can cover bytes we do not have).
      this.copyInner(src, l3, o, ib, innerCap);
    } else {
      this.refreshViews(src, o);
      const sv = this.srcView, ov = this.outView;
      const e4 = innerCap & ~3;
      let b = 0;
      // The inner packet starts an even number of bytes into the UDP header
      // (8 or 12), so its 16-bit words are the checksum's words. At most
      // 16,384 words of 32 bits, each adding < 2^17: the sum stays below 2^32.
      let sum = this.tGueUdpSum[t] + udpLen + udpLen + sport;
      for (; b < e4; b += 4) {
        const w = sv.getUint32(l3 + b);
        ov.setUint32(ib + b, w);
        sum += (w >>> 16) + (w & 0xffff);
      }
      for (; b + 1 < innerCap; b += 2) {
        const hi = src[l3 + b], lo = src[l3 + b + 1];
        o[ib + b] = hi;
        o[ib + b + 1] = lo;
        sum += (hi << 8) | lo;
      }
      if (b < innerCap) {
        const last = src[l3 + b];
        o[ib + b] = last;
        sum += last << 8;
      }
      // RFC 768: a computed 0 is sent as all ones (0 means "no checksum").
      let c = ~fold(sum) & 0xffff;
      if (c === 0) c = 0xffff;
      o[u + 6] = c >>> 8;
      o[u + 7] = c & 0xff;
    }
    this.commitOut(batch, i, out, at, len, encap);
    return true;
  }
}
