// Alerts of the guard's monitor (control plane): each one is a structured
// log line (src/control/log.ts), kept in a bounded ring for the admin API
// (GET /guard/alerts), and optionally POSTed as JSON to a webhook. The
// webhook never holds anything up: alerts wait in a bounded queue (the
// oldest are dropped and counted when it is full), one request is in flight
// at a time with a timeout, and a failed request is retried a bounded number
// of times with doubling back-off.

import type { Logger } from '../control/log.js';

export interface GuardAlert {
  /** When the monitor decided, ms since the epoch. */
  at: number;
  /** ISO 8601 of `at`. */
  time: string;
  /** block: the address was blocked; unblock: a block ended (expiry or by hand); allowlisted: an allow-listed address crossed the threshold and was left alone. */
  action: 'block' | 'unblock' | 'allowlisted';
  addr: string;
  /** The rule that decided ("rate", "total", "concurrent", "incomplete", "suspicious", "manual", "expired"). */
  rule: string;
  score: number;
  /** Nodes whose sensors saw the address. */
  nodes: string[];
  /** Block expiry (ms since the epoch, 0 = until unblocked by hand). */
  until?: number;
  offences?: number;
  /**
   * The interval in which the threshold was crossed: the deltas that crossed
   * it were counted between `from` and `to` (ms since the epoch; the block
   * reaches the data path right after `at`, so at most one interval after
   * the crossing).
   */
  window?: { from: number; to: number };
  /** What the address did in that evaluation (attempts, suspicious fragments, completed, concurrent, ...). */
  detail?: Record<string, number>;
}

export interface AlertOptions {
  log: Logger;
  webhook?: string;
  /** Seconds. */
  timeout?: number;
  retries?: number;
  queue?: number;
  keep?: number;
  /** Injected for tests. */
  fetch?: typeof fetch;
}

export class AlertSink {
  private readonly ring: GuardAlert[] = [];
  private readonly queue: GuardAlert[] = [];
  private busy = false;
  private closed = false;
  private readonly keep: number;
  private readonly maxQueue: number;
  private readonly fetchFn: typeof fetch;
  private pending: Promise<void> | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryWake: (() => void) | null = null;
  readonly c = { alerts: 0, alerts_webhook_sent: 0, alerts_webhook_failed: 0, alerts_webhook_retried: 0, alerts_webhook_dropped: 0 };

  constructor(private readonly opts: AlertOptions) {
    this.keep = opts.keep ?? 1000;
    this.maxQueue = opts.queue ?? 1000;
    this.fetchFn = opts.fetch ?? fetch;
  }

  emit(a: GuardAlert): void {
    this.c.alerts++;
    this.ring.push(a);
    if (this.ring.length > this.keep) this.ring.splice(0, this.ring.length - this.keep);
    this.opts.log.log(a.action === 'block' ? 'warn' : 'info', `guard ${a.action}`, { guard: a });
    if (!this.opts.webhook || this.closed) return;
    this.queue.push(a);
    if (this.queue.length > this.maxQueue) {
      this.queue.shift();
      this.c.alerts_webhook_dropped++;
    }
    this.pump();
  }

  /** The most recent alerts, newest last. */
  recent(limit = this.keep): GuardAlert[] {
    return this.ring.slice(-limit);
  }

  private pump(): void {
    if (this.busy || this.closed || this.queue.length === 0) return;
    this.busy = true;
    const a = this.queue.shift()!;
    this.pending = this.send(a, 0).finally(() => {
      this.busy = false;
      this.pending = null;
      this.pump();
    });
  }

  private async send(a: GuardAlert, attempt: number): Promise<void> {
    const url = this.opts.webhook!;
    try {
      const res = await this.fetchFn(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(a),
        signal: AbortSignal.timeout((this.opts.timeout ?? 2) * 1000),
      });
      // Drain the body so the connection can be reused.
      await res.arrayBuffer().catch(() => undefined);
      if (res.status >= 200 && res.status < 300) {
        this.c.alerts_webhook_sent++;
        return;
      }
      throw new Error(`HTTP ${res.status}`);
    } catch (err) {
      if (this.closed) return;
      if (attempt < (this.opts.retries ?? 3)) {
        this.c.alerts_webhook_retried++;
        await new Promise<void>((r) => { this.retryWake = r; this.retryTimer = setTimeout(r, 250 * 2 ** attempt); this.retryTimer.unref?.(); });
        this.retryTimer = null;
        this.retryWake = null;
        if (this.closed) return;
        return this.send(a, attempt + 1);
      }
      this.c.alerts_webhook_failed++;
      this.opts.log.warn('guard webhook failed', { url, addr: a.addr, action: a.action, error: (err as Error).message });
    }
  }

  /** Waits for the webhook queue to drain (tests, shutdown), at most `ms`. */
  async drain(ms = 5000): Promise<void> {
    const until = Date.now() + ms;
    while ((this.busy || this.queue.length > 0) && Date.now() < until) {
      await (this.pending ?? new Promise((r) => setTimeout(r, 10)));
    }
  }

  close(): void {
    this.closed = true;
    this.queue.length = 0;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryWake?.();
  }

  stats(): Record<string, number> {
    return { ...this.c, alerts_webhook_queued: this.queue.length };
  }
}
