// Runs inside a test namespace: libpcap live capture on `dev` through the
// addon while real traffic flows (hping3 echo requests, and UDP datagrams from a dgram
// socket to two ports, one of them excluded by the BPF filter).
import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { Batch } from '../../src/io/batch.js';
import { PcapLive } from '../../src/io/pcap-live.js';
import { arg, out, sleep, waitFor } from './live-util.js';

interface Arg { dev: string; local: string; peer: string; pings: number; pingSize: number; sizes: number[]; port: number; otherPort: number }
const a = arg<Arg>();

const udpCap = new PcapLive(a.dev, { filter: `udp and dst port ${a.port}`, immediate: true });
const icmpCap = new PcapLive(a.dev, { filter: 'icmp[icmptype] = icmp-echo or icmp[icmptype] = icmp-echoreply', immediate: true });
const udpBatch = new Batch(64, 1 << 20);
const icmpBatch = new Batch(64, 1 << 20);

interface Seen { capLen: number; origLen: number; linkType: number; dport: number; icmpType: number; port: number; tsSec: number }
const udp: Seen[] = [];
const icmp: Seen[] = [];
let callbacks = 0;
let maxPerCallback = 0;
function drain(cap: PcapLive, b: Batch, into: Seen[]): void {
  callbacks++;
  const n = cap.recv(b);
  maxPerCallback = Math.max(maxPerCallback, n);
  for (let i = 0; i < n; i++) {
    const o = b.off[i];
    const l4 = o + 14 + (b.arena[o + 14] & 0x0f) * 4;
    into.push({
      capLen: b.capLen[i], origLen: b.origLen[i], linkType: b.linkType[i], port: b.port[i], tsSec: b.tsSec[i],
      dport: b.arena.readUInt16BE(l4 + 2), icmpType: b.arena[l4],
    });
  }
}
udpCap.start(() => drain(udpCap, udpBatch, udp));
icmpCap.start(() => drain(icmpCap, icmpBatch, icmp));

const sock = dgram.createSocket('udp4');
await new Promise<void>((r) => sock.bind(0, a.local, () => r()));
for (const size of a.sizes) {
  for (const port of [a.port, a.otherPort]) {
    await new Promise<void>((r, j) => sock.send(Buffer.alloc(size, 0x61), port, a.peer, (e) => (e ? j(e) : r())));
  }
}
// hping3 (a Debian package of scripts/setup.sh) sends the echo requests; the peer's kernel answers.
const ping = spawnSync('hping3', ['--icmp', '-c', String(a.pings), '-i', 'u50000', '-d', String(a.pingSize), a.peer], { stdio: 'ignore' });
if (ping.error) throw ping.error;
await waitFor(() => udp.length >= a.sizes.length && icmp.length >= 2 * a.pings, 3000);
await sleep(100); // anything extra (a filter letting too much through) shows up too
udpCap.stop();
icmpCap.stop();
const stats = { udp: udpCap.stats(), icmp: icmpCap.stats() };
sock.close();
udpCap.close();
icmpCap.close();
out({ udp, icmp, stats, callbacks, maxPerCallback, linkType: 1, now: Date.now() / 1000 });
