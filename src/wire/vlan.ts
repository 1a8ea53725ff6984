// IEEE 802.1Q / 802.1ad tag, as it follows the TPID (the TPID itself is the
// EtherType of the previous header): TCI (PCP 3 bits, DEI 1 bit, VID 12 bits)
// then the EtherType of what follows.
export const TCI = 0;
export const ETHERTYPE = 2;
export const TAG_LEN = 4;
export const VID_MASK = 0x0fff;
/** Stacked tags we walk before giving up (VLAN_TOO_DEEP). */
export const MAX_VLAN_DEPTH = 8;

export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + TAG_LEN <= end && end <= buf.length;
}
export function tci(buf: Buffer, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}
export function vid(buf: Buffer, off: number): number {
  return ((buf[off] << 8) | buf[off + 1]) & VID_MASK;
}
export function pcp(buf: Buffer, off: number): number {
  return buf[off] >>> 5;
}
export function dei(buf: Buffer, off: number): number {
  return (buf[off] >>> 4) & 1;
}
export function etherType(buf: Buffer, off: number): number {
  return (buf[off + ETHERTYPE] << 8) | buf[off + ETHERTYPE + 1];
}
export function setVid(buf: Buffer, off: number, v: number): void {
  buf[off] = (buf[off] & 0xf0) | ((v >>> 8) & 0x0f);
  buf[off + 1] = v & 0xff;
}
export function setPcp(buf: Buffer, off: number, v: number): void {
  buf[off] = (buf[off] & 0x1f) | ((v & 7) << 5);
}
export function setEtherType(buf: Buffer, off: number, v: number): void {
  buf[off + ETHERTYPE] = v >>> 8;
  buf[off + ETHERTYPE + 1] = v & 0xff;
}

export interface VlanRepr {
  pcp: number;
  dei: number;
  vid: number;
  etherType: number;
}
export function emit(r: VlanRepr, buf: Buffer, off: number): number {
  const t = ((r.pcp & 7) << 13) | ((r.dei & 1) << 12) | (r.vid & VID_MASK);
  buf[off] = t >>> 8;
  buf[off + 1] = t & 0xff;
  setEtherType(buf, off, r.etherType);
  return TAG_LEN;
}
