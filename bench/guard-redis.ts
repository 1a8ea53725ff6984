// guard-redis: block propagation latency over Redis on loopback, against the
// same transport without our code, in the same run.
//
// - ours: RedisBus (role monitor) publishBlock(event, snapshot) -> Lua script
//   (XADD to the blocks stream + snapshot hash, atomically) -> the node's
//   RedisBus blocking XREAD on its own connection -> JSON parse and check ->
//   mirror update -> onBlock. Measured from the call to publishBlock to the
//   node's onBlock, one event at a time (latency, not throughput). The
//   snapshot carries SNAPSHOT_ENTRIES entries (a moderate blacklist), since
//   writing it is part of every publish.
// - baseline xadd/xread: raw ioredis, one connection XADDs the same event JSON
//   (no script, no snapshot), another waits in XREAD BLOCK; from the XADD
//   call to the reply. Everything our path adds over this is our cost.
// - baseline pub/sub: raw ioredis PUBLISH -> SUBSCRIBE of the same JSON (the
//   cheapest Redis fan-out, with no history: what a stream costs over it).
// The three run interleaved in ROUNDS rounds (so drift on a shared 2-core
// machine hits them alike) after a warm-up, N events each in total.
//
// Writes into bench/results/guard.json (read-modify-write: bench/guard.ts
// writes the sensor and monitor figures into the same file and runs first):
// redis_block_p50_ms, redis_block_p99_ms, the baselines, the ratios, and the
// target (p99 under 10 ms on loopback).
//
// Run: node --import=tsx bench/guard-redis.ts   (about 5 s)

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { RedisBus } from '../src/guard/redis-bus.js';
import type { BlockEntry, BlockEvent } from '../src/guard/bus.js';
import { startRedis } from '../test/helpers/redis-server.js';
import { RESULTS_DIR, ratio } from './common.js';

const N = Number(process.env.GUARD_REDIS_N ?? 2000);
const WARMUP = 200;
const ROUNDS = 4;
const SNAPSHOT_ENTRIES = Number(process.env.GUARD_REDIS_SNAPSHOT ?? 100);
const TARGET_P99_MS = 10;

function entry(i: number): BlockEntry {
  return { addr: `198.18.${(i >> 8) & 255}.${i & 255}`, until: Date.now() + 600_000, rule: 'rate', score: 123.5, nodes: ['node-a', 'node-b'], offences: 1, at: Date.now() };
}

function pct(sorted: number[], p: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return Math.round(sorted[i] * 1000) / 1000;
}

function summary(xs: number[]): { p50: number; p99: number; mean: number; max: number; n: number } {
  const s = xs.slice().sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  return { p50: pct(s, 0.5), p99: pct(s, 0.99), mean: Math.round(mean * 1000) / 1000, max: Math.round(s[s.length - 1] * 1000) / 1000, n: s.length };
}

async function main(): Promise<void> {
  const server = await startRedis();
  const prefix = `bench:${process.pid}`;
  const mon = new RedisBus({ url: server.url, node: 'bench-monitor', prefix, role: 'monitor' });
  const node = new RedisBus({ url: server.url, node: 'bench-node', prefix, role: 'node' });
  const pub = new Redis(server.url, { lazyConnect: true, protocol: 2 });
  const rd = new Redis(server.url, { lazyConnect: true, protocol: 2 });
  const sub = new Redis(server.url, { lazyConnect: true, protocol: 2 });
  const conns = [pub, rd, sub];
  try {
    let waiting: ((e: BlockEvent) => void) | null = null;
    node.onBlock((e) => { const w = waiting; waiting = null; w?.(e); });
    await Promise.all([mon.start(), node.start(), ...conns.map((c) => c.connect())]);
    if (node.stats().bus_connected !== 1 || mon.stats().bus_connected !== 1) throw new Error('RedisBus did not connect to the benchmark redis-server');

    const snapshot: BlockEntry[] = Array.from({ length: SNAPSHOT_ENTRIES }, (_, i) => entry(100_000 + i));
    const eventJson = JSON.stringify({ op: 'block', entry: entry(0) });
    const snapBytes = JSON.stringify(snapshot).length;

    // ours: publishBlock -> onBlock
    let seq = 0;
    const ours = async (): Promise<number> => {
      const e: BlockEvent = { op: 'block', entry: entry(seq++) };
      const got = new Promise<BlockEvent>((r) => { waiting = r; });
      const t0 = performance.now();
      await mon.publishBlock(e, snapshot);
      const back = await got;
      const dt = performance.now() - t0;
      if (back.entry.addr !== e.entry.addr) throw new Error(`ours: got ${back.entry.addr}, expected ${e.entry.addr}`);
      return dt;
    };

    // baseline: XADD -> XREAD BLOCK on another connection
    const streamKey = `${prefix}:baseline`;
    let lastId = '$';
    const xread = async (): Promise<number> => {
      const t0 = performance.now();
      const reading = rd.call('XREAD', 'COUNT', 1, 'BLOCK', 5000, 'STREAMS', streamKey, lastId) as Promise<[string, [string, string[]][]][] | null>;
      // The XREAD must be parked at the server before the XADD is sent; the
      // connection order guarantees the read was sent first, and a read that
      // lands after the XADD still returns it (we read after lastId).
      await pub.xadd(streamKey, 'MAXLEN', '~', 10000, '*', 'e', eventJson);
      const r = await reading;
      const dt = performance.now() - t0;
      if (!r || !r[0][1][0]) throw new Error('baseline xread: nothing read');
      const id = r[0][1][0][0];
      JSON.parse(r[0][1][0][1][1]);
      lastId = id;
      return dt;
    };
    // The first read must start after an existing id, not '$' (which would race).
    lastId = await pub.xadd(streamKey, '*', 'e', 'start') as string;

    // baseline: PUBLISH -> SUBSCRIBE
    const channel = `${prefix}:chan`;
    let onMsg: ((m: string) => void) | null = null;
    sub.on('message', (_c: string, m: string) => { const f = onMsg; onMsg = null; f?.(m); });
    await sub.subscribe(channel);
    const pubsub = async (): Promise<number> => {
      const got = new Promise<string>((r) => { onMsg = r; });
      const t0 = performance.now();
      await pub.publish(channel, eventJson);
      JSON.parse(await got);
      return performance.now() - t0;
    };

    const cases = { ours, xread, pubsub } as const;
    const samples: Record<keyof typeof cases, number[]> = { ours: [], xread: [], pubsub: [] };
    for (const [, fn] of Object.entries(cases)) for (let i = 0; i < WARMUP; i++) await fn();
    const per = Math.ceil(N / ROUNDS);
    for (let r = 0; r < ROUNDS; r++) {
      for (const [name, fn] of Object.entries(cases) as [keyof typeof cases, () => Promise<number>][]) {
        for (let i = 0; i < per && samples[name].length < N; i++) samples[name].push(await fn());
      }
    }

    const s = { ours: summary(samples.ours), xread: summary(samples.xread), pubsub: summary(samples.pubsub) };
    const st = node.stats();
    if (st.bus_bad_blocks !== 0 || st.bus_blocks_received !== WARMUP + N) {
      throw new Error(`node received ${st.bus_blocks_received} events (${st.bus_bad_blocks} bad), expected ${WARMUP + N}`);
    }
    const ratios = {
      redis_block_p50_vs_xadd_xread: ratio(s.ours.p50, s.xread.p50),
      redis_block_p99_vs_xadd_xread: ratio(s.ours.p99, s.xread.p99),
      redis_block_p50_vs_pubsub: ratio(s.ours.p50, s.pubsub.p50),
      redis_block_p99_vs_pubsub: ratio(s.ours.p99, s.pubsub.p99),
    };

    console.log(`\n## guard-redis (block propagation, loopback, ${N} events each, snapshot ${SNAPSHOT_ENTRIES} entries = ${snapBytes} B)`);
    console.log('  case                          p50 ms    p99 ms   mean ms    max ms');
    const row = (name: string, x: typeof s.ours) =>
      console.log(`  ${name.padEnd(28)} ${x.p50.toFixed(3).padStart(7)} ${x.p99.toFixed(3).padStart(9)} ${x.mean.toFixed(3).padStart(9)} ${x.max.toFixed(3).padStart(9)}`);
    row('ours publishBlock->onBlock', s.ours);
    row('raw XADD->XREAD BLOCK', s.xread);
    row('raw PUBLISH->SUBSCRIBE', s.pubsub);
    console.log('  ratios (ours / baseline):');
    for (const [k, v] of Object.entries(ratios)) console.log(`    ${k.padEnd(32)} ${v}`);
    const met = s.ours.p99 < TARGET_P99_MS;
    console.log(`  target: p99 ${s.ours.p99} ms (< ${TARGET_P99_MS} ms) ${met ? 'met' : 'NOT met'}`);

    // Read-modify-write: keep what bench/guard.ts wrote.
    fs.mkdirSync(RESULTS_DIR, { recursive: true });
    const file = path.join(RESULTS_DIR, 'guard.json');
    let doc: Record<string, unknown> = {};
    try { doc = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>; } catch { doc = { suite: 'guard' }; }
    const obj = (k: string) => (doc[k] && typeof doc[k] === 'object' ? doc[k] : (doc[k] = {})) as Record<string, unknown>;
    doc.redis_block_p50_ms = s.ours.p50;
    doc.redis_block_p99_ms = s.ours.p99;
    doc.redis_baseline_xadd_xread_p50_ms = s.xread.p50;
    doc.redis_baseline_xadd_xread_p99_ms = s.xread.p99;
    doc.redis_baseline_pubsub_p50_ms = s.pubsub.p50;
    doc.redis_baseline_pubsub_p99_ms = s.pubsub.p99;
    Object.assign(obj('ratios'), ratios);
    obj('targets').redis_block_p99_ms = { value: s.ours.p99, target: `< ${TARGET_P99_MS} ms (loopback)`, met };
    doc.redis = {
      date: new Date().toISOString(), node: process.version, cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length,
      events: N, warmup: WARMUP, rounds: ROUNDS, snapshot_entries: SNAPSHOT_ENTRIES, snapshot_bytes: snapBytes,
      ours: s.ours, baseline_xadd_xread: s.xread, baseline_pubsub: s.pubsub,
    };
    fs.writeFileSync(file, JSON.stringify(doc, null, 2) + '\n');
    console.log(`  merged into ${path.relative(process.cwd(), file)}`);
  } finally {
    await Promise.allSettled([mon.close(), node.close()]);
    for (const c of conns) c.disconnect();
    await server.kill();
  }
}

main().catch((err) => {
  console.error(`guard-redis: ${err instanceof Error ? err.stack : String(err)}`);
  process.exitCode = 1;
});
