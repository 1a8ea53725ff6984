// live: the same lab topology (client -> gateway -> server namespaces) and
// the same generators, first with the gateway's kernel doing the job
// (forwarding + iptables MASQUERADE), then with portcullis (TUN + NAPT), in
// one run. 64-byte UDP over 10,000 flows from trafgen at its highest rate,
// and iperf3 TCP. Forwarded packets are counted on the server's interface.
// Prints packets/s, loss and Gbit/s for each and the ratios; writes
// bench/results/live.json with ours/kernel-udp64 and ours/kernel-tcp.
// Needs root. Namespaces: pcb<pid>-*, 198.18.0.0/15 only, removed at the end.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { NatLab, LAB, waitForLine } from '../dist/cli/lab.js';
import { ratio, report } from './common.js';

const SECONDS = Number(process.env.LIVE_SECONDS ?? 5);
const FLOWS = 10_000;
const BIN = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../bin/portcullis.js');

if (process.getuid?.() !== 0) {
  console.error('bench live: needs root (network namespaces, TUN, iptables); skipped');
  process.exit(0);
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcb-'));
const lab = new NatLab(`pcb${process.pid}-`);
const cleanup = () => { lab.destroy(); fs.rmSync(tmp, { recursive: true, force: true }); };
process.on('SIGINT', () => { cleanup(); process.exit(130); });

function stat(ns: string, dev: string, what: string): number {
  return Number(lab.exec(ns, 'cat', [`/sys/class/net/${dev}/statistics/${what}`]).out.trim());
}

interface UdpResult { sent: number; received: number; seconds: number; pps: number; loss: number; gbps: number }

/** trafgen at full speed for SECONDS: 64-byte frames, 10,000 source ports. */
function udp64(tag: string): UdpResult {
  const gwMac = lab.exec(lab.gw, 'cat', ['/sys/class/net/gwi/address']).out.trim();
  const clMac = lab.exec(lab.cl, 'cat', ['/sys/class/net/cl0/address']).out.trim();
  const conf = path.join(tmp, `${tag}.cfg`); // trafgen reads its own syntax only from a .cfg file
  // 14 + 20 + 8 + 18 = 60 bytes on the veth (64 with the FCS a real wire adds).
  fs.writeFileSync(conf, `{ eth(da=${gwMac}, sa=${clMac}, type=0x0800), ipv4(sa=${LAB.client}, da=${LAB.server}, ttl=64, df), udp(sp=dinc(20000, ${20000 + FLOWS - 1}), dp=9), fill(0x41, 18) }\n`);
  const rx0 = stat(lab.sv, 'sv0', 'rx_packets');
  const tx0 = stat(lab.cl, 'cl0', 'tx_packets');
  const t0 = process.hrtime.bigint();
  const g = lab.exec(lab.cl, 'timeout', ['-s', 'INT', String(SECONDS), 'trafgen', '-o', 'cl0', '-c', conf, '-q', '-P', '1'], { timeoutMs: (SECONDS + 10) * 1000 });
  if (!/packets outgoing/.test(g.out + g.err)) throw new Error(`trafgen did not run: ${(g.err || g.out).slice(-300)}`);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  execFileSync('sleep', ['0.5']); // let the last packets drain
  const sent = stat(lab.cl, 'cl0', 'tx_packets') - tx0;
  const received = stat(lab.sv, 'sv0', 'rx_packets') - rx0;
  const pps = received / seconds;
  return { sent, received, seconds, pps, loss: sent > 0 ? 1 - received / sent : 1, gbps: (pps * 64 * 8) / 1e9 };
}

function tcp(): number {
  const srv = lab.spawn(lab.sv, 'iperf3', ['-s', '-B', LAB.server, '-1']);
  execFileSync('sleep', ['0.5']);
  const r = lab.exec(lab.cl, 'iperf3', ['-c', LAB.server, '-t', String(SECONDS), '-J'], { timeoutMs: (SECONDS + 20) * 1000 });
  srv.kill('SIGKILL');
  if (r.code !== 0) throw new Error(`iperf3 failed: ${r.err || r.out.slice(0, 200)}`);
  const j = JSON.parse(r.out);
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  return j.end.sum_received.bits_per_second / 1e9;
}

try {
  lab.create();
  // --- kernel: plain forwarding + MASQUERADE, no TUN in the path ---
  lab.exec(lab.gw, 'ip', ['rule', 'del', 'pref', '100']);
  lab.exec(lab.gw, 'ip', ['rule', 'del', 'pref', '101']);
  const ipt = lab.exec(lab.gw, 'iptables', ['-t', 'nat', '-A', 'POSTROUTING', '-o', 'gwo', '-j', 'MASQUERADE']);
  if (ipt.code !== 0) throw new Error(`iptables: ${ipt.err}`);
  // The server must reach the masquerading address (the gateway's own).
  console.log(`kernel: UDP 64-byte, ${FLOWS} flows, ${SECONDS} s ...`);
  const kUdp = udp64('kernel');
  console.log(`kernel: iperf3 TCP ${SECONDS} s ...`);
  const kTcp = tcp();
  lab.exec(lab.gw, 'iptables', ['-t', 'nat', '-F']);
  lab.exec(lab.gw, 'conntrack', ['-F']);

  // --- portcullis: the same path through the TUN ---
  lab.exec(lab.gw, 'ip', ['rule', 'add', 'iif', 'gwi', 'lookup', '100', 'pref', '100']);
  lab.exec(lab.gw, 'ip', ['rule', 'add', 'iif', 'gwo', 'lookup', '100', 'pref', '101']);
  const cfg = path.join(tmp, 'live.yaml');
  fs.writeFileSync(cfg, `io: { tun: ${LAB.tun} }\nnat:\n  inside: [${LAB.insidePrefix}]\n  pool: [${LAB.pool}]\n  maxMappingsPerSubscriber: 65536\nadmin: { socket: ${tmp}/admin.sock }\nstats: { interval: 0 }\n`);
  const app = lab.spawn(lab.gw, process.execPath, [BIN, 'run', '--config', cfg]);
  let appErr = '';
  app.stderr!.on('data', (d) => { appErr += d; });
  app.once('exit', (c, sig) => { if (c !== 0) console.error(`appliance exited ${c ?? sig}: ${appErr.slice(-500)}`); });
  await waitForLine(app, /^READY$/);
  console.log(`portcullis: UDP 64-byte, ${FLOWS} flows, ${SECONDS} s ...`);
  const oUdp = udp64('ours');
  console.log(`portcullis: iperf3 TCP ${SECONDS} s ...`);
  const oTcp = tcp();
  app.kill('SIGTERM');
  let final = '';
  app.stdout!.on('data', (d) => { final += d; });
  await new Promise((r) => app.once('exit', r));

  const row = (u: UdpResult) => ({ rate: u.pps, sent: u.sent, received: u.received, loss_percent: Math.round(u.loss * 10000) / 100, gbps: Math.round(u.gbps * 1000) / 1000 });
  report({
    suite: 'live',
    seconds: SECONDS,
    flows: FLOWS,
    results: {
      'kernel udp64 (forward + MASQUERADE)': row(kUdp),
      'portcullis udp64 (TUN + NAPT)': row(oUdp),
      'kernel tcp (iperf3, Gbit/s x 1e9)': { rate: kTcp * 1e9 },
      'portcullis tcp (iperf3, Gbit/s x 1e9)': { rate: oTcp * 1e9 },
    },
    ratios: { 'ours/kernel-udp64': ratio(oUdp.pps, kUdp.pps), 'ours/kernel-tcp': ratio(oTcp, kTcp) },
    heap_growth_per_packet: {},
    targets: {
      'ours/kernel-udp64': { value: ratio(oUdp.pps, kUdp.pps), target: '>= 1.0 with < 0.1% loss', met: oUdp.pps >= kUdp.pps && oUdp.loss < 0.001 },
      'ours/kernel-tcp': { value: ratio(oTcp, kTcp), target: '>= 0.3', met: oTcp / kTcp >= 0.3 },
    },
    appliance_final_counters: final.slice(final.indexOf('final counters')),
  });
  console.log(`  UDP loss: kernel ${(kUdp.loss * 100).toFixed(2)}%, portcullis ${(oUdp.loss * 100).toFixed(2)}%; TCP kernel ${kTcp.toFixed(2)} Gbit/s, portcullis ${oTcp.toFixed(2)} Gbit/s`);
} finally {
  cleanup();
}
