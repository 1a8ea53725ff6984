// tshark-compatible field values for one packet (`tshark -T fields -E
// occurrence=f` with defragmentation and TCP reassembly off). Off the hot
// path: allocation is fine here. Used by the differential test against the
// corpus oracle and by tools that print packets.
//
// tshark adds each field as its dissector reaches it, so a header cut by the
// capture still shows the fields whose bytes are present (an IPv4 header cut
// after 6 bytes shows ip.hdr_len and ip.len). We therefore read fields with
// per-field availability checks, and use the hot-path header helpers for
// structure. "First occurrence" is first in dissection order: outer headers,
// then tunnel-inner and ICMP-quoted headers, so e.g. tcp.srcport of an ICMP
// error is the quoted one and ip.src of a 4in6 packet is the inner IPv4.

import { EtherType, IpProto } from './ip-proto.js';
import { LinkType } from './meta.js';
import { familyEtherType, loopFamily, nullFamily } from './null.js';
import { formatIpv4 } from './ipv4.js';
import { formatIpv6 } from './ipv6.js';
import { GRE_BAD, GRE_TRUNCATED, headerLen as greHeaderLen, pppHeaderLen, pppProtocol, pppEtherType } from './gre.js';
import { PORT_TEREDO, PORT_VXLAN } from './udp.js';

export const FIELD_NAMES = [
  'frame.number', 'frame.len', 'frame.cap_len', 'frame.time_epoch',
  'ip.src', 'ip.dst', 'ip.proto', 'ip.flags.mf', 'ip.frag_offset',
  'ipv6.src', 'ipv6.dst', 'ipv6.nxt',
  'tcp.srcport', 'tcp.dstport', 'tcp.flags.syn', 'tcp.flags.ack', 'tcp.flags.fin', 'tcp.flags.reset',
  'udp.srcport', 'udp.dstport', 'icmp.type', 'icmp.code', 'vlan.id',
  'ip.hdr_len', 'ip.len', 'ipv6.plen', 'udp.length', 'icmpv6.type', 'icmpv6.code',
  'ipv6.fraghdr.nxt', 'ipv6.fraghdr.offset', 'ipv6.fraghdr.more',
  'ip.cur_rt',
] as const;
export type FieldName = (typeof FIELD_NAMES)[number];

const F = Object.fromEntries(FIELD_NAMES.map((n, k) => [n, k])) as { readonly [K in FieldName]: number };

/** Encapsulations followed before giving up (a crafted packet could nest forever). */
const MAX_DEPTH = 16;
/** tshark walks any number of IPv6 extension headers; so do we here (bounded by the packet). */
const FIELDS_MAX_EXT = 4096;

/**
 * tshark's frame.time_epoch: seconds, '.', the fraction as a signed 32-bit
 * number printed with at least 9 digits. A recorded fraction that does not
 * fit (>= 1e9) is printed as is, and one with the top bit set is negative:
 * tshark then prints '-' in front of the seconds and the magnitude of the
 * fraction (epan/to_str.c display_epoch_time).
 */
export function formatEpoch(tsSec: number, tsNsec: number): string {
  let frac = tsNsec | 0;
  let sign = '';
  if (frac < 0) {
    frac = -frac; // -2^31 stays representable as a JS number
    if (tsSec >= 0) sign = '-';
  }
  return `${sign}${tsSec}.${String(frac).padStart(9, '0')}`;
}

class Walker {
  out: string[] = [];
  buf: Buffer = Buffer.alloc(0);

  set(k: number, v: string | number): void {
    if (this.out[k] === '') this.out[k] = String(v);
  }
  u16(o: number): number {
    return (this.buf[o] << 8) | this.buf[o + 1];
  }
  u32(o: number): number {
    return ((this.buf[o] << 24) | (this.buf[o + 1] << 16) | (this.buf[o + 2] << 8) | this.buf[o + 3]) >>> 0;
  }

  link(linkType: number, o: number, end: number): void {
    const b = this.buf;
    switch (linkType) {
      case LinkType.EN10MB:
        this.ether(o, end, 0);
        return;
      case LinkType.LINUX_SLL:
        if (o + 16 <= end) this.etherType(this.u16(o + 14), o + 16, end, 0);
        return;
      case LinkType.LINUX_SLL2:
        if (o + 20 <= end) this.etherType(this.u16(o), o + 20, end, 0);
        return;
      case LinkType.NULL:
        if (o + 4 <= end) this.etherType(familyEtherType(nullFamily(b, o)), o + 4, end, 0);
        return;
      case LinkType.LOOP:
        if (o + 4 <= end) this.etherType(familyEtherType(loopFamily(b, o)), o + 4, end, 0);
        return;
      case LinkType.RAW:
        if (o < end) this.etherType(b[o] >>> 4 === 6 ? EtherType.IPV6 : EtherType.IPV4, o, end, 0);
        return;
      case LinkType.IPV4:
        this.ipv4(o, end, 0);
        return;
      case LinkType.IPV6:
        this.ipv6(o, end, 0);
        return;
      default:
        return;
    }
  }

  ether(o: number, end: number, depth: number): void {
    if (o + 14 > end) return;
    this.etherType(this.u16(o + 12), o + 14, end, depth);
  }

  etherType(et: number, o: number, end: number, depth: number): void {
    if (depth > MAX_DEPTH) return;
    const b = this.buf;
    switch (et) {
      case EtherType.VLAN:
      case EtherType.QINQ:
      case EtherType.QINQ_OLD:
        if (o + 2 <= end) this.set(F['vlan.id'], this.u16(o) & 0x0fff);
        if (o + 4 <= end) {
          const next = this.u16(o + 2);
          if (next >= 0x0600) this.etherType(next, o + 4, end, depth + 1);
        }
        return;
      case EtherType.IPV4:
        this.ipv4(o, end, depth + 1);
        return;
      case EtherType.IPV6:
        this.ipv6(o, end, depth + 1);
        return;
      case EtherType.TEB:
        this.ether(o, end, depth + 1);
        return;
      case EtherType.MPLS:
      case EtherType.MPLS_MC: {
        // RFC 3032: labels until bottom of stack; the payload is not typed, so
        // guess like Wireshark: first nibble 4/6 is IP, 0 is a PW control word
        // (RFC 4385) followed by Ethernet.
        let p = o;
        for (let n = 0; ; n++) {
          if (p + 4 > end || n > 32) return;
          const bos = b[p + 2] & 1;
          p += 4;
          if (bos) break;
        }
        if (p >= end) return;
        const nib = b[p] >>> 4;
        if (nib === 4) this.ipv4(p, end, depth + 1);
        else if (nib === 6) this.ipv6(p, end, depth + 1);
        else if (nib === 0) this.ether(p + 4, end, depth + 1);
        return;
      }
      case EtherType.PPPOE_SESSION: {
        // RFC 2516: 6-byte header then the PPP protocol.
        if (o + 8 > end) return;
        const et2 = pppEtherType(this.u16(o + 6));
        if (et2 !== 0) this.etherType(et2, o + 8, end, depth + 1);
        return;
      }
      case EtherType.CISCO_META:
        // Cisco MetaData as carried in GRE (Wireshark packet-cmd.c): EtherType,
        // version, length, option, SGT: 8 bytes.
        if (o + 8 <= end) this.etherType(this.u16(o), o + 8, end, depth + 1);
        return;
      default:
        return;
    }
  }

  ipv4(o: number, end: number, depth: number): void {
    const b = this.buf;
    const avail = end - o;
    if (avail < 1) return;
    const ver = b[o] >>> 4;
    // Wireshark's IP dissector hands a version-6 header to IPv6.
    if (ver === 6) { this.ipv6(o, end, depth); return; }
    if (ver !== 4) return;
    const hl = (b[o] & 0x0f) << 2;
    this.set(F['ip.hdr_len'], hl);
    if (hl < 20) return;
    if (avail < 4) return;
    let tot = this.u16(o + 2);
    this.set(F['ip.len'], tot);
    if (tot < hl) {
      if (tot !== 0) return; // "Bogus IP length"
      tot = avail; // ip.tso_support
    }
    if (avail < 8) return;
    const ff = this.u16(o + 6);
    this.set(F['ip.flags.mf'], (ff >>> 13) & 1);
    this.set(F['ip.frag_offset'], ff & 0x1fff);
    if (avail < 10) return;
    const proto = b[o + 9];
    this.set(F['ip.proto'], proto);
    if (avail < 16) return;
    this.set(F['ip.src'], formatIpv4(this.u32(o + 12)));
    if (avail < 20 || o + hl > end) return; // options are scanned for a source route before dst is added
    let dst = this.u32(o + 16);
    let curRt = -1;
    // RFC 791 3.1 LSRR/SSRR: tshark shows the final destination from the option.
    for (let p = o + 20; p < o + hl; ) {
      const t = b[p];
      if (t === 0) break;
      if (t === 1) { p++; continue; }
      if (p + 2 > o + hl) break;
      const len = b[p + 1];
      if (len < 2 || p + len > o + hl) break;
      if ((t === 131 || t === 137) && len >= 7) {
        curRt = dst;
        dst = this.u32(p + 3 + (((len - 3) >>> 2) - 1) * 4);
      }
      p += len;
    }
    this.set(F['ip.dst'], formatIpv4(dst));
    if (curRt >= 0) this.set(F['ip.cur_rt'], formatIpv4(curRt));
    if ((ff & 0x1fff) !== 0) return; // later fragments: data
    const declEnd = o + tot;
    this.transport(proto, o + hl, declEnd < end ? declEnd : end, depth);
  }

  ipv6(o: number, end: number, depth: number): void {
    const b = this.buf;
    const avail = end - o;
    if (avail < 1 || b[o] >>> 4 !== 6) return;
    if (avail < 6) return;
    const plen = this.u16(o + 4);
    this.set(F['ipv6.plen'], plen);
    if (avail < 7) return;
    let nh = b[o + 6];
    this.set(F['ipv6.nxt'], nh);
    if (avail < 24) return;
    this.set(F['ipv6.src'], formatIpv6(b, o + 8));
    if (avail < 40) return;
    this.set(F['ipv6.dst'], formatIpv6(b, o + 24));
    const declEnd = plen === 0 && nh === IpProto.HOPOPT ? end : o + 40 + plen;
    const bound = declEnd < end ? declEnd : end;
    let cur = o + 40;
    for (let n = 0; n < FIELDS_MAX_EXT; n++) {
      if (nh === IpProto.HOPOPT || nh === IpProto.ROUTING || nh === IpProto.DSTOPTS || nh === IpProto.AH ||
          nh === IpProto.HIP || nh === IpProto.SHIM6) {
        if (cur + 2 > bound) return;
        const len = nh === IpProto.AH ? (b[cur + 1] + 2) << 2 : (b[cur + 1] + 1) << 3;
        if (cur + len > bound) return;
        nh = b[cur];
        cur += len;
      } else if (nh === IpProto.FRAGMENT) {
        if (cur + 2 > bound) return;
        this.set(F['ipv6.fraghdr.nxt'], b[cur]);
        if (cur + 4 > bound) return;
        const w = this.u16(cur + 2);
        this.set(F['ipv6.fraghdr.offset'], w >>> 3);
        this.set(F['ipv6.fraghdr.more'], w & 1);
        if (cur + 8 > bound) return;
        nh = b[cur];
        cur += 8;
        if ((w >>> 3) !== 0) return; // later fragments: data
      } else {
        break;
      }
    }
    this.transport(nh, cur, bound, depth);
  }

  transport(proto: number, p: number, end: number, depth: number): void {
    if (depth > MAX_DEPTH) return;
    const b = this.buf;
    const avail = end - p;
    switch (proto) {
      case IpProto.TCP: {
        if (avail < 4) return;
        this.set(F['tcp.srcport'], this.u16(p));
        this.set(F['tcp.dstport'], this.u16(p + 2));
        if (avail < 20) return;
        if ((b[p + 12] >>> 4) < 5) return; // "Bogus TCP header length": flags not added
        const fl = b[p + 13];
        this.set(F['tcp.flags.syn'], (fl >>> 1) & 1);
        this.set(F['tcp.flags.ack'], (fl >>> 4) & 1);
        this.set(F['tcp.flags.fin'], fl & 1);
        this.set(F['tcp.flags.reset'], (fl >>> 2) & 1);
        return;
      }
      case IpProto.UDP: {
        if (avail < 4) return;
        const sp = this.u16(p);
        const dp = this.u16(p + 2);
        this.set(F['udp.srcport'], sp);
        this.set(F['udp.dstport'], dp);
        if (avail < 6) return;
        const ulen = this.u16(p + 4);
        this.set(F['udp.length'], ulen);
        if (avail < 8) return;
        let uend = end;
        if (ulen >= 8 && p + ulen < uend) uend = p + ulen;
        if (sp === PORT_VXLAN || dp === PORT_VXLAN) {
          // RFC 7348 5: 8-byte VXLAN header, then an Ethernet frame.
          this.ether(p + 16, uend, depth + 1);
        } else if (sp === PORT_TEREDO || dp === PORT_TEREDO) {
          this.teredo(p + 8, uend, depth + 1);
        }
        return;
      }
      case IpProto.ICMP: {
        if (avail < 1) return;
        const t = b[p];
        this.set(F['icmp.type'], t);
        if (avail < 2) return;
        this.set(F['icmp.code'], b[p + 1]);
        if ((t === 3 || t === 4 || t === 5 || t === 11 || t === 12) && avail > 8) this.ipv4(p + 8, end, depth + 1);
        return;
      }
      case IpProto.ICMPV6: {
        if (avail < 1) return;
        const t = b[p];
        this.set(F['icmpv6.type'], t);
        if (avail < 2) return;
        this.set(F['icmpv6.code'], b[p + 1]);
        if (t >= 1 && t <= 4 && avail > 8) this.ipv6(p + 8, end, depth + 1);
        return;
      }
      case IpProto.IPIP:
        this.ipv4(p, end, depth + 1);
        return;
      case IpProto.IPV6:
        this.ipv6(p, end, depth + 1);
        return;
      case IpProto.GRE: {
        const hl = greHeaderLen(b, p, end);
        if (hl === GRE_TRUNCATED || hl === GRE_BAD) return;
        const et = this.u16(p + 2);
        const inner = p + hl;
        if (inner >= end) return;
        if (et === EtherType.PPP) {
          const pl = pppHeaderLen(b, inner, end);
          if (pl === 0) return;
          const et2 = pppEtherType(pppProtocol(b, inner, pl));
          if (et2 !== 0) this.etherType(et2, inner + pl, end, depth + 1);
          return;
        }
        this.etherType(et, inner, end, depth + 1);
        return;
      }
      default:
        return;
    }
  }

  /** RFC 4380 5.1.1: optional authentication (type 1) and origin indication (type 0) headers, then IPv6. */
  teredo(p: number, end: number, depth: number): void {
    const b = this.buf;
    for (let n = 0; n < 2; n++) {
      if (p + 2 > end) return;
      const t = this.u16(p);
      if (t === 0x0001) {
        if (p + 4 > end) return;
        p += 4 + b[p + 2] + b[p + 3] + 8 + 1;
      } else if (t === 0x0000) {
        p += 8;
      } else {
        break;
      }
    }
    if (p < end && b[p] >>> 4 === 6) this.ipv6(p, end, depth);
  }
}

const walker = new Walker();

/**
 * Fills `out` (resized to FIELD_NAMES.length) with the tshark field values of
 * one packet; '' means the field is absent.
 */
export function fieldValues(
  buf: Buffer, start: number, capLen: number, origLen: number, linkType: number,
  tsSec: number, tsNsec: number, frameNumber: number, out: string[],
): void {
  out.length = FIELD_NAMES.length;
  out.fill('');
  out[F['frame.number']] = String(frameNumber);
  out[F['frame.len']] = String(origLen);
  out[F['frame.cap_len']] = String(capLen);
  out[F['frame.time_epoch']] = formatEpoch(tsSec, tsNsec);
  walker.out = out;
  walker.buf = buf;
  const end = Math.min(start + capLen, buf.length);
  walker.link(linkType & 0xffff, start, end);
  walker.out = [];
  walker.buf = Buffer.alloc(0);
}

/** Index of a field in FIELD_NAMES. */
export function fieldIndex(name: FieldName): number {
  return F[name];
}
