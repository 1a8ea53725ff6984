// TUN through the native addon, in a namespace this test creates: UDP sent
// by a real socket to an address routed behind the TUN is read with
// readBatch, turned into a reply in the batch arena and written back with
// writeBatch; the socket must receive the replies.
import t from 'tap';
import { makeNs, nsSkipReason, runHelper } from '../helpers/netns.js';

interface Result {
  name: string;
  got: { len: number; version: number; proto: number; dport: number; payload: string; csumOk: boolean }[];
  replies: { from: string; port: number; msg: string }[];
  written: number;
  callbacks: number;
  stats: Record<string, number>;
}

// Skipped (with the reason printed) only when not root or /dev/net/tun is missing.
const skip = nsSkipReason(true) ?? false;
for (const multiQueue of [false, true]) {
  t.test(`TUN (multiQueue ${multiQueue}): read UDP with readBatch, write a crafted reply back to the socket`, { skip }, async (t) => {
    const ns = makeNs(t, multiQueue ? 'tm' : 'ts');
    const payloads = ['hello', 'portcullis', 'x', 'a'.repeat(1200)];
    const r = await runHelper<Result>(ns, 'native-tun.ts', {
      name: 'pctun0', local: '198.18.5.1', prefix: 24, remote: '198.18.6.2', route: '198.18.6.0/24', port: 7777, payloads, multiQueue,
    });
    t.equal(r.name, 'pctun0', 'the device has the requested name');
    t.same(r.got.map((g) => g.payload), payloads, 'every datagram read from the TUN, in order');
    t.same(r.got.map((g) => g.len), payloads.map((p) => 20 + 8 + p.length), 'raw IPv4 packets (IFF_NO_PI: no prefix), whole');
    t.ok(r.got.every((g) => g.dport === 7777 && g.csumOk), 'destination port and a complete UDP checksum');
    t.equal(r.written, payloads.length, 'writeBatch wrote every FORWARD packet');
    t.same(r.replies.map((x) => x.msg), payloads.map((p) => p.toUpperCase()), 'the socket received the crafted replies');
    t.ok(r.replies.every((x) => x.from === '198.18.6.2' && x.port === 7777), 'from the address behind the TUN');
    t.equal(r.stats.tx_packets, payloads.length, 'tx_packets');
    t.equal(r.stats.tx_errors + r.stats.tx_full, 0, 'no tx errors');
    t.ok(r.stats.rx_packets >= payloads.length, 'rx_packets');
    t.ok(r.callbacks >= 1 && r.callbacks <= r.stats.rx_packets, 'one poll callback per batch');
  });
}
