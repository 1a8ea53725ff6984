// The bus between the guard's sensors (one per node, on the data path) and
// its monitor (DESIGN.md "guard/"). It carries two things:
//   - attempt deltas, node -> monitor: per originating address, what the
//     node's sensor counted since its last flush (batched: one message per
//     flush interval, never one per packet);
//   - block events, monitor -> every node: block / unblock of an address or
//     prefix, plus a snapshot of the whole blacklist so that a node that
//     starts or reconnects loads the snapshot, then the events after it, and
//     misses nothing.
// Two implementations: EmbeddedBus (in-process, the default: the monitor
// runs inside the appliance) and RedisBus (Redis Streams, for several nodes:
// src/guard/redis-bus.ts). Control plane only: nothing here runs per packet.

/** One node's counts for one originating address since that node's last flush. */
export interface AttemptDelta {
  /** Originating address, canonical text (ip-address's `correctForm()` / dotted quad). */
  addr: string;
  /** Connection attempts: TCP SYN without ACK, seen in a first fragment or an unfragmented packet. */
  attempts: number;
  /** Suspicious fragments: a first fragment too short to hold the TCP flags, or a TCP fragment at offset 1 (RFC 1858, RFC 3128). */
  suspicious: number;
  /** Handshakes that completed (the flow reached ESTABLISHED). */
  completed: number;
  /** Connections that ended (closed or expired), so the monitor can keep a concurrent count. */
  closed: number;
}

/** What a node sends every flush interval (nothing when it has nothing to say). */
export interface DeltaBatch {
  /** Node name (config `guard.node`, default the host name). */
  node: string;
  /** Per node, increasing by one per batch (lets the monitor count gaps). */
  seq: number;
  /** Wall-clock time of the flush, ms since the epoch. */
  at: number;
  deltas: AttemptDelta[];
}

/** One blacklist entry. */
export interface BlockEntry {
  /** Address or prefix ("198.18.7.9", "198.18.7.0/24", "fd00::1"). */
  addr: string;
  /** Expiry, ms since the epoch; 0 = until unblocked by hand. */
  until: number;
  /** The rule that blocked it ("rate", "total", "concurrent", "score", "manual"). */
  rule: string;
  /** Score at the time of the block (0 for manual blocks). */
  score: number;
  /** Nodes whose sensors saw the address. */
  nodes: string[];
  /** How many times this address has been blocked (escalation, like fail2ban's bantime.increment). */
  offences: number;
  /** When the block was decided, ms since the epoch. */
  at: number;
}

export interface BlockEvent {
  op: 'block' | 'unblock';
  entry: BlockEntry;
}

export interface GuardBus {
  readonly kind: 'embedded' | 'redis';
  /** Node side. Never throws; while the bus is down, batches are kept in a bounded buffer (oldest dropped, counted). */
  publishDeltas(batch: DeltaBatch): void;
  /** Monitor side: called for every delta batch from any node. */
  onDeltas(fn: (batch: DeltaBatch) => void): void;
  /** Monitor side: sends one event to every node and stores the blacklist snapshot that results from it. */
  publishBlock(event: BlockEvent, snapshot: BlockEntry[]): Promise<void>;
  /** Node side: called for every block event after start (and for those after the snapshot when reconnecting). */
  onBlock(fn: (event: BlockEvent) => void): void;
  /** Node side: the last stored snapshot ([] when there is none). */
  loadSnapshot(): Promise<BlockEntry[]>;
  start(): Promise<void>;
  close(): Promise<void>;
  /** Counters: published, received, dropped while down, reconnects, errors (names prefixed `bus_`). */
  stats(): Record<string, number>;
}

/** In-process bus: the monitor and the one sensor live in the same appliance. */
export class EmbeddedBus implements GuardBus {
  readonly kind = 'embedded' as const;
  private readonly deltaFns: ((b: DeltaBatch) => void)[] = [];
  private readonly blockFns: ((e: BlockEvent) => void)[] = [];
  private snapshot: BlockEntry[] = [];
  private readonly c = { bus_deltas_published: 0, bus_blocks_published: 0 };

  publishDeltas(batch: DeltaBatch): void {
    this.c.bus_deltas_published++;
    for (const fn of this.deltaFns) fn(batch);
  }
  onDeltas(fn: (batch: DeltaBatch) => void): void {
    this.deltaFns.push(fn);
  }
  async publishBlock(event: BlockEvent, snapshot: BlockEntry[]): Promise<void> {
    this.c.bus_blocks_published++;
    this.snapshot = snapshot.slice();
    for (const fn of this.blockFns) fn(event);
  }
  onBlock(fn: (event: BlockEvent) => void): void {
    this.blockFns.push(fn);
  }
  async loadSnapshot(): Promise<BlockEntry[]> {
    return this.snapshot.slice();
  }
  async start(): Promise<void> { /* nothing to connect */ }
  async close(): Promise<void> { /* nothing to close */ }
  stats(): Record<string, number> {
    return { ...this.c };
  }
}
