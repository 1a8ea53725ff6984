// AF_PACKET through the native addon, between two namespaces this test
// creates: frames sent with sendBatch (sendmmsg) on one veth end must come
// out of the TPACKET_V3 ring on the other end identical (count, bytes, hash
// of the frames in order); UDP from a local socket must carry the
// CSUM_NOT_READY flag (veth checksum offload) with a checksum that completes
// correctly; the kernel statistics must be readable.
import t from 'tap';
import { makeNs, nsSkipReason, startHelper, runHelper, vethPair } from '../helpers/netns.js';
import type { AfPacketOptions } from '../../src/io/native.js';

interface Recv {
  count: number;
  bytes: number;
  hash: string;
  lens: number[];
  udp: { len: number; flags: number; field: number; full: number; completed: number }[];
  stats: Record<string, number>;
  features: Record<string, unknown>;
  callbacks: number;
  maxPerCallback: number;
  extra: number;
  flagBits: { CSUM_NOT_READY: number; CSUM_VALID: number };
}
interface Sent { sent: number; bytes: number; hash: string; stats: Record<string, number>; features: Record<string, unknown>; sendCalls: number }

// Skipped (with the reason printed) only when not root.
const skip = nsSkipReason() ?? false;
const ETHERTYPE = 0x88b5; // IEEE 802 local experimental: nothing else on the link uses it

interface Case { name: string; count: number; recvOpts: AfPacketOptions; sendOpts: AfPacketOptions; batch: number; arena: number; udpSizes: number[] }
const cases: Case[] = [
  { name: 'default ring, 256-packet batches', count: 2000, recvOpts: {}, sendOpts: { rx: false }, batch: 256, arena: 256 * 2048, udpSizes: [100, 1000] },
  {
    name: 'small batches and arena (resume inside a block), fanout group, qdisc bypass on the sender',
    count: 1500,
    recvOpts: { ringBlocks: 64, blockSize: 65536, fanoutGroup: 7, fanoutMode: 'hash' },
    sendOpts: { qdiscBypass: true },
    batch: 7,
    arena: 8192,
    udpSizes: [],
  },
];

for (const c of cases) {
  t.test(`AF_PACKET veth to veth: ${c.name}`, { skip }, async (t) => {
    const a = makeNs(t, 'aa');
    const b = makeNs(t, 'ab');
    vethPair(a, 'va', '198.18.0.1/24', b, 'vb', '198.18.0.2/24');
    const rx = startHelper(b, 'native-afp-recv.ts', {
      dev: 'vb', count: c.count, etherType: ETHERTYPE, udpPort: 9999, udpCount: c.udpSizes.length, timeoutMs: 8000, opts: c.recvOpts, batch: c.batch, arena: c.arena,
    });
    t.teardown(() => {
      rx.child.kill('SIGKILL');
    });
    await rx.ready;
    const s = await runHelper<Sent>(a, 'native-afp-send.ts', {
      dev: 'va', count: c.count, etherType: ETHERTYPE, opts: c.sendOpts,
      udp: c.udpSizes.length ? { local: '198.18.0.1', peer: '198.18.0.2', port: 9999, sizes: c.udpSizes } : undefined,
    });
    const r = (await rx.result) as Recv;
    t.equal(s.sent, c.count, 'sendBatch sent every frame');
    t.equal(s.stats.tx_packets, c.count, 'tx_packets');
    t.equal(s.stats.tx_errors, 0, 'no tx errors');
    t.equal(r.count, c.count, 'the ring delivered every frame');
    t.equal(r.bytes, s.bytes, `bytes identical (${s.bytes})`);
    t.equal(r.hash, s.hash, 'frames identical and in order (sha256)');
    t.equal(r.extra, 0, 'nothing delivered twice');
    t.equal(r.stats.tp_drops, 0, 'PACKET_STATISTICS: no drops');
    t.ok(r.stats.tp_packets >= c.count, `PACKET_STATISTICS: tp_packets ${r.stats.tp_packets}`);
    t.ok(r.stats.rx_packets >= c.count && r.stats.rx_packets <= r.stats.tp_packets, 'rx_packets counts what was read of what the kernel queued');
    t.ok(r.callbacks < c.count / 2, `polled per batch, not per packet (${r.callbacks} callbacks, up to ${r.maxPerCallback} packets each)`);
    t.ok(r.maxPerCallback <= c.batch, 'a batch never exceeds its capacity');
    if (c.sendOpts.qdiscBypass) t.equal(s.features.qdiscBypass, true, 'PACKET_QDISC_BYPASS set');
    if (c.recvOpts.fanoutGroup) t.equal(r.features.fanout, true, 'PACKET_FANOUT joined');
    t.equal(r.udp.length, c.udpSizes.length, 'UDP datagrams from the socket seen');
    for (const u of r.udp) {
      // veth keeps CHECKSUM_PARTIAL: the field holds the pseudo-header sum.
      t.ok(u.flags & r.flagBits.CSUM_NOT_READY, `UDP ${u.len} B flagged CSUM_NOT_READY`);
      t.equal(u.completed, u.full, 'completing the partial checksum gives the RFC 768 checksum');
      t.not(u.field, u.full, 'the field itself is not the final checksum (must be completed before forwarding)');
    }
  });
}
