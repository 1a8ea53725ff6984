// The admin API (HTTP, JSON) on a Unix socket: the socket's file mode keeps it
// to root, and a Unix socket reaches across network namespaces, so
// `portcullis nat list` works from the host while the appliance runs inside
// a namespace. Endpoints: /healthz, /counters, /nat/mappings, /flows.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { Logger } from './log.js';

export interface AdminTarget {
  counterValues(): Record<string, number>;
  readonly napt: { listMappings(): unknown[] };
  readonly flows: { forEach(cb: (f: unknown) => void): void };
}

const MAX_FLOWS = 10_000;

export class AdminServer {
  private readonly server: http.Server;

  constructor(private readonly target: AdminTarget, readonly socketPath: string, private readonly log: Logger) {
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  listen(): Promise<void> {
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o700 });
    // A socket left by a crashed run would make listen() fail with EADDRINUSE.
    try { if (fs.statSync(this.socketPath).isSocket()) fs.unlinkSync(this.socketPath); } catch { /* absent */ }
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.socketPath, () => {
        fs.chmodSync(this.socketPath, 0o600);
        resolve();
      });
    });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://admin');
    const send = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body) + '\n');
    };
    if (req.method !== 'GET') return send(405, { error: 'only GET' });
    try {
      switch (url.pathname) {
        case '/healthz': return send(200, { ok: true });
        case '/counters': return send(200, this.target.counterValues());
        case '/nat/mappings': return send(200, { mappings: this.target.napt.listMappings() });
        case '/flows': {
          const limit = Math.min(MAX_FLOWS, Math.max(1, Number(url.searchParams.get('limit') ?? 1000) || 1000));
          const flows: unknown[] = [];
          this.target.flows.forEach((f) => { if (flows.length < limit) flows.push(f); });
          return send(200, { flows });
        }
        default: return send(404, { error: `no such endpoint: ${url.pathname}` });
      }
    } catch (err) {
      this.log.error('admin request failed', { path: url.pathname, error: (err as Error).message });
      return send(500, { error: (err as Error).message });
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => {
        try { fs.unlinkSync(this.socketPath); } catch { /* gone */ }
        resolve();
      });
      this.server.closeAllConnections?.();
    });
  }
}

/** GET `p` from the admin socket; resolves with the parsed JSON body. */
export function adminGet(socketPath: string, p: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: p, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => {
        try {
          const j = JSON.parse(body);
          if (res.statusCode !== 200) reject(new Error(`admin API ${p}: ${res.statusCode} ${j.error ?? ''}`));
          else resolve(j);
        } catch {
          reject(new Error(`admin API ${p}: not JSON (${body.slice(0, 80)})`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`admin API ${p}: no answer within 5 s`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') reject(new Error(`no appliance is listening on ${socketPath} (is 'portcullis run' running? pass --socket to name another)`));
      else reject(err);
    });
  });
}
