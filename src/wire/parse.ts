// The hot-path parser: one pass over a batch, filling Meta (DESIGN.md "Data
// flow"). Per packet: integer reads only, no allocation (STYLE.md 3). Every
// read is preceded by a length check against the captured end AND the
// length the IP header declares (whichever is shorter), so a lying header
// gives a named ParseStatus, never an exception or a read past capLen.
//
// Tunnels and ICMP quotes are recorded (innerOff/innerKind), not descended
// into: the outer packet's Meta stays the outer one. A caller that wants the
// inner packet parses it with parseNetwork() into its own scratch Meta.

import type { Batch } from '../io/batch.js';
import { EtherType, IpProto } from './ip-proto.js';
import { InnerKind, LinkType, Meta, MetaFlag } from './meta.js';
import { ParseStatus } from './status.js';
import { MAX_VLAN_DEPTH } from './vlan.js';
import { MAX_IPV6_EXT } from './ipv6.js';
import { GRE_BAD, GRE_TRUNCATED, headerLen as greHeaderLen, pppEtherType, pppHeaderLen, pppProtocol } from './gre.js';
import { familyEtherType, loopFamily, nullFamily } from './null.js';

export { MAX_VLAN_DEPTH, MAX_IPV6_EXT };

/** Header offsets are stored as u16 (meta.ts); bytes past this are never parsed as headers. */
const MAX_HEADER_SPAN = 0xffff;

/**
 * Parses one packet of `capLen` captured bytes at `start` into Meta entry `i`.
 * Offsets in Meta are relative to `start`.
 */
export function parsePacket(buf: Buffer, start: number, capLen: number, linkType: number, meta: Meta, i: number): void {
  meta.reset(i);
  meta.status[i] = parseLink(buf, start, capLen, linkType, meta, i);
}

/**
 * Parses every packet of `batch` into meta entries 0..count-1, sets
 * meta.count and bumps meta.statusCounts. Throws only on a setup error
 * (meta smaller than the batch), never because of packet contents.
 */
export function parseBatch(batch: Batch, meta: Meta): void {
  const n = batch.count;
  if (n > meta.capacity) throw new RangeError(`Meta capacity ${meta.capacity} is smaller than the batch (${n} packets)`);
  const arena = batch.arena;
  const off = batch.off;
  const cap = batch.capLen;
  const lt = batch.linkType;
  const status = meta.status;
  const counts = meta.statusCounts;
  for (let i = 0; i < n; i++) {
    meta.reset(i);
    const st = parseLink(arena, off[i], cap[i], lt[i], meta, i);
    status[i] = st;
    counts[st]++;
  }
  meta.count = n;
}

/**
 * Parses a network-layer packet at `start + l3Off` (an inner or quoted IP
 * header) into Meta entry `i` after resetting it; returns the status (also
 * stored). `proto` is an EtherType (0x0800, 0x86DD), an IP version (4, 6),
 * or 0 to take the version from the first nibble. `maxExt` bounds the IPv6
 * extension-header walk (the hot path uses MAX_IPV6_EXT).
 */
export function parseNetwork(
  buf: Buffer, start: number, capLen: number, l3Off: number, proto: number, meta: Meta, i: number, maxExt: number = MAX_IPV6_EXT,
): number {
  meta.reset(i);
  const end = start + (capLen > MAX_HEADER_SPAN ? MAX_HEADER_SPAN : capLen);
  const o = start + l3Off;
  let st: number;
  let v = proto === EtherType.IPV4 ? 4 : proto === EtherType.IPV6 ? 6 : proto;
  if (v === 0) v = o < end ? buf[o] >>> 4 : 4;
  if (v === 4) {
    meta.etherType[i] = EtherType.IPV4;
    st = parseIpv4(buf, start, end, o, meta, i);
  } else if (v === 6) {
    meta.etherType[i] = EtherType.IPV6;
    st = parseIpv6(buf, start, end, o, meta, i, maxExt);
  } else {
    st = ParseStatus.BAD_IPV4_VERSION;
  }
  meta.status[i] = st;
  return st;
}

function parseLink(buf: Buffer, start: number, capLen: number, linkType: number, meta: Meta, i: number): number {
  const end = start + (capLen > MAX_HEADER_SPAN ? MAX_HEADER_SPAN : capLen);
  let o = start;
  let et = 0;
  switch (linkType) {
    case LinkType.EN10MB: {
      if (o + 14 > end) return ParseStatus.TRUNCATED_LINK;
      et = (buf[o + 12] << 8) | buf[o + 13];
      o += 14;
      // IEEE 802.1Q / 802.1ad: tags stack; vlanId is the outermost VID.
      let depth = 0;
      while (et === EtherType.VLAN || et === EtherType.QINQ || et === EtherType.QINQ_OLD) {
        if (depth === MAX_VLAN_DEPTH) return ParseStatus.VLAN_TOO_DEEP;
        if (o + 4 > end) return ParseStatus.TRUNCATED_VLAN;
        if (depth === 0) {
          meta.vlanId[i] = ((buf[o] << 8) | buf[o + 1]) & 0x0fff;
          meta.flags[i] |= MetaFlag.VLAN;
        }
        meta.vlanDepth[i] = ++depth;
        et = (buf[o + 2] << 8) | buf[o + 3];
        o += 4;
      }
      break;
    }
    case LinkType.LINUX_SLL:
      if (o + 16 > end) return ParseStatus.TRUNCATED_LINK;
      et = (buf[o + 14] << 8) | buf[o + 15];
      o += 16;
      break;
    case LinkType.LINUX_SLL2:
      if (o + 20 > end) return ParseStatus.TRUNCATED_LINK;
      et = (buf[o] << 8) | buf[o + 1];
      o += 20;
      break;
    case LinkType.NULL:
      if (o + 4 > end) return ParseStatus.TRUNCATED_LINK;
      et = familyEtherType(nullFamily(buf, o));
      o += 4;
      break;
    case LinkType.LOOP:
      if (o + 4 > end) return ParseStatus.TRUNCATED_LINK;
      et = familyEtherType(loopFamily(buf, o));
      o += 4;
      break;
    case LinkType.RAW:
      // Version from the first nibble; an empty record has no IP header at all.
      if (o >= end) return ParseStatus.TRUNCATED_IPV4;
      et = buf[o] >>> 4 === 6 ? EtherType.IPV6 : EtherType.IPV4;
      break;
    case LinkType.IPV4:
      et = EtherType.IPV4;
      break;
    case LinkType.IPV6:
      et = EtherType.IPV6;
      break;
    default:
      return ParseStatus.UNSUPPORTED_LINK;
  }
  meta.etherType[i] = et;
  if (et === EtherType.IPV4) return parseIpv4(buf, start, end, o, meta, i);
  if (et === EtherType.IPV6) return parseIpv6(buf, start, end, o, meta, i, MAX_IPV6_EXT);
  return ParseStatus.NON_IP;
}

function parseIpv4(buf: Buffer, start: number, end: number, o: number, meta: Meta, i: number): number {
  meta.l3Off[i] = o - start;
  if (o + 20 > end) return ParseStatus.TRUNCATED_IPV4;
  const vihl = buf[o];
  if (vihl >>> 4 !== 4) return ParseStatus.BAD_IPV4_VERSION;
  const hl = (vihl & 0x0f) << 2;
  if (hl < 20) return ParseStatus.BAD_IPV4_IHL;
  let tot = (buf[o + 2] << 8) | buf[o + 3];
  // TSO/GSO captures carry total length 0: use what is there, like
  // Wireshark's ip.tso_support (the capture stands in for the wire length).
  if (tot === 0) tot = end - o;
  if (tot < hl) return ParseStatus.BAD_IPV4_TOTAL_LENGTH;
  const ff = (buf[o + 6] << 8) | buf[o + 7];
  const fragOff = ff & 0x1fff;
  let fl = meta.flags[i] | MetaFlag.L3;
  if ((ff & 0x2000) !== 0) fl |= MetaFlag.MF | MetaFlag.FRAGMENT;
  if ((ff & 0x4000) !== 0) fl |= MetaFlag.DF;
  if (fragOff !== 0) fl |= MetaFlag.FRAGMENT;
  meta.flags[i] = fl;
  meta.ipVersion[i] = 4;
  meta.fragOff[i] = fragOff;
  meta.fragId[i] = (buf[o + 4] << 8) | buf[o + 5];
  const proto = buf[o + 9];
  meta.l4Proto[i] = proto;
  meta.l4Len[i] = tot - hl;
  // Source-route options (RFC 791 3.1 LSRR/SSRR) are not applied: dst4 is the header field.
  meta.src4[i] = ((buf[o + 12] << 24) | (buf[o + 13] << 16) | (buf[o + 14] << 8) | buf[o + 15]) >>> 0;
  meta.dst4[i] = ((buf[o + 16] << 24) | (buf[o + 17] << 16) | (buf[o + 18] << 8) | buf[o + 19]) >>> 0;
  const l4 = o + hl;
  meta.l4Off[i] = l4 - start;
  if (l4 > end) return ParseStatus.TRUNCATED_IPV4_OPTIONS;
  // RFC 791: only the fragment at offset 0 carries the transport header.
  if (fragOff !== 0) return ParseStatus.OK;
  const declEnd = o + tot;
  return parseTransport(buf, start, l4, declEnd < end ? declEnd : end, declEnd, proto, 4, meta, i);
}

function parseIpv6(buf: Buffer, start: number, end: number, o: number, meta: Meta, i: number, maxExt: number): number {
  meta.l3Off[i] = o - start;
  if (o + 40 > end) return ParseStatus.TRUNCATED_IPV6;
  if (buf[o] >>> 4 !== 6) return ParseStatus.BAD_IPV6_VERSION;
  meta.flags[i] |= MetaFlag.L3;
  meta.ipVersion[i] = 6;
  const plen = (buf[o + 4] << 8) | buf[o + 5];
  let nh = buf[o + 6];
  // RFC 2675: payload length 0 with a hop-by-hop header is a jumbogram; the
  // capture bounds it. Otherwise the payload length bounds everything.
  const declEnd = plen === 0 && nh === IpProto.HOPOPT ? end : o + 40 + plen;
  const capEnd = declEnd < end ? declEnd : end;
  let cur = o + 40;
  let n = 0;
  for (;;) {
    if (nh === IpProto.HOPOPT || nh === IpProto.ROUTING || nh === IpProto.DSTOPTS ||
        nh === IpProto.MOBILITY || nh === IpProto.HIP || nh === IpProto.SHIM6 || nh === IpProto.AH) {
      if (++n > maxExt) return ParseStatus.IPV6_EXT_CHAIN_TOO_LONG;
      if (cur + 2 > capEnd) return cur + 2 > declEnd ? ParseStatus.BAD_IPV6_EXT : ParseStatus.TRUNCATED_IPV6_EXT;
      // RFC 4302 2.2: AH length is in 4-octet units minus 2; the others in 8-octet units minus 1 (RFC 8200 4.3).
      let len: number;
      if (nh === IpProto.AH) {
        len = (buf[cur + 1] + 2) << 2;
        if (len < 12 || (len & 7) !== 0) return ParseStatus.BAD_IPV6_EXT; // RFC 4302 2.2: 64-bit aligned in IPv6
      } else {
        len = (buf[cur + 1] + 1) << 3;
      }
      if (cur + len > declEnd) return ParseStatus.BAD_IPV6_EXT;
      if (cur + len > capEnd) return ParseStatus.TRUNCATED_IPV6_EXT;
      nh = buf[cur];
      cur += len;
    } else if (nh === IpProto.FRAGMENT) {
      if (++n > maxExt) return ParseStatus.IPV6_EXT_CHAIN_TOO_LONG;
      if (cur + 8 > capEnd) return cur + 8 > declEnd ? ParseStatus.BAD_IPV6_EXT : ParseStatus.TRUNCATED_IPV6_EXT;
      const w = (buf[cur + 2] << 8) | buf[cur + 3];
      const fo = w >>> 3;
      if ((meta.flags[i] & MetaFlag.V6_FRAGHDR) === 0) {
        // RFC 8200 4.5 / RFC 6946: offset 0 with M=0 is an atomic fragment, not a fragment.
        let fl = meta.flags[i] | MetaFlag.V6_FRAGHDR;
        if ((w & 1) !== 0) fl |= MetaFlag.MF | MetaFlag.FRAGMENT;
        if (fo !== 0) fl |= MetaFlag.FRAGMENT;
        meta.flags[i] = fl;
        meta.fragOff[i] = fo;
        meta.fragId[i] = ((buf[cur + 4] << 24) | (buf[cur + 5] << 16) | (buf[cur + 6] << 8) | buf[cur + 7]) >>> 0;
      }
      nh = buf[cur];
      cur += 8;
      if (fo !== 0) {
        // A non-first fragment's payload is not a header we can read.
        meta.l4Proto[i] = nh;
        meta.l4Off[i] = cur - start;
        meta.l4Len[i] = declEnd - cur;
        return ParseStatus.OK;
      }
    } else {
      break;
    }
  }
  meta.l4Len[i] = declEnd - cur;
  if (nh === IpProto.ESP || nh === IpProto.NONE) {
    // RFC 4303: nothing after ESP is readable; RFC 8200 4.7: nothing follows 59.
    meta.l4Proto[i] = nh;
    meta.l4Off[i] = cur - start;
    if (nh === IpProto.ESP) meta.flags[i] |= MetaFlag.ESP;
    return ParseStatus.OK;
  }
  return parseTransport(buf, start, cur, capEnd, declEnd, nh, 6, meta, i);
}

/**
 * Transport (or tunnel) header at `l4`. `capEnd` is min(captured end, IP
 * declared end): reads never pass it. `declEnd` is where the IP header says
 * the packet ends (for length checks that must not depend on snap length).
 */
function parseTransport(
  buf: Buffer, start: number, l4: number, capEnd: number, declEnd: number, proto: number, ipv: number, meta: Meta, i: number,
): number {
  meta.l4Proto[i] = proto;
  meta.l4Off[i] = l4 - start;
  const avail = capEnd - l4;
  switch (proto) {
    case IpProto.TCP: {
      if (avail < 4) return ParseStatus.TRUNCATED_TCP;
      meta.srcPort[i] = (buf[l4] << 8) | buf[l4 + 1];
      meta.dstPort[i] = (buf[l4 + 2] << 8) | buf[l4 + 3];
      meta.flags[i] |= MetaFlag.PORTS;
      // Like tshark: fewer than 20 bytes (a tiny first fragment, RFC 1858) gives ports, not flags.
      if (avail < 20) return ParseStatus.TRUNCATED_TCP;
      const doff = (buf[l4 + 12] >>> 4) << 2;
      if (doff < 20 || l4 + doff > declEnd) return ParseStatus.BAD_TCP_DATA_OFFSET;
      meta.tcpFlags[i] = ((buf[l4 + 12] & 1) << 8) | buf[l4 + 13];
      meta.flags[i] |= MetaFlag.TCP_FLAGS;
      if (l4 + doff > capEnd) return ParseStatus.TRUNCATED_TCP;
      meta.flags[i] |= capEnd < declEnd ? MetaFlag.L4 | MetaFlag.L4_SHORT : MetaFlag.L4;
      return ParseStatus.OK;
    }
    case IpProto.UDP: {
      if (avail < 4) return ParseStatus.TRUNCATED_UDP;
      meta.srcPort[i] = (buf[l4] << 8) | buf[l4 + 1];
      meta.dstPort[i] = (buf[l4 + 2] << 8) | buf[l4 + 3];
      meta.flags[i] |= MetaFlag.PORTS;
      if (avail < 8) return ParseStatus.TRUNCATED_UDP;
      meta.flags[i] |= capEnd < declEnd ? MetaFlag.L4 | MetaFlag.L4_SHORT : MetaFlag.L4;
      // RFC 768: length covers header and data; it cannot exceed what IP
      // carries, except in a first fragment where it covers the whole datagram.
      const ulen = (buf[l4 + 4] << 8) | buf[l4 + 5];
      if (ulen < 8 || (l4 + ulen > declEnd && (meta.flags[i] & MetaFlag.FRAGMENT) === 0)) return ParseStatus.BAD_UDP_LENGTH;
      return ParseStatus.OK;
    }
    case IpProto.ICMP:
    case IpProto.ICMPV6: {
      if (avail < 2) return ParseStatus.TRUNCATED_ICMP;
      const t = buf[l4];
      meta.icmpType[i] = t;
      meta.icmpCode[i] = buf[l4 + 1];
      if (avail < 8) return ParseStatus.TRUNCATED_ICMP;
      meta.flags[i] |= capEnd < declEnd ? MetaFlag.L4 | MetaFlag.L4_SHORT : MetaFlag.L4;
      // RFC 792 / RFC 4443 2.1: errors quote the invoking packet after the 8-byte header.
      const isErr = proto === IpProto.ICMP
        ? t === 3 || t === 4 || t === 5 || t === 11 || t === 12
        : t >= 1 && t <= 4;
      if (isErr) {
        meta.flags[i] |= MetaFlag.ICMP_ERROR;
        if (avail > 8) {
          meta.innerOff[i] = l4 + 8 - start;
          meta.innerKind[i] = InnerKind.ICMP_QUOTE;
        }
      }
      return ParseStatus.OK;
    }
    case IpProto.IPIP:
    case IpProto.IPV6: {
      if (avail < 1) return ParseStatus.TRUNCATED_TUNNEL;
      meta.flags[i] |= MetaFlag.TUNNEL;
      meta.innerOff[i] = l4 - start;
      meta.innerKind[i] = proto === IpProto.IPIP
        ? (ipv === 4 ? InnerKind.IPIP : InnerKind.FOUR_IN_6)
        : (ipv === 4 ? InnerKind.SIX_IN_4 : InnerKind.SIX_IN_6);
      meta.innerEtherType[i] = proto === IpProto.IPIP ? EtherType.IPV4 : EtherType.IPV6;
      return ParseStatus.OK;
    }
    case IpProto.GRE: {
      const hl = greHeaderLen(buf, l4, capEnd);
      if (hl === GRE_TRUNCATED) return ParseStatus.TRUNCATED_TUNNEL;
      if (hl === GRE_BAD) return ParseStatus.BAD_GRE;
      const inner = l4 + hl;
      if (inner >= capEnd) return ParseStatus.OK; // no payload (keepalive, PPTP bare ack)
      let et = (buf[l4 + 2] << 8) | buf[l4 + 3];
      let io = inner;
      if ((buf[l4 + 1] & 7) === 1) {
        // PPTP (RFC 2637 4.1): PPP frame; only IPv4/IPv6 inside is a tunnel.
        const pl = pppHeaderLen(buf, inner, capEnd);
        if (pl === 0) return ParseStatus.TRUNCATED_TUNNEL;
        et = pppEtherType(pppProtocol(buf, inner, pl));
        io = inner + pl;
        if (et === 0 || io >= capEnd) return ParseStatus.OK;
      }
      meta.flags[i] |= MetaFlag.TUNNEL;
      meta.innerOff[i] = io - start;
      meta.innerKind[i] = InnerKind.GRE;
      meta.innerEtherType[i] = et;
      return ParseStatus.OK;
    }
    case IpProto.ESP:
      meta.flags[i] |= MetaFlag.ESP;
      return ParseStatus.OK;
    default:
      return ParseStatus.OK;
  }
}
