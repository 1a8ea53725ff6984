// Property tests (fast-check): random traffic in random orders and batch
// splits never makes the NAT throw, and every packet it forwards or
// originates carries checksums that verify by full recomputation; random
// bytes and cut packets never throw either.
import t from 'tap';
import fc from 'fast-check';
import {
  Harness, baseConfig, tcp4, udp4, echo4, icmpError4, ipv4Packet, fragment, checksumProblems, tupleOf,
  ip, INSIDE, OUTSIDE, Verdict,
} from './nat-helpers.js';

const T0 = 1_700_000_000;
const HOSTS = [ip('10.0.0.1'), ip('10.0.0.2'), ip('10.0.9.9'), ip('10.200.0.5')];
const REMOTES = [ip('203.0.113.10'), ip('198.51.100.20'), ip('203.0.113.11')];

const event = fc.record({
  kind: fc.constantFrom('out', 'out', 'out', 'in', 'in', 'err-in', 'err-out', 'hairpin', 'frag-out', 'frag-in', 'ttl'),
  proto: fc.constantFrom(6, 17, 1),
  host: fc.nat(HOSTS.length - 1),
  port: fc.integer({ min: 0, max: 5 }),
  remote: fc.nat(REMOTES.length - 1),
  rport: fc.constantFrom(53, 80, 443, 5555),
  flags: fc.constantFrom(0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01),
  len: fc.integer({ min: 0, max: 1600 }),
  pick: fc.nat(1000),
  cut: fc.option(fc.integer({ min: 20, max: 80 }), { freq: 6 }),
  df: fc.boolean(),
  icmpType: fc.constantFrom(3, 11, 12, 4),
  zero: fc.boolean(),
});
type Ev = typeof event extends fc.Arbitrary<infer E> ? E : never;

interface Known { P: number; p: number; proto: number; host: number; hport: number; rem: number; rport: number; sent: Buffer; got: Buffer }

function build(ev: Ev, known: Known[]): { pkt: Buffer; side: number; valid: boolean } | null {
  const h = HOSTS[ev.host], r = REMOTES[ev.remote];
  const hport = 30000 + ev.port * 2;
  const payload = Buffer.alloc(ev.len % 1400, ev.pick & 0xff);
  const k = known.length ? known[ev.pick % known.length] : null;
  switch (ev.kind) {
    case 'out':
    case 'ttl': {
      const o = { df: ev.df, ttl: ev.kind === 'ttl' ? ev.pick % 3 : 64 };
      if (ev.proto === 6) return { pkt: tcp4(h, r, hport, ev.rport, ev.flags, { payload, ...o }), side: INSIDE, valid: true };
      if (ev.proto === 17) return { pkt: udp4(h, r, hport, ev.rport, payload, { ...o, zero: ev.zero }), side: INSIDE, valid: true };
      return { pkt: echo4(h, r, 8, 700 + ev.port, 1, o), side: INSIDE, valid: true };
    }
    case 'in': {
      if (!k) return null;
      const rem = ev.pick & 1 ? k.rem : r;
      if (k.proto === 6) return { pkt: tcp4(rem, k.P, k.rport, k.p, ev.flags, { payload }), side: OUTSIDE, valid: true };
      if (k.proto === 17) return { pkt: udp4(rem, k.P, k.rport, k.p, payload), side: OUTSIDE, valid: true };
      return { pkt: echo4(rem, k.P, 0, k.p), side: OUTSIDE, valid: true };
    }
    case 'err-in': {
      if (!k) return null;
      const qlen = 28 + (ev.pick % Math.max(1, k.got.length - 27));
      return { pkt: icmpError4(ev.pick & 2 ? k.rem : ip('192.0.2.250'), k.P, ev.icmpType, ev.icmpType === 3 ? ev.pick % 16 : 0, k.got, Math.min(qlen, k.got.length)), side: OUTSIDE, valid: true };
    }
    case 'err-out': {
      if (!k) return null;
      // The host complains about a packet it received from its remote.
      const recv = k.proto === 17 ? udp4(k.rem, HOSTS[k.host], k.rport, k.hport, payload.subarray(0, 30))
        : k.proto === 6 ? tcp4(k.rem, HOSTS[k.host], k.rport, k.hport, ev.flags) : echo4(k.rem, HOSTS[k.host], 8, k.hport);
      return { pkt: icmpError4(HOSTS[k.host], k.rem, ev.icmpType, 0, recv), side: INSIDE, valid: true };
    }
    case 'hairpin': {
      if (!k) return null;
      if (k.proto === 6) return { pkt: tcp4(h, k.P, hport, k.p, ev.flags, { payload }), side: INSIDE, valid: true };
      if (k.proto === 17) return { pkt: udp4(h, k.P, hport, k.p, payload), side: INSIDE, valid: true };
      return { pkt: echo4(h, k.P, 8, 700 + ev.port), side: INSIDE, valid: true };
    }
    default:
      return null;
  }
}

t.test('random traffic: never throws; every forwarded and originated packet verifies by full checksum recompute', async (t) => {
  let checked = 0, forwarded = 0, originated = 0;
  fc.assert(fc.property(
    fc.array(event, { minLength: 20, maxLength: 60 }),
    fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 60 }),
    fc.constantFrom('endpoint-independent', 'address-dependent', 'address-and-port-dependent'),
    fc.boolean(),
    (evs, splits, filtering, hold) => {
      const h = new Harness(baseConfig({
        filtering, holdUnsolicitedSyn: hold, outsideMtu: 1200, maxMappingsPerSubscriber: 8, capacity: 64, sessionCapacity: 64,
        maxSessionsPerMapping: 4, fragments: { holdSlots: 8, trains: 16 },
      }));
      const known: Known[] = [];
      let now = T0, e = 0, s = 0;
      while (e < evs.length) {
        const n = splits[s++ % splits.length];
        const pkts: Buffer[] = [], sides: number[] = [], meta: { ev: Ev; valid: boolean; cut: boolean }[] = [];
        for (let j = 0; j < n && e < evs.length; j++, e++) {
          const ev = evs[e];
          const b = build(ev, known);
          if (!b) continue;
          let list = [b.pkt];
          if (ev.kind === 'frag-out' || ev.kind === 'frag-in') list = fragment(b.pkt, 8 * (1 + (ev.pick % 40)));
          if (ev.pick % 5 === 0) list.reverse(); // out of order
          for (let x of list) {
            const cut = ev.cut !== null && ev.cut < x.length;
            if (cut) x = x.subarray(0, ev.cut!);
            pkts.push(x); sides.push(b.side); meta.push({ ev, valid: b.valid, cut });
          }
        }
        if (pkts.length > 60) pkts.length = 60;
        const rs = h.run(pkts, sides, now);
        rs.forEach((r, k) => {
          if (r.verdict !== Verdict.FORWARD) return;
          forwarded++;
          if (!meta[k].valid) return;
          const probs = checksumProblems(r.ip, `${meta[k].ev.kind}/${meta[k].ev.proto}`);
          if (probs.length) throw new Error(probs.join('; '));
          checked++;
          const tu = tupleOf(r.ip);
          const ev = meta[k].ev;
          if (ev.kind === 'out' && r.egress === OUTSIDE && !meta[k].cut && (r.ip.readUInt16BE(6) & 0x3fff) === 0) {
            known.push({ P: tu.src, p: tu.sp, proto: tu.proto, host: ev.host, hport: 30000 + ev.port * 2, rem: tu.dst, rport: tu.dp, sent: pkts[k], got: Buffer.from(r.ip) });
            if (known.length > 40) known.shift();
          }
        });
        for (const o of h.takeOriginated()) {
          originated++;
          const ipb = o.linkType === 101 ? o.bytes : o.bytes.subarray(14);
          const probs = checksumProblems(ipb, 'originated');
          if (probs.length) throw new Error(probs.join('; '));
        }
        now += splits[s % splits.length] % 3 === 0 ? 200 : 1;
      }
      return true;
    },
  ), { numRuns: 200, seed: 0x5eed });
  t.ok(checked > 500, `checked ${checked} forwarded packets (${forwarded} forwarded, ${originated} originated)`);
});

t.test('random bytes and random cuts never throw', async (t) => {
  const h = new Harness(baseConfig({ holdUnsolicitedSyn: true }));
  const seeds = [udp4(HOSTS[0], REMOTES[0], 1, 2), tcp4(HOSTS[0], REMOTES[0], 1, 2, 2), echo4(HOSTS[0], REMOTES[0], 8, 1),
    icmpError4(REMOTES[0], ip('192.0.2.1'), 3, 3, udp4(ip('192.0.2.1'), REMOTES[0], 1, 2)), ipv4Packet(HOSTS[0], REMOTES[0], 17, Buffer.alloc(30), { mf: true })];
  fc.assert(fc.property(
    fc.constantFrom(...seeds), fc.array(fc.tuple(fc.nat(200), fc.nat(255)), { maxLength: 8 }), fc.nat(120), fc.boolean(),
    (seed, flips, cut, side) => {
      const b = Buffer.from(seed);
      for (const [at, v] of flips) if (at < b.length) b[at] = v;
      h.run([b.subarray(0, Math.min(b.length, cut + 1))], side ? OUTSIDE : INSIDE, T0);
      h.takeOriginated();
      return true;
    },
  ), { numRuns: 3000, seed: 7 });
  fc.assert(fc.property(fc.uint8Array({ maxLength: 120 }), fc.boolean(), (u, side) => {
    h.run([Buffer.from(u)], side ? OUTSIDE : INSIDE, T0 + 1);
    return true;
  }), { numRuns: 2000, seed: 8 });
  t.pass('no exception');
});
