// `portcullis replay --guard`: the same sensor as the live appliance over
// captures, and the monitor the live appliance would run, in capture time,
// so a CI job can replay an attack capture and check what the guard decides.
//
// Time: the sensor's counts are flushed to the monitor at every interval
// boundary of packet time (a batch is split at the boundaries, so counts
// land in the interval their packets belong to). Several files are laid end
// to end: each file's times are shifted to start one interval after the
// previous file ended (as if they were one capture).
//
// What is reported per originating address: every attempt and suspicious
// fragment the sensor saw in the captures (the enforcement table is not
// applied offline, so the counts are the capture's, comparable with what
// tshark finds), the highest score, and the verdict the monitor reached:
// block (with its rule and time), allow (allow-listed), or pass. As in the
// live appliance, an address's counts stop scoring while it is blocked.

import type { Batch } from '../io/batch.js';
import type { Meta } from '../wire/meta.js';
import type { Counters } from '../counters.js';
import type { FlowTable } from '../flow/flow-table.js';
import { Logger } from '../control/log.js';
import type { GuardConfig } from './config.js';
import { GuardSensor } from './sensor.js';
import { Monitor } from './monitor.js';

export interface GuardReplayAddress {
  addr: string;
  attempts: number;
  suspicious: number;
  completed: number;
  closed: number;
  /** Highest score reached. */
  score: number;
  /** Score at the end of the replay. */
  finalScore: number;
  verdict: 'block' | 'allow' | 'pass';
  rule?: string;
  /** Capture time of the (first) block, seconds since the epoch. */
  blockedAt?: number;
  blockSeconds?: number;
}

export interface GuardReplayReport {
  interval: number;
  threshold: number;
  node: string;
  addresses: GuardReplayAddress[];
  blocks: number;
  alerts: number;
  counters: Record<string, number>;
}

export class GuardReplay {
  readonly sensor: GuardSensor;
  readonly monitor: Monitor;
  private readonly interval: number;
  private clock = -Infinity;
  private nextTick = NaN;
  private shift = 0;
  private newFile = true;
  private seq = 0;
  private flows: FlowTable | null = null;

  constructor(readonly cfg: GuardConfig, private readonly counters: Counters, batchCapacity = 256, log: Logger = new Logger('error', () => {})) {
    this.interval = cfg.interval;
    this.sensor = new GuardSensor({
      capacity: cfg.sensor.capacity,
      fragCapacity: cfg.sensor.fragCapacity,
      fragTimeoutSec: cfg.sensor.fragTimeout,
      dropSuspicious: cfg.dropSuspiciousFragments,
      batchCapacity,
      synTimeoutSec: cfg.synTimeout,
    }, counters);
    this.monitor = new Monitor(cfg, { log, now: () => this.clock * 1000 });
  }

  /** Before the flow table: the sensor over the batch, flushing at every interval boundary of packet time. */
  inspect(batch: Batch, meta: Meta, flows: FlowTable): void {
    this.flows = flows;
    const n = batch.count, sec = batch.tsSec, ns = batch.tsNsec;
    let from = 0;
    for (let i = 0; i < n; i++) {
      let t = sec[i] + ns[i] * 1e-9;
      if (this.newFile) {
        this.newFile = false;
        this.shift = this.clock === -Infinity ? 0 : this.clock + this.interval - t;
      }
      t += this.shift;
      if (!(t > this.clock)) continue;
      if (this.clock === -Infinity) this.nextTick = (Math.floor(t / this.interval) + 1) * this.interval;
      this.clock = t;
      if (t >= this.nextTick) {
        if (i > from) this.sensor.inspect(batch, meta, this.clock, from, i);
        from = i;
        this.catchUp(t);
      }
    }
    if (n > from) this.sensor.inspect(batch, meta, this.clock, from, n);
  }

  /** After the flow table. */
  afterTrack(flows: FlowTable): void {
    this.sensor.afterTrack(flows);
  }

  /** The end of a file (before its flows are dropped): a last flush, so its counts are decided on. */
  endFile(flows: FlowTable): void {
    this.flows = flows;
    if (this.clock === -Infinity) {
      this.newFile = true;
      return;
    }
    this.flush(this.clock);
    this.nextTick = (Math.floor(this.clock / this.interval) + 1) * this.interval;
    this.newFile = true;
  }

  /** Runs the ticks due by packet time t (skipping empty stretches of a sparse capture). */
  private catchUp(t: number): void {
    while (t >= this.nextTick) {
      const at = this.nextTick;
      const saved = this.clock;
      this.clock = at;
      this.flush(at);
      this.clock = saved;
      const idle = this.sensor.size === 0;
      this.nextTick = idle && t - at > this.interval ? at + Math.floor((t - at) / this.interval) * this.interval : at + this.interval;
    }
  }

  private flush(at: number): void {
    if (this.flows) this.sensor.sweep(this.flows);
    const b = this.sensor.flush(this.cfg.node, ++this.seq, at * 1000);
    if (b.deltas.length > 0) this.monitor.onDeltas(b);
    this.monitor.tick(at * 1000);
  }

  report(): GuardReplayReport {
    const addrs: GuardReplayAddress[] = this.monitor.all().map((a) => {
      const fb = this.monitor.firstBlock.get(a.addr);
      const r: GuardReplayAddress = {
        addr: a.addr, attempts: a.attempts, suspicious: a.suspicious, completed: a.completed, closed: a.closed,
        score: a.peak, finalScore: a.score, verdict: fb ? 'block' : a.allow ? 'allow' : 'pass',
      };
      if (fb) {
        r.rule = fb.rule;
        r.blockedAt = fb.at / 1000;
        r.blockSeconds = fb.until ? Math.round((fb.until - fb.at) / 1000) : 0;
      }
      return r;
    });
    addrs.sort((a, b) => b.score - a.score || b.attempts - a.attempts || b.suspicious - a.suspicious || (a.addr < b.addr ? -1 : 1));
    const c = this.counters.toObject();
    const counters: Record<string, number> = {};
    for (const [k, v] of Object.entries(c)) if (k.startsWith('guard_')) counters[k] = v;
    return {
      interval: this.interval, threshold: this.cfg.score.threshold, node: this.cfg.node, addresses: addrs,
      blocks: this.monitor.firstBlock.size, alerts: this.monitor.alerts.c.alerts, counters,
    };
  }
}

const nf = new Intl.NumberFormat('en-US');

export function formatGuardReport(r: GuardReplayReport): string {
  const lines: string[] = [];
  lines.push(`guard (interval ${r.interval} s, block at score ${r.threshold}): ${r.addresses.length} originating address${r.addresses.length === 1 ? '' : 'es'}, ${r.blocks} blocked`);
  if (r.addresses.length) {
    const w = Math.max(7, ...r.addresses.map((a) => a.addr.length));
    lines.push(`  ${'address'.padEnd(w)}  ${'attempts'.padStart(10)}  ${'suspicious'.padStart(10)}  ${'completed'.padStart(9)}  ${'score'.padStart(9)}  verdict`);
    for (const a of r.addresses) {
      const v = a.verdict === 'block' ? `block (${a.rule}, ${a.blockSeconds} s, at ${new Date(a.blockedAt! * 1000).toISOString()})` : a.verdict;
      lines.push(`  ${a.addr.padEnd(w)}  ${nf.format(a.attempts).padStart(10)}  ${nf.format(a.suspicious).padStart(10)}  ${nf.format(a.completed).padStart(9)}  ${a.score.toFixed(1).padStart(9)}  ${v}`);
    }
  }
  const c = r.counters;
  lines.push(`  counters: attempts ${nf.format(c.guard_attempts ?? 0)} (assembled from fragments ${nf.format(c.guard_assembled_syn ?? 0)}), suspicious fragments ${nf.format(c.guard_suspicious ?? 0)} (dropped ${nf.format(c.guard_suspicious_drop ?? 0)}), overlaps ${nf.format(c.guard_frag_overlap ?? 0)}, table full ${nf.format((c.guard_table_full ?? 0) + (c.guard_frag_table_full ?? 0))}`);
  return lines.join('\n') + '\n';
}
