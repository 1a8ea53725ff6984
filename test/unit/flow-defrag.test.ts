import t from 'tap';
import { Counters } from '../../src/counters.js';
import { Batch } from '../../src/io/batch.js';
import { Meta } from '../../src/wire/meta.js';
import { FlowTable, type FlowTableOptions } from '../../src/flow/flow-table.js';
import { FragTable } from '../../src/flow/defrag.js';
import { fillBatch, type TestPkt } from './flow-fixture.js';

const UDP = 17, TCP = 6;

function setup(opts: Partial<FlowTableOptions> = {}) {
  const counters = new Counters();
  const table = new FlowTable({ capacity: 1024, seed: 99, ...opts }, counters);
  const batch = new Batch(256, 256 * 128);
  const meta = new Meta(256);
  const run = (pkts: TestPkt[]): number[] => {
    fillBatch(batch, meta, pkts);
    table.trackBatch(batch, meta, counters);
    return Array.from(table.flowOf.subarray(0, pkts.length));
  };
  return { counters, table, run };
}

/** A datagram of `frags` fragments of 8*`unit` data bytes each, fragment i at offset i*unit. */
function train(src: string, dst: string, id: number, frags: number, time: number, opt: { sport?: number; dport?: number; proto?: number; unit?: number; len?: number } = {}): TestPkt[] {
  const unit = opt.unit ?? 185; // 1480 bytes
  const out: TestPkt[] = [];
  for (let i = 0; i < frags; i++) {
    const first = i === 0;
    out.push({
      src, dst, proto: opt.proto ?? UDP, t: time,
      frag: { off: i * unit, id, mf: i < frags - 1 },
      l4Len: unit * 8,
      len: opt.len ?? 1514,
      ...(first ? { sport: opt.sport ?? 5000, dport: opt.dport ?? 4789 } : {}),
    });
  }
  return out;
}

t.test('in-order fragments are credited to the flow of their first fragment', async (t) => {
  const { run, counters, table } = setup();
  const ids = run(train('10.0.0.1', '10.0.0.2', 0x4242, 4, 1));
  t.ok(ids[0] >= 0);
  t.same(ids, [ids[0], ids[0], ids[0], ids[0]]);
  t.equal(table.packets(ids[0], 0), 4);
  t.equal(table.bytes(ids[0], 0), 4 * 1514);
  t.equal(counters.get('frag_tracked'), 1);
  t.equal(counters.get('frag_matched'), 3);
  t.equal(counters.get('frag_unmatched'), 0);
  t.equal(counters.get('flow_not_tracked'), 0);
  t.equal(table.frags!.size, 0, 'a complete train frees its entry at once');
  // A reply fragment train goes the other way, still the same flow, server direction.
  const back = train('10.0.0.2', '10.0.0.1', 0x0101, 2, 2, { sport: 4789, dport: 5000 });
  const ids2 = run(back);
  t.same(ids2, [ids[0], ids[0]]);
  t.equal(table.packets(ids[0], 1), 2);
});

t.test('the same id from another source or protocol is another train', async (t) => {
  const { run } = setup();
  const a = run(train('10.0.0.1', '10.0.0.2', 7, 2, 1).slice(0, 1));
  const ids = run([
    { src: '10.0.0.3', dst: '10.0.0.2', proto: UDP, t: 1, frag: { off: 185, id: 7, mf: false }, l4Len: 100 },
    { src: '10.0.0.1', dst: '10.0.0.2', proto: TCP, t: 1, frag: { off: 185, id: 7, mf: false }, l4Len: 100 },
    { src: '10.0.0.1', dst: '10.0.0.2', proto: UDP, t: 1, frag: { off: 185, id: 7, mf: false }, l4Len: 100 },
  ]);
  t.same(ids, [-1, -1, a[0]]);
});

t.test('out of order: fragments before their first are credited when it arrives', async (t) => {
  const { run, counters, table } = setup();
  const tr = train('192.0.2.1', '192.0.2.2', 0xbeef, 3, 10);
  const early = run([tr[2], tr[1]]);
  t.same(early, [-1, -1], 'no flow yet');
  t.equal(counters.get('flow_not_tracked'), 2);
  t.equal(table.frags!.pending, 1);
  const [f] = run([tr[0]]);
  t.ok(f >= 0);
  t.equal(table.packets(f, 0), 3, 'the early fragments are counted in the flow');
  t.equal(table.bytes(f, 0), 3 * 1514);
  t.equal(counters.get('frag_matched'), 2);
  t.equal(counters.get('frag_unmatched'), 0);
  t.equal(table.frags!.pending, 0);
  t.equal(table.frags!.size, 0, 'all data seen: entry freed');
});

t.test('unmatched: a pending train whose first fragment never comes is counted when it expires', async (t) => {
  const { run, counters, table } = setup({ fragTimeout: 30 });
  const tr = train('192.0.2.1', '192.0.2.2', 0x1111, 4, 100);
  run([tr[1], tr[2], tr[3]]);
  t.equal(counters.get('frag_unmatched'), 0);
  run([{ src: '10.0.0.1', dst: '10.0.0.2', proto: UDP, sport: 1, dport: 2, t: 131 }]);
  table.frags!.expireAll(131);
  t.equal(counters.get('frag_unmatched'), 3);
  t.equal(table.frags!.size, 0);
  // The first fragment after the timeout starts a train of its own.
  const [f] = run([tr[0]]);
  t.ok(f >= 0);
  t.equal(table.packets(f, 0), 1);
});

t.test('a train is forgotten after its timeout; later fragments are pending again', async (t) => {
  const { run, counters } = setup({ fragTimeout: 30 });
  const tr = train('10.0.0.1', '10.0.0.2', 5, 3, 100);
  const [f] = run([tr[0]]);
  t.equal(run([{ ...tr[1], t: 129 }])[0], f);
  t.equal(run([{ ...tr[2], t: 131 }])[0], -1, 'past 30 s from the first fragment');
  t.equal(counters.get('frag_matched'), 1);
});

t.test('IPv6 fragments: 32-bit identification', async (t) => {
  const { run, table } = setup();
  const a = train('2001:db8::1', '2001:db8::2', 0xfedcba98, 3, 1);
  const b = train('2001:db8::1', '2001:db8::2', 0x7edcba98, 2, 1, { sport: 6000 });
  const ids = run([a[0], b[0], a[2], b[1], a[1]]);
  t.ok(ids[0] >= 0 && ids[1] >= 0 && ids[0] !== ids[1]);
  t.same(ids, [ids[0], ids[1], ids[0], ids[1], ids[0]]);
  t.equal(table.packets(ids[0], 0), 3);
  t.equal(table.packets(ids[1], 0), 2);
});

t.test('a flow id reused since the first fragment is not credited', async (t) => {
  const { run, counters, table } = setup();
  const tr = train('10.0.0.1', '10.0.0.2', 9, 3, 1);
  const [f] = run([tr[0]]);
  table.remove(f);
  const [g] = run([{ src: '10.0.0.5', dst: '10.0.0.6', proto: UDP, sport: 1, dport: 2, t: 2 }]);
  t.equal(g, f, 'the record was reused');
  t.equal(run([tr[1]])[0], -1);
  t.equal(counters.get('frag_unmatched'), 1);
  t.equal(table.packets(g, 0), 1);
});

t.test('fragment table full is counted; memory stays fixed under a flood of unique ids', async (t) => {
  const { run, counters, table } = setup({ fragCapacity: 64 });
  const frags = table.frags!;
  const mem = table.memoryBytes();
  // Non-first fragments with fresh ids: PENDING entries, at most half the table.
  for (let round = 0; round < 20; round++) {
    const pkts: TestPkt[] = [];
    for (let i = 0; i < 200; i++) {
      pkts.push({ src: '203.0.113.66', dst: '10.0.0.2', proto: UDP, t: 5, frag: { off: 1 + (i % 3), id: round * 200 + i, mf: true }, l4Len: 8 });
    }
    t.same(run(pkts).filter((x) => x !== -1), []);
  }
  t.equal(frags.pending, frags.pendingLimit, 'pending entries are capped');
  t.ok(counters.get('frag_table_full') > 0);
  t.equal(table.memoryBytes(), mem, 'no growth');
  // Legitimate trains still get in: a first fragment may take a PENDING slot.
  const legit = train('10.0.0.1', '10.0.0.2', 0x5151, 3, 6);
  const ids = run(legit);
  t.ok(ids[0] >= 0);
  t.same(ids, [ids[0], ids[0], ids[0]]);
  // Fill with first fragments whose trains never complete, until refusals appear.
  const before = counters.get('frag_table_full');
  const firsts: TestPkt[] = [];
  for (let i = 0; i < 150; i++) firsts.push(...train('10.0.1.1', '10.0.0.2', 20000 + i, 2, 7, { sport: 1000 + i }).slice(0, 1));
  run(firsts);
  t.ok(frags.size <= frags.capacity);
  t.ok(counters.get('frag_table_full') > before, 'a full table refuses new trains with frag_table_full');
  t.equal(frags.pending, 0, 'first fragments pushed the pending flood out');
  // Expired entries are reclaimed by the amortised sweep.
  for (let i = 0; i < 4; i++) run([{ src: '10.9.9.9', dst: '10.0.0.2', proto: UDP, sport: 1, dport: 1, t: 100 + i }]);
  t.equal(frags.size, 0, 'sweep emptied the table after the timeout');
});

t.test('hostile fragments: overlaps, offset 1, duplicates, tiny first fragments do not crash or leak', async (t) => {
  const { run, counters, table } = setup({ fragCapacity: 32 });
  const pkts: TestPkt[] = [
    { src: '10.0.0.1', dst: '10.0.0.2', proto: TCP, sport: 1, dport: 80, tcp: 0x02, t: 1, frag: { off: 0, id: 1, mf: true }, l4Len: 16 },
    { src: '10.0.0.1', dst: '10.0.0.2', proto: TCP, t: 1, frag: { off: 1, id: 1, mf: true }, l4Len: 16 }, // RFC 1858 offset 1
    { src: '10.0.0.1', dst: '10.0.0.2', proto: TCP, t: 1, frag: { off: 1, id: 1, mf: true }, l4Len: 16 }, // duplicate
    { src: '10.0.0.1', dst: '10.0.0.2', proto: TCP, t: 1, frag: { off: 2, id: 1, mf: false }, l4Len: 0 }, // overlap, ends the datagram
    { src: '10.0.0.1', dst: '10.0.0.2', proto: TCP, t: 1, frag: { off: 2, id: 1, mf: false }, l4Len: 8 },
    { src: '10.0.0.1', dst: '10.0.0.2', proto: TCP, t: 1, frag: { off: 0, id: 2, mf: true }, l4Len: 4, noPorts: true }, // tiny first
    { src: '10.0.0.1', dst: '10.0.0.2', proto: TCP, t: 1, frag: { off: 8191, id: 2, mf: false }, l4Len: 65000 },
  ];
  const ids = run(pkts);
  t.ok(ids[0] >= 0);
  t.equal(ids[1], ids[0]);
  t.equal(ids[5], -1, 'tiny first fragment: no ports, not tracked');
  t.equal(ids[6], -1);
  t.ok(table.frags!.size <= 32);
  t.ok(counters.get('frag_matched') >= 2);
});

t.test('FragTable alone: capacity must be a power of two', async (t) => {
  t.throws(() => new FragTable({ capacity: 100 }));
  const ft = new FragTable({ capacity: 8, probe: 8 });
  ft.now = 1;
  for (let i = 0; i < 8; i++) {
    ft.setKey4(1, 2, 17, i);
    t.ok(ft.first(i, 0, 0, 10));
  }
  ft.setKey4(1, 2, 17, 100);
  t.notOk(ft.first(9, 0, 0, 10), 'full window, nothing expired: refused');
  ft.now = 100;
  ft.setKey4(1, 2, 17, 100);
  t.ok(ft.first(9, 0, 0, 10), 'an expired entry is taken over');
  t.equal(ft.size, 8);
  ft.setKey4(1, 2, 17, 100);
  t.equal(ft.later(10, 1, false, 60), 9, 'complete at 20 of 18 bytes');
  t.equal(ft.size, 7);
});
