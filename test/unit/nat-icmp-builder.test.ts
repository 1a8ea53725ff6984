// Builders of originated packets: written into a caller's buffer at an
// offset, correct checksums, RFC 792 / RFC 1812 quoting, RFC 9293 resets.
import t from 'tap';
import {
  encodeIcmpError, encodeTimeExceeded, encodeFragNeeded, encodePortUnreachable, encodeDestUnreachable, encodeTcpRst, encodeTcpRstFor,
  icmpQuoteLength, icmpErrorLength, mayAnswerWithIcmpError, ICMP_ERROR_MAX_BYTES, TCP_RST_BYTES, UnreachCode,
} from '../../src/nat/icmp-builder.js';
import { checksumProblems, tcp4, udp4, echo4, icmpError4, ipv4Packet, ip, IN_A, REM_1, TCPF } from './nat-helpers.js';
import { Batch } from '../../src/io/batch.js';
import { Meta, LinkType, MetaFlag } from '../../src/wire/meta.js';
import { parseBatch } from '../../src/wire/parse.js';

function parse(pkt: Buffer) {
  const b = new Batch(1, 4096);
  b.push(pkt, 0, pkt.length, pkt.length, 0, 0, LinkType.RAW);
  const m = new Meta(4);
  parseBatch(b, m);
  return m;
}

t.test('ICMP errors are written at the offset, quote RFC 792 header + data, and verify', async (t) => {
  const offending = udp4(IN_A, REM_1, 5000, 53, Buffer.from('payload bytes'));
  const buf = Buffer.alloc(1000, 0xee);
  const q = icmpQuoteLength(offending, 0, offending.length);
  t.equal(q, offending.length, 'small datagram quoted whole');
  const n = encodeTimeExceeded(ip('192.0.2.254'), IN_A, offending, 0, q, buf, 100);
  t.equal(n, icmpErrorLength(q));
  t.equal(buf[99], 0xee, 'nothing written before the offset');
  t.equal(buf[100 + n], 0xee, 'nothing written after');
  const pkt = buf.subarray(100, 100 + n);
  t.same(checksumProblems(pkt, 'time exceeded'), []);
  const m = parse(pkt);
  t.same([m.l4Proto[0], m.icmpType[0], m.icmpCode[0], (m.flags[0] & MetaFlag.ICMP_ERROR) !== 0], [1, 11, 0, true]);
  t.same(pkt.subarray(28), offending, 'quote intact');
  t.equal(pkt[8], 64, 'TTL 64');

  const fn = encodeFragNeeded(1280, ip('192.0.2.254'), IN_A, offending, 0, 28, buf, 0);
  t.same([buf[20], buf[21], buf.readUInt16BE(24), buf.readUInt16BE(26)], [3, 4, 0, 1280], 'RFC 1191: next-hop MTU in the low 16 bits');
  t.same(checksumProblems(buf.subarray(0, fn)), []);
  const pu = encodePortUnreachable(REM_1, IN_A, offending, 0, 28, buf, 0);
  t.same([buf[20], buf[21], pu], [3, 3, 56]);
  encodeDestUnreachable(UnreachCode.HOST, REM_1, IN_A, offending, 0, 28, buf, 0);
  t.same([buf[20], buf[21]], [3, 1]);
  t.same(checksumProblems(buf.subarray(0, 56)), []);
  const odd = encodeIcmpError(12, 0, 0x14000000, REM_1, IN_A, offending, 0, 29, buf, 0);
  t.same(checksumProblems(buf.subarray(0, odd)), [], 'odd quote length');
});

t.test('RFC 1812 4.3.2.3: the error never exceeds 576 bytes; quote bounded by total length and capture', async (t) => {
  const big = udp4(IN_A, REM_1, 1, 2, Buffer.alloc(1400));
  t.equal(icmpErrorLength(icmpQuoteLength(big, 0, big.length)), ICMP_ERROR_MAX_BYTES);
  t.equal(icmpQuoteLength(big, 0, 100), 100, 'only what was captured');
  const padded = Buffer.concat([udp4(IN_A, REM_1, 1, 2, Buffer.alloc(4)), Buffer.alloc(10)]);
  t.equal(icmpQuoteLength(padded, 0, padded.length), 32, 'trailing padding not quoted');
  t.equal(icmpQuoteLength(big, 0, 10), 0, 'no IP header, nothing to quote');
});

t.test('RFC 1122 3.2.2: never answer errors, non-first fragments, multicast/broadcast/zero sources', async (t) => {
  const u = udp4(IN_A, REM_1, 1, 2);
  t.ok(mayAnswerWithIcmpError(u, 0, u.length));
  t.ok(mayAnswerWithIcmpError(echo4(IN_A, REM_1, 8, 1), 0, 44), 'an echo request may be answered');
  t.notOk(mayAnswerWithIcmpError(icmpError4(REM_1, IN_A, 3, 3, u), 0, 56), 'ICMP error');
  t.notOk(mayAnswerWithIcmpError(ipv4Packet(IN_A, REM_1, 17, Buffer.alloc(8), { fragOff: 10 }), 0, 28), 'non-first fragment');
  t.notOk(mayAnswerWithIcmpError(udp4(IN_A, ip('224.0.0.251'), 1, 2), 0, 40), 'multicast destination');
  t.notOk(mayAnswerWithIcmpError(udp4(IN_A, ip('255.255.255.255'), 1, 2), 0, 40), 'limited broadcast');
  t.notOk(mayAnswerWithIcmpError(udp4(0, REM_1, 68, 67), 0, 40), 'source 0.0.0.0');
  t.notOk(mayAnswerWithIcmpError(u, 0, 10), 'cut header');
});

t.test('TCP RST builder and RFC 9293 3.10.7.1 reset generation', async (t) => {
  const buf = Buffer.alloc(200);
  t.equal(encodeTcpRst(IN_A, REM_1, 1, 2, 5, 6, true, buf, 7), TCP_RST_BYTES);
  t.same(checksumProblems(buf.subarray(7, 47), 'rst'), []);
  // Segment with ACK: RST seq = SEG.ACK, no ACK flag.
  const seg = tcp4(REM_1, IN_A, 443, 5000, TCPF.ACK | TCPF.PSH, { seq: 100, ack: 7777, payload: Buffer.alloc(10) });
  t.equal(encodeTcpRstFor(seg, 0, seg.length, buf, 0), 40);
  t.same(checksumProblems(buf.subarray(0, 40)), []);
  t.same([buf.readUInt32BE(12), buf.readUInt32BE(16), buf.readUInt16BE(20), buf.readUInt16BE(22)], [IN_A, REM_1, 5000, 443], 'sent back to the segment\'s source');
  t.same([buf.readUInt32BE(24), buf[33]], [7777, TCPF.RST]);
  // SYN without ACK: seq 0, ACK = SEG.SEQ + SEG.LEN (SYN counts one).
  const syn = tcp4(REM_1, IN_A, 443, 5000, TCPF.SYN, { seq: 0xffffffff });
  encodeTcpRstFor(syn, 0, syn.length, buf, 0);
  t.same([buf.readUInt32BE(24), buf.readUInt32BE(28), buf[33]], [0, 0, TCPF.RST | TCPF.ACK], 'sequence wraps');
  t.same(checksumProblems(buf.subarray(0, 40)), []);
  t.equal(encodeTcpRstFor(tcp4(REM_1, IN_A, 1, 2, TCPF.RST), 0, 40, buf, 0), 0, 'never answer a RST');
  t.equal(encodeTcpRstFor(udp4(REM_1, IN_A, 1, 2), 0, 40, buf, 0), 0, 'not TCP');
  t.equal(encodeTcpRstFor(seg, 0, 30, buf, 0), 0, 'cut segment');
});
