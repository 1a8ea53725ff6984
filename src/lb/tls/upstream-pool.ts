// Shared upstream TLS sessions for the workload distributor (DESIGN.md,
// lb/tls; workload-distributor item 6). Control plane / socket code: the hot
// path never sees these sockets, so one object per connection and per waiter
// is fine here; the waiting queue itself is a preallocated structure of
// arrays (STYLE.md 5) like lb/queue.ts.
//
// Per target, a pool of TLS connections that client requests borrow:
//   - acquire() hands out an idle pooled connection (a "reuse": no TCP or TLS
//     handshake at all), or opens a new one while fewer than maxConnections
//     are open or opening, or makes the request wait. Waiters are served
//     FIFO by arrival, or highest priority first with ties FIFO; a bounded
//     number may wait (maxWaiters, refusals counted), each for at most
//     waitTimeoutMs.
//   - lease.release(true) gives the connection back (straight to the best
//     waiter if any, else idle for idleTimeoutMs); release(false) destroys it
//     (the holder saw a protocol error, or the response was not read to its
//     end, so the stream is not at a request boundary).
//   - New connections resume the target's last TLS session (RFC 8446 §2.2
//     PSK resumption from a NewSessionTicket; RFC 5077 tickets or RFC 5246
//     §7.3 session IDs for TLS 1.2): node's 'session' event gives the
//     ticket, tls.connect's `session` option offers it. The cache is one
//     module-level Map keyed by target, shared by every pool of the process;
//     exportSessions()/importSessions() move it between workers as plain
//     bytes (structured-clone-able).
//   - TLS 1.3 sends tickets AFTER the handshake (RFC 8446 §4.6.1: "at any
//     time after it receives the client Finished"), so at 'secureConnect'
//     the client has no ticket yet, and one round trip passes before it
//     does. A new connection opened in that window would do a full
//     handshake; instead it waits (at most sessionWaitMs) for the pending
//     ticket of a connection that just completed its handshake.
//   - dedicated requests (policy: e.g. a request that carries a client
//     certificate identity must not share a TLS session with anonymous
//     traffic) get a fresh connection that neither offers nor stores a
//     cached session and is destroyed on release. They are outside
//     maxConnections: a policy that forbids sharing must not be starved by
//     the shared pool.
//   - A connection that errors or closes (the target closed an idle
//     connection, a reset) leaves the pool at once; its slot goes to the
//     head waiter.
//   - A preface (bytes written in clear on the TCP connection before the
//     TLS ClientHello: a PROXY protocol v2 header, haproxy
//     doc/proxy-protocol.txt 2.2, as `server ... ssl send-proxy-v2` sends
//     it and nginx's `listen ... ssl proxy_protocol` expects it) can be set
//     per pool (every pooled connection: it is written once per TCP
//     connection, so it cannot name one client; the TLS terminator uses a
//     LOCAL header there) and per dedicated request (its own client).
//   - acquire() returns a handle whose cancel() takes a request out of the
//     waiting line (its client left): the line stays bounded by live
//     requests, not by the wait timeout.

import net from 'node:net';
import tls from 'node:tls';
import { realClock, type QueueClock } from '../queue.js';

// ------------------------------------------------------------- session cache

/** target key → last session (TLS 1.3 ticket or TLS 1.2 session) seen for it. */
export type SessionCache = Map<string, Buffer>;

/** The process-wide cache every pool uses unless given its own. */
export const sharedSessions: SessionCache = new Map();

/** One cached session, as moved between workers. */
export interface SessionEntry {
  /** `host:port/servername` (sessionKey()). */
  target: string;
  /** The session bytes; structured clone turns a Buffer into a Uint8Array, which importSessions accepts. */
  session: Uint8Array;
}

/** Cache key of a target: the session belongs to the server identity we asked for, so SNI is part of it. */
export function sessionKey(host: string, port: number, servername?: string): string {
  return `${host}:${port}/${servername ?? ''}`;
}

/**
 * Copies of the cached sessions, each on its own ArrayBuffer: node's small
 * Buffers are views into a shared 8 KiB slab, and a structured clone copies a
 * view's whole ArrayBuffer (other data and all) to the receiving worker.
 */
export function exportSessions(cache: SessionCache = sharedSessions): SessionEntry[] {
  const out: SessionEntry[] = [];
  for (const [target, s] of cache) out.push({ target, session: Buffer.from(new Uint8Array(s).buffer) });
  return out;
}

/** Adds (replaces) sessions from exportSessions(), possibly after a structured clone. Returns how many were taken. */
export function importSessions(entries: readonly SessionEntry[], cache: SessionCache = sharedSessions): number {
  if (!Array.isArray(entries)) throw new TypeError('upstream pool: importSessions expects the array exportSessions() returned');
  let n = 0;
  for (const e of entries) {
    if (!e || typeof e.target !== 'string' || !(e.session instanceof Uint8Array) || e.session.byteLength === 0) continue;
    cache.set(e.target, Buffer.from(new Uint8Array(e.session).buffer));
    n++;
  }
  return n;
}

// ------------------------------------------------------------- wait queue

const NIL = -1;

/**
 * Bounded waiting line, preallocated: a binary heap of slots ordered by
 * (priority desc, arrival asc) gives the service order (all priorities 0 =
 * FIFO), and a doubly linked list in arrival order gives the timeout order
 * (one timeout for all, monotone clock: deadlines are in arrival order, so
 * one timer armed for the oldest waiter serves the whole line, as in
 * lb/queue.ts).
 */
export class WaitQueue<W> {
  readonly capacity: number;
  private readonly prio: Float64Array;
  private readonly seq: Float64Array;
  private readonly deadline: Float64Array;
  private readonly heap: Int32Array;
  private readonly heapPos: Int32Array;
  private heapLen = 0;
  private readonly next: Int32Array;
  private readonly prev: Int32Array;
  private head = NIL;
  private tail = NIL;
  private freeHead: number;
  private readonly items: (W | null)[];
  private nextSeq = 0;
  private timer: unknown = null;
  private timerAt = -1;
  private disposed = false;
  private readonly fire: () => void;

  constructor(
    capacity: number,
    private readonly timeoutMs: number,
    private readonly clock: QueueClock,
    private readonly onTimeout: (w: W) => void,
  ) {
    this.capacity = capacity;
    this.prio = new Float64Array(capacity);
    this.seq = new Float64Array(capacity);
    this.deadline = new Float64Array(capacity);
    this.heap = new Int32Array(capacity);
    this.heapPos = new Int32Array(capacity).fill(NIL);
    this.next = new Int32Array(capacity);
    this.prev = new Int32Array(capacity);
    this.items = new Array<W | null>(capacity).fill(null);
    for (let i = 0; i < capacity; i++) this.next[i] = i + 1 < capacity ? i + 1 : NIL;
    this.freeHead = capacity > 0 ? 0 : NIL;
    this.fire = () => this.expire();
  }

  get length(): number { return this.heapLen; }

  /** Adds w; returns its slot, or -1 when the line is full. */
  push(w: W, priority: number): number {
    const k = this.freeHead;
    if (k === NIL || this.disposed) return NIL;
    this.freeHead = this.next[k];
    this.items[k] = w;
    this.prio[k] = priority;
    this.seq[k] = this.nextSeq++;
    this.deadline[k] = this.timeoutMs > 0 ? this.clock.now() + this.timeoutMs : Infinity;
    // arrival list
    this.next[k] = NIL;
    this.prev[k] = this.tail;
    if (this.tail !== NIL) this.next[this.tail] = k; else this.head = k;
    this.tail = k;
    // heap
    const i = this.heapLen++;
    this.heap[i] = k;
    this.heapPos[k] = i;
    this.siftUp(i);
    if (this.head === k) this.arm();
    return k;
  }

  /** Removes and returns the waiter to serve next, or null. */
  shift(): W | null {
    if (this.heapLen === 0) return null;
    const k = this.heap[0];
    const w = this.items[k] as W;
    this.unlink(k);
    return w;
  }

  /** Removes w from slot k (e.g. its request was abandoned); false when it is not there any more. */
  remove(k: number, w: W): boolean {
    if (k < 0 || k >= this.capacity || this.items[k] !== w) return false;
    this.unlink(k);
    return true;
  }

  /** Stops the timer and returns everything still waiting, in service order. */
  dispose(): W[] {
    this.disposed = true;
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    this.timer = null;
    const out: W[] = [];
    for (let w = this.shift(); w !== null; w = this.shift()) out.push(w);
    return out;
  }

  // --------------------------------------------------------- internals

  /** a is served before b. */
  private before(a: number, b: number): boolean {
    return this.prio[a] > this.prio[b] || (this.prio[a] === this.prio[b] && this.seq[a] < this.seq[b]);
  }

  private siftUp(i: number): void {
    const h = this.heap;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(h[i], h[p])) break;
      this.swap(i, p);
      i = p;
    }
  }

  private siftDown(i: number): void {
    const h = this.heap;
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let m = i;
      if (l < this.heapLen && this.before(h[l], h[m])) m = l;
      if (r < this.heapLen && this.before(h[r], h[m])) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }

  private swap(i: number, j: number): void {
    const h = this.heap;
    const a = h[i], b = h[j];
    h[i] = b; h[j] = a;
    this.heapPos[b] = i; this.heapPos[a] = j;
  }

  private unlink(k: number): void {
    // heap
    const i = this.heapPos[k];
    const last = --this.heapLen;
    if (i !== last) {
      const m = this.heap[last];
      this.heap[i] = m;
      this.heapPos[m] = i;
      this.siftDown(i);
      this.siftUp(this.heapPos[m]);
    }
    this.heapPos[k] = NIL;
    // arrival list
    const wasHead = this.head === k;
    const p = this.prev[k], nx = this.next[k];
    if (p !== NIL) this.next[p] = nx; else this.head = nx;
    if (nx !== NIL) this.prev[nx] = p; else this.tail = p;
    this.items[k] = null;
    this.next[k] = this.freeHead;
    this.freeHead = k;
    if (wasHead) this.arm();
  }

  /** (Re)arms the timer for the oldest waiter's deadline. */
  private arm(): void {
    if (this.disposed) return;
    const at = this.head === NIL ? -1 : this.deadline[this.head];
    if (at === this.timerAt) return;
    if (this.timer !== null) { this.clock.clearTimer(this.timer); this.timer = null; }
    this.timerAt = -1;
    if (at < 0 || at === Infinity) return;
    this.timerAt = at;
    this.timer = this.clock.setTimer(this.fire, Math.max(0, Math.ceil(at - this.clock.now())));
  }

  private expire(): void {
    this.timer = null;
    this.timerAt = -1;
    // Loop timers may fire a fraction of a millisecond early (lb/queue.ts).
    const now = this.clock.now() + 1;
    while (!this.disposed && this.head !== NIL && this.deadline[this.head] <= now) {
      const k = this.head;
      const w = this.items[k] as W;
      this.unlink(k);
      this.onTimeout(w);
    }
    this.arm();
  }
}

// ------------------------------------------------------------- config

export interface UpstreamTarget {
  host: string;
  port: number;
  /** SNI and the name the certificate is checked against (RFC 6066 §3: never an IP address). */
  servername?: string;
  /** Trust anchors for the target's certificate (PEM). Default: node's bundled CAs. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Default true. */
  rejectUnauthorized?: boolean;
}

export type UpstreamQueueOrder = 'fifo' | 'priority';

export interface UpstreamPoolOptions extends UpstreamTarget {
  /** Pooled connections open or opening at once (dedicated ones are not counted). */
  maxConnections: number;
  /** An idle pooled connection is closed after this long unused; 0 = never. */
  idleTimeoutMs: number;
  /** Service order of waiters: arrival, or highest priority first (ties by arrival). */
  queue: UpstreamQueueOrder;
  /** Requests that may wait; 0 = none (a request that finds no connection is refused). */
  maxWaiters: number;
  /** Longest wait for a connection; 0 = no limit. */
  waitTimeoutMs: number;
  /** TCP connect + TLS handshake limit. Default 5000. */
  connectTimeoutMs?: number;
  /** How long a new connection waits for a TLS 1.3 ticket still in flight on another connection. Default 250; 0 = never wait. */
  sessionWaitMs?: number;
  /** Extra tls.connect options (minVersion, maxVersion, ALPNProtocols, ...). */
  tls?: Omit<tls.ConnectionOptions, 'host' | 'port' | 'servername' | 'ca' | 'session' | 'socket' | 'rejectUnauthorized'>;
  /** Bytes written in clear on every pooled connection before its TLS handshake (e.g. a PROXY v2 LOCAL header). Default none. */
  preface?: Uint8Array | null;
  /** Session cache. Default: the process-wide sharedSessions. */
  sessions?: SessionCache;
  /** Timers for idle, wait and ticket timeouts (tests). */
  clock?: QueueClock;
}

export interface UpstreamRequest {
  /** Higher is served first in a 'priority' pool. Default 0. */
  priority?: number;
  /** A fresh connection of its own, never pooled, no shared session. */
  dedicated?: boolean;
  /** A client certificate to present to the target; implies dedicated. */
  identity?: { cert: string | Buffer; key: string | Buffer; passphrase?: string };
  /**
   * Dedicated requests only: bytes written in clear before the TLS handshake
   * instead of the pool's preface (e.g. a PROXY v2 header naming this
   * request's client). Ignored for shared requests.
   */
  preface?: Uint8Array | null;
}

/** What acquire() returns. */
export interface UpstreamWait {
  /**
   * Takes the request out of the waiting line: true when it was waiting (its
   * callback will never be called); false when it was not waiting (already
   * served, refused, or being connected: the callback still comes, and a
   * lease it brings must be released).
   */
  cancel(): boolean;
}

const NOT_WAITING: UpstreamWait = { cancel: () => false };

export interface UpstreamLease {
  /**
   * Handed over explicitly paused (a pooled socket may have been flowing
   * while idle): attach listeners, then resume() or pipe().
   */
  readonly socket: tls.TLSSocket;
  /** The connection was already open (pooled reuse: no handshake for this request). */
  readonly reused: boolean;
  /** Its handshake was a session resumption. */
  readonly resumed: boolean;
  readonly dedicated: boolean;
  /**
   * Gives the connection back: reusable = at a request boundary and healthy.
   * The holder must first remove its own listeners from the socket. Later
   * calls are ignored.
   */
  release(reusable: boolean): void;
}

export type UpstreamCallback = (err: UpstreamPoolError | Error | null, lease: UpstreamLease | null) => void;

export type UpstreamErrorCode = 'EQUEUEFULL' | 'EWAITTIMEOUT' | 'ECLOSED' | 'ETIMEDOUT' | 'EUNEXPECTEDDATA';

export class UpstreamPoolError extends Error {
  constructor(readonly code: UpstreamErrorCode, message: string) {
    super(message);
    this.name = 'UpstreamPoolError';
  }
}

/** Fixed shape, every field a number (STYLE.md 4, 8). */
export class UpstreamPoolCounters {
  /** Full handshakes (pooled and dedicated). */
  handshakes = 0;
  /** Handshakes that resumed a cached session. */
  resumptions = 0;
  /** Leases on an already open pooled connection. */
  reuses = 0;
  /** Requests that had to wait for a connection. */
  waits = 0;
  /** Waiters that got no connection within waitTimeoutMs. */
  waitTimeouts = 0;
  /** Requests refused because maxWaiters were already waiting. */
  queueFull = 0;
  /** Dedicated connections opened. */
  dedicated = 0;
  /** Connect, handshake and socket errors. */
  errors = 0;
  /** Idle pooled connections closed by idleTimeoutMs. */
  idleCloses = 0;
  /** Pooled connections lost while open (closed by the target, reset, error, unexpected data). */
  dropped = 0;
  /** Sessions (tickets) received and cached. */
  sessionsCached = 0;
  /** New connections that waited for a TLS 1.3 ticket in flight. */
  ticketWaits = 0;
  /** Waiting requests cancelled by their holder (client gone). */
  cancelled = 0;
}

// ------------------------------------------------------------- pool

const State = { Opening: 0, Idle: 1, Leased: 2, Closed: 3 } as const;
type State = (typeof State)[keyof typeof State];

class Conn {
  socket: tls.TLSSocket | null = null;
  /** The TCP connection while its preface is being sent (before `socket` exists). */
  raw: net.Socket | null = null;
  state: State = State.Opening;
  resumed = false;
  /** A 'session' event arrived on this connection. */
  gotSession = false;
  /** Handshake done, ticket not yet seen (counted in the pool's ticketPending). */
  ticketPending = false;
  idleTimer: unknown = null;
  /** Requester of an opening connection; called once. */
  pendingCb: UpstreamCallback | null = null;
  /** Closed by the pool itself (idle timeout, release(false), close()): not a drop. */
  retired = false;
  readonly onIdleData: () => void;
  constructor(readonly pooled: boolean, pool: UpstreamPool) {
    this.onIdleData = () => pool.unexpectedData(this);
  }
}

class Lease implements UpstreamLease {
  private released = false;
  constructor(
    private readonly pool: UpstreamPool,
    private readonly conn: Conn,
    readonly reused: boolean,
  ) {}
  get socket(): tls.TLSSocket { return this.conn.socket as tls.TLSSocket; }
  get resumed(): boolean { return this.conn.resumed; }
  get dedicated(): boolean { return !this.conn.pooled; }
  release(reusable: boolean): void {
    if (this.released) return;
    this.released = true;
    this.pool.giveBack(this.conn, reusable);
  }
}

interface Waiter {
  cb: UpstreamCallback;
}

function checkInt(what: string, v: unknown, min: number, max: number): number {
  if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) {
    throw new RangeError(`upstream pool: ${what} must be an integer ${min}..${max}, got ${String(v)}`);
  }
  return v as number;
}

/** Largest maxWaiters (the line is preallocated). */
export const MAX_WAITERS = 65536;

export class UpstreamPool {
  readonly counters = new UpstreamPoolCounters();
  readonly key: string;
  readonly host: string;
  readonly port: number;
  readonly servername: string | undefined;
  readonly maxConnections: number;
  readonly idleTimeoutMs: number;
  readonly order: UpstreamQueueOrder;
  private readonly ca: string | Buffer | Array<string | Buffer> | undefined;
  private readonly rejectUnauthorized: boolean;
  private readonly connectTimeoutMs: number;
  private readonly sessionWaitMs: number;
  private readonly extraTls: UpstreamPoolOptions['tls'];
  private readonly preface: Uint8Array | null;
  private readonly sessions: SessionCache;
  private readonly clock: QueueClock;
  private readonly waiters: WaitQueue<Waiter>;
  /** Pooled connections open or opening. */
  private readonly conns = new Set<Conn>();
  /** Idle pooled connections, most recently used last (reused first, so the others age out). */
  private readonly idle: Conn[] = [];
  private readonly dedicatedConns = new Set<Conn>();
  /** Pooled connections past their handshake still waiting for a TLS 1.3 ticket. */
  private ticketPending = 0;
  /** Opens deferred until a ticket arrives (or sessionWaitMs passes). */
  private ticketWaiters: (() => void)[] = [];
  private ticketTimer: unknown = null;
  private readonly ticketTimeout: () => void;
  private closed = false;

  constructor(opts: UpstreamPoolOptions) {
    if (opts === null || typeof opts !== 'object') throw new TypeError('upstream pool: options must be an object');
    if (typeof opts.host !== 'string' || opts.host.length === 0) throw new TypeError('upstream pool: host must be a host name or address');
    this.host = opts.host;
    this.port = checkInt('port', opts.port, 1, 65535);
    if (opts.servername !== undefined && (typeof opts.servername !== 'string' || net.isIP(opts.servername) !== 0)) {
      throw new TypeError(`upstream pool: servername must be a DNS name (RFC 6066 §3 forbids addresses), got ${String(opts.servername)}`);
    }
    this.servername = opts.servername;
    this.maxConnections = checkInt('maxConnections', opts.maxConnections, 1, 0x7fffffff);
    this.idleTimeoutMs = checkInt('idleTimeoutMs', opts.idleTimeoutMs, 0, 0x7fffffff);
    if (opts.queue !== 'fifo' && opts.queue !== 'priority') throw new RangeError(`upstream pool: queue must be 'fifo' or 'priority', got ${JSON.stringify(opts.queue)}`);
    this.order = opts.queue;
    const maxWaiters = checkInt('maxWaiters', opts.maxWaiters, 0, MAX_WAITERS);
    const waitTimeoutMs = checkInt('waitTimeoutMs', opts.waitTimeoutMs, 0, 0x7fffffff);
    this.connectTimeoutMs = checkInt('connectTimeoutMs', opts.connectTimeoutMs ?? 5000, 0, 0x7fffffff);
    this.sessionWaitMs = checkInt('sessionWaitMs', opts.sessionWaitMs ?? 250, 0, 0x7fffffff);
    this.ca = opts.ca;
    this.rejectUnauthorized = opts.rejectUnauthorized ?? true;
    this.extraTls = opts.tls;
    if (opts.preface !== undefined && opts.preface !== null && !(opts.preface instanceof Uint8Array)) throw new TypeError('upstream pool: preface must be a Uint8Array (or null)');
    this.preface = opts.preface ?? null;
    this.sessions = opts.sessions ?? sharedSessions;
    this.clock = opts.clock ?? realClock;
    this.key = sessionKey(this.host, this.port, this.servername);
    this.waiters = new WaitQueue<Waiter>(maxWaiters, waitTimeoutMs, this.clock, (w) => {
      this.counters.waitTimeouts++;
      w.cb(new UpstreamPoolError('EWAITTIMEOUT', `upstream pool ${this.key}: no connection within ${waitTimeoutMs} ms`), null);
    });
    this.ticketTimeout = () => {
      this.ticketTimer = null;
      // A server that sends no ticket must not delay every later open: stop
      // expecting tickets from the connections seen so far.
      for (const c of this.conns) c.ticketPending = false;
      this.ticketPending = 0;
      this.flushTicketWaiters();
    };
  }

  /** Pooled connections open or opening. */
  get openCount(): number { return this.conns.size; }
  get idleCount(): number { return this.idle.length; }
  get waiting(): number { return this.waiters.length; }
  get dedicatedCount(): number { return this.dedicatedConns.size; }
  /** This target's cached session, if any. */
  get session(): Buffer | undefined { return this.sessions.get(this.key); }

  /**
   * Calls cb with a lease (always asynchronously), or with an
   * UpstreamPoolError / the connect error. The returned handle cancels a
   * request that is waiting.
   */
  acquire(request: UpstreamRequest, cb: UpstreamCallback): UpstreamWait {
    if (typeof cb !== 'function') throw new TypeError('upstream pool: acquire needs a callback');
    const req = request ?? {};
    const priority = req.priority ?? 0;
    if (typeof priority !== 'number' || Number.isNaN(priority)) throw new TypeError(`upstream pool: priority must be a number, got ${String(req.priority)}`);
    if (this.closed) { process.nextTick(cb, new UpstreamPoolError('ECLOSED', `upstream pool ${this.key} is closed`), null); return NOT_WAITING; }
    if (req.dedicated === true || req.identity !== undefined) {
      if (req.preface !== undefined && req.preface !== null && !(req.preface instanceof Uint8Array)) throw new TypeError('upstream pool: preface must be a Uint8Array (or null)');
      const conn = new Conn(false, this);
      this.dedicatedConns.add(conn);
      this.counters.dedicated++;
      this.connect(conn, cb, req.identity, req.preface ?? null);
      return NOT_WAITING;
    }
    const c = this.takeIdle();
    if (c !== null) { this.grant(c, cb); return NOT_WAITING; }
    if (this.conns.size < this.maxConnections) { this.openPooled(cb); return NOT_WAITING; }
    const w: Waiter = { cb };
    const k = this.waiters.push(w, this.order === 'priority' ? priority : 0);
    if (k === NIL) {
      this.counters.queueFull++;
      process.nextTick(cb, new UpstreamPoolError('EQUEUEFULL', `upstream pool ${this.key}: ${this.waiters.capacity} requests already waiting`), null);
      return NOT_WAITING;
    }
    this.counters.waits++;
    return {
      cancel: () => {
        if (!this.waiters.remove(k, w)) return false;
        this.counters.cancelled++;
        return true;
      },
    };
  }

  /** Fails every waiter and destroys every connection (pooled, leased and dedicated). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiters.dispose()) process.nextTick(w.cb, new UpstreamPoolError('ECLOSED', `upstream pool ${this.key} closed`), null);
    this.flushTicketWaiters();
    for (const c of [...this.conns, ...this.dedicatedConns]) {
      c.retired = true;
      if (c.idleTimer !== null) { this.clock.clearTimer(c.idleTimer); c.idleTimer = null; }
      if (c.socket !== null) c.socket.destroy();
      else if (c.raw !== null) c.raw.destroy();
    }
  }

  // --------------------------------------------------------- internals (Lease and Conn call these)

  /** @internal */
  giveBack(conn: Conn, reusable: boolean): void {
    const s = conn.socket as tls.TLSSocket;
    if (!conn.pooled || !reusable || this.closed || conn.state !== State.Leased || s.destroyed || !s.writable || !s.readable) {
      if (conn.state !== State.Closed) conn.retired = true;
      s.destroy();
      return;
    }
    const w = this.waiters.shift();
    if (w !== null) { this.grant(conn, w.cb); return; }
    conn.state = State.Idle;
    // Idle: nothing may arrive but a close or an alert. Reading keeps a
    // target's FIN (or reset) visible, so the connection leaves the pool
    // before anyone borrows it.
    s.on('data', conn.onIdleData);
    s.resume();
    this.idle.push(conn);
    if (this.idleTimeoutMs > 0) {
      conn.idleTimer = this.clock.setTimer(() => {
        conn.idleTimer = null;
        if (conn.state !== State.Idle) return;
        this.counters.idleCloses++;
        this.retire(conn);
        s.end();
        s.once('finish', () => s.destroy());
      }, this.idleTimeoutMs);
    }
  }

  /** @internal Bytes on an idle connection: the stream is not at a request boundary any more. */
  unexpectedData(conn: Conn): void {
    if (conn.state !== State.Idle) return;
    this.counters.errors++;
    (conn.socket as tls.TLSSocket).destroy(new UpstreamPoolError('EUNEXPECTEDDATA', `upstream pool ${this.key}: data on an idle connection`));
  }

  private takeIdle(): Conn | null {
    while (this.idle.length > 0) {
      const c = this.idle.pop() as Conn;
      const s = c.socket as tls.TLSSocket;
      if (c.state === State.Idle && !s.destroyed && s.writable) return c;
    }
    return null;
  }

  /** Hands an open pooled connection to a requester (a reuse). */
  private grant(conn: Conn, cb: UpstreamCallback): void {
    const s = conn.socket as tls.TLSSocket;
    if (conn.idleTimer !== null) { this.clock.clearTimer(conn.idleTimer); conn.idleTimer = null; }
    s.off('data', conn.onIdleData);
    s.pause();
    conn.state = State.Leased;
    this.counters.reuses++;
    process.nextTick(cb, null, new Lease(this, conn, true));
  }

  private openPooled(cb: UpstreamCallback): void {
    const conn = new Conn(true, this);
    this.conns.add(conn);
    // RFC 8446 §4.6.1: the ticket of a connection that just finished its
    // handshake is one round trip away; waiting for it turns this full
    // handshake into a resumption.
    if (this.ticketPending > 0 && this.sessionWaitMs > 0) {
      this.counters.ticketWaits++;
      this.ticketWaiters.push(() => this.connect(conn, cb, undefined, this.preface));
      if (this.ticketTimer === null) this.ticketTimer = this.clock.setTimer(this.ticketTimeout, this.sessionWaitMs);
      return;
    }
    this.connect(conn, cb, undefined, this.preface);
  }

  private flushTicketWaiters(): void {
    if (this.ticketTimer !== null) { this.clock.clearTimer(this.ticketTimer); this.ticketTimer = null; }
    const list = this.ticketWaiters;
    this.ticketWaiters = [];
    for (const go of list) go();
  }

  private connect(conn: Conn, cb: UpstreamCallback, identity: UpstreamRequest['identity'], preface: Uint8Array | null): void {
    if (this.closed) {
      conn.state = State.Closed;
      this.conns.delete(conn);
      this.dedicatedConns.delete(conn);
      process.nextTick(cb, new UpstreamPoolError('ECLOSED', `upstream pool ${this.key} closed`), null);
      return;
    }
    conn.pendingCb = cb;
    const opts: tls.ConnectionOptions = {
      ...this.extraTls,
      host: this.host,
      port: this.port,
      ca: this.ca,
      rejectUnauthorized: this.rejectUnauthorized,
    };
    if (this.servername !== undefined) opts.servername = this.servername;
    if (conn.pooled) {
      const sess = this.sessions.get(this.key);
      if (sess !== undefined) opts.session = sess;
    }
    if (identity !== undefined) {
      opts.cert = identity.cert;
      opts.key = identity.key;
      if (identity.passphrase !== undefined) opts.passphrase = identity.passphrase;
    }
    if (preface !== null && preface.length > 0) {
      this.connectWithPreface(conn, opts, preface);
      return;
    }
    this.startTls(conn, opts);
  }

  /**
   * TCP first, the preface in clear, then TLS over the same connection (the
   * preface must precede the ClientHello on the wire, so it is written on
   * the connected socket before tls.connect wraps it).
   */
  private connectWithPreface(conn: Conn, opts: tls.ConnectionOptions, preface: Uint8Array): void {
    const raw = net.connect({ host: this.host, port: this.port });
    conn.raw = raw;
    raw.setNoDelay(true);
    let timer: unknown = null;
    if (this.connectTimeoutMs > 0) {
      timer = this.clock.setTimer(() => {
        timer = null;
        raw.destroy(new UpstreamPoolError('ETIMEDOUT', `upstream pool ${this.key}: no TCP connection within ${this.connectTimeoutMs} ms`));
      }, this.connectTimeoutMs);
    }
    const stopTimer = (): void => { if (timer !== null) { this.clock.clearTimer(timer); timer = null; } };
    const onError = (): void => { if (!conn.retired) this.counters.errors++; };
    const onClose = (): void => { stopTimer(); this.onClose(conn); };
    raw.once('error', onError);
    raw.once('close', onClose);
    raw.once('connect', () => {
      stopTimer();
      raw.off('error', onError);
      raw.off('close', onClose);
      // From here the TLS socket owns the connection and reports its errors;
      // one on the TCP socket must not go unheard (an 'error' without a listener throws).
      raw.on('error', () => undefined);
      if (conn.retired || this.closed) {
        raw.once('close', () => this.onClose(conn));
        raw.destroy();
        return;
      }
      raw.write(preface);
      this.startTls(conn, { ...opts, socket: raw });
    });
  }

  private startTls(conn: Conn, opts: tls.ConnectionOptions): void {
    const s = tls.connect(opts);
    conn.socket = s;
    if (this.connectTimeoutMs > 0) {
      s.setTimeout(this.connectTimeoutMs, () => {
        s.destroy(new UpstreamPoolError('ETIMEDOUT', `upstream pool ${this.key}: no TLS connection within ${this.connectTimeoutMs} ms`));
      });
    }
    s.once('secureConnect', () => {
      s.setTimeout(0);
      conn.resumed = s.isSessionReused();
      if (conn.resumed) this.counters.resumptions++; else this.counters.handshakes++;
      // TLS 1.2 delivers its session during the handshake; TLS 1.3 later.
      if (conn.pooled && !conn.gotSession && this.sessionWaitMs > 0) {
        conn.ticketPending = true;
        this.ticketPending++;
      }
      conn.state = State.Leased;
      const pcb = conn.pendingCb as UpstreamCallback;
      conn.pendingCb = null;
      s.pause();
      pcb(null, new Lease(this, conn, false));
    });
    s.on('session', (sess: Buffer) => {
      conn.gotSession = true;
      // A dedicated connection's session carries its identity (RFC 8446
      // §4.6.1: the PSK is bound to the client's authentication): never
      // offer it to anyone else.
      if (!conn.pooled || this.closed) return;
      this.sessions.set(this.key, sess);
      this.counters.sessionsCached++;
      if (conn.ticketPending) {
        conn.ticketPending = false;
        this.ticketPending--;
      }
      if (this.ticketWaiters.length > 0) this.flushTicketWaiters();
    });
    s.on('error', () => { if (!conn.retired) this.counters.errors++; });
    s.once('close', () => this.onClose(conn));
  }

  /** Out of the pool's books now (the socket is being closed by us). */
  private retire(conn: Conn): void {
    conn.retired = true;
    this.forget(conn);
  }

  private forget(conn: Conn): void {
    if (conn.state === State.Closed) return;
    const was = conn.state;
    conn.state = State.Closed;
    if (conn.idleTimer !== null) { this.clock.clearTimer(conn.idleTimer); conn.idleTimer = null; }
    if (conn.ticketPending) {
      conn.ticketPending = false;
      this.ticketPending--;
      // No ticket will come from this one: let deferred opens go unless another is still expected.
      if (this.ticketPending === 0 && this.ticketWaiters.length > 0) this.flushTicketWaiters();
    }
    if (was === State.Idle) {
      const i = this.idle.indexOf(conn);
      if (i >= 0) this.idle.splice(i, 1);
    }
    if (!conn.pooled) { this.dedicatedConns.delete(conn); return; }
    this.conns.delete(conn);
    if (!conn.retired && was !== State.Opening) this.counters.dropped++;
    this.serveWaiters();
  }

  private onClose(conn: Conn): void {
    const pcb = conn.pendingCb;
    conn.pendingCb = null;
    this.forget(conn);
    if (pcb !== null) {
      // Closed before its handshake completed ('error' has been counted).
      const sock = conn.socket ?? conn.raw;
      if (!conn.retired && sock !== null && !sock.errored) this.counters.errors++;
      const err = (conn.socket ?? conn.raw)?.errored ?? new UpstreamPoolError('ECLOSED', `upstream pool ${this.key}: connection closed before the TLS handshake completed`);
      pcb(err instanceof Error ? err : new Error(String(err)), null);
    }
  }

  /** A slot freed: give it to the best waiter (idle connection first, else a new one). */
  private serveWaiters(): void {
    while (!this.closed && this.waiters.length > 0) {
      const c = this.takeIdle();
      if (c !== null) { this.grant(c, (this.waiters.shift() as Waiter).cb); continue; }
      if (this.conns.size >= this.maxConnections) return;
      this.openPooled((this.waiters.shift() as Waiter).cb);
    }
  }
}
