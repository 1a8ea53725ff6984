// The admin API (HTTP, JSON) on a Unix socket: the socket's file mode keeps it
// to root, and a Unix socket reaches across network namespaces, so
// `portcullis nat list` works from the host while the appliance runs inside
// a namespace. Endpoints: /healthz, /counters, /nat/mappings, /flows, and
// the guard's /guard/blacklist, /guard/scores, /guard/alerts (GET) and
// /guard/block, /guard/unblock (POST {"addr": ..., "duration": s}).

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { Logger } from './log.js';

export interface AdminTarget {
  counterValues(): Record<string, number>;
  readonly napt: { listMappings(): unknown[] };
  readonly flows: { forEach(cb: (f: unknown) => void): void };
  readonly lb?: { status(): unknown } | null;
  /** The connection guard (src/guard/guard.ts): GET /guard/blacklist|scores|alerts, POST /guard/block|unblock. */
  readonly guard?: { handleAdmin(method: string, path: string, query: URLSearchParams, body: unknown): Promise<{ code: number; body: unknown }> } | null;
}

/** Largest JSON body a POST may carry. */
const MAX_BODY = 64 * 1024;

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
    if (url.pathname.startsWith('/guard/')) return this.handleGuard(req, url, send);
    if (req.method !== 'GET') return send(405, { error: 'only GET' });
    try {
      switch (url.pathname) {
        case '/healthz': return send(200, { ok: true });
        case '/counters': return send(200, this.target.counterValues());
        case '/nat/mappings': return send(200, { mappings: this.target.napt.listMappings() });
        case '/lb': return send(200, { services: this.target.lb ? this.target.lb.status() : [] });
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

  /** /guard/...: GET, or POST with a small JSON body. */
  private handleGuard(req: http.IncomingMessage, url: URL, send: (code: number, body: unknown) => void): void {
    const g = this.target.guard;
    if (!g) return send(404, { error: 'the connection guard is not enabled (add a guard section to the configuration)' });
    if (req.method !== 'GET' && req.method !== 'POST') return send(405, { error: 'GET or POST' });
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (d: Buffer) => {
      size += d.length;
      if (size <= MAX_BODY) chunks.push(d);
    });
    req.on('end', () => {
      if (size > MAX_BODY) return send(413, { error: `body larger than ${MAX_BODY} bytes` });
      let body: unknown = undefined;
      if (req.method === 'POST' && size > 0) {
        try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch { return send(400, { error: 'the body is not JSON' }); }
      }
      g.handleAdmin(req.method!, url.pathname, url.searchParams, body).then((r) => send(r.code, r.body), (err: Error) => {
        this.log.error('admin request failed', { path: url.pathname, error: err.message });
        send(500, { error: err.message });
      });
    });
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

/** POST `body` as JSON to `p` on the admin socket; resolves with the status and the parsed JSON body. */
export function adminPost(socketPath: string, p: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request({ socketPath, path: p, method: 'POST', timeout: 5000, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        try { resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }); } catch { reject(new Error(`admin API ${p}: not JSON (${text.slice(0, 80)})`)); }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`admin API ${p}: no answer within 5 s`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') reject(new Error(`no appliance is listening on ${socketPath} (is 'portcullis run' running? pass --socket to name another)`));
      else reject(err);
    });
    req.end(data);
  });
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
