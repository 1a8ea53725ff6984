// TargetQueues (src/lb/queue.ts) without sockets: slots, FIFO order, bounds,
// cancel, timeouts on an injected clock, each configured action.
import t from 'tap';
import {
  TargetQueues, QueueAction, Admission, QueueCounters, parseQueueAction, realClock,
  type QueueClock, type TargetLimit, type TargetQueuesOptions,
} from '../../src/lb/queue.js';

/** A clock whose time moves only when advance() is called; timers fire in deadline order. */
class FakeClock implements QueueClock {
  t = 1000;
  private timers = new Map<number, { at: number; fn: () => void }>();
  private seq = 0;
  now(): number { return this.t; }
  setTimer(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimer(h: unknown): void { this.timers.delete(h as number); }
  pending(): number { return this.timers.size; }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let best: number | null = null;
      for (const [id, x] of this.timers) if (x.at <= end && (best === null || x.at < this.timers.get(best)!.at)) best = id;
      if (best === null) break;
      const x = this.timers.get(best)!;
      this.timers.delete(best);
      this.t = Math.max(this.t, x.at);
      x.fn();
    }
    this.t = end;
  }
}

interface Log { dequeued: [number, string][]; timedOut: [number, string, number][] }

function make(limits: TargetLimit[], opts: Partial<TargetQueuesOptions<string>> = {}) {
  const clock = new FakeClock();
  const log: Log = { dequeued: [], timedOut: [] };
  const q = new TargetQueues<string>({
    limits,
    clock,
    onDequeue: (tg, w) => log.dequeued.push([tg, w]),
    onTimeout: (tg, w, a) => log.timedOut.push([tg, w, a]),
    ...opts,
  });
  return { q, clock, log, c: q.counters };
}

t.test('maxconn: slots are taken up to the limit, 0 is unlimited', async (t) => {
  const { q } = make([{ maxconn: 2 }, { maxconn: 0 }]);
  t.equal(q.admit(0, 'a'), Admission.Admitted);
  t.equal(q.admit(0, 'b'), Admission.Admitted);
  t.equal(q.activeCount(0), 2);
  t.notOk(q.hasCapacity(0));
  t.equal(q.admit(0, 'c'), Admission.Queued, 'third waits (default onFull = queue)');
  let ok = 0;
  for (let i = 0; i < 1000; i++) if (q.tryAcquire(1)) ok++;
  t.equal(ok, 1000);
  t.equal(q.activeCount(1), 1000, 'maxconn 0 never fills');
  t.equal(q.queueLength(1), 0);
});

t.test('queue is FIFO and a freed slot goes to the head at once', async (t) => {
  const { q, log, c } = make([{ maxconn: 1, maxqueue: 10, queueTimeoutMs: 0 }]);
  t.equal(q.admit(0, 'first'), Admission.Admitted);
  for (const w of ['w1', 'w2', 'w3', 'w4']) t.equal(q.admit(0, w), Admission.Queued);
  t.equal(q.queueLength(0), 4);
  t.equal(c.queued, 4);
  for (let i = 0; i < 4; i++) {
    q.release(0);
    t.equal(q.activeCount(0), 1, 'the slot passed straight to a waiter');
  }
  t.same(log.dequeued.map((x) => x[1]), ['w1', 'w2', 'w3', 'w4'], 'served in arrival order');
  t.equal(c.dequeued, 4);
  q.release(0);
  t.equal(q.activeCount(0), 0);
  q.release(0);
  t.equal(q.activeCount(0), 0, 'a stray release does not go negative');
});

t.test('maxconn 2: one release serves one waiter, not two', async (t) => {
  const { q, log } = make([{ maxconn: 2, maxqueue: 5 }]);
  q.admit(0, 'a'); q.admit(0, 'b'); q.admit(0, 'x'); q.admit(0, 'y');
  q.release(0);
  t.same(log.dequeued, [[0, 'x']]);
  t.equal(q.activeCount(0), 2);
});

t.test('maxqueue bounds the queue; the overflow action is returned and queue_full counted', async (t) => {
  for (const [name, action] of [['redispatch', QueueAction.Redispatch], ['backup', QueueAction.Backup], ['reject', QueueAction.Reject]] as const) {
    const { q, c } = make([{ maxconn: 1, maxqueue: 2 }], { onQueueFull: action });
    q.admit(0, 'a');
    t.equal(q.admit(0, 'b'), Admission.Queued);
    t.equal(q.admit(0, 'c'), Admission.Queued);
    t.equal(q.admit(0, 'd'), action, `full queue -> ${name}`);
    t.equal(q.queueLength(0), 2);
    t.equal(c.queueFull, 1);
    t.equal(c.queued, 2);
  }
  const { q, c } = make([{ maxconn: 1, maxqueue: 0 }], { onQueueFull: QueueAction.Redispatch });
  q.admit(0, 'a');
  t.equal(q.admit(0, 'b'), Admission.Redispatch, 'maxqueue 0: no queue at all');
  t.equal(c.queueFull, 1);
  t.equal(c.queued, 0);
});

t.test('onFull other than queue is returned directly, nothing queued', async (t) => {
  for (const a of [QueueAction.Redispatch, QueueAction.Backup, QueueAction.Reject]) {
    const { q, c } = make([{ maxconn: 1, maxqueue: 10 }], { onFull: a });
    q.admit(0, 'a');
    t.equal(q.admit(0, 'b'), a);
    t.equal(q.queueLength(0), 0);
    t.equal(c.queued + c.queueFull, 0);
  }
});

t.test('queues of different targets are independent and share the node pool safely', async (t) => {
  const { q, log } = make([{ maxconn: 1, maxqueue: 3 }, { maxconn: 1, maxqueue: 3 }]);
  q.admit(0, 'a0'); q.admit(1, 'a1');
  for (let i = 0; i < 3; i++) { q.admit(0, `x${i}`); q.admit(1, `y${i}`); }
  t.equal(q.admit(0, 'x3'), Admission.Redispatch, 'target 0 full at 3 even though target 1 uses the same pool');
  q.release(1); q.release(0); q.release(1);
  t.same(log.dequeued, [[1, 'y0'], [0, 'x0'], [1, 'y1']]);
  t.equal(q.queueLength(0), 2);
  t.equal(q.queueLength(1), 1);
});

t.test('cancel removes a waiter from anywhere in the queue in O(1) and keeps the order', async (t) => {
  const { q, log, c } = make([{ maxconn: 1, maxqueue: 4, queueTimeoutMs: 0 }]);
  q.admit(0, 'a');
  const tk: Record<string, number> = {};
  for (const w of ['h', 'm', 'z']) { q.admit(0, w); tk[w] = q.lastTicket; }
  t.ok(q.cancel(tk.m, 'm'), 'middle');
  t.notOk(q.cancel(tk.m, 'm'), 'twice is refused');
  t.notOk(q.cancel(tk.h, 'other'), 'a ticket with the wrong waiter is refused');
  t.ok(q.cancel(tk.h, 'h'), 'head');
  t.equal(c.abandoned, 2);
  t.equal(q.queueLength(0), 1);
  // freed nodes are reused: the queue takes its full size again
  for (const w of ['p', 'q', 'r']) t.equal(q.admit(0, w), Admission.Queued);
  t.equal(q.admit(0, 's'), Admission.Redispatch);
  for (let i = 0; i < 4; i++) q.release(0);
  t.same(log.dequeued.map((x) => x[1]), ['z', 'p', 'q', 'r']);
});

t.test('queue timeout: fires after queueTimeoutMs with the configured action, in FIFO order, one timer per target', async (t) => {
  const { q, clock, log, c } = make([{ maxconn: 1, maxqueue: 10, queueTimeoutMs: 100 }], { onQueueTimeout: QueueAction.Backup });
  q.admit(0, 'a');
  q.admit(0, 'w1');
  clock.advance(30);
  q.admit(0, 'w2');
  t.equal(clock.pending(), 1, 'one timer for the whole queue');
  clock.advance(69);
  t.same(log.timedOut, [], 'not before 100 ms');
  clock.advance(2);
  t.same(log.timedOut, [[0, 'w1', QueueAction.Backup]], 'w1 at 100 ms');
  t.equal(q.queueLength(0), 1);
  t.equal(clock.pending(), 1, 'rearmed for w2');
  clock.advance(29);
  t.same(log.timedOut.map((x) => x[1]), ['w1', 'w2'], 'w2 at 130 ms');
  t.equal(c.queueTimeouts, 2);
  t.equal(clock.pending(), 0, 'no timer once the queue is empty');
  t.equal(q.activeCount(0), 1, 'a timeout does not take or free a slot');
});

t.test('a served or cancelled head moves the timer to the next deadline', async (t) => {
  const { q, clock, log } = make([{ maxconn: 1, maxqueue: 10, queueTimeoutMs: 100 }]);
  q.admit(0, 'a');
  q.admit(0, 'w1');
  clock.advance(50);
  q.admit(0, 'w2');
  q.release(0); // w1 served at 50 ms
  clock.advance(60); // 110 ms: w1's deadline passed, but it is no longer queued
  t.same(log.timedOut, []);
  clock.advance(41); // 151 ms: w2's
  t.same(log.timedOut, [[0, 'w2', QueueAction.Reject]], 'default timeout action: reject');
  const tk = (q.admit(0, 'w3'), q.lastTicket);
  q.cancel(tk, 'w3');
  t.equal(clock.pending(), 0);
});

t.test('queueTimeoutMs 0 waits without limit', async (t) => {
  const { q, clock, log } = make([{ maxconn: 1, queueTimeoutMs: 0 }]);
  q.admit(0, 'a'); q.admit(0, 'w');
  t.equal(clock.pending(), 0);
  clock.advance(1e9);
  t.same(log.timedOut, []);
});

t.test('a real timer fires after about queueTimeoutMs', async (t) => {
  const fired: number[] = [];
  const q = new TargetQueues<number>({
    limits: [{ maxconn: 1, queueTimeoutMs: 40 }],
    clock: realClock,
    onDequeue: () => undefined,
    onTimeout: () => fired.push(performance.now()),
  });
  q.admit(0, 0);
  const t0 = performance.now();
  q.admit(0, 1);
  await new Promise((r) => setTimeout(r, 150));
  t.equal(fired.length, 1);
  t.ok(fired[0] - t0 >= 38 && fired[0] - t0 < 140, `fired after ${(fired[0] - t0).toFixed(1)} ms`);
  q.dispose();
});

t.test('dispose returns the waiters and stops timers and dequeues', async (t) => {
  const { q, clock, log } = make([{ maxconn: 1, queueTimeoutMs: 10 }]);
  q.admit(0, 'a'); q.admit(0, 'b'); q.admit(0, 'c');
  t.same(q.dispose(), ['b', 'c']);
  t.equal(clock.pending(), 0);
  q.release(0);
  t.same(log.dequeued, []);
});

t.test('validation names the key and the accepted values', async (t) => {
  t.throws(() => make([{ maxconn: -1 }]), /limits\[0\]\.maxconn must be an integer/);
  t.throws(() => make([{ maxconn: 1 }, { maxqueue: 1e9 }]), /limits\[1\]\.maxqueue must be an integer 0\.\.65536/);
  t.throws(() => make([{ queueTimeoutMs: 1.5 }]), /queueTimeoutMs/);
  t.throws(() => make([{}], { onQueueFull: QueueAction.Queue }), /onQueueFull cannot be 'queue'/);
  t.throws(() => make([{}], { onQueueTimeout: QueueAction.Queue }), /onQueueTimeout cannot be 'queue'/);
  t.equal(parseQueueAction('x', 'backup', false), QueueAction.Backup);
  t.equal(parseQueueAction('x', 'queue', true), QueueAction.Queue);
  t.throws(() => parseQueueAction('limits.onQueueFull', 'queue', false), /limits\.onQueueFull must be one of 'redispatch', 'backup', 'reject', got "queue"/);
  t.throws(() => parseQueueAction('limits.onFull', 'drop', true), /'queue', 'redispatch'/);
});

t.test('counters are a fixed shape of numbers and can be shared', async (t) => {
  const shared = new QueueCounters();
  const { q } = make([{ maxconn: 1, maxqueue: 1 }], { counters: shared });
  q.admit(0, 'a'); q.admit(0, 'b'); q.admit(0, 'c');
  t.equal(shared.queued, 1);
  t.equal(shared.queueFull, 1);
  t.same(Object.keys(shared).sort(), ['abandoned', 'dequeued', 'queueFull', 'queueTimeouts', 'queued', 'redispatched', 'rejected', 'toBackup']);
});
