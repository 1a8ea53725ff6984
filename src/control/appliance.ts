// The live appliance: source → parse → flow → NAT → sink, driven by the
// native addon's readable events (one callback per batch of packets), plus
// the control plane around it (admin API, statistics, final counters).
//
// I/O mode `tun`: one TUN device carries both directions. The host's policy
// routing sends what arrives on the inside and outside interfaces into the
// TUN; what we write back is routed by the host's main table. The side a
// packet came from is its source address: inside prefixes → from inside.
//
// I/O mode `af-packet`: the appliance is the router. One AF_PACKET socket per
// interface (TPACKET_V3 receive ring, sendmmsg transmit), each polled from
// libuv (one callback per batch). The side is the ingress port (inside 0,
// outside 1); after translation the Ethernet addresses are rewritten (source:
// the egress interface, destination: the next hop's MAC from the kernel's
// neighbour table, src/control/neighbours.ts) and the batch is sent out of
// the other interface, hairpinned packets back out of the same one. The
// kernel keeps ARP and its own traffic; it must not forward (ip_forward=0,
// see the io.mode comment in config.ts).

import { Batch, Verdict } from '../io/batch.js';
import { Tun } from '../io/tun.js';
import { AfPacket, PacketFlag, VnetHdr } from '../io/af-packet.js';
import { RawTx } from '../io/raw-tx.js';
import { Meta, MetaFlag } from '../wire/meta.js';
import { parseBatch } from '../wire/parse.js';
import { PARSE_STATUS_NAMES } from '../wire/status.js';
import { FlowTable } from '../flow/flow-table.js';
import { Counters, COUNTER_DEFS } from '../counters.js';
import { Napt, type NaptConfig } from '../nat/napt.js';
import { NatCounters, NAT_COUNTER_DEFS } from '../nat/counters.js';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import { AdminServer } from './admin.js';
import { NextHops, NeighbourWatcher, readInterface, type InterfaceInfo } from './neighbours.js';
import { onesSum, pseudoSum4 } from '../wire/checksum.js';
import { formatIpv4, parseIpv4 } from '../wire/ipv4.js';
import { Counter } from '../counters.js';
import { Guard } from '../guard/guard.js';
import { LbControl } from './lb.js';
import { Handled } from '../lb/distributor.js';
import { changedKeys, isReloadable, type ReloadResult } from './reload.js';

/** Batches handled per readable event before yielding to the event loop. */
const MAX_BATCHES_PER_EVENT = 64;

export function naptConfigOf(cfg: Config, insideAddress?: string): NaptConfig {
  const n = cfg.nat;
  return {
    insideAddress,
    insidePrefixes: n.inside,
    pool: n.pool,
    filtering: n.filtering,
    portRange: n.ports,
    preserveParity: n.preserveParity,
    preserveRangeClass: n.preserveRangeClass,
    quarantineSec: n.quarantine,
    maxMappingsPerSubscriber: n.maxMappingsPerSubscriber,
    timeouts: n.timeouts,
    holdUnsolicitedSyn: n.holdUnsolicitedSyn,
    outsideMtu: n.outsideMtu,
    decrementTtl: n.decrementTtl ?? cfg.io.mode === 'af-packet',
    capacity: n.capacity,
  };
}

export class Appliance {
  readonly batch: Batch;
  readonly meta: Meta;
  readonly flows: FlowTable;
  readonly napt: Napt;
  readonly counters = new Counters();
  readonly natCounters = new NatCounters();
  /** Side each packet of the batch came from (0 inside, 1 outside). */
  private readonly dirOf: Uint8Array;
  /** Packets the NAT originates (ICMP errors) and fragments it releases. */
  private readonly originated = new Batch(64, 64 * 1600);
  /** The workload distributor (config `lb`), or null. */
  readonly lb: LbControl | null = null;
  /** The connection guard (config `guard`), or null: sensor and block check before flow tracking. */
  readonly guard: Guard | null = null;
  /** dsr-ipip: encapsulated copies of the batch's packets, sent after it. */
  private readonly encap: Batch;
  private tun: Tun | null = null;
  /** af-packet: one socket per side (0 inside, 1 outside). */
  private afp: [AfPacket, AfPacket] | null = null;
  /** af-packet: PacketFlag bits per packet of the batch. */
  private readonly pflags: Uint8Array;
  /** af-packet: 1 when the packet's partial checksum is kept partial and re-seeded after translation. */
  private readonly partial: Uint8Array;
  /** af-packet + vnetHdr: the IPv4 total length of a GSO super-frame, while the NAT sees its segment length instead. */
  private readonly gsoTot: Uint16Array;
  private readonly routed: boolean;
  private readonly vnet: boolean;
  private readonly ifs: [InterfaceInfo, InterfaceInfo] | null = null;
  readonly hops: NextHops | null = null;
  private watcher: NeighbourWatcher | null = null;
  private raw: RawTx | null = null;
  private admin: AdminServer | null = null;
  private statsTimer: NodeJS.Timeout | null = null;
  /** lb limits: queue timeouts and releases between batches (serviceLimits). */
  private limitsTimer: NodeJS.Timeout | null = null;
  private startedAt = 0;
  private lastStats = { at: 0, rx: 0, tx: 0 };
  /** The configuration in effect: the one started with, plus the sections reloads applied (RELOADABLE). */
  private running: Config;
  /** Between start() and stop(): a reload (re)starts the statistics timer only then. */
  private active = false;
  txPackets = 0;
  released = 0;
  /** GET /readyz: ready only while 'running' (the data path attached and started), not before nor while stopping. */
  private phase: 'created' | 'starting' | 'running' | 'stopping' | 'stopped' = 'created';

  constructor(readonly cfg: Config, readonly log: Logger) {
    this.routed = cfg.io.mode === 'af-packet';
    this.running = cfg;
    this.vnet = this.routed && cfg.io.vnetHdr;
    // GSO super-frames are up to 64 KiB (+ the 10-byte header): keep room for a few per batch.
    this.batch = new Batch(cfg.io.batch, this.vnet ? Math.max(cfg.io.batch * 2048, 8 << 20) : cfg.io.batch * 2048);
    this.meta = new Meta(cfg.io.batch);
    this.dirOf = new Uint8Array(cfg.io.batch);
    this.pflags = new Uint8Array(cfg.io.batch);
    this.partial = new Uint8Array(cfg.io.batch);
    this.gsoTot = new Uint16Array(cfg.io.batch);
    this.flows = new FlowTable({ capacity: cfg.flow.capacity, batchCapacity: cfg.io.batch }, this.counters);
    let insideAddress: string | undefined;
    if (this.routed) {
      // Control plane, once: the interfaces' MACs, addresses and prefixes.
      this.ifs = [readInterface(cfg.io.inside!), readInterface(cfg.io.outside!)];
      const gw = (a: string | undefined) => (a ? parseIpv4(a) | 0 : 0);
      this.hops = new NextHops(this.ifs, [gw(cfg.io.insideGateway), gw(cfg.io.outsideGateway)]);
      // ICMP errors to inside hosts come from the router's inside address (traceroute shows the gateway).
      const a = this.ifs[0].addrs[0];
      if (a !== undefined) insideAddress = `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
    }
    this.napt = new Napt(naptConfigOf(cfg, insideAddress));
    if (cfg.guard?.enabled) this.guard = new Guard(cfg.guard, { counters: this.counters, log, flows: this.flows, batchCapacity: cfg.io.batch, rawTx: true });
    this.encap = new Batch(cfg.lb ? cfg.io.batch : 1, cfg.lb ? cfg.io.batch * 1600 : 64);
    if (cfg.lb) {
      const hops = this.hops;
      const out = this.ifs?.[1].addrs[0];
      this.lb = new LbControl(cfg.lb, this.flows, log, {
        localAddress: out === undefined ? undefined : formatIpv4(out),
        // af-packet: directly connected targets' MACs from the kernel's neighbour table (asked for when missing).
        resolveMac: hops === null ? undefined : (address: string) => {
          const a = parseIpv4(address) | 0;
          const t = hops.tables[1], slot = t.slotOf(a);
          if (slot < 0) {
            hops.request(1, a);
            return undefined;
          }
          return Array.from(t.macs.subarray(slot * 6, slot * 6 + 6), (x) => x.toString(16).padStart(2, '0')).join(':');
        },
      });
    }
  }

  async start(): Promise<void> {
    this.phase = 'starting';
    const io = this.cfg.io;
    if (this.routed) {
      const opts = { ringBlocks: io.ringBlocks, blockSize: io.ringBlockSize, blockTimeoutMs: 1, vnetHdr: io.vnetHdr };
      const inside = new AfPacket(io.inside!, { ...opts, port: 0 });
      let outside: AfPacket;
      try {
        outside = new AfPacket(io.outside!, { ...opts, port: 1 });
      } catch (e) {
        inside.close();
        throw e;
      }
      this.afp = [inside, outside];
      this.watcher = new NeighbourWatcher(this.hops!);
      this.watcher.start();
    } else {
      this.tun = new Tun(io.tun);
    }
    this.raw = new RawTx();
    const ad = this.cfg.admin;
    this.admin = new AdminServer(this, { socket: ad.socket, listen: ad.listen, token: ad.token, tokenFile: ad.tokenFile }, this.log);
    await this.admin.listen();
    if (this.lb) await this.lb.start();
    if (this.guard) await this.guard.start();
    this.startedAt = Date.now();
    this.lastStats = { at: this.startedAt, rx: 0, tx: 0 };
    this.active = true;
    if (this.afp) {
      const [a, b] = this.afp;
      a.start(() => this.onSideReadable(0));
      b.start(() => this.onSideReadable(1));
    } else {
      this.tun!.start(() => this.onReadable());
    }
    this.phase = 'running';
    if (this.cfg.stats.interval > 0) {
      this.statsTimer = setInterval(() => this.printStats(), this.cfg.stats.interval * 1000);
    }
    if (this.lb) this.limitsTimer = setInterval(() => this.serviceLimits(), 200).unref();
    this.log.info('appliance started', this.routed
      ? { mode: 'af-packet', inside: io.inside, outside: io.outside, vnetHdr: io.vnetHdr, pool: this.cfg.nat.pool, insidePrefixes: this.cfg.nat.inside, admin: this.cfg.admin.socket }
      : { mode: 'tun', tun: this.tun!.name, pool: this.cfg.nat.pool, inside: this.cfg.nat.inside, admin: this.cfg.admin.socket });
  }

  /** af-packet: drains one side's ring; each batch is routed and sent out of the other side (hairpin: the same one). */
  private onSideReadable(side: number): void {
    const afp = this.afp;
    if (!afp) return;
    const rx = afp[side];
    for (let k = 0; k < MAX_BATCHES_PER_EVENT; k++) {
      const n = rx.recv(this.batch, this.pflags);
      if (n === 0) break;
      const hairpins = this.route(side, Date.now() / 1000);
      this.transmit(side, hairpins);
      if (n < this.batch.capacity && this.batch.used < this.batch.arena.length >>> 1) break; // the ring had no more
    }
  }

  /** Drains the TUN: each batch is parsed, tracked, translated and written back. */
  private onReadable(): void {
    const tun = this.tun;
    if (!tun) return;
    for (let k = 0; k < MAX_BATCHES_PER_EVENT; k++) {
      const n = tun.recv(this.batch);
      if (n === 0) break;
      this.process(Date.now() / 1000);
      tun.send(this.batch);
    }
  }

  /** The data path for one batch already in this.batch. */
  process(nowSec: number): void {
    const b = this.batch, m = this.meta, cv = this.counters.values;
    const n = b.count;
    parseBatch(b, m);
    this.guard?.inspect(b, m, nowSec);
    this.flows.trackBatch(b, m, this.counters);
    this.guard?.afterTrack();
    const dir = this.dirOf, src4 = m.src4, flags = m.flags, napt = this.napt;
    let bytes = 0;
    for (let i = 0; i < n; i++) {
      bytes += b.origLen[i];
      // TUN mode: the side is the source address (inside prefixes → inside).
      dir[i] = (flags[i] & MetaFlag.L3) !== 0 && m.ipVersion[i] === 4 && napt.isInside(src4[i]) ? 0 : 1;
    }
    cv[RX_PACKETS] += n;
    cv[RX_BYTES] += bytes;
    const out = this.originated;
    out.clear();
    const lb = this.lb;
    if (lb !== null) this.distribute(lb);
    napt.translateBatch(b, m, dir, nowSec, this.natCounters, out, this.flows);
    if (lb !== null) this.unpark();
    let fwd = 0;
    for (let i = 0; i < n; i++) if (b.verdict[i] === Verdict.FORWARD) fwd++;
    this.txPackets += fwd;
    if (out.count > 0) this.sendOriginated(out);
    if (this.encap.count > 0) {
      this.tun?.send(this.encap);
      this.txPackets += this.encap.count;
    }
  }

  /**
   * The distributor's turn (after flow tracking, before the NAT): packets it
   * handled are parked (a verdict the NAT skips) so the NAT leaves them alone,
   * and dsr-ipip copies are collected in this.encap.
   */
  private distribute(lb: LbControl): void {
    const b = this.batch, v = b.verdict, n = b.count;
    this.encap.clear();
    // Limits: released SYNs join this.encap; resets for refused connections join this.originated (raw IPv4, RawTx).
    lb.dist.distributeBatch(b, this.meta, this.flows.flowOf, this.encap, this.originated);
    const h = lb.dist.handled;
    for (let i = 0; i < n; i++) if (h[i] !== H_NONE && v[i] === Verdict.FORWARD) v[i] = PARKED;
  }

  private unpark(): void {
    const v = this.batch.verdict, n = this.batch.count;
    for (let i = 0; i < n; i++) if (v[i] === PARKED) v[i] = Verdict.FORWARD;
  }

  /**
   * lb limits while no packet comes (src/lb/distributor.ts "Limits"): held
   * SYNs whose wait ended, or whose target got room, leave as they would
   * with a batch (this.encap), resets through the raw socket. Between
   * batches only (a timer callback never runs inside one).
   */
  private serviceLimits(): void {
    const lb = this.lb;
    if (lb === null || !lb.dist.limitsOn) return;
    this.encap.clear();
    const out = this.originated;
    out.clear();
    lb.dist.serviceLimits(Date.now() / 1000, this.encap, out);
    if (out.count > 0) this.sendOriginated(out);
    if (this.encap.count > 0) {
      if (this.afp) this.sendEncapsulated();
      else {
        this.tun?.send(this.encap);
        this.txPackets += this.encap.count;
      }
    }
  }

  /**
   * af-packet data path for one batch from `side`: filter what is the
   * kernel's, checksum fix-ups, flow tracking, NAT, next hop + MAC rewrite.
   * Returns the number of FORWARD packets going back out of `side` (hairpin).
   */
  route(side: number, nowSec: number): number {
    const b = this.batch, m = this.meta, cv = this.counters.values, hops = this.hops!;
    const n = b.count, arena = b.arena, off = b.off, verdict = b.verdict;
    const dir = this.dirOf, pf = this.pflags, partial = this.partial, vnet = this.vnet;
    parseBatch(b, m);
    const flags = m.flags, ipv = m.ipVersion, dst4 = m.dst4, l3Off = m.l3Off, l4Off = m.l4Off, proto = m.l4Proto;
    const mac = hops.ifMac, mo = side * 6;
    let bytes = 0;
    for (let i = 0; i < n; i++) {
      bytes += b.origLen[i];
      dir[i] = side;
      partial[i] = 0;
      const o = off[i];
      // Only frames addressed to this interface are routed; broadcast ARP and
      // the like are the kernel's (it receives its own copy of every frame).
      if (arena[o] !== mac[mo] || arena[o + 1] !== mac[mo + 1] || arena[o + 2] !== mac[mo + 2] ||
          arena[o + 3] !== mac[mo + 3] || arena[o + 4] !== mac[mo + 4] || arena[o + 5] !== mac[mo + 5]) {
        verdict[i] = Verdict.LOCAL;
        cv[C_NOT_FOR_US]++;
        continue;
      }
      if ((flags[i] & MetaFlag.L3) === 0 || ipv[i] !== 4) {
        verdict[i] = Verdict.LOCAL;
        cv[C_NOT_IPV4]++;
        continue;
      }
      const d = dst4[i] | 0;
      // Own addresses, limited broadcast and multicast (RFC 1812 5.3.5): the kernel answers those.
      if ((d >>> 28) >= 14 || hops.isOwn(d)) {
        verdict[i] = Verdict.LOCAL;
        cv[C_LOCAL]++;
        continue;
      }
      if ((pf[i] & PacketFlag.CSUM_NOT_READY) !== 0 && (flags[i] & MetaFlag.L4) !== 0 && (flags[i] & MetaFlag.FRAGMENT) === 0) {
        const p = proto[i];
        if (p === 6 || p === 17) {
          if (vnet) {
            // Stays partial: the kernel (or the receiver) completes it; only the
            // pseudo-header seed must follow the new addresses (after translation).
            partial[i] = 1;
            if ((pf[i] & PacketFlag.GSO) !== 0) this.maskGsoLength(i);
          } else {
            // CHECKSUM_PARTIAL from a local sender: the field holds only the
            // pseudo-header sum. Complete it (RFC 1071 over the segment, the
            // seed standing in for the pseudo header) so the NAT's incremental
            // update (RFC 1624) starts from a real checksum.
            const l3 = o + l3Off[i], l4 = o + l4Off[i];
            const end = l3 + ((arena[l3 + 2] << 8) | arena[l3 + 3]);
            const at = l4 + (p === 6 ? 16 : 6);
            if (end <= o + b.capLen[i] && at + 2 <= end) {
              let c = ~onesSum(arena, l4, end - l4) & 0xffff;
              if (c === 0 && p === 17) c = 0xffff; // RFC 768: 0 means no checksum
              arena[at] = c >>> 8;
              arena[at + 1] = c & 0xff;
              cv[C_CSUM_COMPLETED]++;
            }
          }
        }
      }
    }
    cv[RX_PACKETS] += n;
    cv[RX_BYTES] += bytes;
    this.guard?.inspect(b, m, nowSec);
    this.flows.trackBatch(b, m, this.counters);
    this.guard?.afterTrack();
    const out = this.originated;
    out.clear();
    const lb = this.lb;
    if (lb !== null) this.distribute(lb);
    this.napt.translateBatch(b, m, dir, nowSec, this.natCounters, out, this.flows);
    if (lb !== null) this.unpark();
    const egress = this.napt.egress;
    const handled = lb !== null ? lb.dist.handled : null;
    let hairpins = 0, fwd = 0;
    for (let i = 0; i < n; i++) {
      if (partial[i] === 2) this.unmaskGsoLength(i);
      if (verdict[i] !== Verdict.FORWARD) continue;
      const e = egress[i];
      if (handled !== null && handled[i] !== H_NONE) {
        const hk = handled[i];
        if (hk === H_LOCAL) {
          // A VIP:port this host serves (TLS terminator): the kernel has its own copy.
          verdict[i] = Verdict.LOCAL;
          continue;
        }
        if (hk === H_L2) {
          // dsr-l2: the destination MAC is the target's; the source is the egress interface.
          const o = off[i], eo = e * 6;
          arena[o + 6] = mac[eo]; arena[o + 7] = mac[eo + 1]; arena[o + 8] = mac[eo + 2];
          arena[o + 9] = mac[eo + 3]; arena[o + 10] = mac[eo + 4]; arena[o + 11] = mac[eo + 5];
          if (e === side) hairpins++;
          fwd++;
          continue;
        }
      }
      const nh = hops.nextHop(e, dst4[i] | 0);
      if (nh === 0) {
        verdict[i] = Verdict.DROP;
        cv[C_NO_ROUTE]++;
        continue;
      }
      const t = hops.tables[e];
      const slot = t.slotOf(nh);
      if (slot < 0) {
        verdict[i] = Verdict.DROP;
        cv[C_NO_NEIGHBOUR]++;
        hops.request(e, nh);
        continue;
      }
      const o = off[i], macs = t.macs, ms = slot * 6, eo = e * 6;
      arena[o] = macs[ms]; arena[o + 1] = macs[ms + 1]; arena[o + 2] = macs[ms + 2];
      arena[o + 3] = macs[ms + 3]; arena[o + 4] = macs[ms + 4]; arena[o + 5] = macs[ms + 5];
      arena[o + 6] = mac[eo]; arena[o + 7] = mac[eo + 1]; arena[o + 8] = mac[eo + 2];
      arena[o + 9] = mac[eo + 3]; arena[o + 10] = mac[eo + 4]; arena[o + 11] = mac[eo + 5];
      if (partial[i] !== 0) this.reseed(i);
      if (e === side) hairpins++;
      fwd++;
    }
    if (hairpins !== 0) cv[C_HAIRPIN] += hairpins;
    this.txPackets += fwd;
    if (out.count > 0) this.sendOriginated(out);
    if (this.encap.count > 0) this.sendEncapsulated();
    return hairpins;
  }

  /**
   * af-packet: dsr-ipip packets leave the outside interface; the outer
   * destination (the target) gets its next hop's MAC like any routed packet.
   */
  private sendEncapsulated(): void {
    const x = this.encap, hops = this.hops!, arena = x.arena, mac = hops.ifMac, cv = this.counters.values;
    const t = hops.tables[1];
    const kind = this.lb !== null ? this.lb.dist.outKind : null;
    for (let i = 0; i < x.count; i++) {
      const o = x.off[i];
      if (kind !== null && kind[i] === H_L2) {
        // A held dsr-l2 SYN released: its destination MAC is the target's already.
        for (let k = 0; k < 6; k++) arena[o + 6 + k] = mac[6 + k];
        continue;
      }
      const l3 = o + 14;
      const d = ((arena[l3 + 16] << 24) | (arena[l3 + 17] << 16) | (arena[l3 + 18] << 8) | arena[l3 + 19]) | 0;
      const nh = hops.nextHop(1, d);
      const slot = nh === 0 ? -1 : t.slotOf(nh);
      if (slot < 0) {
        x.verdict[i] = Verdict.DROP;
        cv[C_NO_NEIGHBOUR]++;
        if (nh !== 0) hops.request(1, nh);
        continue;
      }
      const macs = t.macs, ms = slot * 6;
      for (let k = 0; k < 6; k++) {
        arena[o + k] = macs[ms + k];
        arena[o + 6 + k] = mac[6 + k];
      }
    }
    const sent = this.afp![1].transmit(x);
    this.txPackets += sent;
  }

  /**
   * The NAT refuses (DF) or drops packets longer than the outside MTU
   * (RFC 1191). A GSO super-frame is longer, but what leaves is its
   * segments: so while the NAT looks, the IPv4 total length says the length
   * of one full segment (IP + TCP headers + gso_size), and the real one is
   * put back after (unmaskGsoLength). The NAT updates the IP checksum by
   * deltas of the fields it rewrites only, so the checksum stays right for
   * the restored length. (A hook in the NAT, "judge the MTU on this
   * length", would make this unnecessary; see the report.)
   */
  private maskGsoLength(i: number): void {
    const b = this.batch, m = this.meta, arena = b.arena, o = b.off[i];
    const h = o - VnetHdr.LEN;
    const gsoSize = arena[h + VnetHdr.GSO_SIZE] | (arena[h + VnetHdr.GSO_SIZE + 1] << 8);
    const l3 = o + m.l3Off[i], l4 = o + m.l4Off[i];
    const tot = (arena[l3 + 2] << 8) | arena[l3 + 3];
    const thl = m.l4Proto[i] === 6 ? (arena[l4 + 12] >>> 4) << 2 : 8;
    const seg = (l4 - l3) + thl + gsoSize;
    if (gsoSize === 0 || seg >= tot) return;
    this.gsoTot[i] = tot;
    arena[l3 + 2] = seg >>> 8;
    arena[l3 + 3] = seg & 0xff;
    this.partial[i] = 2;
  }

  private unmaskGsoLength(i: number): void {
    const b = this.batch, arena = b.arena, l3 = b.off[i] + this.meta.l3Off[i], tot = this.gsoTot[i];
    arena[l3 + 2] = tot >>> 8;
    arena[l3 + 3] = tot & 0xff;
  }

  /**
   * A partial checksum after translation: the field must hold the folded
   * pseudo-header sum of the NEW addresses and the segment length (what
   * Linux's __tcp_v4_send_check / udp4_hwcsum seed it with; for a GSO
   * super-frame the length of the whole super-frame, which the kernel's
   * segmentation corrects per segment). The NAT's incremental update also
   * folded the port change into it, which a partial checksum must not carry
   * (the ports are summed from the segment itself), so it is recomputed,
   * not adjusted. The field is the one the virtio_net_hdr names.
   */
  private reseed(i: number): void {
    const b = this.batch, m = this.meta, arena = b.arena, o = b.off[i];
    const h = o - VnetHdr.LEN;
    if ((arena[h + VnetHdr.FLAGS] & VnetHdr.F_NEEDS_CSUM) === 0) return;
    const at = o + (arena[h + VnetHdr.CSUM_START] | (arena[h + VnetHdr.CSUM_START + 1] << 8)) +
      (arena[h + VnetHdr.CSUM_OFFSET] | (arena[h + VnetHdr.CSUM_OFFSET + 1] << 8));
    const l3 = o + m.l3Off[i];
    const tot = (arena[l3 + 2] << 8) | arena[l3 + 3];
    const ihl = (arena[l3] & 15) << 2;
    if (at + 2 > o + b.capLen[i]) return;
    const seed = pseudoSum4(m.src4[i] >>> 0, m.dst4[i] >>> 0, m.l4Proto[i], tot - ihl);
    arena[at] = seed >>> 8;
    arena[at + 1] = seed & 0xff;
    const cv = this.counters.values;
    cv[C_CSUM_SEEDED]++;
    if ((this.pflags[i] & PacketFlag.GSO) !== 0) cv[C_GSO]++;
  }

  /** Sends the routed batch: out of the other side, then the hairpinned packets back out of `side`. */
  private transmit(side: number, hairpins: number): void {
    const afp = this.afp!, b = this.batch, v = b.verdict, n = b.count;
    let sent = 0, want = 0;
    for (let i = 0; i < n; i++) if (v[i] === Verdict.FORWARD) want++;
    if (hairpins === 0) {
      if (want > 0) sent = afp[side ^ 1].transmit(b);
    } else {
      // sendBatch sends FORWARD packets only: park the other group meanwhile.
      const eg = this.napt.egress;
      for (let i = 0; i < n; i++) if (v[i] === Verdict.FORWARD && eg[i] === side) v[i] = PARKED;
      if (want > hairpins) sent += afp[side ^ 1].transmit(b);
      for (let i = 0; i < n; i++) {
        if (v[i] === Verdict.FORWARD) v[i] = PARKED_DONE;
        else if (v[i] === PARKED) v[i] = Verdict.FORWARD;
      }
      sent += afp[side].transmit(b);
      for (let i = 0; i < n; i++) if (v[i] === PARKED_DONE) v[i] = Verdict.FORWARD;
    }
    if (sent < want) {
      this.counters.values[C_TX_DROPPED] += want - sent;
      this.txPackets -= want - sent;
    }
  }

  /** ICMP errors leave through the raw socket; released fragments go back through the TUN. */
  private sendOriginated(out: Batch): void {
    // Originated packets are raw IPv4; released fragments keep their link
    // header (Ethernet in af-packet mode): strip it, the host routes both
    // kinds by destination (locally originated, so ip_forward=0 does not
    // stop them). The slow path: these are rate-limited where they are made.
    for (let k = 0; k < out.count; k++) {
      if (out.linkType[k] === LINK_EN10MB && out.capLen[k] > 14) {
        out.off[k] += 14;
        out.capLen[k] -= 14;
        out.linkType[k] = LINK_RAW;
      }
    }
    if (this.raw) this.raw.sendBatch(out);
    this.released += out.count;
  }

  /**
   * SIGHUP, with the file read and validated again. What changes while
   * running (RELOADABLE): the lb section (the distributor's tables are built
   * beside the old ones and swapped whole; established flows keep their
   * targets, removed targets included: src/control/lb.ts), log.level and
   * stats.interval. Every other key that differs is logged as needing a
   * restart and keeps its running value: the NAT's mappings, the flow
   * table, the guard's tables and the I/O rings are sized and bound at
   * start, and rebuilding them would drop every established flow and NAT
   * mapping. Throws, with nothing applied, when the lb section is added or
   * removed or its new tables cannot be built.
   */
  async reload(next: Config): Promise<ReloadResult> {
    const cur = this.running;
    const changed = changedKeys(cur, next);
    const applied = changed.filter(isReloadable);
    const needsRestart = changed.filter((k) => !isReloadable(k));
    if (!cur.lb !== !next.lb) throw new Error(`reload: ${next.lb ? 'adding' : 'removing'} the whole lb section needs a restart; nothing was changed`);
    // Unchanged services are not rebuilt: that would restart their health checks from 'up'.
    if (this.lb && next.lb && applied.some((k) => k.startsWith('lb.'))) await this.lb.reload(next.lb);
    if (next.log.level !== cur.log.level) this.log.setLevel(next.log.level);
    if (next.stats.interval !== cur.stats.interval) {
      if (this.statsTimer) clearInterval(this.statsTimer);
      this.statsTimer = this.active && next.stats.interval > 0 ? setInterval(() => this.printStats(), next.stats.interval * 1000) : null;
    }
    this.running = { ...cur, lb: next.lb, log: next.log, stats: next.stats };
    if (needsRestart.length > 0) this.log.warn('reload: these keys changed but need a restart; their running values stay', { keys: needsRestart });
    return { applied, needsRestart };
  }

  counterValues(): Record<string, number> {
    const o: Record<string, number> = { ...this.counters.toObject(), ...this.natCounters.toObject() };
    for (let s = 0; s < PARSE_STATUS_NAMES.length; s++) o[`parse_${PARSE_STATUS_NAMES[s]}`] = this.meta.statusCounts[s];
    o.tx_packets = this.txPackets;
    o.originated_sent = this.raw?.sent ?? 0;
    o.originated_errors = this.raw?.errors ?? 0;
    o.flows = this.flows.size;
    o.nat_mappings = this.napt.stats().mappings ?? 0;
    if (this.lb) Object.assign(o, this.lb.counterValues());
    if (this.guard) Object.assign(o, this.guard.stats());
    if (this.tun) for (const [k, v] of Object.entries(this.tun.stats())) o[`tun_${k}`] = v;
    if (this.afp) {
      for (let s = 0; s < 2; s++) for (const [k, v] of Object.entries(this.afp[s].stats())) o[`afp_${s === 0 ? 'inside' : 'outside'}_${k}`] = v;
    }
    if (this.watcher) {
      o.neigh_refreshes = this.watcher.refreshes;
      o.neigh_probes = this.watcher.probes;
      o.neigh_errors = this.watcher.errors;
      o.neigh_want_dropped = this.hops!.wantDropped;
    }
    return o;
  }

  /** One human line: rates, tables, drops by reason. */
  statsLine(): string {
    const c = this.counterValues();
    const now = Date.now();
    const dt = Math.max(1e-3, (now - this.lastStats.at) / 1000);
    const rxRate = (c.rx_packets - this.lastStats.rx) / dt;
    const txRate = (c.tx_packets - this.lastStats.tx) / dt;
    this.lastStats = { at: now, rx: c.rx_packets, tx: c.tx_packets };
    const drops = Object.entries(c).filter(([k, v]) => v > 0 && (k.startsWith('nat_drop_') || k.startsWith('nat_syn_dropped') || k.startsWith('nat_icmp_error_no') || (k.startsWith('parse_') && k !== 'parse_ok') || k === 'guard_blocked_drop' || k === 'guard_suspicious_drop'))
      .map(([k, v]) => `${k.replace(/^nat_drop_/, '')}=${v}`);
    return `rx ${fmt(rxRate)} pkt/s  tx ${fmt(txRate)} pkt/s  total ${c.rx_packets} pkts  flows ${c.flows}  nat mappings ${c.nat_mappings}  translated out ${c.nat_out_translated} in ${c.nat_in_translated}  drops ${drops.length ? drops.join(' ') : 'none'}`;
  }

  private printStats(): void {
    process.stdout.write(`${new Date().toISOString().slice(11, 19)}  ${this.statsLine()}\n`);
  }

  /** GET /readyz (src/control/admin.ts). */
  readiness(): { ready: boolean; state: string } {
    return { ready: this.phase === 'running', state: this.phase };
  }

  async stop(): Promise<Record<string, number>> {
    this.phase = 'stopping';
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
    if (this.limitsTimer) clearInterval(this.limitsTimer);
    this.limitsTimer = null;
    this.active = false;
    const final = this.counterValues();
    this.tun?.stop();
    this.tun?.close();
    this.tun = null;
    if (this.afp) for (const a of this.afp) { a.stop(); a.close(); }
    this.afp = null;
    this.watcher?.stop();
    this.watcher = null;
    this.raw?.close();
    this.raw = null;
    await this.lb?.stop();
    await this.guard?.stop();
    await this.admin?.close();
    this.admin = null;
    this.phase = 'stopped';
    return final;
  }
}

const RX_PACKETS = COUNTER_DEFS.findIndex((d) => d[0] === 'rx_packets');
const RX_BYTES = COUNTER_DEFS.findIndex((d) => d[0] === 'rx_bytes');
const C_NOT_FOR_US = Counter.route_not_for_us, C_NOT_IPV4 = Counter.route_not_ipv4, C_LOCAL = Counter.route_local;
const C_NO_ROUTE = Counter.route_no_route, C_NO_NEIGHBOUR = Counter.route_no_neighbour, C_CSUM_COMPLETED = Counter.route_csum_completed;
const C_CSUM_SEEDED = Counter.route_csum_seeded, C_GSO = Counter.route_gso, C_HAIRPIN = Counter.route_hairpin, C_TX_DROPPED = Counter.route_tx_dropped;
/** Verdicts used only inside transmit() to split a batch between the two sockets. */
const PARKED = 0xfe, PARKED_DONE = 0xfd;
const H_NONE = Handled.NONE, H_L2 = Handled.L2, H_LOCAL = Handled.LOCAL;
const LINK_EN10MB = 1, LINK_RAW = 101;
void NAT_COUNTER_DEFS;

function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0);
}
