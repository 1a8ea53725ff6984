// The port allocator on its own: range class, parity, randomness, bounded
// search, exhaustion counter, quarantine before reuse.
import t from 'tap';
import { NatProto, PortAllocator, natProtoOf, ipProtoOf } from '../../src/nat/port-allocator.js';

const T0 = 1_000_000;

t.test('natProtoOf / ipProtoOf', async (t) => {
  t.same([natProtoOf(6), natProtoOf(17), natProtoOf(1), natProtoOf(47)], [NatProto.TCP, NatProto.UDP, NatProto.ICMP, -1]);
  t.same([ipProtoOf(NatProto.TCP), ipProtoOf(NatProto.UDP), ipProtoOf(NatProto.ICMP)], [6, 17, 1]);
});

t.test('RFC 4787 REQ-3: range class kept (0-1023 -> 1-1023, 1024-65535 -> 1024-65535), port 0 never', async (t) => {
  const a = new PortAllocator({ poolSize: 2, seed: 1 });
  for (let k = 0; k < 500; k++) {
    const lo = a.allocate(NatProto.UDP, k & 1, 53, T0);
    t.ok(lo >= 1 && lo <= 1023, `low ${lo}`);
    if (k < 20) {
      const hi = a.allocate(NatProto.TCP, 0, 40000 + k, T0);
      t.ok(hi >= 1024 && hi <= 65535, `high ${hi}`);
    }
  }
  // The low class holds 511 odd ports per address: 2 addresses, 500 taken so far, all distinct.
  t.equal(a.takenCount(NatProto.UDP, 0) + a.takenCount(NatProto.UDP, 1), 500);
});

t.test('RFC 4787 REQ-4: parity kept; ICMP identifiers have neither class nor parity', async (t) => {
  const a = new PortAllocator({ poolSize: 1, seed: 2 });
  const icmpPar = new Set<number>();
  for (let k = 0; k < 400; k++) {
    const want = 2000 + k;
    const p = a.allocate(NatProto.UDP, 0, want, T0);
    t.equal(p & 1, want & 1);
    const id = a.allocate(NatProto.ICMP, 0, 4, T0);
    t.ok(id >= 1 && id <= 65535);
    icmpPar.add(id & 1);
  }
  t.equal(icmpPar.size, 2, 'ICMP identifiers of both parities');
});

t.test('RFC 6056 3.3.1: random (not sequential) choice; no port handed out twice', async (t) => {
  const a = new PortAllocator({ poolSize: 1, seed: 3 });
  const seen = new Set<number>();
  const seq: number[] = [];
  for (let k = 0; k < 2000; k++) {
    const p = a.allocate(NatProto.TCP, 0, 30000, T0);
    t.notOk(seen.has(p), 'never handed out twice');
    seen.add(p);
    seq.push(p);
  }
  let ascending = 0;
  for (let k = 1; k < seq.length; k++) if (seq[k] === seq[k - 1] + 2) ascending++;
  t.ok(ascending < 100, `not a sequential walk (${ascending} steps of +2)`);
  const lowHalf = seq.filter((p) => p < 33000).length;
  t.ok(lowHalf > 800 && lowHalf < 1200, `spread over the range (${lowHalf} below 33000)`);
  const a2 = new PortAllocator({ poolSize: 1, seed: 3, preservePort: true });
  t.equal(a2.allocate(NatProto.UDP, 0, 5060, T0), 5060, 'preservePort keeps a free inside port');
  t.not(a2.allocate(NatProto.UDP, 0, 5060, T0), 5060, '... and picks another when taken');
});

t.test('bounded search finds the last free port, then counts exhaustion', async (t) => {
  const a = new PortAllocator({ poolSize: 1, seed: 4, portMin: 1024, portMax: 1151, preserveParity: false, probes: 2 });
  const got = new Set<number>();
  for (let k = 0; k < 128; k++) {
    const p = a.allocate(NatProto.UDP, 0, 5000, T0);
    t.ok(p >= 1024 && p <= 1151);
    got.add(p);
  }
  t.equal(got.size, 128, 'every port of the class, found by the scan once random probes miss');
  t.equal(a.allocate(NatProto.UDP, 0, 5000, T0), -1);
  t.equal(a.exhausted[NatProto.UDP], 1);
  t.equal(a.allocate(NatProto.TCP, 0, 5000, T0) >= 1024, true, 'per protocol');
  t.throws(() => new PortAllocator({ poolSize: 1, portMin: 2000, portMax: 1000 }), /port range/);
  t.throws(() => new PortAllocator({ poolSize: 0 }), /pool size/);
});

t.test('RFC 6888 REQ-8: a released port stays unavailable for quarantineSec, in FIFO order', async (t) => {
  const a = new PortAllocator({ poolSize: 1, seed: 5, portMin: 1024, portMax: 1027, preserveParity: false });
  const ps = [0, 1, 2, 3].map(() => a.allocate(NatProto.UDP, 0, 5000, T0));
  t.equal(new Set(ps).size, 4);
  a.release(NatProto.UDP, 0, ps[0], T0 + 10);
  a.release(NatProto.UDP, 0, ps[1], T0 + 20);
  t.equal(a.quarantined, 2);
  t.ok(a.isTaken(NatProto.UDP, 0, ps[0]), 'quarantined port is not free');
  t.equal(a.allocate(NatProto.UDP, 0, 5000, T0 + 129), -1, 'nothing before 120 s');
  t.equal(a.allocate(NatProto.UDP, 0, 5000, T0 + 130), ps[0], 'first released, first back at +120 s');
  t.equal(a.allocate(NatProto.UDP, 0, 5000, T0 + 131), -1, 'the second still waits');
  t.equal(a.allocate(NatProto.UDP, 0, 5000, T0 + 140), ps[1]);
  // Without quarantine (never used on the wire) the port is free at once.
  a.release(NatProto.UDP, 0, ps[2], T0 + 150, false);
  t.equal(a.allocate(NatProto.UDP, 0, 5000, T0 + 150), ps[2]);
  // Configurable, including 0.
  const z = new PortAllocator({ poolSize: 1, seed: 6, portMin: 1024, portMax: 1024, quarantineSec: 0 });
  const p = z.allocate(NatProto.UDP, 0, 5000, T0);
  z.release(NatProto.UDP, 0, p, T0);
  t.equal(z.allocate(NatProto.UDP, 0, 5000, T0), p);
});

t.test('quarantine ring is bounded: overflow releases the oldest early, counted', async (t) => {
  const a = new PortAllocator({ poolSize: 1, seed: 7, quarantineCapacity: 4 });
  const ps = Array.from({ length: 6 }, () => a.allocate(NatProto.TCP, 0, 6000, T0));
  ps.forEach((p, k) => a.release(NatProto.TCP, 0, p, T0 + k));
  t.equal(a.quarantined, 4);
  t.equal(a.quarantineOverflow, 2);
  t.notOk(a.isTaken(NatProto.TCP, 0, ps[0]), 'oldest released early');
  t.ok(a.isTaken(NatProto.TCP, 0, ps[5]));
  a.drain(T0 + 1000);
  t.equal(a.quarantined, 0);
  t.equal(a.takenCount(NatProto.TCP, 0), 0);
  t.ok(a.memoryBytes() > 0);
});
