// The guard as a node runs it (DESIGN.md "guard/"): the sensor and the
// enforcement table on the data path, and around them the control plane:
// the bus, the monitor when it runs in this process (always with the
// embedded bus), a timer that once per interval sweeps completions and
// closes from the flow table, flushes the sensor's counts as one DeltaBatch,
// lets the monitor decide, and applies the block events that come back by
// rebuilding the enforcement table and swapping it in.
//
// The appliance calls two things per batch: inspect() after parsing (the
// sensor and the block check, before flow tracking, so dropped packets make
// no flows) and afterTrack() after the flow table has tracked the batch.

import type { Batch } from '../io/batch.js';
import type { Meta } from '../wire/meta.js';
import type { Counters } from '../counters.js';
import type { FlowTable } from '../flow/flow-table.js';
import type { Logger } from '../control/log.js';
import { RawTx } from '../io/raw-tx.js';
import { EmbeddedBus, type BlockEntry, type BlockEvent, type GuardBus } from './bus.js';
import type { GuardConfig } from './config.js';
import { GuardSensor } from './sensor.js';
import { Blocklist } from './blocklist.js';
import { Monitor, GuardError } from './monitor.js';
import { parsePrefix, type Prefix } from './addr.js';

export interface GuardOptions {
  counters: Counters;
  log: Logger;
  flows: FlowTable;
  batchCapacity: number;
  /** Send resets through a raw socket (the live appliance); false in tests and replays. */
  rawTx?: boolean;
  /** Injected bus (tests); otherwise made from guard.bus at start(). */
  bus?: GuardBus;
}

/** guard.bus 'redis://...': the Redis Streams bus (src/guard/redis-bus.ts), loaded only when asked for. */
export async function makeBus(cfg: GuardConfig): Promise<GuardBus> {
  if (cfg.bus === 'embedded') return new EmbeddedBus();
  // A variable specifier: the file is optional at build time.
  const spec = './redis-bus.js';
  let mod: { RedisBus?: new (o: { url: string; node: string; role?: 'node' | 'both' }) => GuardBus };
  try {
    mod = await import(spec);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ERR_MODULE_NOT_FOUND' || /Cannot find module/.test(e.message)) {
      throw new Error('guard.bus redis: not available (this build has no src/guard/redis-bus.ts); use guard.bus: embedded');
    }
    throw err;
  }
  if (typeof mod.RedisBus !== 'function') throw new Error('guard.bus redis: not available (redis-bus.js exports no RedisBus)');
  // 'both': this process also runs the monitor (it reads the deltas of every node).
  return new mod.RedisBus({ url: cfg.bus, node: cfg.node, role: cfg.monitor ? 'both' : 'node' });
}

export class Guard {
  readonly sensor: GuardSensor;
  readonly blocklist = new Blocklist();
  readonly monitor: Monitor | null;
  bus: GuardBus | null = null;
  /** The node's view of the blacklist (from the snapshot and the events). */
  readonly entries = new Map<string, BlockEntry>();
  private readonly allow: Prefix[];
  private readonly flows: FlowTable;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | null = null;
  private raw: RawTx | null = null;
  private seq = 0;
  private inTick = false;
  private dirty = false;
  private rebuildQueued = false;
  /** Ms of the last swap of the enforcement table (tests and alerts compare it with decisions). */
  lastRebuildAt = 0;
  readonly c = { guard_flushes: 0, guard_events: 0, guard_rebuilds: 0, guard_publish_errors: 0, guard_rst_send_errors: 0 };

  constructor(readonly cfg: GuardConfig, private readonly opts: GuardOptions) {
    this.flows = opts.flows;
    this.log = opts.log;
    this.sensor = new GuardSensor({
      capacity: cfg.sensor.capacity,
      fragCapacity: cfg.sensor.fragCapacity,
      fragTimeoutSec: cfg.sensor.fragTimeout,
      dropSuspicious: cfg.dropSuspiciousFragments,
      rst: cfg.rst,
      rstRate: cfg.rstRate,
      batchCapacity: opts.batchCapacity,
      synTimeoutSec: cfg.synTimeout,
    }, opts.counters);
    this.sensor.blocklist = this.blocklist;
    this.allow = cfg.allow.map((a) => parsePrefix(a)!);
    this.monitor = cfg.monitor ? new Monitor(cfg, { log: opts.log }) : null;
  }

  /** Data path, after parsing: enforcement, then the sensor. */
  inspect(batch: Batch, meta: Meta, nowSec: number): void {
    this.sensor.inspect(batch, meta, nowSec);
    const rst = this.sensor.rstOut;
    if (rst.count !== 0) {
      // Slow path, rate limited by the sensor.
      if (this.raw) {
        try { this.raw.sendBatch(rst); } catch { this.c.guard_rst_send_errors++; }
      }
      rst.clear();
    }
  }

  /** Data path, after the flow table tracked the batch. */
  afterTrack(): void {
    this.sensor.afterTrack(this.flows);
  }

  async start(): Promise<void> {
    const bus = this.opts.bus ?? await makeBus(this.cfg);
    this.bus = bus;
    if (this.monitor) {
      const m = this.monitor;
      m.bus = bus;
      bus.onDeltas((b) => m.onDeltas(b));
    }
    bus.onBlock((ev) => this.applyEvent(ev));
    await bus.start();
    const snap = await bus.loadSnapshot();
    if (this.monitor) this.monitor.load(snap);
    for (const e of snap) this.entries.set(e.addr, e);
    this.rebuild();
    if (this.cfg.rst && this.opts.rawTx) {
      try {
        this.raw = new RawTx();
      } catch (err) {
        this.log.warn('guard: no raw socket, blocked SYNs are dropped without a reset', { error: (err as Error).message });
      }
    }
    this.timer = setInterval(() => this.tick(), this.cfg.interval * 1000);
    this.log.info('guard started', {
      node: this.cfg.node, bus: bus.kind, monitor: !!this.monitor, interval: this.cfg.interval,
      blocked: this.entries.size, allow: this.cfg.allow.length,
    });
  }

  /**
   * Once per interval: completions and closes from the flow table, the
   * sensor's counts to the bus (the embedded monitor decides right there),
   * block expiry, and one rebuild of the enforcement table if anything
   * changed.
   */
  tick(nowMs: number = Date.now()): void {
    this.inTick = true;
    try {
      this.sensor.sweep(this.flows);
      const b = this.sensor.flush(this.cfg.node, this.seq + 1, nowMs);
      if (b.deltas.length > 0 && this.bus) {
        this.seq++;
        this.c.guard_flushes++;
        try { this.bus.publishDeltas(b); } catch (err) { this.c.guard_publish_errors++; this.log.error('guard: publishDeltas failed', { error: (err as Error).message }); }
      }
      this.monitor?.tick(nowMs);
      // Entries that expired on this node even if the unblock event was lost.
      for (const [k, e] of this.entries) if (e.until !== 0 && e.until <= nowMs) { this.entries.delete(k); this.dirty = true; }
    } finally {
      this.inTick = false;
    }
    if (this.dirty) this.rebuild(nowMs);
  }

  /** A block event from the bus: the node's blacklist view changes; the table is rebuilt once per tick or right after. */
  applyEvent(ev: BlockEvent): void {
    this.c.guard_events++;
    if (ev.op === 'block') this.entries.set(ev.entry.addr, ev.entry);
    else this.entries.delete(ev.entry.addr);
    this.dirty = true;
    if (this.inTick) return;
    if (!this.rebuildQueued) {
      this.rebuildQueued = true;
      setImmediate(() => { this.rebuildQueued = false; if (this.dirty) this.rebuild(); });
    }
  }

  /** Builds the enforcement table from the node's blacklist view and swaps it in. */
  rebuild(nowMs: number = Date.now()): void {
    this.dirty = false;
    this.blocklist.rebuild(this.entries.values(), this.allow, nowMs);
    this.lastRebuildAt = Date.now();
    this.c.guard_rebuilds++;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.monitor?.alerts.close();
    this.raw?.close();
    this.raw = null;
    try { await this.bus?.close(); } catch { /* closing anyway */ }
  }

  stats(): Record<string, number> {
    const o: Record<string, number> = { ...this.c, ...this.sensor.stats(), guard_blocklist_entries: this.blocklist.size };
    if (this.monitor) Object.assign(o, prefixKeys('guard_', this.monitor.stats()));
    if (this.bus) Object.assign(o, prefixKeys('guard_', this.bus.stats()));
    return o;
  }

  /**
   * The admin API under /guard/ (src/control/admin.ts): GET blacklist,
   * scores, alerts; POST block {addr, duration?}, unblock {addr}.
   */
  async handleAdmin(method: string, path: string, query: URLSearchParams, body: unknown): Promise<{ code: number; body: unknown }> {
    const limit = Math.min(100000, Math.max(1, Number(query.get('limit') ?? 100) || 100));
    const m = this.monitor;
    const noMonitor = { code: 503, body: { error: `the guard monitor does not run in this process (guard.monitor: false, bus ${this.cfg.bus}); ask the node that runs it` } };
    try {
      if (method === 'GET') {
        switch (path) {
          case '/guard/blacklist': {
            const drops = new Map(this.blocklist.list().map((e) => [e.addr, e.drops]));
            const list = m ? m.list() : [...this.entries.values()];
            return { code: 200, body: { node: this.cfg.node, blacklist: list.map((e) => ({ ...e, drops: drops.get(e.addr) ?? 0 })) } };
          }
          case '/guard/scores':
            return m ? { code: 200, body: { scores: m.scores(limit) } } : noMonitor;
          case '/guard/alerts':
            return m ? { code: 200, body: { alerts: m.alerts.recent(limit) } } : noMonitor;
          default:
            return { code: 404, body: { error: `no such endpoint: ${path}` } };
        }
      }
      if (method === 'POST') {
        const b = (body ?? {}) as { addr?: unknown; duration?: unknown };
        if (typeof b.addr !== 'string') return { code: 400, body: { error: 'expected a JSON body {"addr": "<address or prefix>"}' } };
        switch (path) {
          case '/guard/block': {
            if (!m) return noMonitor;
            const dur = b.duration === undefined ? 0 : Number(b.duration);
            const entry = m.block(b.addr, dur);
            return { code: 200, body: { entry } };
          }
          case '/guard/unblock': {
            if (!m) return noMonitor;
            const ok = m.unblock(b.addr);
            return ok ? { code: 200, body: { removed: b.addr } } : { code: 404, body: { error: `${b.addr} is not blocked` } };
          }
          default:
            return { code: 404, body: { error: `no such endpoint: ${path}` } };
        }
      }
      return { code: 405, body: { error: 'GET or POST' } };
    } catch (err) {
      if (err instanceof GuardError) return { code: err.code, body: { error: err.message } };
      throw err;
    }
  }
}

function prefixKeys(p: string, o: Record<string, number>): Record<string, number> {
  const r: Record<string, number> = {};
  for (const [k, v] of Object.entries(o)) r[k.startsWith(p) ? k : p + k] = v;
  return r;
}
