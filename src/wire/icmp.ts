// ICMPv4 header (RFC 792): type, code, checksum, then 4 bytes whose meaning
// depends on the type (identifier+sequence for echo, unused/MTU for errors),
// then for errors the quoted IP header plus at least 8 bytes (RFC 1812 4.3.2.3: as much as fits).
import { checksum } from './checksum.js';

export const TYPE = 0;
export const CODE = 1;
export const CHECKSUM = 2;
export const REST = 4;
export const IDENT = 4;
export const SEQ = 6;
export const HEADER_LEN = 8;

export const IcmpType = {
  ECHO_REPLY: 0,
  DEST_UNREACH: 3,
  SOURCE_QUENCH: 4,
  REDIRECT: 5,
  ECHO_REQUEST: 8,
  TIME_EXCEEDED: 11,
  PARAM_PROBLEM: 12,
} as const;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}
/** Error messages quote the offending datagram (RFC 792). */
export function isError(type: number): boolean {
  return type === 3 || type === 4 || type === 5 || type === 11 || type === 12;
}
export function type(buf: Buffer, off: number): number { return buf[off + TYPE]; }
export function code(buf: Buffer, off: number): number { return buf[off + CODE]; }
export function icmpChecksum(buf: Buffer, off: number): number {
  return (buf[off + CHECKSUM] << 8) | buf[off + CHECKSUM + 1];
}
export function ident(buf: Buffer, off: number): number { return (buf[off + IDENT] << 8) | buf[off + IDENT + 1]; }
export function seq(buf: Buffer, off: number): number { return (buf[off + SEQ] << 8) | buf[off + SEQ + 1]; }
/** Offset of the quoted IP header of an error message. */
export function quoteOffset(off: number): number { return off + HEADER_LEN; }
function put16(buf: Buffer, o: number, v: number): void {
  buf[o] = (v >>> 8) & 0xff;
  buf[o + 1] = v & 0xff;
}
export function setType(buf: Buffer, off: number, v: number): void { buf[off + TYPE] = v; }
export function setCode(buf: Buffer, off: number, v: number): void { buf[off + CODE] = v; }
export function setIcmpChecksum(buf: Buffer, off: number, v: number): void { put16(buf, off + CHECKSUM, v); }
export function setIdent(buf: Buffer, off: number, v: number): void { put16(buf, off + IDENT, v); }
export function setSeq(buf: Buffer, off: number, v: number): void { put16(buf, off + SEQ, v); }
/** ICMPv4 checksum covers the whole message, no pseudo-header (RFC 792). */
export function fillChecksum(buf: Buffer, off: number, len: number): void {
  put16(buf, off + CHECKSUM, 0);
  put16(buf, off + CHECKSUM, checksum(buf, off, len));
}

export interface IcmpRepr {
  type: number;
  code: number;
  /** The 4 bytes after the checksum (identifier<<16|sequence for echo). */
  rest: number;
}
export function emit(r: IcmpRepr, buf: Buffer, off: number): number {
  buf[off] = r.type;
  buf[off + 1] = r.code;
  put16(buf, off + CHECKSUM, 0);
  buf.writeUInt32BE(r.rest >>> 0, off + REST);
  return HEADER_LEN;
}
