// A private redis-server for tests and benchmarks: 127.0.0.1 on a free port,
// no persistence (`--save '' --appendonly no`, so a restart comes back empty,
// as a crashed cache would), killed at the end, also when the process exits
// early. Never the system's service.

import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';

const REDIS_BIN = process.env.REDIS_SERVER ?? '/usr/bin/redis-server';
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Resolves once the server answers PING on a fresh connection. */
async function waitPong(port: number, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      let buf = '';
      c.setTimeout(500, () => { c.destroy(); resolve(false); });
      c.on('connect', () => c.write('PING\r\n'));
      c.on('data', (d) => { buf += d.toString('latin1'); if (buf.includes('\r\n')) { c.destroy(); resolve(buf.startsWith('+PONG')); } });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`redis-server on 127.0.0.1:${port} did not answer PING within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export class RedisServer {
  private proc: ChildProcess | null = null;
  log = '';
  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.proc !== null;
  }

  async start(): Promise<void> {
    if (this.proc) return;
    const p = spawn(REDIS_BIN, ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--daemonize', 'no', '--protected-mode', 'yes', '--loglevel', 'warning'], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout!.on('data', (d) => { this.log += d; });
    p.stderr!.on('data', (d) => { this.log += d; });
    live.add(p);
    p.once('exit', () => { live.delete(p); if (this.proc === p) this.proc = null; });
    this.proc = p;
    try {
      await waitPong(this.port, 5000);
    } catch (e) {
      await this.kill();
      throw new Error(`${(e as Error).message}\n${this.log}`);
    }
  }

  /** SIGKILL: the server vanishes as in a crash (clients see the connection reset). */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p) return;
    const gone = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill('SIGKILL');
    await gone;
    this.proc = null;
  }
}

export async function startRedis(): Promise<RedisServer> {
  const s = new RedisServer(await freePort());
  await s.start();
  return s;
}
