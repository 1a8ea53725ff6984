// Throughput helper (not a test): mode 'tx' sends 64-byte frames with
// AfPacket.sendBatch as fast as the queue takes them for `seconds`; mode 'rx'
// drains the TPACKET_V3 ring (polled) and counts frames of `etherType`.
// Driven by native/bench/afpacket-veth.ts.
import { Batch, Verdict } from '../../src/io/batch.js';
import { AfPacket } from '../../src/io/af-packet.js';
import type { AfPacketOptions } from '../../src/io/native.js';
import { arg, macOf, out } from './live-util.js';

interface Arg { mode: 'tx' | 'rx'; dev: string; seconds: number; etherType: number; frame: number; opts: AfPacketOptions }
const a = arg<Arg>();
const afp = new AfPacket(a.dev, a.opts);

if (a.mode === 'tx') {
  const batch = new Batch(256, 256 * a.frame);
  const src = macOf(a.dev);
  for (let i = 0; i < batch.capacity; i++) {
    const o = i * a.frame;
    batch.arena.fill(0xff, o, o + 6);
    src.copy(batch.arena, o + 6);
    batch.arena.writeUInt16BE(a.etherType, o + 12);
    batch.arena.fill(i & 0xff, o + 14, o + a.frame);
    batch.off[i] = o;
    batch.capLen[i] = a.frame;
    batch.origLen[i] = a.frame;
    batch.verdict[i] = Verdict.FORWARD;
  }
  batch.count = batch.capacity;
  batch.used = batch.capacity * a.frame;
  let sent = 0;
  let calls = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(a.seconds * 1e9));
  // Synchronous loop: the transmit side has nothing else to do.
  for (;;) {
    for (let k = 0; k < 64; k++) {
      sent += afp.sendRange(batch, 0, batch.count);
      calls++;
    }
    if (process.hrtime.bigint() >= end) break;
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  out({ mode: 'tx', sent, calls, secs, pps: sent / secs, stats: afp.stats(), features: afp.features() });
  afp.close();
} else {
  const batch = new Batch(256, 256 * 2048);
  let rx = 0;
  let callbacks = 0;
  let first = 0n;
  let last = 0n;
  afp.start(() => {
    callbacks++;
    let n: number;
    // Drain everything the ring holds before returning to the loop.
    while ((n = afp.recv(batch)) > 0) {
      for (let i = 0; i < n; i++) if (batch.arena.readUInt16BE(batch.off[i] + 12) === a.etherType) rx++;
      const now = process.hrtime.bigint();
      if (first === 0n) first = now;
      last = now;
    }
  });
  process.stdout.write('READY\n');
  setTimeout(() => {
    afp.stop();
    const secs = Number(last - first) / 1e9;
    out({ mode: 'rx', rx, callbacks, secs, pps: secs > 0 ? rx / secs : 0, stats: afp.stats() });
    afp.close();
  }, a.seconds * 1000);
}
