// Property test: random insert / touch / remove / advance-and-expire sequences
// against a Map model. A tiny table (16 records, 32 index slots) keeps the
// probe windows crowded, so backward-shift deletion, in-place eviction and
// the wheel are all exercised; after every step every key the model holds
// must be findable under the id the model remembers (ids never move).

import t from 'tap';
import fc from 'fast-check';
import { Counters } from '../../src/counters.js';
import { Batch } from '../../src/io/batch.js';
import { Meta } from '../../src/wire/meta.js';
import { FlowTable } from '../../src/flow/flow-table.js';
import { fillBatch } from './flow-fixture.js';

const KEYS = 40;
const PROTOS = [6, 17, 1] as const;
const TIMEOUT: Record<number, number> = { 6: 240, 17: 300, 1: 60 }; // TCP starts (and stays) in SYN_SENT here
const key = (i: number) => ({ src: 0x0a000000 + (i % 8), dst: 0x0a000100 + (i % 3), sport: 1000 + i, dport: 53, proto: PROTOS[i % 3] });
const dotted = (w: number) => `${w >>> 24}.${(w >>> 16) & 255}.${(w >>> 8) & 255}.${w & 255}`;

type Op =
  | { op: 'insert'; k: number }
  | { op: 'touch'; k: number }
  | { op: 'remove'; k: number }
  | { op: 'advance'; dt: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constant('insert' as const), k: fc.nat(KEYS - 1) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('touch' as const), k: fc.nat(KEYS - 1) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('remove' as const), k: fc.nat(KEYS - 1) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('advance' as const), dt: fc.integer({ min: 0, max: 350 }) }) },
);

t.test('flow table matches a Map model under random operations', async (t) => {
  let runs = 0;
  fc.assert(
    fc.property(fc.integer(), fc.array(opArb, { minLength: 1, maxLength: 200 }), (seed, ops) => {
      runs++;
      const counters = new Counters();
      const table = new FlowTable({ capacity: 16, seed, highWater: 1, floodRate: 1e9, floodBurst: 1e9, wheelSlots: 64 }, counters);
      const batch = new Batch(4, 4096);
      const meta = new Meta(4);
      const model = new Map<number, { id: number; last: number }>();
      let now = 1000;
      let removes = 0; // remove() counts neither as expired nor evicted
      const lookup = (k: number) => { const q = key(k); return table.lookup4(q.src, q.dst, q.sport, q.dport, q.proto); };
      const learnVictims = (except: number) => {
        // Evictions during an insert: exactly the keys that vanished leave the model.
        for (const [k] of model) if (k !== except && lookup(k) < 0) model.delete(k);
      };
      for (const o of ops) {
        if (o.op === 'insert') {
          const q = key(o.k);
          const before = counters.get('flow_evicted') + counters.get('flow_expired');
          const id = table.insert4(q.src, q.dst, q.sport, q.dport, q.proto, now);
          const evicted = counters.get('flow_evicted') + counters.get('flow_expired') - before;
          const had = model.get(o.k);
          if (had) {
            if (id !== had.id) throw new Error(`existing key ${o.k} moved from ${had.id} to ${id}`);
          } else if (id < 0) {
            if (evicted !== 0) throw new Error('refused insert evicted something');
          } else {
            const n = model.size;
            model.set(o.k, { id, last: now });
            learnVictims(o.k);
            if (n + 1 - model.size !== evicted) throw new Error(`evicted ${evicted} but ${n + 1 - model.size} keys vanished`);
          }
        } else if (o.op === 'touch') {
          const had = model.get(o.k);
          if (!had) continue;
          const q = key(o.k);
          // A packet from the server side (proto as keyed; TCP without flags keeps its state).
          fillBatch(batch, meta, [{ src: dotted(q.dst), dst: dotted(q.src), sport: q.dport, dport: q.sport, proto: q.proto, t: now }]);
          table.trackBatch(batch, meta, counters);
          if (table.flowOf[0] !== had.id) throw new Error(`touch of ${o.k} found ${table.flowOf[0]}, model ${had.id}`);
          had.last = now;
        } else if (o.op === 'remove') {
          const had = model.get(o.k);
          const ok = had ? table.remove(had.id) : false;
          if (ok !== !!had) throw new Error(`remove ${o.k}: table ${ok}, model ${!!had}`);
          if (ok) removes++;
          model.delete(o.k);
        } else {
          now += o.dt;
          table.expire(now);
          for (const [k, v] of model) if (v.last + TIMEOUT[key(k).proto] <= now) model.delete(k);
        }
        // Invariants after every step.
        if (table.size !== model.size) throw new Error(`size ${table.size} != model ${model.size} after ${JSON.stringify(o)}`);
        for (const [k, v] of model) {
          const id = lookup(k);
          if (id !== v.id) throw new Error(`key ${k}: lookup ${id}, model ${v.id} after ${JSON.stringify(o)}`);
        }
        for (let k = 0; k < KEYS; k++) if (!model.has(k) && lookup(k) >= 0) throw new Error(`ghost key ${k}`);
        if (!table.checkWheel()) throw new Error('wheel inconsistent');
      }
      const live = counters.get('flow_created') - counters.get('flow_expired') - counters.get('flow_evicted') - removes;
      if (live !== table.size) throw new Error(`counters say ${live} live flows, table has ${table.size}`);
      return true;
    }),
    { numRuns: 300 },
  );
  t.equal(runs >= 300, true, `${runs} runs`);
});
