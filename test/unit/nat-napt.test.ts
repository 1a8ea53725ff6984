// NAPT behaviour, one test per requirement, each named after the RFC text it
// checks. Every translated packet is re-read and every checksum recomputed
// in full (checksumProblems) against the incrementally updated one.
import t from 'tap';
import {
  Harness, baseConfig, tcp4, udp4, echo4, icmpError4, ipv4Packet, fragment, reassemble, tupleOf, checksumProblems,
  ip, fmt, IN_A, IN_B, IN_C, REM_1, REM_2, REM_1B, POOL, TCPF, INSIDE, OUTSIDE, Verdict, type Outcome,
} from './nat-helpers.js';
import { checksum, pseudoSum4 } from '../../src/wire/checksum.js';
import { Napt } from '../../src/nat/napt.js';
import { NAT_COUNTER_DEFS, NatCounter } from '../../src/nat/counters.js';

const T0 = 1_700_000_000;
const POOL_U32 = POOL.map(ip);

// eslint-disable-next-line @typescript-eslint/no-explicit-any
interface Asserts { equal(...a: any[]): unknown; same(...a: any[]): unknown }
function ok(t: Asserts, r: Outcome, what: string): void {
  t.equal(r.verdict, Verdict.FORWARD, `${what}: forwarded`);
  t.same(checksumProblems(r.ip, what), [], `${what}: every checksum verifies by full recompute`);
}

t.test('counter list: unique nat_ names, index map matches', async (t) => {
  const names = NAT_COUNTER_DEFS.map((d) => d[0]);
  t.equal(new Set(names).size, names.length);
  t.ok(names.every((n) => n.startsWith('nat_')));
  names.forEach((n, k) => t.equal(NatCounter[n], k));
});

t.test('RFC 4787 REQ-1 / RFC 5382 REQ-1: endpoint-independent mapping (same outside endpoint for two remotes)', async (t) => {
  const h = new Harness(baseConfig());
  const [u1, u2, c1, c2] = h.run([
    udp4(IN_A, REM_1, 5000, 53), udp4(IN_A, REM_2, 5000, 123),
    tcp4(IN_A, REM_1, 40000, 80, TCPF.SYN), tcp4(IN_A, REM_2, 40000, 443, TCPF.SYN),
  ], INSIDE, T0);
  for (const [r, w] of [[u1, 'udp 1'], [u2, 'udp 2'], [c1, 'tcp 1'], [c2, 'tcp 2']] as const) ok(t, r, w);
  t.equal(tupleOf(u1.ip).src, tupleOf(u2.ip).src, 'UDP: same outside address');
  t.equal(tupleOf(u1.ip).sp, tupleOf(u2.ip).sp, 'UDP: same outside port');
  t.equal(tupleOf(c1.ip).sp, tupleOf(c2.ip).sp, 'TCP: same outside port');
  t.equal(tupleOf(u1.ip).dst, REM_1);
  t.equal(tupleOf(u2.ip).dst, REM_2);
  t.ok(POOL_U32.includes(tupleOf(u1.ip).src), 'outside address from the pool');
  t.equal(h.napt.mappings, 2, 'one UDP and one TCP mapping');
  t.equal(h.napt.sessions, 4, 'four sessions (mapping + remote)');
  // A different inside port gets a different mapping.
  const u3 = h.one(udp4(IN_A, REM_1, 5002, 53), INSIDE, T0 + 1);
  t.not(tupleOf(u3.ip).sp, tupleOf(u1.ip).sp);
});

t.test('RFC 4787 REQ-2 / RFC 6888 REQ-2 / RFC 7857 2.4: paired address pooling', async (t) => {
  const h = new Harness(baseConfig());
  const seen = new Set<number>();
  for (let k = 0; k < 40; k++) {
    const a = ip(`10.0.3.${k + 1}`);
    const rs = h.run([
      udp4(a, REM_1, 6000 + k, 53), tcp4(a, REM_2, 7000 + k, 80, TCPF.SYN), echo4(a, REM_1, 8, 900 + k), udp4(a, REM_2, 8000 + k, 53),
    ], INSIDE, T0 + k);
    const outs = rs.map((r) => tupleOf(r.ip).src);
    t.equal(new Set(outs).size, 1, `10.0.3.${k + 1}: every mapping, every protocol, one outside address`);
    t.equal(outs[0], POOL_U32[h.napt.pairedPool(a)]);
    seen.add(outs[0]);
  }
  t.ok(seen.size > 1, 'subscribers spread over the pool');
  // Stickiness survives the subscriber's mappings expiring.
  const a = ip('10.0.3.1');
  const before = tupleOf(h.one(udp4(a, REM_1, 6100, 53), INSIDE, T0 + 50).ip).src;
  h.napt.expire(T0 + 10_000, h.counters);
  t.equal(h.napt.mappingsOf(a), 0, 'all mappings of the subscriber expired');
  const after = tupleOf(h.one(udp4(a, REM_1, 6200, 53), INSIDE, T0 + 10_001).ip).src;
  t.equal(after, before, 'same outside address after a fresh start');
});

t.test('RFC 4787 REQ-3 / REQ-4: port range class (0-1023 vs 1024-65535) and parity preserved', async (t) => {
  const h = new Harness(baseConfig());
  for (let k = 0; k < 60; k++) {
    const sp = k % 3 === 0 ? 100 + k : 20000 + k; // some in 0-1023
    const r = h.one(udp4(ip(`10.0.4.${k + 1}`), REM_1, sp, 53), INSIDE, T0);
    const op = tupleOf(r.ip).sp;
    if (sp < 1024) t.ok(op >= 1 && op <= 1023, `inside ${sp} -> outside ${op} stays in 0-1023`);
    else t.ok(op >= 1024, `inside ${sp} -> outside ${op} stays in 1024-65535`);
    t.equal(op & 1, sp & 1, `parity of ${sp} kept (${op})`);
  }
  // Configurable: a narrow range, no class, no parity.
  const h2 = new Harness(baseConfig({ preserveRangeClass: false, preserveParity: false, portRange: { min: 20000, max: 20999 } }));
  const par = new Set<number>();
  for (let k = 0; k < 60; k++) {
    const op = tupleOf(h2.one(udp4(ip(`10.0.4.${k + 1}`), REM_1, 100, 53), INSIDE, T0).ip).sp;
    t.ok(op >= 20000 && op <= 20999, `port ${op} in the configured range`);
    par.add(op & 1);
  }
  t.equal(par.size, 2, 'without parity preservation both parities occur');
});

t.test('RFC 4787 REQ-5: UDP timeout >= 120 s (default 300), refreshed by outbound packets', async (t) => {
  t.throws(() => new Napt(baseConfig({ timeouts: { udp: 60 } })), /RFC 4787 REQ-5/);
  const h = new Harness(baseConfig({ inboundRefresh: false }));
  const r = h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0);
  const P = tupleOf(r.ip).src, p = tupleOf(r.ip).sp;
  t.equal(h.napt.listMappings()[0].expiresAt, T0 + 300, 'default UDP timeout is 300 s');
  t.equal(h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0 + 200).verdict, Verdict.FORWARD, 'outbound refresh at +200');
  t.equal(h.napt.listMappings()[0].expiresAt, T0 + 500, 'outbound packet refreshed the mapping');
  ok(t, h.one(udp4(REM_1, P, 53, p), OUTSIDE, T0 + 499), 'inbound at +499');
  t.equal(h.napt.listMappings()[0].expiresAt, T0 + 500, 'inboundRefresh false (RFC 4787 REQ-6a): inbound does not refresh');
  const late = h.one(udp4(REM_1, P, 53, p), OUTSIDE, T0 + 500);
  t.equal(late.verdict, Verdict.DROP, 'inbound at +500: mapping expired');
  t.equal(h.c('nat_drop_no_mapping'), 1);
  t.equal(h.c('nat_mapping_expired'), 1);
  t.equal(h.napt.mappings, 0);

  // Default inboundRefresh: inbound keeps it alive; 120 s is accepted as a configuration.
  const h2 = new Harness(baseConfig({ timeouts: { udp: 120 } }));
  const r2 = h2.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0);
  const P2 = tupleOf(r2.ip).src, p2 = tupleOf(r2.ip).sp;
  ok(t, h2.one(udp4(REM_1, P2, 53, p2), OUTSIDE, T0 + 100), 'inbound at +100');
  ok(t, h2.one(udp4(REM_1, P2, 53, p2), OUTSIDE, T0 + 200), 'inbound at +200 (refreshed inbound at +100)');
  t.equal(h2.one(udp4(REM_1, P2, 53, p2), OUTSIDE, T0 + 321).verdict, Verdict.DROP, '121 s idle: gone');
});

t.test('RFC 4787 REQ-8: address-dependent filtering drops an unknown remote; EIF admits it', async (t) => {
  for (const [filtering, remPortOk, otherOk] of [
    ['address-dependent', true, false], ['endpoint-independent', true, true], ['address-and-port-dependent', false, false],
  ] as const) {
    const h = new Harness(baseConfig({ filtering }));
    const r = h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0);
    const P = tupleOf(r.ip).src, p = tupleOf(r.ip).sp;
    const [same, otherPort, otherAddr, otherAddr2] = h.run([
      udp4(REM_1, P, 53, p), udp4(REM_1, P, 9999, p), udp4(REM_2, P, 53, p), udp4(REM_1B, P, 53, p),
    ], OUTSIDE, T0 + 1);
    ok(t, same, `${filtering}: the contacted endpoint`);
    t.equal(same.egress, INSIDE);
    t.equal(tupleOf(same.ip).dst, IN_A);
    t.equal(tupleOf(same.ip).dp, 5000);
    t.equal(otherPort.verdict, remPortOk ? Verdict.FORWARD : Verdict.DROP, `${filtering}: same address, other port`);
    t.equal(otherAddr.verdict, otherOk ? Verdict.FORWARD : Verdict.DROP, `${filtering}: other address`);
    t.equal(otherAddr2.verdict, otherOk ? Verdict.FORWARD : Verdict.DROP, `${filtering}: neighbour address`);
    t.equal(h.c('nat_drop_filtered'), (remPortOk ? 0 : 1) + (otherOk ? 0 : 2), `${filtering}: filtered counter`);
    if (otherOk) t.equal(tupleOf(otherAddr.ip).dst, IN_A, 'EIF delivers to the mapping');
  }
});

/** Sets up B (IN_B:6000) with a mapping by sending to REM_1; returns its outside endpoint. */
function mapB(h: Harness, proto: 'udp' | 'tcp', now: number): { P: number; p: number } {
  const r = h.one(proto === 'udp' ? udp4(IN_B, REM_1, 6000, 53) : tcp4(IN_B, REM_1, 6000, 80, TCPF.SYN), INSIDE, now);
  return { P: tupleOf(r.ip).src, p: tupleOf(r.ip).sp };
}

t.test('RFC 4787 REQ-9: UDP hairpinning, external source address and port', async (t) => {
  const h = new Harness(baseConfig({ filtering: 'endpoint-independent' }));
  const b = mapB(h, 'udp', T0);
  const r = h.one(udp4(IN_A, b.P, 5000, b.p, Buffer.from('to B via hairpin')), INSIDE, T0 + 1);
  ok(t, r, 'A -> P_b:p_b');
  t.equal(r.egress, INSIDE, 'sent back inside');
  const tu = tupleOf(r.ip);
  t.equal(tu.dst, IN_B);
  t.equal(tu.dp, 6000);
  t.ok(POOL_U32.includes(tu.src), 'source is A\'s outside address (RFC 4787 REQ-9b)');
  const aMap = h.napt.listMappings().find((m) => m.insideAddress === '10.0.0.1' && m.proto === 'udp')!;
  t.equal(tu.src, ip(aMap.outsideAddress));
  t.equal(tu.sp, aMap.outsidePort);
  // B answers the endpoint it saw.
  const back = h.one(udp4(IN_B, tu.src, 6000, tu.sp), INSIDE, T0 + 2);
  ok(t, back, 'B -> P_a:p_a');
  t.equal(back.egress, INSIDE);
  t.same([tupleOf(back.ip).src, tupleOf(back.ip).sp, tupleOf(back.ip).dst, tupleOf(back.ip).dp], [b.P, b.p, IN_A, 5000]);
  t.equal(h.c('nat_hairpinned'), 2);
  // Hairpin to a pool port nobody holds.
  t.equal(h.one(udp4(IN_A, b.P, 5000, b.p ^ 0x100), INSIDE, T0 + 3).verdict, Verdict.DROP);
  t.equal(h.c('nat_drop_hairpin_no_mapping'), 1);
  // Address-dependent filtering judges the hairpin like any remote.
  const h2 = new Harness(baseConfig());
  const b2 = mapB(h2, 'udp', T0);
  t.equal(h2.one(udp4(IN_A, b2.P, 5000, b2.p), INSIDE, T0 + 1).verdict, Verdict.DROP, 'ADF: B never sent to A\'s outside address');
  t.equal(h2.c('nat_drop_filtered'), 1);
});

t.test('RFC 5382 REQ-8: TCP hairpinning (handshake through the NAT)', async (t) => {
  const h = new Harness(baseConfig({ filtering: 'endpoint-independent' }));
  const b = mapB(h, 'tcp', T0);
  const syn = h.one(tcp4(IN_A, b.P, 41000, b.p, TCPF.SYN, { seq: 7 }), INSIDE, T0 + 1);
  ok(t, syn, 'SYN A -> P_b');
  const st = tupleOf(syn.ip);
  t.same([st.dst, st.dp], [IN_B, 6000]);
  const synack = h.one(tcp4(IN_B, st.src, 6000, st.sp, TCPF.SYN | TCPF.ACK, { seq: 99, ack: 8 }), INSIDE, T0 + 2);
  ok(t, synack, 'SYN-ACK B -> P_a');
  t.same([tupleOf(synack.ip).src, tupleOf(synack.ip).sp, tupleOf(synack.ip).dst, tupleOf(synack.ip).dp], [b.P, b.p, IN_A, 41000]);
  const ack = h.one(tcp4(IN_A, b.P, 41000, b.p, TCPF.ACK, { seq: 8, ack: 100, payload: Buffer.from('GET / HTTP/1.0\r\n\r\n') }), INSIDE, T0 + 3);
  ok(t, ack, 'data A -> B');
  const maps = h.napt.listMappings();
  const aMap = maps.find((m) => m.insideAddress === '10.0.0.1')!;
  t.equal(aMap.state, 'established', 'A\'s session saw SYN both ways');
  t.equal(aMap.expiresAt, T0 + 3 + 7440);
});

t.test('RFC 5508 REQ-7 / RFC 7857 2.12: ICMP hairpinning (errors and queries)', async (t) => {
  const h = new Harness(baseConfig({ filtering: 'endpoint-independent' }));
  const b = mapB(h, 'udp', T0);
  const aPkt = udp4(IN_A, b.P, 5000, b.p, Buffer.from('x'.repeat(20)));
  const toB = h.one(aPkt, INSIDE, T0 + 1);
  ok(t, toB, 'A -> B hairpinned');
  // B answers with port unreachable to the source it saw, quoting what it got.
  const err = h.one(icmpError4(IN_B, tupleOf(toB.ip).src, 3, 3, toB.ip), INSIDE, T0 + 2);
  ok(t, err, 'hairpinned ICMP error');
  t.equal(err.egress, INSIDE);
  t.same([tupleOf(err.ip).src, tupleOf(err.ip).dst], [b.P, IN_A], 'error from B\'s outside address to A');
  const quoted = err.ip.subarray(28);
  t.same(tupleOf(quoted), { ...tupleOf(aPkt), ttl: 63 }, 'quoted packet is what A sent (TTL one less)');
  t.equal(quoted.readUInt16BE(20 + 6), aPkt.readUInt16BE(20 + 6), 'quoted UDP checksum equals A\'s original');
  // ICMP query: a host pinging its own outside address gets its echo request back (same identifier).
  const e = h.one(echo4(IN_C, REM_1, 8, 321), INSIDE, T0 + 3);
  const Pc = tupleOf(e.ip).src;
  const self = h.one(echo4(IN_C, Pc, 8, 321, 2), INSIDE, T0 + 4);
  ok(t, self, 'echo to own outside address');
  t.equal(self.egress, INSIDE);
  t.same([tupleOf(self.ip).src, tupleOf(self.ip).dst, tupleOf(self.ip).sp], [Pc, IN_C, 321]);
  t.equal(h.c('nat_hairpinned'), 3);
});

t.test('RFC 4787 REQ-13 / RFC 1191: DF set and larger than outsideMtu -> ICMP fragmentation needed with the MTU', async (t) => {
  const h = new Harness(baseConfig({ outsideMtu: 1400, insideAddress: '10.0.0.254' }));
  const big = udp4(IN_A, REM_1, 5000, 53, Buffer.alloc(1472, 7), { df: true });
  const r = h.one(big, INSIDE, T0);
  t.equal(r.verdict, Verdict.DROP);
  t.equal(h.c('nat_drop_frag_needed'), 1);
  t.equal(h.napt.mappings, 0, 'no mapping created for a dropped packet');
  const [o] = h.takeOriginated();
  t.ok(o, 'an ICMP error was originated');
  t.equal(o.side, INSIDE, 'towards the sender');
  const e = o.bytes;
  t.same(checksumProblems(e, 'frag needed'), []);
  t.same([e[20], e[21], e.readUInt16BE(26)], [3, 4, 1400], 'type 3 code 4, next-hop MTU 1400');
  t.same([fmt(e.readUInt32BE(12)), fmt(e.readUInt32BE(16))], ['10.0.0.254', '10.0.0.1']);
  t.same(e.subarray(28, 28 + 28), big.subarray(0, 28), 'quotes the offending header and 8 bytes');
  t.ok(e.length <= 576, 'RFC 1812 4.3.2.3: at most 576 bytes');
  t.equal(h.one(udp4(IN_A, REM_1, 5000, 53, Buffer.alloc(1372, 7), { df: true }), INSIDE, T0).verdict, Verdict.FORWARD, 'exactly the MTU passes');
  t.equal(h.one(udp4(IN_A, REM_1, 5000, 53, Buffer.alloc(1472, 7)), INSIDE, T0).verdict, Verdict.DROP, 'no DF: dropped (no fragmentation here)');
  t.equal(h.c('nat_drop_too_big'), 1);
});

t.test('RFC 4787 REQ-14: fragments, in order and out of order, both directions', async (t) => {
  const h = new Harness(baseConfig());
  const payload = Buffer.alloc(2900);
  for (let k = 0; k < payload.length; k++) payload[k] = (k * 7) & 0xff;
  const dgram = udp4(IN_A, REM_1, 5000, 53, payload, { id: 0x1111 });
  const fr = fragment(dgram, 1000);
  t.equal(fr.length, 3);
  // In order.
  const rs = h.run(fr, INSIDE, T0);
  rs.forEach((r, k) => t.same(checksumProblems(r.ip, `fragment ${k}`), []));
  t.ok(rs.every((r) => r.verdict === Verdict.FORWARD && r.egress === OUTSIDE));
  const whole = reassemble(rs.map((r) => Buffer.from(r.ip)));
  t.same(checksumProblems(whole, 'reassembled'), [], 'UDP checksum of the whole translated datagram verifies');
  const P = tupleOf(whole).src, p = tupleOf(whole).sp;
  t.ok(rs.every((r) => tupleOf(r.ip).src === P && tupleOf(r.ip).dst === REM_1), 'every fragment carries the outside address');
  t.equal(h.c('nat_frag_translated'), 2);

  // Out of order, inbound: last, middle, then first (next batch).
  const reply = udp4(REM_1, P, 53, p, payload, { id: 0x2222 });
  const rf = fragment(reply, 1000);
  const held = h.run([rf[2], rf[1]], OUTSIDE, T0 + 1);
  t.same(held.map((r) => r.verdict), [Verdict.HOLD, Verdict.HOLD], 'non-first fragments held');
  t.equal(h.c('nat_frag_held'), 2);
  const first = h.one(rf[0], OUTSIDE, T0 + 2);
  ok(t, first, 'first fragment');
  const rel = h.takeOriginated().filter((o) => o.linkType === 1);
  t.equal(rel.length, 2, 'two held fragments released');
  t.ok(rel.every((o) => o.side === INSIDE));
  const parts = [first.ip, ...rel.map((o) => o.bytes.subarray(14))];
  parts.forEach((x, k) => t.same(checksumProblems(x, `part ${k}`), []));
  const back = reassemble(parts);
  t.same(checksumProblems(back, 'reassembled reply'), []);
  t.same([tupleOf(back).dst, tupleOf(back).dp], [IN_A, 5000]);
  t.same(back.subarray(28), payload, 'payload intact');
  t.equal(h.c('nat_frag_released'), 2);

  // TCP: first fragment carries the ports; the checksum is fixed there for the whole datagram.
  const seg = tcp4(IN_A, REM_2, 40000, 443, TCPF.ACK | TCPF.PSH, { payload: Buffer.alloc(1500, 3), id: 0x3333 });
  const tf = h.run(fragment(seg, 800), INSIDE, T0 + 3);
  t.same(checksumProblems(reassemble(tf.map((r) => Buffer.from(r.ip))), 'tcp reassembled'), []);
  // Hostile: TCP fragment at offset 1 (RFC 1858), orphans timing out, the hold arena bound.
  const evil = ipv4Packet(REM_1, P, 6, Buffer.alloc(16), { fragOff: 1, id: 9 });
  t.equal(h.one(evil, OUTSIDE, T0 + 4).verdict, Verdict.DROP);
  t.equal(h.c('nat_frag_bad'), 1);
});

t.test('RFC 4787 REQ-14: orphan fragments are bounded, counted and time out', async (t) => {
  const h = new Harness(baseConfig({ fragments: { holdSlots: 4, maxHeldPerTrain: 2, timeoutSec: 30 } }));
  const r = h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0);
  const P = tupleOf(r.ip).src;
  const orphan = (id: number, off: number) => ipv4Packet(REM_1, P, 17, Buffer.alloc(64), { id, fragOff: off, mf: true });
  const v = h.run([orphan(1, 100), orphan(1, 108), orphan(1, 116), orphan(2, 100), orphan(3, 100), orphan(4, 100)], OUTSIDE, T0 + 1)
    .map((x) => x.verdict);
  t.same(v, [Verdict.HOLD, Verdict.HOLD, Verdict.DROP, Verdict.HOLD, Verdict.HOLD, Verdict.DROP], 'per-train and arena limits');
  t.equal(h.c('nat_frag_hold_full'), 2);
  h.run([], OUTSIDE, T0 + 40);
  h.napt.expire(T0 + 40, h.counters);
  t.equal(h.c('nat_frag_timeout'), 4, 'held fragments dropped at the train timeout');
  t.equal(h.napt.frags.held, 0);
  // A first fragment that is refused takes its held fragments with it.
  h.one(orphan(5, 100), OUTSIDE, T0 + 41);
  const firstNoMap = ipv4Packet(REM_1, P, 17, udpLike(9999, 1234, 64), { id: 5, mf: true });
  t.equal(h.one(firstNoMap, OUTSIDE, T0 + 42).verdict, Verdict.DROP);
  t.equal(h.c('nat_frag_dropped'), 1);
  t.equal(h.one(orphan(5, 108), OUTSIDE, T0 + 43).verdict, Verdict.DROP, 'later fragment of a dropped train: dropped at once');
});

function udpLike(sp: number, dp: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  b.writeUInt16BE(sp, 0);
  b.writeUInt16BE(dp, 2);
  b.writeUInt16BE(len + 100, 4);
  return b;
}

t.test('RFC 5382 REQ-4: unsolicited inbound SYN dropped silently (REQ-4a default)', async (t) => {
  const h = new Harness(baseConfig());
  const r = h.one(tcp4(REM_1, POOL_U32[0], 5555, 22, TCPF.SYN), OUTSIDE, T0);
  t.equal(r.verdict, Verdict.DROP);
  t.equal(h.c('nat_syn_dropped'), 1);
  h.run([], OUTSIDE, T0 + 10);
  t.equal(h.takeOriginated().length, 0, 'nothing sent back');
  // A non-SYN without a mapping is just "no mapping".
  h.one(tcp4(REM_1, POOL_U32[0], 5555, 22, TCPF.ACK), OUTSIDE, T0 + 11);
  t.equal(h.c('nat_drop_no_mapping'), 1);
});

t.test('RFC 5382 REQ-4: unsolicited SYN held 6 s; an outbound SYN for the connection drops it silently', async (t) => {
  const h = new Harness(baseConfig({ holdUnsolicitedSyn: true }));
  // TCP hole punching: A's mapping exists (towards REM_1); REM_2 tries to connect to it.
  const a = h.one(tcp4(IN_A, REM_1, 40000, 80, TCPF.SYN), INSIDE, T0);
  const P = tupleOf(a.ip).src, p = tupleOf(a.ip).sp;
  const syn = h.one(tcp4(REM_2, P, 5555, p, TCPF.SYN), OUTSIDE, T0 + 1);
  t.equal(syn.verdict, Verdict.HOLD, 'filtered SYN held');
  t.equal(h.c('nat_syn_held'), 1);
  t.equal(h.one(tcp4(REM_2, P, 5555, p, TCPF.SYN), OUTSIDE, T0 + 2).verdict, Verdict.DROP, 'its retransmission is not held twice');
  const out = h.one(tcp4(IN_A, REM_2, 40000, 5555, TCPF.SYN), INSIDE, T0 + 3);
  ok(t, out, 'outbound SYN to the same endpoint');
  t.same([tupleOf(out.ip).src, tupleOf(out.ip).sp], [P, p], 'EIM: same mapping');
  t.equal(h.c('nat_syn_hold_superseded'), 1);
  h.run([], OUTSIDE, T0 + 20);
  t.equal(h.takeOriginated().length, 0, 'held SYN dropped silently, no ICMP');
  t.equal(h.c('nat_syn_hold_expired'), 0);
  // Now the remote's SYN (retransmitted) is admitted: the mapping has a session with it.
  ok(t, h.one(tcp4(REM_2, P, 5555, p, TCPF.SYN | TCPF.ACK), OUTSIDE, T0 + 21), 'SYN-ACK from REM_2 admitted');
});

t.test('RFC 5382 REQ-4: a held SYN is answered with ICMP port unreachable after 6 s', async (t) => {
  const h = new Harness(baseConfig({ holdUnsolicitedSyn: true }));
  const synPkt = tcp4(REM_2, POOL_U32[1], 5555, 2222, TCPF.SYN, { seq: 424242 });
  t.equal(h.one(synPkt, OUTSIDE, T0).verdict, Verdict.HOLD, 'no mapping: held');
  h.run([], OUTSIDE, T0 + 5.9);
  t.equal(h.takeOriginated().length, 0, 'not before 6 s');
  h.run([], OUTSIDE, T0 + 6);
  const [o] = h.takeOriginated();
  t.ok(o, 'answered at 6 s');
  t.equal(o.side, OUTSIDE);
  const e = o.bytes;
  t.same([e[20], e[21]], [3, 3], 'ICMP port unreachable');
  t.same([e.readUInt32BE(12), e.readUInt32BE(16)], [POOL_U32[1], REM_2], 'from the address the SYN was sent to');
  t.same(e.subarray(28), synPkt, 'quotes the SYN');
  t.same(checksumProblems(e, 'port unreachable'), []);
  t.equal(h.c('nat_syn_hold_expired'), 1);
  // REQ-4a: the ICMP can be turned off by policy.
  const h2 = new Harness(baseConfig({ holdUnsolicitedSyn: true, unsolicitedSynIcmp: false }));
  h2.one(synPkt, OUTSIDE, T0);
  h2.run([], OUTSIDE, T0 + 7);
  t.equal(h2.takeOriginated().length, 0);
  t.equal(h2.c('nat_syn_hold_expired'), 1);
  // Bounded queue.
  const h3 = new Harness(baseConfig({ holdUnsolicitedSyn: true, synHoldSlots: 2 }));
  const v = h3.run([1, 2, 3].map((k) => tcp4(REM_2, POOL_U32[0], 5000 + k, 22, TCPF.SYN)), OUTSIDE, T0).map((r) => r.verdict);
  t.same(v, [Verdict.HOLD, Verdict.HOLD, Verdict.DROP]);
  t.equal(h3.c('nat_syn_hold_full'), 1);
  t.throws(() => new Napt(baseConfig({ synHoldSec: 3 })), /RFC 5382 REQ-4/);
});

t.test('RFC 5382 REQ-5 / RFC 7857 2.1: TCP established 7440 s, transitory 240 s', async (t) => {
  t.throws(() => new Napt(baseConfig({ timeouts: { tcpEstablished: 3600 } })), /RFC 5382 REQ-5/);
  t.throws(() => new Napt(baseConfig({ timeouts: { tcpTransitory: 60 } })), /RFC 5382 REQ-5/);
  const h = new Harness(baseConfig());
  const syn = h.one(tcp4(IN_A, REM_1, 40000, 80, TCPF.SYN), INSIDE, T0);
  const P = tupleOf(syn.ip).src, p = tupleOf(syn.ip).sp;
  let m = h.napt.listMappings()[0];
  t.equal(m.state, 'transitory', 'SYN one way only');
  t.equal(m.expiresAt, T0 + 240);
  ok(t, h.one(tcp4(REM_1, P, 80, p, TCPF.SYN | TCPF.ACK), OUTSIDE, T0 + 1), 'SYN-ACK');
  m = h.napt.listMappings()[0];
  t.equal(m.remotes[0].state, 'established', 'SYN seen both ways');
  t.equal(m.expiresAt, T0 + 1 + 7440);
  ok(t, h.one(tcp4(REM_1, P, 80, p, TCPF.ACK), OUTSIDE, T0 + 7000), 'still alive after 7000 s idle');
  ok(t, h.one(tcp4(IN_A, REM_1, 40000, 80, TCPF.FIN | TCPF.ACK), INSIDE, T0 + 7001), 'FIN out');
  t.equal(h.napt.listMappings()[0].remotes[0].state, 'half-closed', 'one FIN: still established');
  t.equal(h.napt.listMappings()[0].expiresAt, T0 + 7001 + 7440);
  ok(t, h.one(tcp4(REM_1, P, 80, p, TCPF.FIN | TCPF.ACK), OUTSIDE, T0 + 7002), 'FIN in');
  t.equal(h.napt.listMappings()[0].expiresAt, T0 + 7002 + 240, 'FIN both ways: transitory');
  t.equal(h.one(tcp4(REM_1, P, 80, p, TCPF.ACK), OUTSIDE, T0 + 7002 + 241).verdict, Verdict.DROP, 'gone after 240 s');
  // Established idle timeout.
  const h2 = new Harness(baseConfig());
  const s2 = h2.one(tcp4(IN_A, REM_1, 40001, 80, TCPF.SYN), INSIDE, T0);
  const P2 = tupleOf(s2.ip).src, p2 = tupleOf(s2.ip).sp;
  h2.one(tcp4(REM_1, P2, 80, p2, TCPF.SYN | TCPF.ACK), OUTSIDE, T0);
  t.equal(h2.one(tcp4(REM_1, P2, 80, p2, TCPF.ACK), OUTSIDE, T0 + 7440).verdict, Verdict.DROP, 'established: gone after 7440 s idle');
  // A new SYN on a closed 4-tuple starts over.
  const h3 = new Harness(baseConfig());
  const s3 = h3.one(tcp4(IN_A, REM_1, 40002, 80, TCPF.SYN), INSIDE, T0);
  const P3 = tupleOf(s3.ip).src, p3 = tupleOf(s3.ip).sp;
  h3.one(tcp4(REM_1, P3, 80, p3, TCPF.RST | TCPF.ACK), OUTSIDE, T0 + 1);
  h3.one(tcp4(IN_A, REM_1, 40002, 80, TCPF.SYN), INSIDE, T0 + 2);
  t.equal(h3.napt.listMappings()[0].remotes[0].state, 'syn-out', 'reset then SYN: a new connection');
});

t.test('RFC 7857 2.2: RST is translated and the session kept for the transitory timeout', async (t) => {
  const h = new Harness(baseConfig());
  const syn = h.one(tcp4(IN_A, REM_1, 40000, 80, TCPF.SYN), INSIDE, T0);
  const P = tupleOf(syn.ip).src, p = tupleOf(syn.ip).sp;
  h.one(tcp4(REM_1, P, 80, p, TCPF.SYN | TCPF.ACK), OUTSIDE, T0 + 1);
  h.one(tcp4(IN_A, REM_1, 40000, 80, TCPF.ACK), INSIDE, T0 + 2);
  const rst = h.one(tcp4(REM_1, P, 80, p, TCPF.RST), OUTSIDE, T0 + 100);
  ok(t, rst, 'RST translated');
  t.same([tupleOf(rst.ip).dst, tupleOf(rst.ip).dp], [IN_A, 40000]);
  const m = h.napt.listMappings()[0];
  t.equal(m.remotes[0].state, 'reset');
  t.equal(m.expiresAt, T0 + 100 + 240, 'RST: transitory timeout, not immediate removal');
  t.equal(h.napt.mappings, 1, 'mapping still there after RST');
  ok(t, h.one(tcp4(REM_1, P, 80, p, TCPF.RST), OUTSIDE, T0 + 339), 'a late RST within 240 s still translated');
  h.napt.expire(T0 + 339 + 240, h.counters);
  t.equal(h.napt.mappings, 0, 'removed after the transitory timeout');
});

t.test('RFC 5508 REQ-1: ICMP query mapping by identifier, 60 s', async (t) => {
  t.throws(() => new Napt(baseConfig({ timeouts: { icmp: 30 } })), /RFC 5508 REQ-1/);
  const h = new Harness(baseConfig());
  const [q1, q2] = h.run([echo4(IN_A, REM_1, 8, 4321, 1), echo4(IN_A, REM_2, 8, 4321, 2)], INSIDE, T0);
  ok(t, q1, 'echo request 1');
  ok(t, q2, 'echo request 2');
  const P = tupleOf(q1.ip).src, id = tupleOf(q1.ip).sp;
  t.equal(tupleOf(q2.ip).sp, id, 'REQ-1a: identifier mapping is external-host independent');
  t.equal(h.napt.listMappings()[0].expiresAt, T0 + 60);
  const rep = h.one(echo4(REM_1, P, 0, id, 1), OUTSIDE, T0 + 59);
  ok(t, rep, 'echo reply at +59');
  t.same([tupleOf(rep.ip).dst, tupleOf(rep.ip).sp], [IN_A, 4321], 'identifier restored');
  t.equal(h.one(echo4(REM_2, P, 0, id, 2), OUTSIDE, T0 + 120).verdict, Verdict.DROP, 'REM_2 idle for 120 s: gone');
  t.equal(h.one(echo4(IN_A, REM_1, 0, 999), INSIDE, T0 + 121).verdict, Verdict.DROP, 'a reply from inside opens no mapping');
  t.equal(h.c('nat_drop_no_outbound_mapping'), 1);
});

t.test('RFC 5508 REQ-3: ICMP error from outside, quoted packet reverted, every checksum fixed', async (t) => {
  const h = new Harness(baseConfig());
  const sent = udp4(IN_A, REM_1, 5000, 53, Buffer.from('query?'));
  const out = h.one(sent, INSIDE, T0);
  const P = tupleOf(out.ip).src;
  // Full quote (RFC 1812): the quoted UDP checksum is checkable.
  const err = h.one(icmpError4(REM_1, P, 3, 3, out.ip), OUTSIDE, T0 + 1);
  ok(t, err, 'port unreachable');
  t.equal(err.egress, INSIDE);
  t.same([tupleOf(err.ip).src, tupleOf(err.ip).dst], [REM_1, IN_A]);
  const q = err.ip.subarray(28);
  const expect = Buffer.from(sent);
  expect[8] = 63; // the quoted copy left the NAT with TTL - 1
  expect.writeUInt16BE(0, 10);
  expect.writeUInt16BE(checksum(expect, 0, 20), 10);
  t.same(q, expect, 'quoted packet byte for byte what A sent (TTL aside), all its checksums included');
  // RFC 792 minimum quote (header + 8 bytes) of a TCP segment: no TCP checksum in it.
  const tcpOut = h.one(tcp4(IN_A, REM_1, 40000, 80, TCPF.SYN), INSIDE, T0 + 2);
  const e8 = h.one(icmpError4(ip('192.0.2.200'), P, 11, 0, tcpOut.ip, 28), OUTSIDE, T0 + 3);
  ok(t, e8, 'time exceeded with an 8-byte quote');
  t.same([tupleOf(e8.ip.subarray(28, 56)).src, e8.ip.readUInt16BE(48)], [IN_A, 40000]);
  // 40-byte quote: the TCP checksum is inside the quote and is reverted too (like Linux).
  const e40 = h.one(icmpError4(REM_1, P, 3, 4, tcpOut.ip, 40, 1280), OUTSIDE, T0 + 4);
  ok(t, e40, 'fragmentation needed from outside (PMTUD through the NAT)');
  const origTcp = tcp4(IN_A, REM_1, 40000, 80, TCPF.SYN);
  t.equal(e40.ip.readUInt16BE(28 + 20 + 16), origTcp.readUInt16BE(20 + 16), 'quoted TCP checksum equals the original');
  t.equal(e40.ip.readUInt16BE(26), 1280, 'MTU field untouched');
  // Quoted ICMP echo (time exceeded for our ping): identifier and its checksum reverted.
  const ping = echo4(IN_A, REM_1, 8, 7777);
  const pingOut = h.one(ping, INSIDE, T0 + 5);
  const te = h.one(icmpError4(ip('192.0.2.201'), P, 11, 0, pingOut.ip), OUTSIDE, T0 + 6);
  ok(t, te, 'time exceeded quoting an echo request');
  t.equal(te.ip.readUInt16BE(28 + 20 + 4), 7777);
  t.equal(te.ip.readUInt16BE(28 + 20 + 2), ping.readUInt16BE(20 + 2), 'quoted ICMP checksum equals the original');
  t.equal(h.c('nat_icmp_error_translated'), 4);
  t.equal(h.napt.mappings, 3, 'RFC 5382 REQ-10: ICMP errors never remove a mapping');
});

t.test('RFC 5508 REQ-3: ICMP error without a matching session is dropped silently', async (t) => {
  const h = new Harness(baseConfig());
  const out = h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0);
  const P = tupleOf(out.ip).src, p = tupleOf(out.ip).sp;
  const unknownPort = udp4(P, REM_1, p ^ 2, 53);
  const otherRemote = udp4(P, REM_2, p, 53);
  const rs = h.run([icmpError4(REM_1, P, 3, 3, unknownPort), icmpError4(REM_2, P, 3, 3, otherRemote)], OUTSIDE, T0 + 1);
  t.same(rs.map((r) => r.verdict), [Verdict.DROP, Verdict.DROP]);
  t.equal(h.c('nat_icmp_error_no_mapping'), 2);
  t.equal(h.takeOriginated().length, 0, 'silently');
  // A quote too short to hold the ports.
  t.equal(h.one(icmpError4(REM_1, P, 3, 3, out.ip, 20), OUTSIDE, T0 + 2).verdict, Verdict.DROP);
  t.equal(h.c('nat_icmp_error_bad_quote'), 1);
});

t.test('RFC 5508 REQ-8: ICMP error with a bad ICMP checksum is dropped silently', async (t) => {
  const h = new Harness(baseConfig());
  const out = h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0);
  const err = icmpError4(REM_1, tupleOf(out.ip).src, 3, 3, out.ip);
  err[22] ^= 0x40;
  t.equal(h.one(err, OUTSIDE, T0 + 1).verdict, Verdict.DROP);
  t.equal(h.c('nat_icmp_error_bad_checksum'), 1);
});

t.test('RFC 5508 REQ-4: ICMP error from inside is translated (host and inside router)', async (t) => {
  const h = new Harness(baseConfig({ filtering: 'endpoint-independent' }));
  const out = h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0);
  const P = tupleOf(out.ip).src, p = tupleOf(out.ip).sp;
  const remPkt = udp4(REM_2, P, 7777, p, Buffer.from('unsolicited but EIF'));
  const delivered = h.one(remPkt, OUTSIDE, T0 + 1);
  ok(t, delivered, 'EIF delivers');
  const err = h.one(icmpError4(IN_A, REM_2, 3, 3, delivered.ip), INSIDE, T0 + 2);
  ok(t, err, 'port unreachable from A');
  t.equal(err.egress, OUTSIDE);
  t.same([tupleOf(err.ip).src, tupleOf(err.ip).dst], [P, REM_2]);
  const q = err.ip.subarray(28);
  t.same([tupleOf(q).src, tupleOf(q).sp, tupleOf(q).dst, tupleOf(q).dp], [REM_2, 7777, P, p], 'quote shows what REM_2 sent');
  t.equal(q.readUInt16BE(26), remPkt.readUInt16BE(26), 'quoted UDP checksum equals REM_2\'s original');
  // An inside router (not the host) reporting a TTL expiry: leaves from the mapping's address too.
  const rtr = h.one(icmpError4(ip('10.9.9.9'), REM_2, 11, 0, delivered.ip, 28), INSIDE, T0 + 3);
  ok(t, rtr, 'time exceeded from an inside router');
  t.equal(tupleOf(rtr.ip).src, P);
  t.equal(h.one(icmpError4(IN_A, REM_1, 3, 3, udp4(REM_1, IN_A, 1, 2)), INSIDE, T0 + 4).verdict, Verdict.DROP, 'no mapping: dropped');
  t.equal(h.c('nat_icmp_error_no_mapping'), 1);
});

t.test('RFC 6888 REQ-4: per-subscriber mapping limit, with a counter and RFC 6888 REQ-11 host unreachable', async (t) => {
  const h = new Harness(baseConfig({ maxMappingsPerSubscriber: 5 }));
  const rs = h.run([0, 1, 2, 3, 4, 5].map((k) => udp4(IN_A, REM_1, 5000 + k, 53)), INSIDE, T0);
  t.same(rs.map((r) => r.verdict), [0, 0, 0, 0, 0, Verdict.DROP]);
  t.equal(h.c('nat_drop_subscriber_limit'), 1);
  t.equal(h.napt.mappingsOf(IN_A), 5);
  t.equal(h.one(udp4(IN_B, REM_1, 5000, 53), INSIDE, T0).verdict, Verdict.FORWARD, 'other subscribers unaffected');
  t.equal(h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0).verdict, Verdict.FORWARD, 'existing mappings keep working');
  const [o] = h.takeOriginated();
  t.ok(o, 'host unreachable sent');
  t.same([o.bytes[20], o.bytes[21], o.side], [3, 1, INSIDE], 'ICMP type 3 code 1 to the inside host');
  t.same(checksumProblems(o.bytes, 'host unreachable'), []);
  h.napt.expire(T0 + 301, h.counters);
  t.equal(h.one(udp4(IN_A, REM_1, 6000, 53), INSIDE, T0 + 302).verdict, Verdict.FORWARD, 'room again once mappings expired');
  const h2 = new Harness(baseConfig({ maxMappingsPerSubscriber: 1, icmpOnResourceLimit: false }));
  h2.run([udp4(IN_A, REM_1, 1, 2), udp4(IN_A, REM_1, 3, 4)], INSIDE, T0);
  t.equal(h2.takeOriginated().length, 0, 'REQ-11b ICMP can be turned off');
});

t.test('RFC 6888: pool exhaustion is counted (and answered like any resource limit)', async (t) => {
  const h = new Harness(baseConfig({ pool: ['192.0.2.9'], portRange: { min: 1024, max: 1031 }, icmpOnResourceLimit: false }));
  // Even inside ports: only 1024, 1026, 1028, 1030 qualify (parity kept).
  const rs = h.run([0, 1, 2, 3, 4].map((k) => udp4(ip(`10.0.5.${k + 1}`), REM_1, 5000, 53)), INSIDE, T0);
  t.same(rs.map((r) => r.verdict), [0, 0, 0, 0, Verdict.DROP]);
  t.same(rs.slice(0, 4).map((r) => tupleOf(r.ip).sp).sort(), [1024, 1026, 1028, 1030]);
  t.equal(h.c('nat_drop_pool_empty'), 1);
  t.equal(h.napt.alloc.exhausted[1], 1, 'allocator counts the UDP exhaustion');
  t.equal(h.one(udp4(ip('10.0.5.9'), REM_1, 5001, 53), INSIDE, T0).verdict, Verdict.FORWARD, 'odd ports are another class');
  t.equal(h.one(tcp4(ip('10.0.5.9'), REM_1, 5000, 53, TCPF.SYN), INSIDE, T0).verdict, Verdict.FORWARD, 'TCP has its own ports');
});

t.test('RFC 6888 REQ-8 / RFC 7857: a freed port is quarantined (>= 120 s) before reuse', async (t) => {
  const h = new Harness(baseConfig({ pool: ['192.0.2.9'], portRange: { min: 1024, max: 1025 }, preserveParity: false, icmpOnResourceLimit: false }));
  const rs = h.run([udp4(IN_A, REM_1, 5000, 53), udp4(IN_B, REM_1, 5000, 53)], INSIDE, T0);
  t.same(rs.map((r) => r.verdict), [0, 0]);
  h.napt.expire(T0 + 300, h.counters);
  t.equal(h.napt.mappings, 0);
  t.equal(h.napt.alloc.quarantined, 2);
  t.equal(h.one(udp4(IN_C, REM_1, 5000, 53), INSIDE, T0 + 300 + 119).verdict, Verdict.DROP, 'both ports quarantined at +119 s');
  t.equal(h.c('nat_drop_pool_empty'), 1);
  const r = h.one(udp4(IN_C, REM_1, 5000, 53), INSIDE, T0 + 300 + 120);
  t.equal(r.verdict, Verdict.FORWARD, 'reusable at +120 s');
  // A mapping refused before its first packet left does not quarantine its port.
  const h2 = new Harness(baseConfig({ pool: ['192.0.2.9'], portRange: { min: 1024, max: 1024 }, preserveParity: false, filtering: 'address-dependent' }));
  t.equal(h2.one(udp4(IN_A, ip('192.0.2.9'), 5000, 4444), INSIDE, T0).verdict, Verdict.DROP, 'hairpin to nothing: dropped');
  t.equal(h2.napt.alloc.quarantined, 0);
  t.equal(h2.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0).verdict, Verdict.FORWARD, 'the port is free at once');
});

t.test('RFC 1812 5.3.1: TTL decremented; TTL <= 1 dropped with ICMP time exceeded', async (t) => {
  const h = new Harness(baseConfig({ insideAddress: '10.0.0.254' }));
  const r = h.one(udp4(IN_A, REM_1, 5000, 53, undefined, { ttl: 2 }), INSIDE, T0);
  ok(t, r, 'TTL 2');
  t.equal(tupleOf(r.ip).ttl, 1);
  const dead = udp4(IN_A, REM_1, 5000, 53, undefined, { ttl: 1 });
  t.equal(h.one(dead, INSIDE, T0).verdict, Verdict.DROP);
  t.equal(h.c('nat_drop_ttl_expired'), 1);
  const [o] = h.takeOriginated();
  t.same([o.bytes[20], o.bytes[21], o.side], [11, 0, INSIDE]);
  t.same([fmt(o.bytes.readUInt32BE(12)), fmt(o.bytes.readUInt32BE(16))], ['10.0.0.254', '10.0.0.1']);
  t.same(checksumProblems(o.bytes, 'time exceeded'), []);
  const P = tupleOf(r.ip).src, p = tupleOf(r.ip).sp;
  t.equal(h.one(udp4(REM_1, P, 53, p, undefined, { ttl: 0 }), OUTSIDE, T0).verdict, Verdict.DROP);
  const [o2] = h.takeOriginated();
  t.same([o2.side, o2.bytes.readUInt32BE(12), o2.bytes.readUInt32BE(16)], [OUTSIDE, P, REM_1], 'inbound: from the pool address');
  // Never an error about an error (RFC 1122 3.2.2).
  h.one(icmpError4(REM_1, P, 3, 3, r.ip, r.ip.length, 0, { ttl: 1 }), OUTSIDE, T0);
  t.equal(h.takeOriginated().length, 0);
  const h2 = new Harness(baseConfig({ decrementTtl: false }));
  t.equal(tupleOf(h2.one(udp4(IN_A, REM_1, 5000, 53, undefined, { ttl: 1 }), INSIDE, T0).ip).ttl, 1, 'decrementTtl false: untouched');
});

t.test('RFC 768: a zero UDP checksum stays zero; a computed zero is sent as 0xFFFF', async (t) => {
  const h = new Harness(baseConfig({ preservePort: true }));
  const r = h.one(udp4(IN_A, REM_1, 5000, 53, Buffer.from('no checksum'), { zero: true }), INSIDE, T0);
  ok(t, r, 'zero-checksum datagram');
  t.equal(r.ip.readUInt16BE(26), 0, 'still "no checksum"');
  // Find a payload word whose translated datagram sums to a checksum of 0.
  const P = POOL_U32[h.napt.pairedPool(IN_A)];
  let found = -1;
  for (let x = 0; x < 0x10000 && found < 0; x++) {
    const b = Buffer.alloc(10);
    b.writeUInt16BE(5002, 0); b.writeUInt16BE(53, 2); b.writeUInt16BE(10, 4); b.writeUInt16BE(x, 8);
    if (checksum(b, 0, 10, pseudoSum4(P, REM_1, 17, 10)) === 0) found = x;
  }
  t.ok(found >= 0);
  const pl = Buffer.alloc(2);
  pl.writeUInt16BE(found, 0);
  const z = h.one(udp4(IN_A, REM_1, 5002, 53, pl), INSIDE, T0);
  ok(t, z, 'datagram whose translated checksum computes to 0');
  t.equal(tupleOf(z.ip).sp, 5002, 'preservePort kept the port');
  t.equal(z.ip.readUInt16BE(26), 0xffff, 'sent as 0xFFFF');
});

t.test('verdicts: IPv6 and non-IP pass, spoofed and stray packets dropped with their counter', async (t) => {
  const h = new Harness(baseConfig());
  const rs = h.run([
    udp4(ip('172.16.0.1'), REM_1, 1, 2),          // inside side, source not inside
    udp4(REM_1, ip('192.0.2.77'), 1, 2),          // outside side, not a pool address
    ipv4Packet(IN_A, REM_1, 47, Buffer.alloc(8)), // GRE
    udp4(IN_A, REM_1, 1, 2).subarray(0, 24),       // cut inside the UDP header
  ], [INSIDE, OUTSIDE, INSIDE, INSIDE], T0);
  t.same(rs.map((r) => r.verdict), [Verdict.DROP, Verdict.DROP, Verdict.DROP, Verdict.DROP]);
  t.same([h.c('nat_drop_not_inside'), h.c('nat_drop_not_pool'), h.c('nat_drop_unsupported_proto'), h.c('nat_drop_no_ports') + h.c('nat_drop_bad_packet')], [1, 1, 1, 1]);
  // IPv6 frame: left untouched.
  const b = h.batch, meta = h.meta;
  b.clear();
  const v6 = Buffer.alloc(14 + 48);
  v6.writeUInt16BE(0x86dd, 12);
  v6[14] = 0x60; v6.writeUInt16BE(8, 18); v6[20] = 17; v6[21] = 64;
  b.push(v6, 0, v6.length, v6.length, T0, 0, 1, 0);
  const { parseBatch } = await import('../../src/wire/parse.js');
  parseBatch(b, meta);
  h.napt.translateBatch(b, meta, null, T0, h.counters, null);
  t.equal(b.verdict[0], Verdict.FORWARD);
  t.equal(h.c('nat_passthrough_not_ipv4'), 1);
  // A packet another stage dropped is not touched.
  b.clear();
  const f = Buffer.concat([Buffer.from('0200000000020200000000010800', 'hex'), udp4(IN_A, REM_1, 1, 2)]);
  b.push(f, 0, f.length, f.length, T0, 0, 1, 0);
  b.verdict[0] = Verdict.DROP;
  parseBatch(b, meta);
  h.napt.translateBatch(b, meta, null, T0, h.counters, null);
  t.equal(h.napt.mappings, 0);
});

t.test('translateBatch without dirOf uses batch.port (0 = inside) and updates Meta', async (t) => {
  const h = new Harness(baseConfig());
  const b = h.batch, meta = h.meta;
  const { parseBatch } = await import('../../src/wire/parse.js');
  b.clear();
  const f = Buffer.concat([Buffer.from('0200000000020200000000010800', 'hex'), udp4(IN_A, REM_1, 5000, 53)]);
  b.push(f, 0, f.length, f.length, T0, 0, 1, 0);
  parseBatch(b, meta);
  h.napt.translateBatch(b, meta, null, T0, h.counters);
  t.equal(b.verdict[0], Verdict.FORWARD);
  t.ok(POOL_U32.includes(meta.src4[0]), 'Meta src4 holds the translated address');
  t.equal(meta.srcPort[0], h.napt.outsidePortOf(h.napt.mappingOf[0]));
  t.equal(h.napt.egress[0], OUTSIDE);
});

t.test('listMappings returns plain objects for `portcullis nat list`', async (t) => {
  const h = new Harness(baseConfig());
  const r = h.one(udp4(IN_A, REM_1, 5000, 53), INSIDE, T0);
  h.one(udp4(REM_1, tupleOf(r.ip).src, 53, tupleOf(r.ip).sp), OUTSIDE, T0 + 2);
  const [m] = h.napt.listMappings(T0 + 5);
  t.match(m, {
    proto: 'udp', insideAddress: '10.0.0.1', insidePort: 5000, outsideAddress: fmt(tupleOf(r.ip).src), outsidePort: tupleOf(r.ip).sp,
    state: 'active', createdAt: T0, idle: 3, expiresAt: T0 + 302,
  });
  t.same(m.remotes, [{ address: '203.0.113.10', port: 53, state: 'active', outbound: true, packetsOut: 1, packetsIn: 1, idle: 3, expiresAt: T0 + 302 }]);
  t.same(JSON.parse(JSON.stringify(m)), m, 'JSON-safe');
  t.match(h.napt.stats(), { mappings: 1, sessions: 1, subscribers: 1 });
});

t.test('config errors name the key and what was expected', async (t) => {
  t.throws(() => new Napt({ insidePrefixes: [], pool: POOL }), /nat\.insidePrefixes/);
  t.throws(() => new Napt(baseConfig({ insidePrefixes: ['10.0.0.0/33'] })), /nat\.insidePrefixes\[0\]/);
  t.throws(() => new Napt(baseConfig({ pool: ['192.0.2.1', 'nope'] })), /nat\.pool\[1\]/);
  t.throws(() => new Napt(baseConfig({ pool: ['10.1.1.1'] })), /lies inside/);
  t.throws(() => new Napt(baseConfig({ filtering: 'full-cone' as never })), /nat\.filtering/);
  t.throws(() => new Napt(baseConfig({ capacity: 1000 })), /nat\.capacity/);
  t.throws(() => new Napt(baseConfig({ outsideMtu: 40 })), /nat\.outsideMtu/);
  const n = new Napt(baseConfig({ pool: '198.51.100.0/29' }));
  t.equal(n.pool.length, 6, 'a /29 gives 6 addresses (network and broadcast left out)');
  t.equal(fmt(n.pool[0]), '198.51.100.1');
});

t.test('churn: thousands of short mappings expire, tables and subscribers return to empty', async (t) => {
  const h = new Harness(baseConfig({ capacity: 4096, sweepBudget: 64 }));
  let now = T0;
  for (let round = 0; round < 40; round++) {
    const pkts: Buffer[] = [];
    for (let k = 0; k < 50; k++) pkts.push(udp4(ip(`10.1.${round}.${k + 1}`), REM_1, 1024 + k * 2, 53));
    const rs = h.run(pkts, INSIDE, now);
    t.ok(rs.every((r) => r.verdict === Verdict.FORWARD), `round ${round}`);
    now += 10;
  }
  t.equal(h.napt.mappings, 2000);
  for (let k = 0; k < 400; k++) h.run([], INSIDE, now + 400 + k); // the sweep alone, bounded per batch
  t.equal(h.napt.mappings, 0, 'swept');
  t.equal(h.napt.sessions, 0);
  t.equal(h.napt.subscribers, 0);
  t.equal(h.c('nat_mapping_expired'), 2000);
});
