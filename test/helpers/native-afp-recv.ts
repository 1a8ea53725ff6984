// Runs inside a test namespace: receives through an AF_PACKET TPACKET_V3 ring
// (polled) until `count` frames of `etherType` (and `udpCount` UDP datagrams
// to `udpPort`) have arrived; reports counts, bytes, a hash of the frames in
// order, the per-packet checksum flags of the UDP datagrams and the stats.
import { createHash } from 'node:crypto';
import { Batch } from '../../src/io/batch.js';
import { AfPacket, PacketFlag } from '../../src/io/af-packet.js';
import type { AfPacketOptions } from '../../src/io/native.js';
import { arg, fold, out, sum16, udp4Checksum, waitFor } from './live-util.js';

interface Arg { dev: string; count: number; etherType: number; udpPort: number; udpCount: number; timeoutMs: number; opts: AfPacketOptions; batch: number; arena: number }
const a = arg<Arg>();
const afp = new AfPacket(a.dev, a.opts);
const batch = new Batch(a.batch, a.arena);
const flags = new Uint8Array(a.batch);
const hash = createHash('sha256');
let count = 0;
let bytes = 0;
let callbacks = 0;
let maxPerCallback = 0;
const lens: number[] = [];
interface Udp { len: number; flags: number; field: number; full: number; completed: number }
const udp: Udp[] = [];

afp.start(() => {
  callbacks++;
  const n = afp.recv(batch, flags);
  maxPerCallback = Math.max(maxPerCallback, n);
  const buf = batch.arena;
  for (let i = 0; i < n; i++) {
    const o = batch.off[i];
    const len = batch.capLen[i];
    const et = buf.readUInt16BE(o + 12);
    if (et === a.etherType) {
      count++;
      bytes += len;
      lens.push(len);
      hash.update(buf.subarray(o, o + len));
    } else if (et === 0x0800 && buf[o + 23] === 17) {
      const l3 = o + 14;
      const l4 = l3 + (buf[l3] & 0x0f) * 4;
      if (buf.readUInt16BE(l4 + 2) !== a.udpPort) continue;
      const udpLen = buf.readUInt16BE(l4 + 4);
      const field = buf.readUInt16BE(l4 + 6);
      // What a device finishing CHECKSUM_PARTIAL computes: the sum over the
      // segment with the field prefilled with the pseudo-header sum.
      const completed = ~fold(sum16(buf, l4, udpLen)) & 0xffff;
      udp.push({ len, flags: flags[i], field, full: udp4Checksum(buf, l3, l4, udpLen), completed });
    }
  }
});
process.stdout.write('READY\n');
await waitFor(() => count >= a.count && udp.length >= a.udpCount, a.timeoutMs);
afp.stop();
// Wait for late frames of ours (more than were sent would be a bug; IPv6
// neighbour discovery on the fresh link is not ours).
await new Promise((r) => setTimeout(r, 50));
let extra = 0;
for (let i = 0, n = afp.recv(batch, flags); i < n; i++) if (batch.arena.readUInt16BE(batch.off[i] + 12) === a.etherType) extra++;
const stats = afp.stats();
const features = afp.features();
afp.close();
out({ count, bytes, hash: hash.digest('hex'), lens, udp, stats, features, callbacks, maxPerCallback, extra, flagBits: PacketFlag });
