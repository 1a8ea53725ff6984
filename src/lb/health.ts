// Active health checks for the workload distributor's backends (control
// plane: allocates freely, never on the packet path). Each target is probed
// on its own timer chain (TCP connect, HTTP GET status, or TLS handshake);
// the results drive an UP/DOWN state with HAProxy's rise/fall hysteresis, a
// slow-start ramp after a target comes back, and an administrative drain.
// What the data plane sees is only the resulting *effective weight* per
// target: the caller rebuilds its Maglev table from effectiveWeights() (or
// maglevBackends()) whenever onChange fires (DESIGN.md "Control plane
// builds, data plane reads"), so the hot path never looks at health state.
//
// Semantics, after HAProxy's configuration manual §5.2 ("check", "rise",
// "fall", "slowstart", "inter") and its drain state:
// - A DOWN target goes UP after `rise` consecutive successes; an UP target
//   goes DOWN after `fall` consecutive failures. A result of the other kind
//   resets the run. Targets start DOWN unless `initialState: 'up'`.
// - Slow start: after a DOWN -> UP transition the effective weight ramps
//   linearly from 1 to the configured weight over `slowStartMs`, so a cold
//   backend is not handed its whole share of new flows at once. Not applied
//   to a target that starts UP (there is no traffic to protect it from yet).
// - Drain: a draining target keeps its state (and its health checks) but
//   gets effective weight 0, so Maglev gives it no new flows; existing
//   flows stay with it through the flow table, which is keyed on the
//   5-tuple rather than the Maglev table.
// - Checks of one target never overlap: the next is scheduled only once the
//   current one has settled, and every check settles by its own timeout.
//   Intervals are jittered so that many targets (and many appliances) do not
//   probe a backend in lockstep.

import * as net from 'node:net';
import * as http from 'node:http';
import * as tls from 'node:tls';
import { performance } from 'node:perf_hooks';
import { MAGLEV_MAX_WEIGHT, type MaglevBackend } from './maglev.js';

export type HealthCheckType = 'tcp' | 'http' | 'tls';
export type HealthState = 'up' | 'down';

export interface HttpCheckOptions {
  /** Request path, starting with '/'. */
  path: string;
  /** Status that counts as healthy: one code, or an inclusive range [lo, hi]. Default [200, 399]. */
  expectStatus?: number | readonly [number, number];
  /** Host header; default "address:port". */
  host?: string;
}

export interface TlsCheckOptions {
  /** SNI to send (RFC 6066 §3). IP literals are not allowed as SNI, so without it none is sent for an IP address. */
  servername?: string;
  /** Verify the certificate chain and name. Default true: a check that accepts any certificate cannot notice a wrong backend. */
  rejectUnauthorized?: boolean;
  /** Trusted CA certificate(s) in PEM for verification (default: Node's bundled roots). */
  ca?: string | Buffer | Array<string | Buffer>;
}

export interface HealthCheckSpec {
  type: HealthCheckType;
  /** Time between the end of one check and the start of the next, before jitter. */
  intervalMs: number;
  /** A check that has not succeeded by then fails. */
  timeoutMs: number;
  /** Consecutive successes that bring a DOWN target UP. */
  rise: number;
  /** Consecutive failures that bring an UP target DOWN. */
  fall: number;
  http?: HttpCheckOptions;
  tls?: TlsCheckOptions;
}

export interface HealthTarget {
  /** Maglev backend id (what the table stores). */
  id: number;
  address: string;
  port: number;
  /** Configured weight, an integer 0..MAGLEV_MAX_WEIGHT. */
  weight: number;
  check: HealthCheckSpec;
  /** Ramp length after a DOWN -> UP transition; 0 or absent: none. */
  slowStartMs?: number;
  /** Start draining. */
  drain?: boolean;
  /** Maglev key; default "address:port" (stable across id reuse). */
  key?: string;
}

export interface HealthCheckerOptions {
  /** State before any check. Default 'down' (no flows until a target has proven itself). */
  initialState?: HealthState;
  /** Each interval is scaled by a uniform factor in [1 - jitter, 1 + jitter]. Default 0.1; 0 disables. */
  jitter?: number;
  /** The first check of each target starts after a uniform delay in [0, firstCheckSpreadMs). Default: the target's interval x jitter. */
  firstCheckSpreadMs?: number;
  /** How often effective weights are recomputed while some target is ramping. Default 100 ms. */
  tickMs?: number;
  /** Monotonic clock in ms (tests may inject one). Default performance.now. */
  now?: () => number;
  /** Uniform [0, 1) source for jitter. Default Math.random. */
  random?: () => number;
}

/** Per-target status for the admin API (a snapshot; plain data). */
export interface TargetStatus {
  id: number;
  address: string;
  port: number;
  type: HealthCheckType;
  state: HealthState;
  draining: boolean;
  /** Result of the last completed check; null before the first. */
  lastResult: 'ok' | 'fail' | null;
  /** Why the last failed check failed; null after a success. */
  lastError: string | null;
  consecutiveSuccesses: number;
  consecutiveFailures: number;
  /** Completed checks since start. */
  checks: number;
  /** Duration of the last completed check, ms; null before the first. */
  lastCheckDurationMs: number | null;
  /** Wall-clock time (ms since epoch) the last check completed; null before the first. */
  lastCheckAt: number | null;
  /** Wall-clock time of the last UP/DOWN transition; null if none yet. */
  lastTransitionAt: number | null;
  configuredWeight: number;
  effectiveWeight: number;
  /** Time left of the slow-start ramp, ms (0 when not ramping). */
  slowStartRemainingMs: number;
}

export interface CheckResult {
  id: number;
  ok: boolean;
  error: string | null;
  durationMs: number;
  /** The target's completed checks including this one. */
  checks: number;
}

export interface Transition {
  id: number;
  from: HealthState;
  to: HealthState;
  /** The target's completed checks when it changed state. */
  checks: number;
  /** The error of the check that caused a DOWN transition. */
  error: string | null;
}

type Listener<T> = (v: T) => void;

/** How long a passed TLS check waits for the server to close after our close_notify. */
const TLS_CLOSE_GRACE_MS = 1000;

// Per-target mutable state. Control plane, so a class per target is fine.
class TargetEntry {
  state: HealthState;
  draining: boolean;
  lastResult: 'ok' | 'fail' | null = null;
  lastError: string | null = null;
  okRun = 0;
  failRun = 0;
  checks = 0;
  lastDuration: number | null = null;
  lastCheckAt: number | null = null;
  lastTransitionAt: number | null = null;
  /** Monotonic time the slow-start ramp began; -1 when not ramping. */
  rampStart = -1;
  timer: NodeJS.Timeout | null = null;
  /** Cancels the check in flight (destroys its socket); null when idle. */
  abort: (() => void) | null = null;
  constructor(readonly target: HealthTarget, readonly key: string, initial: HealthState) {
    this.state = initial;
    this.draining = target.drain === true;
  }
}

function isPosInt(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) > 0;
}

function validateTargets(targets: readonly HealthTarget[]): void {
  if (!Array.isArray(targets)) throw new TypeError('health: targets must be an array');
  const ids = new Set<number>(), keys = new Set<string>();
  targets.forEach((t, i) => {
    const w = `health: targets[${i}]`;
    if (t === null || typeof t !== 'object') throw new TypeError(`${w} must be an object { id, address, port, weight, check }`);
    if (!Number.isInteger(t.id) || t.id < 0 || t.id > 0x7fffffff) throw new RangeError(`${w}.id must be an integer from 0 to 2147483647, got ${t.id}`);
    if (ids.has(t.id)) throw new RangeError(`${w}.id ${t.id} is used by another target`);
    ids.add(t.id);
    if (typeof t.address !== 'string' || t.address.length === 0) throw new TypeError(`${w}.address must be a non-empty host name or IP address`);
    if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65535) throw new RangeError(`${w}.port must be an integer from 1 to 65535, got ${t.port}`);
    if (!Number.isInteger(t.weight) || t.weight < 0 || t.weight > MAGLEV_MAX_WEIGHT) {
      throw new RangeError(`${w}.weight must be an integer from 0 to ${MAGLEV_MAX_WEIGHT}, got ${t.weight}`);
    }
    const key = t.key ?? `${t.address}:${t.port}`;
    if (keys.has(key)) throw new RangeError(`${w}: key "${key}" is used by another target (give each a distinct key or address:port)`);
    keys.add(key);
    if (t.slowStartMs !== undefined && !(Number.isFinite(t.slowStartMs) && t.slowStartMs >= 0)) {
      throw new RangeError(`${w}.slowStartMs must be a non-negative number of milliseconds, got ${t.slowStartMs}`);
    }
    const c = t.check;
    if (c === null || typeof c !== 'object') throw new TypeError(`${w}.check must be an object { type, intervalMs, timeoutMs, rise, fall }`);
    if (c.type !== 'tcp' && c.type !== 'http' && c.type !== 'tls') throw new TypeError(`${w}.check.type must be 'tcp', 'http' or 'tls', got ${String(c.type)}`);
    if (!isPosInt(c.intervalMs)) throw new RangeError(`${w}.check.intervalMs must be a positive integer, got ${c.intervalMs}`);
    if (!isPosInt(c.timeoutMs)) throw new RangeError(`${w}.check.timeoutMs must be a positive integer, got ${c.timeoutMs}`);
    if (!isPosInt(c.rise)) throw new RangeError(`${w}.check.rise must be a positive integer, got ${c.rise}`);
    if (!isPosInt(c.fall)) throw new RangeError(`${w}.check.fall must be a positive integer, got ${c.fall}`);
    if (c.type === 'http') {
      if (!c.http || typeof c.http.path !== 'string' || !c.http.path.startsWith('/')) throw new TypeError(`${w}.check.http.path must be a path starting with '/'`);
      const e = c.http.expectStatus;
      const okCode = (n: unknown) => Number.isInteger(n) && (n as number) >= 100 && (n as number) <= 599;
      if (e !== undefined && !(okCode(e) || (Array.isArray(e) && e.length === 2 && okCode(e[0]) && okCode(e[1]) && e[0] <= e[1]))) {
        throw new RangeError(`${w}.check.http.expectStatus must be a status code 100..599 or a range [lo, hi] with lo <= hi, got ${JSON.stringify(e)}`);
      }
    }
  });
}

function errText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

/**
 * Runs the health checks of a set of targets and maintains their effective
 * weights. Call start(); read effectiveWeights() for the first table build,
 * then rebuild on every onChange. stop() cancels every timer and socket.
 */
export class HealthChecker {
  private readonly entries = new Map<number, TargetEntry>();
  private readonly changeListeners: Array<Listener<Map<number, number>>> = [];
  private readonly transitionListeners: Array<Listener<Transition>> = [];
  private readonly checkListeners: Array<Listener<CheckResult>> = [];
  private readonly jitter: number;
  private readonly firstSpread: number | undefined;
  private readonly tickMs: number;
  private readonly now: () => number;
  private readonly random: () => number;
  private tickTimer: NodeJS.Timeout | null = null;
  private running = false;
  /** Weights last reported through onChange (or at start), to emit only real changes. */
  private lastWeights = new Map<number, number>();

  constructor(targets: readonly HealthTarget[], opts: HealthCheckerOptions = {}) {
    validateTargets(targets);
    const initial = opts.initialState ?? 'down';
    if (initial !== 'up' && initial !== 'down') throw new TypeError(`health: initialState must be 'up' or 'down', got ${String(initial)}`);
    this.jitter = opts.jitter ?? 0.1;
    if (!(this.jitter >= 0 && this.jitter < 1)) throw new RangeError(`health: jitter must be a fraction in [0, 1), got ${opts.jitter}`);
    this.firstSpread = opts.firstCheckSpreadMs;
    if (this.firstSpread !== undefined && !(this.firstSpread >= 0)) throw new RangeError(`health: firstCheckSpreadMs must be >= 0, got ${this.firstSpread}`);
    this.tickMs = opts.tickMs ?? 100;
    if (!isPosInt(this.tickMs)) throw new RangeError(`health: tickMs must be a positive integer, got ${opts.tickMs}`);
    this.now = opts.now ?? (() => performance.now());
    this.random = opts.random ?? Math.random;
    for (const t of targets) this.entries.set(t.id, new TargetEntry(t, t.key ?? `${t.address}:${t.port}`, initial));
    this.lastWeights = this.effectiveWeights();
  }

  /** Starts checking every target. Does not emit onChange: build the first table from effectiveWeights(). */
  start(): void {
    if (this.running) return;
    this.running = true;
    for (const e of this.entries.values()) {
      const spread = this.firstSpread ?? e.target.check.intervalMs * this.jitter;
      this.schedule(e, this.random() * spread);
    }
  }

  /** Cancels every timer and every check in flight; no callback fires afterwards. Idempotent. */
  stop(): void {
    this.running = false;
    for (const e of this.entries.values()) {
      if (e.timer) clearTimeout(e.timer);
      e.timer = null;
      const abort = e.abort;
      e.abort = null;
      if (abort) abort();
    }
    if (this.tickTimer) clearInterval(this.tickTimer);
    this.tickTimer = null;
  }

  /** Called with the new effective weights (a fresh Map) whenever any of them changes. Returns an unsubscribe function. */
  onChange(fn: (weights: Map<number, number>) => void): () => void {
    return subscribe(this.changeListeners, fn);
  }

  /** Called on every UP/DOWN transition (before the onChange it causes). */
  onTransition(fn: (t: Transition) => void): () => void {
    return subscribe(this.transitionListeners, fn);
  }

  /** Called after every completed check (for metrics, logs and tests). */
  onCheck(fn: (r: CheckResult) => void): () => void {
    return subscribe(this.checkListeners, fn);
  }

  /** Effective weight of every target, by id, now. */
  effectiveWeights(): Map<number, number> {
    const out = new Map<number, number>();
    const now = this.now();
    for (const [id, e] of this.entries) out.set(id, this.weightOf(e, now));
    return out;
  }

  /** The targets as Maglev backends with their effective weights (weight 0: no new flows). */
  maglevBackends(): MaglevBackend[] {
    const now = this.now();
    const out: MaglevBackend[] = [];
    for (const [id, e] of this.entries) out.push({ id, weight: this.weightOf(e, now), key: e.key });
    return out;
  }

  /** Starts or ends draining a target: its effective weight is 0 while draining, its state and checks unchanged. */
  setDrain(id: number, drain: boolean): void {
    const e = this.entry(id);
    e.draining = drain;
    this.recompute();
  }

  /** Status of one target for the admin API. */
  status(id: number): TargetStatus {
    return this.statusOf(this.entry(id), this.now());
  }

  /** Status of every target, in configuration order. */
  statuses(): TargetStatus[] {
    const now = this.now();
    return [...this.entries.values()].map((e) => this.statusOf(e, now));
  }

  // ---- internals ----

  private entry(id: number): TargetEntry {
    const e = this.entries.get(id);
    if (!e) throw new RangeError(`health: no target with id ${id}`);
    return e;
  }

  private statusOf(e: TargetEntry, now: number): TargetStatus {
    const t = e.target;
    const ramp = this.rampRemaining(e, now);
    return {
      id: t.id, address: t.address, port: t.port, type: t.check.type, state: e.state, draining: e.draining,
      lastResult: e.lastResult, lastError: e.lastError, consecutiveSuccesses: e.okRun, consecutiveFailures: e.failRun,
      checks: e.checks, lastCheckDurationMs: e.lastDuration, lastCheckAt: e.lastCheckAt, lastTransitionAt: e.lastTransitionAt,
      configuredWeight: t.weight, effectiveWeight: this.weightOf(e, now), slowStartRemainingMs: ramp,
    };
  }

  private rampRemaining(e: TargetEntry, now: number): number {
    if (e.rampStart < 0) return 0;
    const left = (e.target.slowStartMs ?? 0) - (now - e.rampStart);
    return left > 0 ? left : 0;
  }

  private weightOf(e: TargetEntry, now: number): number {
    const w = e.target.weight;
    if (e.state === 'down' || e.draining || w === 0) return 0;
    const ss = e.target.slowStartMs ?? 0;
    if (e.rampStart < 0 || ss <= 0) return w;
    const f = (now - e.rampStart) / ss;
    if (f >= 1) return w;
    // Linear from 1 at the transition to w at the end; integer because
    // Maglev weights are integers. Never 0: an UP target must get flows.
    return Math.min(w, 1 + Math.floor((w - 1) * (f > 0 ? f : 0)));
  }

  private schedule(e: TargetEntry, delay: number): void {
    if (!this.running) return;
    e.timer = setTimeout(() => {
      e.timer = null;
      this.runCheck(e);
    }, Math.max(0, Math.round(delay)));
  }

  private nextDelay(e: TargetEntry): number {
    const base = e.target.check.intervalMs;
    return base * (1 - this.jitter + 2 * this.jitter * this.random());
  }

  private runCheck(e: TargetEntry): void {
    if (!this.running || e.abort) return; // never two checks of one target at once
    const t0 = this.now();
    let settled = false;
    const done = (error: string | null) => {
      if (settled) return;
      settled = true;
      e.abort = null;
      if (!this.running) return;
      this.record(e, error, this.now() - t0);
      this.schedule(e, this.nextDelay(e));
    };
    const abort = probe(e.target, done);
    // probe may settle synchronously (never in practice, but keep the invariant).
    if (!settled) {
      e.abort = () => {
        settled = true;
        abort();
      };
    }
  }

  private record(e: TargetEntry, error: string | null, durationMs: number): void {
    const ok = error === null;
    e.checks++;
    e.lastResult = ok ? 'ok' : 'fail';
    e.lastError = error;
    e.lastDuration = durationMs;
    e.lastCheckAt = Date.now();
    let transition: Transition | null = null;
    if (ok) {
      e.okRun++;
      e.failRun = 0;
      if (e.state === 'down' && e.okRun >= e.target.check.rise) {
        e.state = 'up';
        e.rampStart = (e.target.slowStartMs ?? 0) > 0 ? this.now() : -1;
        transition = { id: e.target.id, from: 'down', to: 'up', checks: e.checks, error: null };
      }
    } else {
      e.failRun++;
      e.okRun = 0;
      if (e.state === 'up' && e.failRun >= e.target.check.fall) {
        e.state = 'down';
        e.rampStart = -1;
        transition = { id: e.target.id, from: 'up', to: 'down', checks: e.checks, error };
      }
    }
    if (transition) e.lastTransitionAt = e.lastCheckAt;
    emit(this.checkListeners, { id: e.target.id, ok, error, durationMs, checks: e.checks });
    if (transition) emit(this.transitionListeners, transition);
    this.recompute();
  }

  /** Emits onChange if any effective weight differs from the last emitted; keeps the ramp tick running while needed. */
  private recompute(): void {
    const now = this.now();
    let ramping = false;
    for (const e of this.entries.values()) {
      if (e.rampStart >= 0) {
        if (this.rampRemaining(e, now) > 0) ramping = true;
        else e.rampStart = -1;
      }
    }
    const w = this.effectiveWeights();
    let changed = w.size !== this.lastWeights.size;
    if (!changed) for (const [id, v] of w) if (this.lastWeights.get(id) !== v) { changed = true; break; }
    if (changed) {
      this.lastWeights = w;
      emit(this.changeListeners, new Map(w));
    }
    if (ramping && this.running && !this.tickTimer) {
      this.tickTimer = setInterval(() => this.recompute(), this.tickMs);
    } else if (!ramping && this.tickTimer) {
      clearInterval(this.tickTimer);
      this.tickTimer = null;
    }
  }
}

function subscribe<T>(list: Array<Listener<T>>, fn: Listener<T>): () => void {
  list.push(fn);
  return () => {
    const i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  };
}

function emit<T>(list: ReadonlyArray<Listener<T>>, v: T): void {
  // A throwing listener must not stop the checker or the other listeners.
  for (const fn of list.slice()) {
    try {
      fn(v);
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}

/**
 * Starts one check of `t`; calls done(null) on success or done(reason) on
 * failure, exactly once, within the timeout. Returns a function that aborts
 * it (destroying the socket) without calling done.
 */
export function probe(t: HealthTarget, done: (error: string | null) => void): () => void {
  const c = t.check;
  let finished = false;
  let cleanup: () => void = () => {};
  const timer = setTimeout(() => finish(`timeout after ${c.timeoutMs} ms`), c.timeoutMs);
  function finish(error: string | null): void {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    cleanup();
    done(error);
  }
  if (c.type === 'tcp') {
    const sock = net.connect({ host: t.address, port: t.port });
    cleanup = () => sock.destroy();
    sock.once('connect', () => finish(null));
    sock.on('error', (err) => finish(errText(err))); // `on`: a late error after destroy must not go unhandled
  } else if (c.type === 'tls') {
    const o = c.tls ?? {};
    // RFC 6066 §3: SNI carries a host name, never an IP literal.
    const servername = o.servername ?? (net.isIP(t.address) === 0 ? t.address : undefined);
    const sock = tls.connect({
      host: t.address, port: t.port, servername, rejectUnauthorized: o.rejectUnauthorized ?? true, ca: o.ca,
    });
    cleanup = () => sock.destroy();
    // 'secureConnect' fires after the handshake completed and, with
    // rejectUnauthorized, after the chain and name verified.
    sock.once('secureConnect', () => {
      // Close politely: end() flushes our Finished and a close_notify
      // (RFC 8446 §6.1) first; a bare destroy() would cut the handshake
      // short on the server's side, which then logs a failed handshake for
      // every check. The socket closes on the server's FIN, or is destroyed
      // after a grace period; stop() does not wait for it.
      cleanup = () => {
        sock.end();
        setTimeout(() => sock.destroy(), TLS_CLOSE_GRACE_MS).unref();
      };
      finish(null);
    });
    sock.on('error', (err) => finish(`tls: ${errText(err)}`));
    sock.once('close', () => finish('tls: connection closed before the handshake completed'));
  } else {
    const h = c.http!;
    const [lo, hi] = h.expectStatus === undefined ? [200, 399] : typeof h.expectStatus === 'number' ? [h.expectStatus, h.expectStatus] : h.expectStatus;
    const req = http.request({
      host: t.address, port: t.port, method: 'GET', path: h.path, agent: false,
      headers: { host: h.host ?? (net.isIPv6(t.address) ? `[${t.address}]:${t.port}` : `${t.address}:${t.port}`), connection: 'close', 'user-agent': 'portcullis-health' },
    });
    cleanup = () => req.destroy();
    req.once('response', (res) => {
      const s = res.statusCode ?? 0;
      // The status line is the verdict; the body is not read (HAProxy's
      // httpchk without "http-check expect" does the same).
      res.on('error', () => {}); // destroyed below; its abort is not a finding
      res.resume();
      finish(s >= lo && s <= hi ? null : `http: status ${s}, expected ${lo === hi ? lo : `${lo}-${hi}`}`);
    });
    req.on('error', (err) => finish(`http: ${errText(err)}`));
    req.end();
  }
  return () => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    cleanup();
  };
}
