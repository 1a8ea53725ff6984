// GRE: RFC 2784 (C bit, checksum+reserved1), RFC 2890 (K key, S sequence),
// RFC 1701 (R routing with source route entries, still decoded by Wireshark),
// and PPTP's enhanced GRE, version 1 (RFC 2637 4.1: K mandatory with payload
// length + call id, optional S sequence, A acknowledgment).
import { EtherType } from './ip-proto.js';

export const FLAGS_VER = 0;
export const PROTOCOL = 2;
export const BASE_LEN = 4;
export const FLAG_C = 0x8000;
export const FLAG_R = 0x4000;
export const FLAG_K = 0x2000;
export const FLAG_S = 0x1000;
export const FLAG_A = 0x0080; // version 1 only
export const VERSION_MASK = 0x0007;
/** Source route entries walked (RFC 1701 R bit) before calling the header bad. */
export const MAX_SRE = 16;

/** Results of headerLen() below zero. */
export const GRE_TRUNCATED = -1;
export const GRE_BAD = -2;

// PPP inside PPTP GRE (RFC 1661 2, RFC 1662 3.1): address 0xff, control 0x03
// (may be compressed away, RFC 1661 6.6), then the protocol (1 byte when odd, RFC 1661 6.5).
export const PPP_ADDR_CTRL = 0xff03;
export const PPP_IPV4 = 0x0021;
export const PPP_IPV6 = 0x0057;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + BASE_LEN <= end && end <= buf.length;
}
export function flagsVer(buf: Buffer, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}
export function version(buf: Buffer, off: number): number {
  return buf[off + 1] & VERSION_MASK;
}
export function protocol(buf: Buffer, off: number): number {
  return (buf[off + PROTOCOL] << 8) | buf[off + PROTOCOL + 1];
}
export function setProtocol(buf: Buffer, off: number, v: number): void {
  buf[off + PROTOCOL] = v >>> 8;
  buf[off + PROTOCOL + 1] = v & 0xff;
}
/** Offset of the key field (v0 with K) or the payload length/call id (v1). */
export function keyOffset(buf: Buffer, off: number): number {
  return off + BASE_LEN + ((buf[off] & 0xc0) !== 0 ? 4 : 0);
}
export function key(buf: Buffer, off: number): number {
  const o = keyOffset(buf, off);
  return ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
}
/** PPTP call id (low half of the key field). */
export function callId(buf: Buffer, off: number): number {
  const o = keyOffset(buf, off);
  return (buf[o + 2] << 8) | buf[o + 3];
}

/**
 * Length of the GRE header at `off` with bytes available up to `end`:
 * GRE_TRUNCATED when it runs past `end`, GRE_BAD for a version we do not
 * know, PPTP without K or protocol 0x880B, or an endless SRE list.
 */
export function headerLen(buf: Buffer, off: number, end: number): number {
  if (off + BASE_LEN > end) return GRE_TRUNCATED;
  const fv = (buf[off] << 8) | buf[off + 1];
  const ver = fv & VERSION_MASK;
  let len = BASE_LEN;
  if (ver === 0) {
    if ((fv & (FLAG_C | FLAG_R)) !== 0) len += 4; // checksum + offset (RFC 1701 / 2784)
    if ((fv & FLAG_K) !== 0) len += 4;
    if ((fv & FLAG_S) !== 0) len += 4;
    if ((fv & FLAG_R) !== 0) {
      // RFC 1701: SREs (address family 2, offset 1, length 1, data) until AF 0 and length 0.
      let n = 0;
      for (;;) {
        if (off + len + 4 > end) return GRE_TRUNCATED;
        const af = (buf[off + len] << 8) | buf[off + len + 1];
        const sl = buf[off + len + 3];
        len += 4 + sl;
        if (af === 0 && sl === 0) break;
        if (++n > MAX_SRE) return GRE_BAD;
      }
    }
  } else if (ver === 1) {
    if ((fv & FLAG_K) === 0 || (((buf[off + 2] << 8) | buf[off + 3]) !== EtherType.PPP)) return GRE_BAD;
    len += 4;
    if ((fv & FLAG_S) !== 0) len += 4;
    if ((fv & FLAG_A) !== 0) len += 4;
  } else {
    return GRE_BAD;
  }
  if (off + len > end) return GRE_TRUNCATED;
  return len;
}

/**
 * PPP header length at `off` (address/control if present, then protocol),
 * 0 when not captured within `end`.
 */
export function pppHeaderLen(buf: Buffer, off: number, end: number): number {
  let p = off;
  if (p + 2 <= end && buf[p] === 0xff && buf[p + 1] === 0x03) p += 2;
  if (p + 1 > end) return 0;
  if ((buf[p] & 1) !== 0) return p + 1 - off; // compressed 1-byte protocol
  if (p + 2 > end) return 0;
  return p + 2 - off;
}
/** The PPP protocol after pppHeaderLen() bytes. */
export function pppProtocol(buf: Buffer, off: number, hlen: number): number {
  const p = off + hlen;
  // Lengths 1 and 3 mean a compressed 1-byte protocol, 2 and 4 a full one.
  return hlen === 1 || hlen === 3 ? buf[p - 1] : (buf[p - 2] << 8) | buf[p - 1];
}
/** EtherType for a PPP protocol number, 0 if not IP. */
export function pppEtherType(proto: number): number {
  if (proto === PPP_IPV4) return EtherType.IPV4;
  if (proto === PPP_IPV6) return EtherType.IPV6;
  return 0;
}

export interface GreRepr {
  version: 0 | 1;
  protocol: number;
  checksum?: number;
  key?: number;
  seq?: number;
  /** Version 1 acknowledgment number. */
  ack?: number;
}
export function emit(r: GreRepr, buf: Buffer, off: number): number {
  let fv = r.version;
  if (r.checksum !== undefined) fv |= FLAG_C;
  if (r.key !== undefined) fv |= FLAG_K;
  if (r.seq !== undefined) fv |= FLAG_S;
  if (r.ack !== undefined) fv |= FLAG_A;
  buf.writeUInt16BE(fv, off);
  buf.writeUInt16BE(r.protocol, off + 2);
  let o = off + 4;
  if (r.checksum !== undefined) { buf.writeUInt32BE((r.checksum << 16) >>> 0, o); o += 4; }
  if (r.key !== undefined) { buf.writeUInt32BE(r.key >>> 0, o); o += 4; }
  if (r.seq !== undefined) { buf.writeUInt32BE(r.seq >>> 0, o); o += 4; }
  if (r.ack !== undefined) { buf.writeUInt32BE(r.ack >>> 0, o); o += 4; }
  return o - off;
}
