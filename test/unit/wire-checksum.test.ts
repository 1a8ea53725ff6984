// RFC 1071 full checksum vs RFC 1624 incremental update, on random data.
import t from 'tap';
import fc from 'fast-check';
import { applyDelta, applyDeltaUdp, checksum, delta16, delta32, fold, foldSmall, onesSum, pseudoSum4, pseudoSum6, update16, update32 } from '../../src/wire/checksum.js';

t.test('RFC 1071 section 3 example', async (t) => {
  const b = Buffer.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
  t.equal(onesSum(b, 0, 8), 0xddf2);
  t.equal(checksum(b, 0, 8), ~0xddf2 & 0xffff);
  t.equal(onesSum(b, 1, 3), fold(0x01f2 + 0x0300), 'odd length pads a zero low byte');
  t.equal(onesSum(b, 0, 0, 0x1234), 0x1234, 'initial sum carried');
});

t.test('a buffer with its checksum inserted sums to 0xffff', async (t) => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 4, maxLength: 300 }), (u) => {
    const b = Buffer.from(u.length % 2 ? [...u, 0] : u);
    b[2] = 0; b[3] = 0;
    const c = checksum(b, 0, b.length);
    b.writeUInt16BE(c, 2);
    return onesSum(b, 0, b.length) === 0xffff || (c === 0xffff && onesSum(b, 0, b.length) === 0xffff);
  }), { numRuns: 500 });
});

t.test('update16 / update32 equal a full recomputation', async (t) => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 8, maxLength: 200 }), fc.nat(), fc.integer({ min: 0, max: 0xffff }), fc.nat({ max: 0xffffffff }),
    (u, at, w16, w32) => {
      const b = Buffer.from(u.length % 2 ? [...u, 0] : u);
      const hc = checksum(b, 0, b.length);
      const o16 = (at % (b.length >>> 1)) * 2;
      const old16 = b.readUInt16BE(o16);
      b.writeUInt16BE(w16, o16);
      const full16 = checksum(b, 0, b.length);
      const inc16 = update16(hc, old16, w16);
      // One's complement has two zeros: compare as sums (0x0000 and 0xffff are equivalent).
      const same = (x: number, y: number) => x === y || ((x === 0 || x === 0xffff) && (y === 0 || y === 0xffff));
      if (!same(full16, inc16)) return false;
      if (b.length < 4) return true;
      const o32 = (at % (b.length >>> 2)) * 4;
      const old32 = b.readUInt32BE(o32);
      b.writeUInt32BE(w32, o32);
      return same(checksum(b, 0, b.length), update32(full16, old32, w32));
    }), { numRuns: 1000 });
});

t.test('pseudo-header sums', async (t) => {
  // IPv4: 192.0.2.1 -> 198.51.100.2, TCP, length 20 computed by hand as words.
  const src = 0xc0000201, dst = 0xc6336402;
  t.equal(pseudoSum4(src, dst, 6, 20), fold(0xc000 + 0x0201 + 0xc633 + 0x6402 + 6 + 20));
  const b = Buffer.alloc(32);
  for (let k = 0; k < 32; k++) b[k] = k * 7;
  let want = 6 + 1000;
  for (let k = 0; k < 32; k += 2) want += b.readUInt16BE(k);
  t.equal(pseudoSum6(b, 0, 16, 6, 1000), fold(want));
  t.equal(pseudoSum6(b, 0, 16, 6, 0x12345), fold(want - 1000 + 0x1 + 0x2345), 'upper-layer length is 32 bits');
});

t.test('summed deltas (delta16/delta32 + applyDelta) equal a full recompute', async (t) => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 12, maxLength: 200 }).filter((a) => a.length % 2 === 0), fc.nat(), fc.nat(), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffff }),
    (bytes, i32, i16, w32, w16) => {
      const b = Buffer.from(bytes);
      // The checksum field sits in the first two bytes, covered as zero.
      b[0] = 0; b[1] = 0;
      b.writeUInt16BE(checksum(b, 0, b.length), 0);
      const o32 = 2 + (i32 % ((b.length - 2) >>> 3)) * 4;
      let o16 = 2 + (i16 % ((b.length - 2) >>> 1)) * 2;
      if (o16 >= o32 && o16 < o32 + 4) o16 = o32 === 2 ? o32 + 4 : 2;
      if (o16 + 2 > b.length) return true;
      const d = delta32(b.readUInt32BE(o32), w32) + delta16(b.readUInt16BE(o16), w16);
      b.writeUInt32BE(w32, o32);
      b.writeUInt16BE(w16, o16);
      applyDelta(b, 0, d);
      const got = b.readUInt16BE(0);
      b[0] = 0; b[1] = 0;
      const want = checksum(b, 0, b.length);
      // RFC 1624 eqn 3 never yields 0x0000 where the full sum gives 0xFFFF's twin.
      return got === want || (got === 0xffff && want === 0) || (got === 0 && want === 0xffff);
    }), { numRuns: 1000 });
  const u = Buffer.from([0x00, 0x00]);
  applyDeltaUdp(u, 0, delta16(0x1234, 0x4321));
  t.equal(u.readUInt16BE(0), 0, 'RFC 768: a zero UDP checksum (none) stays zero');
  t.equal(foldSmall(0xffff + 0xffff + 0x1234), fold(0xffff + 0xffff + 0x1234));
});
