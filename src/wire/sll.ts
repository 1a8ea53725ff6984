// Linux cooked capture v1 (LINKTYPE_LINUX_SLL = 113), 16 bytes:
// packet type(2) ARPHRD type(2) address length(2) address(8) protocol(2).
// https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html
export const PACKET_TYPE = 0;
export const HATYPE = 2;
export const ADDR_LEN = 4;
export const ADDR = 6;
export const PROTOCOL = 14;
export const HEADER_LEN = 16;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}
export function packetType(buf: Buffer, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}
export function hatype(buf: Buffer, off: number): number {
  return (buf[off + HATYPE] << 8) | buf[off + HATYPE + 1];
}
export function addrLen(buf: Buffer, off: number): number {
  return (buf[off + ADDR_LEN] << 8) | buf[off + ADDR_LEN + 1];
}
export function protocol(buf: Buffer, off: number): number {
  return (buf[off + PROTOCOL] << 8) | buf[off + PROTOCOL + 1];
}
export function setProtocol(buf: Buffer, off: number, v: number): void {
  buf[off + PROTOCOL] = v >>> 8;
  buf[off + PROTOCOL + 1] = v & 0xff;
}

export interface SllRepr {
  packetType: number;
  hatype: number;
  addr: Buffer; // up to 8 bytes
  protocol: number;
}
export function emit(r: SllRepr, buf: Buffer, off: number): number {
  buf.fill(0, off, off + HEADER_LEN);
  buf.writeUInt16BE(r.packetType, off + PACKET_TYPE);
  buf.writeUInt16BE(r.hatype, off + HATYPE);
  const n = Math.min(r.addr.length, 8);
  buf.writeUInt16BE(n, off + ADDR_LEN);
  r.addr.copy(buf, off + ADDR, 0, n);
  setProtocol(buf, off, r.protocol);
  return HEADER_LEN;
}
