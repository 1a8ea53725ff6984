// Property tests over the parser (fast-check): random bytes never throw, and
// every truncation of every fixture stays inside the captured bytes.
import t from 'tap';
import fc from 'fast-check';
import { FIXTURES } from '../fixtures/packets.js';
import { parsePacket } from '../../src/wire/parse.js';
import { LinkType, Meta, MetaFlag } from '../../src/wire/meta.js';
import { PARSE_STATUS_COUNT } from '../../src/wire/status.js';
import { fieldValues } from '../../src/wire/fields.js';

const LINK_TYPES = [...Object.values(LinkType), 105, 12];

function snapshot(meta: Meta, i: number): number[] {
  return [meta.status[i], meta.flags[i], meta.etherType[i], meta.vlanId[i], meta.vlanDepth[i], meta.l3Off[i], meta.l4Off[i],
    meta.ipVersion[i], meta.l4Proto[i], meta.l4Len[i], meta.fragOff[i], meta.fragId[i], meta.src4[i], meta.dst4[i],
    meta.srcPort[i], meta.dstPort[i], meta.tcpFlags[i], meta.icmpType[i], meta.icmpCode[i], meta.innerKind[i],
    meta.innerOff[i], meta.innerEtherType[i]];
}

/** Offsets Meta marks as valid must lie within the captured bytes. */
function offsetsInside(meta: Meta, i: number, capLen: number): string {
  const f = meta.flags[i];
  if ((f & MetaFlag.L3) && meta.l3Off[i] >= capLen) return `l3Off ${meta.l3Off[i]} >= capLen ${capLen}`;
  if ((f & MetaFlag.L4) && meta.l4Off[i] >= capLen) return `l4Off ${meta.l4Off[i]} >= capLen ${capLen}`;
  if ((f & MetaFlag.PORTS) && meta.l4Off[i] + 4 > capLen) return `ports past capLen`;
  if (meta.innerKind[i] !== 0 && meta.innerOff[i] >= capLen) return `innerOff ${meta.innerOff[i]} >= capLen ${capLen}`;
  if (meta.status[i] >= PARSE_STATUS_COUNT) return `status ${meta.status[i]} out of range`;
  return '';
}

t.test('random bytes on every link type never throw and stay in bounds', async (t) => {
  const meta = new Meta(1);
  const out: string[] = [];
  fc.assert(
    fc.property(fc.constantFrom(...LINK_TYPES), fc.uint8Array({ maxLength: 200 }), (lt, bytes) => {
      const buf = Buffer.from(bytes);
      parsePacket(buf, 0, buf.length, lt, meta, 0);
      fieldValues(buf, 0, buf.length, buf.length, lt, 0, 0, 1, out);
      return offsetsInside(meta, 0, buf.length) === '';
    }),
    { numRuns: 3000 },
  );
  t.pass('3000 random packets');
});

t.test('mutated fixtures (random byte flips) never throw', async (t) => {
  const meta = new Meta(1);
  const out: string[] = [];
  fc.assert(
    fc.property(fc.nat(FIXTURES.length - 1), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), (k, flips) => {
      const fx = FIXTURES[k];
      const buf = Buffer.from(fx.bytes);
      for (const [pos, v] of flips) if (buf.length) buf[pos % buf.length] = v;
      parsePacket(buf, 0, buf.length, fx.linkType, meta, 0);
      fieldValues(buf, 0, buf.length, buf.length, fx.linkType, 0, 0, 1, out);
      return offsetsInside(meta, 0, buf.length) === '';
    }),
    { numRuns: 3000 },
  );
  t.pass('3000 mutated fixtures');
});

t.test('every truncation of every fixture reads nothing past the captured length', async (t) => {
  const meta = new Meta(2);
  const POISON = 64;
  let cases = 0;
  const failures: string[] = [];
  const outA: string[] = [];
  const outB: string[] = [];
  for (const fx of FIXTURES) {
    for (let cap = 0; cap <= fx.bytes.length; cap++) {
      // Same captured bytes, followed by two different poison patterns: a
      // parser that reads past capLen sees different bytes and (for any
      // read that matters) produces a different Meta.
      const a = Buffer.alloc(3 + cap + POISON, 0x00);
      const b = Buffer.alloc(3 + cap + POISON, 0xff);
      fx.bytes.copy(a, 3, 0, cap);
      fx.bytes.copy(b, 3, 0, cap);
      // Poison with the fixture's own continuation too, which is what an overread would most plausibly hit.
      fx.bytes.copy(b, 3 + cap, cap);
      parsePacket(a, 3, cap, fx.linkType, meta, 0);
      parsePacket(b, 3, cap, fx.linkType, meta, 1);
      const sa = snapshot(meta, 0).join(',');
      const sb = snapshot(meta, 1).join(',');
      if (sa !== sb) failures.push(`${fx.name} cap ${cap}: meta differs with poison (${sa} vs ${sb})`);
      const bad = offsetsInside(meta, 0, cap);
      if (bad) failures.push(`${fx.name} cap ${cap}: ${bad}`);
      fieldValues(a, 3, cap, fx.bytes.length, fx.linkType, 0, 0, 1, outA);
      fieldValues(b, 3, cap, fx.bytes.length, fx.linkType, 0, 0, 1, outB);
      if (outA.join(',') !== outB.join(',')) failures.push(`${fx.name} cap ${cap}: fields differ with poison`);
      cases++;
    }
  }
  t.same(failures, [], `${cases} truncations`);
  t.ok(cases > 2000);
});

t.test('a truncated fixture keeps the fields parsed before the cut', async (t) => {
  const meta = new Meta(1);
  const full = new Meta(1);
  for (const fx of FIXTURES) {
    parsePacket(fx.bytes, 0, fx.bytes.length, fx.linkType, full, 0);
    if (!(full.flags[0] & MetaFlag.L3)) continue;
    const cutAt = full.l3Off[0] + (full.ipVersion[0] === 6 ? 40 : 20);
    if (cutAt >= fx.bytes.length) continue;
    parsePacket(fx.bytes, 0, cutAt, fx.linkType, meta, 0);
    t.equal(meta.src4[0], full.src4[0], `${fx.name}: src4 survives a cut after the IP header`);
    t.equal(meta.l3Off[0], full.l3Off[0], `${fx.name}: l3Off survives`);
    t.equal(meta.vlanId[0], full.vlanId[0], `${fx.name}: vlanId survives`);
  }
});

// parseBatch has a fast loop for the common shapes and hands everything else
// to the general path (parsePacket's code). Both must give the same Meta, and
// the fast loop must not read past capLen either: every truncation and random
// mutation of every fixture, packed into batches between poison bytes, is
// parsed by parseBatch and compared with parsePacket on a clean copy.
t.test('parseBatch equals parsePacket on every truncation and on mutated fixtures, poison after capLen', async (t) => {
  const { Batch } = await import('../../src/io/batch.js');
  const { parseBatch } = await import('../../src/wire/parse.js');
  const cases: { bytes: Buffer; linkType: number }[] = [];
  for (const fx of FIXTURES) for (let len = 0; len <= fx.bytes.length; len++) cases.push({ bytes: Buffer.from(fx.bytes.subarray(0, len)), linkType: fx.linkType });
  fc.assert(fc.property(fc.nat(FIXTURES.length - 1), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), (k, flips) => {
    const buf = Buffer.from(FIXTURES[k].bytes);
    for (const [pos, v] of flips) if (buf.length) buf[pos % buf.length] = v;
    cases.push({ bytes: buf, linkType: FIXTURES[k].linkType });
    return true;
  }), { numRuns: 2000 });
  const single = new Meta(1);
  let mismatches = 0;
  const first: string[] = [];
  for (const poison of [0x00, 0xff, 0x45]) {
    for (let s = 0; s < cases.length; s += 200) {
      const chunk = cases.slice(s, s + 200);
      const b = new Batch(200, 200 * 1600);
      const meta = new Meta(200);
      b.arena.fill(poison);
      let at = 0;
      for (const c of chunk) {
        const i = b.count;
        c.bytes.copy(b.arena, at);
        b.off[i] = at; b.capLen[i] = c.bytes.length; b.origLen[i] = c.bytes.length; b.linkType[i] = c.linkType;
        b.count = i + 1;
        at += c.bytes.length + 64; // 64 poison bytes after every packet
      }
      parseBatch(b, meta);
      for (let i = 0; i < chunk.length; i++) {
        const clean = Buffer.from(chunk[i].bytes);
        parsePacket(clean, 0, clean.length, chunk[i].linkType, single, 0);
        const a = snapshot(meta, i).join(','), e = snapshot(single, 0).join(',');
        if (a !== e || offsetsInside(meta, i, chunk[i].bytes.length) !== '') {
          mismatches++;
          if (first.length < 5) first.push(`poison ${poison} case ${s + i} lt ${chunk[i].linkType} len ${chunk[i].bytes.length}: batch [${a}] single [${e}]`);
        }
      }
    }
  }
  t.equal(mismatches, 0, first.join('\n') || `${cases.length * 3} packets agree`);
});
