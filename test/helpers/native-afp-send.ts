// Runs inside a test namespace: transmits `count` Ethernet frames of
// `etherType` (broadcast, sizes cycling from 60 to 1514 bytes, seeded
// content) with AfPacket.sendBatch, retrying what a full queue refused, then
// optionally UDP datagrams from a plain socket (checksum-offloaded by veth).
import { createHash } from 'node:crypto';
import dgram from 'node:dgram';
import { Batch, Verdict } from '../../src/io/batch.js';
import { AfPacket } from '../../src/io/af-packet.js';
import type { AfPacketOptions } from '../../src/io/native.js';
import { arg, macOf, out, sleep } from './live-util.js';

interface Arg { dev: string; count: number; etherType: number; opts: AfPacketOptions; udp?: { local: string; peer: string; port: number; sizes: number[] } }
const a = arg<Arg>();
const afp = new AfPacket(a.dev, a.opts);
const batch = new Batch(128, 128 * 1514);
const src = macOf(a.dev);
const hash = createHash('sha256');
let seed = 12345;
let sent = 0;
let bytes = 0;
let sendCalls = 0;
let built = 0;
while (built < a.count) {
  batch.clear();
  while (built < a.count && batch.count < batch.capacity) {
    const len = 60 + ((built * 97) % (1514 - 60 + 1));
    const o = batch.used;
    const buf = batch.arena;
    buf.fill(0xff, o, o + 6);
    src.copy(buf, o + 6);
    buf.writeUInt16BE(a.etherType, o + 12);
    buf.writeUInt32BE(built, o + 14);
    for (let k = 18; k < len; k++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      buf[o + k] = seed >>> 24;
    }
    batch.off[batch.count] = o;
    batch.capLen[batch.count] = len;
    batch.origLen[batch.count] = len;
    batch.verdict[batch.count] = Verdict.FORWARD;
    hash.update(buf.subarray(o, o + len));
    batch.used += len;
    batch.count++;
    built++;
  }
  // A full queue refuses the tail of a batch: mark what went as sent and retry the rest.
  let done = 0;
  while (done < batch.count) {
    sendCalls++;
    const n = afp.sendRange(batch, done, batch.count - done);
    for (let i = done; i < done + n; i++) bytes += batch.capLen[i];
    done += n;
    sent += n;
    if (done < batch.count) await sleep(1);
  }
}
if (a.udp) {
  const u = a.udp;
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, u.local, () => r()));
  for (const size of u.sizes) await new Promise<void>((r, j) => sock.send(Buffer.alloc(size, 0x5a), u.port, u.peer, (e) => (e ? j(e) : r())));
  sock.close();
}
const stats = afp.stats();
const features = afp.features();
afp.close();
out({ sent, bytes, hash: hash.digest('hex'), stats, features, sendCalls });
