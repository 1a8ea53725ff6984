// IPv4 header (RFC 791 3.1).
import { checksum } from './checksum.js';

export const VER_IHL = 0;
export const TOS = 1;
export const TOTAL_LEN = 2;
export const IDENT = 4;
export const FLAGS_FRAG = 6;
export const TTL = 8;
export const PROTOCOL = 9;
export const CHECKSUM = 10;
export const SRC = 12;
export const DST = 16;
export const HEADER_LEN = 20;
export const MAX_HEADER_LEN = 60;
export const FLAG_DF = 0x4000;
export const FLAG_MF = 0x2000;
export const FRAG_OFFSET_MASK = 0x1fff;
/** RFC 791 3.1 options: loose / strict source and record route. */
export const OPT_EOL = 0;
export const OPT_NOP = 1;
export const OPT_LSRR = 131;
export const OPT_SSRR = 137;

/** Fixed header present within `end`; IHL is checked separately (headerLen). */
export function checkLen(buf: Buffer, off: number, end: number = buf.length): boolean {
  return off >= 0 && off + HEADER_LEN <= end && end <= buf.length;
}

export function version(buf: Buffer, off: number): number {
  return buf[off] >>> 4;
}
export function ihl(buf: Buffer, off: number): number {
  return buf[off] & 0x0f;
}
/** Header length in bytes (IHL * 4). */
export function headerLen(buf: Buffer, off: number): number {
  return (buf[off] & 0x0f) << 2;
}
export function tos(buf: Buffer, off: number): number {
  return buf[off + TOS];
}
export function totalLength(buf: Buffer, off: number): number {
  return (buf[off + TOTAL_LEN] << 8) | buf[off + TOTAL_LEN + 1];
}
export function ident(buf: Buffer, off: number): number {
  return (buf[off + IDENT] << 8) | buf[off + IDENT + 1];
}
/** Flags and fragment offset word. */
export function fragField(buf: Buffer, off: number): number {
  return (buf[off + FLAGS_FRAG] << 8) | buf[off + FLAGS_FRAG + 1];
}
/** Fragment offset in 8-byte units (RFC 791). */
export function fragOffset(buf: Buffer, off: number): number {
  return fragField(buf, off) & FRAG_OFFSET_MASK;
}
export function moreFragments(buf: Buffer, off: number): boolean {
  return (buf[off + FLAGS_FRAG] & 0x20) !== 0;
}
export function dontFragment(buf: Buffer, off: number): boolean {
  return (buf[off + FLAGS_FRAG] & 0x40) !== 0;
}
export function ttl(buf: Buffer, off: number): number {
  return buf[off + TTL];
}
export function protocol(buf: Buffer, off: number): number {
  return buf[off + PROTOCOL];
}
export function headerChecksum(buf: Buffer, off: number): number {
  return (buf[off + CHECKSUM] << 8) | buf[off + CHECKSUM + 1];
}
export function src(buf: Buffer, off: number): number {
  return ((buf[off + SRC] << 24) | (buf[off + SRC + 1] << 16) | (buf[off + SRC + 2] << 8) | buf[off + SRC + 3]) >>> 0;
}
export function dst(buf: Buffer, off: number): number {
  return ((buf[off + DST] << 24) | (buf[off + DST + 1] << 16) | (buf[off + DST + 2] << 8) | buf[off + DST + 3]) >>> 0;
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
export function setTotalLength(buf: Buffer, off: number, v: number): void { put16(buf, off + TOTAL_LEN, v); }
export function setIdent(buf: Buffer, off: number, v: number): void { put16(buf, off + IDENT, v); }
export function setFragField(buf: Buffer, off: number, v: number): void { put16(buf, off + FLAGS_FRAG, v); }
export function setTtl(buf: Buffer, off: number, v: number): void { buf[off + TTL] = v; }
export function setProtocol(buf: Buffer, off: number, v: number): void { buf[off + PROTOCOL] = v; }
export function setHeaderChecksum(buf: Buffer, off: number, v: number): void { put16(buf, off + CHECKSUM, v); }
export function setSrc(buf: Buffer, off: number, v: number): void { put32(buf, off + SRC, v); }
export function setDst(buf: Buffer, off: number, v: number): void { put32(buf, off + DST, v); }

/** Header checksum computed over IHL*4 bytes with the checksum field taken as zero. */
export function computeChecksum(buf: Buffer, off: number): number {
  const hl = headerLen(buf, off);
  const saved = headerChecksum(buf, off);
  setHeaderChecksum(buf, off, 0);
  const c = checksum(buf, off, hl);
  setHeaderChecksum(buf, off, saved);
  return c;
}
/** Recomputes and stores the header checksum. */
export function fillChecksum(buf: Buffer, off: number): void {
  setHeaderChecksum(buf, off, 0);
  setHeaderChecksum(buf, off, checksum(buf, off, headerLen(buf, off)));
}

/** Dotted-quad from a u32 (off the hot path). */
export function formatIpv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 0xff}.${(v >>> 8) & 0xff}.${v & 0xff}`;
}
/** u32 from a dotted quad (tests and config only). */
export function parseIpv4(s: string): number {
  const p = s.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new Error(`bad IPv4 address: ${s}`);
  return ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
}

export interface Ipv4Repr {
  src: number;
  dst: number;
  protocol: number;
  /** Bytes after the header (options excluded); total length = header + payloadLen unless totalLength is given. */
  payloadLen: number;
  ttl?: number;
  ident?: number;
  df?: boolean;
  mf?: boolean;
  /** Fragment offset in 8-byte units. */
  fragOffset?: number;
  /** Raw option bytes (padded to a multiple of 4 by emit). */
  options?: Buffer;
  /** Overrides the computed total length (to build lying headers). */
  totalLength?: number;
  /** Overrides the IHL nibble (to build bad headers). */
  ihl?: number;
  version?: number;
}
/** Writes the header (and options), with a valid checksum; returns its length. */
export function emit(r: Ipv4Repr, buf: Buffer, off: number): number {
  const optLen = r.options ? (r.options.length + 3) & ~3 : 0;
  const hl = HEADER_LEN + optLen;
  buf.fill(0, off, off + hl);
  buf[off] = ((r.version ?? 4) << 4) | (r.ihl ?? hl >>> 2);
  put16(buf, off + TOTAL_LEN, r.totalLength ?? hl + r.payloadLen);
  put16(buf, off + IDENT, r.ident ?? 0);
  put16(buf, off + FLAGS_FRAG, (r.df ? FLAG_DF : 0) | (r.mf ? FLAG_MF : 0) | ((r.fragOffset ?? 0) & FRAG_OFFSET_MASK));
  buf[off + TTL] = r.ttl ?? 64;
  buf[off + PROTOCOL] = r.protocol;
  put32(buf, off + SRC, r.src);
  put32(buf, off + DST, r.dst);
  if (r.options) r.options.copy(buf, off + HEADER_LEN);
  if (((buf[off] & 0x0f) << 2) === hl) fillChecksum(buf, off);
  return hl;
}
