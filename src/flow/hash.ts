// 32-bit key hashing for the flow and fragment tables: MurmurHash3 (x86_32)
// block mixing over u32 words with Math.imul, then its finaliser. The tables
// seed it per instance (random by default) so an outside sender cannot aim a
// flood of keys at one probe window without knowing the seed.

/** One MurmurHash3 block round: mixes word `k` into state `h` (int32 in, int32 out). */
export function mix32(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/**
 * MurmurHash3 finaliser (avalanche). Returns the 32 bits as a signed int32:
 * int32 values stay small integers in V8 (never a boxed heap number), so the
 * tables keep hashes and key words in Int32Arrays.
 */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

/** A random 32-bit seed, drawn once per table (never per packet). */
export function randomSeed(): number {
  const a = new Uint32Array(1);
  globalThis.crypto.getRandomValues(a);
  return a[0];
}

/** Big-endian 32 bits at `off` of `buf` (IPv6 address words) as an int32, without a view. */
export function readBE32(buf: Uint8Array, off: number): number {
  return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3];
}
