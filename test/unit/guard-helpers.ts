// Crafted packets for the guard tests (built with the fixture table's
// builders, parsed by the real parser) and a clock-driven harness.

import { Batch } from '../../src/io/batch.js';
import { LinkType, Meta } from '../../src/wire/meta.js';
import { parseBatch } from '../../src/wire/parse.js';
import { IpProto } from '../../src/wire/ip-proto.js';
import * as ipv4 from '../../src/wire/ipv4.js';
import * as ipv6 from '../../src/wire/ipv6.js';
import { ip4, ip6, frag6, tcpSeg, udpDgram } from '../fixtures/packets.js';

export const SYN = 0x02, ACK = 0x10, RST = 0x04, FIN = 0x01, PSH = 0x08;

export interface Pkt { bytes: Buffer; t?: number }

/** An IPv4 TCP segment from src:sp to dst:dp (raw IP, link type RAW). */
export function tcp4(src: string, dst: string, sp: number, dp: number, flags: number, o: { seq?: number; ack?: number; payload?: Buffer } = {}): Buffer {
  return ip4(IpProto.TCP, tcpSeg(sp, dp, flags, o.payload ?? Buffer.alloc(0), { seq: o.seq ?? 1000, ack: o.ack ?? 0 }), { src: ipv4.parseIpv4(src), dst: ipv4.parseIpv4(dst), ident: 7 });
}

export function tcp6(src: string, dst: string, sp: number, dp: number, flags: number): Buffer {
  return ip6(IpProto.TCP, tcpSeg(sp, dp, flags), { src: ipv6.parseIpv6(src), dst: ipv6.parseIpv6(dst) });
}

export function udp4(src: string, dst: string): Buffer {
  return ip4(IpProto.UDP, udpDgram(5000, 53, Buffer.alloc(8)), { src: ipv4.parseIpv4(src), dst: ipv4.parseIpv4(dst) });
}

/**
 * The IPv4 fragments of one TCP segment: `cuts` are the fragment boundaries
 * in bytes of the TCP segment (multiples of 8), as hping3 -m 8 or the
 * suricata 6887 capture split a SYN (8 | 8 | rest).
 */
export function tcp4Frags(src: string, dst: string, flags: number, cuts: number[], id = 0x4242, o: { sp?: number; dp?: number } = {}): Buffer[] {
  const seg = tcpSeg(o.sp ?? 40000, o.dp ?? 80, flags);
  const bounds = [0, ...cuts, seg.length];
  const out: Buffer[] = [];
  for (let k = 0; k + 1 < bounds.length; k++) {
    const part = seg.subarray(bounds[k], bounds[k + 1]);
    out.push(ip4(IpProto.TCP, part, { src: ipv4.parseIpv4(src), dst: ipv4.parseIpv4(dst), ident: id, mf: k + 2 < bounds.length, fragOffset: bounds[k] / 8 }));
  }
  return out;
}

/** One IPv4 fragment carrying `data` at `offset8` (8-byte units). */
export function frag4(src: string, dst: string, data: Buffer, offset8: number, mf: boolean, id = 0x4242, proto: number = IpProto.TCP): Buffer {
  return ip4(proto, data, { src: ipv4.parseIpv4(src), dst: ipv4.parseIpv4(dst), ident: id, mf, fragOffset: offset8 });
}

/** The IPv6 fragments of one TCP segment, cut like tcp4Frags. */
export function tcp6Frags(src: string, dst: string, flags: number, cuts: number[], id = 0x77): Buffer[] {
  const seg = tcpSeg(40000, 80, flags);
  const bounds = [0, ...cuts, seg.length];
  const out: Buffer[] = [];
  for (let k = 0; k + 1 < bounds.length; k++) {
    const part = seg.subarray(bounds[k], bounds[k + 1]);
    out.push(ip6(IpProto.FRAGMENT, frag6(IpProto.TCP, bounds[k] / 8, k + 2 < bounds.length, id, Buffer.from(part)), { src: ipv6.parseIpv6(src), dst: ipv6.parseIpv6(dst) }));
  }
  return out;
}

/** Fills a fresh batch with raw IP packets at time t and parses it. */
export function parsed(pkts: Buffer[], t = 1000, cap = 256): { batch: Batch; meta: Meta } {
  const batch = new Batch(cap, cap * 2048);
  const meta = new Meta(cap);
  load(batch, meta, pkts, t);
  return { batch, meta };
}

/** Refills `batch` with `pkts` at time t (or per-packet times) and parses it. */
export function load(batch: Batch, meta: Meta, pkts: Buffer[], t: number | number[] = 1000): void {
  batch.clear();
  pkts.forEach((p, i) => {
    const ts = typeof t === 'number' ? t : t[i];
    const sec = Math.floor(ts);
    if (!batch.push(p, 0, p.length, p.length, sec, Math.round((ts - sec) * 1e9), LinkType.RAW)) throw new Error('batch full');
  });
  parseBatch(batch, meta);
}
