// Runs inside a test namespace: creates a TUN device with the addon, routes
// a /24 behind it, sends UDP datagrams there from a dgram socket, reads them
// with readBatch (polled), rewrites each into a reply in place (addresses and
// ports swapped, new payload, checksums recomputed), writes the batch back
// and checks the replies reach the socket.
import dgram from 'node:dgram';
import { Batch, Verdict } from '../../src/io/batch.js';
import { Tun } from '../../src/io/tun.js';
import { arg, ip, ipv4HeaderChecksum, out, udp4Checksum, waitFor } from './live-util.js';

interface Arg { name: string; local: string; prefix: number; remote: string; route: string; port: number; payloads: string[]; multiQueue: boolean }
const a = arg<Arg>();

const tun = new Tun(a.name, { multiQueue: a.multiQueue });
ip('addr', 'add', `${a.local}/${a.prefix}`, 'dev', tun.name);
ip('link', 'set', tun.name, 'up');
ip('route', 'add', a.route, 'dev', tun.name);

const batch = new Batch(32, 1 << 20);
interface Got { len: number; version: number; proto: number; dport: number; payload: string; csumOk: boolean }
const got: Got[] = [];
let callbacks = 0;
const replies: { from: string; port: number; msg: string }[] = [];
let written = 0;

const sock = dgram.createSocket('udp4');
sock.on('message', (msg, rinfo) => replies.push({ from: rinfo.address, port: rinfo.port, msg: msg.toString() }));
await new Promise<void>((r) => sock.bind(0, a.local, () => r()));

tun.start(() => {
  callbacks++;
  const n = tun.recv(batch);
  const buf = batch.arena;
  for (let i = 0; i < n; i++) {
    const o = batch.off[i];
    const version = buf[o] >> 4;
    const proto = buf[o + 9];
    batch.verdict[i] = Verdict.DROP;
    if (version !== 4 || proto !== 17) continue;
    const ihl = (buf[o] & 0x0f) * 4;
    const l4 = o + ihl;
    const udpLen = buf.readUInt16BE(l4 + 4);
    const csumOk = buf.readUInt16BE(l4 + 6) === udp4Checksum(buf, o, l4, udpLen);
    const payload = buf.toString('latin1', l4 + 8, l4 + udpLen);
    got.push({ len: batch.capLen[i], version, proto, dport: buf.readUInt16BE(l4 + 2), payload, csumOk });
    // The reply: swap addresses and ports, upper-case the payload (same length).
    for (let k = 0; k < 4; k++) {
      const s = buf[o + 12 + k];
      buf[o + 12 + k] = buf[o + 16 + k];
      buf[o + 16 + k] = s;
    }
    const sp = buf.readUInt16BE(l4);
    buf.writeUInt16BE(buf.readUInt16BE(l4 + 2), l4);
    buf.writeUInt16BE(sp, l4 + 2);
    buf.write(payload.toUpperCase(), l4 + 8, 'latin1');
    buf.writeUInt16BE(udp4Checksum(buf, o, l4, udpLen), l4 + 6);
    buf.writeUInt16BE(ipv4HeaderChecksum(buf, o), o + 10);
    batch.verdict[i] = Verdict.FORWARD;
  }
  written += tun.transmit(batch);
});

for (const p of a.payloads) {
  await new Promise<void>((r, j) => sock.send(p, a.port, a.remote, (e) => (e ? j(e) : r())));
}
await waitFor(() => replies.length >= a.payloads.length, 3000);
tun.stop();
const stats = tun.stats();
sock.close();
tun.close();
out({ name: tun.name, got, replies, written, callbacks, stats });
