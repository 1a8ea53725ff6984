// Internet checksum (RFC 1071) and its incremental update (RFC 1624).
// Sums are kept in a JS number (exact up to 2^53), so a 64 KiB packet cannot
// overflow before the final fold; nothing here allocates.

/**
 * One's-complement sum of `len` bytes at `off`, added to `initial`, folded to
 * 16 bits (not complemented). RFC 1071 4.1; an odd trailing byte is padded
 * with a zero low byte.
 */
export function onesSum(buf: Buffer, off: number, len: number, initial = 0): number {
  let sum = initial;
  const end = off + (len & ~1);
  let o = off;
  for (; o < end; o += 2) sum += (buf[o] << 8) | buf[o + 1];
  if (len & 1) sum += buf[o] << 8;
  return fold(sum);
}

/** Folds a wide one's-complement sum to 16 bits (end-around carry). */
export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 65536);
  return sum;
}

/** The checksum field value for the bytes (RFC 1071): complement of the folded sum. */
export function checksum(buf: Buffer, off: number, len: number, initial = 0): number {
  return ~onesSum(buf, off, len, initial) & 0xffff;
}

/** IPv4 pseudo-header sum (RFC 793 3.1 / RFC 768): src, dst, zero+protocol, length. */
export function pseudoSum4(src: number, dst: number, proto: number, len: number): number {
  return fold((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len);
}

/**
 * IPv6 pseudo-header sum (RFC 8200 8.1): the addresses are read in place
 * (srcOff/dstOff point at 16 bytes each), upper-layer length (32 bits) and next header.
 */
export function pseudoSum6(buf: Buffer, srcOff: number, dstOff: number, proto: number, len: number): number {
  let sum = (len >>> 16) + (len & 0xffff) + proto;
  for (let k = 0; k < 16; k += 2) {
    sum += ((buf[srcOff + k] << 8) | buf[srcOff + k + 1]) + ((buf[dstOff + k] << 8) | buf[dstOff + k + 1]);
  }
  return fold(sum);
}

/**
 * RFC 1624 eqn 3: HC' = ~(~HC + ~m + m') for one 16-bit word changing from
 * `oldWord` to `newWord`. Eqn 3 (not eqn 2) so a result of 0x0000 is never
 * produced from a non-zero sum of data.
 */
export function update16(hc: number, oldWord: number, newWord: number): number {
  return ~fold((~hc & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff)) & 0xffff;
}

/** RFC 1624 eqn 3 applied to a 32-bit field (an IPv4 address) as two words. */
export function update32(hc: number, oldVal: number, newVal: number): number {
  const s =
    (~hc & 0xffff) +
    (~(oldVal >>> 16) & 0xffff) + (~oldVal & 0xffff) +
    ((newVal >>> 16) & 0xffff) + (newVal & 0xffff);
  return ~fold(s) & 0xffff;
}

// ---- RFC 1624 with precomputed deltas (NAT and distributor rewrites) ----
// A rewrite of several fields sums their terms once (often on the control
// plane, when a mapping or target is set up) and applies the sum to every
// checksum that covers them.

/** RFC 1624 term for a 16-bit word changing from a to b: ~m + m' (unfolded). */
export function delta16(a: number, b: number): number {
  return (~a & 0xffff) + (b & 0xffff);
}

/** RFC 1624 term for a 32-bit field (an IPv4 address) changing from a to b, as two words (unfolded). */
export function delta32(a: number, b: number): number {
  return (~(a >>> 16) & 0xffff) + (~a & 0xffff) + (b >>> 16) + (b & 0xffff);
}

/**
 * fold() for sums below 2^32 (a few dozen 16-bit terms): two integer rounds
 * are exact there, without fold()'s division loop. For the hot path.
 */
export function foldSmall(sum: number): number {
  sum = (sum & 0xffff) + (sum >>> 16);
  return (sum & 0xffff) + (sum >>> 16);
}

/** RFC 1624 eqn 3 with a summed delta, in place: HC' = ~(~HC + sum(~m + m')). */
export function applyDelta(b: Buffer, o: number, delta: number): void {
  const hc = (b[o] << 8) | b[o + 1];
  const v = ~foldSmall((~hc & 0xffff) + delta) & 0xffff;
  b[o] = v >>> 8;
  b[o + 1] = v & 0xff;
}

/**
 * applyDelta for a UDP checksum over IPv4 (RFC 768): 0 means "no checksum"
 * and stays 0; a computed 0 is sent as 0xFFFF.
 */
export function applyDeltaUdp(b: Buffer, o: number, delta: number): void {
  const hc = (b[o] << 8) | b[o + 1];
  if (hc === 0) return;
  let v = ~foldSmall((~hc & 0xffff) + delta) & 0xffff;
  if (v === 0) v = 0xffff;
  b[o] = v >>> 8;
  b[o + 1] = v & 0xff;
}
