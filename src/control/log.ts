// Structured logs: one JSON line per event on stderr (never per packet).

export type Level = 'debug' | 'info' | 'warn' | 'error';
const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export class Logger {
  private readonly min: number;
  constructor(level: Level = 'info', private readonly write: (line: string) => void = (l) => { process.stderr.write(l); }) {
    this.min = RANK[level];
  }
  log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
    if (RANK[level] < this.min) return;
    this.write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }) + '\n');
  }
  debug(msg: string, f?: Record<string, unknown>): void { this.log('debug', msg, f); }
  info(msg: string, f?: Record<string, unknown>): void { this.log('info', msg, f); }
  warn(msg: string, f?: Record<string, unknown>): void { this.log('warn', msg, f); }
  error(msg: string, f?: Record<string, unknown>): void { this.log('error', msg, f); }
}
