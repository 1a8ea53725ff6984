// The guard's monitor with a hand-driven clock: per-prefix thresholds
// (longest match), token bucket, window total, concurrent and incomplete
// rules, score decay, block threshold, blacklist expiry and escalation, the
// allow list, manual block/unblock, alerts (log line, ring, webhook), and a
// node (Guard) whose data path applies what the monitor decides.
import t from 'tap';
import http from 'node:http';
import { Monitor, AddressState, GuardError } from '../../src/guard/monitor.js';
import { EmbeddedBus, type BlockEvent, type DeltaBatch, type AttemptDelta } from '../../src/guard/bus.js';
import { defaultGuardConfig, validateGuardConfig } from '../../src/guard/config.js';
import { validateConfig } from '../../src/control/config.js';
import { Logger } from '../../src/control/log.js';
import { Guard } from '../../src/guard/guard.js';
import { Counters } from '../../src/counters.js';
import { FlowTable } from '../../src/flow/flow-table.js';
import { Verdict } from '../../src/io/batch.js';
import { SYN, tcp4, parsed } from './guard-helpers.js';

function setup(over: Record<string, unknown> = {}) {
  const cfg = defaultGuardConfig(over);
  let now = 1_700_000_000_000;
  const lines: string[] = [];
  const log = new Logger('debug', (l) => { lines.push(l); });
  const bus = new EmbeddedBus();
  const events: BlockEvent[] = [];
  bus.onBlock((e) => events.push(e));
  const m = new Monitor(cfg, { log, bus, now: () => now });
  let seq = 0;
  const send = (deltas: (Partial<AttemptDelta> & { addr: string })[], node = 'n1') => {
    const b: DeltaBatch = { node, seq: ++seq, at: now, deltas: deltas.map((d) => ({ attempts: 0, suspicious: 0, completed: 0, closed: 0, ...d })) };
    m.onDeltas(b);
  };
  const advance = (sec: number) => { now += sec * 1000; };
  return { m, cfg, bus, events, lines, send, advance, now: () => now };
}

const score = (m: Monitor, addr: string) => m.scores(1000).find((s) => s.addr === addr)?.score ?? 0;

t.test('token bucket: a burst within `burst` and a steady rate under `rate` never score; a flood blocks with rule rate', async (t) => {
  const { m, events, send, advance, lines } = setup({ thresholds: { rate: { rate: 10, burst: 20 } }, score: { threshold: 100 } });
  send([{ addr: '198.18.1.2', attempts: 20, completed: 20 }]);
  for (let i = 0; i < 30; i++) {
    advance(1);
    send([{ addr: '198.18.1.2', attempts: 10, completed: 10 }]);
  }
  t.equal(score(m, '198.18.1.2'), 0, '20 at once, then 10/s for 30 s: no points');
  advance(1);
  send([{ addr: '198.18.1.9', attempts: 5000 }]);
  t.equal(events.length, 1);
  t.equal(events[0].op, 'block');
  t.equal(events[0].entry.addr, '198.18.1.9');
  t.equal(events[0].entry.rule, 'rate');
  t.equal(events[0].entry.offences, 1);
  t.same(events[0].entry.nodes, ['n1']);
  t.ok(events[0].entry.score >= 100);
  t.equal(events[0].entry.until - events[0].entry.at, 600_000, 'ban.time');
  const alert = m.alerts.recent().at(-1)!;
  t.equal(alert.action, 'block');
  t.equal(alert.rule, 'rate');
  t.equal(alert.window!.to - alert.window!.from, 1000, 'the interval whose deltas crossed');
  t.ok(lines.some((l) => { const j = JSON.parse(l); return j.level === 'warn' && j.msg === 'guard block' && j.guard.addr === '198.18.1.9'; }), 'a structured log line');
  t.same(await new EmbeddedBus().loadSnapshot(), []);
});

t.test('thresholds per prefix: the longest prefix wins', async (t) => {
  const { m, send } = setup({
    thresholds: { rate: { rate: 1, burst: 1 } },
    prefixes: [{ prefix: '198.18.0.0/15', rate: { rate: 1000, burst: 1000 } }, { prefix: '198.18.7.0/24', rate: { rate: 5, burst: 5 } }],
    score: { threshold: 1e9 },
  });
  send([{ addr: '203.0.113.1', attempts: 50 }, { addr: '198.18.1.1', attempts: 50 }, { addr: '198.18.7.1', attempts: 50 }]);
  t.equal(score(m, '203.0.113.1'), 49, 'default: 1 token, 49 over');
  t.equal(score(m, '198.18.1.1'), 0, '/15: 1000 tokens');
  t.equal(score(m, '198.18.7.1'), 45, '/24 inside the /15: 5 tokens');
});

t.test('scores decay with the half-life; total window; incomplete balance; suspicious fragments', async (t) => {
  const { m, send, advance, events } = setup({
    thresholds: { rate: { rate: 1e6 }, total: { max: 100, window: 10 }, incomplete: 10 },
    score: { threshold: 1000, halfLife: 10 },
  });
  send([{ addr: '198.18.1.1', attempts: 150, completed: 150 }]);
  t.equal(score(m, '198.18.1.1'), 50, 'total: 50 over the window max');
  advance(10);
  t.equal(score(m, '198.18.1.1'), 25, 'halved after halfLife');
  advance(30);
  send([{ addr: '198.18.1.2', attempts: 30, completed: 5 }]);
  t.equal(score(m, '198.18.1.2'), 15, 'incomplete: 25 not completed, 10 allowed');
  advance(1);
  send([{ addr: '198.18.1.2', attempts: 0, completed: 20 }]);
  t.ok(score(m, '198.18.1.2') < 15, 'late completions score nothing and the balance drops');
  t.ok(m.scores().find((s) => s.addr === '198.18.1.2')!.incomplete < 5, 'balance 25, decayed, minus 20');
  send([{ addr: '198.18.1.3', suspicious: 2 }]);
  t.equal(score(m, '198.18.1.3'), 50, 'suspicious: 25 points each');
  t.equal(events.length, 0);
  send([{ addr: '198.18.1.3', suspicious: 40 }]);
  t.equal(events.at(-1)!.entry.rule, 'suspicious');
});

t.test('concurrent: completed - closed over the limit scores at each evaluation, also with no new deltas', async (t) => {
  const { m, send, advance, events } = setup({ thresholds: { concurrent: 10 }, score: { threshold: 100 } });
  send([{ addr: '198.18.1.1', attempts: 40, completed: 40 }]);
  t.equal(score(m, '198.18.1.1'), 30);
  advance(1);
  send([{ addr: '198.18.1.1', closed: 25 }]);
  t.equal(m.scores()[0].concurrent, 15);
  advance(1);
  m.tick();
  advance(1);
  m.tick();
  t.equal(events.length, 0);
  send([{ addr: '198.18.1.2', attempts: 20, completed: 20 }]);
  for (let i = 0; i < 20 && events.length === 0; i++) { advance(1); m.tick(); }
  t.equal(events.length, 1, 'the idle holder of 20 connections is blocked by the ticks');
  t.equal(events[0].entry.addr, '198.18.1.2');
  t.equal(events[0].entry.rule, 'concurrent');
});

t.test('blacklist expiry and escalation (bantime * factor^(offences-1), capped), offences forgotten', async (t) => {
  const { m, send, advance, events } = setup({ ban: { time: 10, factor: 3, max: 50, forget: 1000 }, score: { threshold: 10 }, thresholds: { rate: { rate: 1, burst: 1 } } });
  const attack = () => send([{ addr: '198.18.6.6', attempts: 100 }]);
  const durations: number[] = [];
  for (let k = 0; k < 4; k++) {
    attack();
    const b = events.at(-1)!;
    t.equal(b.op, 'block');
    t.equal(b.entry.offences, k + 1);
    durations.push((b.entry.until - b.entry.at) / 1000);
    // Late deltas while blocked are counted but do not score.
    send([{ addr: '198.18.6.6', attempts: 1000 }]);
    t.equal(events.at(-1), b, 'no second block while blocked');
    advance(durations[k] - 1);
    m.tick();
    t.equal(m.list().length, 1, 'still blocked one second before expiry');
    advance(1);
    m.tick();
    t.equal(events.at(-1)!.op, 'unblock');
    t.equal(m.list().length, 0);
  }
  t.same(durations, [10, 30, 50, 50], '10, 10*3, 10*9 capped at 50, capped');
  advance(1001);
  m.tick();
  attack();
  t.equal(events.at(-1)!.entry.offences, 1, 'offences older than ban.forget are forgotten');
  t.equal(m.scores(1000).find((s) => s.addr === '198.18.6.6')!.attempts, 5 * 100 + 4 * 1000, 'every delta counted');
});

t.test('allow list: never blocked (rules, by hand); one allowlisted alert; a manual prefix block exempts it on the data path', async (t) => {
  const { m, send, advance, events } = setup({ allow: ['198.18.1.0/24', 'fd00::1'], score: { threshold: 10 }, thresholds: { rate: { rate: 1, burst: 1 } } });
  send([{ addr: '198.18.1.5', attempts: 10000 }]);
  advance(1);
  send([{ addr: '198.18.1.5', attempts: 10000 }]);
  t.equal(events.length, 0);
  t.equal(m.alerts.recent().filter((a) => a.action === 'allowlisted').length, 1, 'said once per half-life');
  const code = (f: () => unknown) => { try { f(); return 0; } catch (e) { return e instanceof GuardError ? e.code : -1; } };
  t.equal(code(() => m.block('198.18.1.7')), 409);
  t.equal(code(() => m.block('fd00::1')), 409);
  t.equal(code(() => m.block('not an address')), 400);
  const e = m.block('198.18.0.0/16', 60);
  t.equal(e.addr, '198.18.0.0/16');
  t.equal(events.at(-1)!.entry.rule, 'manual');
  t.same(m.allowPrefixes().map((p) => p.text).sort(), ['198.18.1.0/24', 'fd00::1']);
  t.equal(m.unblock('198.18.0.0/16'), true);
  t.equal(m.unblock('198.18.0.0/16'), false);
  t.equal(events.at(-1)!.op, 'unblock');
});

t.test('the address table evicts quiet addresses when full and refuses when all are busy', async (t) => {
  const { m, send } = setup({ capacity: 16, score: { threshold: 1e9 } });
  for (let i = 0; i < 40; i++) send([{ addr: `198.18.2.${i}`, attempts: 1 }]);
  t.equal(m.stats().monitor_evicted, 24);
  t.equal(m.scores(1000).length, 16);
  const busy = setup({ capacity: 16, score: { threshold: 1e9 }, thresholds: { rate: { rate: 1, burst: 1 } } });
  for (let i = 0; i < 20; i++) busy.send([{ addr: `198.18.3.${i}`, attempts: 50 }]);
  t.equal(busy.m.stats().monitor_table_full, 4, 'scored addresses are not evicted');
});

t.test('sequence gaps per node are counted; bad deltas are ignored', async (t) => {
  const { m } = setup();
  m.onDeltas({ node: 'a', seq: 1, at: 0, deltas: [] });
  m.onDeltas({ node: 'a', seq: 4, at: 0, deltas: [{ addr: 'bogus', attempts: 1, suspicious: 0, completed: 0, closed: 0 }] });
  m.onDeltas({ node: 'b', seq: 9, at: 0, deltas: [] });
  t.equal(m.stats().monitor_seq_gaps, 2);
  t.equal(m.stats().monitor_bad_deltas, 1);
});

t.test('AddressState.apply allocates nothing and is deterministic', async (t) => {
  const st = new AddressState(4, [{ rate: 10, burst: 20, totalMax: 100, totalWindow: 10, concurrent: 5, incomplete: 3 }], { rate: 2, total: 1, concurrent: 1, incomplete: 1, suspicious: 25 }, 30);
  st.init(0, 0, false, 0);
  const pts: number[] = [];
  st.clock[0] = 1;
  st.apply(0, 30, 0, 0, 0, true);
  pts.push(st.contrib[5]);
  st.clock[0] = 2;
  st.apply(0, 0, 1, 10, 0, true);
  pts.push(st.contrib[5]);
  // 1: 20 tokens + 10 refilled = 30: nothing over the rate; 30 incomplete - 3 allowed = 27.
  // 2: one suspicious fragment (25) + 10 established - 5 allowed (5); the balance fell: no incomplete points.
  t.same(pts, [27, 30]);
  t.same([...st.contrib], [0, 0, 5, 0, 25, 30]);
  t.equal(st.dominantRule(), 4);
});

t.test('webhook: alerts are POSTed as JSON, retried on failure, bounded', async (t) => {
  const got: unknown[] = [];
  let fail = 2;
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      if (fail-- > 0) { res.writeHead(500); res.end(); return; }
      got.push(JSON.parse(body));
      res.writeHead(204);
      res.end();
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => srv.close());
  const port = (srv.address() as { port: number }).port;
  const { m, send } = setup({ alerts: { webhook: `http://127.0.0.1:${port}/hook`, retries: 3, timeout: 2 }, score: { threshold: 5 } });
  send([{ addr: '198.18.9.1', suspicious: 1 }]);
  await m.alerts.drain();
  t.equal(got.length, 1);
  t.match(got[0], { action: 'block', addr: '198.18.9.1', rule: 'suspicious', nodes: ['n1'] });
  t.equal(m.alerts.stats().alerts_webhook_retried, 2);
  t.equal(m.alerts.stats().alerts_webhook_sent, 1);
  // A dead webhook: bounded retries, then counted as failed; nothing blocks.
  const dead = setup({ alerts: { webhook: 'http://127.0.0.1:1/none', retries: 1, timeout: 0.5 }, score: { threshold: 5 } });
  dead.send([{ addr: '198.18.9.2', suspicious: 1 }]);
  await dead.m.alerts.drain();
  t.equal(dead.m.alerts.stats().alerts_webhook_failed, 1);
  t.equal(dead.m.list().length, 1, 'the block itself did not wait for the webhook');
});

t.test('configuration: the guard key is optional in the appliance config; errors name the key path', async (t) => {
  const base = { nat: { inside: ['198.18.1.0/24'], pool: ['198.19.2.1'] } };
  t.equal(validateConfig(base).guard, undefined, 'absent: off');
  t.equal(validateConfig({ ...base, guard: {} }).guard!.enabled, true);
  t.equal(validateConfig({ ...base, guard: {} }).guard!.thresholds.rate.burst, 200);
  t.equal(validateGuardConfig({ thresholds: { rate: { rate: 7 } } }).thresholds.rate.burst, 14, 'burst defaults to twice the rate');
  let msg = '';
  try { validateConfig({ ...base, guard: { interval: 0, allow: ['nope'], bus: 'tcp://x' } }); } catch (e) { msg = (e as Error).message; }
  t.match(msg, /guard\.interval: /);
  t.match(msg, /guard\.allow\[0\]: expected an IPv4 or IPv6 address/);
  t.match(msg, /guard\.bus: /);
});

t.test('a node: the data path drops what the embedded monitor decides, within one tick', async (t) => {
  const cfg = defaultGuardConfig({ node: 'n1', thresholds: { rate: { rate: 10, burst: 10 } }, interval: 1 });
  const counters = new Counters();
  const flows = new FlowTable({ capacity: 1024, seed: 1 }, counters);
  const g = new Guard(cfg, { counters, log: new Logger('error', () => {}), flows, batchCapacity: 256 });
  await g.start();
  t.teardown(() => g.stop());
  const flood: Buffer[] = [];
  for (let i = 0; i < 200; i++) flood.push(tcp4('198.18.3.2', '198.19.1.2', 10000 + i, 80, SYN));
  flood.push(tcp4('198.18.1.2', '198.19.1.2', 40000, 80, SYN));
  let p = parsed(flood);
  g.inspect(p.batch, p.meta, 1000);
  flows.trackBatch(p.batch, p.meta, counters);
  g.afterTrack();
  t.equal(counters.get('guard_blocked_drop'), 0);
  g.tick();
  t.same(g.blocklist.list().map((e) => e.addr), ['198.18.3.2'], 'blocked and in the data path table when tick() returns');
  p = parsed(flood);
  g.inspect(p.batch, p.meta, 1001);
  t.equal(counters.get('guard_blocked_drop'), 200);
  t.equal(p.batch.verdict[200], Verdict.FORWARD, 'the other client passes');
  const r = await g.handleAdmin('GET', '/guard/blacklist', new URLSearchParams(), undefined);
  t.equal((r.body as { blacklist: { addr: string; drops: number }[] }).blacklist[0].drops, 200);
  const u = await g.handleAdmin('POST', '/guard/unblock', new URLSearchParams(), { addr: '198.18.3.2' });
  t.equal(u.code, 200);
  await new Promise((r) => setImmediate(r));
  t.equal(g.blocklist.size, 0, 'an event outside a tick is applied on the next turn of the event loop');
  const bad = await g.handleAdmin('POST', '/guard/block', new URLSearchParams(), { addr: 'x' });
  t.equal(bad.code, 400);
  const s = await g.handleAdmin('GET', '/guard/scores', new URLSearchParams('limit=5'), undefined);
  t.ok((s.body as { scores: unknown[] }).scores.length >= 1);
});
