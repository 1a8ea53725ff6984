// Per-target limits on the distributor's packet path (src/lb/distributor.ts
// "Limits"): crafted frames through parseBatch + FlowTable.trackBatch +
// Distributor.distributeBatch; held SYNs come back in `out`, resets in the
// originated batch. Targets are told apart by the destination the packets
// were rewritten to (NAT) or encapsulated to (dsr-ipip).

import t from 'tap';
import { Batch, Verdict } from '../../src/io/batch.js';
import { LinkType, Meta } from '../../src/wire/meta.js';
import { parseBatch } from '../../src/wire/parse.js';
import { FlowTable, type FlowTimeouts } from '../../src/flow/flow-table.js';
import { Counters } from '../../src/counters.js';
import { Distributor, Handled, DIST_COUNTER_DEFS, type DistCounterName, type DistService, type DistTarget } from '../../src/lb/distributor.js';
import { validateConfig } from '../../src/control/config.js';
import { TCPF, checksumProblems, eth, fmt, ip, tcp4, tupleOf, udp4 } from './nat-helpers.js';
import { heapGrowthPerPacket } from '../helpers/alloc.js';

const VIP = '192.0.2.10';
const VIP_N = ip(VIP);
const LOCAL = '198.51.100.1';

interface Res { ip: Buffer; verdict: number; flow: number; handled: number }

class Rig {
  readonly flows: FlowTable;
  readonly counters = new Counters();
  readonly dist: Distributor;
  readonly batch = new Batch(256, 256 * 2048);
  readonly meta = new Meta(256);
  readonly out = new Batch(256, 256 * 2048);
  readonly rst = new Batch(64, 64 * 64);
  constructor(readonly services: DistService[], o: { timeouts?: Partial<FlowTimeouts>; holdSlots?: number; rstRate?: number } = {}) {
    this.flows = new FlowTable({ capacity: 4096, seed: 7, timeouts: o.timeouts });
    this.dist = new Distributor({ flows: this.flows, localAddress: LOCAL, seed: 99, holdSlots: o.holdSlots, rstRate: o.rstRate });
    this.dist.configure(services);
  }
  /** One batch of IP packets (in Ethernet); out and rst are cleared first. */
  run(pkts: Buffer[], now = 1000): Res[] {
    const b = this.batch;
    b.clear();
    for (const p of pkts) {
      const f = eth(p);
      if (!b.push(f, 0, f.length, f.length, Math.floor(now), Math.round((now % 1) * 1e9), LinkType.EN10MB)) throw new Error('test batch full');
    }
    parseBatch(b, this.meta);
    this.flows.trackBatch(b, this.meta, this.counters);
    this.out.clear();
    this.rst.clear();
    this.dist.distributeBatch(b, this.meta, this.flows.flowOf, this.out, this.rst);
    const res: Res[] = [];
    for (let k = 0; k < b.count; k++) {
      res.push({ ip: Buffer.from(b.arena.subarray(b.off[k] + 14, b.off[k] + b.capLen[k])), verdict: b.verdict[k], flow: this.flows.flowOf[k], handled: this.dist.handled[k] });
    }
    return res;
  }
  /** The timed work alone at `now` (what the appliance's timer does). */
  tick(now: number): void {
    this.out.clear();
    this.rst.clear();
    this.dist.serviceLimits(now, this.out, this.rst);
  }
  /** IP packets appended to out (released SYNs, encapsulated copies). */
  outs(): Buffer[] {
    const o = this.out, r: Buffer[] = [];
    for (let k = 0; k < o.count; k++) r.push(Buffer.from(o.arena.subarray(o.off[k] + (o.linkType[k] === LinkType.EN10MB ? 14 : 0), o.off[k] + o.capLen[k])));
    return r;
  }
  rsts(): Buffer[] {
    const o = this.rst, r: Buffer[] = [];
    for (let k = 0; k < o.count; k++) r.push(Buffer.from(o.arena.subarray(o.off[k], o.off[k] + o.capLen[k])));
    return r;
  }
  c(name: DistCounterName): number {
    return this.dist.counters.get(name);
  }
  /** Connections counted on the target at `address` (primary or backup) of service 0. */
  conns(address: string, backup = false): number {
    const s = this.services[0];
    const list = backup ? s.backupTargets ?? [] : s.targets;
    const tg = list.find((x) => x.address === address)!;
    return this.dist.targetLoad(this.dist.slotOfTarget(s, tg, backup)).conns;
  }
  queued(address: string): number {
    const s = this.services[0];
    const tg = s.targets.find((x) => x.address === address)!;
    return this.dist.targetLoad(this.dist.slotOfTarget(s, tg)).queued;
  }
}

const C1 = ip('10.1.0.1');
const client = (k: number): number => ip(`10.2.${(k >>> 8) & 0xff}.${k & 0xff}`);
const syn = (c: number, port: number, seq = 1000 + port) => tcp4(c, VIP_N, port, 80, TCPF.SYN, { seq });
const finAck = (c: number, port: number) => tcp4(c, VIP_N, port, 80, TCPF.FIN | TCPF.ACK, { seq: 2000, ack: 1 });
const rstFrom = (c: number, port: number) => tcp4(c, VIP_N, port, 80, TCPF.RST, { seq: 2000 });
const tgt = (address: string, port: number, extra: Partial<DistTarget> = {}): DistTarget => ({ id: Number(address.split('.')[3]), address, port, weight: 1, ...extra });

interface Asserts { equal(a: unknown, b: unknown, m: string): unknown; same(a: unknown, b: unknown, m: string): unknown }

/** The RST answering a SYN from c:port with ISN seq (RFC 9293 3.10.7.1: seq 0, ACK = ISN + 1), from the VIP:80. */
function checkRst(tt: Asserts, r: Buffer, c: number, port: number, seq: number, what: string): void {
  const u = tupleOf(r);
  tt.equal(fmt(u.src), VIP, `${what}: reset from the VIP`);
  tt.equal(u.sp, 80, `${what}: from the service port`);
  tt.equal(u.dst, c >>> 0, `${what}: to the client`);
  tt.equal(u.dp, port, `${what}: to the client's port`);
  tt.equal(r[20 + 13], TCPF.RST | TCPF.ACK, `${what}: RST+ACK`);
  tt.equal(r.readUInt32BE(20 + 8), (seq + 1) >>> 0, `${what}: acknowledges the SYN`);
  tt.same(checksumProblems(r, what), [], `${what}: checksums`);
}

t.test('onFull queue: held SYN, retransmission, queue full -> reset, release on FIN and RST, reply path, timeout', async (t) => {
  const svc: DistService = {
    vip: VIP, port: 80, proto: 6, mode: 'nat',
    targets: [tgt('10.9.0.1', 8080, { maxconn: 1, maxqueue: 2, queueTimeoutMs: 3000 })],
    limits: { onFull: 'queue', onQueueFull: 'reject', onQueueTimeout: 'reject' },
  };
  const r = new Rig([svc]);
  // 1. The first connection takes the only slot.
  const [a] = r.run([syn(C1, 40001, 111)]);
  t.equal(a.verdict, Verdict.FORWARD);
  t.equal(fmt(tupleOf(a.ip).dst), '10.9.0.1', 'to the target');
  t.equal(r.conns('10.9.0.1'), 1, 'counted');
  // 2. The second is held: nothing leaves, nothing is reset.
  const [b] = r.run([syn(C1, 40002, 222)], 1000.1);
  t.equal(b.verdict, Verdict.HOLD, 'held');
  t.equal(r.outs().length + r.rsts().length, 0, 'nothing sent');
  t.equal(r.c('lb_limit_queued'), 1);
  t.equal(r.queued('10.9.0.1'), 1);
  // 3. Its retransmission a second later takes no second slot.
  const [b2] = r.run([syn(C1, 40002, 222)], 1001.1);
  t.equal(b2.verdict, Verdict.DROP, 'retransmission dropped');
  t.equal(r.c('lb_limit_queued_retransmit'), 1);
  t.equal(r.queued('10.9.0.1'), 1, 'still one held');
  // 4. A third is held too (maxqueue 2); a fourth finds the queue full: reset.
  const [c, d] = r.run([syn(C1, 40003, 333), syn(C1, 40004, 444)], 1001.2);
  t.equal(c.verdict, Verdict.HOLD);
  t.equal(d.verdict, Verdict.DROP, 'queue full: refused');
  t.equal(r.c('lb_limit_queue_full'), 1);
  t.equal(r.c('lb_limit_rejected'), 1);
  t.equal(r.rsts().length, 1, 'one reset');
  checkRst(t, r.rsts()[0], C1, 40004, 444, 'queue-full reset');
  // 5. The first connection's FIN frees its slot: the oldest held SYN leaves at once, rewritten.
  const [fin] = r.run([finAck(C1, 40001)], 1001.5);
  t.equal(fin.verdict, Verdict.FORWARD, 'FIN forwarded');
  t.equal(r.c('lb_conn_closed'), 1);
  t.equal(r.c('lb_limit_dequeued'), 1);
  const rel = r.outs();
  t.equal(rel.length, 1, 'one SYN released');
  const ru = tupleOf(rel[0]);
  t.equal(fmt(ru.dst), '10.9.0.1', 'released to the target');
  t.equal(ru.dp, 8080, 'target port');
  t.equal(ru.src, C1 >>> 0);
  t.equal(ru.sp, 40002, 'the oldest held connection');
  t.equal(rel[0].readUInt32BE(20 + 4), 222, 'its own SYN (ISN kept)');
  t.same(checksumProblems(rel[0], 'released'), [], 'released SYN checksums');
  t.equal(r.dist.outKind[0], Handled.ROUTED, 'outKind: route by destination');
  t.equal(r.conns('10.9.0.1'), 1, 'the released connection counts');
  t.equal(r.queued('10.9.0.1'), 1);
  // 6. The target answers the released connection: the reply path knows it.
  const [sa] = r.run([tcp4(ip('10.9.0.1'), C1, 8080, 40002, TCPF.SYN | TCPF.ACK, { seq: 9, ack: 223 })], 1001.6);
  t.equal(fmt(tupleOf(sa.ip).src), VIP, 'SYN-ACK rewritten to come from the VIP');
  // 7. The target resets it: the slot frees, the next held SYN leaves.
  r.run([tcp4(ip('10.9.0.1'), C1, 8080, 40002, TCPF.RST, { seq: 10 })], 1001.7);
  t.equal(r.c('lb_conn_closed'), 2, "target's reset ends the count");
  t.equal(r.outs().length, 1, 'next held SYN released');
  t.equal(tupleOf(r.outs()[0]).sp, 40003);
  t.equal(r.queued('10.9.0.1'), 0);
  // 8. A new SYN waits; after 3 s (queueTimeout) without a free slot: onQueueTimeout reject.
  const [e] = r.run([syn(C1, 40005, 555)], 1002);
  t.equal(e.verdict, Verdict.HOLD);
  r.tick(1004.9);
  t.equal(r.c('lb_limit_queue_timeout'), 0, 'not yet');
  r.tick(1005.1);
  t.equal(r.c('lb_limit_queue_timeout'), 1, 'timed out');
  t.equal(r.rsts().length, 1, 'reset sent');
  checkRst(t, r.rsts()[0], C1, 40005, 555, 'timeout reset');
  t.equal(r.queued('10.9.0.1'), 0);
  t.equal(r.c('lb_limit_rejected'), 2);
});

t.test('onFull redispatch: every target filled to maxconn, then reset; deterministic across distributors', async (t) => {
  const mk = () => new Rig([{
    vip: VIP, port: 80, proto: 6, mode: 'nat',
    targets: ['10.9.0.1', '10.9.0.2', '10.9.0.3'].map((a) => tgt(a, 8080, { maxconn: 2 })),
    limits: { onFull: 'redispatch' },
  }]);
  const r1 = mk(), r2 = mk();
  const pkts = Array.from({ length: 7 }, (_, k) => syn(client(k), 30000 + k));
  // One SYN per batch: the choice depends on the counts the earlier ones left.
  const dests = (r: Rig) => pkts.map((p, k) => {
    const [x] = r.run([p], 1000 + k * 0.01);
    return x.verdict === Verdict.FORWARD ? fmt(tupleOf(x.ip).dst) : 'reset';
  });
  const d1 = dests(r1), d2 = dests(r2);
  t.same(d1, d2, `same choices on two distributors: ${d1.join(' ')}`);
  for (const a of ['10.9.0.1', '10.9.0.2', '10.9.0.3']) {
    t.equal(d1.filter((x) => x === a).length, 2, `${a} got exactly its maxconn`);
    t.equal(r1.conns(a), 2);
  }
  t.equal(d1[6], 'reset', 'the seventh finds no room anywhere');
  t.equal(r1.c('lb_limit_rejected'), 1);
  // Maglev's own choice for each (the same table without limits): the connections that went elsewhere are the redispatched ones.
  const probe = new Rig([{ ...r1.services[0], targets: r1.services[0].targets.map((x) => ({ ...x, maxconn: 0 })), limits: undefined }]);
  const maglev = pkts.map((p) => fmt(tupleOf(probe.run([p])[0].ip).dst));
  const moved = d1.map((x, k) => (x !== 'reset' && x !== maglev[k] ? k : -1)).filter((k) => k >= 0);
  t.equal(r1.c('lb_limit_redispatched'), moved.length, `redispatched: connections ${moved.join(', ')} (Maglev: ${maglev.join(' ')})`);
  t.ok(moved.length >= 1, 'some went to a target other than Maglev\'s');
  // A retransmission of a redispatched SYN goes where the first copy went (not to Maglev's choice), counted once.
  const k0 = moved[0];
  const [again] = r1.run([pkts[k0]], 1001);
  t.equal(fmt(tupleOf(again.ip).dst), d1[k0], 'retransmitted SYN: same target as its first copy');
  t.equal(r1.conns(d1[k0]), 2, 'not counted twice');
  // The same tuple with another ISN is a new connection: the old count ends.
  const reused = r1.c('lb_conn_reused');
  r1.run([syn(client(k0), 30000 + k0, 99999)], 1001.1);
  t.equal(r1.c('lb_conn_reused'), reused + 1, 'new ISN on a counted tuple ends the old count');
  // A client FIN frees a slot: the next new connection fits again.
  r1.run([finAck(client(0), 30000)], 1002);
  const [late] = r1.run([syn(client(50), 31000)], 1002.1);
  t.equal(late.verdict, Verdict.FORWARD, 'room again after a FIN');
  t.equal(fmt(tupleOf(late.ip).dst), d1[0], 'on the target that had the free slot');
});

t.test('redispatch lands in the only target with room, whatever the flow hash', async (t) => {
  const targets = ['10.9.0.1', '10.9.0.2', '10.9.0.3', '10.9.0.4', '10.9.0.5'].map((a, k) => tgt(a, 8080, { maxconn: k === 4 ? 0 : 1 }));
  // Weight 1000 on .5 would take the Maglev probes; weight 1 makes it rare, so the walk has to find it.
  targets[4].weight = 1;
  for (let k = 0; k < 4; k++) targets[k].weight = 1000;
  const r = new Rig([{ vip: VIP, port: 80, proto: 6, mode: 'nat', targets, limits: { onFull: 'redispatch' } }]);
  let seen = 0;
  for (let k = 0; k < 60; k++) {
    const [x] = r.run([syn(client(k), 20000 + k)], 1000 + k * 0.01);
    t.equal(x.verdict, Verdict.FORWARD, `connection ${k} admitted`);
    if (fmt(tupleOf(x.ip).dst) === '10.9.0.5') seen++;
  }
  t.equal(seen, 56, 'after the four limited targets fill, every connection goes to the one with room');
  for (let k = 0; k < 4; k++) t.equal(r.conns(`10.9.0.${k + 1}`), 1);
});

t.test('onFull backup: first backup with room, in order; NAT replies from a backup rewritten', async (t) => {
  const svc: DistService = {
    vip: VIP, port: 80, proto: 6, mode: 'nat',
    targets: [tgt('10.9.0.1', 8080, { maxconn: 1 })],
    backupTargets: [tgt('10.9.1.1', 9090, { maxconn: 1 }), tgt('10.9.1.2', 9091)],
    limits: { onFull: 'backup' },
  };
  const r = new Rig([svc]);
  const d = [0, 1, 2, 3].map((k) => {
    const [x] = r.run([syn(client(k), 25000 + k)], 1000 + k * 0.01);
    return `${fmt(tupleOf(x.ip).dst)}:${tupleOf(x.ip).dp}`;
  });
  t.same(d, ['10.9.0.1:8080', '10.9.1.1:9090', '10.9.1.2:9091', '10.9.1.2:9091'], 'primary, then backups in order (the second has no maxconn)');
  t.equal(r.c('lb_limit_to_backup'), 3);
  t.equal(r.conns('10.9.1.1', true), 1);
  t.equal(r.conns('10.9.1.2', true), 2);
  const [rep] = r.run([tcp4(ip('10.9.1.1'), client(1), 9090, 25001, TCPF.SYN | TCPF.ACK, { seq: 5, ack: 25002 })], 1001);
  const u = tupleOf(rep.ip);
  t.equal(fmt(u.src), VIP, 'backup reply from the VIP');
  t.equal(u.sp, 80);
  t.same(checksumProblems(rep.ip, 'backup reply'), []);
});

t.test('onFull reject: the SYN is dropped and the client gets a RST; rate limited', async (t) => {
  const r = new Rig([{ vip: VIP, port: 80, proto: 6, mode: 'nat', targets: [tgt('10.9.0.1', 8080, { maxconn: 1 })], limits: { onFull: 'reject' } }], { rstRate: 2 });
  r.run([syn(C1, 40000)]);
  const res = r.run([syn(C1, 40001, 7), syn(C1, 40002, 8), syn(C1, 40003, 9)], 1000.5);
  t.same(res.map((x) => x.verdict), [Verdict.DROP, Verdict.DROP, Verdict.DROP]);
  t.equal(r.c('lb_limit_rejected'), 3);
  t.equal(r.rsts().length, 2, 'a burst of rstRate resets');
  t.equal(r.c('lb_limit_rst_limited'), 1, 'the third is rate limited');
  checkRst(t, r.rsts()[0], C1, 40001, 7, 'reject reset');
  // Tokens come back in packet time.
  r.run([syn(C1, 40004, 10)], 1001.5);
  t.equal(r.rsts().length, 1, 'a second later: a reset again');
  // UDP datagrams to a TCP-limited VIP are none of its business (not this service).
  t.equal(r.run([udp4(C1, VIP_N, 40005, 80)], 1002)[0].handled, Handled.NONE);
});

t.test('counts end on client RST, on flow expiry (sweep) and on a flow id reused by another flow', async (t) => {
  const svc: DistService = { vip: VIP, port: 80, proto: 6, mode: 'nat', targets: [tgt('10.9.0.1', 8080, { maxconn: 5 })], limits: { onFull: 'reject' } };
  const r = new Rig([svc], { timeouts: { tcpSynSent: 5 } });
  r.run([syn(C1, 41000)]);
  t.equal(r.conns('10.9.0.1'), 1);
  r.run([rstFrom(C1, 41000)], 1000.1);
  t.equal(r.conns('10.9.0.1'), 0, 'client reset ends the count');
  t.equal(r.c('lb_conn_closed'), 1);
  // A SYN never answered: counts until the flow table expires it (tcpSynSent 5 s here).
  const [x] = r.run([syn(C1, 41001)], 1001);
  t.equal(r.conns('10.9.0.1'), 1);
  r.tick(1003);
  t.equal(r.conns('10.9.0.1'), 1, 'still live at +2 s');
  r.flows.expire(1007);
  t.notOk(r.flows.isLive(x.flow), 'the flow table expired it');
  r.tick(1007);
  t.equal(r.conns('10.9.0.1'), 0, 'the sweep ended its count');
  t.equal(r.c('lb_conn_expired'), 1);
  // An id the flow table recycles for another flow (not to the VIP) ends the old count too.
  const [y] = r.run([syn(C1, 41002)], 1010);
  t.equal(r.conns('10.9.0.1'), 1);
  r.flows.remove(y.flow);
  const [z] = r.run([udp4(C1, ip('203.0.113.5'), 41003, 53)], 1011);
  t.equal(z.flow, y.flow, 'the id was reused for an unrelated flow');
  r.tick(1011);
  t.equal(r.conns('10.9.0.1'), 0, 'reused id: count ended');
  t.equal(r.c('lb_conn_expired'), 2);
  // The sweep also runs from distributeBatch every few batches, without a tick.
  const [w] = r.run([syn(C1, 41004)], 1020);
  r.flows.remove(w.flow);
  for (let k = 0; k < 8; k++) r.run([udp4(C1, ip('203.0.113.6'), 42000 + k, 53)], 1021 + k);
  t.equal(r.conns('10.9.0.1'), 0, 'swept from the batch path');
});

t.test('held SYNs: a client reset withdraws one; a flow gone from the table is discarded at release', async (t) => {
  const svc: DistService = { vip: VIP, port: 80, proto: 6, mode: 'nat', targets: [tgt('10.9.0.1', 8080, { maxconn: 1, queueTimeoutMs: 0 })] };
  const r = new Rig([svc]);
  r.run([syn(C1, 43000)]);
  const held = r.run([syn(C1, 43001), syn(C1, 43002), syn(C1, 43003)], 1000.1);
  t.same(held.map((x) => x.verdict), [Verdict.HOLD, Verdict.HOLD, Verdict.HOLD], 'three held (default onFull: queue)');
  r.run([rstFrom(C1, 43001)], 1000.2);
  t.equal(r.c('lb_limit_abandoned'), 1, 'reset while held');
  t.equal(r.queued('10.9.0.1'), 2);
  r.flows.remove(held[1].flow);
  r.run([finAck(C1, 43000)], 1000.3);
  const rel = r.outs();
  t.equal(rel.length, 1, 'one released');
  t.equal(tupleOf(rel[0]).sp, 43003, 'the flow that left the table was skipped');
  t.equal(r.c('lb_limit_abandoned'), 2);
  t.equal(r.queued('10.9.0.1'), 0);
  // queueTimeout 0: no limit, the tick does not time anything out.
  r.run([syn(C1, 43004)], 1001);
  r.tick(2000);
  t.equal(r.c('lb_limit_queue_timeout'), 0, 'queueTimeout 0 waits without limit');
  t.equal(r.queued('10.9.0.1'), 1);
});

t.test('queue timeout redispatches to a target with room; held dsr-ipip and dsr-l2 SYNs are released encapsulated / MAC-rewritten', async (t) => {
  const targets = [tgt('10.9.0.1', 80, { maxconn: 1, queueTimeoutMs: 1000 }), tgt('10.9.0.2', 80, { maxconn: 1, queueTimeoutMs: 1000 })];
  const svc: DistService = { vip: VIP, port: 80, proto: 6, mode: 'dsr-ipip', targets, limits: { onFull: 'queue', onQueueTimeout: 'redispatch' } };
  // Which target Maglev gives each client (the same table without limits: same targets, same seed).
  const probe = new Rig([{ ...svc, targets: targets.map((x) => ({ ...x, maxconn: 0 })), limits: undefined }]);
  const onA: number[] = [], onB: number[] = [];
  for (let k = 0; k < 64 && (onA.length < 2 || onB.length < 1); k++) {
    probe.run([syn(client(k), 26000 + k)], 1000);
    (fmt(probe.outs()[0].readUInt32BE(16)) === '10.9.0.1' ? onA : onB).push(k);
  }
  t.ok(onA.length >= 2 && onB.length >= 1, 'clients for both targets found');
  const r = new Rig([svc]);
  r.run([syn(client(onA[0]), 26000 + onA[0]), syn(client(onB[0]), 26000 + onB[0])], 1000);
  t.equal(r.outs().length, 2, 'both targets take one connection');
  const [h] = r.run([syn(client(onA[1]), 26000 + onA[1], 4242)], 1000.1);
  t.equal(h.verdict, Verdict.HOLD, 'a second for the first target is held (onFull queue, not redispatched)');
  // The second target's connection ends: it has room, but the held SYN waits for its own target...
  r.run([finAck(client(onB[0]), 26000 + onB[0])], 1000.2);
  t.equal(r.outs().length, 1, 'only the FIN went out (encapsulated)');
  t.equal(r.c('lb_limit_dequeued'), 0, 'held SYNs wait for their own target');
  t.equal(r.queued('10.9.0.1'), 1);
  r.tick(1000.9);
  t.equal(r.outs().length, 0, 'still held before its timeout');
  // ...until its queue timeout: then onQueueTimeout redispatch sends it to the target with room.
  r.tick(1001.2);
  t.equal(r.c('lb_limit_queue_timeout'), 1, 'timed out');
  t.equal(r.c('lb_limit_redispatched'), 1, 'redispatched on timeout');
  const o = r.outs();
  t.equal(o.length, 1, 'sent on');
  t.equal(o[0][9], 4, 'IPIP outer header (RFC 2003)');
  t.equal(fmt(o[0].readUInt32BE(12)), LOCAL, 'outer source: localAddress');
  t.equal(fmt(o[0].readUInt32BE(16)), '10.9.0.2', 'to the target with room');
  const inner = tupleOf(o[0].subarray(20));
  t.equal(fmt(inner.src), fmt(client(onA[1])), 'the held SYN inside');
  t.equal(fmt(inner.dst), VIP, 'inner destination the VIP');
  t.equal(o[0].readUInt32BE(20 + 20 + 4), 4242, 'its ISN');
  t.same(checksumProblems(o[0], 'outer'), [], 'outer checksum');
  t.same(checksumProblems(o[0].subarray(20), 'inner'), [], 'inner untouched');
  t.equal(r.conns('10.9.0.2'), 1, 'counted on the target it went to');
  t.equal(r.queued('10.9.0.1'), 0);
  // dsr-l2: a held SYN comes back with the target's MAC.
  const mac = '02:00:00:00:0a:01';
  const l2 = new Rig([{ vip: VIP, port: 80, proto: 6, mode: 'dsr-l2', targets: [tgt('10.9.0.1', 80, { maxconn: 1, mac })] }]);
  l2.run([syn(C1, 27000)]);
  t.equal(l2.run([syn(C1, 27001)], 1000.1)[0].verdict, Verdict.HOLD);
  l2.run([finAck(C1, 27000)], 1000.2);
  t.equal(l2.out.count, 1, 'released');
  const f = l2.out.arena.subarray(l2.out.off[0], l2.out.off[0] + l2.out.capLen[0]);
  t.equal(Array.from(f.subarray(0, 6), (x) => x.toString(16).padStart(2, '0')).join(':'), mac, 'destination MAC of the target');
  t.equal(l2.dist.outKind[0], Handled.L2, 'outKind L2');
  t.equal(fmt(f.readUInt32BE(14 + 16)), VIP, 'IP destination still the VIP');
});

t.test('configure and config.ts refuse bad limits, naming the key', async (t) => {
  const flows = new FlowTable({ capacity: 1024 });
  const d = new Distributor({ flows });
  const base: DistService = { vip: VIP, port: 80, proto: 6, mode: 'nat', targets: [tgt('10.9.0.1', 8080, { maxconn: 1 })] };
  t.throws(() => d.configure([{ ...base, proto: 17, targets: [tgt('10.9.0.1', 8080, { maxconn: 1 })] }]), /services\[0\]\.targets\[0\]\.maxconn: UDP services are not limited/);
  t.throws(() => d.configure([{ ...base, limits: { onFull: 'backup' } }]), /services\[0\]\.limits\.onFull: 'backup' needs backupTargets/);
  t.throws(() => d.configure([{ ...base, limits: { onQueueFull: 'queue' as 'reject' } }]), /services\[0\]\.limits\.onQueueFull must be one of 'redispatch', 'backup', 'reject'/);
  t.throws(() => d.configure([{ ...base, backupTargets: [tgt('10.9.0.1', 8080)] }]), /services\[0\]\.backupTargets\[0\]: 10\.9\.0\.1:8080 is already targets\[0\]/);
  t.throws(() => d.configure([{ ...base, targets: [tgt('10.9.0.1', 8080, { maxconn: -1 })] }]), /services\[0\]\.targets\[0\]\.maxconn must be an integer/);
  t.doesNotThrow(() => d.configure([base]));
  t.ok(d.limitsOn, 'limit state made for a limited service');
  t.notOk(new Distributor({ flows }).limitsOn, 'and not before');

  const cfg = (svc: Record<string, unknown>, io: Record<string, unknown> = { mode: 'tun', tun: 'x' }) => ({
    io, nat: { inside: ['10.0.0.0/8'], pool: ['192.0.2.1'] },
    lb: { services: [{ name: 'web', vip: VIP, port: 80, targets: [{ address: '10.9.0.1', port: 8080, maxconn: 2 }], ...svc }] },
  });
  const ok = validateConfig(cfg({ limits: { onFull: 'redispatch' }, backupTargets: [{ address: '10.9.1.1', port: 8080 }] }));
  t.equal(ok.lb!.services[0].limits!.onQueueTimeout, 'reject', 'defaults filled');
  t.throws(() => validateConfig(cfg({ proto: 'udp' })), /lb\.services\[0\]\.targets\[0\]\.maxconn: UDP services are not limited/);
  t.throws(() => validateConfig(cfg({ limits: { onQueueTimeout: 'backup' } })), /lb\.services\[0\]\.limits\.onQueueTimeout: 'backup' needs backupTargets/);
  t.throws(() => validateConfig(cfg({ limits: { onFull: 'sometimes' } })), /lb\.services\[0\]\.limits\.onFull/);
  t.throws(() => validateConfig(cfg({ backupTargets: [{ address: '10.9.0.1', port: 8080 }] })), /lb\.services\[0\]\.backupTargets\[0\]: 10\.9\.0\.1:8080 is already targets\[0\]/);
  t.throws(() => validateConfig(cfg({}, { mode: 'af-packet', inside: 'a', outside: 'b' })), /lb\.services\[0\]\.limits\.onFull: queue \(the default\) in af-packet mode needs io\.vnetHdr: false/);
  t.ok(validateConfig(cfg({ limits: { onFull: 'reject' } }, { mode: 'af-packet', inside: 'a', outside: 'b' })), 'reject needs no held copies');
  t.throws(() => validateConfig(cfg({ limits: { onFull: 'reject' }, tls: { certificates: [{ cert: 'x', key: 'y' }] } })), /lb\.services\[0\]\.limits: a TLS service takes its actions under tls/);
});

t.test('counters are appended after the existing ones', async (t) => {
  const names: string[] = DIST_COUNTER_DEFS.map((d) => d[0]);
  t.equal(names.indexOf('lb_local'), 13, 'older counters keep their index');
  for (const n of ['lb_limit_queued', 'lb_limit_dequeued', 'lb_limit_redispatched', 'lb_limit_to_backup', 'lb_limit_rejected', 'lb_limit_queue_full', 'lb_limit_queue_timeout', 'lb_conn_closed']) {
    t.ok(names.indexOf(n) > 13, n);
  }
});

t.test('zero allocation per packet with limits on (count, queue, release, reset)', async (t) => {
  const r = new Rig([{
    vip: VIP, port: 80, proto: 6, mode: 'nat',
    // Uneven room, so a full queue's redispatch often finds a target with room.
    targets: ['10.9.0.1', '10.9.0.2', '10.9.0.3'].map((a, k) => tgt(a, 8080, { maxconn: [2, 6, 20][k], maxqueue: 4, queueTimeoutMs: 50 })),
    limits: { onFull: 'queue', onQueueFull: 'redispatch', onQueueTimeout: 'redispatch' },
  }, {
    vip: '192.0.2.11', port: 80, proto: 6, mode: 'dsr-ipip',
    targets: ['10.9.0.4', '10.9.0.5'].map((a) => tgt(a, 80, { maxconn: 4, maxqueue: 4 })),
    limits: { onFull: 'queue', onQueueFull: 'reject' },
  }], { rstRate: 1e9 });
  const frames: Buffer[] = [];
  // Per round: 96 SYNs (some counted, some held, some refused), ACKs, then a FIN or RST from every client:
  // the admitted close (releasing held SYNs, whose own FIN or RST follows), the held are withdrawn or stay
  // held (a FIN does not withdraw: their next round's SYN is a retransmission, until their queue timeout).
  for (let k = 0; k < 96; k++) frames.push(eth(tcp4(client(k), k % 3 === 2 ? ip('192.0.2.11') : VIP_N, 10000 + k, 80, TCPF.SYN, { seq: k })));
  // Every fourth client says nothing more: its connection stays counted, or held until its queue timeout.
  for (let k = 0; k < 96; k += 1) if (k % 4 !== 3) frames.push(eth(tcp4(client(k), k % 3 === 2 ? ip('192.0.2.11') : VIP_N, 10000 + k, 80, k % 4 === 0 ? TCPF.FIN | TCPF.ACK : TCPF.RST, { seq: k + 1 })));
  for (let k = 1; k < 96; k += 4) frames.push(eth(tcp4(client(k), k % 3 === 2 ? ip('192.0.2.11') : VIP_N, 10000 + k, 80, TCPF.ACK, { seq: k + 1, payload: Buffer.alloc(32) })));
  const b = r.batch;
  b.clear();
  for (const f of frames) b.push(f, 0, f.length, f.length, 1000, 0, LinkType.EN10MB);
  const pristine = Buffer.from(b.arena.subarray(0, b.used));
  let round = 0;
  const one = (): void => {
    pristine.copy(b.arena, 0);
    round++;
    for (let k = 0; k < b.count; k++) {
      b.verdict[k] = Verdict.FORWARD;
      b.tsSec[k] = 1000 + (round >>> 4);
      b.tsNsec[k] = (round & 15) * 60_000_000;
    }
    parseBatch(b, r.meta);
    r.flows.trackBatch(b, r.meta, r.counters);
    r.out.clear();
    r.rst.clear();
    r.dist.distributeBatch(b, r.meta, r.flows.flowOf, r.out, r.rst);
  };
  for (let k = 0; k < 3000; k++) one();
  const { perPacket, counted } = heapGrowthPerPacket(one, b.count);
  const c = (n: DistCounterName) => r.c(n);
  t.ok(c('lb_limit_queued') > 0 && c('lb_limit_dequeued') > 0 && c('lb_limit_rejected') > 0 && c('lb_conn_closed') > 0 &&
    c('lb_limit_redispatched') > 0 && c('lb_limit_queued_retransmit') > 0,
    `paths exercised: queued ${c('lb_limit_queued')} dequeued ${c('lb_limit_dequeued')} redispatched ${c('lb_limit_redispatched')} rejected ${c('lb_limit_rejected')} retransmit ${c('lb_limit_queued_retransmit')} timeout ${c('lb_limit_queue_timeout')} closed ${c('lb_conn_closed')}`);
  t.ok(counted > 0, 'at least one attempt ran without a collection');
  t.ok(perPacket < 1, `heap growth per packet ${perPacket.toFixed(4)} bytes`);
});
