// libpcap live capture through the native addon, on a veth between two
// namespaces this test creates: real UDP datagrams (node dgram) and ICMP echo
// (hping3) must arrive with the right lengths, the BPF filter must keep out
// what it excludes, polling must deliver batches, and pcap_stats must count.
import t from 'tap';
import { makeNs, nsSkipReason, runHelper, vethPair } from '../helpers/netns.js';

interface Seen { capLen: number; origLen: number; linkType: number; dport: number; icmpType: number; port: number; tsSec: number }
interface Result {
  udp: Seen[];
  icmp: Seen[];
  stats: { udp: Record<string, number>; icmp: Record<string, number> };
  callbacks: number;
  maxPerCallback: number;
  now: number;
}

// Skipped (with the reason printed) only when not root.
const skip = nsSkipReason() ?? false;
t.test('pcap live capture on a veth sees real UDP and ICMP with correct lengths; the BPF filter works', { skip }, async (t) => {
  const a = makeNs(t, 'pa');
  const b = makeNs(t, 'pb');
  vethPair(a, 'va', '198.18.0.1/24', b, 'vb', '198.18.0.2/24');
  const sizes = [10, 200, 1000, 1400];
  const pings = 3;
  const pingSize = 56;
  const r = await runHelper<Result>(a, 'native-pcap.ts', {
    dev: 'va', local: '198.18.0.1', peer: '198.18.0.2', pings, pingSize, sizes, port: 5555, otherPort: 5556,
  });
  // Ethernet 14 + IPv4 20 + UDP 8 + payload (RFC 768), no VLAN on veth.
  t.same(r.udp.map((p) => p.capLen), sizes.map((s) => 14 + 20 + 8 + s), 'UDP frames captured whole, in order');
  t.same(r.udp.map((p) => p.origLen), sizes.map((s) => 14 + 20 + 8 + s), 'origLen = wire length');
  t.ok(r.udp.every((p) => p.dport === 5555), 'the filter `udp and dst port 5555` kept out port 5556');
  t.ok(r.udp.every((p) => p.linkType === 1 && p.port === 0), 'LINKTYPE_ETHERNET, port 0');
  t.ok(r.udp.every((p) => Math.abs(p.tsSec - r.now) < 30), 'kernel timestamps are recent wall-clock seconds');
  // Echo request (type 8) and reply (type 0), ICMP header 8 + data (RFC 792).
  t.equal(r.icmp.filter((p) => p.icmpType === 8).length, pings, `${pings} echo requests`);
  t.equal(r.icmp.filter((p) => p.icmpType === 0).length, pings, `${pings} echo replies`);
  t.ok(r.icmp.every((p) => p.capLen === 14 + 20 + 8 + pingSize), 'ICMP lengths');
  t.equal(r.stats.udp.ps_recv, sizes.length, 'pcap_stats ps_recv counts what passed the filter');
  t.equal(r.stats.udp.ps_drop, 0, 'no drops');
  t.equal(r.stats.udp.rx_packets, sizes.length, 'addon rx_packets');
  t.equal(r.stats.udp.rx_bytes, sizes.reduce((s, x) => s + 42 + x, 0), 'addon rx_bytes');
  t.equal(r.stats.icmp.ps_recv, 2 * pings, 'second handle counts its own filter');
  t.ok(r.callbacks >= 2 && r.callbacks <= sizes.length + 2 * pings, `poll callbacks per batch (${r.callbacks})`);
});

