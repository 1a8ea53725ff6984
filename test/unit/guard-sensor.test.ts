// The guard's sensor on crafted packets through the real parser: what counts
// as an attempt, suspicious fragments (RFC 1858, RFC 3128), the assembly of
// a SYN split over fragments, IPv6, the address table when full, the
// enforcement table and resets, and completions / closes from the flow table.
import t from 'tap';
import { Address6 } from 'ip-address';
import { Counters } from '../../src/counters.js';
import { Verdict } from '../../src/io/batch.js';
import { MetaFlag } from '../../src/wire/meta.js';
import { FlowTable } from '../../src/flow/flow-table.js';
import { GuardSensor } from '../../src/guard/sensor.js';
import { Blocklist } from '../../src/guard/blocklist.js';
import { parsePrefix } from '../../src/guard/addr.js';
import type { BlockEntry } from '../../src/guard/bus.js';
import { tcpSeg } from '../fixtures/packets.js';
import { SYN, ACK, RST, FIN, tcp4, tcp6, udp4, tcp4Frags, tcp6Frags, frag4, parsed, load } from './guard-helpers.js';

function sensor(opts: ConstructorParameters<typeof GuardSensor>[0] = {}) {
  const counters = new Counters();
  const s = new GuardSensor({ seed: 5, ...opts }, counters);
  return { s, counters, c: (n: Parameters<Counters['get']>[0]) => counters.get(n) };
}

function byAddr(s: GuardSensor) {
  const b = s.flush('n1', 1, 0);
  return Object.fromEntries(b.deltas.map((d) => [d.addr, d]));
}

t.test('a SYN without ACK is an attempt; SYN-ACK, ACK, RST, FIN and UDP are not', async (t) => {
  const { s, c } = sensor();
  const { batch, meta } = parsed([
    tcp4('198.18.1.2', '198.19.1.2', 40000, 80, SYN),
    tcp4('198.18.1.2', '198.19.1.2', 40001, 80, SYN),
    tcp4('198.19.1.2', '198.18.1.2', 80, 40000, SYN | ACK),
    tcp4('198.18.1.3', '198.19.1.2', 40000, 80, ACK),
    tcp4('198.18.1.3', '198.19.1.2', 40000, 80, RST),
    tcp4('198.18.1.3', '198.19.1.2', 40000, 80, FIN | ACK),
    tcp4('198.18.1.4', '198.19.1.2', 40000, 80, SYN | RST),
    udp4('198.18.1.5', '198.19.1.2'),
  ]);
  s.inspect(batch, meta, 1000);
  t.equal(c('guard_attempts'), 3, 'two SYNs from .2 and a SYN+RST from .4 (SYN set, ACK not)');
  const d = byAddr(s);
  t.same(Object.keys(d).sort(), ['198.18.1.2', '198.18.1.4']);
  t.equal(d['198.18.1.2'].attempts, 2);
  t.equal(d['198.18.1.2'].suspicious, 0);
  t.same([...batch.verdict.subarray(0, 8)], new Array(8).fill(Verdict.FORWARD), 'nothing dropped');
  t.same(s.flush('n1', 2, 0).deltas, [], 'the table is empty after a flush');
});

t.test('IPv6 sources are counted under their RFC 5952 text', async (t) => {
  const { s } = sensor();
  const a = 'fd00:0:0:1::2';
  const { batch, meta } = parsed([tcp6(a, 'fd00::9', 1234, 443, SYN), tcp6(a, 'fd00::9', 1235, 443, SYN), tcp6('fd00::9', a, 443, 1234, SYN | ACK)]);
  s.inspect(batch, meta, 1000);
  const d = byAddr(s);
  const text = new Address6(a).correctForm();
  t.same(Object.keys(d), [text]);
  t.equal(d[text].attempts, 2);
});

t.test('a tiny first fragment and a fragment at offset 1 are suspicious, dropped, and their SYN is assembled', async (t) => {
  const { s, c } = sensor();
  // The RFC 1858 split (also what hping3 -m 8 sends): 8 bytes | 8 bytes (holding the flags) | 4 bytes.
  const frags = tcp4Frags('198.18.3.2', '198.19.1.2', SYN, [8, 16]);
  const { batch, meta } = parsed(frags);
  t.equal(meta.fragOff[1], 1);
  s.inspect(batch, meta, 1000);
  t.equal(c('guard_suspicious'), 2, 'the 8-byte first fragment and the offset-1 fragment');
  t.equal(c('guard_suspicious_drop'), 2);
  t.equal(batch.verdict[0], Verdict.DROP);
  t.equal(batch.verdict[1], Verdict.DROP);
  t.equal(batch.verdict[2], Verdict.FORWARD, 'the fragment at offset 2 is not suspicious');
  t.equal(meta.flags[0] & MetaFlag.L3, 0, 'a dropped packet is withdrawn from later stages');
  t.equal(c('guard_attempts'), 1, 'the SYN split over the fragments is counted');
  t.equal(c('guard_assembled_syn'), 1);
  const d = byAddr(s)['198.18.3.2'];
  t.same({ a: d.attempts, s: d.suspicious }, { a: 1, s: 2 });
});

t.test('fragment order does not matter, duplicates count once, and the policy can keep suspicious fragments', async (t) => {
  const { s, c } = sensor({ dropSuspicious: false });
  const f = tcp4Frags('198.18.3.2', '198.19.1.2', SYN, [8, 16]);
  const { batch, meta } = parsed([f[2], f[1], f[1], f[0]]);
  s.inspect(batch, meta, 1000);
  t.equal(c('guard_attempts'), 1);
  t.equal(c('guard_suspicious'), 3, 'offset 1 twice and the tiny first fragment');
  t.equal(c('guard_suspicious_drop'), 0);
  t.same([...batch.verdict.subarray(0, 4)], [0, 0, 0, 0]);
});

t.test('a split ACK is not an attempt; non-first fragments alone count nothing', async (t) => {
  const { s, c } = sensor();
  const { batch, meta } = parsed([
    ...tcp4Frags('198.18.3.2', '198.19.1.2', ACK, [8, 16]),
    // a large datagram's later fragments: offsets past the TCP header
    frag4('198.18.3.3', '198.19.1.2', Buffer.alloc(64, 2), 185, true, 9),
    frag4('198.18.3.3', '198.19.1.2', Buffer.alloc(64, 2), 370, false, 9),
  ]);
  s.inspect(batch, meta, 1000);
  t.equal(c('guard_attempts'), 0);
  t.equal(c('guard_suspicious'), 2, 'only the tiny fragments of the split ACK');
  t.equal(batch.verdict[3], Verdict.FORWARD);
  t.equal(batch.verdict[4], Verdict.FORWARD);
});

t.test('a first fragment that holds the whole header is an ordinary attempt', async (t) => {
  const { s, c } = sensor();
  const seg = tcpSeg(40000, 80, SYN, Buffer.alloc(40, 1));
  const { batch, meta } = parsed([frag4('198.18.4.2', '198.19.1.2', seg.subarray(0, 24), 0, true, 3), frag4('198.18.4.2', '198.19.1.2', seg.subarray(24), 3, false, 3)]);
  s.inspect(batch, meta, 1000);
  t.equal(c('guard_attempts'), 1);
  t.equal(c('guard_assembled_syn'), 0);
  t.equal(c('guard_suspicious'), 0);
  t.equal(batch.verdict[0], Verdict.FORWARD);
});

t.test('RFC 3128: an offset-1 fragment rewriting the flags of an ACK into a SYN is counted (overlap)', async (t) => {
  const { s, c } = sensor();
  const ackSeg = tcpSeg(40000, 80, ACK, Buffer.alloc(16, 0x61));
  const synSeg = tcpSeg(40000, 80, SYN, Buffer.alloc(16, 0x61));
  const { batch, meta } = parsed([
    frag4('198.18.5.2', '198.19.1.2', ackSeg.subarray(0, 24), 0, true, 11),
    frag4('198.18.5.2', '198.19.1.2', synSeg.subarray(8, 16), 1, true, 11),
    frag4('198.18.5.2', '198.19.1.2', ackSeg.subarray(24), 3, false, 11),
  ]);
  s.inspect(batch, meta, 1000);
  t.equal(c('guard_frag_overlap'), 1);
  t.equal(c('guard_suspicious'), 1, 'the offset-1 fragment');
  t.equal(c('guard_attempts'), 1, 'the SYN the receiver may reassemble');
  // And the other order: the SYN bytes come first and are overwritten by the ACK's.
  const o = sensor();
  const p = parsed([
    frag4('198.18.5.2', '198.19.1.2', synSeg.subarray(8, 16), 1, true, 12),
    frag4('198.18.5.2', '198.19.1.2', ackSeg.subarray(0, 24), 0, true, 12),
  ]);
  o.s.inspect(p.batch, p.meta, 1000);
  t.equal(o.c('guard_attempts'), 1, 'either copy may win: the SYN still counts');
});

t.test('IPv6: a tiny first fragment and an offset-1 fragment assemble a SYN', async (t) => {
  const { s, c } = sensor();
  const { batch, meta } = parsed(tcp6Frags('fd00::3', 'fd00::9', SYN, [8, 16]));
  s.inspect(batch, meta, 1000);
  t.equal(c('guard_suspicious'), 2);
  t.equal(c('guard_attempts'), 1);
  t.equal(c('guard_assembled_syn'), 1);
  t.equal(byAddr(s)['fd00::3'].attempts, 1);
});

t.test('a train is over once its data covers the datagram: the next SYN reusing the identification counts again (hping3 -m 8)', async (t) => {
  const { s, c } = sensor();
  const pkts: Buffer[] = [];
  for (let k = 0; k < 3; k++) pkts.push(...tcp4Frags('198.18.3.3', '198.19.1.2', SYN, [8, 16], 0x1111, { sp: 2000 + k }));
  const { batch, meta } = parsed(pkts);
  s.inspect(batch, meta, 1000);
  t.equal(c('guard_attempts'), 3);
  t.equal(c('guard_suspicious'), 6);
  t.equal(s.stats().guard_sensor_frag_trains, 0, 'every train released');
});

t.test('fragment trains expire after fragTimeout', async (t) => {
  const { s, c } = sensor({ fragTimeoutSec: 5 });
  const f = tcp4Frags('198.18.3.2', '198.19.1.2', SYN, [8, 16]);
  const a = parsed([f[0]]);
  s.inspect(a.batch, a.meta, 1000);
  const b = parsed([f[1]]);
  s.inspect(b.batch, b.meta, 1010);
  t.equal(c('guard_attempts'), 0, 'the first fragment was forgotten before the second came');
});

t.test('the address table refuses new addresses when full, and counts it', async (t) => {
  const { s, c } = sensor({ capacity: 16, probe: 16 });
  const pkts: Buffer[] = [];
  for (let i = 0; i < 40; i++) pkts.push(tcp4(`198.18.${i}.1`, '198.19.1.2', 40000, 80, SYN));
  const { batch, meta } = parsed(pkts);
  s.inspect(batch, meta, 1000);
  const b = s.flush('n', 1, 0);
  t.equal(b.deltas.length, 16);
  t.equal(c('guard_table_full'), 24);
  t.equal(b.deltas.reduce((x, d) => x + d.attempts, 0) + c('guard_table_full'), 40, 'every attempt is either counted or refused with the counter');
  t.equal(c('guard_attempts'), 40);
});

function entry(addr: string, until = 0): BlockEntry {
  return { addr, until, rule: 'manual', score: 0, nodes: [], offences: 1, at: 0 };
}

t.test('blocked sources are dropped first, counted, not tracked and not counted as attempts; the allow list exempts', async (t) => {
  const { s, c } = sensor();
  const bl = new Blocklist();
  bl.rebuild([entry('198.18.1.66'), entry('198.18.7.0/24'), entry('fd00::66')], [parsePrefix('198.18.7.7')!]);
  s.blocklist = bl;
  const { batch, meta } = parsed([
    tcp4('198.18.1.66', '198.19.1.2', 40000, 80, SYN),
    tcp4('198.18.7.9', '198.19.1.2', 40000, 80, SYN),
    tcp4('198.18.7.7', '198.19.1.2', 40000, 80, SYN),
    tcp6('fd00::66', 'fd00::9', 1, 2, SYN),
    udp4('198.18.1.66', '198.19.1.2'),
    tcp4('198.18.1.67', '198.19.1.2', 40000, 80, SYN),
  ]);
  s.inspect(batch, meta, 1000);
  t.same([...batch.verdict.subarray(0, 6)], [Verdict.DROP, Verdict.DROP, Verdict.FORWARD, Verdict.DROP, Verdict.DROP, Verdict.FORWARD]);
  t.equal(c('guard_blocked_drop'), 4);
  t.equal(c('guard_allow_exempt'), 1, '198.18.7.7 is allow-listed inside the blocked /24');
  t.same(Object.keys(byAddr(s)).sort(), ['198.18.1.67', '198.18.7.7']);
  t.same(bl.list().map((e) => [e.addr, e.drops]), [['198.18.1.66', 2], ['198.18.7.0/24', 1], ['fd00::66', 1]]);
  const flows = new FlowTable({ capacity: 1024, seed: 1 }, new Counters());
  flows.trackBatch(batch, meta, new Counters());
  t.same([...flows.flowOf.subarray(0, 6)].map((f) => f >= 0), [false, false, true, false, false, true], 'no flow for a dropped packet');
});

t.test('guard.rst: a blocked SYN is answered with RST+ACK (RFC 9293 3.10.7.1), rate limited', async (t) => {
  const { s, c } = sensor({ rst: true, rstRate: 2 });
  const bl = new Blocklist();
  bl.rebuild([entry('198.18.1.66')], []);
  s.blocklist = bl;
  const { batch, meta } = parsed([
    tcp4('198.18.1.66', '198.19.1.2', 40000, 80, SYN, { seq: 5000 }),
    tcp4('198.18.1.66', '198.19.1.2', 40000, 80, ACK),
    tcp4('198.18.1.66', '198.19.1.2', 40001, 80, SYN),
    tcp4('198.18.1.66', '198.19.1.2', 40002, 80, SYN),
  ]);
  s.inspect(batch, meta, 1000);
  const out = s.rstOut;
  t.equal(out.count, 2, 'two tokens: two resets');
  t.equal(c('guard_blocked_rst'), 2);
  t.equal(c('guard_rst_limited'), 1, 'the third SYN found no token (the ACK gets nothing)');
  const r = parsed([Buffer.from(out.arena.subarray(out.off[0], out.off[0] + out.capLen[0]))]);
  const m = r.meta;
  t.equal(m.src4[0] >>> 0, 0xc6130102, 'from the server the SYN was for');
  t.equal(m.dst4[0] >>> 0, 0xc6120142);
  t.same([m.srcPort[0], m.dstPort[0]], [80, 40000]);
  t.equal(m.tcpFlags[0], RST | ACK);
  const o = out.off[0] + 20;
  t.equal(out.arena.readUInt32BE(o + 8), 5001, 'acknowledges SEG.SEQ + 1');
});

t.test('completions and closes come from the flow table; concurrent = completed - closed', async (t) => {
  const counters = new Counters();
  const s = new GuardSensor({ seed: 3, synTimeoutSec: 3 }, counters);
  const flows = new FlowTable({ capacity: 1024, seed: 1 }, counters);
  const C = '198.18.1.2', S = '198.19.1.2';
  const run = (pkts: Buffer[], at: number) => {
    const { batch, meta } = parsed(pkts, at);
    s.inspect(batch, meta, at);
    flows.trackBatch(batch, meta, counters);
    s.afterTrack(flows);
  };
  // Connection 1: full handshake; connection 2: refused (RST); connection 3: no answer at all.
  run([tcp4(C, S, 1001, 80, SYN), tcp4(C, S, 1002, 80, SYN), tcp4(C, S, 1003, 80, SYN), tcp4(C, S, 1001, 80, SYN)], 100);
  t.equal(s.openMarks, 3, 'three connections (the retransmitted SYN is the same one)');
  run([tcp4(S, C, 80, 1001, SYN | ACK), tcp4(C, S, 1001, 80, ACK), tcp4(C, S, 1001, 80, ACK | PSH_), tcp4(S, C, 80, 1002, RST | ACK)], 100.1);
  s.sweep(flows);
  let d = s.flush('n', 1, 0).deltas.find((x) => x.addr === C)!;
  t.same({ a: d.attempts, done: d.completed, closed: d.closed }, { a: 4, done: 1, closed: 0 });
  t.equal(s.openMarks, 2, 'the refused one is over');
  run([tcp4(C, S, 1001, 80, FIN | ACK), tcp4(S, C, 80, 1001, FIN | ACK)], 101);
  s.sweep(flows);
  d = s.flush('n', 2, 0).deltas.find((x) => x.addr === C)!;
  t.same({ a: d.attempts, done: d.completed, closed: d.closed }, { a: 0, done: 0, closed: 1 }, 'closed once both sides sent FIN');
  run([udp4('198.18.9.9', S)], 110);
  s.sweep(flows);
  t.equal(s.openMarks, 0, 'the unanswered SYN is given up after synTimeout');
  t.same(s.flush('n', 3, 0).deltas, []);
});
const PSH_ = 0x08;

t.test('a completed handshake that ends within one interval is still seen as completed and closed', async (t) => {
  const counters = new Counters();
  const s = new GuardSensor({ seed: 3 }, counters);
  const flows = new FlowTable({ capacity: 1024, seed: 1 }, counters);
  const C = '198.18.1.2', S = '198.19.1.2';
  const { batch, meta } = parsed([
    tcp4(C, S, 2001, 80, SYN), tcp4(S, C, 80, 2001, SYN | ACK), tcp4(C, S, 2001, 80, ACK),
    tcp4(C, S, 2001, 80, FIN | ACK), tcp4(S, C, 80, 2001, FIN | ACK), tcp4(C, S, 2001, 80, ACK),
  ], 50);
  // Packet by packet, as the data path would see them in separate batches.
  for (let i = 0; i < batch.count; i++) {
    const one = parsed([Buffer.from(batch.arena.subarray(batch.off[i], batch.off[i] + batch.capLen[i]))], 50 + i * 0.001);
    s.inspect(one.batch, one.meta, 50);
    flows.trackBatch(one.batch, one.meta, counters);
    s.afterTrack(flows);
  }
  void meta;
  s.sweep(flows);
  const d = s.flush('n', 1, 0).deltas[0];
  t.same({ a: d.attempts, done: d.completed, closed: d.closed }, { a: 1, done: 1, closed: 1 });
});

t.test('behind a NAT the replies are another flow: the originator\'s ACK still tells the handshake completed', async (t) => {
  const counters = new Counters();
  const s = new GuardSensor({ seed: 3 }, counters);
  const flows = new FlowTable({ capacity: 1024, seed: 1 }, counters);
  const C = '198.18.1.2', S = '198.19.1.2', POOL = '198.19.2.1';
  const step = (pkts: Buffer[], at: number) => {
    const p = parsed(pkts, at);
    s.inspect(p.batch, p.meta, at);
    flows.trackBatch(p.batch, p.meta, counters);
    s.afterTrack(flows);
  };
  // The appliance sees the client's packets untranslated and the server's addressed to the pool.
  step([tcp4(C, S, 3001, 80, SYN), tcp4(S, POOL, 80, 61001, SYN | ACK), tcp4(C, S, 3001, 80, ACK)], 10);
  step([tcp4(C, S, 3002, 80, SYN), tcp4(S, POOL, 80, 61002, SYN | ACK)], 10.1);
  // A spoofed-looking flow: SYN, then the originator's RST (what its kernel says to the SYN-ACK).
  step([tcp4(C, S, 3003, 80, SYN), tcp4(C, S, 3003, 80, RST)], 10.2);
  s.sweep(flows);
  let d = s.flush('n', 1, 0).deltas.find((x) => x.addr === C)!;
  t.same({ a: d.attempts, done: d.completed, closed: d.closed }, { a: 3, done: 1, closed: 0 });
  step([tcp4(C, S, 3001, 80, FIN | ACK)], 11);
  s.sweep(flows);
  d = s.flush('n', 2, 0).deltas.find((x) => x.addr === C)!;
  t.same({ done: d.completed, closed: d.closed }, { done: 0, closed: 1 }, 'the originator\'s FIN ends it');
});

t.test('inspect in ranges equals inspect of the whole batch (the replay splits batches at interval boundaries)', async (t) => {
  const pkts: Buffer[] = [];
  for (let i = 0; i < 50; i++) pkts.push(tcp4(`198.18.${i % 7}.1`, '198.19.1.2', 40000 + i, 80, i % 3 ? SYN : ACK));
  const a = sensor(), b = sensor();
  const pa = parsed(pkts), pb = parsed(pkts);
  a.s.inspect(pa.batch, pa.meta, 1);
  b.s.inspect(pb.batch, pb.meta, 1, 0, 17);
  b.s.inspect(pb.batch, pb.meta, 1, 17, 50);
  const norm = (s: GuardSensor) => s.flush('n', 1, 0).deltas.sort((x, y) => (x.addr < y.addr ? -1 : 1));
  t.same(norm(b.s), norm(a.s));
  void load;
});
