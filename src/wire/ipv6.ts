// IPv6 fixed header (RFC 8200 3) and extension headers (RFC 8200 4).
import { IpProto } from './ip-proto.js';

export const VER_TC_FLOW = 0;
export const PAYLOAD_LEN = 4;
export const NEXT_HEADER = 6;
export const HOP_LIMIT = 7;
export const SRC = 8;
export const DST = 24;
export const HEADER_LEN = 40;

/** Extension headers walked before giving up (IPV6_EXT_CHAIN_TOO_LONG). */
export const MAX_IPV6_EXT = 16;

// Generic extension header (hop-by-hop, routing, destination options,
// mobility, HIP, shim6): next header, length in 8-octet units not counting
// the first 8 (RFC 8200 4.3).
export const EXT_NEXT = 0;
export const EXT_LEN = 1;
export const EXT_MIN_LEN = 8;
// Fragment header (RFC 8200 4.5): next(1) reserved(1) offset<<3|res|M (2) id(4).
export const FRAG_HDR_LEN = 8;
export const FRAG_OFFSET_M = 2;
export const FRAG_ID = 4;
// Routing header (RFC 8200 4.4): type at 2, segments left at 3.
export const RT_TYPE = 2;
export const RT_SEGMENTS_LEFT = 3;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}
export function version(buf: Buffer, off: number): number {
  return buf[off] >>> 4;
}
export function trafficClass(buf: Buffer, off: number): number {
  return ((buf[off] & 0x0f) << 4) | (buf[off + 1] >>> 4);
}
export function flowLabel(buf: Buffer, off: number): number {
  return ((buf[off + 1] & 0x0f) << 16) | (buf[off + 2] << 8) | buf[off + 3];
}
export function payloadLength(buf: Buffer, off: number): number {
  return (buf[off + PAYLOAD_LEN] << 8) | buf[off + PAYLOAD_LEN + 1];
}
export function nextHeader(buf: Buffer, off: number): number {
  return buf[off + NEXT_HEADER];
}
export function hopLimit(buf: Buffer, off: number): number {
  return buf[off + HOP_LIMIT];
}
export function setPayloadLength(buf: Buffer, off: number, v: number): void {
  buf[off + PAYLOAD_LEN] = v >>> 8;
  buf[off + PAYLOAD_LEN + 1] = v & 0xff;
}
export function setNextHeader(buf: Buffer, off: number, v: number): void { buf[off + NEXT_HEADER] = v; }
export function setHopLimit(buf: Buffer, off: number, v: number): void { buf[off + HOP_LIMIT] = v; }
/** Copies a 16-byte address into the header (no allocation). */
export function setSrc(buf: Buffer, off: number, a: Buffer, aOff = 0): void { a.copy(buf, off + SRC, aOff, aOff + 16); }
export function setDst(buf: Buffer, off: number, a: Buffer, aOff = 0): void { a.copy(buf, off + DST, aOff, aOff + 16); }
/** 32-bit word k (0..3) of the source address, for hashing without allocation. */
export function srcWord(buf: Buffer, off: number, k: number): number {
  const o = off + SRC + (k << 2);
  return ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
}
export function dstWord(buf: Buffer, off: number, k: number): number {
  const o = off + DST + (k << 2);
  return ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
}

/** True for the next-header values walked as generic TLV-style extension headers. */
export function isGenericExt(nh: number): boolean {
  return nh === IpProto.HOPOPT || nh === IpProto.ROUTING || nh === IpProto.DSTOPTS ||
    nh === IpProto.MOBILITY || nh === IpProto.HIP || nh === IpProto.SHIM6;
}
/** Length in bytes of a generic extension header at `off` (needs 2 bytes). */
export function extLen(buf: Buffer, off: number): number {
  return (buf[off + EXT_LEN] + 1) << 3;
}
/** Length in bytes of an AH header (RFC 4302 2.2: payload length is in 32-bit words minus 2). */
export function ahLen(buf: Buffer, off: number): number {
  return (buf[off + EXT_LEN] + 2) << 2;
}
/** Fragment header: offset in 8-byte units. */
export function fragHdrOffset(buf: Buffer, off: number): number {
  return ((buf[off + FRAG_OFFSET_M] << 8) | buf[off + FRAG_OFFSET_M + 1]) >>> 3;
}
export function fragHdrMore(buf: Buffer, off: number): boolean {
  return (buf[off + FRAG_OFFSET_M + 1] & 1) !== 0;
}
export function fragHdrId(buf: Buffer, off: number): number {
  const o = off + FRAG_ID;
  return ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
}

/** RFC 5952 text form (lower case, longest run of >= 2 zero groups compressed, first on ties). Off the hot path. */
export function formatIpv6(buf: Buffer, off: number): string {
  const w = (o: number) => ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
  return formatIpv6Words(w(off), w(off + 4), w(off + 8), w(off + 12));
}

/** formatIpv6 of an address held as four big-endian 32-bit words (u32 or int32 bit patterns). */
export function formatIpv6Words(w0: number, w1: number, w2: number, w3: number): string {
  const g = [w0 >>> 16, w0 & 0xffff, w1 >>> 16, w1 & 0xffff, w2 >>> 16, w2 & 0xffff, w3 >>> 16, w3 & 0xffff];
  let bestStart = -1;
  let bestLen = 0;
  for (let k = 0; k < 8; ) {
    if (g[k] !== 0) { k++; continue; }
    let e = k;
    while (e < 8 && g[e] === 0) e++;
    if (e - k > bestLen) { bestLen = e - k; bestStart = k; }
    k = e;
  }
  // RFC 5952 4.2.3: an IPv4-mapped/compatible suffix is written dotted by some
  // tools; Wireshark prints ::ffff:a.b.c.d for mapped addresses.
  const hex = (a: number, b: number) => g.slice(a, b).map((x) => x.toString(16)).join(':');
  if (bestLen < 2) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLen, 8)}`;
}
/** 16 bytes from text (tests and config only). */
export function parseIpv6(s: string): Buffer {
  const out = Buffer.alloc(16);
  let text = s;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const p = v4[1].split('.').map(Number);
    text = text.slice(0, -v4[1].length) + `${((p[0] << 8) | p[1]).toString(16)}:${((p[2] << 8) | p[3]).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) throw new Error(`bad IPv6 address: ${s}`);
  const head = halves[0] ? halves[0].split(':') : [];
  const rest = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  if (halves.length === 1 && head.length !== 8) throw new Error(`bad IPv6 address: ${s}`);
  const groups = [...head, ...Array(8 - head.length - rest.length).fill('0'), ...rest];
  for (let k = 0; k < 8; k++) {
    const v = parseInt(groups[k], 16);
    if (!(v >= 0 && v <= 0xffff)) throw new Error(`bad IPv6 address: ${s}`);
    out.writeUInt16BE(v, 2 * k);
  }
  return out;
}

export interface Ipv6Repr {
  src: Buffer;
  dst: Buffer;
  nextHeader: number;
  payloadLen: number;
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
  version?: number;
}
export function emit(r: Ipv6Repr, buf: Buffer, off: number): number {
  const tc = r.trafficClass ?? 0;
  const fl = r.flowLabel ?? 0;
  buf[off] = ((r.version ?? 6) << 4) | (tc >>> 4);
  buf[off + 1] = ((tc & 0x0f) << 4) | ((fl >>> 16) & 0x0f);
  buf[off + 2] = (fl >>> 8) & 0xff;
  buf[off + 3] = fl & 0xff;
  setPayloadLength(buf, off, r.payloadLen);
  buf[off + NEXT_HEADER] = r.nextHeader;
  buf[off + HOP_LIMIT] = r.hopLimit ?? 64;
  setSrc(buf, off, r.src);
  setDst(buf, off, r.dst);
  return HEADER_LEN;
}

/** A generic extension header (hop-by-hop, routing, dst-opts...) padded with PadN to `len` bytes (multiple of 8). */
export interface Ipv6ExtRepr {
  nextHeader: number;
  len: number;
  /** For routing headers: routing type and segments left. */
  routingType?: number;
  segmentsLeft?: number;
}
export function emitExt(r: Ipv6ExtRepr, buf: Buffer, off: number): number {
  buf.fill(0, off, off + r.len);
  buf[off] = r.nextHeader;
  buf[off + 1] = (r.len >>> 3) - 1;
  if (r.routingType !== undefined) {
    buf[off + RT_TYPE] = r.routingType;
    buf[off + RT_SEGMENTS_LEFT] = r.segmentsLeft ?? 0;
  } else if (r.len - 2 >= 2) {
    buf[off + 2] = 1; // PadN covering the rest
    buf[off + 3] = r.len - 4;
  }
  return r.len;
}
export interface Ipv6FragRepr {
  nextHeader: number;
  offset: number; // 8-byte units
  more: boolean;
  ident: number;
}
export function emitFrag(r: Ipv6FragRepr, buf: Buffer, off: number): number {
  buf[off] = r.nextHeader;
  buf[off + 1] = 0;
  const w = ((r.offset & 0x1fff) << 3) | (r.more ? 1 : 0);
  buf[off + 2] = w >>> 8;
  buf[off + 3] = w & 0xff;
  buf.writeUInt32BE(r.ident >>> 0, off + 4);
  return FRAG_HDR_LEN;
}
/** AH (RFC 4302 2): next, payload length ((len/4) - 2), reserved, SPI, sequence, ICV. `len` multiple of 8 for IPv6. */
export interface AhRepr {
  nextHeader: number;
  len: number;
  spi: number;
  seq: number;
}
export function emitAh(r: AhRepr, buf: Buffer, off: number): number {
  buf.fill(0, off, off + r.len);
  buf[off] = r.nextHeader;
  buf[off + 1] = (r.len >>> 2) - 2;
  buf.writeUInt32BE(r.spi >>> 0, off + 4);
  buf.writeUInt32BE(r.seq >>> 0, off + 8);
  return r.len;
}
