// Structured logs: one JSON line per event on stderr (never per packet).
//
// A line is {"time": ISO-8601, "level": ..., "msg": ..., ...fields}. Lines
// below the configured level are not built at all. A field named like one of
// the three fixed keys is written as `_time`, `_level` or `_msg`, so a caller
// cannot forge them. Errors become {name, message, code}, BigInts strings;
// a field that still cannot be serialised (a cycle) costs the fields, never
// the line.
//
// Repeats: a warn or error with the same msg more than `burst` times within
// `windowMs` (a target that keeps failing, a webhook that is down) is
// suppressed, and the next line of that msg that gets through carries
// `repeated: n`, the number suppressed since the last one written. Event
// sources are events (health changes, reloads, admin refusals), never
// packets: nothing on the data path logs.

export type Level = 'debug' | 'info' | 'warn' | 'error';
const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface LoggerOptions {
  /** Lines of one msg (warn, error) allowed per window before they are suppressed. Default 5. */
  burst?: number;
  /** Window of that limit in milliseconds. Default 10 000. */
  windowMs?: number;
  /** Clock (tests). */
  now?: () => number;
}

/** Distinct messages remembered for the repeat limit; past this the memory starts over (bounded). */
const MAX_KEYS = 1024;

interface Repeat { windowStart: number; lines: number; suppressed: number }

export class Logger {
  private min: number;
  private readonly burst: number;
  private readonly windowMs: number;
  private readonly now: () => number;
  private readonly repeats = new Map<string, Repeat>();
  /** Lines suppressed by the repeat limit since the start. */
  suppressed = 0;

  constructor(level: Level = 'info', private readonly write: (line: string) => void = (l) => { process.stderr.write(l); }, opts: LoggerOptions = {}) {
    if (!(level in RANK)) throw new RangeError(`log level must be one of ${Object.keys(RANK).join(', ')}, got ${String(level)}`);
    this.min = RANK[level];
    this.burst = opts.burst ?? 5;
    this.windowMs = opts.windowMs ?? 10_000;
    this.now = opts.now ?? Date.now;
  }

  /** SIGHUP: log.level changes while running (Appliance.reload). */
  setLevel(level: Level): void {
    if (!(level in RANK)) throw new RangeError(`log level must be one of ${Object.keys(RANK).join(', ')}, got ${String(level)}`);
    this.min = RANK[level];
  }

  /** True when lines of `level` are written (skip building costly fields otherwise). */
  enabled(level: Level): boolean {
    return RANK[level] >= this.min;
  }

  log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
    if (RANK[level] < this.min) return;
    const t = this.now();
    let repeated = 0;
    if (RANK[level] >= RANK.warn) {
      let r = this.repeats.get(msg);
      if (r === undefined) {
        if (this.repeats.size >= MAX_KEYS) this.repeats.clear();
        r = { windowStart: t, lines: 0, suppressed: 0 };
        this.repeats.set(msg, r);
      }
      if (t - r.windowStart >= this.windowMs) {
        r.windowStart = t;
        r.lines = 0;
      }
      if (r.lines >= this.burst) {
        r.suppressed++;
        this.suppressed++;
        return;
      }
      r.lines++;
      repeated = r.suppressed;
      r.suppressed = 0;
    }
    const o: Record<string, unknown> = { time: new Date(t).toISOString(), level, msg };
    for (const k of Object.keys(fields)) o[k === 'time' || k === 'level' || k === 'msg' ? `_${k}` : k] = fields[k];
    if (repeated > 0) o.repeated = repeated;
    let line: string;
    try {
      line = JSON.stringify(o, replacer);
    } catch (err) {
      line = JSON.stringify({ time: o.time, level, msg, fieldsError: `fields not serialisable: ${(err as Error).message}` });
    }
    this.write(line + '\n');
  }

  debug(msg: string, f?: Record<string, unknown>): void { this.log('debug', msg, f); }
  info(msg: string, f?: Record<string, unknown>): void { this.log('info', msg, f); }
  warn(msg: string, f?: Record<string, unknown>): void { this.log('warn', msg, f); }
  error(msg: string, f?: Record<string, unknown>): void { this.log('error', msg, f); }
}

function replacer(_key: string, v: unknown): unknown {
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof Error) {
    const e = v as NodeJS.ErrnoException;
    return e.code === undefined ? { name: e.name, message: e.message } : { name: e.name, message: e.message, code: e.code };
  }
  return v;
}
