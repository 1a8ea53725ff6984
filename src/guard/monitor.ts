// The guard's monitor (DESIGN.md "guard/"): it receives, from every node's
// sensor, the per-address counts of each interval (DeltaBatch over a
// GuardBus), keeps per-address state, scores, decides, alerts and publishes
// blocks back to every node. Control plane: nothing here runs per packet.
//
// Per address (typed arrays, AddressState below; a Map finds the slot of an
// address text once per delta):
//   - rate: a token bucket (rate, burst). Deltas come in chunks (one per
//     node per interval): the bucket is refilled for the time since the last
//     chunk, the chunk is taken, and only then is it capped at the burst, so
//     a steady rate just under `rate` never scores whatever the interval.
//   - total: attempts in a sliding window (two fixed windows, the previous
//     one weighted by how much of it still overlaps: Cloudflare's
//     approximation, O(1) memory).
//   - concurrent: established connections open (completed - closed, from
//     the flow table via the sensor; src/guard/conns.ts).
//   - incomplete: SYNs without a completed handshake, a balance
//     max(0, balance + attempts - completed) that decays like the score;
//     what it holds over the allowance scores once.
//   - suspicious fragments.
// Each rule adds weight x (amount over its threshold) to a score that halves
// every `halfLife` seconds; at `threshold` the address is blocked, unless it
// is on the allow list (then an "allowlisted" alert, and nothing else). The
// rule recorded with the block is the one that added the most points in the
// evaluation that crossed.
//
// Blacklist: entries with an expiry; repeat offences within `ban.forget`
// escalate the block time (fail2ban's bantime.increment): time *
// factor^(offences-1), capped at `ban.max`. Manual block/unblock by address
// or prefix. Every change goes to every node as a BlockEvent with the whole
// snapshot (GuardBus.publishBlock). While an address is blocked its deltas
// (late ones from the interval before the block reached a node) are counted
// but not scored, so a block ends with a clean slate and a repeat attack is
// a new offence.

import type { Logger } from '../control/log.js';
import type { BlockEntry, BlockEvent, DeltaBatch, GuardBus } from './bus.js';
import type { GuardConfig } from './config.js';
import { AlertSink, type GuardAlert } from './alerts.js';
import { PrefixList, parsePrefix, contains, type Prefix } from './addr.js';

export const RULE_NAMES = ['rate', 'total', 'concurrent', 'incomplete', 'suspicious'] as const;
export type RuleName = (typeof RULE_NAMES)[number];
export const Rule = { RATE: 0, TOTAL: 1, CONCURRENT: 2, INCOMPLETE: 3, SUSPICIOUS: 4 } as const;

const FLAG_USED = 1, FLAG_ALLOW = 2, FLAG_BLOCKED = 4;

/** Thresholds with every field filled (the defaults, then one set per configured prefix). */
export interface ResolvedThresholds {
  rate: number; burst: number; totalMax: number; totalWindow: number; concurrent: number; incomplete: number;
}

export interface Weights { rate: number; total: number; concurrent: number; incomplete: number; suspicious: number }

/** Fields of an address in AddressState.f (stride A_STRIDE). */
export const A = {
  TOKENS: 0, T_LAST: 1, WIN_START: 2, WIN_CUR: 3, WIN_PREV: 4, CONC: 5, PENDING: 6, SCORE: 7, PEAK: 8, LAST_SEEN: 9,
  SUM_ATTEMPTS: 10, SUM_SUSPICIOUS: 11, SUM_COMPLETED: 12, SUM_CLOSED: 13,
} as const;
const A_STRIDE = 16;
// The same offsets as plain module constants: in optimised code a property of
// an `as const` object is a map check and a load on every use (see wire/parse.ts).
const F_TOKENS = 0, F_T_LAST = 1, F_WIN_START = 2, F_WIN_CUR = 3, F_WIN_PREV = 4, F_CONC = 5, F_PENDING = 6, F_SCORE = 7, F_PEAK = 8, F_LAST_SEEN = 9;
const F_SUM_ATTEMPTS = 10, F_SUM_SUSPICIOUS = 11, F_SUM_COMPLETED = 12, F_SUM_CLOSED = 13;
/** Thresholds per index in AddressState.t (stride T_STRIDE). */
const T_RATE = 0, T_BURST = 1, T_MAX = 2, T_WIN = 3, T_CONC = 4, T_INC = 5, T_STRIDE = 8;

/**
 * Per-address state over typed arrays: the token bucket, the window, the
 * concurrent and incomplete counts, the score. One Float64Array holds all
 * of an address's fields side by side (16 doubles: two cache lines, one
 * bounds-checked array for every field; Katran's per-entry BPF map values),
 * so an evaluation touches one place. apply() is the "bucket decision" the
 * benchmark measures: arithmetic on those slots, no allocation.
 */
export class AddressState {
  readonly capacity: number;
  readonly flags: Uint8Array;
  readonly tIdx: Uint16Array;
  /** Per address, A_STRIDE doubles (fields: A). */
  readonly f: Float64Array;
  /** Points per rule added by the last apply(), then their sum (index RULE_NAMES.length). */
  readonly contrib = new Float64Array(RULE_NAMES.length + 1);
  /**
   * The time apply() evaluates at (seconds), set by the caller once per
   * batch: a double argument to a call that is not inlined, or a double
   * returned from it, is a heap allocation in V8, so neither is used.
   * [1], [2]: the last dt and its decay factor (one exp per distinct dt:
   * a tick evaluates many addresses with the same dt).
   */
  readonly clock = new Float64Array(3);
  private readonly t: Float64Array;
  private readonly wRate: number;
  private readonly wTotal: number;
  private readonly wConc: number;
  private readonly wInc: number;
  private readonly wSusp: number;
  /** ln 2 / half-life: the score decays as exp(-dt * decayRate). */
  private readonly decayRate: number;

  constructor(capacity: number, thresholds: ResolvedThresholds[], w: Weights, halfLifeSec: number) {
    this.capacity = capacity;
    this.flags = new Uint8Array(capacity);
    this.tIdx = new Uint16Array(capacity);
    this.f = new Float64Array(capacity * A_STRIDE);
    this.t = new Float64Array(thresholds.length * T_STRIDE);
    thresholds.forEach((x, i) => {
      const o = i * T_STRIDE;
      this.t[o + T_RATE] = x.rate; this.t[o + T_BURST] = x.burst; this.t[o + T_MAX] = x.totalMax;
      this.t[o + T_WIN] = x.totalWindow; this.t[o + T_CONC] = x.concurrent; this.t[o + T_INC] = x.incomplete;
    });
    this.wRate = w.rate; this.wTotal = w.total; this.wConc = w.concurrent; this.wInc = w.incomplete; this.wSusp = w.suspicious;
    this.decayRate = Math.LN2 / halfLifeSec;
    this.clock[1] = -1;
  }

  /** Field `k` (A) of address s. */
  get(s: number, k: number): number {
    return this.f[s * A_STRIDE + k];
  }

  /** Starts slot s afresh at time `now` (seconds) with thresholds `ti`. */
  init(s: number, ti: number, allow: boolean, now: number): void {
    this.flags[s] = FLAG_USED | (allow ? FLAG_ALLOW : 0);
    this.tIdx[s] = ti;
    const o = s * A_STRIDE, f = this.f;
    f.fill(0, o, o + A_STRIDE);
    f[o + A.TOKENS] = this.t[ti * T_STRIDE + T_BURST];
    f[o + A.T_LAST] = now;
    f[o + A.WIN_START] = now;
    f[o + A.LAST_SEEN] = now;
  }

  /** The score of slot s decayed to `now` (read only). */
  scoreAt(s: number, now: number): number {
    const o = s * A_STRIDE;
    const dt = now - this.f[o + A.T_LAST];
    return dt > 0 ? this.f[o + A.SCORE] * Math.exp(-dt * this.decayRate) : this.f[o + A.SCORE];
  }

  /**
   * Applies one address's counts at `clock[0]` (seconds): decays, runs the
   * rules, adds their points (per rule and in total in `contrib`). `scored`
   * false (a blocked address) updates the counts only.
   */
  apply(s: number, attempts: number, suspicious: number, completed: number, closed: number, scored: boolean): void {
    const f = this.f, t = this.t, clock = this.clock;
    const now = clock[0];
    const o = s * A_STRIDE, to = this.tIdx[s] * T_STRIDE;
    let dt = now - f[o + F_T_LAST];
    if (dt < 0) dt = 0;
    f[o + F_T_LAST] = now;
    f[o + F_LAST_SEEN] = now;
    f[o + F_SUM_ATTEMPTS] += attempts;
    f[o + F_SUM_SUSPICIOUS] += suspicious;
    f[o + F_SUM_COMPLETED] += completed;
    f[o + F_SUM_CLOSED] += closed;
    let decay = 1;
    if (dt > 0) {
      if (dt !== clock[1]) {
        clock[1] = dt;
        clock[2] = Math.exp(-dt * this.decayRate);
      }
      decay = clock[2];
    }
    // rate: token bucket, refilled for dt, capped after the chunk is taken.
    // An unscored chunk (a blocked address, whose bucket is reset at unblock;
    // a node's backlog after a bus outage) takes nothing: it does not tell
    // the rate now.
    const avail = f[o + F_TOKENS] + t[to + T_RATE] * dt;
    const take = scored ? attempts : 0;
    const overRate = take > avail ? take - avail : 0;
    const rem = avail - take;
    const burst = t[to + T_BURST];
    f[o + F_TOKENS] = rem < 0 ? 0 : rem > burst ? burst : rem;
    // total: sliding window estimate before and after this chunk.
    const W = t[to + T_WIN];
    let ws = f[o + F_WIN_START];
    if (now - ws >= W) {
      const k = Math.floor((now - ws) / W);
      f[o + F_WIN_PREV] = k === 1 ? f[o + F_WIN_CUR] : 0;
      f[o + F_WIN_CUR] = 0;
      ws += k * W;
      f[o + F_WIN_START] = ws;
    }
    const cur = f[o + F_WIN_CUR];
    const est = f[o + F_WIN_PREV] * (1 - (now - ws) / W) + cur;
    f[o + F_WIN_CUR] = cur + attempts;
    const after = est + attempts, max = t[to + T_MAX];
    const overTotal = after > max ? (after - max < attempts ? after - max : attempts) : 0;
    // concurrent: established connections open.
    let conc = f[o + F_CONC] + completed - closed;
    if (conc < 0) conc = 0;
    f[o + F_CONC] = conc;
    const cmax = t[to + T_CONC];
    const overConc = conc > cmax ? conc - cmax : 0;
    // incomplete: SYNs not (yet) completed, decaying.
    const pb = f[o + F_PENDING] * decay;
    let pend = pb + attempts - completed;
    if (pend < 0) pend = 0;
    f[o + F_PENDING] = pend;
    const inc = t[to + T_INC];
    const floor = pb > inc ? pb : inc;
    const overInc = pend > floor ? pend - floor : 0;
    const c = this.contrib;
    if (!scored) {
      c[0] = 0; c[1] = 0; c[2] = 0; c[3] = 0; c[4] = 0; c[5] = 0;
      f[o + F_SCORE] *= decay;
      return;
    }
    const p0 = this.wRate * overRate, p1 = this.wTotal * overTotal, p2 = this.wConc * overConc;
    const p3 = this.wInc * overInc, p4 = this.wSusp * suspicious;
    c[0] = p0; c[1] = p1; c[2] = p2; c[3] = p3; c[4] = p4;
    const pts = p0 + p1 + p2 + p3 + p4;
    c[5] = pts;
    const sc = f[o + F_SCORE] * decay + pts;
    f[o + F_SCORE] = sc;
    if (sc > f[o + F_PEAK]) f[o + F_PEAK] = sc;
  }

  /** Index of the rule that added the most points in the last apply(). */
  dominantRule(): number {
    const c = this.contrib;
    let best = 0;
    for (let r = 1; r < RULE_NAMES.length; r++) if (c[r] > c[best]) best = r;
    return best;
  }

  /** After a block: a clean slate (score, bucket, balance), so that the end of the block starts fresh. */
  clearAfterBlock(s: number, now: number): void {
    const o = s * A_STRIDE, f = this.f;
    f[o + A.SCORE] = 0;
    f[o + A.PENDING] = 0;
    f[o + A.TOKENS] = this.t[this.tIdx[s] * T_STRIDE + T_BURST];
    f[o + A.T_LAST] = now;
    f[o + A.WIN_CUR] = 0;
    f[o + A.WIN_PREV] = 0;
    f[o + A.WIN_START] = now;
  }

  concurrentOver(s: number): boolean {
    return this.f[s * A_STRIDE + A.CONC] > this.t[this.tIdx[s] * T_STRIDE + T_CONC];
  }
}

export interface MonitorOptions {
  log: Logger;
  bus?: GuardBus | null;
  alerts?: AlertSink;
  /** Clock in ms since the epoch (the replay passes capture time). */
  now?: () => number;
}

export class GuardError extends Error {
  constructor(message: string, readonly code: number) {
    super(message);
    this.name = 'GuardError';
  }
}

/** One address as the admin API and the replay report show it. */
export interface AddressReport {
  addr: string;
  attempts: number;
  suspicious: number;
  completed: number;
  closed: number;
  concurrent: number;
  incomplete: number;
  score: number;
  peak: number;
  allow: boolean;
  blocked: boolean;
  nodes: string[];
  lastSeen: number;
}

export class Monitor {
  readonly state: AddressState;
  readonly alerts: AlertSink;
  /** The blacklist: canonical address or prefix text -> entry. */
  readonly blacklist = new Map<string, BlockEntry>();
  /** First block per address since start (the replay's verdict). */
  readonly firstBlock = new Map<string, BlockEntry>();
  private readonly slots = new Map<string, number>();
  private readonly addrOf: string[];
  private readonly nodesOf: (string[] | null)[];
  /** Ms of the last evaluation per slot (alert windows). */
  private readonly evalAt: Float64Array;
  private readonly freeList: number[] = [];
  private next = 0;
  private hand = 0;
  private readonly offences = new Map<string, { count: number; last: number }>();
  private readonly allowList = new PrefixList<true>();
  private readonly thresholds = new PrefixList<number>();
  private readonly lastAt = new Map<string, number>();
  private readonly lastSeq = new Map<string, number>();
  /** Per node, when its last batch arrived (monitor clock): with lastAt, tells a held-back backlog from timely batches. */
  private readonly lastArrival = new Map<string, number>();
  private readonly allowAlerted = new Map<string, number>();
  private readonly now: () => number;
  /** Where block events go (set by the owner once the bus exists; null: decisions stay local, as in the replay). */
  bus: GuardBus | null;
  private readonly log: Logger;
  readonly c = {
    monitor_batches: 0, monitor_deltas: 0, monitor_seq_gaps: 0, monitor_blocks: 0, monitor_unblocks: 0,
    monitor_table_full: 0, monitor_evicted: 0, monitor_publish_errors: 0, monitor_bad_deltas: 0,
    monitor_catchup: 0,
  };

  constructor(readonly cfg: GuardConfig, opts: MonitorOptions) {
    this.log = opts.log;
    this.bus = opts.bus ?? null;
    this.now = opts.now ?? Date.now;
    this.alerts = opts.alerts ?? new AlertSink({ log: opts.log, ...cfg.alerts });
    const base = cfg.thresholds;
    const sets: ResolvedThresholds[] = [{
      rate: base.rate.rate, burst: base.rate.burst, totalMax: base.total.max, totalWindow: base.total.window,
      concurrent: base.concurrent, incomplete: base.incomplete,
    }];
    for (const p of cfg.prefixes) {
      const t = sets[0];
      sets.push({
        rate: p.rate?.rate ?? t.rate, burst: p.rate?.burst ?? t.burst,
        totalMax: p.total?.max ?? t.totalMax, totalWindow: p.total?.window ?? t.totalWindow,
        concurrent: p.concurrent ?? t.concurrent, incomplete: p.incomplete ?? t.incomplete,
      });
      this.thresholds.add(parsePrefix(p.prefix)!, sets.length - 1);
    }
    for (const a of cfg.allow) this.allowList.add(parsePrefix(a)!, true);
    this.state = new AddressState(cfg.capacity, sets, cfg.score.weights, cfg.score.halfLife);
    this.addrOf = new Array<string>(cfg.capacity).fill('');
    this.nodesOf = new Array<string[] | null>(cfg.capacity).fill(null);
    this.evalAt = new Float64Array(cfg.capacity);
  }

  /** The allow-list prefixes (the nodes' enforcement tables exempt them). */
  allowPrefixes(): Prefix[] {
    return this.allowList.prefixes();
  }

  /** Loads a stored blacklist (a restarted monitor with a shared bus). */
  load(snapshot: BlockEntry[]): void {
    for (const e of snapshot) {
      this.blacklist.set(e.addr, e);
      const s = this.slots.get(e.addr);
      if (s !== undefined) this.state.flags[s] |= FLAG_BLOCKED;
      const o = this.offences.get(e.addr);
      if (!o || o.count < e.offences) this.offences.set(e.addr, { count: e.offences, last: e.at });
    }
  }

  /** A node's batch: every delta is applied and evaluated at once (a block is decided within the interval that crossed). */
  onDeltas(b: DeltaBatch): void {
    if (!b || !Array.isArray(b.deltas) || typeof b.node !== 'string') {
      this.c.monitor_bad_deltas++;
      return;
    }
    const nowMs = this.now();
    const now = nowMs / 1000;
    this.c.monitor_batches++;
    const prevSeq = this.lastSeq.get(b.node);
    if (prevSeq !== undefined && b.seq > prevSeq + 1) this.c.monitor_seq_gaps += b.seq - prevSeq - 1;
    this.lastSeq.set(b.node, b.seq);
    // The batch holds what the node counted since its previous flush, one interval ago
    // (a node that had nothing to say in between sent nothing).
    // A node's backlog (held back while the bus was down, or while this
    // monitor was away) arrives in a burst: its first batch comes long after
    // the node's previous one although it was flushed one interval after it,
    // the others come at once although flushed an interval apart. Both gaps
    // are measured on one clock each, so skew between hosts cancels out. The
    // bucket and the score run on arrival time and would take every attempt
    // of the outage as made at once, blocking ordinary clients: a batch whose
    // arrival gap and flush gap differ by more than half an interval is
    // counted (sums, concurrent, window) but neither scored nor taken from
    // the bucket. The node's next timely batches are scored as usual.
    const prevAt = this.lastAt.get(b.node), prevArrival = this.lastArrival.get(b.node);
    const late = prevAt !== undefined && prevArrival !== undefined && Math.abs((nowMs - prevArrival) - (b.at - prevAt)) > this.cfg.interval * 500;
    if (late) this.c.monitor_catchup++;
    this.lastArrival.set(b.node, nowMs);
    const from = Math.max(prevAt ?? -Infinity, b.at - this.cfg.interval * 1000);
    this.lastAt.set(b.node, b.at);
    const st = this.state;
    st.clock[0] = now;
    for (const d of b.deltas) {
      this.c.monitor_deltas++;
      const s = this.slotOf(d.addr, now);
      if (s < 0) continue;
      this.addNode(s, b.node);
      const blocked = (st.flags[s] & FLAG_BLOCKED) !== 0;
      st.apply(s, num(d.attempts), num(d.suspicious), num(d.completed), num(d.closed), !blocked && !late);
      this.evalAt[s] = nowMs;
      if (!blocked && !late) this.decide(s, nowMs, { from, to: b.at }, d);
    }
  }

  /**
   * Once per interval: block expiry, forgotten offences, and addresses that
   * hold too many connections without sending anything new.
   */
  tick(nowMs: number = this.now()): void {
    for (const [addr, e] of this.blacklist) {
      if (e.until !== 0 && e.until <= nowMs) this.removeBlock(addr, 'expired', nowMs);
    }
    const forget = this.cfg.ban.forget * 1000;
    for (const [addr, o] of this.offences) if (nowMs - o.last > forget && !this.blacklist.has(addr)) this.offences.delete(addr);
    const st = this.state, now = nowMs / 1000, iv = this.cfg.interval * 1000;
    for (let s = 0; s < this.next; s++) {
      if ((st.flags[s] & (FLAG_USED | FLAG_BLOCKED)) !== FLAG_USED || !st.concurrentOver(s)) continue;
      if (nowMs - this.evalAt[s] < iv * 0.9) continue;
      st.clock[0] = now;
      st.apply(s, 0, 0, 0, 0, true);
      const from = this.evalAt[s];
      this.evalAt[s] = nowMs;
      this.decide(s, nowMs, { from, to: nowMs }, null);
    }
  }

  /** Blocks an address or prefix by hand; `durationSec` 0 or absent = until unblocked. */
  block(addr: string, durationSec = 0, rule = 'manual'): BlockEntry {
    const p = parsePrefix(String(addr).trim());
    if (!p) throw new GuardError(`'${addr}' is not an IPv4 or IPv6 address or prefix`, 400);
    if ((p.family === 4 ? p.len === 32 : p.len === 128) && this.allowList.match(p.family, p.words)) {
      throw new GuardError(`${p.text} is on the allow list (guard.allow) and is never blocked`, 409);
    }
    if (!(durationSec >= 0) || !Number.isFinite(durationSec)) throw new GuardError(`duration must be a number of seconds >= 0, got ${durationSec}`, 400);
    const nowMs = this.now();
    const prior = this.offences.get(p.text);
    const s = this.slots.get(p.text);
    const entry: BlockEntry = {
      addr: p.text, until: durationSec > 0 ? nowMs + durationSec * 1000 : 0, rule, score: 0,
      nodes: s !== undefined ? (this.nodesOf[s] ?? []).slice() : [], offences: (prior?.count ?? 0) + 1, at: nowMs,
    };
    this.addBlock(entry, s);
    return entry;
  }

  /** Removes a block by hand; false when the address or prefix was not blocked. */
  unblock(addr: string): boolean {
    const p = parsePrefix(String(addr).trim());
    if (!p) throw new GuardError(`'${addr}' is not an IPv4 or IPv6 address or prefix`, 400);
    if (!this.blacklist.has(p.text)) return false;
    this.removeBlock(p.text, 'manual', this.now());
    return true;
  }

  /** The blacklist now. */
  list(): BlockEntry[] {
    return [...this.blacklist.values()].sort((a, b) => a.at - b.at);
  }

  /** Addresses by current score, highest first. */
  scores(limit = 100): AddressReport[] {
    const now = this.now() / 1000;
    const out: AddressReport[] = [];
    for (const [addr, s] of this.slots) out.push(this.report(addr, s, now));
    out.sort((a, b) => b.score - a.score || b.attempts - a.attempts);
    return out.slice(0, limit);
  }

  /** Every address the monitor holds (the replay report). */
  all(): AddressReport[] {
    const now = this.now() / 1000;
    return [...this.slots].map(([addr, s]) => this.report(addr, s, now));
  }

  stats(): Record<string, number> {
    return { ...this.c, ...this.alerts.stats(), monitor_addresses: this.slots.size, monitor_blacklist: this.blacklist.size };
  }

  // ---- internals ----

  private report(addr: string, s: number, now: number): AddressReport {
    const st = this.state;
    return {
      addr,
      attempts: st.get(s, A.SUM_ATTEMPTS), suspicious: st.get(s, A.SUM_SUSPICIOUS), completed: st.get(s, A.SUM_COMPLETED), closed: st.get(s, A.SUM_CLOSED),
      concurrent: st.get(s, A.CONC), incomplete: round2(st.get(s, A.PENDING)), score: round2(st.scoreAt(s, now)), peak: round2(st.get(s, A.PEAK)),
      allow: (st.flags[s] & FLAG_ALLOW) !== 0, blocked: (st.flags[s] & FLAG_BLOCKED) !== 0,
      nodes: (this.nodesOf[s] ?? []).slice(), lastSeen: st.get(s, A.LAST_SEEN) * 1000,
    };
  }

  private decide(s: number, nowMs: number, window: { from: number; to: number }, d: { attempts: number; suspicious: number; completed: number; closed: number } | null): void {
    const st = this.state;
    const score = st.get(s, A.SCORE);
    if (score < this.cfg.score.threshold) return;
    const addr = this.addrOf[s];
    const rule = RULE_NAMES[st.dominantRule()];
    const detail: Record<string, number> = {
      attempts: d?.attempts ?? 0, suspicious: d?.suspicious ?? 0, completed: d?.completed ?? 0, closed: d?.closed ?? 0,
      concurrent: st.get(s, A.CONC), incomplete: round2(st.get(s, A.PENDING)),
    };
    if ((st.flags[s] & FLAG_ALLOW) !== 0) {
      // Said once per half-life, not at every interval it stays high.
      const last = this.allowAlerted.get(addr) ?? -Infinity;
      if (nowMs - last >= this.cfg.score.halfLife * 1000) {
        this.allowAlerted.set(addr, nowMs);
        this.alerts.emit({ at: nowMs, time: new Date(nowMs).toISOString(), action: 'allowlisted', addr, rule, score: round2(score), nodes: (this.nodesOf[s] ?? []).slice(), window, detail });
      }
      return;
    }
    const prior = this.offences.get(addr);
    const forget = this.cfg.ban.forget * 1000;
    const offences = (prior && nowMs - prior.last <= forget ? prior.count : 0) + 1;
    const ban = this.cfg.ban;
    const sec = Math.min(ban.max, ban.time * Math.pow(ban.factor, offences - 1));
    const entry: BlockEntry = {
      addr, until: nowMs + sec * 1000, rule, score: round2(score), nodes: (this.nodesOf[s] ?? []).slice(), offences, at: nowMs,
    };
    this.offences.set(addr, { count: offences, last: nowMs });
    this.addBlock(entry, s, window, detail);
    st.clearAfterBlock(s, nowMs / 1000);
  }

  private addBlock(entry: BlockEntry, s: number | undefined, window?: { from: number; to: number }, detail?: Record<string, number>): void {
    this.blacklist.set(entry.addr, entry);
    if (!this.firstBlock.has(entry.addr)) this.firstBlock.set(entry.addr, entry);
    if (s !== undefined) this.state.flags[s] |= FLAG_BLOCKED;
    this.c.monitor_blocks++;
    this.alerts.emit({
      at: entry.at, time: new Date(entry.at).toISOString(), action: 'block', addr: entry.addr, rule: entry.rule, score: entry.score,
      nodes: entry.nodes, until: entry.until, offences: entry.offences, ...(window ? { window } : {}), ...(detail ? { detail } : {}),
    });
    this.publish({ op: 'block', entry });
  }

  private removeBlock(addr: string, why: string, nowMs: number): void {
    const e = this.blacklist.get(addr);
    if (!e) return;
    this.blacklist.delete(addr);
    const s = this.slots.get(addr);
    if (s !== undefined) {
      this.state.flags[s] &= ~FLAG_BLOCKED;
      this.state.clearAfterBlock(s, nowMs / 1000);
    }
    this.c.monitor_unblocks++;
    this.alerts.emit({ at: nowMs, time: new Date(nowMs).toISOString(), action: 'unblock', addr, rule: why, score: 0, nodes: e.nodes, until: e.until, offences: e.offences });
    this.publish({ op: 'unblock', entry: { ...e } });
  }

  private publish(ev: BlockEvent): void {
    if (!this.bus) return;
    const snapshot = [...this.blacklist.values()];
    let p: Promise<void>;
    try {
      p = this.bus.publishBlock(ev, snapshot);
    } catch (err) {
      p = Promise.reject(err);
    }
    p.catch((err: Error) => {
      this.c.monitor_publish_errors++;
      this.log.error('guard: cannot publish a block event', { op: ev.op, addr: ev.entry.addr, error: err.message });
    });
  }

  private addNode(s: number, node: string): void {
    let l = this.nodesOf[s];
    if (l === null) this.nodesOf[s] = l = [];
    if (l.length < 64 && !l.includes(node)) l.push(node);
  }

  /** Slot of an address (created, thresholds resolved, on first sight); -1 when the table is full of busy addresses. */
  private slotOf(addr: string, now: number): number {
    let s = this.slots.get(addr);
    if (s !== undefined) return s;
    const w = addrWords(addr);
    if (!w) {
      this.c.monitor_bad_deltas++;
      return -1;
    }
    s = this.freeList.pop() ?? (this.next < this.state.capacity ? this.next++ : this.evict(now));
    if (s < 0) {
      this.c.monitor_table_full++;
      return -1;
    }
    const ti = this.thresholds.match(w.family, w.words) ?? 0;
    const allow = this.allowList.match(w.family, w.words) === true;
    this.state.init(s, ti, allow, now);
    if (this.blacklist.has(addr)) this.state.flags[s] |= FLAG_BLOCKED;
    this.slots.set(addr, s);
    this.addrOf[s] = addr;
    this.nodesOf[s] = null;
    this.evalAt[s] = now * 1000;
    return s;
  }

  /** Frees the least recently seen quiet slot among the next 64 (clock hand); -1 when none is quiet. */
  private evict(now: number): number {
    const st = this.state, cap = st.capacity;
    let best = -1, bestSeen = Infinity;
    for (let k = 0; k < 64; k++) {
      const s = this.hand;
      this.hand = (this.hand + 1) % cap;
      if ((st.flags[s] & FLAG_BLOCKED) !== 0 || st.get(s, A.CONC) > 0 || st.scoreAt(s, now) >= 1) continue;
      const seen = st.get(s, A.LAST_SEEN);
      if (seen < bestSeen) { bestSeen = seen; best = s; }
    }
    if (best < 0) return -1;
    this.slots.delete(this.addrOf[best]);
    this.c.monitor_evicted++;
    return best;
  }
}

function num(x: unknown): number {
  const n = Number(x);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

/** Words of a canonical address text as the sensor sends it (dotted quad fast, IPv6 through ip-address). */
export function addrWords(addr: string): { family: 4 | 6; words: [number, number, number, number] } | null {
  if (typeof addr !== 'string') return null;
  if (!addr.includes(':')) {
    const parts = addr.split('.');
    if (parts.length !== 4) return null;
    let a = 0;
    for (const x of parts) {
      if (!/^\d{1,3}$/.test(x)) return null;
      const v = Number(x);
      if (v > 255) return null;
      a = (a << 8) | v;
    }
    return { family: 4, words: [0, 0, 0, a | 0] };
  }
  const p = parsePrefix(addr);
  if (!p || p.len !== 128) return null;
  return { family: 6, words: p.words };
}

/** True when the exact address `addr` lies inside one of `prefixes`. */
export function inAny(prefixes: Prefix[], addr: string): boolean {
  const w = addrWords(addr);
  return !!w && prefixes.some((p) => contains(p, w.family, w.words));
}

export type { GuardAlert };
