// Runs inside a test namespace: the fallback live source on the `cap`
// package captures ICMP echo (hping3) and UDP (dgram) on `dev`; reports what
// recv() moved into the batch.
import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { Batch } from '../../src/io/batch.js';
import { CapSource } from '../../src/io/cap.js';
import { arg, out, sleep, waitFor } from './live-util.js';

interface Arg { dev: string; local: string; peer: string; pings: number; pingSize: number; sizes: number[]; port: number }
const a = arg<Arg>();
const src = new CapSource(a.dev, { filter: `icmp or (udp and dst port ${a.port})` });
const batch = new Batch(64, 1 << 20);
const seen: { capLen: number; origLen: number; linkType: number; proto: number; icmpType: number }[] = [];
let callbacks = 0;
src.start(() => {
  callbacks++;
  const n = src.recv(batch);
  for (let i = 0; i < n; i++) {
    const o = batch.off[i];
    const l4 = o + 14 + (batch.arena[o + 14] & 0x0f) * 4;
    seen.push({ capLen: batch.capLen[i], origLen: batch.origLen[i], linkType: batch.linkType[i], proto: batch.arena[o + 23], icmpType: batch.arena[l4] });
  }
});
// Let cap's first poll start: keep the GC busy too, so a capture buffer that
// was not kept referenced would be freed under it.
for (let i = 0; i < 20; i++) new Array(1e5).fill(i);
const sock = dgram.createSocket('udp4');
await new Promise<void>((r) => sock.bind(0, a.local, () => r()));
for (const size of a.sizes) await new Promise<void>((r, j) => sock.send(Buffer.alloc(size, 0x62), a.port, a.peer, (e) => (e ? j(e) : r())));
const ping = spawnSync('hping3', ['--icmp', '-c', String(a.pings), '-i', 'u50000', '-d', String(a.pingSize), a.peer], { stdio: 'ignore' });
if (ping.error) throw ping.error;
const want = a.sizes.length + 2 * a.pings;
await waitFor(() => seen.filter((s) => s.proto === 17 || s.icmpType === 0 || s.icmpType === 8).length >= want, 3000);
await sleep(50);
sock.close();
const stats = src.stats();
src.close();
out({ seen, stats, callbacks, linkType: src.linkTypeNum, linkTypeName: src.linkTypeName });
