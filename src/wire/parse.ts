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

/** Meta.status of a packet the fast loop of parseBatch left for the general path (not a ParseStatus). */
const SLOW_PATH = 0xff;

// Constants of the fast loop in parseBatch. The `as const` tables (EtherType,
// IpProto, MetaFlag, LinkType) are ordinary objects to V8: in optimised code
// every `EtherType.VLAN` is a load of the imported binding, a hole check, a
// map check and a field load, on every packet. Copied once into module
// constants they are plain numbers.
const ETH_IPV4 = EtherType.IPV4;
const ETH_IPV6 = EtherType.IPV6;
const ETH_VLAN = EtherType.VLAN;
const ETH_QINQ = EtherType.QINQ;
const ETH_QINQ_OLD = EtherType.QINQ_OLD;
const PROTO_TCP = IpProto.TCP;
const PROTO_UDP = IpProto.UDP;
const PROTO_ICMP = IpProto.ICMP;
const PROTO_ICMPV6 = IpProto.ICMPV6;
const LINK_EN10MB = LinkType.EN10MB;
const F_L3 = MetaFlag.L3;
const F_L4 = MetaFlag.L4;
const F_L4_SHORT = MetaFlag.L4_SHORT;
const F_DF = MetaFlag.DF;
const F_PORTS = MetaFlag.PORTS;
const F_TCP_FLAGS = MetaFlag.TCP_FLAGS;
const F_VLAN = MetaFlag.VLAN;

/** A DataView over each batch arena, made the first time the arena is parsed (not per batch). */
const arenaViews = new WeakMap<Buffer, DataView>();
function viewOf(buf: Buffer): DataView {
  let v = arenaViews.get(buf);
  if (v === undefined) {
    v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    arenaViews.set(buf, v);
  }
  return v;
}

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
 *
 * Two paths, one result. The fast loop handles the packets that make up
 * nearly all traffic: Ethernet with at most one 802.1Q tag, an unfragmented
 * IPv4 header (options allowed) or an IPv6 header with no extension header,
 * and a complete, well-formed TCP, UDP or ICMP/ICMPv6 (non-error) header.
 * Anything else, including every error status, is marked and handed to the
 * general path (reset + parseLink), which stays the one definition of the
 * edge cases and overwrites whatever the fast loop wrote before it gave up.
 * For the packets it accepts the fast loop must produce exactly what the
 * general path produces: the unit test "parseBatch ... equals a single parse"
 * and the tshark diff test (which parses through parseBatch) hold it to that.
 *
 * Why it is shaped like this (measured on V8 11 / Node 20, bench/parse.ts):
 * - Every typed array a loop iteration touches costs a map check and three
 *   field loads (length, base and external pointer) on every iteration, on
 *   top of the access itself: TurboFan does not hoist them out of the loop.
 *   So the fast loop touches as few arrays per packet as it can. Fields that
 *   are zero for most packets (status OK, VLAN, fragment offset, TCP flags,
 *   ICMP type/code, inner header) are cleared for the whole batch up front,
 *   one memset per array, and written only when a packet sets them. The rest
 *   are written exactly once per packet (no reset, no read-modify-write).
 * - Multi-byte fields are read with one DataView access (getUint16/32 compile
 *   to a bounds check, a load and a byte swap) instead of two or four byte
 *   reads, each with its own bounds check, shifts and ors.
 * - Meta's arrays sit in locals of this function, not behind `meta.x`, and
 *   the hot loop is one straight function with no call to inline or not; the
 *   general path runs in a second loop over the packets marked SLOW_PATH.
 * - The constants it compares against are module constants (see ETH_IPV4).
 */
export function parseBatch(batch: Batch, meta: Meta): void {
  const n = batch.count;
  if (n > meta.capacity) throw new RangeError(`Meta capacity ${meta.capacity} is smaller than the batch (${n} packets)`);
  const buf = batch.arena;
  const offs = batch.off;
  const caps = batch.capLen;
  const lts = batch.linkType;
  const mStatus = meta.status;
  const mFlags = meta.flags;
  const mEtherType = meta.etherType;
  const mVlanId = meta.vlanId;
  const mVlanDepth = meta.vlanDepth;
  const mL3Off = meta.l3Off;
  const mL4Off = meta.l4Off;
  const mIpVersion = meta.ipVersion;
  const mL4Proto = meta.l4Proto;
  const mL4Len = meta.l4Len;
  const mFragId = meta.fragId;
  const mSrc4 = meta.src4;
  const mDst4 = meta.dst4;
  const mSrcPort = meta.srcPort;
  const mDstPort = meta.dstPort;
  const mTcpFlags = meta.tcpFlags;
  const mIcmpType = meta.icmpType;
  const mIcmpCode = meta.icmpCode;
  const counts = meta.statusCounts;
  // Mostly-zero fields: cleared here, written below only when not zero.
  mStatus.fill(ParseStatus.OK, 0, n);
  mVlanId.fill(0, 0, n);
  mVlanDepth.fill(0, 0, n);
  mTcpFlags.fill(0, 0, n);
  mIcmpType.fill(0, 0, n);
  mIcmpCode.fill(0, 0, n);
  // Never set by the fast loop (fragments, tunnels and ICMP errors take the general path).
  meta.fragOff.fill(0, 0, n);
  meta.innerKind.fill(InnerKind.NONE, 0, n);
  meta.innerOff.fill(0, 0, n);
  meta.innerEtherType.fill(0, 0, n);
  const dv = viewOf(buf);
  const arenaLen = dv.byteLength;
  let slow = 0;
  let firstSlow = 0;
  for (let i = 0; i < n; i++) {
    fast: {
      if (lts[i] !== LINK_EN10MB) break fast;
      const start = offs[i];
      const capLen = caps[i];
      const end = start + (capLen > MAX_HEADER_SPAN ? MAX_HEADER_SPAN : capLen);
      let o = start + 14;
      // A record said to run past the arena (a source bug, not packet
      // contents) would make the DataView throw: the general path copes.
      if (o > end || end > arenaLen) break fast;
      let et = dv.getUint16(o - 2);
      let fl = F_L3;
      if (et === ETH_VLAN) {
        // One 802.1Q tag; stacked tags and 802.1ad S-tags take the general path.
        if (o + 4 > end) break fast;
        et = dv.getUint16(o + 2);
        if (et === ETH_VLAN || et === ETH_QINQ || et === ETH_QINQ_OLD) break fast;
        mVlanId[i] = dv.getUint16(o) & 0x0fff;
        mVlanDepth[i] = 1;
        fl |= F_VLAN;
        o += 4;
      }
      let l4: number;
      let declEnd: number;
      let proto: number;
      let l4Len: number;
      if (et === ETH_IPV4) {
        if (o + 20 > end) break fast;
        const vihl = dv.getUint8(o);
        const hl = (vihl & 0x0f) << 2;
        if (vihl >>> 4 !== 4 || hl < 20) break fast;
        // Also sends total length 0 (TSO/GSO captures) to the general path: 0 < hl.
        const tot = dv.getUint16(o + 2);
        if (tot < hl) break fast;
        const ff = dv.getUint16(o + 6);
        // RFC 791: MF or a fragment offset makes it a fragment; fragments take the general path.
        if ((ff & 0x3fff) !== 0) break fast;
        l4 = o + hl;
        if (l4 > end) break fast;
        if ((ff & 0x4000) !== 0) fl |= F_DF;
        proto = dv.getUint8(o + 9);
        l4Len = tot - hl;
        declEnd = o + tot;
        mIpVersion[i] = 4;
        mFragId[i] = dv.getUint16(o + 4);
        // Source-route options (RFC 791 3.1 LSRR/SSRR) are not applied: dst4 is the header field.
        mSrc4[i] = dv.getUint32(o + 12);
        mDst4[i] = dv.getUint32(o + 16);
      } else if (et === ETH_IPV6) {
        if (o + 40 > end || dv.getUint8(o) >>> 4 !== 6) break fast;
        proto = dv.getUint8(o + 6);
        // Extension headers (RFC 8200 4) take the general path: only a
        // transport header directly after the fixed header is handled here,
        // so the payload length alone bounds the packet (no jumbogram).
        if (proto !== PROTO_TCP && proto !== PROTO_UDP && proto !== PROTO_ICMPV6 && proto !== PROTO_ICMP) break fast;
        l4Len = dv.getUint16(o + 4);
        l4 = o + 40;
        declEnd = l4 + l4Len;
        mIpVersion[i] = 6;
        mFragId[i] = 0;
        mSrc4[i] = 0;
        mDst4[i] = 0;
      } else {
        break fast;
      }
      // Reads never pass capEnd = min(captured end, IP declared end).
      const capEnd = declEnd < end ? declEnd : end;
      const avail = capEnd - l4;
      // The transport header is whole; L4_SHORT says the snap length cut the payload.
      fl |= capEnd < declEnd ? F_L4 | F_L4_SHORT : F_L4;
      if (proto === PROTO_TCP) {
        if (avail < 20) break fast;
        // Data offset (4 bits), reserved, then the 9 flag bits NS..FIN (RFC 793 3.1, RFC 3540).
        const w = dv.getUint16(l4 + 12);
        const doff = (w >>> 12) << 2;
        // capEnd <= declEnd, so this also rules out a data offset past the IP payload.
        if (doff < 20 || l4 + doff > capEnd) break fast;
        mSrcPort[i] = dv.getUint16(l4);
        mDstPort[i] = dv.getUint16(l4 + 2);
        mTcpFlags[i] = w & 0x1ff;
        fl |= F_PORTS | F_TCP_FLAGS;
      } else if (proto === PROTO_UDP) {
        if (avail < 8) break fast;
        // RFC 768: length covers header and data and cannot exceed what IP carries (not a fragment here).
        const ulen = dv.getUint16(l4 + 4);
        if (ulen < 8 || l4 + ulen > declEnd) break fast;
        mSrcPort[i] = dv.getUint16(l4);
        mDstPort[i] = dv.getUint16(l4 + 2);
        fl |= F_PORTS;
      } else if (proto === PROTO_ICMP || proto === PROTO_ICMPV6) {
        if (avail < 8) break fast;
        const t = dv.getUint8(l4);
        // RFC 792 / RFC 4443 2.1: errors quote a packet (innerOff): general path.
        if (proto === PROTO_ICMP ? t === 3 || t === 4 || t === 5 || t === 11 || t === 12 : t >= 1 && t <= 4) break fast;
        mIcmpType[i] = t;
        mIcmpCode[i] = dv.getUint8(l4 + 1);
        mSrcPort[i] = 0;
        mDstPort[i] = 0;
      } else {
        break fast;
      }
      mFlags[i] = fl;
      mEtherType[i] = et;
      mL3Off[i] = o - start;
      mL4Off[i] = l4 - start;
      mL4Proto[i] = proto;
      mL4Len[i] = l4Len;
      continue;
    }
    // Left for the general path (it may have written some fields: it resets them).
    mStatus[i] = SLOW_PATH;
    if (slow++ === 0) firstSlow = i;
  }
  counts[ParseStatus.OK] += n - slow;
  // The general path, in a loop of its own so the fast loop makes no call.
  for (let i = firstSlow; slow > 0; i++) {
    if (mStatus[i] !== SLOW_PATH) continue;
    slow--;
    meta.reset(i);
    const st = parseLink(buf, offs[i], caps[i], lts[i], meta, i);
    mStatus[i] = st;
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
