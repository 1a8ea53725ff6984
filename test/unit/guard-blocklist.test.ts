// The enforcement table (exact entries and prefixes of both families, longest
// match, allow-list exemption, expiry at build time) checked against a plain
// linear scan over random entries; and the address helpers against
// ip-address.
import t from 'tap';
import { Address4, Address6 } from 'ip-address';
import { AddrTable, Blocklist, ALLOW_EXEMPT } from '../../src/guard/blocklist.js';
import { parsePrefix, contains, canonical, type Prefix } from '../../src/guard/addr.js';
import { formatIpv6Words } from '../../src/wire/ipv6.js';
import type { BlockEntry } from '../../src/guard/bus.js';

let seed = 12345;
function rnd(): number {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return seed;
}

function entry(addr: string, until = 0): BlockEntry {
  return { addr, until, rule: 'manual', score: 0, nodes: [], offences: 1, at: 0 };
}

t.test('parsePrefix: canonical text, host bits cleared, bad input refused', async (t) => {
  t.equal(parsePrefix('198.18.1.5/24')!.text, '198.18.1.0/24');
  t.equal(parsePrefix('198.18.1.5')!.text, '198.18.1.5');
  t.equal(parsePrefix('198.18.1.5/32')!.text, '198.18.1.5');
  t.equal(parsePrefix('FD00:0:0::1')!.text, 'fd00::1');
  t.equal(parsePrefix('fd00::1:2/64')!.text, 'fd00::/64');
  t.equal(parsePrefix('0.0.0.0/0')!.text, '0.0.0.0/0');
  for (const bad of ['', '1.2.3', '1.2.3.4/33', '256.1.1.1', 'fd00::/129', 'fe80::1%eth0', '1.2.3.4/x', 'hello', '01.2.3.4']) t.equal(parsePrefix(bad), null, bad);
  t.equal(canonical(' 198.18.0.1 '), '198.18.0.1');
});

t.test('formatIpv6Words (the IPv6 text of the guard and the flow table) gives the same text as ip-address correctForm (RFC 5952)', async (t) => {
  const fixed = ['::', '::1', '1::', 'fd00::1', '2001:db8:0:0:1:0:0:1', '2001:0:0:1:0:0:0:1', '1:0:1:0:1:0:1:0', 'fd00:0:0:1::2', '::ffff:1.2.3.4'];
  const words = (a: Address6) => { const b = a.bigInt(); return [0, 1, 2, 3].map((k) => Number((b >> BigInt(96 - 32 * k)) & 0xffffffffn) | 0); };
  for (const s of fixed) {
    const a = new Address6(s);
    const w = words(a);
    t.equal(formatIpv6Words(w[0], w[1], w[2], w[3]), a.correctForm(), s);
  }
  let bad = 0;
  for (let i = 0; i < 2000; i++) {
    // Random groups, many of them zero so that runs of zeros are common.
    const g = Array.from({ length: 8 }, () => (rnd() & 3) === 0 ? rnd() & 0xffff : 0);
    const s = g.map((x) => x.toString(16)).join(':');
    const a = new Address6(s);
    const w = words(a);
    if (formatIpv6Words(w[0], w[1], w[2], w[3]) !== a.correctForm()) bad++;
  }
  t.equal(bad, 0, '2000 random addresses');
});

t.test('AddrTable: longest match over exact addresses and prefixes equals a linear scan', async (t) => {
  const prefixes: Prefix[] = [];
  for (let i = 0; i < 300; i++) {
    const a = (0xc6120000 | (rnd() & 0x1ffff)) >>> 0; // 198.18.0.0/15
    const len = [32, 32, 32, 24, 28, 16, 20][rnd() % 7];
    const p = parsePrefix(`${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}/${len}`)!;
    if (!prefixes.some((q) => q.text === p.text)) prefixes.push(p);
  }
  for (let i = 0; i < 100; i++) {
    const len = [128, 128, 64, 48, 120][rnd() % 5];
    const p = parsePrefix(`fd00:${(rnd() & 3).toString(16)}::${(rnd() & 0xff).toString(16)}/${len}`)!;
    if (!prefixes.some((q) => q.text === p.text)) prefixes.push(p);
  }
  const table = new AddrTable(prefixes.map((p, v) => ({ p, v })), 99);
  t.equal(table.size, prefixes.length);
  const scan = (family: number, words: number[]) => {
    let best = -1, bestLen = -1;
    prefixes.forEach((p, i) => { if (contains(p, family, words) && p.len > bestLen) { best = i; bestLen = p.len; } });
    return best;
  };
  let bad = 0, hits = 0;
  for (let i = 0; i < 20000; i++) {
    const a = (0xc6120000 | (rnd() & 0x1ffff)) | 0;
    const want = scan(4, [0, 0, 0, a]);
    if (want >= 0) hits++;
    if (table.lookup4(a) !== want) bad++;
  }
  for (let i = 0; i < 5000; i++) {
    const w = [0xfd000000 | (rnd() & 3), 0, 0, rnd() & 0x1ff];
    const want = scan(6, w);
    if (want >= 0) hits++;
    if (table.lookup6w(w[0] | 0, w[1], w[2], w[3]) !== want) bad++;
  }
  t.equal(bad, 0, `25000 lookups agree with the scan (${hits} hits)`);
  const buf = Buffer.alloc(16);
  buf.writeUInt32BE(0xfd000001, 0);
  buf.writeUInt32BE(5, 12);
  t.equal(table.lookup6(buf, 0), scan(6, [0xfd000001 | 0, 0, 0, 5]), 'lookup6 reads the address from a buffer');
});

t.test('Blocklist: expired entries are left out at build, per-entry drops survive a rebuild, allow-listed sources are exempt', async (t) => {
  const bl = new Blocklist();
  const now = 1_000_000;
  bl.rebuild([entry('198.18.1.1'), entry('198.18.1.2', now - 1), entry('198.18.2.0/24', now + 1000), entry('fd00::/16')], [parsePrefix('198.18.2.7')!, parsePrefix('fd00:1::/32')!], now);
  t.equal(bl.size, 3, 'the expired entry is not in the table');
  const ip = (s: string) => Number(new Address4(s).bigInt()) | 0;
  t.equal(bl.match4(ip('198.18.1.1')), 0);
  t.equal(bl.match4(ip('198.18.1.2')), -1);
  t.ok(bl.match4(ip('198.18.2.200')) >= 0);
  t.equal(bl.match4(ip('198.18.2.7')), ALLOW_EXEMPT);
  const b6 = Buffer.from(new Address6('fd00:2::5').toByteArray());
  t.ok(bl.match6(b6, 0) >= 0);
  const a6 = Buffer.from(new Address6('fd00:1::5').toByteArray());
  t.equal(bl.match6(a6, 0), ALLOW_EXEMPT);
  bl.match4(ip('198.18.1.1'));
  t.same(bl.list().map((e) => [e.addr, e.drops]), [['198.18.1.1', 2], ['198.18.2.0/24', 1], ['fd00::/16', 1]]);
  bl.rebuild([entry('198.18.1.1'), entry('198.18.9.9')], [], now);
  t.same(bl.list().map((e) => [e.addr, e.drops]), [['198.18.1.1', 2], ['198.18.9.9', 0]], 'counts carried over');
  t.same(bl.lengths(), { v4: [32], v6: [] }, 'exact entries only: one probe per lookup');
  bl.rebuild([], [], now);
  t.equal(bl.size, 0);
  t.equal(bl.match4(ip('198.18.1.1')), -1);
});
