// The target side of encapsulated direct server return: strips the outer
// headers of IPIP (RFC 2003) and GUE (draft-ietf-intarea-gue, UDP to the GUE
// port) packets addressed to this host, validates both layers and leaves the
// inner IP packet for the caller to hand to the kernel (a TUN device: the
// kernel then delivers it to the VIP held on lo, and the service answers the
// client directly). The kernel here has no ipip/fou modules, so this is the
// decapsulator (`portcullis decap`, src/cli/decap.ts).
//
// In place, no copy: for a packet that decapsulates, off[i] and capLen[i] are
// moved onto the inner packet and linkType[i] becomes RAW (101); every other
// packet is marked DROP. The TUN sink then writes the FORWARD ones.
//
// Everything is checked before it is read (STYLE.md 2) and every refusal has
// a counter (one list, STYLE.md 8); nothing throws on a packet. The caller
// logs at a bounded rate from the counters and lastError/lastErrorSource.
//
// What is accepted:
// - outer IPv4, not a fragment (no reassembly here; the encapsulator copies
//   DF, and a fragment is counted), header checksum verified (a capture sees
//   the packet before the kernel's IP layer has checked anything), total
//   length within the capture (Ethernet padding after it is ignored);
// - optional allow lists: outer destination (this host's addresses), outer
//   source (the load balancers), inner IPv4 destination (the VIPs). Without
//   an inner list this is an open decapsulator for anyone who can reach the
//   port: RFC 6169 §3 (tunnels bypassing filters); give --vip in production;
// - IPIP: protocol 4 with an inner IPv4 packet;
// - GUE: UDP to the GUE port, UDP length within the IP payload, the UDP
//   checksum verified when non-zero (RFC 768: 0 means none), then
//   variant 0 (the draft's base header): version 0, C = 0 (control messages are not ours:
//   counted and dropped), no flags set (we implement no optional fields, and
//   a field we cannot read cannot be skipped safely; Linux fou also drops
//   flags it does not know), hlen words skipped, proto 4 (IPv4) or 41 (IPv6);
//   or variant 1 (direct IP, Katran's format): the first bits 01
//   are the inner header's own version nibble (0100 IPv4, 0110 IPv6);
// - the inner packet: IPv4 with a sane IHL, total length within what is left
//   (trailing bytes dropped) and a good header checksum; or IPv6 with its
//   payload length within what is left;
// - ECN (RFC 6040 §4.2, normal mode, Figure 4): outer CE on an inner ECT
//   packet is copied to the inner header, and outer ECT(1) turns an inner
//   ECT(0) into ECT(1) (checksum updated, RFC 1624); outer CE on a Not-ECT
//   inner packet is dropped; otherwise the inner field stands.

import { Verdict, type Batch } from '../io/batch.js';
import * as cks from '../wire/checksum.js';
import { parseIpv4 } from '../wire/ipv4.js';

const V_FORWARD = Verdict.FORWARD;
const V_DROP = Verdict.DROP;
const foldSmall = cks.foldSmall;
const LINK_EN10MB = 1, LINK_RAW = 101, LINK_SLL = 113, LINK_IPV4 = 228, LINK_SLL2 = 276;
const ETH_IPV4 = 0x0800, ETH_VLAN = 0x8100, ETH_QINQ = 0x88a8;
const PROTO_IPIP = 4, PROTO_UDP = 17, PROTO_IPV6 = 41;
const ECN_MASK = 3, ECN_CE = 3, ECN_ECT0 = 2, ECN_ECT1 = 1;

export const DECAP_COUNTER_DEFS = [
  ['decap_ipip', 'IPIP packets decapsulated (IPv4 protocol 4, RFC 2003)'],
  ['decap_gue', 'GUE packets decapsulated (UDP to the GUE port, variant 0 or 1)'],
  ['decap_not_tunnel', 'packets passed over: not IPv4, or neither protocol 4 nor UDP to the GUE port'],
  ['decap_bad_outer', 'outer IPv4 header refused: IHL, total length or header checksum'],
  ['decap_truncated', 'outer packet longer than what was captured'],
  ['decap_fragment', 'outer fragments (not reassembled here)'],
  ['decap_not_local', 'outer destination not one of the local addresses given'],
  ['decap_bad_source', 'outer source not one of the encapsulators given'],
  ['decap_bad_udp', 'GUE packets with a UDP length outside the IP payload or a wrong UDP checksum'],
  ['decap_gue_version', 'GUE packets of version 2 or 3 (none defined)'],
  ['decap_gue_control', 'GUE control messages (C bit): not data, dropped'],
  ['decap_gue_header', 'GUE variant 0 headers with flags set (optional fields not implemented) or hlen past the end'],
  ['decap_gue_proto', 'GUE payload neither IPv4 nor IPv6'],
  ['decap_bad_inner', 'inner packets refused: version, header length, total length or header checksum'],
  ['decap_inner_dst', 'inner IPv4 destination not one of the VIPs given (or an IPv6 inner packet when VIPs are given)'],
  ['decap_ecn_changed', 'inner ECN field set from the outer (RFC 6040 4.2: CE copied into ECT, or ECT(1) over ECT(0))'],
  ['decap_ecn_drop', 'outer CE on a Not-ECT inner packet: dropped (RFC 6040 4.2)'],
] as const;

export type DecapCounterName = (typeof DECAP_COUNTER_DEFS)[number][0];
export const DecapCounter = Object.fromEntries(DECAP_COUNTER_DEFS.map((d, i) => [d[0], i])) as { readonly [K in DecapCounterName]: number };

const C_IPIP = DecapCounter.decap_ipip, C_GUE = DecapCounter.decap_gue, C_NOT_TUNNEL = DecapCounter.decap_not_tunnel;
const C_BAD_OUTER = DecapCounter.decap_bad_outer, C_TRUNCATED = DecapCounter.decap_truncated, C_FRAGMENT = DecapCounter.decap_fragment;
const C_NOT_LOCAL = DecapCounter.decap_not_local, C_BAD_SOURCE = DecapCounter.decap_bad_source, C_BAD_UDP = DecapCounter.decap_bad_udp;
const C_GUE_VERSION = DecapCounter.decap_gue_version, C_GUE_CONTROL = DecapCounter.decap_gue_control, C_GUE_HEADER = DecapCounter.decap_gue_header;
const C_GUE_PROTO = DecapCounter.decap_gue_proto, C_BAD_INNER = DecapCounter.decap_bad_inner, C_INNER_DST = DecapCounter.decap_inner_dst;
const C_ECN_CHANGED = DecapCounter.decap_ecn_changed, C_ECN_DROP = DecapCounter.decap_ecn_drop;
/** Counters that are not errors (lastError ignores them). */
const FIRST_ERROR = C_BAD_OUTER;

export interface DecapOptions {
  /** UDP port of GUE packets (default 6080); 0 turns GUE off. */
  guePort?: number;
  /** Decapsulate IPIP (default true). */
  ipip?: boolean;
  /** Outer destinations accepted (this host's addresses); empty: any. */
  localAddresses?: string[];
  /** Outer sources accepted (the encapsulators); empty: any. */
  sources?: string[];
  /** Inner IPv4 destinations accepted (the VIPs); empty: any. */
  innerDestinations?: string[];
}

function addrList(xs: string[] | undefined, what: string): Int32Array {
  return Int32Array.from((xs ?? []).map((s) => {
    try {
      return parseIpv4(s) | 0;
    } catch {
      throw new TypeError(`decap: ${what} must be IPv4 addresses, got ${JSON.stringify(s)}`);
    }
  }));
}

/** True when `list` is empty or holds `a` (a handful of entries: a scan beats a hash). */
function allowed(list: Int32Array, a: number): boolean {
  const n = list.length;
  if (n === 0) return true;
  for (let k = 0; k < n; k++) if (list[k] === a) return true;
  return false;
}

function rd16(b: Buffer, o: number): number {
  return (b[o] << 8) | b[o + 1];
}
function rd32(b: Buffer, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) | 0;
}
/** Folded one's-complement sum of `len` bytes (len even, at most 60: no overflow). */
function sumHeader(b: Buffer, o: number, len: number): number {
  let s = 0;
  for (let k = 0; k < len; k += 2) s += (b[o + k] << 8) | b[o + k + 1];
  return foldSmall(s);
}

export class Decapsulator {
  readonly guePort: number;
  readonly ipip: boolean;
  readonly values = new Float64Array(DECAP_COUNTER_DEFS.length);
  /** The last refusal (a counter index, -1 none) and its outer source, for rate-limited logs. */
  lastError = -1;
  lastErrorSource = 0;
  private readonly locals: Int32Array;
  private readonly sources: Int32Array;
  private readonly vips: Int32Array;
  /** A DataView over the last batch arena (the UDP checksum is summed 4 bytes at a time); remade when the arena changes. */
  private arena: Buffer | null = null;
  private view: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));

  constructor(opts: DecapOptions = {}) {
    const p = opts.guePort ?? 6080;
    if (!Number.isInteger(p) || p < 0 || p > 65535) throw new RangeError(`decap: guePort must be 0 (off) or 1..65535, got ${p}`);
    this.guePort = p;
    this.ipip = opts.ipip ?? true;
    if (!this.ipip && p === 0) throw new RangeError('decap: neither IPIP nor GUE is on: nothing to decapsulate');
    this.locals = addrList(opts.localAddresses, 'localAddresses (--local)');
    this.sources = addrList(opts.sources, 'sources (--from)');
    this.vips = addrList(opts.innerDestinations, 'innerDestinations (--vip)');
  }

  get(name: DecapCounterName): number {
    return this.values[DecapCounter[name]];
  }
  toObject(): Record<string, number> {
    const o: Record<string, number> = {};
    for (let i = 0; i < DECAP_COUNTER_DEFS.length; i++) o[DECAP_COUNTER_DEFS[i][0]] = this.values[i];
    return o;
  }
  /** Sum of the refusal counters (everything from decap_bad_outer on, except decap_ecn_changed). */
  errors(): number {
    let s = 0;
    for (let i = FIRST_ERROR; i < DECAP_COUNTER_DEFS.length; i++) if (i !== C_ECN_CHANGED) s += this.values[i];
    return s;
  }

  /**
   * Decapsulates batch in place (see the header); returns the packets left
   * FORWARD (inner packets, LINKTYPE_RAW).
   */
  decapBatch(batch: Batch): number {
    const n = batch.count, arena = batch.arena, off = batch.off, capLen = batch.capLen, link = batch.linkType, verdict = batch.verdict;
    if (arena !== this.arena) {
      this.arena = arena;
      this.view = new DataView(arena.buffer, arena.byteOffset, arena.length);
    }
    let fwd = 0;
    for (let i = 0; i < n; i++) {
      const r = this.one(arena, off[i], capLen[i], link[i]);
      if (r < 0) {
        verdict[i] = V_DROP;
        continue;
      }
      // r packs the inner packet's start (relative) and length: start < 2^16, length < 2^16.
      const start = r >>> 16, len = r & 0xffff;
      off[i] += start;
      capLen[i] = len;
      batch.origLen[i] = len;
      link[i] = LINK_RAW;
      verdict[i] = V_FORWARD;
      fwd++;
    }
    return fwd;
  }

  private refuse(c: number, src: number): number {
    this.values[c]++;
    if (c >= FIRST_ERROR && c !== C_ECN_CHANGED) {
      this.lastError = c;
      this.lastErrorSource = src;
    }
    return -1;
  }

  /** One frame at `po` (cap bytes, link type lt): -1 refused, else (innerStart << 16) | innerLen relative to po. */
  private one(b: Buffer, po: number, cap: number, lt: number): number {
    const cv = this.values;
    // ---- link layer ----
    let l3 = 0;
    if (lt === LINK_EN10MB) {
      if (cap < 14) { cv[C_NOT_TUNNEL]++; return -1; }
      let et = rd16(b, po + 12);
      l3 = 14;
      // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
      for (let tags = 0; tags < 2 && (et === ETH_VLAN || et === ETH_QINQ); tags++) {
        if (cap < l3 + 4) { cv[C_NOT_TUNNEL]++; return -1; }
        et = rd16(b, po + l3 + 2);
        l3 += 4;
      }
      if (et !== ETH_IPV4) { cv[C_NOT_TUNNEL]++; return -1; }
    } else if (lt === LINK_SLL) {
      if (cap < 16 || rd16(b, po + 14) !== ETH_IPV4) { cv[C_NOT_TUNNEL]++; return -1; }
      l3 = 16;
    } else if (lt === LINK_SLL2) {
      if (cap < 20 || rd16(b, po) !== ETH_IPV4) { cv[C_NOT_TUNNEL]++; return -1; }
      l3 = 20;
    } else if (lt !== LINK_RAW && lt !== LINK_IPV4) {
      cv[C_NOT_TUNNEL]++;
      return -1;
    }
    // ---- outer IPv4: classify first (what is not ours is only passed over) ----
    const o = po + l3;
    const avail = cap - l3;
    if (avail < 20 || b[o] >>> 4 !== 4) { cv[C_NOT_TUNNEL]++; return -1; }
    const hl = (b[o] & 0x0f) << 2;
    const proto = b[o + 9];
    const src = rd32(b, o + 12);
    let gue = false;
    if (proto === PROTO_IPIP && this.ipip) {
      gue = false;
    } else if (proto === PROTO_UDP && this.guePort !== 0 && hl >= 20 && avail >= hl + 8 && (rd16(b, o + 6) & 0x1fff) === 0 && rd16(b, o + hl + 2) === this.guePort) {
      gue = true;
    } else {
      cv[C_NOT_TUNNEL]++;
      return -1;
    }
    if (hl < 20 || avail < hl) return this.refuse(C_BAD_OUTER, src);
    const tot = rd16(b, o + 2);
    if (tot < hl) return this.refuse(C_BAD_OUTER, src);
    if (tot > avail) return this.refuse(C_TRUNCATED, src);
    if (sumHeader(b, o, hl) !== 0xffff) return this.refuse(C_BAD_OUTER, src);
    if ((rd16(b, o + 6) & 0x3fff) !== 0) return this.refuse(C_FRAGMENT, src);
    if (!allowed(this.locals, rd32(b, o + 16))) return this.refuse(C_NOT_LOCAL, src);
    if (!allowed(this.sources, src)) return this.refuse(C_BAD_SOURCE, src);
    const outerTos = b[o + 1];
    // ---- the tunnel header: where the inner packet starts and ends ----
    let inner = o + hl;
    let end = o + tot;
    let innerV6 = false;
    if (gue) {
      const u = inner;
      const ulen = rd16(b, u + 4);
      if (ulen < 8 || ulen > tot - hl) return this.refuse(C_BAD_UDP, src);
      end = u + ulen;
      const uc = rd16(b, u + 6);
      if (uc !== 0) {
        // RFC 768: pseudo-header (source, destination, protocol, UDP length) + the datagram.
        // At most 16,384 32-bit words each adding < 2^17: the sum stays below 2^32 for foldSmall.
        let s = rd16(b, o + 12) + rd16(b, o + 14) + rd16(b, o + 16) + rd16(b, o + 18) + PROTO_UDP + ulen;
        const v = this.view, e4 = ulen & ~3;
        let k = 0;
        for (; k < e4; k += 4) {
          const w = v.getUint32(u + k);
          s += (w >>> 16) + (w & 0xffff);
        }
        for (; k + 1 < ulen; k += 2) s += (b[u + k] << 8) | b[u + k + 1];
        if (k < ulen) s += b[u + k] << 8;
        if (foldSmall(s) !== 0xffff) return this.refuse(C_BAD_UDP, src);
      }
      const g = u + 8;
      if (g >= end) return this.refuse(C_GUE_HEADER, src);
      const b0 = b[g];
      const ver = b0 >>> 6;
      if (ver === 1) {
        // Direct IP: 0100 IPv4, 0110 IPv6 (bits 2-3 of the first byte: 00 or 10).
        const x = b0 & 0x30;
        if (x === 0x00) innerV6 = false;
        else if (x === 0x20) innerV6 = true;
        else return this.refuse(C_GUE_PROTO, src);
        inner = g;
      } else if (ver === 0) {
        if (g + 4 > end) return this.refuse(C_GUE_HEADER, src);
        if ((b0 & 0x20) !== 0) return this.refuse(C_GUE_CONTROL, src);
        if (rd16(b, g + 2) !== 0) return this.refuse(C_GUE_HEADER, src);
        const skip = 4 + ((b0 & 0x1f) << 2);
        if (g + skip > end) return this.refuse(C_GUE_HEADER, src);
        const p = b[g + 1];
        if (p === PROTO_IPIP) innerV6 = false;
        else if (p === PROTO_IPV6) innerV6 = true;
        else return this.refuse(C_GUE_PROTO, src);
        inner = g + skip;
      } else {
        return this.refuse(C_GUE_VERSION, src);
      }
    }
    // ---- the inner packet ----
    const left = end - inner;
    let ilen = 0;
    if (!innerV6) {
      if (left < 20 || b[inner] >>> 4 !== 4) return this.refuse(C_BAD_INNER, src);
      const ihl = (b[inner] & 0x0f) << 2;
      const itot = rd16(b, inner + 2);
      if (ihl < 20 || itot < ihl || itot > left) return this.refuse(C_BAD_INNER, src);
      if (sumHeader(b, inner, ihl) !== 0xffff) return this.refuse(C_BAD_INNER, src);
      if (!allowed(this.vips, rd32(b, inner + 16))) return this.refuse(C_INNER_DST, src);
      ilen = itot;
    } else {
      if (left < 40 || b[inner] >>> 4 !== 6) return this.refuse(C_BAD_INNER, src);
      const plen = rd16(b, inner + 4);
      // Payload length 0 is a jumbogram (RFC 2675): not over a 64 KiB tunnel.
      if (plen === 0 || 40 + plen > left) return this.refuse(C_BAD_INNER, src);
      if (this.vips.length !== 0) return this.refuse(C_INNER_DST, src);
      ilen = 40 + plen;
    }
    // ---- ECN (RFC 6040 4.2) ----
    const oe = outerTos & ECN_MASK;
    if (oe === ECN_CE || oe === ECN_ECT1) {
      const tc = innerV6 ? ((b[inner] & 0x0f) << 4) | (b[inner + 1] >>> 4) : b[inner + 1];
      const ie = tc & ECN_MASK;
      let ne = ie;
      if (oe === ECN_CE) {
        if (ie === 0) return this.refuse(C_ECN_DROP, src);
        ne = ECN_CE;
      } else if (ie === ECN_ECT0) {
        ne = ECN_ECT1;
      }
      if (ne !== ie) {
        if (innerV6) {
          b[inner + 1] = (b[inner + 1] & 0xcf) | (ne << 4);
        } else {
          // RFC 1624 eqn 3 for the first 16-bit word (version/IHL, TOS).
          const w0 = (b[inner] << 8) | b[inner + 1];
          const w1 = (w0 & ~ECN_MASK) | ne;
          const c = cks.update16(rd16(b, inner + 10), w0, w1);
          b[inner + 1] = w1 & 0xff;
          b[inner + 10] = c >>> 8;
          b[inner + 11] = c & 0xff;
        }
        cv[C_ECN_CHANGED]++;
      }
    }
    cv[gue ? C_GUE : C_IPIP]++;
    return ((inner - po) << 16) | ilen;
  }
}
