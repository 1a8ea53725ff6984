// Addresses and prefixes for the guard, on the control plane only: parsing
// (with `ip-address`, DESIGN.md "The required packages"), canonical text, and
// a longest-prefix match over a short list. The data path never sees a
// string: it works on the words these functions produce (IPv4 as one u32 in
// word 3, IPv6 as four big-endian u32 words), as the flow table does.

import { Address4, Address6 } from 'ip-address';
import { formatIpv4 } from '../wire/ipv4.js';
import { formatIpv6Words } from '../wire/ipv6.js';

/** An address (len 32 / 128) or a prefix, as words with the host bits cleared. */
export interface Prefix {
  family: 4 | 6;
  /** Big-endian words; IPv4 uses word 3 only (words 0-2 are zero). Int32 bit patterns. */
  words: [number, number, number, number];
  len: number;
  /** Canonical text: dotted quad or RFC 5952 (ip-address's correctForm), with "/len" unless it is one address. */
  text: string;
}

/** Text of an address given by family and words. */
export function formatAddr(family: number, w0: number, w1: number, w2: number, w3: number): string {
  return family === 6 ? formatIpv6Words(w0, w1, w2, w3) : formatIpv4(w3);
}

/** Mask of the first `bits` (0..32) bits of a word, as an int32. */
export function wordMask(bits: number): number {
  return bits <= 0 ? 0 : bits >= 32 ? -1 : (~0 << (32 - bits)) | 0;
}

/** Clears the host bits of `words` for a prefix of `len` bits of a family. */
export function maskWords(family: number, words: ArrayLike<number>, len: number): [number, number, number, number] {
  if (family === 4) return [0, 0, 0, (words[3] & wordMask(len)) | 0];
  const out: [number, number, number, number] = [0, 0, 0, 0];
  for (let k = 0; k < 4; k++) out[k] = (words[k] & wordMask(len - 32 * k)) | 0;
  return out;
}

/**
 * Parses "198.18.7.9", "198.18.0.0/15", "fd00::1", "fd00::/8". A prefix with
 * host bits set is accepted and normalised (198.18.1.5/24 -> 198.18.1.0/24).
 * Returns null when the text is neither (zone ids and ranges are refused).
 */
export function parsePrefix(s: string): Prefix | null {
  if (typeof s !== 'string' || s.length === 0 || s.length > 64 || s.includes('%')) return null;
  const slash = s.indexOf('/');
  const lenText = slash >= 0 ? s.slice(slash + 1) : '';
  if (slash >= 0 && !/^\d{1,3}$/.test(lenText)) return null;
  if (!s.includes(':')) {
    if (!Address4.isValid(s)) return null;
    const a = new Address4(s);
    const len = slash >= 0 ? Number(lenText) : 32;
    if (len > 32) return null;
    const words = maskWords(4, [0, 0, 0, Number(a.bigInt()) | 0], len);
    return { family: 4, words, len, text: len === 32 ? formatIpv4(words[3]) : `${formatIpv4(words[3])}/${len}` };
  }
  if (!Address6.isValid(s)) return null;
  const a = new Address6(s);
  const len = slash >= 0 ? Number(lenText) : 128;
  if (len > 128) return null;
  const big = a.bigInt();
  const raw = [Number((big >> 96n) & 0xffffffffn) | 0, Number((big >> 64n) & 0xffffffffn) | 0, Number((big >> 32n) & 0xffffffffn) | 0, Number(big & 0xffffffffn) | 0];
  const words = maskWords(6, raw, len);
  const t = formatIpv6Words(words[0], words[1], words[2], words[3]);
  return { family: 6, words, len, text: len === 128 ? t : `${t}/${len}` };
}

/** Canonical text of an address or prefix, or null (for admin input). */
export function canonical(s: string): string | null {
  return parsePrefix(s.trim())?.text ?? null;
}

/** True when the address (family, words) lies inside `p`. */
export function contains(p: Prefix, family: number, words: ArrayLike<number>): boolean {
  if (p.family !== family) return false;
  const m = maskWords(family, words, p.len);
  return m[0] === p.words[0] && m[1] === p.words[1] && m[2] === p.words[2] && m[3] === p.words[3];
}

/**
 * Longest-prefix match over a short list (configuration prefixes, allow
 * list): the list is sorted longest first once, a lookup walks it. Control
 * plane only (a new address in the monitor, an admin request).
 */
export class PrefixList<T> {
  private readonly items: { p: Prefix; v: T }[] = [];

  add(p: Prefix, v: T): void {
    this.items.push({ p, v });
    this.items.sort((a, b) => b.p.len - a.p.len);
  }

  get size(): number {
    return this.items.length;
  }

  /** The value of the longest prefix holding the address, or undefined. */
  match(family: number, words: ArrayLike<number>): T | undefined {
    for (const it of this.items) if (contains(it.p, family, words)) return it.v;
    return undefined;
  }

  prefixes(): Prefix[] {
    return this.items.map((x) => x.p);
  }
}
