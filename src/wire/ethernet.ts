// Ethernet II header (IEEE 802.3 clause 3.2.6 with EtherType >= 0x0600).
import { EtherType } from './ip-proto.js';

export const DST = 0;
export const SRC = 6;
export const ETHERTYPE = 12;
export const HEADER_LEN = 14;
/** EtherType values below this are an 802.3 length field (LLC follows), not a type. */
export const MIN_ETHERTYPE = 0x0600;

/** True when a full header at `off` lies within `end` (captured end). */
export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}

export function etherType(buf: Buffer, off: number): number {
  return (buf[off + ETHERTYPE] << 8) | buf[off + ETHERTYPE + 1];
}
export function setEtherType(buf: Buffer, off: number, v: number): void {
  buf[off + ETHERTYPE] = v >>> 8;
  buf[off + ETHERTYPE + 1] = v & 0xff;
}
/** Copies the 6-byte MAC at `off+DST` into `out` at `outOff` (no allocation). */
export function copyDst(buf: Buffer, off: number, out: Buffer, outOff: number): void {
  buf.copy(out, outOff, off + DST, off + DST + 6);
}
export function copySrc(buf: Buffer, off: number, out: Buffer, outOff: number): void {
  buf.copy(out, outOff, off + SRC, off + SRC + 6);
}
export function setDst(buf: Buffer, off: number, mac: Buffer, macOff = 0): void {
  mac.copy(buf, off + DST, macOff, macOff + 6);
}
export function setSrc(buf: Buffer, off: number, mac: Buffer, macOff = 0): void {
  mac.copy(buf, off + SRC, macOff, macOff + 6);
}
export function isVlanTpid(t: number): boolean {
  return t === EtherType.VLAN || t === EtherType.QINQ || t === EtherType.QINQ_OLD;
}

/** Plain representation, for building packets in tests (never on the hot path). */
export interface EthernetRepr {
  dst: Buffer; // 6 bytes
  src: Buffer; // 6 bytes
  etherType: number;
}
export function emit(r: EthernetRepr, buf: Buffer, off: number): number {
  r.dst.copy(buf, off + DST, 0, 6);
  r.src.copy(buf, off + SRC, 0, 6);
  setEtherType(buf, off, r.etherType);
  return HEADER_LEN;
}
