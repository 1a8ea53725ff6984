// Packets the appliance originates: ICMP errors (time exceeded, destination
// unreachable incl. fragmentation needed) and TCP resets. Each builder writes
// a complete raw IPv4 packet INTO THE CALLER'S BUFFER at an offset and returns
// the bytes written (STYLE.md 10, dns-packet's encode(obj, buf, off)); the
// matching *Length() tells how much room to check for first. Nothing here
// allocates, so the NAT calls them on the hot path (rate limited).
//
// What an error quotes: RFC 792 asks for the offending IP header plus the
// first 64 bits of its data; RFC 1812 4.3.2.3 says to quote as much as fits
// without the error exceeding 576 bytes. We quote min(what was captured, the
// datagram's total length, 576 - 28 bytes).

import { checksum, fold } from '../wire/checksum.js';

/** RFC 1812 4.3.2.3: an ICMP error datagram never exceeds 576 bytes. */
export const ICMP_ERROR_MAX_BYTES = 576;
const IP_HDR = 20;
const ICMP_HDR = 8;
export const TCP_RST_BYTES = 40;
/** TTL of originated packets (RFC 1700 / Linux default). */
export const ORIGINATED_TTL = 64;

export const IcmpErrorType = {
  DEST_UNREACH: 3,
  TIME_EXCEEDED: 11,
  PARAM_PROBLEM: 12,
} as const;

/** Destination unreachable codes (RFC 792, RFC 1191, RFC 1812 5.2.7.1). */
export const UnreachCode = {
  NET: 0,
  HOST: 1,
  PROTOCOL: 2,
  PORT: 3,
  FRAG_NEEDED: 4, // RFC 1191 section 4: next-hop MTU in the low 16 bits of the second word
  ADMIN_PROHIBITED: 13,
} as const;

function put16(b: Buffer, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}
function put32(b: Buffer, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/**
 * Bytes of the offending datagram at `l3` an error quotes: at most the IP
 * total length, the bytes captured up to `capEnd`, and what keeps the error
 * within 576 bytes. 0 when not even the IP header is there.
 */
export function icmpQuoteLength(buf: Buffer, l3: number, capEnd: number): number {
  if (l3 + IP_HDR > capEnd) return 0;
  const tot = (buf[l3 + 2] << 8) | buf[l3 + 3];
  let n = capEnd - l3;
  if (tot !== 0 && tot < n) n = tot;
  const max = ICMP_ERROR_MAX_BYTES - IP_HDR - ICMP_HDR;
  return n > max ? max : n;
}

/** Bytes encodeIcmpError writes for a quote of `quoteLen` bytes. */
export function icmpErrorLength(quoteLen: number): number {
  return IP_HDR + ICMP_HDR + quoteLen;
}

/**
 * RFC 1122 3.2.2 / RFC 1812 4.3.2.7: never answer with an ICMP error a
 * packet that is itself an ICMP error, a non-first fragment, or was sent
 * from/to an address that does not name one host (0/8, multicast, limited
 * broadcast, class E). `capEnd` bounds the reads.
 */
export function mayAnswerWithIcmpError(buf: Buffer, l3: number, capEnd: number): boolean {
  if (l3 + IP_HDR > capEnd) return false;
  const hl = (buf[l3] & 0x0f) << 2;
  if ((((buf[l3 + 6] << 8) | buf[l3 + 7]) & 0x1fff) !== 0) return false;
  const s0 = buf[l3 + 12], d0 = buf[l3 + 16];
  if (s0 === 0 || s0 >= 224 || d0 >= 224 || s0 === 127) return false;
  if (buf[l3 + 9] === 1) {
    if (l3 + hl >= capEnd) return false;
    const t = buf[l3 + hl];
    // RFC 792 error types (3, 4, 5, 11, 12); redirect (5) included.
    if (t === 3 || t === 4 || t === 5 || t === 11 || t === 12) return false;
  }
  return true;
}

/**
 * Writes a raw IPv4 ICMP error from `src` to `dst` quoting `quoteLen` bytes
 * of `quote` at `quoteOff` (the offending IP header first). `rest` is the
 * second 32-bit word (unused = 0, MTU for fragmentation needed, pointer for
 * parameter problem). Returns the bytes written (icmpErrorLength).
 */
export function encodeIcmpError(
  type: number, code: number, rest: number, src: number, dst: number,
  quote: Buffer, quoteOff: number, quoteLen: number, buf: Buffer, off: number, ident = 0,
): number {
  const total = IP_HDR + ICMP_HDR + quoteLen;
  // Outer IPv4 header (RFC 791): no options, not fragmented.
  buf[off] = 0x45;
  buf[off + 1] = 0xc0; // RFC 1812 4.3.2.5 / 5.3.3: ICMP errors are internetwork control traffic (precedence 6)
  put16(buf, off + 2, total);
  put16(buf, off + 4, ident);
  put16(buf, off + 6, 0);
  buf[off + 8] = ORIGINATED_TTL;
  buf[off + 9] = 1;
  put16(buf, off + 10, 0);
  put32(buf, off + 12, src);
  put32(buf, off + 16, dst);
  put16(buf, off + 10, checksum(buf, off, IP_HDR));
  const ic = off + IP_HDR;
  buf[ic] = type;
  buf[ic + 1] = code;
  put16(buf, ic + 2, 0);
  put32(buf, ic + 4, rest >>> 0);
  quote.copy(buf, ic + ICMP_HDR, quoteOff, quoteOff + quoteLen);
  put16(buf, ic + 2, checksum(buf, ic, ICMP_HDR + quoteLen));
  return total;
}

/** ICMP time exceeded in transit (type 11 code 0, RFC 792; RFC 1812 5.3.1 for a router that drops on TTL). */
export function encodeTimeExceeded(src: number, dst: number, quote: Buffer, quoteOff: number, quoteLen: number, buf: Buffer, off: number): number {
  return encodeIcmpError(IcmpErrorType.TIME_EXCEEDED, 0, 0, src, dst, quote, quoteOff, quoteLen, buf, off);
}

/**
 * ICMP fragmentation needed and DF set (type 3 code 4) with the next-hop MTU
 * in the low 16 bits of the second word (RFC 1191 section 4).
 */
export function encodeFragNeeded(mtu: number, src: number, dst: number, quote: Buffer, quoteOff: number, quoteLen: number, buf: Buffer, off: number): number {
  return encodeIcmpError(IcmpErrorType.DEST_UNREACH, UnreachCode.FRAG_NEEDED, mtu & 0xffff, src, dst, quote, quoteOff, quoteLen, buf, off);
}

/** ICMP destination unreachable with `code` (UnreachCode). */
export function encodeDestUnreachable(code: number, src: number, dst: number, quote: Buffer, quoteOff: number, quoteLen: number, buf: Buffer, off: number): number {
  return encodeIcmpError(IcmpErrorType.DEST_UNREACH, code, 0, src, dst, quote, quoteOff, quoteLen, buf, off);
}

/** ICMP port unreachable (type 3 code 3), what RFC 5382 REQ-4 sends for an unsolicited SYN after 6 s. */
export function encodePortUnreachable(src: number, dst: number, quote: Buffer, quoteOff: number, quoteLen: number, buf: Buffer, off: number): number {
  return encodeIcmpError(IcmpErrorType.DEST_UNREACH, UnreachCode.PORT, 0, src, dst, quote, quoteOff, quoteLen, buf, off);
}

/**
 * A 40-byte IPv4 + TCP reset from src:sport to dst:dport. `withAck` sets
 * the ACK flag and the acknowledgment number `ack`. Returns TCP_RST_BYTES.
 */
export function encodeTcpRst(
  src: number, dst: number, sport: number, dport: number, seq: number, ack: number, withAck: boolean, buf: Buffer, off: number,
): number {
  buf[off] = 0x45;
  buf[off + 1] = 0;
  put16(buf, off + 2, TCP_RST_BYTES);
  put16(buf, off + 4, 0);
  put16(buf, off + 6, 0x4000); // DF: a reset is never worth fragmenting
  buf[off + 8] = ORIGINATED_TTL;
  buf[off + 9] = 6;
  put16(buf, off + 10, 0);
  put32(buf, off + 12, src);
  put32(buf, off + 16, dst);
  put16(buf, off + 10, checksum(buf, off, IP_HDR));
  const t = off + IP_HDR;
  put16(buf, t, sport);
  put16(buf, t + 2, dport);
  put32(buf, t + 4, seq | 0);
  put32(buf, t + 8, withAck ? ack | 0 : 0);
  buf[t + 12] = 5 << 4;
  buf[t + 13] = withAck ? 0x14 : 0x04; // RST(+ACK)
  put16(buf, t + 14, 0);
  put16(buf, t + 16, 0);
  put16(buf, t + 18, 0);
  const pseudo = fold((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + 6 + 20);
  put16(buf, t + 16, checksum(buf, t, 20, pseudo));
  return TCP_RST_BYTES;
}

/**
 * The reset that answers the TCP segment whose IPv4 header is at `l3` of
 * `seg` (captured up to `capEnd`), per RFC 9293 3.10.7.1 (RFC 793 "Reset
 * Generation"): if the segment has ACK, the reset's sequence number is
 * SEG.ACK and it carries no ACK; otherwise its sequence number is 0 and it
 * acknowledges SEG.SEQ + SEG.LEN (SYN and FIN count one each). Never answers
 * a reset. Returns the bytes written, or 0 when the segment cannot be read
 * (cut, not TCP, a RST, a non-first fragment).
 */
export function encodeTcpRstFor(seg: Buffer, l3: number, capEnd: number, buf: Buffer, off: number): number {
  if (l3 + IP_HDR > capEnd || seg[l3] >>> 4 !== 4 || seg[l3 + 9] !== 6) return 0;
  if ((((seg[l3 + 6] << 8) | seg[l3 + 7]) & 0x1fff) !== 0) return 0;
  const hl = (seg[l3] & 0x0f) << 2;
  const t = l3 + hl;
  if (t + 20 > capEnd) return 0;
  const flags = seg[t + 13];
  if ((flags & 0x04) !== 0) return 0;
  const tot = (seg[l3 + 2] << 8) | seg[l3 + 3];
  const doff = (seg[t + 12] >>> 4) << 2;
  const dataLen = Math.max(0, tot - hl - doff);
  // Int32 bit patterns throughout (not >>> 0 doubles): no number is boxed
  // on the way to the writers, so a reset costs no allocation (resets can
  // come at packet rate from the distributor's limits and the guard).
  const src = (seg[l3 + 12] << 24) | (seg[l3 + 13] << 16) | (seg[l3 + 14] << 8) | seg[l3 + 15];
  const dst = (seg[l3 + 16] << 24) | (seg[l3 + 17] << 16) | (seg[l3 + 18] << 8) | seg[l3 + 19];
  const sport = (seg[t] << 8) | seg[t + 1], dport = (seg[t + 2] << 8) | seg[t + 3];
  const sseq = (seg[t + 4] << 24) | (seg[t + 5] << 16) | (seg[t + 6] << 8) | seg[t + 7];
  const sack = (seg[t + 8] << 24) | (seg[t + 9] << 16) | (seg[t + 10] << 8) | seg[t + 11];
  if ((flags & 0x10) !== 0) return encodeTcpRst(dst, src, dport, sport, sack, 0, false, buf, off);
  const segLen = dataLen + ((flags & 0x02) !== 0 ? 1 : 0) + ((flags & 0x01) !== 0 ? 1 : 0);
  return encodeTcpRst(dst, src, dport, sport, 0, (sseq + segLen) | 0, true, buf, off);
}
