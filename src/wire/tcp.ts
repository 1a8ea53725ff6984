// TCP header (RFC 9293 3.1).
import { checksum, pseudoSum4, pseudoSum6 } from './checksum.js';

export const SRC_PORT = 0;
export const DST_PORT = 2;
export const SEQ = 4;
export const ACK = 8;
export const DATA_OFFSET = 12;
export const FLAGS = 13;
export const WINDOW = 14;
export const CHECKSUM = 16;
export const URGENT = 18;
export const HEADER_LEN = 20;
/** Bytes that hold the ports (enough for a tiny first fragment or an ICMP quote). */
export const PORTS_LEN = 4;

/** Flag bits of the 9-bit field (RFC 9293 3.1, RFC 3540 NS). */
export const TcpFlag = {
  FIN: 0x001,
  SYN: 0x002,
  RST: 0x004,
  PSH: 0x008,
  ACK: 0x010,
  URG: 0x020,
  ECE: 0x040,
  CWR: 0x080,
  NS: 0x100,
} as const;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}
export function srcPort(buf: Buffer, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}
export function dstPort(buf: Buffer, off: number): number {
  return (buf[off + 2] << 8) | buf[off + 3];
}
export function seq(buf: Buffer, off: number): number {
  return ((buf[off + SEQ] << 24) | (buf[off + SEQ + 1] << 16) | (buf[off + SEQ + 2] << 8) | buf[off + SEQ + 3]) >>> 0;
}
export function ack(buf: Buffer, off: number): number {
  return ((buf[off + ACK] << 24) | (buf[off + ACK + 1] << 16) | (buf[off + ACK + 2] << 8) | buf[off + ACK + 3]) >>> 0;
}
/** Header length in bytes (data offset * 4). */
export function headerLen(buf: Buffer, off: number): number {
  return (buf[off + DATA_OFFSET] >>> 4) << 2;
}
/** The 9 flag bits NS..FIN. */
export function flags(buf: Buffer, off: number): number {
  return ((buf[off + DATA_OFFSET] & 1) << 8) | buf[off + FLAGS];
}
export function window(buf: Buffer, off: number): number {
  return (buf[off + WINDOW] << 8) | buf[off + WINDOW + 1];
}
export function tcpChecksum(buf: Buffer, off: number): number {
  return (buf[off + CHECKSUM] << 8) | buf[off + CHECKSUM + 1];
}
export function urgent(buf: Buffer, off: number): number {
  return (buf[off + URGENT] << 8) | buf[off + URGENT + 1];
}
function put16(buf: Buffer, o: number, v: number): void {
  buf[o] = (v >>> 8) & 0xff;
  buf[o + 1] = v & 0xff;
}
function put32(buf: Buffer, o: number, v: number): void {
  buf[o] = v >>> 24;
  buf[o + 1] = (v >>> 16) & 0xff;
  buf[o + 2] = (v >>> 8) & 0xff;
  buf[o + 3] = v & 0xff;
}
export function setSrcPort(buf: Buffer, off: number, v: number): void { put16(buf, off + SRC_PORT, v); }
export function setDstPort(buf: Buffer, off: number, v: number): void { put16(buf, off + DST_PORT, v); }
export function setSeq(buf: Buffer, off: number, v: number): void { put32(buf, off + SEQ, v); }
export function setAck(buf: Buffer, off: number, v: number): void { put32(buf, off + ACK, v); }
export function setFlags(buf: Buffer, off: number, v: number): void {
  buf[off + DATA_OFFSET] = (buf[off + DATA_OFFSET] & 0xf0) | ((v >>> 8) & 1);
  buf[off + FLAGS] = v & 0xff;
}
export function setHeaderLen(buf: Buffer, off: number, bytes: number): void {
  buf[off + DATA_OFFSET] = ((bytes >>> 2) << 4) | (buf[off + DATA_OFFSET] & 0x0f);
}
export function setWindow(buf: Buffer, off: number, v: number): void { put16(buf, off + WINDOW, v); }
export function setTcpChecksum(buf: Buffer, off: number, v: number): void { put16(buf, off + CHECKSUM, v); }

/** Checksum over a segment of `len` bytes with an IPv4 pseudo-header (checksum field must be zero or is included). */
export function checksum4(buf: Buffer, off: number, len: number, src: number, dst: number): number {
  return checksum(buf, off, len, pseudoSum4(src, dst, 6, len));
}
export function checksum6(buf: Buffer, off: number, len: number, srcOff: number, dstOff: number): number {
  return checksum(buf, off, len, pseudoSum6(buf, srcOff, dstOff, 6, len));
}

export interface TcpRepr {
  srcPort: number;
  dstPort: number;
  seq?: number;
  ack?: number;
  flags: number;
  window?: number;
  /** Option bytes, padded to a multiple of 4. */
  options?: Buffer;
  /** Overrides the data offset (in bytes) to build bad headers. */
  headerLen?: number;
}
export function emit(r: TcpRepr, buf: Buffer, off: number): number {
  const optLen = r.options ? (r.options.length + 3) & ~3 : 0;
  const hl = HEADER_LEN + optLen;
  buf.fill(0, off, off + hl);
  put16(buf, off + SRC_PORT, r.srcPort);
  put16(buf, off + DST_PORT, r.dstPort);
  put32(buf, off + SEQ, r.seq ?? 0);
  put32(buf, off + ACK, r.ack ?? 0);
  buf[off + DATA_OFFSET] = ((r.headerLen ?? hl) >>> 2) << 4;
  setFlags(buf, off, r.flags);
  put16(buf, off + WINDOW, r.window ?? 65535);
  if (r.options) r.options.copy(buf, off + HEADER_LEN);
  return hl;
}
