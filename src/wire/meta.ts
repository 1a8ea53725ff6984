// Meta: what the parser found, one entry per packet of a batch, as a
// structure of arrays indexed like the batch (STYLE.md 5). Allocated once per
// batch capacity and rebound for every batch; nothing here is per packet.
//
// Offsets are relative to the start of the packet (Batch.off[i]) so a packet
// can be copied or rewritten without touching Meta. Header offsets beyond
// 65535 bytes are refused by the parser (they cannot occur in a well-formed
// IP packet's headers).

import { PARSE_STATUS_COUNT } from './status.js';
import { ArrayCarver } from './carve.js';

/** Bits of Meta.flags. */
export const MetaFlag = {
  L3: 1 << 0,            // l3Off is valid (an IPv4 or IPv6 header starts there)
  L4: 1 << 1,            // l4Off is valid and the transport header was fully captured (ports/type are set)
  VLAN: 1 << 2,          // at least one 802.1Q/802.1ad tag (vlanId is the outermost)
  FRAGMENT: 1 << 3,      // the IP packet is a fragment (MF set, offset > 0, or an IPv6 fragment header that is not atomic)
  MF: 1 << 4,            // more-fragments flag (IPv4 MF bit or IPv6 fragment header M)
  DF: 1 << 5,            // IPv4 don't-fragment bit
  V6_FRAGHDR: 1 << 6,    // an IPv6 fragment header is present (also for atomic fragments)
  TCP_FLAGS: 1 << 7,     // tcpFlags is valid (the first fragment held at least 14 bytes of TCP)
  TUNNEL: 1 << 8,        // innerOff/innerKind name an encapsulated packet
  ICMP_ERROR: 1 << 9,    // ICMP/ICMPv6 error: innerOff points at the quoted IP header
  PORTS: 1 << 10,        // srcPort/dstPort are valid (a first fragment may have ports without L4)
  ESP: 1 << 11,          // the IPv6 chain or IPv4 payload is ESP: nothing after it can be read
  L4_SHORT: 1 << 12,     // snap length cut the packet after the transport header (payload not all captured)
} as const;

/** What Meta.innerOff points at. */
export const InnerKind = {
  NONE: 0,
  IPIP: 1,      // IPv4 in IPv4 (protocol 4)
  SIX_IN_4: 2,  // IPv6 in IPv4 (protocol 41)
  FOUR_IN_6: 3, // IPv4 in IPv6 (next header 4)
  SIX_IN_6: 4,  // IPv6 in IPv6 (next header 41)
  GRE: 5,       // inner network packet after a GRE header (innerEtherType says which)
  ICMP_QUOTE: 6 // the IP header quoted by an ICMP / ICMPv6 error
} as const;

export const LinkType = {
  NULL: 0,        // BSD loopback, 4-byte host-order family
  EN10MB: 1,
  RAW: 101,       // raw IPv4 or IPv6, version from the first nibble
  LOOP: 108,      // like NULL but the family is network order
  LINUX_SLL: 113,
  IPV4: 228,
  IPV6: 229,
  LINUX_SLL2: 276,
} as const;

export class Meta {
  readonly capacity: number;
  count = 0;
  /** ParseStatus of each packet. */
  readonly status: Uint8Array;
  readonly flags: Uint16Array;
  /** EtherType of the network layer (after tags / SLL), 0 for raw IP links before parsing. */
  readonly etherType: Uint16Array;
  readonly vlanId: Uint16Array;
  readonly vlanDepth: Uint8Array;
  readonly l3Off: Uint16Array;
  readonly l4Off: Uint16Array;
  /** 4 or 6 when flags has L3, else 0. */
  readonly ipVersion: Uint8Array;
  /** Upper-layer protocol: IPv4 protocol field, or the IPv6 next header after walking extension headers. */
  readonly l4Proto: Uint8Array;
  /** Transport bytes the IP header declares (total/payload length minus headers), not what was captured. */
  readonly l4Len: Uint16Array;
  /** Fragment offset in 8-byte units (IPv4 13-bit field or IPv6 fragment header). */
  readonly fragOff: Uint16Array;
  /** IPv4 identification or IPv6 fragment identification. */
  readonly fragId: Uint32Array;
  readonly src4: Uint32Array;
  readonly dst4: Uint32Array;
  readonly srcPort: Uint16Array;
  readonly dstPort: Uint16Array;
  /** TCP flags, 9 bits (NS..FIN), valid when flags has TCP_FLAGS. */
  readonly tcpFlags: Uint16Array;
  readonly icmpType: Uint8Array;
  readonly icmpCode: Uint8Array;
  readonly innerKind: Uint8Array;
  readonly innerOff: Uint16Array;
  /** EtherType of the packet at innerOff for GRE (PPTP's PPP IPv4/IPv6 mapped to 0x0800/0x86DD; 0 when not IP). */
  readonly innerEtherType: Uint16Array;
  /** Per-status counts accumulated by the parser over every batch it walked. */
  readonly statusCounts: Float64Array;

  /**
   * `carver` (optional) places the arrays in a SharedArrayBuffer so another
   * thread can read what this one parsed (src/pipeline/).
   */
  constructor(capacity: number, carver: ArrayCarver = new ArrayCarver()) {
    const c = carver;
    this.capacity = capacity;
    this.status = c.u8(capacity);
    this.flags = c.u16(capacity);
    this.etherType = c.u16(capacity);
    this.vlanId = c.u16(capacity);
    this.vlanDepth = c.u8(capacity);
    this.l3Off = c.u16(capacity);
    this.l4Off = c.u16(capacity);
    this.ipVersion = c.u8(capacity);
    this.l4Proto = c.u8(capacity);
    this.l4Len = c.u16(capacity);
    this.fragOff = c.u16(capacity);
    this.fragId = c.u32(capacity);
    this.src4 = c.u32(capacity);
    this.dst4 = c.u32(capacity);
    this.srcPort = c.u16(capacity);
    this.dstPort = c.u16(capacity);
    this.tcpFlags = c.u16(capacity);
    this.icmpType = c.u8(capacity);
    this.icmpCode = c.u8(capacity);
    this.innerKind = c.u8(capacity);
    this.innerOff = c.u16(capacity);
    this.innerEtherType = c.u16(capacity);
    this.statusCounts = c.f64(PARSE_STATUS_COUNT);
  }

  /** Bytes a Meta of `capacity` entries takes in a shared region. */
  static byteLength(capacity: number): number {
    const c = new ArrayCarver();
    new Meta(capacity, c);
    return (c.offset + 7) & ~7;
  }

  /** Clears entry i; the parser calls this before filling it. */
  reset(i: number): void {
    this.status[i] = 0;
    this.flags[i] = 0;
    this.etherType[i] = 0;
    this.vlanId[i] = 0;
    this.vlanDepth[i] = 0;
    this.l3Off[i] = 0;
    this.l4Off[i] = 0;
    this.ipVersion[i] = 0;
    this.l4Proto[i] = 0;
    this.l4Len[i] = 0;
    this.fragOff[i] = 0;
    this.fragId[i] = 0;
    this.src4[i] = 0;
    this.dst4[i] = 0;
    this.srcPort[i] = 0;
    this.dstPort[i] = 0;
    this.tcpFlags[i] = 0;
    this.icmpType[i] = 0;
    this.icmpCode[i] = 0;
    this.innerKind[i] = 0;
    this.innerOff[i] = 0;
    this.innerEtherType[i] = 0;
  }
}
