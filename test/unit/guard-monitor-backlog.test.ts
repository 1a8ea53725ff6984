// The monitor and a node's backlog: while the bus is down a node keeps
// flushing (one DeltaBatch per interval, buffered by RedisBus), and on the
// reconnect the whole backlog arrives at once. The monitor's bucket runs on
// arrival time, so scoring the backlog would take every attempt of the outage
// as made in the same instant and block an ordinary client (found by
// test/e2e/guard-redis.test.ts). Backlog batches are counted, but neither
// scored nor taken from the rate bucket; the next timely batches are scored.

import t from 'tap';
import { Monitor } from '../../src/guard/monitor.js';
import { EmbeddedBus, type BlockEvent, type DeltaBatch } from '../../src/guard/bus.js';
import { defaultGuardConfig } from '../../src/guard/config.js';
import { Logger } from '../../src/control/log.js';

const CLIENT = '198.18.1.2';
const ATTACKER = '198.18.1.3';
const NODES = ['g1', 'g2'];

function setup() {
  // As the e2e test: rate 450/s over both nodes, bucket depth the same, double weight, incomplete off.
  const cfg = defaultGuardConfig({
    interval: 1,
    thresholds: { rate: { rate: 450, burst: 450 }, total: { max: 1_000_000, window: 60 } },
    score: { threshold: 100, weights: { rate: 2, incomplete: 0 } },
  });
  let now = 1_700_000_000_000;
  const bus = new EmbeddedBus();
  const events: BlockEvent[] = [];
  bus.onBlock((e) => events.push(e));
  const m = new Monitor(cfg, { log: new Logger('error', () => {}), bus, now: () => now });
  const seq = new Map<string, number>();
  /** A batch flushed by `node` at time `at` (default now), delivered now. */
  const batch = (node: string, rows: [string, number][], at = now): DeltaBatch => {
    seq.set(node, (seq.get(node) ?? 0) + 1);
    return { node, seq: seq.get(node)!, at, deltas: rows.map(([addr, n]) => ({ addr, attempts: n, suspicious: 0, completed: n, closed: n })) };
  };
  return { m, events, batch, advance: (ms: number) => { now += ms; }, now: () => now };
}

const blocked = (events: BlockEvent[]) => events.filter((e) => e.op === 'block').map((e) => e.entry.addr);

t.test('a backlog delivered at once after a bus outage does not get an ordinary client blocked', async (t) => {
  const { m, events, batch, advance, now } = setup();
  // Timely: 200 requests per second through each node (400/s, under 450).
  for (let i = 0; i < 3; i++) {
    advance(1000);
    for (const n of NODES) m.onDeltas(batch(n, [[CLIENT, 200]]));
  }
  // Ten seconds without the bus: each node flushed ten batches, which arrive together.
  const t0 = now();
  advance(10_000);
  for (const n of NODES) for (let k = 1; k <= 10; k++) m.onDeltas(batch(n, [[CLIENT, 200]], t0 + k * 1000));
  // Then timely again, the first batch soon after the burst (the flush timers' phase is anyone's).
  advance(50);
  for (const n of NODES) m.onDeltas(batch(n, [[CLIENT, 200]], t0 + 10_000 + 1000));
  for (let i = 0; i < 3; i++) {
    advance(1000);
    for (const n of NODES) m.onDeltas(batch(n, [[CLIENT, 200]], now() + 950));
  }
  t.same(blocked(events), [], 'the client is not blocked');
  // Per node: the backlog's ten, and the first timely batch (flushed an interval after the last of the backlog, arriving 50 ms after it).
  t.equal(m.stats().monitor_catchup, 22, 'the held-back batches were recognised as a backlog');
  const c = m.scores(10).find((s) => s.addr === CLIENT)!;
  t.equal(c.attempts, 200 * 2 * 17, 'and still counted');
  t.ok(c.score < 1, `client score ${c.score}`);
});

t.test('an attack that goes on after the outage is blocked within a few timely intervals', async (t) => {
  const { m, events, batch, advance, now } = setup();
  advance(1000);
  for (const n of NODES) m.onDeltas(batch(n, [[ATTACKER, 1]]));
  const t0 = now();
  advance(5000);
  // The backlog: 320/s per node (under 450 each, 640/s together) for five seconds.
  for (const n of NODES) for (let k = 1; k <= 5; k++) m.onDeltas(batch(n, [[ATTACKER, 320]], t0 + k * 1000));
  t.same(blocked(events), [], 'the backlog alone decides nothing');
  t.equal(m.scores(10).find((s) => s.addr === ATTACKER)!.attempts, 2 + 3200, 'but every attempt is counted');
  for (let i = 0; i < 3 && events.length === 0; i++) {
    advance(1000);
    m.onDeltas(batch('g1', [[ATTACKER, 320]]));
    m.onDeltas(batch('g2', [[ATTACKER, 320]]));
  }
  t.same(blocked(events), [ATTACKER], 'the attack going on after the outage is blocked within three timely intervals');
  t.same(events[0].entry.nodes, NODES);
  t.equal(events[0].entry.rule, 'rate');
});

t.test('timely batches with jitter and clock skew between hosts are all scored', async (t) => {
  const { m, events, batch, advance, now } = setup();
  // g2's clock runs 7 s behind the monitor's, g1's 3 s ahead; flushes jitter by up to 200 ms.
  const skew: Record<string, number> = { g1: 3000, g2: -7000 };
  for (let i = 0; i < 6; i++) {
    advance(1000 + ((i * 137) % 200) - 100);
    for (const n of NODES) m.onDeltas(batch(n, [[ATTACKER, 320]], now() + skew[n]));
  }
  t.equal(m.stats().monitor_catchup, 0, 'no batch taken for a backlog');
  t.same(blocked(events), [ATTACKER], 'the split flood (640/s over two nodes) is blocked');
});
