// `portcullis decap`: the decapsulating helper for targets of dsr-ipip and
// dsr-gue services on hosts whose kernel cannot decapsulate (no ipip or fou
// module, as on the lab machines). Run it in the target's network namespace:
//
//   capture (libpcap, in-kernel BPF filter "ip proto 4 or udp dst port N",
//   inbound only) ──batch──▶ Decapsulator (src/lb/decap.ts, in place)
//   ──batch──▶ TUN device: the kernel receives the inner packet on the TUN,
//   delivers it to the VIP held on lo, and the service answers the client
//   directly (direct server return).
//
// The capture takes a copy; the kernel still sees the original. With no
// ipip module and no raw socket for protocol 4, it answers IPIP with ICMP
// protocol unreachable (and GUE with port unreachable when nothing listens
// on the port) towards the load balancer. --drop-originals installs an
// nftables table (input hook) that drops the originals after the capture has
// its copy (packet taps run before netfilter), and removes it on exit.
//
// rp_filter: the inner packets come from clients that are routed through
// another interface, so strict reverse-path filtering on the TUN (the
// larger of conf.all and conf.<tun>) drops them: the helper warns when it is
// on; turn it off for the TUN (`sysctl net.ipv4.conf.<tun>.rp_filter=0` and
// conf.all).
//
// Output: READY once running; errors are logged at most once per second
// (counts per reason since the last line and the last offender), a stats
// line every --stats seconds, the counters on exit (SIGINT/SIGTERM).
// Exit codes: 0 stopped by a signal or --duration, 1 runtime error (device,
// permissions, nft), 2 usage error.

import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { Batch } from '../io/batch.js';
import { PcapLive } from '../io/pcap-live.js';
import { Tun } from '../io/tun.js';
import { DECAP_COUNTER_DEFS, Decapsulator } from '../lb/decap.js';
import { formatIpv4 } from '../wire/ipv4.js';

export interface DecapCliOptions {
  tun: string;
  dev: string;
  guePort: number;
  ipip: boolean;
  local: string[];
  from: string[];
  vip: string[];
  dropOriginals: boolean;
  stats: number;
  duration?: number;
}

/** Batches drained per readable event before yielding to the event loop. */
const MAX_BATCHES_PER_EVENT = 64;
const BATCH_PACKETS = 256;
/** Room for a few 64 KiB packets (libpcap needs the snap length free to write one). */
const ARENA_BYTES = 1 << 20;

function nftTableName(): string {
  return `portcullis_decap_${process.pid}`;
}

function installDropRules(ipip: boolean, guePort: number): string {
  const table = nftTableName();
  const rules: string[] = [];
  if (ipip) rules.push('    ip protocol 4 drop');
  if (guePort !== 0) rules.push(`    udp dport ${guePort} drop`);
  const script = `table ip ${table} {\n  chain input {\n    type filter hook input priority filter; policy accept;\n${rules.join('\n')}\n  }\n}\n`;
  execFileSync('nft', ['-f', '-'], { input: script, stdio: ['pipe', 'ignore', 'pipe'] });
  return table;
}

function removeDropRules(table: string): void {
  try {
    execFileSync('nft', ['delete', 'table', 'ip', table], { stdio: ['ignore', 'ignore', 'ignore'] });
  } catch { /* already gone (namespace deleted) */ }
}

function rpFilter(dev: string): number {
  const read = (d: string): number => {
    try {
      return Number(fs.readFileSync(`/proc/sys/net/ipv4/conf/${d}/rp_filter`, 'utf8').trim()) || 0;
    } catch {
      return 0;
    }
  };
  return Math.max(read('all'), read(dev));
}

export async function runDecap(opts: DecapCliOptions): Promise<number> {
  let d: Decapsulator;
  try {
    d = new Decapsulator({ guePort: opts.guePort, ipip: opts.ipip, localAddresses: opts.local, sources: opts.from, innerDestinations: opts.vip });
  } catch (err) {
    process.stderr.write(`portcullis ${(err as Error).message}\n`);
    return 2;
  }
  const filters: string[] = [];
  if (opts.ipip) filters.push('ip proto 4');
  if (opts.guePort !== 0) filters.push(`(udp dst port ${opts.guePort})`);
  const filter = filters.join(' or ');

  let tun: Tun | null = null;
  let cap: PcapLive | null = null;
  let table: string | null = null;
  const cleanup = (): void => {
    cap?.stop();
    cap?.close();
    tun?.close();
    if (table !== null) removeDropRules(table);
    cap = null;
    tun = null;
    table = null;
  };
  try {
    tun = Tun.open(opts.tun);
    // A TUN that is down refuses writes (EIO): bring it up.
    execFileSync('ip', ['link', 'set', 'dev', tun.name, 'up'], { stdio: ['ignore', 'ignore', 'pipe'] });
    cap = PcapLive.open(opts.dev, { filter, direction: 'in', snaplen: 65535, immediate: true });
    if (opts.dropOriginals) table = installDropRules(opts.ipip, opts.guePort);
  } catch (err) {
    const e = err as Error & { stderr?: Buffer };
    const detail = e.stderr ? e.stderr.toString().trim() : '';
    process.stderr.write(`portcullis decap: cannot start: ${e.message}${detail ? ` (${detail})` : ''}\n` +
      '  needs root (or CAP_NET_ADMIN + CAP_NET_RAW), /dev/net/tun, the native addon, and for --drop-originals the nft command\n');
    cleanup();
    return 1;
  }
  const rp = rpFilter(tun.name);
  if (rp !== 0) {
    process.stderr.write(`portcullis decap: warning: rp_filter is ${rp} for ${tun.name}: decapsulated packets from clients routed elsewhere will be dropped; ` +
      `run sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.${tun.name}.rp_filter=0\n`);
  }
  if (!opts.dropOriginals) {
    process.stderr.write('portcullis decap: note: without --drop-originals the kernel also sees each tunnel packet and answers it with ICMP unreachable\n');
  }

  const batch = new Batch(BATCH_PACKETS, ARENA_BYTES);
  let written = 0, readErrors = 0;
  const theTun = tun, theCap = cap;
  theCap.start((err) => {
    if (err) {
      readErrors++;
      return;
    }
    for (let k = 0; k < MAX_BATCHES_PER_EVENT; k++) {
      const n = theCap.recv(batch);
      if (n === 0) break;
      if (d.decapBatch(batch) > 0) written += theTun.transmit(batch);
    }
  });
  process.stdout.write(`decap: ${opts.dev} (${filter}) -> ${theTun.name}\n`);
  process.stdout.write('READY\n');

  // Errors: at most one log line per second, with the counts since the last one.
  const last = new Float64Array(DECAP_COUNTER_DEFS.length);
  let lastErrors = 0;
  const errorTimer = setInterval(() => {
    const e = d.errors();
    if (e === lastErrors) return;
    const parts: string[] = [];
    for (let i = 0; i < DECAP_COUNTER_DEFS.length; i++) {
      const delta = d.values[i] - last[i];
      if (delta > 0 && DECAP_COUNTER_DEFS[i][0] !== 'decap_ipip' && DECAP_COUNTER_DEFS[i][0] !== 'decap_gue' && DECAP_COUNTER_DEFS[i][0] !== 'decap_not_tunnel' && DECAP_COUNTER_DEFS[i][0] !== 'decap_ecn_changed') parts.push(`${DECAP_COUNTER_DEFS[i][0]}=${delta}`);
      last[i] = d.values[i];
    }
    const lastReason = d.lastError >= 0 ? DECAP_COUNTER_DEFS[d.lastError][0] : '?';
    process.stderr.write(`decap: ${e - lastErrors} refused in the last second (${parts.join(' ')}); last: ${lastReason} from ${formatIpv4(d.lastErrorSource >>> 0)}\n`);
    lastErrors = e;
  }, 1000);
  const statsTimer = opts.stats > 0 ? setInterval(() => {
    process.stdout.write(`decap: ipip ${d.get('decap_ipip')} gue ${d.get('decap_gue')} written ${written} refused ${d.errors()}\n`);
  }, opts.stats * 1000) : null;

  await new Promise<void>((resolve) => {
    const done = (): void => resolve();
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
    if (opts.duration) setTimeout(done, opts.duration * 1000).unref();
  });
  clearInterval(errorTimer);
  if (statsTimer) clearInterval(statsTimer);
  const tunStats = theTun.stats();
  const capStats = theCap.stats();
  cleanup();
  process.stdout.write('final counters:\n');
  const final: Record<string, number> = { ...d.toObject(), tun_written: written, tun_tx_errors: tunStats.tx_errors ?? 0, capture_drops: capStats.ps_drop ?? 0, read_errors: readErrors };
  for (const [k, v] of Object.entries(final)) if (v !== 0) process.stdout.write(`  ${k.padEnd(34)} ${v}\n`);
  return 0;
}
