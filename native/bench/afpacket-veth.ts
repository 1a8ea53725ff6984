// Throughput sanity check of the AF_PACKET path (not a test): two namespaces
// joined by a veth pair; one side transmits 64-byte frames with sendBatch
// (sendmmsg, 256 per call), the other drains its TPACKET_V3 ring. Optionally
// trafgen (netsniff-ng) is the sender instead, to see the receive side alone.
// Run as root: node --import=tsx native/bench/afpacket-veth.ts [seconds]
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync, rmSync } from 'node:fs';
import { makeNs, startHelper, vethPair } from '../../test/helpers/netns.js';

const seconds = Number(process.argv[2] ?? 3);
const cleanups: (() => void)[] = [];
const td = { teardown: (fn: () => void) => cleanups.push(fn) };
const ETHERTYPE = 0x88b5;

async function run(label: string, sender: 'addon' | 'trafgen', qdiscBypass: boolean): Promise<void> {
  const a = makeNs(td, `bench-${label}-a`);
  const b = makeNs(td, `bench-${label}-b`);
  vethPair(a, 'va', null, b, 'vb', null);
  const rx = startHelper(b, 'native-afp-bench.ts', { mode: 'rx', dev: 'vb', seconds: seconds + 1.5, etherType: ETHERTYPE, frame: 64, opts: { ringBlocks: 64, blockSize: 1 << 20 } }, 60000);
  await rx.ready;
  interface TxResult { pps: number; sent: number; stats: Record<string, number> }
  let tx: TxResult | null = null;
  if (sender === 'addon') {
    tx = (await startHelper(a, 'native-afp-bench.ts', { mode: 'tx', dev: 'va', seconds, etherType: ETHERTYPE, frame: 64, opts: { rx: false, qdiscBypass } }, 60000).result) as TxResult;
  } else {
    const cfg = `/tmp/pcn-trafgen-${process.pid}.cfg`;
    writeFileSync(cfg, `{ 0xff,0xff,0xff,0xff,0xff,0xff, 0x02,0x00,0x00,0x00,0x00,0x01, 0x88,0xb5, fill(0x61, 50) }\n`);
    cleanups.push(() => rmSync(cfg, { force: true }));
    const p = spawn('ip', ['netns', 'exec', a, 'timeout', '-s', 'INT', String(seconds), 'trafgen', '--dev', 'va', '--conf', cfg, '--cpus', '1', '-q'], { stdio: 'ignore' });
    await new Promise((r) => p.on('close', r));
  }
  const txr = tx as TxResult | null;
  const r = (await rx.result) as { rx: number; pps: number; secs: number; callbacks: number; stats: Record<string, number> };
  const txs = txr ? `tx ${Math.round(txr.pps).toLocaleString()} pps (sent ${txr.sent.toLocaleString()}, tx_full ${txr.stats.tx_full.toLocaleString()}), ` : '';
  console.log(`${label.padEnd(22)} ${txs}rx ${Math.round(r.pps).toLocaleString()} pps (${r.rx.toLocaleString()} frames in ${r.secs.toFixed(2)} s, ${r.callbacks} callbacks, tp_drops ${r.stats.tp_drops.toLocaleString()})`);
  for (const c of cleanups.splice(0)) c();
}

try {
  console.log(`AF_PACKET 64-byte frames over veth, ${seconds} s each, kernel ${execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim()}`);
  await run('sendBatch', 'addon', false);
  await run('sendBatch+qdiscBypass', 'addon', true);
  await run('trafgen', 'trafgen', false);
} finally {
  for (const c of cleanups) c();
}
