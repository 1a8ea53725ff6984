// Per-header getters, setters and emit/parse round trips.
import t from 'tap';
import * as eth from '../../src/wire/ethernet.js';
import * as vlan from '../../src/wire/vlan.js';
import * as sll from '../../src/wire/sll.js';
import * as sll2 from '../../src/wire/sll2.js';
import * as nul from '../../src/wire/null.js';
import * as ipv4 from '../../src/wire/ipv4.js';
import * as ipv6 from '../../src/wire/ipv6.js';
import * as tcp from '../../src/wire/tcp.js';
import * as udp from '../../src/wire/udp.js';
import * as icmp from '../../src/wire/icmp.js';
import * as icmpv6 from '../../src/wire/icmpv6.js';
import * as gre from '../../src/wire/gre.js';
import { onesSum } from '../../src/wire/checksum.js';
import { EtherType } from '../../src/wire/ip-proto.js';

t.test('ethernet', async (t) => {
  const b = Buffer.alloc(20);
  const mac1 = Buffer.from('00112233445566', 'hex').subarray(0, 6);
  t.equal(eth.emit({ dst: mac1, src: Buffer.from('aabbccddeeff', 'hex'), etherType: 0x86dd }, b, 2), 14);
  t.equal(eth.etherType(b, 2), 0x86dd);
  eth.setEtherType(b, 2, 0x0800);
  t.equal(b.readUInt16BE(14), 0x0800);
  const out = Buffer.alloc(6);
  eth.copySrc(b, 2, out, 0);
  t.equal(out.toString('hex'), 'aabbccddeeff');
  t.ok(eth.checkLen(b, 6, 20));
  t.notOk(eth.checkLen(b, 7, 20));
  t.notOk(eth.checkLen(b, 0, 21), 'end beyond the buffer');
  t.ok(eth.isVlanTpid(0x88a8) && eth.isVlanTpid(0x9100) && !eth.isVlanTpid(0x0800));
});

t.test('vlan', async (t) => {
  const b = Buffer.alloc(4);
  vlan.emit({ pcp: 5, dei: 1, vid: 0xabc, etherType: 0x0800 }, b, 0);
  t.equal(vlan.vid(b, 0), 0xabc);
  t.equal(vlan.pcp(b, 0), 5);
  t.equal(vlan.dei(b, 0), 1);
  t.equal(vlan.etherType(b, 0), 0x0800);
  vlan.setVid(b, 0, 7);
  t.equal(vlan.vid(b, 0), 7);
  t.equal(vlan.pcp(b, 0), 5, 'setVid keeps PCP');
  t.notOk(vlan.checkLen(b, 1));
});

t.test('sll / sll2', async (t) => {
  const b = Buffer.alloc(20);
  sll.emit({ packetType: 4, hatype: 1, addr: Buffer.from('0a0b0c0d0e0f', 'hex'), protocol: 0x86dd }, b, 0);
  t.equal(sll.protocol(b, 0), 0x86dd);
  t.equal(sll.packetType(b, 0), 4);
  t.equal(sll.hatype(b, 0), 1);
  t.equal(sll.addrLen(b, 0), 6);
  sll.setProtocol(b, 0, 0x0800);
  t.equal(b.readUInt16BE(14), 0x0800);
  const c = Buffer.alloc(20);
  sll2.emit({ protocol: 0x0800, ifIndex: 0x01020304, hatype: 772, packetType: 0, addr: Buffer.alloc(6) }, c, 0);
  t.equal(sll2.protocol(c, 0), 0x0800);
  t.equal(sll2.ifIndex(c, 0), 0x01020304);
  t.equal(sll2.hatype(c, 0), 772);
  t.ok(sll2.checkLen(c, 0));
  t.notOk(sll.checkLen(Buffer.alloc(15), 0));
});

t.test('null / loop family in both byte orders', async (t) => {
  const b = Buffer.alloc(4);
  for (const fam of [2, 24, 28, 30]) {
    nul.emit({ family: fam, bigEndian: false }, b, 0);
    t.equal(nul.nullFamily(b, 0), fam, `LE ${fam}`);
    nul.emit({ family: fam, bigEndian: true }, b, 0);
    t.equal(nul.nullFamily(b, 0), fam, `BE ${fam}`);
    t.equal(nul.loopFamily(b, 0), fam);
  }
  t.equal(nul.familyEtherType(2), EtherType.IPV4);
  t.equal(nul.familyEtherType(28), EtherType.IPV6);
  t.equal(nul.familyEtherType(7), 0);
});

t.test('ipv4 emit/parse round trip, setters and checksum', async (t) => {
  const b = Buffer.alloc(80);
  const opts = Buffer.from([1, 1, 1]);
  const hl = ipv4.emit({ src: 0x0a000001, dst: 0xc0a80102, protocol: 17, payloadLen: 30, ttl: 9, ident: 0xbeef, df: true, mf: true, fragOffset: 100, options: opts }, b, 4);
  t.equal(hl, 24);
  t.equal(ipv4.version(b, 4), 4);
  t.equal(ipv4.headerLen(b, 4), 24);
  t.equal(ipv4.totalLength(b, 4), 54);
  t.equal(ipv4.ident(b, 4), 0xbeef);
  t.ok(ipv4.dontFragment(b, 4) && ipv4.moreFragments(b, 4));
  t.equal(ipv4.fragOffset(b, 4), 100);
  t.equal(ipv4.ttl(b, 4), 9);
  t.equal(ipv4.protocol(b, 4), 17);
  t.equal(ipv4.src(b, 4), 0x0a000001);
  t.equal(ipv4.dst(b, 4), 0xc0a80102);
  t.equal(onesSum(b, 4, 24), 0xffff, 'emitted checksum verifies');
  t.equal(ipv4.computeChecksum(b, 4), ipv4.headerChecksum(b, 4));
  ipv4.setDst(b, 4, 0xffffffff);
  t.equal(ipv4.dst(b, 4), 0xffffffff);
  ipv4.setTtl(b, 4, 1);
  ipv4.fillChecksum(b, 4);
  t.equal(onesSum(b, 4, 24), 0xffff);
  t.equal(ipv4.formatIpv4(ipv4.parseIpv4('203.0.113.255')), '203.0.113.255');
  t.throws(() => ipv4.parseIpv4('1.2.3'));
});

t.test('ipv6 fixed header, extension headers and RFC 5952 text', async (t) => {
  const b = Buffer.alloc(120);
  const src = ipv6.parseIpv6('2001:db8::1');
  const dst = ipv6.parseIpv6('fe80::1:2:3:4');
  ipv6.emit({ src, dst, nextHeader: 0, payloadLen: 24, hopLimit: 3, trafficClass: 0xab, flowLabel: 0x12345 }, b, 0);
  t.equal(ipv6.version(b, 0), 6);
  t.equal(ipv6.trafficClass(b, 0), 0xab);
  t.equal(ipv6.flowLabel(b, 0), 0x12345);
  t.equal(ipv6.payloadLength(b, 0), 24);
  t.equal(ipv6.nextHeader(b, 0), 0);
  t.equal(ipv6.hopLimit(b, 0), 3);
  t.equal(ipv6.formatIpv6(b, ipv6.SRC), '2001:db8::1');
  t.equal(ipv6.formatIpv6(b, ipv6.DST), 'fe80::1:2:3:4');
  t.equal(ipv6.srcWord(b, 0, 0), 0x20010db8);
  t.equal(ipv6.emitExt({ nextHeader: 44, len: 16 }, b, 40), 16);
  t.equal(ipv6.extLen(b, 40), 16);
  t.ok(ipv6.isGenericExt(0) && ipv6.isGenericExt(60) && !ipv6.isGenericExt(44));
  ipv6.emitFrag({ nextHeader: 17, offset: 0x1fff, more: true, ident: 0xfedcba98 }, b, 56);
  t.equal(ipv6.fragHdrOffset(b, 56), 0x1fff);
  t.ok(ipv6.fragHdrMore(b, 56));
  t.equal(ipv6.fragHdrId(b, 56), 0xfedcba98);
  ipv6.emitAh({ nextHeader: 6, len: 24, spi: 1, seq: 2 }, b, 64);
  t.equal(ipv6.ahLen(b, 64), 24);
  const cases: Array<[string, string]> = [
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first longest run on ties
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero group is not compressed
    ['0:0:0:0:0:0:0:0', '::'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['fe80:0:0:0:0:0:0:0', 'fe80::'],
    ['2001:DB8:0:0:0:0:2:1', '2001:db8::2:1'],
  ];
  for (const [in_, want] of cases) t.equal(ipv6.formatIpv6(ipv6.parseIpv6(in_), 0), want, in_);
  t.equal(ipv6.parseIpv6('::ffff:192.0.2.1').toString('hex'), '00000000000000000000ffffc0000201');
});

t.test('tcp', async (t) => {
  const b = Buffer.alloc(60);
  const n = tcp.emit({ srcPort: 1, dstPort: 65535, seq: 0xffffffff, ack: 5, flags: 0x1ff, window: 77, options: Buffer.from([2, 4, 5, 0xb4]) }, b, 0);
  t.equal(n, 24);
  t.equal(tcp.srcPort(b, 0), 1);
  t.equal(tcp.dstPort(b, 0), 65535);
  t.equal(tcp.seq(b, 0), 0xffffffff);
  t.equal(tcp.ack(b, 0), 5);
  t.equal(tcp.headerLen(b, 0), 24);
  t.equal(tcp.flags(b, 0), 0x1ff, 'nine flag bits incl. NS');
  t.equal(tcp.window(b, 0), 77);
  tcp.setFlags(b, 0, tcp.TcpFlag.SYN | tcp.TcpFlag.ACK);
  t.equal(tcp.flags(b, 0), 0x12);
  t.equal(tcp.headerLen(b, 0), 24, 'setFlags keeps the data offset');
  tcp.setDstPort(b, 0, 443);
  t.equal(tcp.dstPort(b, 0), 443);
  // Checksum with pseudo-header then verify.
  tcp.setTcpChecksum(b, 0, 0);
  const c = tcp.checksum4(b, 0, 24, 0x0a000001, 0x0a000002);
  tcp.setTcpChecksum(b, 0, c);
  t.equal(tcp.checksum4(b, 0, 24, 0x0a000001, 0x0a000002), 0, 'verifies to zero');
});

t.test('udp', async (t) => {
  const b = Buffer.alloc(20);
  udp.emit({ srcPort: 53, dstPort: 4789, payloadLen: 12 }, b, 0);
  t.equal(udp.srcPort(b, 0), 53);
  t.equal(udp.dstPort(b, 0), 4789);
  t.equal(udp.length(b, 0), 20);
  udp.setLength(b, 0, 9);
  t.equal(udp.length(b, 0), 9);
  udp.setLength(b, 0, 20);
  const c = udp.checksum4(b, 0, 20, 1, 2);
  t.not(c, 0, 'zero is sent as 0xffff');
  udp.setUdpChecksum(b, 0, c);
  t.ok(udp.checksum4(b, 0, 20, 1, 2) === 0xffff, 'verifies (all ones after the zero rule)');
});

t.test('icmp / icmpv6', async (t) => {
  const b = Buffer.alloc(16);
  icmp.emit({ type: 8, code: 0, rest: 0x00010002 }, b, 0);
  t.equal(icmp.type(b, 0), 8);
  t.equal(icmp.ident(b, 0), 1);
  t.equal(icmp.seq(b, 0), 2);
  icmp.fillChecksum(b, 0, 16);
  t.equal(onesSum(b, 0, 16), 0xffff);
  t.ok(icmp.isError(3) && icmp.isError(11) && !icmp.isError(8) && !icmp.isError(0));
  t.ok(icmpv6.isError(1) && icmpv6.isError(4) && !icmpv6.isError(128) && !icmpv6.isError(0));
  icmpv6.emit({ type: 2, code: 0, rest: 1280 }, b, 0);
  t.equal(icmpv6.type(b, 0), 2);
  t.equal(icmpv6.quoteOffset(10), 18);
});

t.test('gre header lengths: v0 flags, RFC 1701 routing, PPTP v1', async (t) => {
  const b = Buffer.alloc(64);
  t.equal(gre.emit({ version: 0, protocol: 0x0800 }, b, 0), 4);
  t.equal(gre.headerLen(b, 0, 64), 4);
  t.equal(gre.emit({ version: 0, protocol: 0x86dd, checksum: 0, key: 9, seq: 1 }, b, 0), 16);
  t.equal(gre.headerLen(b, 0, 64), 16);
  t.equal(gre.key(b, 0), 9);
  t.equal(gre.headerLen(b, 0, 15), gre.GRE_TRUNCATED);
  t.equal(gre.emit({ version: 1, protocol: EtherType.PPP, key: 0x00100007, seq: 1, ack: 2 }, b, 0), 16);
  t.equal(gre.headerLen(b, 0, 64), 16);
  t.equal(gre.callId(b, 0), 7);
  // Routing present: checksum/offset word then SREs ending with AF 0, length 0.
  b.fill(0);
  b.writeUInt16BE(0x4000, 0);
  b.writeUInt16BE(0x0800, 2);
  b.writeUInt16BE(0x0800, 8); // SRE: AF IPv4, offset 0, length 8
  b[11] = 8;
  // terminating SRE at 20..23 is zero
  t.equal(gre.headerLen(b, 0, 64), 4 + 4 + 4 + 8 + 4);
  b.writeUInt16BE(0x0002, 0);
  t.equal(gre.headerLen(b, 0, 64), gre.GRE_BAD, 'version 2 is unknown');
  // PPP inside PPTP: full, compressed address/control, compressed protocol.
  const p = Buffer.from([0xff, 0x03, 0x00, 0x21, 0x21, 0x00, 0x57]);
  t.equal(gre.pppHeaderLen(p, 0, 7), 4);
  t.equal(gre.pppEtherType(gre.pppProtocol(p, 0, 4)), EtherType.IPV4);
  t.equal(gre.pppHeaderLen(p, 4, 7), 1);
  t.equal(gre.pppProtocol(p, 4, 1), 0x21);
  t.equal(gre.pppHeaderLen(p, 5, 7), 2);
  t.equal(gre.pppEtherType(gre.pppProtocol(p, 5, 2)), EtherType.IPV6);
  t.equal(gre.pppHeaderLen(p, 0, 3), 0, 'protocol cut off');
});
