// Per-target connection limits and request queues for the workload
// distributor's proxied flows (DESIGN.md, lb). Pure bookkeeping: no sockets;
// the TLS terminator (lb/tls/terminator.ts) owns the connections and applies
// the actions this class decides.
//
// The model is HAProxy's (configuration.txt, "5.2 Server and default-server
// options" and "4.2 timeout queue"):
//   - maxconn: at most that many connections to a target at once (0 =
//     unlimited, as in HAProxy). A slot is held from admission until the
//     connection to the target closes (or fails to open).
//   - a connection that finds its target at maxconn is queued on that
//     target, FIFO, and leaves the queue when a slot frees (HAProxy's
//     per-server queue); or, if configured, is redispatched, sent to a backup
//     server, or rejected at once (the 'onFull' action).
//   - maxqueue: bound of a target's queue. HAProxy's "maxqueue 0" means
//     unlimited; here the queue is a hard bound fixed at construction
//     (memory is reserved up front, STYLE.md 5), so 0 means "no queue": the
//     at-maxconn event goes straight to the queue-full action. A connection
//     that finds the queue full gets the 'onQueueFull' action (HAProxy: "next
//     requests will be redispatched to other servers").
//   - timeout queue: a queued connection that waits longer than
//     queueTimeoutMs gets the 'onQueueTimeout' action (HAProxy answers 503;
//     the TCP equivalent is 'reject'). 0 = wait without limit.
//   - backup: HAProxy uses backup servers only when every active server is
//     down; here 'backup' is an action, taken on one of the three events, and
//     sends the flow to the first backup target with a free slot (HAProxy's
//     default without `option allbackups`).
//
// Layout: targets and queue nodes are structures of arrays (STYLE.md 5).
// Each target's queue is a doubly linked list through one node pool sized
// sum(maxqueue) at construction, so enqueue, dequeue and cancel (a client
// that leaves while queued) are O(1) and allocation-free. Deadlines in one
// target's queue are in FIFO order (same timeout, monotone clock), so one
// timer per target, armed for the head's deadline, serves the whole queue.

/** What to do with a connection on one of the events (numeric, STYLE.md 4). */
export const QueueAction = {
  /** Wait in the target's FIFO queue for a free slot (onFull only). */
  Queue: 0,
  /** Send to another target with a free slot (the next entries of the Maglev table). */
  Redispatch: 1,
  /** Send to the first backup target with a free slot. */
  Backup: 2,
  /** Close the client connection (a TCP RST for the TLS terminator). */
  Reject: 3,
} as const;
export type QueueAction = (typeof QueueAction)[keyof typeof QueueAction];

export type QueueActionName = 'queue' | 'redispatch' | 'backup' | 'reject';
const ACTION_BY_NAME: Record<QueueActionName, QueueAction> = {
  queue: QueueAction.Queue, redispatch: QueueAction.Redispatch, backup: QueueAction.Backup, reject: QueueAction.Reject,
};

/** A configured action name as a QueueAction; throws naming the key and the accepted values. */
export function parseQueueAction(what: string, name: unknown, allowQueue: boolean): QueueAction {
  const ok = allowQueue ? ['queue', 'redispatch', 'backup', 'reject'] : ['redispatch', 'backup', 'reject'];
  if (typeof name !== 'string' || !ok.includes(name)) {
    throw new RangeError(`queue: ${what} must be one of ${ok.map((s) => `'${s}'`).join(', ')}, got ${JSON.stringify(name)}`);
  }
  return ACTION_BY_NAME[name as QueueActionName];
}

/** Result of admit(): Admitted (a slot is held), Queued, or the action the caller must apply. */
export const Admission = {
  Admitted: -1,
  Queued: 0,
  Redispatch: QueueAction.Redispatch,
  Backup: QueueAction.Backup,
  Reject: QueueAction.Reject,
} as const;
export type Admission = (typeof Admission)[keyof typeof Admission];

/** Fixed shape, every field a number (STYLE.md 4, 8). */
export class QueueCounters {
  /** Connections put in a target's queue. */
  queued = 0;
  /** Queued connections given a slot when one freed. */
  dequeued = 0;
  /** Connections sent to another target (on any event). */
  redispatched = 0;
  /** Connections sent to a backup target (on any event). */
  toBackup = 0;
  /** Connections closed by a limit (the configured 'reject', or a redispatch/backup that found no free slot). */
  rejected = 0;
  /** Queued connections whose wait exceeded queueTimeoutMs. */
  queueTimeouts = 0;
  /** Connections that found their target's queue full (maxqueue). */
  queueFull = 0;
  /** Queued connections whose client left before a slot freed. */
  abandoned = 0;
}

export interface TargetLimit {
  /** Concurrent connections; 0 or absent = unlimited (HAProxy maxconn 0). */
  maxconn?: number;
  /** Queue bound; 0 = no queue. Default 1024 (HAProxy's 0 = unlimited is not offered: the queue is preallocated). */
  maxqueue?: number;
  /** Longest wait in the queue; 0 = no limit. Default 5000 (HAProxy falls back to timeout connect, 5 s here). */
  queueTimeoutMs?: number;
}

export interface QueueClock {
  /** Milliseconds, monotonic. */
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(handle: unknown): void;
}

/** performance.now and unref'd timers: a pending queue timer never keeps the process alive on its own. */
export const realClock: QueueClock = {
  now: () => performance.now(),
  setTimer: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimer: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

export interface TargetQueuesOptions<W> {
  /** One entry per target index. */
  limits: readonly TargetLimit[];
  /** When a target is at maxconn. Default Queue. */
  onFull?: QueueAction;
  /** When the target's queue is full. Default Redispatch (HAProxy maxqueue). */
  onQueueFull?: QueueAction;
  /** When a queued connection waited queueTimeoutMs. Default Reject (HAProxy: 503). */
  onQueueTimeout?: QueueAction;
  /** A slot freed for a queued waiter: the slot is already held for it. */
  onDequeue: (target: number, waiter: W) => void;
  /** A waiter timed out (already removed, counted); apply onQueueTimeout to it. */
  onTimeout: (target: number, waiter: W, action: QueueAction) => void;
  counters?: QueueCounters;
  clock?: QueueClock;
}

/** Largest maxqueue accepted per target (the pool is preallocated). */
export const MAX_QUEUE = 65536;
const DEFAULT_MAXQUEUE = 1024;
const DEFAULT_QUEUE_TIMEOUT_MS = 5000;
const NIL = -1;

function checkInt(what: string, v: unknown, max: number): number {
  if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > max) throw new RangeError(`queue: ${what} must be an integer 0..${max}, got ${String(v)}`);
  return v as number;
}

export class TargetQueues<W> {
  readonly counters: QueueCounters;
  readonly onFull: QueueAction;
  readonly onQueueFull: QueueAction;
  readonly onQueueTimeout: QueueAction;
  readonly size: number;
  // per target
  private readonly active: Int32Array;
  private readonly maxconn: Int32Array;
  private readonly maxqueue: Int32Array;
  private readonly timeoutMs: Float64Array;
  private readonly head: Int32Array;
  private readonly tail: Int32Array;
  private readonly qlen: Int32Array;
  private readonly timerAt: Float64Array;
  private readonly timers: unknown[];
  private readonly fire: (() => void)[];
  // per queue node
  private readonly next: Int32Array;
  private readonly prev: Int32Array;
  private readonly deadline: Float64Array;
  private readonly owner: Int32Array;
  private readonly waiters: (W | null)[];
  private freeHead: number;
  private readonly clock: QueueClock;
  private readonly dequeueHook: (target: number, waiter: W) => void;
  private readonly timeoutHook: (target: number, waiter: W, action: QueueAction) => void;
  private disposed = false;
  /** Ticket of the last successful enqueue (for cancel). */
  lastTicket = NIL;

  constructor(opts: TargetQueuesOptions<W>) {
    if (!opts || !Array.isArray(opts.limits)) throw new TypeError('queue: limits must be an array with one entry per target');
    const n = opts.limits.length;
    this.size = n;
    this.counters = opts.counters ?? new QueueCounters();
    this.clock = opts.clock ?? realClock;
    this.onFull = opts.onFull ?? QueueAction.Queue;
    this.onQueueFull = opts.onQueueFull ?? QueueAction.Redispatch;
    this.onQueueTimeout = opts.onQueueTimeout ?? QueueAction.Reject;
    if (this.onQueueFull === QueueAction.Queue) throw new RangeError("queue: onQueueFull cannot be 'queue' (the queue is full)");
    if (this.onQueueTimeout === QueueAction.Queue) throw new RangeError("queue: onQueueTimeout cannot be 'queue' (it would wait forever)");
    this.dequeueHook = opts.onDequeue;
    this.timeoutHook = opts.onTimeout;
    this.active = new Int32Array(n);
    this.maxconn = new Int32Array(n);
    this.maxqueue = new Int32Array(n);
    this.timeoutMs = new Float64Array(n);
    this.head = new Int32Array(n).fill(NIL);
    this.tail = new Int32Array(n).fill(NIL);
    this.qlen = new Int32Array(n);
    this.timerAt = new Float64Array(n).fill(-1);
    this.timers = new Array<unknown>(n).fill(null);
    let pool = 0;
    for (let i = 0; i < n; i++) {
      const l = opts.limits[i] ?? {};
      this.maxconn[i] = checkInt(`limits[${i}].maxconn`, l.maxconn ?? 0, 0x7fffffff);
      this.maxqueue[i] = checkInt(`limits[${i}].maxqueue`, l.maxqueue ?? DEFAULT_MAXQUEUE, MAX_QUEUE);
      this.timeoutMs[i] = checkInt(`limits[${i}].queueTimeoutMs`, l.queueTimeoutMs ?? DEFAULT_QUEUE_TIMEOUT_MS, 0x7fffffff);
      // An unlimited target never queues: reserve nothing for it.
      if (this.maxconn[i] > 0) pool += this.maxqueue[i];
    }
    // One closure per target, made here (not per timeout).
    this.fire = Array.from({ length: n }, (_, t) => () => this.expire(t));
    this.next = new Int32Array(pool);
    this.prev = new Int32Array(pool);
    this.deadline = new Float64Array(pool);
    this.owner = new Int32Array(pool);
    this.waiters = new Array<W | null>(pool).fill(null);
    for (let i = 0; i < pool; i++) this.next[i] = i + 1 < pool ? i + 1 : NIL;
    this.freeHead = pool > 0 ? 0 : NIL;
  }

  activeCount(t: number): number { return this.active[t]; }
  queueLength(t: number): number { return this.qlen[t]; }
  maxconnOf(t: number): number { return this.maxconn[t]; }

  /** True when t is below maxconn (or unlimited). */
  hasCapacity(t: number): boolean {
    const m = this.maxconn[t];
    return m === 0 || this.active[t] < m;
  }

  /** Takes a slot on t when one is free. */
  tryAcquire(t: number): boolean {
    if (!this.hasCapacity(t)) return false;
    this.active[t]++;
    return true;
  }

  /**
   * The at-maxconn / queue-full decision for a new connection to t: Admitted
   * (slot held), Queued (the waiter is in t's queue under lastTicket), or
   * the action the caller applies (Redispatch, Backup, Reject) and counts
   * once applied (a redispatch that finds no free target is a reject).
   */
  admit(t: number, waiter: W): Admission {
    if (this.tryAcquire(t)) return Admission.Admitted;
    const a = this.onFull;
    if (a !== QueueAction.Queue) return a as Admission;
    return this.enqueue(t, waiter) === NIL ? (this.onQueueFull as Admission) : Admission.Queued;
  }

  /** Appends waiter to t's queue; returns its ticket, or -1 (counted in queueFull) when the queue is full. */
  enqueue(t: number, waiter: W): number {
    if (this.qlen[t] >= this.maxqueue[t] || this.freeHead === NIL) {
      this.counters.queueFull++;
      return NIL;
    }
    const k = this.freeHead;
    this.freeHead = this.next[k];
    this.waiters[k] = waiter;
    this.owner[k] = t;
    const to = this.timeoutMs[t];
    this.deadline[k] = to > 0 ? this.clock.now() + to : Infinity;
    this.next[k] = NIL;
    this.prev[k] = this.tail[t];
    if (this.tail[t] !== NIL) this.next[this.tail[t]] = k;
    else this.head[t] = k;
    this.tail[t] = k;
    this.qlen[t]++;
    this.counters.queued++;
    if (this.qlen[t] === 1) this.arm(t);
    this.lastTicket = k;
    return k;
  }

  /** Removes a queued waiter whose client left (ticket from enqueue). False when it is no longer queued. */
  cancel(ticket: number, waiter: W): boolean {
    if (ticket < 0 || ticket >= this.waiters.length || this.waiters[ticket] !== waiter) return false;
    const t = this.owner[ticket];
    const wasHead = this.head[t] === ticket;
    this.unlink(ticket);
    this.counters.abandoned++;
    if (wasHead) this.arm(t);
    return true;
  }

  /**
   * Frees t's slot (the connection to t closed) and hands freed slots to the
   * queue's head(s), each through onDequeue with the slot already held.
   */
  release(t: number): void {
    if (this.active[t] > 0) this.active[t]--;
    let served = false;
    while (this.qlen[t] > 0 && this.hasCapacity(t) && !this.disposed) {
      const k = this.head[t];
      const w = this.waiters[k] as W;
      this.unlink(k);
      this.active[t]++;
      this.counters.dequeued++;
      served = true;
      this.dequeueHook(t, w);
    }
    if (served) this.arm(t);
  }

  /** Stops every timer and returns the waiters still queued (the caller closes them). */
  dispose(): W[] {
    this.disposed = true;
    const left: W[] = [];
    for (let t = 0; t < this.size; t++) {
      if (this.timers[t] !== null) this.clock.clearTimer(this.timers[t]);
      this.timers[t] = null;
      while (this.head[t] !== NIL) {
        const k = this.head[t];
        left.push(this.waiters[k] as W);
        this.unlink(k);
      }
    }
    return left;
  }

  // --------------------------------------------------------- internals

  private unlink(k: number): void {
    const t = this.owner[k];
    const p = this.prev[k], nx = this.next[k];
    if (p !== NIL) this.next[p] = nx; else this.head[t] = nx;
    if (nx !== NIL) this.prev[nx] = p; else this.tail[t] = p;
    this.waiters[k] = null;
    this.qlen[t]--;
    this.next[k] = this.freeHead;
    this.freeHead = k;
  }

  /** (Re)arms t's timer for its head's deadline; clears it when the queue is empty. */
  private arm(t: number): void {
    if (this.disposed) return;
    const h = this.head[t];
    const at = h === NIL ? -1 : this.deadline[h];
    if (at === this.timerAt[t]) return;
    if (this.timers[t] !== null) { this.clock.clearTimer(this.timers[t]); this.timers[t] = null; }
    this.timerAt[t] = -1;
    if (at < 0 || at === Infinity) return;
    this.timerAt[t] = at;
    this.timers[t] = this.clock.setTimer(this.fire[t], Math.max(0, Math.ceil(at - this.clock.now())));
  }

  private expire(t: number): void {
    this.timers[t] = null;
    this.timerAt[t] = -1;
    // Timers run on the loop's millisecond clock and may fire a fraction of a
    // millisecond before performance.now reaches the deadline: allow 1 ms.
    const now = this.clock.now() + 1;
    while (!this.disposed && this.head[t] !== NIL && this.deadline[this.head[t]] <= now) {
      const k = this.head[t];
      const w = this.waiters[k] as W;
      this.unlink(k);
      this.counters.queueTimeouts++;
      this.timeoutHook(t, w, this.onQueueTimeout);
    }
    this.arm(t);
  }
}
