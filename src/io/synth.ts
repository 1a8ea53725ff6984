// Synthetic traffic: a deterministic, realistic packet mix for the demo, the
// benchmarks and the large-file tests. Flows live in 198.18.0.0/15 (IPv4)
// and fd00::/8 (IPv6), the benchmark ranges, so a generated capture never
// names a real host.
//
// Mix per flow (drawn once per flow from a seeded PRNG): IPv4 or IPv6, TCP,
// UDP or ICMP echo, optional 802.1Q tag, and for UDP an occasional datagram
// sent as two IP fragments. TCP flows follow a handshake (SYN, SYN-ACK, ACK),
// then data both ways, and end with FIN when their packet budget runs out.
//
// The source is a PacketSource like a file or a live port: it writes packets
// straight into the batch arena. Each packet is built from a per-kind template
// with a few patched fields and real checksums.

import type { Batch, PacketSource } from './batch.js';
import { Verdict } from './batch.js';

export interface SynthOptions {
  /** Total packets to produce. */
  packets: number;
  /** Concurrent flows the packets are spread over. */
  flows?: number;
  seed?: number;
  /** Shares of the mix, each 0..1. */
  ipv6Share?: number;
  vlanShare?: number;
  udpShare?: number;
  icmpShare?: number;
  /** Share of UDP datagrams sent as two fragments. */
  fragShare?: number;
  /** Payload bytes per data packet (0..1400). */
  payload?: number;
  /** Start time, seconds since the epoch. */
  startSec?: number;
  /** Packets per second of generated time (spacing of timestamps). */
  rate?: number;
}

const K_TCP = 0, K_UDP = 1, K_ICMP = 2;

function xorshift32(x: number): number {
  x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
  return x >>> 0;
}

/** Ones' complement sum (RFC 1071), folded, not inverted. */
function sum16(buf: Buffer, off: number, len: number, acc: number): number {
  const end = off + (len & ~1);
  for (let o = off; o < end; o += 2) acc += (buf[o] << 8) | buf[o + 1];
  if (len & 1) acc += buf[off + len - 1] << 8;
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  return acc;
}

export class SyntheticSource implements PacketSource {
  readonly total: number;
  readonly flows: number;
  private produced = 0;
  private bytes = 0;
  private readonly payload: number;
  private readonly startSec: number;
  private readonly stepNs: number;
  private rng: number;
  // Per-flow attributes, drawn once.
  private readonly fKind: Uint8Array;
  private readonly fV6: Uint8Array;
  private readonly fVlan: Uint16Array;
  private readonly fSeq: Uint32Array;
  /** A fragment train in progress: the second fragment of flow pendingFrag is due next. */
  private pendingFrag = -1;
  private ipId = 1;
  private readonly fragShare: number;

  constructor(opts: SynthOptions) {
    this.total = opts.packets;
    this.flows = Math.max(1, opts.flows ?? 10_000);
    this.payload = Math.min(1400, Math.max(0, opts.payload ?? 64));
    this.startSec = opts.startSec ?? 1_767_225_600; // 2026-01-01T00:00:00Z
    this.stepNs = Math.max(1, Math.round(1e9 / (opts.rate ?? 1_000_000)));
    this.fragShare = opts.fragShare ?? 0.02;
    this.rng = (opts.seed ?? 0x9e3779b9) >>> 0 || 1;
    const n = this.flows;
    this.fKind = new Uint8Array(n);
    this.fV6 = new Uint8Array(n);
    this.fVlan = new Uint16Array(n);
    this.fSeq = new Uint32Array(n);
    const v6 = opts.ipv6Share ?? 0.3, vlan = opts.vlanShare ?? 0.1;
    const udp = opts.udpShare ?? 0.3, icmp = opts.icmpShare ?? 0.1;
    for (let f = 0; f < n; f++) {
      const r = this.rand();
      this.fKind[f] = r < icmp ? K_ICMP : r < icmp + udp ? K_UDP : K_TCP;
      this.fV6[f] = this.rand() < v6 ? 1 : 0;
      this.fVlan[f] = this.rand() < vlan ? 1 + (f % 4094) : 0;
    }
  }

  private rand(): number {
    this.rng = xorshift32(this.rng);
    return this.rng / 4294967296;
  }

  recv(batch: Batch): number {
    batch.clear();
    while (this.produced < this.total && batch.count < batch.capacity) {
      if (batch.free() < 1600) break;
      this.emitOne(batch);
    }
    return batch.count;
  }

  stats(): Record<string, number> {
    return { packets: this.produced, bytes: this.bytes };
  }

  close(): void {}

  /** Writes the next packet of the mix into the batch. */
  private emitOne(batch: Batch): void {
    const i = batch.count;
    const at = batch.used;
    const buf = batch.arena;
    let f: number;
    let secondFrag = false;
    if (this.pendingFrag >= 0) {
      f = this.pendingFrag;
      secondFrag = true;
      this.pendingFrag = -1;
    } else {
      f = this.rng % this.flows;
      this.rng = xorshift32(this.rng);
    }
    const kind = this.fKind[f];
    const v6 = this.fV6[f] === 1;
    const vid = this.fVlan[f];
    const seq = secondFrag ? this.fSeq[f] - 1 : this.fSeq[f]++;
    // Direction: TCP handshake is client, server, client; afterwards alternate.
    const reply = (seq & 1) === 1;

    let o = at;
    // Ethernet: locally administered MACs derived from the flow.
    buf[o] = 0x02; buf[o + 1] = 0; buf.writeUInt32BE(reply ? f : f + 0x100000, o + 2);
    buf[o + 6] = 0x02; buf[o + 7] = 0; buf.writeUInt32BE(reply ? f + 0x100000 : f, o + 8);
    o += 12;
    if (vid !== 0) {
      buf[o] = 0x81; buf[o + 1] = 0x00; buf[o + 2] = vid >>> 8; buf[o + 3] = vid & 0xff;
      o += 4;
    }
    buf[o] = v6 ? 0x86 : 0x08; buf[o + 1] = v6 ? 0xdd : 0x00;
    o += 2;
    const l3 = o;

    // Transport header + payload size.
    let l4Len: number;
    let proto: number;
    let tcpFlags = 0x18; // PSH|ACK
    let dataLen = this.payload;
    if (kind === K_TCP) {
      proto = 6;
      const budget = 12 + (f % 20);
      if (seq === 0) { tcpFlags = 0x02; dataLen = 0; }
      else if (seq === 1) { tcpFlags = 0x12; dataLen = 0; }
      else if (seq === 2) { tcpFlags = 0x10; dataLen = 0; }
      else if (seq % budget === budget - 1) { tcpFlags = 0x11; dataLen = 0; }
      l4Len = 20 + dataLen;
    } else if (kind === K_UDP) {
      proto = 17;
      l4Len = 8 + dataLen;
    } else {
      proto = v6 ? 58 : 1;
      l4Len = 8 + dataLen;
    }
    // UDP over IPv4 or IPv6: occasionally split into two fragments.
    const fragment = kind === K_UDP && !secondFrag && dataLen >= 16 && this.rand() < this.fragShare;
    const firstFragBytes = 8 + ((dataLen >>> 1) & ~7); // a multiple of 8 bytes of the datagram

    const cs = 0xc612 + (f >>> 16), cl = f & 0xffff; // client 198.18.x.y
    const ss = 0xc613, sl = (f * 7) & 0xffff; // server 198.19.x.y
    const sport = 1024 + (f % 60000), dport = kind === K_UDP ? 9000 + (f % 3) : kind === K_TCP ? (f % 5 === 0 ? 80 : 443) : 0;

    let ipHdr: number;
    let fragOffBytes = 0, mf = 0, onWireL4 = l4Len;
    if (fragment) { mf = 1; onWireL4 = firstFragBytes; }
    if (secondFrag) { fragOffBytes = firstFragBytes; onWireL4 = l4Len - firstFragBytes; }
    const id = this.ipId = (this.ipId + 1) & 0xffff;
    const trainId = fragment || secondFrag ? (f * 2654435761) >>> 0 : id;

    if (!v6) {
      ipHdr = 20;
      buf[o] = 0x45; buf[o + 1] = 0;
      buf.writeUInt16BE(20 + onWireL4, o + 2);
      buf.writeUInt16BE(fragment || secondFrag ? trainId & 0xffff : id, o + 4);
      buf.writeUInt16BE((mf << 13) | (fragOffBytes >>> 3) | (fragment || secondFrag ? 0 : 0x4000), o + 6);
      buf[o + 8] = 64; buf[o + 9] = proto; buf[o + 10] = 0; buf[o + 11] = 0;
      const a = reply ? ss : cs, al = reply ? sl : cl, b = reply ? cs : ss, bl = reply ? cl : sl;
      buf.writeUInt16BE(a, o + 12); buf.writeUInt16BE(al, o + 14);
      buf.writeUInt16BE(b, o + 16); buf.writeUInt16BE(bl, o + 18);
      buf.writeUInt16BE(~sum16(buf, o, 20, 0) & 0xffff, o + 10);
    } else {
      const ext = fragment || secondFrag ? 8 : 0;
      ipHdr = 40 + ext;
      buf.writeUInt32BE(0x60000000 | (f & 0xfffff), o);
      buf.writeUInt16BE(ext + onWireL4, o + 4);
      buf[o + 6] = ext ? 44 : proto; buf[o + 7] = 64;
      const cOff = reply ? o + 24 : o + 8, sOff = reply ? o + 8 : o + 24;
      // fd00:18::<flow> (client) and fd00:19::<server>
      buf.fill(0, o + 8, o + 40);
      buf[cOff] = 0xfd; buf[cOff + 3] = 0x18; buf.writeUInt32BE(f, cOff + 12);
      buf[sOff] = 0xfd; buf[sOff + 3] = 0x19; buf.writeUInt32BE((f * 7) & 0xffff, sOff + 12);
      if (ext) {
        const x = o + 40;
        buf[x] = proto; buf[x + 1] = 0;
        buf.writeUInt16BE(fragOffBytes | mf, x + 2);
        buf.writeUInt32BE(trainId, x + 4);
      }
    }
    o += ipHdr;
    const l4 = o;
    if (secondFrag) {
      // The rest of the datagram: payload bytes only.
      buf.fill(0x5a, o, o + onWireL4);
      o += onWireL4;
    } else {
      if (kind === K_TCP) {
        buf.writeUInt16BE(reply ? dport : sport, o); buf.writeUInt16BE(reply ? sport : dport, o + 2);
        buf.writeUInt32BE((seq * 1000) >>> 0, o + 4); buf.writeUInt32BE(seq > 0 ? (seq * 999) >>> 0 : 0, o + 8);
        buf[o + 12] = 0x50; buf[o + 13] = tcpFlags; buf.writeUInt16BE(65535, o + 14);
        buf[o + 16] = 0; buf[o + 17] = 0; buf[o + 18] = 0; buf[o + 19] = 0;
        buf.fill(0x61, o + 20, o + 20 + dataLen);
      } else if (kind === K_UDP) {
        buf.writeUInt16BE(reply ? dport : sport, o); buf.writeUInt16BE(reply ? sport : dport, o + 2);
        buf.writeUInt16BE(l4Len, o + 4); buf[o + 6] = 0; buf[o + 7] = 0;
        buf.fill(0x5a, o + 8, o + 8 + dataLen);
      } else {
        buf[o] = v6 ? (reply ? 129 : 128) : (reply ? 0 : 8); buf[o + 1] = 0; buf[o + 2] = 0; buf[o + 3] = 0;
        buf.writeUInt16BE(f & 0xffff, o + 4); buf.writeUInt16BE(seq & 0xffff, o + 6);
        buf.fill(0x69, o + 8, o + 8 + dataLen);
      }
      // Transport checksum over the whole datagram (the second fragment's bytes are 0x5a too).
      const ckOff = kind === K_TCP ? 16 : kind === K_UDP ? 6 : 2;
      let acc = 0;
      if (kind !== K_ICMP || v6) {
        // Pseudo-header (RFC 793 / 768 / 8200 section 8.1).
        if (v6) { acc = sum16(buf, l3 + 8, 32, acc); acc += l4Len + proto; }
        else { acc = sum16(buf, l3 + 12, 8, acc); acc += proto + l4Len; }
      }
      acc = sum16(buf, l4, onWireL4, acc);
      if (fragment) {
        // Checksum covers the bytes of the second fragment too (all 0x5a).
        const rest = l4Len - onWireL4;
        for (let k = 0; k < rest; k += 2) acc += k + 1 < rest ? 0x5a5a : 0x5a00;
        while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
      }
      let ck = ~acc & 0xffff;
      if (ck === 0 && kind === K_UDP) ck = 0xffff; // RFC 768: zero means "no checksum"
      buf.writeUInt16BE(ck, l4 + ckOff);
      o += onWireL4;
    }
    if (fragment) this.pendingFrag = f;

    const len = o - at;
    const t = this.produced * this.stepNs;
    batch.off[i] = at;
    batch.capLen[i] = len;
    batch.origLen[i] = len;
    batch.tsSec[i] = this.startSec + Math.floor(t / 1e9);
    batch.tsNsec[i] = t % 1e9;
    batch.linkType[i] = 1;
    batch.port[i] = 0;
    batch.verdict[i] = Verdict.FORWARD;
    batch.used = o;
    batch.count = i + 1;
    this.produced++;
    this.bytes += len;
  }
}
