// UDP header (RFC 768).
import { checksum, pseudoSum4, pseudoSum6 } from './checksum.js';

export const SRC_PORT = 0;
export const DST_PORT = 2;
export const LENGTH = 4;
export const CHECKSUM = 6;
export const HEADER_LEN = 8;
/** Well-known ports of encapsulations decoded off the hot path (fields.ts). */
export const PORT_VXLAN = 4789; // RFC 7348 5
export const PORT_TEREDO = 3544; // RFC 4380 4

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}
export function srcPort(buf: Buffer, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}
export function dstPort(buf: Buffer, off: number): number {
  return (buf[off + 2] << 8) | buf[off + 3];
}
export function length(buf: Buffer, off: number): number {
  return (buf[off + LENGTH] << 8) | buf[off + LENGTH + 1];
}
export function udpChecksum(buf: Buffer, off: number): number {
  return (buf[off + CHECKSUM] << 8) | buf[off + CHECKSUM + 1];
}
function put16(buf: Buffer, o: number, v: number): void {
  buf[o] = (v >>> 8) & 0xff;
  buf[o + 1] = v & 0xff;
}
export function setSrcPort(buf: Buffer, off: number, v: number): void { put16(buf, off + SRC_PORT, v); }
export function setDstPort(buf: Buffer, off: number, v: number): void { put16(buf, off + DST_PORT, v); }
export function setLength(buf: Buffer, off: number, v: number): void { put16(buf, off + LENGTH, v); }
export function setUdpChecksum(buf: Buffer, off: number, v: number): void { put16(buf, off + CHECKSUM, v); }

/** RFC 768: a computed checksum of zero is sent as all ones (zero means "none" over IPv4). */
export function checksum4(buf: Buffer, off: number, len: number, src: number, dst: number): number {
  const c = checksum(buf, off, len, pseudoSum4(src, dst, 17, len));
  return c === 0 ? 0xffff : c;
}
export function checksum6(buf: Buffer, off: number, len: number, srcOff: number, dstOff: number): number {
  const c = checksum(buf, off, len, pseudoSum6(buf, srcOff, dstOff, 17, len));
  return c === 0 ? 0xffff : c;
}

export interface UdpRepr {
  srcPort: number;
  dstPort: number;
  payloadLen: number;
  /** Overrides the length field (to build lying headers). */
  length?: number;
}
export function emit(r: UdpRepr, buf: Buffer, off: number): number {
  put16(buf, off + SRC_PORT, r.srcPort);
  put16(buf, off + DST_PORT, r.dstPort);
  put16(buf, off + LENGTH, r.length ?? HEADER_LEN + r.payloadLen);
  put16(buf, off + CHECKSUM, 0);
  return HEADER_LEN;
}
