// Hand-built batches for the flow table tests: writes a minimal Ethernet + IP
// + transport header per packet into a Batch and fills Meta directly (these
// tests exercise the table, not the parser).

import { Batch } from '../../src/io/batch.js';
import { LinkType, Meta, MetaFlag } from '../../src/wire/meta.js';

export interface TestPkt {
  v?: 4 | 6;
  src: string;
  dst: string;
  proto: number;
  sport?: number;
  dport?: number;
  /** TCP flags (sets TCP_FLAGS). */
  tcp?: number;
  icmpType?: number;
  icmpId?: number;
  /** Packet time in seconds. */
  t: number;
  /** Wire length (default: the bytes written). */
  len?: number;
  /** Fragment: offset in 8-byte units, identification, more-fragments. */
  frag?: { off: number; id: number; mf: boolean };
  /** Transport bytes declared (fragment data length for fragments). */
  l4Len?: number;
  /** Drop PORTS/L4 (a cut header or tiny first fragment). */
  noPorts?: boolean;
  /** No L3 at all (a non-IP frame). */
  nonIp?: boolean;
}

export const TCP = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10 } as const;

export function v4(s: string): number {
  const p = s.split('.').map(Number);
  return ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
}

/** IPv6 text to 16 bytes (handles ::). */
export function v6bytes(s: string): Uint8Array {
  const out = new Uint8Array(16);
  const [head, tail] = s.includes('::') ? s.split('::') : [s, null];
  const hg = head ? head.split(':').filter((x) => x !== '') : [];
  const tg = tail ? tail.split(':').filter((x) => x !== '') : [];
  const groups = tail === null ? hg : [...hg, ...new Array(8 - hg.length - tg.length).fill('0'), ...tg];
  groups.forEach((g, i) => {
    const n = parseInt(g, 16);
    out[2 * i] = n >> 8;
    out[2 * i + 1] = n & 255;
  });
  return out;
}

/** IPv6 text to 4 big-endian u32 words. */
export function v6words(s: string): number[] {
  const b = v6bytes(s);
  const w: number[] = [];
  for (let i = 0; i < 4; i++) w.push(((b[4 * i] << 24) | (b[4 * i + 1] << 16) | (b[4 * i + 2] << 8) | b[4 * i + 3]) >>> 0);
  return w;
}

/** Clears batch and meta, then writes the packets. */
export function fillBatch(batch: Batch, meta: Meta, pkts: readonly TestPkt[]): void {
  batch.clear();
  const buf = Buffer.alloc(128);
  for (let i = 0; i < pkts.length; i++) {
    const p = pkts[i];
    const ver = p.v ?? (p.src.includes(':') ? 6 : 4);
    const l3 = 14, l4 = l3 + (ver === 4 ? 20 : 40);
    buf.fill(0);
    if (ver === 4) {
      buf[l3] = 0x45;
      buf.writeUInt32BE(v4(p.src), l3 + 12);
      buf.writeUInt32BE(v4(p.dst), l3 + 16);
    } else {
      buf[l3] = 0x60;
      buf.set(v6bytes(p.src), l3 + 8);
      buf.set(v6bytes(p.dst), l3 + 24);
    }
    if (p.icmpType !== undefined) {
      buf[l4] = p.icmpType;
      buf.writeUInt16BE(p.icmpId ?? 0, l4 + 4);
    }
    const cap = l4 + 20;
    const tsSec = Math.floor(p.t);
    const tsNsec = Math.round((p.t - tsSec) * 1e9);
    if (!batch.push(buf, 0, cap, p.len ?? cap, tsSec, tsNsec, LinkType.EN10MB)) throw new Error('batch full');
    meta.reset(i);
    if (p.nonIp) continue;
    let fl: number = MetaFlag.L3;
    meta.ipVersion[i] = ver;
    meta.l3Off[i] = l3;
    meta.l4Off[i] = l4;
    meta.l4Proto[i] = p.proto;
    meta.l4Len[i] = p.l4Len ?? 20;
    if (ver === 4) {
      meta.src4[i] = v4(p.src);
      meta.dst4[i] = v4(p.dst);
    }
    const first = !p.frag || p.frag.off === 0;
    if (p.frag) {
      fl |= MetaFlag.FRAGMENT;
      if (p.frag.mf) fl |= MetaFlag.MF;
      meta.fragOff[i] = p.frag.off;
      meta.fragId[i] = p.frag.id;
    }
    if (first && !p.noPorts) {
      fl |= MetaFlag.L4;
      if (p.sport !== undefined || p.dport !== undefined) {
        fl |= MetaFlag.PORTS;
        meta.srcPort[i] = p.sport ?? 0;
        meta.dstPort[i] = p.dport ?? 0;
      }
      if (p.tcp !== undefined) {
        fl |= MetaFlag.TCP_FLAGS;
        meta.tcpFlags[i] = p.tcp;
      }
      if (p.icmpType !== undefined) meta.icmpType[i] = p.icmpType;
    }
    meta.flags[i] = fl;
  }
  meta.count = pkts.length;
}
