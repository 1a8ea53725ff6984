// Packet crafting and verification for the NAT tests: real bytes (Ethernet +
// IPv4 + TCP/UDP/ICMP with valid checksums), run through parseBatch and
// translateBatch, then re-parsed and every checksum recomputed in full with
// src/wire/checksum.ts to compare with the incrementally updated ones.

import { Batch, Verdict } from '../../src/io/batch.js';
import { LinkType, Meta } from '../../src/wire/meta.js';
import { parseBatch } from '../../src/wire/parse.js';
import { checksum, onesSum, pseudoSum4 } from '../../src/wire/checksum.js';
import * as ipv4 from '../../src/wire/ipv4.js';
import { Napt, type NaptConfig } from '../../src/nat/napt.js';
import { NatCounters } from '../../src/nat/counters.js';

export const ip = ipv4.parseIpv4;
export const fmt = ipv4.formatIpv4;

export const IN_A = ip('10.0.0.1');
export const IN_B = ip('10.0.0.2');
export const IN_C = ip('10.0.1.7');
export const REM_1 = ip('203.0.113.10');
export const REM_2 = ip('198.51.100.20');
export const REM_1B = ip('203.0.113.11');
export const ROUTER = ip('192.0.2.254');
export const POOL = ['192.0.2.1', '192.0.2.2', '192.0.2.3', '192.0.2.4'];

export const TCPF = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10 } as const;

export function baseConfig(over: Partial<NaptConfig> = {}): NaptConfig {
  return { insidePrefixes: ['10.0.0.0/8'], pool: POOL, capacity: 1024, seed: 12345, ...over };
}

// ---- builders ----

export interface IpOpts {
  ttl?: number;
  id?: number;
  df?: boolean;
  mf?: boolean;
  fragOff?: number; // 8-byte units
  tos?: number;
}

export function ipv4Packet(src: number, dst: number, proto: number, payload: Buffer, o: IpOpts = {}): Buffer {
  const b = Buffer.alloc(20 + payload.length);
  b[0] = 0x45;
  b[1] = o.tos ?? 0;
  b.writeUInt16BE(20 + payload.length, 2);
  b.writeUInt16BE(o.id ?? 0x4242, 4);
  b.writeUInt16BE((o.df ? 0x4000 : 0) | (o.mf ? 0x2000 : 0) | (o.fragOff ?? 0), 6);
  b[8] = o.ttl ?? 64;
  b[9] = proto;
  b.writeUInt32BE(src >>> 0, 12);
  b.writeUInt32BE(dst >>> 0, 16);
  payload.copy(b, 20);
  b.writeUInt16BE(checksum(b, 0, 20), 10);
  return b;
}

export interface TcpOpts { seq?: number; ack?: number; payload?: Buffer; window?: number }
export function tcpSegment(src: number, dst: number, sp: number, dp: number, flags: number, o: TcpOpts = {}): Buffer {
  const pl = o.payload ?? Buffer.alloc(0);
  const b = Buffer.alloc(20 + pl.length);
  b.writeUInt16BE(sp, 0);
  b.writeUInt16BE(dp, 2);
  b.writeUInt32BE((o.seq ?? 1000) >>> 0, 4);
  b.writeUInt32BE((o.ack ?? 0) >>> 0, 8);
  b[12] = 5 << 4;
  b[13] = flags;
  b.writeUInt16BE(o.window ?? 65535, 14);
  pl.copy(b, 20);
  b.writeUInt16BE(checksum(b, 0, b.length, pseudoSum4(src, dst, 6, b.length)), 16);
  return b;
}
export function udpDatagram(src: number, dst: number, sp: number, dp: number, payload: Buffer, zeroChecksum = false): Buffer {
  const b = Buffer.alloc(8 + payload.length);
  b.writeUInt16BE(sp, 0);
  b.writeUInt16BE(dp, 2);
  b.writeUInt16BE(b.length, 4);
  payload.copy(b, 8);
  if (!zeroChecksum) {
    const c = checksum(b, 0, b.length, pseudoSum4(src, dst, 17, b.length));
    b.writeUInt16BE(c === 0 ? 0xffff : c, 6);
  }
  return b;
}
export function icmpMessage(type: number, code: number, rest: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(8 + payload.length);
  b[0] = type;
  b[1] = code;
  b.writeUInt32BE(rest >>> 0, 4);
  payload.copy(b, 8);
  b.writeUInt16BE(checksum(b, 0, b.length), 2);
  return b;
}

export function tcp4(src: number, dst: number, sp: number, dp: number, flags: number, o: TcpOpts & IpOpts = {}): Buffer {
  return ipv4Packet(src, dst, 6, tcpSegment(src, dst, sp, dp, flags, o), o);
}
export function udp4(src: number, dst: number, sp: number, dp: number, payload: Buffer = Buffer.from('hello nat'), o: IpOpts & { zero?: boolean } = {}): Buffer {
  return ipv4Packet(src, dst, 17, udpDatagram(src, dst, sp, dp, payload, o.zero ?? false), o);
}
export function echo4(src: number, dst: number, type: number, id: number, seq = 1, o: IpOpts = {}): Buffer {
  return ipv4Packet(src, dst, 1, icmpMessage(type, 0, ((id << 16) | seq) >>> 0, Buffer.from('abcdefghijklmnop')), o);
}
/** An ICMP error from src to dst quoting `quoted` (an IP packet), cut to quoteLen bytes. */
export function icmpError4(src: number, dst: number, type: number, code: number, quoted: Buffer, quoteLen = quoted.length, rest = 0, o: IpOpts = {}): Buffer {
  return ipv4Packet(src, dst, 1, icmpMessage(type, code, rest, quoted.subarray(0, quoteLen)), o);
}

const ETH_HDR = Buffer.from('02000000000202000000000108 00'.replace(/ /g, ''), 'hex');
export function eth(ipPkt: Buffer): Buffer {
  return Buffer.concat([ETH_HDR, ipPkt]);
}

/** Splits an IPv4 packet into fragments carrying at most `chunk` data bytes each (multiple of 8). */
export function fragment(pkt: Buffer, chunk: number): Buffer[] {
  const hl = (pkt[0] & 0x0f) << 2;
  const data = pkt.subarray(hl);
  const out: Buffer[] = [];
  for (let off = 0; off < data.length; off += chunk) {
    const part = data.subarray(off, Math.min(data.length, off + chunk));
    const last = off + chunk >= data.length;
    const h = Buffer.from(pkt.subarray(0, hl));
    h.writeUInt16BE(hl + part.length, 2);
    h.writeUInt16BE((pkt.readUInt16BE(6) & 0x4000) | (last ? 0 : 0x2000) | (off >>> 3), 6);
    h.writeUInt16BE(0, 10);
    h.writeUInt16BE(checksum(h, 0, hl), 10);
    out.push(Buffer.concat([h, part]));
  }
  return out;
}

/** Reassembles IPv4 fragments (any order) of one datagram into one packet. */
export function reassemble(frags: Buffer[]): Buffer {
  const sorted = [...frags].sort((a, b) => (a.readUInt16BE(6) & 0x1fff) - (b.readUInt16BE(6) & 0x1fff));
  const hl = (sorted[0][0] & 0x0f) << 2;
  const parts = sorted.map((f) => f.subarray((f[0] & 0x0f) << 2, f.readUInt16BE(2)));
  const h = Buffer.from(sorted[0].subarray(0, hl));
  const data = Buffer.concat(parts);
  h.writeUInt16BE(hl + data.length, 2);
  h.writeUInt16BE(0, 6);
  h.writeUInt16BE(0, 10);
  h.writeUInt16BE(checksum(h, 0, hl), 10);
  return Buffer.concat([h, data]);
}

// ---- running the NAT ----

export interface Outcome {
  verdict: number;
  egress: number;
  mapping: number;
  /** The frame after translation (a copy). */
  frame: Buffer;
  /** The IP packet after translation (a copy, link header removed). */
  ip: Buffer;
}

export class Harness {
  readonly napt: Napt;
  readonly counters = new NatCounters();
  readonly batch = new Batch(64, 64 * 2048);
  readonly meta = new Meta(64);
  readonly dir = new Uint8Array(64);
  readonly out = new Batch(64, 64 * 2048);
  /** Every originated / released packet so far (copies, raw IP or frames with their link type). */
  readonly originated: { linkType: number; side: number; bytes: Buffer }[] = [];

  constructor(cfg: NaptConfig) {
    this.napt = new Napt(cfg);
  }

  c(name: Parameters<NatCounters['get']>[0]): number {
    return this.counters.get(name);
  }

  /** Runs one batch of IP packets (wrapped in Ethernet) from the given sides at time `now`. */
  run(pkts: Buffer[], sides: number | number[], now: number): Outcome[] {
    const b = this.batch;
    b.clear();
    pkts.forEach((p, k) => {
      const f = eth(p);
      if (!b.push(f, 0, f.length, f.length, Math.floor(now), 0, LinkType.EN10MB, 0)) throw new Error('test batch full');
      this.dir[k] = Array.isArray(sides) ? sides[k] : sides;
    });
    parseBatch(b, this.meta);
    this.out.clear();
    this.napt.translateBatch(b, this.meta, this.dir, now, this.counters, this.out);
    for (let k = 0; k < this.out.count; k++) {
      this.originated.push({
        linkType: this.out.linkType[k], side: this.out.port[k],
        bytes: Buffer.from(this.out.arena.subarray(this.out.off[k], this.out.off[k] + this.out.capLen[k])),
      });
    }
    const res: Outcome[] = [];
    for (let k = 0; k < b.count; k++) {
      const frame = Buffer.from(b.arena.subarray(b.off[k], b.off[k] + b.capLen[k]));
      res.push({ verdict: b.verdict[k], egress: this.napt.egress[k], mapping: this.napt.mappingOf[k], frame, ip: frame.subarray(14) });
    }
    return res;
  }

  one(pkt: Buffer, side: number, now: number): Outcome {
    return this.run([pkt], side, now)[0];
  }

  /** Originated packets (raw IP) produced since the last call. */
  takeOriginated(): { linkType: number; side: number; bytes: Buffer }[] {
    return this.originated.splice(0);
  }
}

export const INSIDE = 0;
export const OUTSIDE = 1;
export { Verdict };

// ---- reading translated packets ----

export interface Tuple { src: number; dst: number; proto: number; sp: number; dp: number; ttl: number }
export function tupleOf(p: Buffer): Tuple {
  const hl = (p[0] & 0x0f) << 2;
  const proto = p[9];
  let sp = 0, dp = 0;
  if (proto === 6 || proto === 17) { sp = p.readUInt16BE(hl); dp = p.readUInt16BE(hl + 2); }
  else if (proto === 1) { sp = dp = p.readUInt16BE(hl + 4); }
  return { src: p.readUInt32BE(12), dst: p.readUInt32BE(16), proto, sp, dp, ttl: p[8] };
}

/** One's complement: 0x0000 and 0xffff are the same number (RFC 1624 section 3). */
export function sameChecksum(a: number, b: number): boolean {
  return a === b || ((a === 0 || a === 0xffff) && (b === 0 || b === 0xffff));
}

/**
 * Recomputes every checksum of the IPv4 packet `p` in full and returns the
 * disagreements (empty when all verify). Transport checksums are checked when
 * the whole datagram is present (not a fragment); ICMP errors also get their
 * quoted IP header checked, and the quoted transport checksum when the quote
 * holds the whole quoted datagram. `what` prefixes the messages.
 */
export function checksumProblems(p: Buffer, what = 'packet'): string[] {
  const errs: string[] = [];
  const hl = (p[0] & 0x0f) << 2;
  const tot = p.readUInt16BE(2);
  const ipStored = p.readUInt16BE(10);
  const h = Buffer.from(p.subarray(0, hl));
  h.writeUInt16BE(0, 10);
  const ipFull = checksum(h, 0, hl);
  if (!sameChecksum(ipStored, ipFull)) errs.push(`${what}: IP header checksum ${hex(ipStored)} != full ${hex(ipFull)}`);
  const ff = p.readUInt16BE(6);
  if ((ff & 0x3fff) !== 0 || tot > p.length) return errs; // fragment or cut: transport not checkable here
  errs.push(...transportProblems(p, hl, tot, what));
  return errs;
}

function transportProblems(p: Buffer, hl: number, tot: number, what: string): string[] {
  const errs: string[] = [];
  const proto = p[9];
  const src = p.readUInt32BE(12), dst = p.readUInt32BE(16);
  const seg = Buffer.from(p.subarray(hl, tot));
  if (proto === 6) {
    const stored = seg.readUInt16BE(16);
    seg.writeUInt16BE(0, 16);
    const full = checksum(seg, 0, seg.length, pseudoSum4(src, dst, 6, seg.length));
    if (!sameChecksum(stored, full)) errs.push(`${what}: TCP checksum ${hex(stored)} != full ${hex(full)}`);
  } else if (proto === 17) {
    const stored = seg.readUInt16BE(6);
    if (stored !== 0) {
      seg.writeUInt16BE(0, 6);
      let full = checksum(seg, 0, seg.length, pseudoSum4(src, dst, 17, seg.length));
      if (full === 0) full = 0xffff;
      if (stored !== full) errs.push(`${what}: UDP checksum ${hex(stored)} != full ${hex(full)}`);
    }
  } else if (proto === 1) {
    if (onesSum(seg, 0, seg.length) !== 0xffff) {
      const stored = seg.readUInt16BE(2);
      seg.writeUInt16BE(0, 2);
      errs.push(`${what}: ICMP checksum ${hex(stored)} != full ${hex(checksum(seg, 0, seg.length))}`);
    }
    const t = seg[0];
    if ((t === 3 || t === 4 || t === 5 || t === 11 || t === 12) && seg.length >= 28) {
      const q = seg.subarray(8);
      const ihl = (q[0] & 0x0f) << 2;
      if (q.length >= ihl) {
        const qh = Buffer.from(q.subarray(0, ihl));
        const qs = qh.readUInt16BE(10);
        qh.writeUInt16BE(0, 10);
        const qf = checksum(qh, 0, ihl);
        if (!sameChecksum(qs, qf)) errs.push(`${what}: quoted IP header checksum ${hex(qs)} != full ${hex(qf)}`);
        const qtot = q.readUInt16BE(2);
        if (qtot <= q.length && (q.readUInt16BE(6) & 0x3fff) === 0) errs.push(...transportProblems(Buffer.from(q), ihl, qtot, `${what} (quoted)`));
      }
    }
  }
  return errs;
}

function hex(v: number): string {
  return '0x' + v.toString(16).padStart(4, '0');
}
