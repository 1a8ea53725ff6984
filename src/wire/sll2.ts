// Linux cooked capture v2 (LINKTYPE_LINUX_SLL2 = 276), 20 bytes:
// protocol(2) reserved(2) interface index(4) ARPHRD type(2) packet type(1)
// address length(1) address(8).
// https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL2.html
export const PROTOCOL = 0;
export const RESERVED = 2;
export const IFINDEX = 4;
export const HATYPE = 8;
export const PACKET_TYPE = 10;
export const ADDR_LEN = 11;
export const ADDR = 12;
export const HEADER_LEN = 20;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}
export function protocol(buf: Buffer, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}
export function setProtocol(buf: Buffer, off: number, v: number): void {
  buf[off] = v >>> 8;
  buf[off + 1] = v & 0xff;
}
export function ifIndex(buf: Buffer, off: number): number {
  return ((buf[off + IFINDEX] << 24) | (buf[off + IFINDEX + 1] << 16) | (buf[off + IFINDEX + 2] << 8) | buf[off + IFINDEX + 3]) >>> 0;
}
export function hatype(buf: Buffer, off: number): number {
  return (buf[off + HATYPE] << 8) | buf[off + HATYPE + 1];
}
export function packetType(buf: Buffer, off: number): number {
  return buf[off + PACKET_TYPE];
}

export interface Sll2Repr {
  protocol: number;
  ifIndex: number;
  hatype: number;
  packetType: number;
  addr: Buffer;
}
export function emit(r: Sll2Repr, buf: Buffer, off: number): number {
  buf.fill(0, off, off + HEADER_LEN);
  setProtocol(buf, off, r.protocol);
  buf.writeUInt32BE(r.ifIndex >>> 0, off + IFINDEX);
  buf.writeUInt16BE(r.hatype, off + HATYPE);
  buf[off + PACKET_TYPE] = r.packetType;
  const n = Math.min(r.addr.length, 8);
  buf[off + ADDR_LEN] = n;
  r.addr.copy(buf, off + ADDR, 0, n);
  return HEADER_LEN;
}
