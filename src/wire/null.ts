// BSD loopback (LINKTYPE_NULL = 0: 4-byte address family in the byte order of
// the host that wrote the capture; LINKTYPE_LOOP = 108: network byte order).
// https://www.tcpdump.org/linktypes/LINKTYPE_NULL.html
import { EtherType } from './ip-proto.js';

export const FAMILY = 0;
export const HEADER_LEN = 4;
/** AF_INET on every BSD. */
export const AF_INET = 2;
/** AF_INET6 differs per OS: NetBSD/OpenBSD 24, FreeBSD 28, Darwin 30. */
export const AF_INET6_BSD = 24;
export const AF_INET6_FREEBSD = 28;
export const AF_INET6_DARWIN = 30;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}

/**
 * The family of a LINKTYPE_NULL header. The writer's byte order is unknown,
 * so like libpcap and Wireshark (packet-null.c) we read it little-endian and
 * byte-swap when the upper 16 bits are set: families are small numbers.
 */
export function nullFamily(buf: Buffer, off: number): number {
  const v = (buf[off] | (buf[off + 1] << 8) | (buf[off + 2] << 16) | (buf[off + 3] << 24)) >>> 0;
  if ((v & 0xffff0000) !== 0) {
    return ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
  }
  return v;
}
/** The family of a LINKTYPE_LOOP header (always network order). */
export function loopFamily(buf: Buffer, off: number): number {
  return ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
}
/** EtherType equivalent of a family, 0 when it is not IP. */
export function familyEtherType(family: number): number {
  if (family === AF_INET) return EtherType.IPV4;
  if (family === AF_INET6_BSD || family === AF_INET6_FREEBSD || family === AF_INET6_DARWIN) return EtherType.IPV6;
  return 0;
}

export interface NullRepr {
  family: number;
  /** true writes network order (LOOP, or a big-endian host's NULL). */
  bigEndian: boolean;
}
export function emit(r: NullRepr, buf: Buffer, off: number): number {
  if (r.bigEndian) buf.writeUInt32BE(r.family >>> 0, off);
  else buf.writeUInt32LE(r.family >>> 0, off);
  return HEADER_LEN;
}
