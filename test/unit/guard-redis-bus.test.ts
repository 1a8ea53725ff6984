// RedisBus (src/guard/redis-bus.ts) against a real redis-server started by
// this file on 127.0.0.1 (a free port, no persistence) and killed at the end,
// also on failure: deltas from two nodes reach one monitor and add up; a
// restarted monitor does not count again; block events reach every node; a
// node started in the middle of a stream of blocks gets exactly the events
// after its snapshot (none missed, none twice); Redis killed mid-run and
// restarted on the same port (nothing survives: no persistence): nodes keep
// their last state and buffer, count, merge and drop deltas, reconnect with a
// growing backoff, receive the later blocks, and the monitor gets the
// buffered deltas; hostile entries in the streams and the snapshot key are
// counted and skipped.

import t from 'tap';
import net from 'node:net';
import { Redis } from 'ioredis';
import { RedisBus, parseBlockEvent, parseDeltaBatch, parseSnapshot, isAddrOrPrefix, type RedisBusOptions } from '../../src/guard/redis-bus.js';
import type { BlockEntry, BlockEvent, DeltaBatch } from '../../src/guard/bus.js';
import { RedisServer, startRedis } from '../helpers/redis-server.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

let prefixSeq = 0;
function uniquePrefix(): string {
  return `test:${process.pid}:${++prefixSeq}`;
}

/**
 * A TCP relay to redis-server that can be cut (connections reset, new ones
 * refused), frozen (a black hole: connections stay open, bytes vanish) and
 * healed: one node loses Redis, the others do not.
 */
async function cuttableProxy(target: number): Promise<{ port: number; cut(): void; freeze(): void; heal(): void; close(): Promise<void> }> {
  const socks = new Set<net.Socket>();
  let down = false, frozen = false;
  const srv = net.createServer((c) => {
    if (down) { c.destroy(); return; }
    const u = net.connect(target, '127.0.0.1');
    socks.add(c); socks.add(u);
    c.on('data', (d) => { if (!frozen) u.write(d); });
    u.on('data', (d) => { if (!frozen) c.write(d); });
    const end = () => { c.destroy(); u.destroy(); socks.delete(c); socks.delete(u); };
    c.on('error', end); u.on('error', end); c.on('close', end); u.on('close', end);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: (srv.address() as net.AddressInfo).port,
    cut() { down = true; for (const s of socks) s.destroy(); },
    freeze() { frozen = true; },
    heal() { down = false; frozen = false; },
    close: () => new Promise<void>((r) => { for (const s of socks) s.destroy(); srv.close(() => r()); }),
  };
}

/** Fast timings for tests. */
function opts(server: RedisServer, over: Partial<RedisBusOptions> & { node: string; prefix: string }): RedisBusOptions {
  return { url: server.url, reconnectMinMs: 20, reconnectMaxMs: 400, blockMs: 200, startTimeoutMs: 2000, connectTimeoutMs: 500, ...over };
}

function entry(addr: string, over: Partial<BlockEntry> = {}): BlockEntry {
  return { addr, until: 0, rule: 'rate', score: 10, nodes: ['n1'], offences: 1, at: 1_700_000_000_000, ...over };
}

/** What a node's enforcement table does with the bus: snapshot at start, then every event. */
class NodeTable {
  readonly m = new Map<string, BlockEntry>();
  readonly events: BlockEvent[] = [];
  constructor(readonly bus: RedisBus) {
    bus.onBlock((e) => {
      this.events.push(e);
      if (e.op === 'block') this.m.set(e.entry.addr, e.entry);
      else this.m.delete(e.entry.addr);
    });
  }
  async start(): Promise<BlockEntry[]> {
    await this.bus.start();
    const snap = await this.bus.loadSnapshot();
    for (const e of snap) this.m.set(e.addr, e);
    return snap;
  }
  sorted(): string[] {
    return [...this.m.keys()].sort();
  }
}

function batch(node: string, seq: number, rows: [string, number][]): DeltaBatch {
  return { node, seq, at: Date.now(), deltas: rows.map(([addr, attempts]) => ({ addr, attempts, suspicious: 1, completed: 0, closed: 0 })) };
}

/** Sum of attempts per address over what a monitor received. */
function sums(batches: DeltaBatch[]): Record<string, number> {
  const o: Record<string, number> = {};
  for (const b of batches) for (const d of b.deltas) o[d.addr] = (o[d.addr] ?? 0) + d.attempts;
  return o;
}

t.test('parsers refuse hostile values', async (t) => {
  const ok = JSON.stringify(batch('n1', 1, [['198.18.0.1', 3]]));
  t.ok(parseDeltaBatch(ok), 'a valid batch parses');
  for (const bad of ['', 'not json', '[]', 'null', '{"node":"n","seq":1,"at":1}', '{"node":"","seq":1,"at":1,"deltas":[]}',
    JSON.stringify({ node: 'n', seq: -1, at: 1, deltas: [] }),
    JSON.stringify({ node: 'n', seq: 1, at: 1, deltas: [{ addr: 'evil', attempts: 1, suspicious: 0, completed: 0, closed: 0 }] }),
    JSON.stringify({ node: 'n', seq: 1, at: 1, deltas: [{ addr: '198.18.0.1', attempts: 'x', suspicious: 0, completed: 0, closed: 0 }] }),
    JSON.stringify({ node: 'n', seq: 1, at: 1, deltas: [{ addr: '198.18.0.1', attempts: 1e400, suspicious: 0, completed: 0, closed: 0 }] }),
    JSON.stringify({ node: 'n', seq: 1, at: 1, deltas: [null] })]) {
    t.equal(parseDeltaBatch(bad), null, `batch refused: ${bad.slice(0, 60)}`);
  }
  t.same(parseBlockEvent(JSON.stringify({ op: 'block', entry: entry('198.18.7.0/24') })), { op: 'block', entry: entry('198.18.7.0/24') });
  for (const bad of [JSON.stringify({ op: 'drop', entry: entry('198.18.0.1') }), JSON.stringify({ op: 'block', entry: entry('198.18.0.1/33') }),
    JSON.stringify({ op: 'block', entry: { ...entry('198.18.0.1'), nodes: [1] } }), JSON.stringify({ op: 'block' }), '{', '"x"']) {
    t.equal(parseBlockEvent(bad), null, `event refused: ${bad.slice(0, 60)}`);
  }
  t.same(parseSnapshot('[]'), []);
  t.equal(parseSnapshot('[{"addr":"x"}]'), null);
  t.ok(isAddrOrPrefix('fd00::/8') && isAddrOrPrefix('fd00::1') && !isAddrOrPrefix('fd00::/129') && !isAddrOrPrefix('1.2.3.4/'), 'prefix lengths checked');
  t.throws(() => new RedisBus({ url: 'http://x', node: 'n' }), /redis:\/\/host:port/);
  t.throws(() => new RedisBus({ url: 'redis://127.0.0.1:1', node: '' }), /guard\.node/);
});

t.test('against a real redis-server', async (t) => {
  const server = await startRedis();
  const raw = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
  raw.on('error', () => {});
  await raw.connect();
  t.teardown(async () => {
    raw.disconnect();
    await server.kill();
  });

  t.test('deltas from two nodes add up at one monitor; a restarted monitor does not count again', async (t) => {
    const prefix = uniquePrefix();
    const n1 = new RedisBus(opts(server, { node: 'n1', prefix }));
    const n2 = new RedisBus(opts(server, { node: 'n2', prefix }));
    let mon = new RedisBus(opts(server, { node: 'mon', prefix, role: 'monitor' }));
    let mon2: RedisBus | null = null;
    t.teardown(async () => { await Promise.all([n1.close(), n2.close(), mon.close(), mon2?.close()]); });
    const got: DeltaBatch[] = [];
    mon.onDeltas((b) => got.push(b));
    await Promise.all([n1.start(), n2.start(), mon.start()]);
    t.equal(mon.stats().bus_connected, 1, 'monitor connected');
    // One attacker spread over both nodes, 6 attempts at each: only the sum (12) says it is one attack.
    for (let s = 1; s <= 3; s++) {
      n1.publishDeltas(batch('n1', s, [['198.18.9.9', 2], ['198.18.1.1', 1]]));
      n2.publishDeltas(batch('n2', s, [['198.18.9.9', 2]]));
    }
    await waitFor(() => got.length === 6, 3000, '6 batches at the monitor');
    t.same(sums(got), { '198.18.9.9': 12, '198.18.1.1': 3 }, 'counts of both nodes aggregated');
    t.same(got.filter((b) => b.node === 'n1').map((b) => b.seq), [1, 2, 3], 'n1 batches in order');
    t.same(got.filter((b) => b.node === 'n2').map((b) => b.seq), [1, 2, 3], 'n2 batches in order');
    t.equal(n1.stats().bus_deltas_published, 3);
    t.equal(n1.stats().bus_deltas_buffered, 0, 'nothing had to wait');
    t.equal(mon.stats().bus_deltas_received, 6);
    t.equal(await raw.xlen(n1.keys.deltas), 6, 'six entries in the deltas stream');

    // The monitor goes away; nodes keep sending; a new monitor (same group)
    // counts what came while it was away, and nothing it had already counted.
    await mon.close();
    n1.publishDeltas(batch('n1', 4, [['198.18.9.9', 5]]));
    n2.publishDeltas(batch('n2', 4, [['198.18.9.9', 7]]));
    await waitFor(() => n1.stats().bus_deltas_published === 4 && n2.stats().bus_deltas_published === 4, 3000, 'published while no monitor');
    mon2 = new RedisBus(opts(server, { node: 'mon', prefix, role: 'monitor' }));
    const got2: DeltaBatch[] = [];
    mon2.onDeltas((b) => got2.push(b));
    await mon2.start();
    await waitFor(() => got2.length >= 2, 3000, 'the two batches sent while the monitor was away');
    await sleep(300);
    t.same(sums(got2), { '198.18.9.9': 12 }, 'the restarted monitor counts only the batches it had not seen');
    t.equal(got2.length, 2, 'no old batch delivered again');
  });

  t.test('maxDeltaAgeMs: a monitor back after a long absence skips what sat in the stream too long', async (t) => {
    const prefix = uniquePrefix();
    const n = new RedisBus(opts(server, { node: 'n', prefix }));
    const mon = new RedisBus(opts(server, { node: 'mon', prefix, role: 'monitor', maxDeltaAgeMs: 300 }));
    t.teardown(async () => { await Promise.all([n.close(), mon.close()]); });
    await n.start();
    n.publishDeltas(batch('n', 1, [['198.18.2.1', 5]]));
    await waitFor(() => n.stats().bus_deltas_published === 1, 3000, 'published');
    await sleep(500);
    const got: DeltaBatch[] = [];
    mon.onDeltas((b) => got.push(b));
    await mon.start();
    n.publishDeltas(batch('n', 2, [['198.18.2.1', 7]]));
    await waitFor(() => got.length === 1 && mon.stats().bus_deltas_stale === 1, 3000, 'one fresh batch and one stale');
    t.same(sums(got), { '198.18.2.1': 7 }, 'only the fresh batch counted');
  });

  t.test('a block event reaches two nodes, with its snapshot stored atomically', async (t) => {
    const prefix = uniquePrefix();
    // snapshotEvery 1: the snapshot is rewritten with every event (the default folds a stale one, tested below).
    const mon = new RedisBus(opts(server, { node: 'mon', prefix, role: 'monitor', snapshotEvery: 1 }));
    const a = new NodeTable(new RedisBus(opts(server, { node: 'a', prefix })));
    const b = new NodeTable(new RedisBus(opts(server, { node: 'b', prefix })));
    t.teardown(async () => { await Promise.all([mon.close(), a.bus.close(), b.bus.close()]); });
    await Promise.all([mon.start(), a.start(), b.start()]);
    const e1 = entry('198.18.7.9', { nodes: ['a', 'b'], score: 42.5 });
    await mon.publishBlock({ op: 'block', entry: e1 }, [e1]);
    await waitFor(() => a.events.length === 1 && b.events.length === 1, 3000, 'the event at both nodes');
    t.same(a.events[0], { op: 'block', entry: e1 }, 'node a got the event as sent');
    t.same(b.events[0], { op: 'block', entry: e1 }, 'node b got the event as sent');
    const e2 = entry('198.18.7.0/24', { rule: 'score' });
    await mon.publishBlock({ op: 'block', entry: e2 }, [e1, e2]);
    await mon.publishBlock({ op: 'unblock', entry: e1 }, [e2]);
    await waitFor(() => a.events.length === 3 && b.events.length === 3, 3000, 'three events at both nodes');
    t.same(a.sorted(), ['198.18.7.0/24']);
    t.same(b.sorted(), ['198.18.7.0/24']);
    t.same(await a.bus.loadSnapshot(), [e2], 'the node mirror equals the last snapshot');
    const [id, entries] = await raw.hmget(mon.keys.snapshot, 'id', 'entries');
    const last = await raw.xrevrange(mon.keys.blocks, '+', '-', 'COUNT', 1);
    t.equal(id, last[0][0], 'snapshot id = id of the last event');
    t.same(JSON.parse(entries!), [e2], 'snapshot content');
    t.equal(a.bus.stats().bus_blocks_received, 3);
    t.equal(mon.stats().bus_blocks_published, 3);
  });

  for (const snapshotEvery of [1, 64]) t.test(`a node started during a stream of blocks: snapshot, then exactly the later events (snapshot every ${snapshotEvery})`, async (t) => {
    const prefix = uniquePrefix();
    const mon = new RedisBus(opts(server, { node: 'mon', prefix, role: 'monitor', snapshotEvery }));
    const late = new NodeTable(new RedisBus(opts(server, { node: 'late', prefix })));
    t.teardown(async () => { await Promise.all([mon.close(), late.bus.close()]); });
    await mon.start();
    const N = 400;
    const all: BlockEntry[] = [];
    let startedAt = -1;
    let snap: BlockEntry[] = [];
    const publishing = (async () => {
      for (let i = 0; i < N; i++) {
        const e = entry(`198.18.${i >> 8}.${i & 255}`, { at: i });
        all.push(e);
        // Not awaited one by one: many scripts in flight while the node loads its snapshot.
        const p = mon.publishBlock({ op: 'block', entry: e }, all.slice());
        if (i % 8 === 7) await p;
        if (i === 100) startedAt = i;
      }
    })();
    await waitFor(() => startedAt >= 0, 5000, '100 blocks published');
    snap = await late.start();
    await publishing;
    await waitFor(() => late.m.size === N, 5000, `late node holding all ${N} blocks`);
    await sleep(200);
    const k = snap.length;
    t.ok(k >= 100 && k < N, `the snapshot held the first ${k} blocks`);
    t.same(snap.map((e) => e.at), Array.from({ length: k }, (_, i) => i), 'snapshot = a prefix of the sequence');
    t.same(late.events.map((e) => e.entry.at), Array.from({ length: N - k }, (_, i) => k + i),
      'events = exactly the rest, in order: none missed, none twice');
    t.equal(late.bus.stats().bus_blocks_resynced, 0, 'no synthetic events on a clean start');
    const [id] = await raw.hmget(mon.keys.snapshot, 'id');
    const ids = (await raw.xrange(mon.keys.blocks, '-', '+')).map((x) => x[0]);
    t.equal(ids.indexOf(id!), snapshotEvery === 1 ? N - 1 : Math.floor((N - 1) / 64) * 64, 'the stored snapshot belongs to the event it was written with');
  });

  t.test('hostile entries in the streams and the snapshot key are counted and skipped', async (t) => {
    const prefix = uniquePrefix();
    const keys = { deltas: `${prefix}:deltas`, blocks: `${prefix}:blocks`, snapshot: `${prefix}:snapshot` };
    // A junk snapshot before anyone starts.
    await raw.hset(keys.snapshot, 'id', 'zzz', 'entries', '[{"addr":"1.2.3.4"}]');
    const mon = new RedisBus(opts(server, { node: 'mon', prefix, role: 'monitor' }));
    const node = new NodeTable(new RedisBus(opts(server, { node: 'n', prefix })));
    t.teardown(async () => { await Promise.all([mon.close(), node.bus.close()]); });
    const got: DeltaBatch[] = [];
    mon.onDeltas((b) => got.push(b));
    await Promise.all([mon.start(), node.start()]);
    t.equal(node.bus.stats().bus_bad_snapshots, 1, 'junk snapshot counted');
    t.same(node.sorted(), [], 'and not applied');
    const junkDeltas: string[][] = [
      ['b', 'not json'], ['b', '{"node":"x"}'], ['x', '1'], ['b', JSON.stringify(batch('evil', 1, [['not-an-ip', 1]]))],
      ['b', JSON.stringify({ ...batch('evil', 1, []), seq: 'NaN' })], ['b', '9'.repeat(400)],
    ];
    for (const f of junkDeltas) await raw.xadd(keys.deltas, '*', ...f);
    await raw.xadd(keys.deltas, '*', 'b', JSON.stringify(batch('good', 1, [['198.18.3.3', 4]])));
    const junkBlocks: string[][] = [['e', '{}'], ['e', 'null'], ['x', 'y'], ['e', JSON.stringify({ op: 'block', entry: { addr: '198.18.0.1' } })],
      ['e', JSON.stringify({ op: 'block', entry: entry('10.0.0.1/99') })]];
    for (const f of junkBlocks) await raw.xadd(keys.blocks, '*', ...f);
    const e = entry('198.18.4.4');
    await mon.publishBlock({ op: 'block', entry: e }, [e]);
    await waitFor(() => got.length === 1 && node.events.length === 1, 3000, 'the valid entries after the junk');
    t.same(sums(got), { '198.18.3.3': 4 }, 'the valid batch after the junk was delivered');
    t.equal(mon.stats().bus_bad_deltas, junkDeltas.length, 'every junk delta entry counted');
    t.equal(node.bus.stats().bus_bad_blocks, junkBlocks.length, 'every junk block entry counted');
    t.same(node.events, [{ op: 'block', entry: e }], 'only the valid event delivered');
    // A handler that throws does not stop the reader.
    node.bus.onBlock(() => { throw new Error('handler bug'); });
    const e2 = entry('198.18.4.5');
    await mon.publishBlock({ op: 'block', entry: e2 }, [e, e2]);
    await waitFor(() => node.events.length === 2, 3000, 'the event after a throwing handler');
    t.equal(node.bus.stats().bus_handler_errors, 1, 'handler exception counted');
    // The snapshot key replaced by another type: the node keeps its state on the next resync.
    await raw.del(keys.snapshot);
    await raw.set(keys.snapshot, 'garbage');
    await raw.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes'); // every bus connection drops and resyncs
    await waitFor(() => node.bus.stats().bus_resyncs >= 2 && node.bus.stats().bus_connected === 1, 3000, 'resync after the kill');
    t.equal(node.bus.stats().bus_bad_snapshots, 2, 'wrong-type snapshot counted');
    t.same(node.sorted(), ['198.18.4.4', '198.18.4.5'], 'last state kept');
    t.same((await node.bus.loadSnapshot()).map((x) => x.addr).sort(), ['198.18.4.4', '198.18.4.5']);
  });

  t.test('a node cut off while blocks change gets the difference as events when it reconnects', async (t) => {
    const prefix = uniquePrefix();
    const proxy = await cuttableProxy(server.port);
    const mon = new RedisBus(opts(server, { node: 'mon', prefix, role: 'monitor' }));
    const node = new NodeTable(new RedisBus({ ...opts(server, { node: 'n', prefix }), url: `redis://127.0.0.1:${proxy.port}` }));
    t.teardown(async () => { await Promise.all([mon.close(), node.bus.close()]); await proxy.close(); });
    await Promise.all([mon.start(), node.start()]);
    const a = entry('198.18.5.1'), b = entry('198.18.5.2'), c = entry('198.18.5.3');
    await mon.publishBlock({ op: 'block', entry: a }, [a]);
    await mon.publishBlock({ op: 'block', entry: b }, [a, b]);
    await waitFor(() => node.m.size === 2, 3000, 'two blocks at the node');
    proxy.cut();
    await waitFor(() => node.bus.stats().bus_connected === 0, 3000, 'node cut off');
    const b2 = { ...b, offences: 2, until: 1_800_000_000_000 };
    await mon.publishBlock({ op: 'unblock', entry: a }, [b]);
    await mon.publishBlock({ op: 'block', entry: c }, [b, c]);
    await mon.publishBlock({ op: 'block', entry: b2 }, [b2, c]);
    await sleep(100);
    t.equal(node.events.length, 2, 'nothing reached the node while cut off');
    t.same(node.sorted(), ['198.18.5.1', '198.18.5.2'], 'and it kept its state');
    proxy.heal();
    await waitFor(() => node.bus.stats().bus_blocks_resynced === 3, 3000, 'three synthetic events');
    t.same(node.sorted(), ['198.18.5.2', '198.18.5.3'], 'state converged on the snapshot');
    t.same(node.m.get('198.18.5.2'), b2, 'the changed entry replaced');
    t.same(node.events.slice(2).map((e) => `${e.op} ${e.entry.addr}`).sort(), ['block 198.18.5.2', 'block 198.18.5.3', 'unblock 198.18.5.1']);
    const d = entry('198.18.5.4');
    await mon.publishBlock({ op: 'block', entry: d }, [b2, c, d]);
    await waitFor(() => node.m.has('198.18.5.4'), 3000, 'the next event by the stream');
    t.equal(node.events.length, 6, 'no event twice');

    // A black hole (no reset, bytes vanish): the silent socket is declared
    // dead after blockMs + 2 s, and the node comes back when the path heals.
    const deadBefore = node.bus.stats().bus_reconnect_attempts;
    proxy.freeze();
    const e = entry('198.18.5.5');
    await mon.publishBlock({ op: 'block', entry: e }, [b2, c, d, e]);
    await waitFor(() => node.bus.stats().bus_reconnect_attempts > deadBefore, 5000, 'the frozen connection declared dead');
    t.notOk(node.m.has('198.18.5.5'), 'nothing crossed the black hole');
    proxy.heal();
    await waitFor(() => node.m.has('198.18.5.5'), 5000, 'the block after the path healed');
    t.equal(node.bus.stats().bus_connected, 1, 'reconnected');
  });
});

t.test('Redis killed mid-run and restarted on the same port', async (t) => {
  const server = await startRedis();
  const prefix = uniquePrefix();
  const mon = new RedisBus(opts(server, { node: 'mon', prefix, role: 'monitor' }));
  const a = new NodeTable(new RedisBus(opts(server, { node: 'a', prefix })));
  const b = new NodeTable(new RedisBus(opts(server, { node: 'b', prefix })));
  // A node with a tiny buffer: folds batches together, then drops the smallest rows.
  const small = new RedisBus(opts(server, { node: 'small', prefix, maxBuffered: 4 }));
  t.teardown(async () => {
    await Promise.all([mon.close(), a.bus.close(), b.bus.close(), small.close()]);
    await server.kill();
  });
  const got: DeltaBatch[] = [];
  mon.onDeltas((x) => got.push(x));
  await Promise.all([mon.start(), a.start(), b.start(), small.start()]);
  const e1 = entry('198.18.8.1');
  await mon.publishBlock({ op: 'block', entry: e1 }, [e1]);
  await waitFor(() => a.m.size === 1 && b.m.size === 1, 3000, 'first block at both nodes');
  a.bus.publishDeltas(batch('a', 1, [['198.18.9.9', 1]]));
  await waitFor(() => got.length === 1, 3000, 'first batch');

  await server.kill();
  await waitFor(() => a.bus.stats().bus_connected === 0 && b.bus.stats().bus_connected === 0 && mon.stats().bus_connected === 0, 3000, 'everyone sees Redis gone');
  // Down: publishing never throws; batches wait, counted.
  for (let s = 2; s <= 11; s++) {
    t.doesNotThrow(() => a.bus.publishDeltas(batch('a', s, [['198.18.9.9', 1], ['198.18.9.10', 2]])));
    b.bus.publishDeltas(batch('b', s, [['198.18.9.9', 3]]));
  }
  // small: 3 batches of the same 2 addresses fold together (counts kept), then 6 new addresses overflow the bound.
  for (let s = 1; s <= 3; s++) small.publishDeltas(batch('small', s, [['198.18.6.1', 10], ['198.18.6.2', 20]]));
  small.publishDeltas(batch('small', 4, [['198.18.6.3', 1], ['198.18.6.4', 2], ['198.18.6.5', 30], ['198.18.6.6', 3], ['198.18.6.7', 4], ['198.18.6.8', 5]]));
  const sa = a.bus.stats(), ss = small.stats();
  t.equal(sa.bus_deltas_buffered, 10, 'node a: 10 batches buffered');
  t.equal(sa.bus_buffered_rows, 20, 'node a: 20 rows waiting');
  t.equal(sa.bus_deltas_dropped, 0, 'node a: nothing dropped');
  t.ok(ss.bus_deltas_merged >= 2, `small: batches merged (${ss.bus_deltas_merged})`);
  t.equal(ss.bus_deltas_dropped, 4, 'small: 8 distinct addresses over a bound of 4: the 4 smallest dropped');
  t.equal(ss.bus_buffered_rows, 4, 'small: buffer at its bound');
  // A block decided while Redis is down: queued, resolved, not thrown.
  const e2 = entry('198.18.8.2');
  await mon.publishBlock({ op: 'block', entry: e2 }, [e1, e2]);
  t.equal(mon.stats().bus_blocks_queued, 1, 'block queued while down');
  t.same(a.sorted(), ['198.18.8.1'], 'node a keeps enforcing its last state');
  t.same((await b.bus.loadSnapshot()).map((x) => x.addr), ['198.18.8.1'], 'node b still reports the last snapshot');
  await sleep(600); // a few failed attempts: the backoff grows
  const delay = a.bus.stats().bus_reconnect_delay_ms;
  t.ok(delay > 100, `backoff grew past 5 x the first delay of 20 ms (now ${delay} ms)`);
  t.ok(delay <= 400, `and stays under its cap of 400 ms (${delay} ms)`);

  await server.start(); // same port, empty: no persistence
  await waitFor(() => [a.bus, b.bus, mon, small].every((x) => x.stats().bus_connected === 1), 5000, 'everyone reconnected');
  await waitFor(() => a.m.has('198.18.8.2') && b.m.has('198.18.8.2'), 3000, 'the block queued during the outage reached both nodes');
  t.same(a.sorted(), ['198.18.8.1', '198.18.8.2'], 'node a: old state kept, new block added');
  t.same(b.sorted(), ['198.18.8.1', '198.18.8.2'], 'node b too');
  t.ok(a.bus.stats().bus_reconnects >= 1, 'reconnect counted');
  // Buffered deltas delivered: every count of a and b, and small's merged (kept) counts.
  await waitFor(() => sums(got)['198.18.9.9'] === 1 + 10 + 30 && got.some((x) => x.node === 'small'), 5000, 'buffered deltas at the monitor');
  const s = sums(got);
  t.equal(s['198.18.9.10'], 20, 'node a rows all counted');
  t.equal(s['198.18.6.1'], 30, 'merged batches kept their counts (3 x 10)');
  t.equal(s['198.18.6.2'], 60, 'merged batches kept their counts (3 x 20)');
  t.equal(s['198.18.6.5'], 30, 'the busiest new address survived the drop');
  t.equal(s['198.18.6.3'], undefined, 'a small one was dropped');
  t.same(got.filter((x) => x.node === 'a').map((x) => x.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 'node a batches in order, none lost');
  t.equal(a.bus.stats().bus_buffered_rows, 0, 'buffer drained');
  // Later blocks flow as usual.
  const e3 = entry('198.18.8.3');
  await mon.publishBlock({ op: 'block', entry: e3 }, [e1, e2, e3]);
  await waitFor(() => a.m.has('198.18.8.3') && b.m.has('198.18.8.3'), 3000, 'a block after the restart');
  t.ok(mon.stats().bus_errors > 0, 'errors counted during the outage');
});
