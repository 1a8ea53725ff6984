// The fallback live source on the npm `cap` package (used when the addon is
// not built) must see real traffic too, copied into the batch arena.
import t from 'tap';
import { capAvailable } from '../../src/io/cap.js';
import { makeNs, nsSkipReason, runHelper, vethPair } from '../helpers/netns.js';

interface Result {
  seen: { capLen: number; origLen: number; linkType: number; proto: number; icmpType: number }[];
  stats: Record<string, number>;
  callbacks: number;
  linkType: number;
  linkTypeName: string;
}

// Skipped (with the reason printed) only when not root.
const skip = nsSkipReason() ?? false;
t.test('cap fallback source sees ICMP echo and UDP on a veth', { skip }, async (t) => {
  t.ok(capAvailable(), 'the cap package loads');
  const a = makeNs(t, 'ca');
  const b = makeNs(t, 'cb');
  vethPair(a, 'va', '198.18.0.1/24', b, 'vb', '198.18.0.2/24');
  const sizes = [20, 700];
  const pings = 3;
  const pingSize = 40;
  const r = await runHelper<Result>(a, 'native-cap.ts', { dev: 'va', local: '198.18.0.1', peer: '198.18.0.2', pings, pingSize, sizes, port: 6666 });
  t.equal(r.linkTypeName, 'ETHERNET', 'cap reports Ethernet');
  t.equal(r.linkType, 1, 'mapped to LINKTYPE_ETHERNET');
  const udp = r.seen.filter((s) => s.proto === 17);
  t.same(udp.map((s) => s.capLen), sizes.map((s) => 14 + 20 + 8 + s), 'UDP datagrams, whole');
  t.equal(r.seen.filter((s) => s.proto === 1 && s.icmpType === 8).length, pings, 'echo requests');
  t.equal(r.seen.filter((s) => s.proto === 1 && s.icmpType === 0).length, pings, 'echo replies');
  t.ok(r.seen.filter((s) => s.proto === 1 && (s.icmpType === 0 || s.icmpType === 8)).every((s) => s.capLen === 14 + 20 + 8 + pingSize), 'ICMP lengths');
  t.ok(r.seen.every((s) => s.origLen === s.capLen && s.linkType === 1), 'origLen and linkType set');
  t.equal(r.stats.rx_staging_full, 0, 'nothing dropped in staging');
  t.ok(r.callbacks >= 1 && r.callbacks <= r.seen.length, `notified per burst (${r.callbacks} callbacks for ${r.seen.length} packets)`);
});
