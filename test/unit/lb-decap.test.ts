// The target-side decapsulator (src/lb/decap.ts): what the distributor
// encapsulates (dsr-ipip, dsr-gue in every format) comes back byte for byte;
// every refusal has its counter; link types; ECN (RFC 6040); and fuzzing:
// random bytes and mutated tunnel packets never throw, and whatever is left
// FORWARD is a whole, checksummed inner packet inside the original frame.

import t from 'tap';
import fc from 'fast-check';
import { Batch, Verdict } from '../../src/io/batch.js';
import { LinkType, Meta } from '../../src/wire/meta.js';
import { parseBatch } from '../../src/wire/parse.js';
import { checksum, pseudoSum4 } from '../../src/wire/checksum.js';
import { FlowTable } from '../../src/flow/flow-table.js';
import { Counters } from '../../src/counters.js';
import { Distributor, type DistService } from '../../src/lb/distributor.js';
import { DECAP_COUNTER_DEFS, Decapsulator, type DecapCounterName } from '../../src/lb/decap.js';
import { TCPF, checksumProblems, eth, ip, ipv4Packet, tcp4, udp4 } from './nat-helpers.js';
import { heapGrowthPerPacket } from '../helpers/alloc.js';

const VIP = '192.0.2.10';
const VIP_N = ip(VIP);
const LB = '198.51.100.1';
const LB_N = ip(LB);
const TARGET = '10.9.5.1';
const TARGET_N = ip(TARGET);

function client(k: number): number {
  return ip(`10.${1 + ((k >>> 16) & 0x3f)}.${(k >>> 8) & 0xff}.${k & 0xff}`);
}

/** Runs frames through the decapsulator; returns per frame the inner packet (copy) or null. */
function decap(d: Decapsulator, frames: Buffer[], link: number = LinkType.EN10MB): (Buffer | null)[] {
  const b = new Batch(Math.max(1, frames.length), 1 << 20);
  for (const f of frames) if (!b.push(f, 0, f.length, f.length, 1, 0, link)) throw new Error('batch full');
  const fwd = d.decapBatch(b);
  const res: (Buffer | null)[] = [];
  for (let k = 0; k < b.count; k++) {
    if (b.verdict[k] !== Verdict.FORWARD) { res.push(null); continue; }
    if (b.linkType[k] !== LinkType.RAW) throw new Error('not RAW');
    res.push(Buffer.from(b.arena.subarray(b.off[k], b.off[k] + b.capLen[k])));
  }
  if (res.filter((x) => x !== null).length !== fwd) throw new Error('return value != FORWARD count');
  return res;
}

/** The distributor's encapsulated frames for `pkts` (one service, one target). */
function encapsulate(svc: Partial<DistService>, pkts: Buffer[]): Buffer[] {
  const flows = new FlowTable({ capacity: 4096, seed: 3 });
  const dist = new Distributor({ flows, localAddress: LB, seed: 5 });
  dist.configure([{ vip: VIP, port: 80, proto: 6, mode: 'dsr-ipip', targets: [{ id: 1, address: TARGET, port: 80, weight: 1 }], ...svc } as DistService]);
  const b = new Batch(256, 1 << 20), out = new Batch(256, 1 << 20), meta = new Meta(256);
  for (const p of pkts) { const f = eth(p); b.push(f, 0, f.length, f.length, 1, 0, LinkType.EN10MB); }
  parseBatch(b, meta);
  flows.trackBatch(b, meta, new Counters());
  dist.distributeBatch(b, meta, flows.flowOf, out);
  const res: Buffer[] = [];
  for (let k = 0; k < out.count; k++) res.push(Buffer.from(out.arena.subarray(out.off[k], out.off[k] + out.capLen[k])));
  return res;
}

// ---- hand-made tunnel packets ----

function ipip(inner: Buffer, o: { src?: number; dst?: number; tos?: number; mf?: boolean } = {}): Buffer {
  return ipv4Packet(o.src ?? LB_N, o.dst ?? TARGET_N, 4, inner, { tos: o.tos, mf: o.mf });
}
/** GUE: variant 0 header [b0, proto, flags] (+ hlen words) or none (variant 1); UDP checksum when asked. */
function gue(inner: Buffer, o: { b0?: number; proto?: number; flags?: number; extra?: number; v1?: boolean; csum?: boolean; port?: number; tos?: number; src?: number } = {}): Buffer {
  let g = Buffer.alloc(0);
  if (!o.v1) {
    g = Buffer.alloc(4 + (o.extra ?? 0));
    g[0] = o.b0 ?? 0;
    g[1] = o.proto ?? 4;
    g.writeUInt16BE(o.flags ?? 0, 2);
  }
  const payload = Buffer.concat([g, inner]);
  const u = Buffer.alloc(8 + payload.length);
  u.writeUInt16BE(50000, 0);
  u.writeUInt16BE(o.port ?? 6080, 2);
  u.writeUInt16BE(u.length, 4);
  payload.copy(u, 8);
  const src = o.src ?? LB_N;
  if (o.csum) {
    const c = checksum(u, 0, u.length, pseudoSum4(src, TARGET_N, 17, u.length));
    u.writeUInt16BE(c === 0 ? 0xffff : c, 6);
  }
  return ipv4Packet(src, TARGET_N, 17, u, { tos: o.tos });
}
function ipv6Packet(payloadLen: number, tc = 0): Buffer {
  const b = Buffer.alloc(40 + payloadLen, 0x5a);
  b.writeUInt32BE(((6 << 28) | (tc << 20)) >>> 0, 0);
  b.writeUInt16BE(payloadLen, 4);
  b[6] = 59; // no next header
  b[7] = 64;
  return b;
}

const inner0 = () => tcp4(client(1), VIP_N, 40000, 80, TCPF.SYN, { payload: Buffer.from('GET / HTTP/1.1\r\n\r\n') });

t.test('what the distributor encapsulates comes back byte for byte (IPIP, GUE v0/v1, checksum on/off)', async (t) => {
  const pkts = Array.from({ length: 40 }, (_, k) => tcp4(client(k), VIP_N, 30000 + k, 80, k % 3 ? TCPF.ACK : TCPF.SYN, { df: true, tos: (k * 4) & 0xfc, payload: Buffer.alloc(k * 13 + (k & 1), k) }));
  const formats: [string, Partial<DistService>, DecapCounterName][] = [
    ['ipip', { mode: 'dsr-ipip' }, 'decap_ipip'],
    ['gue v0', { mode: 'dsr-gue' }, 'decap_gue'],
    ['gue v0 checksum', { mode: 'dsr-gue', gue: { checksum: true } }, 'decap_gue'],
    ['gue v1 (Katran)', { mode: 'dsr-gue', gue: { variant: 1 } }, 'decap_gue'],
    ['gue v1 checksum', { mode: 'dsr-gue', gue: { variant: 1, checksum: true } }, 'decap_gue'],
  ];
  for (const [name, svc, counter] of formats) {
    const frames = encapsulate(svc, pkts);
    t.equal(frames.length, pkts.length, `${name}: all encapsulated`);
    const d = new Decapsulator({ localAddresses: [TARGET], sources: [LB], innerDestinations: [VIP] });
    const got = decap(d, frames);
    t.same(got, pkts, `${name}: inner packets byte for byte`);
    t.equal(d.get(counter), pkts.length, `${name}: counted as ${counter}`);
    t.equal(d.errors(), 0, `${name}: no errors`);
  }
  // The same frames captured on a raw-IP link (a TUN or LINKTYPE_RAW) and on "any" (Linux cooked v1 / v2).
  const frames = encapsulate({ mode: 'dsr-gue' }, pkts.slice(0, 5));
  const rawIp = frames.map((f) => f.subarray(14));
  t.same(decap(new Decapsulator(), rawIp, LinkType.RAW), pkts.slice(0, 5), 'LINKTYPE_RAW');
  const sll = rawIp.map((p) => Buffer.concat([Buffer.from('00000001000602000000000100000800', 'hex'), p]));
  t.same(decap(new Decapsulator(), sll, LinkType.LINUX_SLL), pkts.slice(0, 5), 'LINUX_SLL');
  const sll2 = rawIp.map((p) => Buffer.concat([Buffer.from('0800000000000002000100060200000000010000', 'hex'), p]));
  t.same(decap(new Decapsulator(), sll2, LinkType.LINUX_SLL2), pkts.slice(0, 5), 'LINUX_SLL2');
  const vlan = frames.map((f) => Buffer.concat([f.subarray(0, 12), Buffer.from('8100000a', 'hex'), f.subarray(12)]));
  t.same(decap(new Decapsulator(), vlan), pkts.slice(0, 5), 'one 802.1Q tag');
  // Ethernet padding after a short packet is not part of the inner packet.
  const small = ipip(udp4(client(9), VIP_N, 1, 53, Buffer.alloc(0)));
  const padded = Buffer.concat([eth(small), Buffer.alloc(20)]);
  t.same(decap(new Decapsulator(), [padded]), [small.subarray(20)], 'trailing padding dropped');
});

t.test('every refusal is counted, nothing else is touched', async (t) => {
  const inner = inner0();
  const cases: [string, Buffer, DecapCounterName, object?][] = [];
  const add = (name: string, pkt: Buffer, c: DecapCounterName, opts?: object) => cases.push([name, pkt, c, opts]);
  add('plain TCP', inner, 'decap_not_tunnel');
  add('UDP to another port', gue(inner, { port: 6081 }), 'decap_not_tunnel');
  add('IPv6 outer frame', ipv6Packet(8), 'decap_not_tunnel');
  add('IPIP with IPIP off', ipip(inner), 'decap_not_tunnel', { ipip: false });
  add('GUE with GUE off', gue(inner), 'decap_not_tunnel', { guePort: 0 });
  const badSum = ipip(inner); badSum[10] ^= 1;
  add('outer header checksum', badSum, 'decap_bad_outer');
  const badIhl = ipip(inner); badIhl[0] = 0x44;
  add('outer IHL 4', badIhl, 'decap_bad_outer');
  const lyingShort = ipip(inner); lyingShort.writeUInt16BE(19, 2); lyingShort.writeUInt16BE(0, 10); lyingShort.writeUInt16BE(checksum(lyingShort, 0, 20), 10);
  add('outer total length below the header', lyingShort, 'decap_bad_outer');
  add('outer cut', ipip(inner).subarray(0, 50), 'decap_truncated');
  add('outer fragment', ipip(inner, { mf: true }), 'decap_fragment');
  add('not to a local address', ipip(inner, { dst: ip('10.9.5.99') }), 'decap_not_local', { localAddresses: [TARGET] });
  add('not from the encapsulator', ipip(inner, { src: ip('203.0.113.66') }), 'decap_bad_source', { sources: [LB] });
  const badUdpSum = gue(inner, { csum: true }); badUdpSum[20 + 8 + 4 + 30] ^= 0xff;
  add('UDP checksum', badUdpSum, 'decap_bad_udp');
  const longUdp = gue(inner); longUdp.writeUInt16BE(longUdp.length, 24);
  add('UDP length past the IP payload', longUdp, 'decap_bad_udp');
  add('GUE version 2', gue(inner, { b0: 0x80 }), 'decap_gue_version');
  add('GUE control message', gue(inner, { b0: 0x20 }), 'decap_gue_control');
  add('GUE flags set', gue(inner, { flags: 0x8000 }), 'decap_gue_header');
  add('GUE hlen past the end', gue(Buffer.alloc(0), { b0: 0x1f }), 'decap_gue_header');
  add('GUE only a UDP header', gue(Buffer.alloc(0), { v1: true }), 'decap_gue_header');
  add('GUE proto 17', gue(inner, { proto: 17 }), 'decap_gue_proto');
  add('GUE v1 with 0101 nibble', gue(Buffer.concat([Buffer.from([0x55]), inner.subarray(1)]), { v1: true }), 'decap_gue_proto');
  const innerBadSum = Buffer.from(inner); innerBadSum[10] ^= 0x40;
  add('inner header checksum', ipip(innerBadSum), 'decap_bad_inner');
  add('inner longer than the tunnel', ipip(inner.subarray(0, inner.length - 3)), 'decap_bad_inner');
  add('inner IPv6 in IPIP', ipip(ipv6Packet(0)), 'decap_bad_inner');
  add('inner IPv4 in GUE proto 41', gue(inner, { proto: 41 }), 'decap_bad_inner');
  add('inner to another address', ipip(tcp4(client(1), ip('192.0.2.99'), 1, 80, TCPF.SYN)), 'decap_inner_dst', { innerDestinations: [VIP] });
  add('inner IPv6 when VIPs are listed', gue(ipv6Packet(8), { proto: 41 }), 'decap_inner_dst', { innerDestinations: [VIP] });
  add('outer CE over a Not-ECT inner', ipip(inner, { tos: 3 }), 'decap_ecn_drop');
  for (const [name, pkt, c, opts] of cases) {
    const d = new Decapsulator(opts as never);
    const frame = eth(pkt);
    const b = new Batch(1, 4096);
    b.push(frame, 0, frame.length, frame.length, 1, 0, LinkType.EN10MB);
    t.equal(d.decapBatch(b), 0, `${name}: nothing forwarded`);
    t.equal(b.verdict[0], Verdict.DROP, `${name}: DROP`);
    t.same(Buffer.from(b.arena.subarray(b.off[0], b.off[0] + b.capLen[0])), frame, `${name}: bytes untouched`);
    const nonZero = Object.entries(d.toObject()).filter(([, v]) => v !== 0);
    t.same(nonZero, [[c, 1]], `${name}: exactly ${c}`);
    if (c !== 'decap_not_tunnel') t.equal(d.lastError, DECAP_COUNTER_DEFS.findIndex((x) => x[0] === c), `${name}: lastError`);
  }
  t.throws(() => new Decapsulator({ guePort: 0, ipip: false }), /nothing to decapsulate/);
  t.throws(() => new Decapsulator({ innerDestinations: ['nope'] }), /innerDestinations \(--vip\) must be IPv4/);
});

t.test('accepted variations: hlen words skipped, IPv6 inside GUE, UDP checksum 0, ECN CE copied', async (t) => {
  const inner = inner0();
  const d = new Decapsulator();
  const v6 = ipv6Packet(12, 0x01);
  const got = decap(d, [
    eth(gue(inner, { b0: 0x02, extra: 8 })),
    eth(gue(v6, { proto: 41, csum: true })),
    eth(gue(v6, { v1: true })),
    eth(gue(inner, { csum: false })),
  ]);
  t.same(got, [inner, v6, v6, inner]);
  // RFC 6040 4.2: outer CE, inner ECT(0) -> inner CE, header checksum still good.
  const ect0 = tcp4(client(2), VIP_N, 1, 80, TCPF.SYN, { tos: 0x02 });
  const ect1v6 = ipv6Packet(4, 0x01);
  const [ce4, ce6, ect, ect1, notEct] = decap(d, [eth(ipip(ect0, { tos: 0x03 })), eth(gue(ect1v6, { proto: 41, tos: 0x03 })), eth(ipip(ect0, { tos: 0x02 })),
    eth(ipip(ect0, { tos: 0x01 })), eth(ipip(inner, { tos: 0x01 }))]);
  t.equal(ce4![1] & 3, 3, 'IPv4 inner marked CE');
  t.same(checksumProblems(ce4!), [], 'inner checksums good after the CE mark (RFC 1624)');
  t.equal(((ce6![0] & 0x0f) << 4 | ce6![1] >> 4) & 3, 3, 'IPv6 inner marked CE');
  t.same(ect, ect0, 'outer ECT(0), inner ECT(0): inner unchanged');
  t.equal(ect1![1] & 3, 1, 'outer ECT(1) over inner ECT(0): inner ECT(1)');
  t.same(checksumProblems(ect1!), [], 'inner checksums good after ECT(1)');
  t.same(notEct, inner, 'outer ECT(1) over a Not-ECT inner: unchanged (RFC 6040 Figure 4)');
  t.equal(d.get('decap_ecn_changed'), 3);
  t.equal(d.errors(), 0);
});

t.test('fuzz: random bytes and mutated tunnel packets never throw; what passes is a whole inner packet', async (t) => {
  const seeds = [
    ...encapsulate({ mode: 'dsr-ipip' }, [inner0()]),
    ...encapsulate({ mode: 'dsr-gue' }, [inner0()]),
    ...encapsulate({ mode: 'dsr-gue', gue: { variant: 1, checksum: true } }, [inner0()]),
    eth(gue(ipv6Packet(16), { proto: 41 })),
  ];
  const d = new Decapsulator();
  const b = new Batch(64, 64 * 2048);
  let forwarded = 0, total = 0;
  const check = (frames: Buffer[], links: number[]): void => {
    b.clear();
    frames.forEach((f, k) => b.push(f, 0, Math.min(f.length, 2048), f.length, 1, 0, links[k]));
    const offs = Array.from(b.off.subarray(0, b.count)), caps = Array.from(b.capLen.subarray(0, b.count));
    const before = d.values.reduce((a, v) => a + v, 0) - d.get('decap_ecn_changed');
    const fwd = d.decapBatch(b);
    total += b.count;
    // Every packet is counted exactly once (CE marks come on top of a success).
    const after = d.values.reduce((a, v) => a + v, 0) - d.get('decap_ecn_changed');
    if (after - before !== b.count) throw new Error(`counted ${after - before} of ${b.count}`);
    for (let k = 0; k < b.count; k++) {
      if (b.verdict[k] !== Verdict.FORWARD) continue;
      forwarded++;
      if (b.off[k] < offs[k] || b.off[k] + b.capLen[k] > offs[k] + caps[k]) throw new Error('inner packet outside its frame');
      const p = Buffer.from(b.arena.subarray(b.off[k], b.off[k] + b.capLen[k]));
      if (p[0] >> 4 === 4) {
        if (p.readUInt16BE(2) !== p.length || checksum(p, 0, (p[0] & 15) * 4) !== 0) throw new Error('inner IPv4 not whole or bad header checksum');
      } else if (p[0] >> 4 !== 6 || p.readUInt16BE(4) + 40 !== p.length) {
        throw new Error('inner packet neither whole IPv4 nor IPv6');
      }
    }
    if (fwd > b.count) throw new Error('forwarded more than received');
  };
  const link = fc.constantFrom(LinkType.EN10MB, LinkType.RAW, LinkType.LINUX_SLL, LinkType.LINUX_SLL2, LinkType.IPV4, 999);
  fc.assert(fc.property(fc.array(fc.tuple(fc.uint8Array({ maxLength: 200 }), link), { minLength: 1, maxLength: 64 }), (xs) => {
    check(xs.map(([u]) => Buffer.from(u)), xs.map(([, l]) => l));
  }), { numRuns: 300 });
  // Mutations of valid tunnel frames: flipped bytes, cuts, lengths rewritten.
  const mutation = fc.record({
    seed: fc.nat(seeds.length - 1),
    flips: fc.array(fc.tuple(fc.nat(200), fc.integer({ min: 1, max: 255 })), { maxLength: 4 }),
    cut: fc.option(fc.nat(200)),
  });
  fc.assert(fc.property(fc.array(mutation, { minLength: 1, maxLength: 64 }), (ms) => {
    const frames = ms.map((m) => {
      const f = Buffer.from(seeds[m.seed]);
      for (const [at, x] of m.flips) if (at < f.length) f[at] ^= x;
      return m.cut === null ? f : f.subarray(0, Math.min(f.length, m.cut));
    });
    check(frames, frames.map(() => LinkType.EN10MB));
  }), { numRuns: 1500 });
  t.ok(total > 5000, `${total} frames`);
  t.ok(forwarded > 100, `${forwarded} mutated frames still decapsulated (flips in the inner payload)`);
  t.ok(d.errors() > 1000, `${d.errors()} refusals counted`);
});

t.test('decapsulating allocates nothing per packet', async (t) => {
  const pkts = Array.from({ length: 64 }, (_, k) => tcp4(client(k), VIP_N, 20000 + k, 80, TCPF.ACK, { payload: Buffer.alloc(200, k) }));
  const frames = [...encapsulate({ mode: 'dsr-ipip' }, pkts.slice(0, 32)), ...encapsulate({ mode: 'dsr-gue', gue: { checksum: true } }, pkts.slice(32))];
  const d = new Decapsulator({ localAddresses: [TARGET], innerDestinations: [VIP] });
  const b = new Batch(64, 64 * 2048);
  for (const f of frames) b.push(f, 0, f.length, f.length, 1, 0, LinkType.EN10MB);
  const off = Uint32Array.from(b.off.subarray(0, 64)), cap = Uint32Array.from(b.capLen.subarray(0, 64));
  const round = (): void => {
    // Restore the frame view (decapBatch moves off/capLen onto the inner packets).
    for (let k = 0; k < 64; k++) { b.off[k] = off[k]; b.capLen[k] = cap[k]; b.linkType[k] = LinkType.EN10MB; }
    if (d.decapBatch(b) !== 64) throw new Error('not all decapsulated');
  };
  for (let k = 0; k < 3000; k++) round();
  const { perPacket, counted } = heapGrowthPerPacket(round, 64, 500);
  t.ok(counted > 0, 'at least one attempt ran without a collection');
  t.ok(perPacket < 1, `heap growth per packet ${perPacket.toFixed(4)} bytes`);
  // The measurement can fail: one subarray per packet (the pattern STYLE.md 3 forbids) shows.
  const views: Buffer[] = [];
  const leaky = (): void => {
    round();
    for (let k = 0; k < 64; k++) views[k] = b.arena.subarray(b.off[k], b.off[k] + 20);
  };
  for (let k = 0; k < 1000; k++) leaky();
  const control = heapGrowthPerPacket(leaky, 64, 500);
  t.ok(control.perPacket > 20, `control: a subarray per packet measures ${control.perPacket.toFixed(1)} bytes per packet`);
});
