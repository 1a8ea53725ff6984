// `portcullis monitor --config FILE`: the guard's monitor as a process of its
// own, for several nodes sharing a Redis bus (guard.bus: redis://…). Every
// node runs its sensor and enforcement table with `guard.monitor: false`;
// this process reads their delta batches from the Redis stream, so an attack
// spread over the nodes is counted as one, decides, and publishes blocks
// (event + snapshot) that every node applies.
//
// Start-up order matters: the blacklist a previous monitor stored is loaded
// before the first delta is consumed (so a blocked address is not blocked
// again as a new offence), and the deltas reader is only started then. While
// Redis is unreachable at start the process waits for it (nothing can arrive
// without it), logging once every few seconds.
//
// Exit codes: 0 stopped (SIGINT/SIGTERM or --duration), 1 runtime error,
// 2 configuration error (the message names the key).

import { loadGuardConfig, GuardConfigError, type GuardConfig } from '../guard/config.js';
import { Monitor } from '../guard/monitor.js';
import { RedisBus } from '../guard/redis-bus.js';
import { Logger } from '../control/log.js';

export interface MonitorCliOptions {
  config: string;
  /** Stop after this many seconds (tests, demos). */
  duration?: number;
  /** Seconds between status lines (bus and monitor counters); 0 = none. */
  stats?: number;
  /** Injected logger (tests). */
  log?: Logger;
  /** Stops the monitor like SIGTERM (tests, embedding). */
  signal?: AbortSignal;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function runMonitor(opts: MonitorCliOptions): Promise<number> {
  let cfg: GuardConfig;
  try {
    cfg = loadGuardConfig(opts.config);
  } catch (err) {
    if (err instanceof GuardConfigError) {
      process.stderr.write(`${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (!cfg.enabled) {
    process.stderr.write(`${opts.config}: guard.enabled is false; nothing to monitor\n`);
    return 2;
  }
  if (cfg.bus === 'embedded') {
    process.stderr.write(`${opts.config}: guard.bus: expected a redis://host:port URL. portcullis monitor serves several nodes over Redis; `
      + `with guard.bus: embedded the monitor runs inside 'portcullis run' (guard.monitor: true)\n`);
    return 2;
  }
  const log = opts.log ?? new Logger('info');
  let bus: RedisBus;
  try {
    bus = new RedisBus({ url: cfg.bus, node: cfg.node, role: 'monitor' });
  } catch (err) {
    process.stderr.write(`${opts.config}: ${(err as Error).message}\n`);
    return 2;
  }
  const monitor = new Monitor(cfg, { log, bus });

  let stop!: () => void;
  const stopped = new Promise<void>((r) => { stop = r; });
  const onSignal = () => stop();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const timers: NodeJS.Timeout[] = [];
  if (opts.duration) timers.push(setTimeout(stop, opts.duration * 1000));
  if (opts.signal) {
    if (opts.signal.aborted) stop();
    else opts.signal.addEventListener('abort', () => stop(), { once: true });
  }
  let stopping = false;
  void stopped.then(() => { stopping = true; });

  try {
    await bus.start();
    let waited = 0;
    while (bus.stats().bus_connected !== 1 && !stopping) {
      if (waited % 5000 === 0) log.warn('guard monitor: Redis not reachable, retrying', { bus: redact(cfg.bus) });
      await Promise.race([sleep(250), stopped]);
      waited += 250;
    }
    if (!stopping) {
      const snap = await bus.loadSnapshot();
      monitor.load(snap);
      bus.onDeltas((b) => monitor.onDeltas(b));
      timers.push(setInterval(() => {
        try { monitor.tick(); } catch (err) { log.error('guard monitor: tick failed', { error: (err as Error).message }); }
      }, cfg.interval * 1000));
      const every = opts.stats ?? 60;
      if (every > 0) timers.push(setInterval(() => log.info('guard monitor stats', { ...bus.stats(), ...monitor.stats() }), every * 1000));
      log.info('guard monitor started', { node: cfg.node, bus: redact(cfg.bus), blocked: monitor.list().length, interval: cfg.interval });
      await stopped;
    }
    log.info('guard monitor stopping', { ...bus.stats(), ...monitor.stats() });
    return 0;
  } finally {
    for (const t of timers) { clearTimeout(t); clearInterval(t); }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    monitor.alerts.close();
    await bus.close();
  }
}

/** The URL without its password, for logs. */
function redact(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}
