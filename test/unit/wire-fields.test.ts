// fields.ts on crafted packets: first-occurrence rules and formatting.
import t from 'tap';
import { fixture } from '../fixtures/packets.js';
import { FIELD_NAMES, fieldIndex, fieldValues, formatEpoch } from '../../src/wire/fields.js';

function fields(name: string): Record<string, string> {
  const fx = fixture(name);
  const out: string[] = [];
  fieldValues(fx.bytes, 0, fx.bytes.length, fx.bytes.length, fx.linkType, 1, 5, 3, out);
  return Object.fromEntries(FIELD_NAMES.map((n, k) => [n, out[k]]));
}

t.test('frame.time_epoch like tshark', async (t) => {
  t.equal(formatEpoch(1418145369, 999999999), '1418145369.999999999');
  t.equal(formatEpoch(1, 5), '1.000000005');
  t.equal(formatEpoch(1418145370, 1000000000), '1418145370.1000000000', 'out-of-range fraction printed as is');
  t.equal(formatEpoch(1418145370, 0x80000000), '-1418145370.2147483648', 'negative 32-bit fraction');
});

t.test('outer and first-occurrence fields', async (t) => {
  const a = fields('eth-ipv4-tcp-syn');
  t.match(a, { 'frame.number': '3', 'ip.src': '192.0.2.1', 'ip.dst': '198.51.100.2', 'ip.proto': '6', 'tcp.srcport': '40000',
    'tcp.flags.syn': '1', 'tcp.flags.ack': '0', 'ip.hdr_len': '20', 'ip.len': '40', 'udp.srcport': '' });
  const q = fields('eth-ipv4-icmp-unreach-quoting-udp');
  t.match(q, { 'ip.src': '203.0.113.3', 'icmp.type': '3', 'udp.srcport': '33434', 'udp.dstport': '53' }, 'ICMP error contributes quoted ports');
  const s = fields('6in4');
  t.match(s, { 'ip.proto': '41', 'ipv6.src': '2001:db8::1', 'tcp.dstport': '443' }, '6in4: ipv6.* from the inner header');
  const f = fields('4in6');
  t.match(f, { 'ipv6.nxt': '4', 'ip.src': '192.0.2.1', 'tcp.dstport': '80' }, '4in6: ip.* from the inner header');
  const g = fields('gre-v1-pptp-ack-ppp-ipv4');
  t.match(g, { 'ip.src': '192.0.2.1', 'udp.srcport': '1024' }, 'PPTP GRE inner UDP');
  const v = fields('qinq-88a8-8100-ipv4-tcp');
  t.equal(v['vlan.id'], '200', 'outermost VID');
  const l = fields('ipv4-lsrr-options-tcp');
  t.match(l, { 'ip.dst': '10.1.2.3', 'ip.cur_rt': '198.51.100.2' }, 'LSRR final destination');
  const tiny = fields('ipv4-tiny-first-fragment-tcp');
  t.match(tiny, { 'tcp.srcport': '1234', 'tcp.flags.syn': '', 'ip.flags.mf': '1' });
  const fr = fields('ipv6-hbh-routing-dstopts-frag-udp');
  t.match(fr, { 'ipv6.nxt': '0', 'ipv6.fraghdr.nxt': '17', 'ipv6.fraghdr.offset': '0', 'ipv6.fraghdr.more': '1', 'udp.length': '200' });
  const trunc = fields('truncated-ipv4-options');
  t.match(trunc, { 'ip.src': '192.0.2.1', 'ip.dst': '' }, 'options cut: no ip.dst, like tshark');
  t.equal(fieldIndex('ip.src'), FIELD_NAMES.indexOf('ip.src'));
});
