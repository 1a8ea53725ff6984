// The guard bus over Redis Streams (DESIGN.md "guard/"; the interface is
// src/guard/bus.ts). Control plane only: a node calls publishDeltas once per
// flush interval, the monitor calls publishBlock once per decision.
//
// Keys (prefix default `portcullis:guard`):
//   <prefix>:deltas    stream, node -> monitor. One entry per DeltaBatch,
//                      field `b` = the batch as JSON. XADD MAXLEN ~ bound.
//   <prefix>:blocks    stream, monitor -> nodes. One entry per BlockEvent,
//                      field `e` = the event as JSON. XADD MAXLEN ~ bound.
//   <prefix>:snapshot  hash {id, entries}: the blacklist as JSON and the id of
//                      the blocks-stream entry it results from. Written in the
//                      same Lua script as that XADD, so the pair is atomic:
//                      "snapshot, then the stream strictly after `id`" is the
//                      whole history, nothing missed and nothing applied twice.
//                      It is rewritten with every `snapshotEvery`th event only
//                      (default 64): rewriting a large blacklist per event
//                      would cost every block its propagation time, and a
//                      reader folds the few events after `id` into it anyway.
//
// Node side (roles 'node' and 'both'): a dedicated connection does a blocking
// XREAD on the blocks stream. On start it loads the snapshot and folds the
// events after it, silently (the caller reads the result with loadSnapshot()
// after start()); on every reconnect it does the same again and delivers the
// difference from what it had (block for new or changed entries, unblock for
// vanished ones) through onBlock, then reads the stream after the last id
// folded. The bus keeps this mirror of the blacklist, so when Redis comes back
// empty (restarted without persistence: no snapshot key) the node keeps its
// last state instead of unblocking everything.
// Deltas go through one ordered queue: while Redis is down they wait there
// (bounded by `maxBuffered` delta rows; past the bound the queued batches are
// merged per address, which keeps every count, and only then are the
// smallest rows dropped, counted), and are sent in order on reconnect.
//
// Monitor side (role 'monitor', or any role once onDeltas is called; the
// reader starts with the first handler, as an entry consumed with no handler
// would be lost): the deltas stream is read through a consumer
// group (XREADGROUP ... NOACK, group `monitor`). The group's last-delivered id
// lives in Redis, so a restarted monitor neither counts again what it (or its
// predecessor) already consumed nor misses what nodes sent while it was away.
// The group is created at id 0 (a first monitor counts what is already in the
// bounded stream); `maxDeltaAgeMs` > 0 skips entries that sat in the stream
// longer than that (a monitor back after a long absence), counted as stale.
// One monitor per prefix: two consumers in one group would split the counts.
// publishBlock while Redis is down queues the event (bounded) and resolves;
// the queue is flushed in one atomic script on reconnect, and when Redis came
// back empty the monitor writes its last snapshot back.
//
// Delivery is at least once across a connection drop in the middle of a write
// (the XADD may have landed before the reply was lost); the monitor sees a
// repeated (node, seq). Reconnects use ioredis's retryStrategy with an
// exponential backoff and a cap. ioredis's own offline queue and command
// resend are off: this file owns buffering, so it can bound and count it.

import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { Redis } from 'ioredis';
import type { AttemptDelta, BlockEntry, BlockEvent, DeltaBatch, GuardBus } from './bus.js';

/** The bus's counters (one list: stats(), /metrics and the docs derive from it). */
export const REDIS_BUS_COUNTERS = [
  ['bus_deltas_published', 'delta batches written to the deltas stream (node)'],
  ['bus_deltas_buffered', 'delta batches that had to wait for Redis (queued while disconnected)'],
  ['bus_deltas_merged', 'queued delta batches folded into another one because the buffer was full (counts kept)'],
  ['bus_deltas_dropped', 'delta rows (one address of one batch) lost: buffer full after merging, or still queued at close'],
  ['bus_deltas_received', 'delta batches delivered to onDeltas (monitor)'],
  ['bus_deltas_stale', 'delta batches skipped because they sat in the stream longer than maxDeltaAgeMs (monitor)'],
  ['bus_bad_deltas', 'deltas-stream entries that are not a valid DeltaBatch (skipped)'],
  ['bus_blocks_published', 'block events written to the blocks stream with their snapshot (monitor)'],
  ['bus_blocks_queued', 'block events published while Redis was down, held for the reconnect (monitor)'],
  ['bus_blocks_dropped', 'queued block events lost because the queue was full (the snapshot still carries their result)'],
  ['bus_blocks_received', 'block events read from the blocks stream and delivered to onBlock (node)'],
  ['bus_blocks_resynced', 'block/unblock events synthesised from a snapshot after a reconnect (node)'],
  ['bus_bad_blocks', 'blocks-stream entries that are not a valid BlockEvent (skipped)'],
  ['bus_bad_snapshots', 'snapshot reads whose content was not valid (the last state was kept)'],
  ['bus_snapshot_missing', 'resyncs that found no snapshot key (Redis restarted empty): the last state was kept'],
  ['bus_snapshot_restored', 'times the monitor wrote its last snapshot back into an empty Redis'],
  ['bus_resyncs', 'snapshot loads (start and every reconnect of the blocks reader)'],
  ['bus_reconnects', 'reconnections of the command connection after a loss'],
  ['bus_reconnect_attempts', 'connection attempts scheduled by the backoff (all connections)'],
  ['bus_reconnect_delay_ms', 'gauge: the last backoff delay chosen'],
  ['bus_errors', 'connection errors and failed commands'],
  ['bus_handler_errors', 'exceptions thrown by onDeltas/onBlock handlers (caught)'],
  ['bus_buffered_rows', 'gauge: delta rows waiting in the queue'],
  ['bus_connected', 'gauge: 1 when every connection of this bus is ready, else 0'],
] as const;

export type RedisBusCounter = (typeof REDIS_BUS_COUNTERS)[number][0];

export interface RedisBusOptions {
  /**
   * redis://[user:pass@]host:port[/db], rediss://…, or unix:///path/to/redis.sock[?db=N]
   * (redis-py's form). A Unix socket is a file, not scoped to a network
   * namespace: nodes in separate namespaces reach one Redis through it.
   */
  url: string;
  /** This node's name: the consumer name in the monitor's group, the connection name. */
  node: string;
  /** Key prefix, default 'portcullis:guard'. */
  prefix?: string;
  /**
   * 'node' (default) and 'both' keep a blocks reader (mirror, onBlock) from start(); 'monitor' only when
   * onBlock is called. The deltas reader starts with the first onDeltas handler whatever the role.
   */
  role?: 'node' | 'monitor' | 'both';
  /** Delta rows (one address of one batch) kept while Redis is down, default 100000. */
  maxBuffered?: number;
  /** Block events kept while Redis is down (monitor), default 10000. */
  maxQueuedBlocks?: number;
  /** Approximate bound of the deltas stream (XADD MAXLEN ~), default 10000 entries. */
  deltasMaxLen?: number;
  /** Approximate bound of the blocks stream, default 10000 entries. */
  blocksMaxLen?: number;
  /**
   * Monitor: store the whole snapshot with every Nth event (default 64; 1 =
   * every event). Readers load it and fold the events after its id, so a
   * stale snapshot costs them nothing in correctness, while rewriting a large
   * blacklist per event would cost every block its propagation time.
   * At most blocksMaxLen / 4, so the stream always still holds the tail.
   */
  snapshotEvery?: number;
  /** Consumer group of the monitor on the deltas stream, default 'monitor'. */
  group?: string;
  /** Monitor: skip deltas older than this in the stream (ms, by entry id); 0 = count everything (default). */
  maxDeltaAgeMs?: number;
  /** First backoff delay, ms (default 100); doubles per failed attempt up to reconnectMaxMs (default 5000). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** How long start() waits for the first connection and snapshot before going on degraded (ms, default 3000). */
  startTimeoutMs?: number;
  /** BLOCK argument of the stream reads, ms (default 1000): bounds how long a silently dead socket goes unnoticed. */
  blockMs?: number;
  /** TCP connect timeout, ms (default 3000). */
  connectTimeoutMs?: number;
}

const DEFAULTS = {
  prefix: 'portcullis:guard',
  role: 'node' as 'node' | 'monitor' | 'both',
  maxBuffered: 100_000,
  maxQueuedBlocks: 10_000,
  deltasMaxLen: 10_000,
  blocksMaxLen: 10_000,
  snapshotEvery: 64,
  group: 'monitor',
  maxDeltaAgeMs: 0,
  reconnectMinMs: 100,
  reconnectMaxMs: 5000,
  startTimeoutMs: 3000,
  blockMs: 1000,
  connectTimeoutMs: 3000,
};

// KEYS[1] blocks stream, KEYS[2] snapshot hash; ARGV[1] MAXLEN, ARGV[2]
// snapshot JSON or '' (not this time), ARGV[3..] events in order. One script
// = one atomic step: a snapshot is never stored without the id of the event
// it results from, nor that event without the snapshot.
const PUBLISH_LUA = `
local id = false
for i = 3, #ARGV do
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
if id and ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'id', id, 'entries', ARGV[2]) end
return id`;

// Writes the snapshot back after Redis lost it (restart without persistence),
// marked with the newest id in the blocks stream so that readers continue
// after it. Does nothing when a snapshot exists.
const RESTORE_LUA = `
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
redis.call('HSET', KEYS[2], 'id', id, 'entries', ARGV[1])
return 1`;

interface QueuedBatch {
  json: string;
  rows: number;
}

type Conn = Redis;

const MAX_NAME = 256;
const MAX_ROWS_PER_BATCH = 1_000_000;
const MAX_NODES_PER_ENTRY = 4096;

function finiteNonNeg(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0;
}

/** "198.18.7.9", "198.18.7.0/24", "fd00::1", "fd00::/8". */
export function isAddrOrPrefix(s: unknown): s is string {
  if (typeof s !== 'string' || s.length === 0 || s.length > 64) return false;
  const slash = s.indexOf('/');
  if (slash < 0) return isIP(s) !== 0;
  const fam = isIP(s.slice(0, slash));
  const len = s.slice(slash + 1);
  if (fam === 0 || !/^\d{1,3}$/.test(len)) return false;
  return Number(len) <= (fam === 4 ? 32 : 128);
}

/** A DeltaBatch read from the stream, checked field by field (anyone with access to Redis can XADD). */
export function parseDeltaBatch(json: unknown): DeltaBatch | null {
  if (typeof json !== 'string') return null;
  let v: unknown;
  try { v = JSON.parse(json); } catch { return null; }
  if (typeof v !== 'object' || v === null) return null;
  const b = v as Record<string, unknown>;
  if (typeof b.node !== 'string' || b.node.length === 0 || b.node.length > MAX_NAME) return null;
  if (!finiteNonNeg(b.seq) || !finiteNonNeg(b.at) || !Array.isArray(b.deltas) || b.deltas.length > MAX_ROWS_PER_BATCH) return null;
  const deltas: AttemptDelta[] = new Array(b.deltas.length);
  for (let i = 0; i < b.deltas.length; i++) {
    const d = b.deltas[i] as Record<string, unknown> | null;
    if (typeof d !== 'object' || d === null || !isAddrOrPrefix(d.addr)) return null;
    if (!finiteNonNeg(d.attempts) || !finiteNonNeg(d.suspicious) || !finiteNonNeg(d.completed) || !finiteNonNeg(d.closed)) return null;
    deltas[i] = { addr: d.addr, attempts: d.attempts, suspicious: d.suspicious, completed: d.completed, closed: d.closed };
  }
  return { node: b.node, seq: b.seq, at: b.at, deltas };
}

export function parseBlockEntry(v: unknown): BlockEntry | null {
  if (typeof v !== 'object' || v === null) return null;
  const e = v as Record<string, unknown>;
  if (!isAddrOrPrefix(e.addr) || !finiteNonNeg(e.until) || typeof e.rule !== 'string' || e.rule.length > MAX_NAME) return null;
  if (typeof e.score !== 'number' || !Number.isFinite(e.score) || !finiteNonNeg(e.offences) || !finiteNonNeg(e.at)) return null;
  if (!Array.isArray(e.nodes) || e.nodes.length > MAX_NODES_PER_ENTRY) return null;
  for (const n of e.nodes) if (typeof n !== 'string' || n.length > MAX_NAME) return null;
  return { addr: e.addr, until: e.until, rule: e.rule, score: e.score, nodes: (e.nodes as string[]).slice(), offences: e.offences, at: e.at };
}

export function parseBlockEvent(json: unknown): BlockEvent | null {
  if (typeof json !== 'string') return null;
  let v: unknown;
  try { v = JSON.parse(json); } catch { return null; }
  if (typeof v !== 'object' || v === null) return null;
  const o = v as Record<string, unknown>;
  if (o.op !== 'block' && o.op !== 'unblock') return null;
  const entry = parseBlockEntry(o.entry);
  return entry ? { op: o.op, entry } : null;
}

export function parseSnapshot(json: unknown): BlockEntry[] | null {
  if (typeof json !== 'string') return null;
  let v: unknown;
  try { v = JSON.parse(json); } catch { return null; }
  if (!Array.isArray(v)) return null;
  const out: BlockEntry[] = [];
  for (const x of v) {
    const e = parseBlockEntry(x);
    if (!e) return null;
    out.push(e);
  }
  return out;
}

/** Stream entries out of an XREAD / XREADGROUP reply for one stream: [[key, [[id, [f, v, …]], …]]]. Malformed parts are skipped. */
function streamEntries(reply: unknown): [string, unknown[]][] {
  if (!Array.isArray(reply) || reply.length === 0) return [];
  const first = reply[0];
  if (!Array.isArray(first) || !Array.isArray(first[1])) return [];
  const out: [string, unknown[]][] = [];
  for (const it of first[1] as unknown[]) {
    if (Array.isArray(it) && typeof it[0] === 'string') out.push([it[0], Array.isArray(it[1]) ? it[1] : []]);
  }
  return out;
}

function field(fields: unknown[], name: string): unknown {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return undefined;
}

function idMs(id: string): number {
  const dash = id.indexOf('-');
  return Number(dash < 0 ? id : id.slice(0, dash));
}

function errMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class RedisBus implements GuardBus {
  readonly kind = 'redis' as const;
  readonly keys: { deltas: string; blocks: string; snapshot: string };
  private readonly o: typeof DEFAULTS & { url: string; node: string; role: 'node' | 'monitor' | 'both' };
  private readonly c: Record<RedisBusCounter, number>;
  private readonly cmd: Conn;
  private blocksConn: Conn | null = null;
  private deltasConn: Conn | null = null;
  private readonly deltaFns: ((b: DeltaBatch) => void)[] = [];
  private readonly blockFns: ((e: BlockEvent) => void)[] = [];
  /** The blacklist as this node knows it: snapshot + events since. */
  private readonly mirror = new Map<string, BlockEntry>();
  private mirrorSynced = false;
  /** Id of the last blocks-stream entry applied (or of the snapshot loaded). */
  private lastBlockId = '0-0';
  private blocksNeedSync = true;
  private groupReady = false;
  /** Ordered outbound delta batches; the first `inflight` are being written. */
  private readonly queue: QueuedBatch[] = [];
  private inflight = 0;
  private pumping = false;
  private pendingBlocks: string[] = [];
  /** The newest snapshot given to publishBlock, serialised only when written (a newer state is harmless: events set state). */
  private lastSnapshot: BlockEntry[] | null = null;
  /** Events since the snapshot was last stored; starts full so a new monitor stores one with its first event. */
  private sinceSnapshot = Number.MAX_SAFE_INTEGER;
  private flushingBlocks = false;
  private started = false;
  /** After start(): snapshot differences found on a resync are delivered as events. */
  private live = false;
  private closed = false;
  private cmdWasReady = false;
  private readonly wakers = new Set<() => void>();
  private readonly loops: Promise<void>[] = [];
  private readonly shaPublish = createHash('sha1').update(PUBLISH_LUA).digest('hex');
  private readonly shaRestore = createHash('sha1').update(RESTORE_LUA).digest('hex');
  private syncedOnce: (() => void) | null = null;

  constructor(opts: RedisBusOptions) {
    if (typeof opts.url !== 'string' || !/^(rediss?:\/\/|unix:\/\/\/)/.test(opts.url)) {
      throw new Error(`guard.bus: expected a redis://host:port or rediss://host:port URL (or unix:///path/to/redis.sock), got ${JSON.stringify(opts.url)}`);
    }
    if (typeof opts.node !== 'string' || opts.node.length === 0 || opts.node.length > MAX_NAME) {
      throw new Error('guard.node: expected a non-empty node name (at most 256 characters)');
    }
    const o = { ...DEFAULTS, ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) } as RedisBus['o'];
    for (const k of ['maxBuffered', 'maxQueuedBlocks', 'deltasMaxLen', 'blocksMaxLen', 'snapshotEvery', 'reconnectMinMs', 'reconnectMaxMs', 'blockMs'] as const) {
      if (!Number.isInteger(o[k]) || o[k] <= 0) throw new Error(`RedisBus: ${k} must be a positive whole number, got ${o[k]}`);
    }
    if (o.snapshotEvery * 4 > o.blocksMaxLen) throw new Error(`RedisBus: snapshotEvery (${o.snapshotEvery}) must be at most blocksMaxLen / 4 (${o.blocksMaxLen / 4})`);
    if (o.reconnectMaxMs < o.reconnectMinMs) throw new Error('RedisBus: reconnectMaxMs must be at least reconnectMinMs');
    this.o = o;
    this.keys = { deltas: `${o.prefix}:deltas`, blocks: `${o.prefix}:blocks`, snapshot: `${o.prefix}:snapshot` };
    this.c = Object.fromEntries(REDIS_BUS_COUNTERS.map(([n]) => [n, 0])) as Record<RedisBusCounter, number>;
    this.cmd = this.connection('cmd');
    this.cmd.on('ready', () => {
      if (this.cmdWasReady) this.c.bus_reconnects++;
      this.cmdWasReady = true;
      void this.pump();
      void this.flushBlocks();
    });
  }

  private connection(purpose: string): Conn {
    // unix:///path[?db=N] -> '/path[?db=N]', which ioredis reads as a socket path (with its query options).
    const target = this.o.url.startsWith('unix://') ? this.o.url.slice('unix://'.length) : this.o.url;
    const conn = new Redis(target, {
      lazyConnect: true,
      // This bus buffers and counts itself; ioredis must fail fast instead of
      // queueing silently or replaying a stale blocking read after a reconnect.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      // RESP2: stream replies have one shape whatever the server negotiates.
      protocol: 2,
      connectTimeout: this.o.connectTimeoutMs,
      // A socket that goes silent (peer gone without a reset, a black hole)
      // is declared dead this long after a command went unanswered; a
      // blocking read answers within blockMs, so this never fires on it.
      socketTimeout: this.o.blockMs + 2000,
      connectionName: `portcullis-guard-${purpose}-${this.o.node}`.replace(/[^\x21-\x7e]/g, '_'),
      retryStrategy: (times: number) => {
        if (this.closed) return null;
        const delay = Math.min(this.o.reconnectMinMs * 2 ** Math.min(times - 1, 30), this.o.reconnectMaxMs);
        // Up to a tenth less, so nodes cut off together do not return in lockstep (and the cap holds).
        const d = Math.max(1, Math.round(delay * (0.9 + Math.random() * 0.1)));
        this.c.bus_reconnect_attempts++;
        this.c.bus_reconnect_delay_ms = d;
        return d;
      },
    });
    conn.on('error', () => { this.c.bus_errors++; });
    return conn;
  }

  private wantsBlocks(): boolean {
    return this.o.role !== 'monitor' || this.blockFns.length > 0;
  }
  /** Only once a handler exists: a delivery through the group with no handler would be lost (NOACK). */
  private wantsDeltas(): boolean {
    return this.deltaFns.length > 0;
  }

  // ---- node side: deltas out -------------------------------------------

  publishDeltas(batch: DeltaBatch): void {
    try {
      const rows = Array.isArray(batch.deltas) ? batch.deltas.length : 0;
      if (this.closed) {
        this.c.bus_deltas_dropped += rows;
        return;
      }
      // Serialised now: the caller may reuse its objects after the call.
      this.queue.push({ json: JSON.stringify(batch), rows });
      this.c.bus_buffered_rows += rows;
      if (this.cmd.status !== 'ready') this.c.bus_deltas_buffered++;
      if (this.c.bus_buffered_rows > this.o.maxBuffered) this.compact();
      void this.pump();
    } catch {
      this.c.bus_errors++;
    }
  }

  /**
   * The queue is over its bound: fold every queued batch (not those being
   * written) into one per-address sum, which keeps every count; if the
   * distinct addresses alone exceed the bound, keep the busiest (attack
   * sources) and count the rest as dropped. The merged batch carries the
   * newest batch's seq, so a monitor counting seq gaps sees the folded ones as
   * a gap: bus_deltas_merged on the node says they were merged, not lost.
   */
  private compact(): void {
    const from = this.inflight;
    const n = this.queue.length - from;
    if (n <= 0) return;
    const sums = new Map<string, AttemptDelta>();
    let last: DeltaBatch | null = null;
    for (let i = from; i < this.queue.length; i++) {
      const b = JSON.parse(this.queue[i].json) as DeltaBatch;
      last = b;
      for (const d of b.deltas) {
        const s = sums.get(d.addr);
        if (s) {
          s.attempts += d.attempts; s.suspicious += d.suspicious; s.completed += d.completed; s.closed += d.closed;
        } else {
          sums.set(d.addr, { addr: d.addr, attempts: d.attempts, suspicious: d.suspicious, completed: d.completed, closed: d.closed });
        }
      }
    }
    let deltas = [...sums.values()];
    const room = Math.max(0, this.o.maxBuffered - this.queuedRows(0, from));
    if (deltas.length > room) {
      deltas.sort((a, b) => (b.attempts + b.suspicious) - (a.attempts + a.suspicious));
      this.c.bus_deltas_dropped += deltas.length - room;
      deltas = deltas.slice(0, room);
    }
    if (deltas.length === 0) {
      this.queue.splice(from, n);
    } else {
      const merged: DeltaBatch = { node: last!.node, seq: last!.seq, at: last!.at, deltas };
      this.queue.splice(from, n, { json: JSON.stringify(merged), rows: deltas.length });
    }
    this.c.bus_deltas_merged += n - 1;
    this.c.bus_buffered_rows = this.queuedRows(0, this.queue.length);
  }

  private queuedRows(from: number, to: number): number {
    let r = 0;
    for (let i = from; i < to; i++) r += this.queue[i].rows;
    return r;
  }

  /** Writes queued batches in order, pipelined; stops at the first failure and waits for the next 'ready'. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length > 0 && this.cmd.status === 'ready') {
        const n = Math.min(this.queue.length, 256);
        this.inflight = n;
        const p = this.cmd.pipeline();
        for (let i = 0; i < n; i++) p.xadd(this.keys.deltas, 'MAXLEN', '~', this.o.deltasMaxLen, '*', 'b', this.queue[i].json);
        let res: [Error | null, unknown][] | null = null;
        try { res = await p.exec(); } catch { res = null; }
        this.inflight = 0;
        let ok = 0;
        if (res) for (const [err] of res) { if (err) break; ok++; }
        if (ok > 0) {
          this.c.bus_buffered_rows -= this.queuedRows(0, ok);
          this.queue.splice(0, ok);
          this.c.bus_deltas_published += ok;
        }
        if (ok < n) {
          this.c.bus_errors++;
          break;
        }
      }
    } finally {
      this.inflight = 0;
      this.pumping = false;
    }
  }

  // ---- monitor side: deltas in ------------------------------------------

  onDeltas(fn: (batch: DeltaBatch) => void): void {
    this.deltaFns.push(fn);
    if (this.started && !this.closed && !this.deltasConn) this.startDeltasReader();
  }

  private startDeltasReader(): void {
    this.deltasConn = this.connection('deltas');
    this.deltasConn.on('close', () => { this.groupReady = false; });
    this.deltasConn.connect().catch(() => { /* the retry strategy takes over */ });
    this.loops.push(this.deltasLoop(this.deltasConn));
  }

  private async deltasLoop(conn: Conn): Promise<void> {
    while (!this.closed) {
      if (conn.status !== 'ready') { await this.waitReady(conn); continue; }
      if (!this.groupReady) {
        try {
          // Id 0: deltas nodes sent before the group existed (first monitor, or
          // Redis restarted empty) are counted; the group remembers the rest.
          await conn.call('XGROUP', 'CREATE', this.keys.deltas, this.o.group, '0', 'MKSTREAM');
        } catch (e) {
          if (!/BUSYGROUP/.test(errMessage(e))) { this.c.bus_errors++; await this.pause(conn); continue; }
        }
        this.groupReady = true;
      }
      let reply: unknown;
      try {
        reply = await conn.call('XREADGROUP', 'GROUP', this.o.group, this.o.node, 'COUNT', 512, 'BLOCK', this.o.blockMs,
          'NOACK', 'STREAMS', this.keys.deltas, '>');
      } catch (e) {
        if (this.closed) break;
        this.c.bus_errors++;
        if (/NOGROUP/.test(errMessage(e))) this.groupReady = false;
        await this.pause(conn);
        continue;
      }
      const now = Date.now();
      for (const [id, fields] of streamEntries(reply)) {
        const batch = parseDeltaBatch(field(fields, 'b'));
        if (!batch) { this.c.bus_bad_deltas++; continue; }
        if (this.o.maxDeltaAgeMs > 0 && now - idMs(id) > this.o.maxDeltaAgeMs) { this.c.bus_deltas_stale++; continue; }
        this.c.bus_deltas_received++;
        for (const fn of this.deltaFns) {
          try { fn(batch); } catch { this.c.bus_handler_errors++; }
        }
      }
    }
  }

  // ---- monitor side: blocks out -----------------------------------------

  async publishBlock(event: BlockEvent, snapshot: BlockEntry[]): Promise<void> {
    if (this.closed) throw new Error('RedisBus: publishBlock after close()');
    const ev = JSON.stringify(event);
    this.lastSnapshot = snapshot;
    if (this.pendingBlocks.length > 0 || this.flushingBlocks || this.cmd.status !== 'ready') {
      this.queueBlock(ev);
      void this.flushBlocks();
      return;
    }
    // Decided before the await: several publishes may be in flight at once.
    const withSnap = this.sinceSnapshot + 1 >= this.o.snapshotEvery;
    this.sinceSnapshot = withSnap ? 0 : this.sinceSnapshot + 1;
    try {
      await this.evalScript(this.shaPublish, PUBLISH_LUA, [this.keys.blocks, this.keys.snapshot],
        [this.o.blocksMaxLen, withSnap ? JSON.stringify(snapshot) : '', ev]);
      this.c.bus_blocks_published++;
    } catch {
      // The script may or may not have run (reply lost): write it again on the
      // reconnect; a repeated block of the same entry is harmless to a node.
      this.c.bus_errors++;
      this.queueBlock(ev);
      void this.flushBlocks();
    }
  }

  private queueBlock(ev: string): void {
    this.c.bus_blocks_queued++;
    this.pendingBlocks.push(ev);
    if (this.pendingBlocks.length > this.o.maxQueuedBlocks) {
      const over = this.pendingBlocks.length - this.o.maxQueuedBlocks;
      this.pendingBlocks.splice(0, over);
      this.c.bus_blocks_dropped += over;
    }
  }

  /** On reconnect: queued events and the newest snapshot in one atomic script; or the snapshot alone when Redis lost it. */
  private async flushBlocks(): Promise<void> {
    if (this.flushingBlocks || this.closed || this.cmd.status !== 'ready' || this.lastSnapshot === null) return;
    this.flushingBlocks = true;
    let failed = false;
    try {
      while (this.pendingBlocks.length > 0 && this.cmd.status === 'ready') {
        const evs = this.pendingBlocks;
        this.pendingBlocks = [];
        try {
          await this.evalScript(this.shaPublish, PUBLISH_LUA, [this.keys.blocks, this.keys.snapshot],
            [this.o.blocksMaxLen, JSON.stringify(this.lastSnapshot), ...evs]);
          this.sinceSnapshot = 0;
          this.c.bus_blocks_published += evs.length;
        } catch {
          this.c.bus_errors++;
          this.pendingBlocks = evs.concat(this.pendingBlocks);
          failed = true;
          return;
        }
      }
      if (this.cmd.status === 'ready' && this.pendingBlocks.length === 0) {
        const r = await this.evalScript(this.shaRestore, RESTORE_LUA, [this.keys.blocks, this.keys.snapshot], [JSON.stringify(this.lastSnapshot)]);
        if (r === 1) this.c.bus_snapshot_restored++;
      }
    } catch {
      this.c.bus_errors++;
      failed = true;
    } finally {
      this.flushingBlocks = false;
      // Events published while the restore step ran wait here: go again,
      // unless this round failed (the next 'ready' retries, no busy loop).
      if (!failed && this.pendingBlocks.length > 0) void this.flushBlocks();
    }
  }

  private async evalScript(sha: string, lua: string, keys: string[], args: (string | number)[]): Promise<unknown> {
    try {
      return await this.cmd.call('EVALSHA', sha, keys.length, ...keys, ...args);
    } catch (e) {
      if (!/NOSCRIPT/.test(errMessage(e))) throw e;
      return await this.cmd.call('EVAL', lua, keys.length, ...keys, ...args);
    }
  }

  // ---- node side: blocks in ----------------------------------------------

  onBlock(fn: (event: BlockEvent) => void): void {
    this.blockFns.push(fn);
    if (this.started && !this.closed && !this.blocksConn) this.startBlocksReader();
  }

  async loadSnapshot(): Promise<BlockEntry[]> {
    if (this.mirrorSynced || this.cmd.status !== 'ready') return [...this.mirror.values()];
    // Not a node (a restarting monitor reloading its blacklist): read it now.
    try {
      const st = await this.readState(this.cmd);
      return st.kind === 'ok' ? [...st.state.values()] : [];
    } catch {
      this.c.bus_errors++;
      return [...this.mirror.values()];
    }
  }

  /**
   * The blacklist as stored: the snapshot, then the events after its id
   * folded in (the snapshot is only rewritten every `snapshotEvery` events).
   * `id` is the last entry folded, where the stream read continues.
   */
  private async readState(conn: Conn): Promise<{ kind: 'missing' } | { kind: 'bad' } | { kind: 'ok'; id: string; state: Map<string, BlockEntry> }> {
    let r: [unknown, unknown];
    try {
      r = (await conn.call('HMGET', this.keys.snapshot, 'id', 'entries')) as [unknown, unknown];
    } catch (e) {
      if (!/WRONGTYPE/.test(errMessage(e))) throw e;
      r = [0, 0]; // someone replaced the hash with another type: a bad snapshot
    }
    const [id, entries] = r;
    if (id === null && entries === null) return { kind: 'missing' };
    const snap = parseSnapshot(entries);
    if (!snap || typeof id !== 'string' || !/^\d+-\d+$/.test(id)) {
      this.c.bus_bad_snapshots++;
      return { kind: 'bad' };
    }
    const state = new Map<string, BlockEntry>();
    for (const e of snap) state.set(e.addr, e);
    let last = id;
    // Bounded: a flood of entries arriving meanwhile is left to the stream
    // read, which delivers them as ordinary events.
    for (let page = 0, limit = Math.ceil((2 * this.o.blocksMaxLen) / 512) + 1; page < limit; page++) {
      const rows = await conn.call('XRANGE', this.keys.blocks, `(${last}`, '+', 'COUNT', 512);
      const list = Array.isArray(rows) ? rows : [];
      for (const it of list) {
        if (!Array.isArray(it) || typeof it[0] !== 'string') continue;
        last = it[0];
        const ev = parseBlockEvent(field(Array.isArray(it[1]) ? it[1] : [], 'e'));
        if (!ev) { this.c.bus_bad_blocks++; continue; }
        if (ev.op === 'block') state.set(ev.entry.addr, ev.entry);
        else state.delete(ev.entry.addr);
      }
      if (list.length < 512) break;
    }
    return { kind: 'ok', id: last, state };
  }

  private startBlocksReader(): void {
    this.blocksConn = this.connection('blocks');
    this.blocksConn.on('close', () => { this.blocksNeedSync = true; });
    this.blocksConn.connect().catch(() => { /* the retry strategy takes over */ });
    this.loops.push(this.blocksLoop(this.blocksConn));
  }

  private async blocksLoop(conn: Conn): Promise<void> {
    while (!this.closed) {
      if (conn.status !== 'ready') { await this.waitReady(conn); continue; }
      if (this.blocksNeedSync) {
        this.blocksNeedSync = false;
        try {
          await this.resync(conn);
        } catch {
          if (this.closed) break;
          this.c.bus_errors++;
          this.blocksNeedSync = true;
          await this.pause(conn);
          continue;
        }
      }
      let reply: unknown;
      try {
        reply = await conn.call('XREAD', 'COUNT', 512, 'BLOCK', this.o.blockMs, 'STREAMS', this.keys.blocks, this.lastBlockId);
      } catch {
        if (this.closed) break;
        this.c.bus_errors++;
        await this.pause(conn);
        continue;
      }
      if (this.blocksNeedSync) continue; // the connection dropped and came back meanwhile: resync first
      for (const [id, fields] of streamEntries(reply)) {
        this.lastBlockId = id;
        const ev = parseBlockEvent(field(fields, 'e'));
        if (!ev) { this.c.bus_bad_blocks++; continue; }
        this.c.bus_blocks_received++;
        this.apply(ev);
      }
    }
  }

  /** Snapshot, then the stream after its id: deliver the difference from what this node had. */
  private async resync(conn: Conn): Promise<void> {
    const st = await this.readState(conn);
    this.c.bus_resyncs++;
    if (st.kind !== 'ok') {
      // No snapshot (nothing was ever published, or Redis restarted empty) or
      // a bad one. Keep the last state (unblocking everything would open the
      // gates in the middle of an attack) and go on after the last id seen:
      // entries of a recreated stream carry later, time-based ids.
      if (st.kind === 'missing' && this.mirror.size > 0) this.c.bus_snapshot_missing++;
      this.markSynced();
      return;
    }
    const next = st.state;
    const diff: BlockEvent[] = [];
    if (this.live) {
      for (const [addr, e] of next) {
        const had = this.mirror.get(addr);
        if (!had || JSON.stringify(had) !== JSON.stringify(e)) diff.push({ op: 'block', entry: e });
      }
      for (const [addr, e] of this.mirror) if (!next.has(addr)) diff.push({ op: 'unblock', entry: e });
    }
    this.mirror.clear();
    for (const [addr, e] of next) this.mirror.set(addr, e);
    this.lastBlockId = st.id;
    for (const ev of diff) {
      this.c.bus_blocks_resynced++;
      this.deliver(ev);
    }
    this.markSynced();
  }

  private markSynced(): void {
    this.mirrorSynced = true;
    if (this.syncedOnce) { const f = this.syncedOnce; this.syncedOnce = null; f(); }
  }

  private apply(ev: BlockEvent): void {
    if (ev.op === 'block') this.mirror.set(ev.entry.addr, ev.entry);
    else this.mirror.delete(ev.entry.addr);
    this.deliver(ev);
  }

  private deliver(ev: BlockEvent): void {
    for (const fn of this.blockFns) {
      try { fn(ev); } catch { this.c.bus_handler_errors++; }
    }
  }

  // ---- life cycle ---------------------------------------------------------

  async start(): Promise<void> {
    if (this.started) return;
    if (this.closed) throw new Error('RedisBus: start() after close()');
    this.started = true;
    this.cmd.connect().catch(() => { /* the retry strategy takes over; start() goes on degraded */ });
    const waits: Promise<void>[] = [this.waitReady(this.cmd)];
    if (this.wantsBlocks()) {
      waits.push(new Promise<void>((r) => { this.syncedOnce = r; }));
      this.startBlocksReader();
    }
    if (this.wantsDeltas()) {
      this.startDeltasReader();
      waits.push(this.waitReady(this.deltasConn!));
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(waits), new Promise<void>((r) => { timer = setTimeout(r, this.o.startTimeoutMs); })]);
    clearTimeout(timer);
    this.live = true;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Last chance for queued deltas and block events while the connection is still up.
    const deadline = Date.now() + 1000;
    while ((this.queue.length > 0 || this.pendingBlocks.length > 0) && this.cmd.status === 'ready' && Date.now() < deadline) {
      if (this.pumping || this.flushingBlocks) await sleep(2);
      else if (this.queue.length > 0) await this.pump();
      else await this.flushBlocks();
    }
    this.closed = true;
    this.c.bus_deltas_dropped += this.queuedRows(0, this.queue.length);
    this.queue.length = 0;
    this.c.bus_buffered_rows = 0;
    for (const w of [...this.wakers]) w();
    if (this.syncedOnce) { const f = this.syncedOnce; this.syncedOnce = null; f(); }
    for (const conn of [this.cmd, this.blocksConn, this.deltasConn]) conn?.disconnect();
    await Promise.allSettled(this.loops);
  }

  stats(): Record<string, number> {
    const ready = (c: Conn | null) => c === null || c.status === 'ready';
    this.c.bus_connected = !this.closed && this.started && ready(this.cmd) && ready(this.blocksConn) && ready(this.deltasConn) ? 1 : 0;
    return { ...this.c };
  }

  private waitReady(conn: Conn): Promise<void> {
    if (conn.status === 'ready' || this.closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        conn.off('ready', done);
        this.wakers.delete(done);
        resolve();
      };
      conn.on('ready', done);
      this.wakers.add(done);
    });
  }

  /** After a failed read: wait a little (or for the reconnect) so a persistent error does not spin. */
  private async pause(conn: Conn): Promise<void> {
    if (this.closed) return;
    if (conn.status !== 'ready') return this.waitReady(conn);
    await sleep(this.o.reconnectMinMs);
  }
}
