// `portcullis monitor --config FILE` (src/cli/monitor.ts) against a real
// redis-server started here and killed at the end: it loads the blacklist a
// previous monitor stored, aggregates the deltas of two nodes (an address
// that stays under the thresholds at each node alone is blocked for the sum;
// one that only one node sees at the same level is not), and every node gets
// the block. Configuration errors exit 2 with the key named.

import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RedisBus } from '../../src/guard/redis-bus.js';
import type { BlockEvent, DeltaBatch } from '../../src/guard/bus.js';
import { runMonitor } from '../../src/cli/monitor.js';
import { main } from '../../src/cli/main.js';
import { Logger } from '../../src/control/log.js';
import { startRedis } from '../helpers/redis-server.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

function batch(node: string, seq: number, rows: [string, number][]): DeltaBatch {
  return { node, seq, at: Date.now(), deltas: rows.map(([addr, attempts]) => ({ addr, attempts, suspicious: 0, completed: 0, closed: 0 })) };
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcl-guard-mon-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function writeConfig(name: string, guard: Record<string, unknown>): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, `guard:\n${Object.entries(guard).map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`).join('\n')}\n`);
  return f;
}

t.test('configuration errors exit 2 and say what to change', async (t) => {
  const errs: string[] = [];
  const orig = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((s: string) => { errs.push(String(s)); return true; }) as typeof process.stderr.write;
  try {
    t.equal(await runMonitor({ config: writeConfig('emb.yaml', { bus: 'embedded' }) }), 2, 'embedded bus refused');
    t.equal(await runMonitor({ config: writeConfig('bad.yaml', { bus: 'http://x' }) }), 2, 'bad URL refused');
    t.equal(await main(['node', 'portcullis', 'monitor']), 2, 'missing --config is a usage error');
  } finally {
    process.stderr.write = orig;
  }
  t.match(errs.join(''), /guard\.bus: expected a redis:\/\/host:port URL/);
  t.match(errs.join(''), /guard\.bus: expected 'embedded' or a redis:\/\/host:port URL/);
});

t.test('aggregates two nodes, loads the stored blacklist, blocks reach both nodes', async (t) => {
  const server = await startRedis();
  const lines: string[] = [];
  const log = new Logger('info', (l) => { lines.push(l); });
  const prior = new RedisBus({ url: server.url, node: 'old-monitor', role: 'monitor' });
  const a = new RedisBus({ url: server.url, node: 'a', reconnectMinMs: 20 });
  const b = new RedisBus({ url: server.url, node: 'b', reconnectMinMs: 20 });
  const ac = new AbortController();
  let run: Promise<number> | null = null;
  t.teardown(async () => {
    ac.abort();
    await run;
    await Promise.all([prior.close(), a.close(), b.close()]);
    await server.kill();
  });

  // A previous monitor left one block behind.
  await prior.start();
  const old = { addr: '198.18.50.50', until: 0, rule: 'manual', score: 0, nodes: [], offences: 1, at: Date.now() };
  await prior.publishBlock({ op: 'block', entry: old }, [old]);
  await prior.close();

  const cfg = writeConfig('mon.yaml', {
    node: 'mon1', bus: server.url, monitor: true, interval: 0.1,
    thresholds: { rate: { rate: 10, burst: 10 }, total: { max: 100000, window: 60 } },
    score: { threshold: 50 },
  });
  run = runMonitor({ config: cfg, log, stats: 0, signal: ac.signal });
  await waitFor(() => lines.some((l) => l.includes('guard monitor started')), 5000, 'the monitor to start');
  const started = JSON.parse(lines.find((l) => l.includes('guard monitor started'))!);
  t.equal(started.blocked, 1, 'the stored blacklist was loaded');

  const evA: BlockEvent[] = [], evB: BlockEvent[] = [];
  a.onBlock((e) => evA.push(e));
  b.onBlock((e) => evB.push(e));
  await Promise.all([a.start(), b.start()]);
  t.same((await a.loadSnapshot()).map((e) => e.addr), ['198.18.50.50'], 'a node starts with the stored blacklist');

  // 40 attempts at a rate limit of 10 (burst 10): 30 points at one node, under the threshold of 50.
  // 198.18.66.6 does that at both nodes: 30 + about 40 points, blocked. 198.18.77.7 only at node a: not blocked.
  a.publishDeltas(batch('a', 1, [['198.18.66.6', 40], ['198.18.77.7', 40]]));
  b.publishDeltas(batch('b', 1, [['198.18.66.6', 40]]));
  await waitFor(() => evA.some((e) => e.entry.addr === '198.18.66.6') && evB.some((e) => e.entry.addr === '198.18.66.6'), 5000, 'the block at both nodes');
  await sleep(400);
  const blk = evA.find((e) => e.entry.addr === '198.18.66.6')!;
  t.equal(blk.op, 'block');
  t.same(blk.entry.nodes.slice().sort(), ['a', 'b'], 'the entry names both nodes that saw the attack');
  t.equal(blk.entry.rule, 'rate');
  t.notOk(evA.some((e) => e.entry.addr === '198.18.77.7'), 'an address seen by one node under the thresholds is not blocked');
  t.same(evB.map((e) => `${e.op} ${e.entry.addr}`), evA.map((e) => `${e.op} ${e.entry.addr}`), 'both nodes got the same events');

  ac.abort();
  t.equal(await run, 0, 'stops with exit code 0');
  const stopLine = JSON.parse(lines.find((l) => l.includes('guard monitor stopping'))!);
  t.equal(stopLine.bus_deltas_received, 2, 'two batches consumed');
  t.equal(stopLine.monitor_blocks, 1, 'one block decided');
});
