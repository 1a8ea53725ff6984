// ICMPv6 header (RFC 4443 2.1). Errors (types 0..127) quote as much of the
// invoking packet as fits in the minimum MTU (RFC 4443 2.4 (c)).
import { checksum, pseudoSum6 } from './checksum.js';

export const TYPE = 0;
export const CODE = 1;
export const CHECKSUM = 2;
export const REST = 4;
export const HEADER_LEN = 8;

export const Icmpv6Type = {
  DEST_UNREACH: 1,
  PACKET_TOO_BIG: 2,
  TIME_EXCEEDED: 3,
  PARAM_PROBLEM: 4,
  ECHO_REQUEST: 128,
  ECHO_REPLY: 129,
  NEIGHBOR_SOLICIT: 135,
  NEIGHBOR_ADVERT: 136,
} as const;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}
/** The error messages that carry a quoted packet (RFC 4443 3). */
export function isError(type: number): boolean {
  return type >= 1 && type <= 4;
}
export function type(buf: Buffer, off: number): number { return buf[off + TYPE]; }
export function code(buf: Buffer, off: number): number { return buf[off + CODE]; }
export function icmpChecksum(buf: Buffer, off: number): number {
  return (buf[off + CHECKSUM] << 8) | buf[off + CHECKSUM + 1];
}
export function quoteOffset(off: number): number { return off + HEADER_LEN; }
export function setType(buf: Buffer, off: number, v: number): void { buf[off + TYPE] = v; }
export function setCode(buf: Buffer, off: number, v: number): void { buf[off + CODE] = v; }
export function setIcmpChecksum(buf: Buffer, off: number, v: number): void {
  buf[off + CHECKSUM] = v >>> 8;
  buf[off + CHECKSUM + 1] = v & 0xff;
}
/** RFC 4443 2.3: checksum includes the IPv6 pseudo-header. */
export function computeChecksum(buf: Buffer, off: number, len: number, srcOff: number, dstOff: number): number {
  return checksum(buf, off, len, pseudoSum6(buf, srcOff, dstOff, 58, len));
}

export interface Icmpv6Repr {
  type: number;
  code: number;
  rest: number;
}
export function emit(r: Icmpv6Repr, buf: Buffer, off: number): number {
  buf[off] = r.type;
  buf[off + 1] = r.code;
  buf[off + 2] = 0;
  buf[off + 3] = 0;
  buf.writeUInt32BE(r.rest >>> 0, off + REST);
  return HEADER_LEN;
}
