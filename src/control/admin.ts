// The admin API (HTTP, JSON), the Prometheus /metrics and the web dashboard.
//
// Two doors to the same routes:
// - a Unix socket (admin.socket, mode 0600): no token. The file mode keeps it
//   to root, and a Unix socket reaches across network namespaces, so
//   `portcullis nat list` (and the container health check) works from the
//   host while the appliance runs inside a namespace.
// - TCP (admin.listen, 127.0.0.1:9180 by default, 'off' to close it): every
//   request needs `Authorization: Bearer <token>` (RFC 6750 2.1), compared in
//   constant time, or gets 401. The only exception is the dashboard's page
//   and its script (GET /, /dashboard, /dashboard.js): static files with no
//   data in them, which ask for the token and send it with each request.
//   The token comes from admin.token, admin.tokenFile, or, when neither is
//   given, is generated at start and written to `admin.token` next to the
//   socket (mode 0600); the log says where (never the token itself).
//
// Endpoints (GET unless said):
//   /healthz            liveness: the control plane answers
//   /readyz             200 once the data path is attached and started, 503 before and while stopping
//   /metrics            Prometheus text format 0.0.4 (src/control/metrics.ts)
//   /counters           every counter as JSON; ?meta=1: names, help, type, drop reason
//   /flows              ?limit=N (table order) or ?top=N (largest by bytes)
//   /nat/mappings       ?q=text (substring of proto, addresses, ports, state), ?limit=N
//   /lb                 services, targets with health, weights, load and queues
//   /guard/blacklist, /guard/scores, /guard/alerts; POST /guard/block {"addr", "duration"}, /guard/unblock {"addr"}
//
// Hostile clients: header size and count, body size, time to send the
// headers and the whole request, idle keep-alive, and the number of
// connections are all bounded; a parse error gets a 400 and the connection
// is closed. Nothing a client sends is kept beyond its request.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import type { Logger } from './log.js';
import { renderMetrics, describeValues, type MetricType } from './metrics.js';
import { parseListen, isLoopback, type ListenAddress } from './listen.js';

export interface AdminFlows {
  forEach(cb: (f: unknown) => void): void;
  /** With these (FlowTable has them), ?top=N scans ids and builds only the N rows it returns. */
  readonly capacity?: number;
  isLive?(id: number): boolean;
  bytes?(id: number, dir: number): number;
  info?(id: number): unknown;
}

export interface AdminTarget {
  counterValues(): Record<string, number>;
  readonly napt: { listMappings(): unknown[] };
  readonly flows: AdminFlows;
  readonly lb?: { status(): unknown } | null;
  /** The connection guard (src/guard/guard.ts): GET /guard/blacklist|scores|alerts, POST /guard/block|unblock. */
  readonly guard?: { handleAdmin(method: string, path: string, query: URLSearchParams, body: unknown): Promise<{ code: number; body: unknown }> } | null;
  /** GET /readyz. Absent: ready whenever the API answers. */
  readiness?(): { ready: boolean; state: string };
}

export interface AdminOptions {
  /** Unix socket path (no token); null or absent: none. */
  socket?: string | null;
  /** host:port, [v6]:port, or 'off' / null / absent: no TCP listener. */
  listen?: string | null;
  /** Bearer token for TCP. */
  token?: string;
  /** File holding the token (first line). */
  tokenFile?: string;
  /** Where a generated token is written (default: admin.token next to the socket). */
  generatedTokenFile?: string;
  /** Time allowed to send the request headers (ms). Default 10 000. */
  headersTimeoutMs?: number;
  /** Time allowed to send the whole request (ms). Default 30 000. */
  requestTimeoutMs?: number;
  /** Idle keep-alive connections are closed after this (ms). Default 5 000. */
  keepAliveTimeoutMs?: number;
  /** How often the timeouts above are checked (ms). Default 1 000. */
  checkIntervalMs?: number;
  /** Concurrent connections per listener. Default 64. */
  maxConnections?: number;
}

/** Largest JSON body a POST may carry. */
export const MAX_BODY = 64 * 1024;
/** Largest request head (request line + headers), bytes; more gets 431. */
export const MAX_HEADER_BYTES = 8 * 1024;
const MAX_HEADERS = 64;
const MAX_FLOWS = 10_000;
const MAX_TOP = 1000;
const TOKEN_RE = /^[\x21-\x7e]{16,1024}$/;

const JSON_HEADERS = {
  'content-type': 'application/json; charset=utf-8',
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
};
// The dashboard fetches nothing but its own script and the API (no CDN, no inline script).
const PAGE_HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'content-security-policy': "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
};

/** Routes and the methods they take (405 lists them in Allow). */
export const ADMIN_ROUTES: Record<string, string[]> = {
  '/healthz': ['GET', 'HEAD'],
  '/readyz': ['GET', 'HEAD'],
  '/metrics': ['GET', 'HEAD'],
  '/counters': ['GET', 'HEAD'],
  '/flows': ['GET', 'HEAD'],
  '/nat/mappings': ['GET', 'HEAD'],
  '/lb': ['GET', 'HEAD'],
  '/guard/blacklist': ['GET', 'HEAD'],
  '/guard/scores': ['GET', 'HEAD'],
  '/guard/alerts': ['GET', 'HEAD'],
  '/guard/block': ['POST'],
  '/guard/unblock': ['POST'],
};
/** The dashboard's static files: served without the token (they hold no data). */
const PUBLIC: Record<string, 'html' | 'js'> = { '/': 'html', '/dashboard': 'html', '/dashboard/': 'html', '/dashboard.js': 'js' };

/** The dashboard's files, read once: beside this module (src/ under tsx), or src/ seen from dist/. */
function loadDashboard(): { html: Buffer; js: Buffer } | null {
  for (const rel of ['./dashboard/', '../../src/control/dashboard/']) {
    try {
      const dir = new URL(rel, import.meta.url);
      return { html: fs.readFileSync(new URL('index.html', dir)), js: fs.readFileSync(new URL('dashboard.js', dir)) };
    } catch { /* try the next place */ }
  }
  return null;
}

/**
 * The TCP token: given, read from a file, or generated (and written to
 * `generatedFile`, mode 0600, replacing what a previous run left).
 */
export function resolveAdminToken(opts: { token?: string; tokenFile?: string; generatedFile: string }, log?: Logger): { token: string; source: 'config' | 'file' | 'generated'; file?: string } {
  if (opts.token !== undefined) {
    if (!TOKEN_RE.test(opts.token)) throw new Error('admin.token: expected 16 to 1024 printable ASCII characters without spaces');
    return { token: opts.token, source: 'config' };
  }
  if (opts.tokenFile !== undefined) {
    let text: string;
    try {
      text = fs.readFileSync(opts.tokenFile, 'utf8');
    } catch (err) {
      throw new Error(`admin.tokenFile: cannot read ${opts.tokenFile}: ${(err as Error).message}`);
    }
    const token = text.split(/\r?\n/)[0].trim();
    if (!TOKEN_RE.test(token)) throw new Error(`admin.tokenFile ${opts.tokenFile}: the first line must be 16 to 1024 printable ASCII characters without spaces`);
    try {
      if ((fs.statSync(opts.tokenFile).mode & 0o077) !== 0) log?.warn('admin token file is readable by others than its owner (chmod 600 it)', { file: opts.tokenFile });
    } catch { /* read above; a race is harmless here */ }
    return { token, source: 'file', file: opts.tokenFile };
  }
  const token = crypto.randomBytes(32).toString('base64url');
  const file = opts.generatedFile;
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  // A fresh file, so the mode applies (writeFile keeps the mode of an existing one).
  try { fs.unlinkSync(file); } catch { /* absent */ }
  fs.writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' });
  return { token, source: 'generated', file };
}

/** Constant-time comparison (both sides hashed first, so lengths leak nothing either). */
function sameToken(given: string, want: Buffer): boolean {
  const h = crypto.createHash('sha256').update(given).digest();
  return crypto.timingSafeEqual(h, want);
}

type Send = (code: number, body: unknown, headers?: Record<string, string>) => void;

export class AdminServer {
  private readonly unix: http.Server | null;
  private readonly tcp: http.Server | null;
  readonly socketPath: string | null;
  readonly listenAddress: ListenAddress | null;
  private tokenHash: Buffer | null = null;
  private readonly dashboard = loadDashboard();
  /** Where the token came from, once listen() resolved it. */
  tokenInfo: { source: 'config' | 'file' | 'generated'; file?: string } | null = null;
  /** Requests refused for a missing or wrong token. */
  refused = 0;

  private readonly opts: AdminOptions;

  constructor(private readonly target: AdminTarget, opts: AdminOptions | string, private readonly log: Logger) {
    const o: AdminOptions = typeof opts === 'string' ? { socket: opts } : opts;
    this.opts = o;
    this.socketPath = o.socket ?? null;
    this.listenAddress = o.listen ? parseListen(o.listen) : null;
    this.unix = this.socketPath !== null ? this.makeServer(false) : null;
    this.tcp = this.listenAddress !== null ? this.makeServer(true) : null;
  }

  private makeServer(auth: boolean): http.Server {
    const o = this.opts;
    const s = http.createServer({
      maxHeaderSize: MAX_HEADER_BYTES,
      headersTimeout: o.headersTimeoutMs ?? 10_000,
      requestTimeout: o.requestTimeoutMs ?? 30_000,
      keepAliveTimeout: o.keepAliveTimeoutMs ?? 5_000,
      connectionsCheckingInterval: o.checkIntervalMs ?? 1_000,
    }, (req, res) => this.handle(req, res, auth));
    s.maxHeadersCount = MAX_HEADERS;
    s.maxConnections = o.maxConnections ?? 64;
    s.maxRequestsPerSocket = 1000;
    // A connection that goes quiet (after its request, or never sending one) is closed.
    s.setTimeout((o.requestTimeoutMs ?? 30_000) + 1000, (sock) => sock.destroy());
    s.on('clientError', (err: NodeJS.ErrnoException, sock: net.Socket) => this.onClientError(err, sock));
    return s;
  }

  /** TCP address actually bound (port 0 picks one), or null. */
  address(): net.AddressInfo | null {
    const a = this.tcp?.address();
    return a && typeof a === 'object' ? a : null;
  }

  async listen(): Promise<void> {
    if (this.tcp !== null) {
      const o = this.opts;
      const generatedFile = o.generatedTokenFile ?? path.join(path.dirname(this.socketPath ?? '/run/portcullis/admin.sock'), 'admin.token');
      const t = resolveAdminToken({ token: o.token, tokenFile: o.tokenFile, generatedFile }, this.log);
      this.tokenHash = crypto.createHash('sha256').update(t.token).digest();
      this.tokenInfo = { source: t.source, file: t.file };
    }
    if (this.unix !== null) {
      const sp = this.socketPath!;
      fs.mkdirSync(path.dirname(sp), { recursive: true, mode: 0o700 });
      // A socket left by a crashed run would make listen() fail with EADDRINUSE.
      try { if (fs.statSync(sp).isSocket()) fs.unlinkSync(sp); } catch { /* absent */ }
      await new Promise<void>((resolve, reject) => {
        this.unix!.once('error', reject);
        this.unix!.listen(sp, () => {
          this.unix!.off('error', reject);
          fs.chmodSync(sp, 0o600);
          resolve();
        });
      });
    }
    if (this.tcp !== null) {
      const a = this.listenAddress!;
      await new Promise<void>((resolve, reject) => {
        const onErr = (e: NodeJS.ErrnoException) => reject(new Error(`admin.listen ${fmtAddr(a)}: ${e.code === 'EADDRINUSE' ? 'the address is in use' : e.code === 'EADDRNOTAVAIL' ? 'no such local address' : e.message} (set admin.listen to another host:port, or 'off')`));
        this.tcp!.once('error', onErr);
        this.tcp!.listen({ host: a.host, port: a.port, exclusive: true }, () => {
          this.tcp!.off('error', onErr);
          resolve();
        });
      }).catch(async (e: unknown) => {
        await this.close();
        throw e;
      });
      const bound = this.address()!;
      const info = this.tokenInfo!;
      this.log.info('admin API listening', {
        address: fmtAddr({ host: bound.address, port: bound.port }), dashboard: `http://${fmtAddr({ host: bound.address, port: bound.port })}/`,
        token: info.source === 'config' ? 'from admin.token' : info.source === 'file' ? `from ${info.file}` : `generated, in ${info.file}`,
        socket: this.socketPath,
      });
      if (!isLoopback(a.host)) this.log.warn('admin API reachable from other hosts: keep the token secret and the port firewalled (it speaks plain HTTP)', { address: fmtAddr(a) });
    }
    if (!this.dashboard) this.log.warn('dashboard files not found (src/control/dashboard/); the API works, the page does not');
  }

  /** Garbage, oversized heads, timeouts: one clear status line, then the connection goes. */
  private onClientError(err: NodeJS.ErrnoException, sock: net.Socket): void {
    const code = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const busy = (sock as net.Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
    if (sock.writable && !busy && err.code !== 'ECONNRESET') {
      const why = code === 431 ? `request head larger than ${MAX_HEADER_BYTES} bytes or more than ${MAX_HEADERS} headers`
        : code === 408 ? 'request not received in time' : `not an HTTP/1.1 request (${err.code ?? err.message})`;
      const body = JSON.stringify({ error: why }) + '\n';
      sock.end(`HTTP/1.1 ${code} ${http.STATUS_CODES[code]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      setTimeout(() => sock.destroy(), 1000).unref();
    } else {
      sock.destroy();
    }
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse, auth: boolean): void {
    const send: Send = (code, body, headers) => {
      if (res.headersSent) return;
      const text = JSON.stringify(body) + '\n';
      res.writeHead(code, { ...JSON_HEADERS, 'content-length': String(Buffer.byteLength(text)), ...headers });
      res.end(text);
    };
    try {
      const url = new URL(req.url ?? '/', 'http://admin');
      const p = url.pathname;
      const method = req.method ?? 'GET';
      const page = PUBLIC[p];
      if (page !== undefined) {
        if (method !== 'GET' && method !== 'HEAD') return this.drainThen(req, res, () => send(405, { error: `${p}: GET only` }, { allow: 'GET, HEAD' }));
        return this.servePage(res, page, send);
      }
      if (auth && !this.authorised(req)) {
        this.refused++;
        this.log.warn('admin request refused: missing or wrong bearer token', { remote: req.socket.remoteAddress, method, path: p.slice(0, 200) });
        return this.drainThen(req, res, () => send(401, { error: 'missing or wrong bearer token: send Authorization: Bearer <token> (admin.token, admin.tokenFile, or the admin.token file the start-up log names)' }, { 'www-authenticate': 'Bearer realm="portcullis"' }));
      }
      const allowed = ADMIN_ROUTES[p];
      if (allowed === undefined) return this.drainThen(req, res, () => send(404, { error: `no such endpoint: ${p.slice(0, 200)}` }));
      if (!allowed.includes(method)) return this.drainThen(req, res, () => send(405, { error: `${p}: ${allowed.filter((m) => m !== 'HEAD').join(' or ')} only` }, { allow: allowed.join(', ') }));
      if (method === 'POST') {
        return this.readJson(req, res, send, (body) => this.route(method, p, url, body, res, send));
      }
      this.drainThen(req, res, () => this.route(method, p, url, undefined, res, send));
    } catch (err) {
      this.fail(err as Error, req.url ?? '', send);
    }
  }

  private authorised(req: http.IncomingMessage): boolean {
    const h = req.headers.authorization;
    if (typeof h !== 'string' || this.tokenHash === null) return false;
    const m = /^Bearer +([\x21-\x7e]{1,1024}) *$/i.exec(h);
    return m !== null && sameToken(m[1], this.tokenHash);
  }

  private fail(err: Error, p: string, send: Send): void {
    this.log.error('admin request failed', { path: p.slice(0, 200), error: err.message });
    send(500, { error: err.message });
  }

  private route(method: string, p: string, url: URL, body: unknown, res: http.ServerResponse, send: Send): void {
    try {
      const q = url.searchParams;
      switch (p) {
        case '/healthz': return send(200, { ok: true });
        case '/readyz': {
          const r = this.target.readiness ? this.target.readiness() : { ready: true, state: 'running' };
          return send(r.ready ? 200 : 503, r);
        }
        case '/metrics': {
          const text = this.metricsText();
          res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'cache-control': 'no-store', 'content-length': String(Buffer.byteLength(text)) });
          res.end(text);
          return;
        }
        case '/counters': {
          const v = this.target.counterValues();
          return send(200, q.get('meta') ? { counters: describeValues(v) } : v);
        }
        case '/nat/mappings': return send(200, this.mappings(q));
        case '/lb': return send(200, { services: this.target.lb ? this.target.lb.status() : [] });
        // `now`: the flow table's clock (seconds), for lastSeen and expiresAt.
        case '/flows': return send(200, { now: Date.now() / 1000, flows: this.flowRows(q) });
        default: break;
      }
      if (p.startsWith('/guard/')) {
        const g = this.target.guard;
        if (!g) return send(404, { error: 'the connection guard is not enabled (add a guard section to the configuration)' });
        g.handleAdmin(method === 'HEAD' ? 'GET' : method, p, q, body).then((r) => send(r.code, r.body), (err: Error) => this.fail(err, p, send));
        return;
      }
      send(404, { error: `no such endpoint: ${p}` });
    } catch (err) {
      this.fail(err as Error, p, send);
    }
  }

  /** Counters, plus readiness and the distributor's targets as gauges. */
  metricsText(): string {
    const extra: { name: string; type: MetricType; help: string; labels?: [string, string][]; value: number }[] = [];
    const r = this.target.readiness ? this.target.readiness() : { ready: true, state: 'running' };
    extra.push({ name: 'portcullis_ready', type: 'gauge', help: '1 when the data path is attached and started (GET /readyz), else 0', value: r.ready ? 1 : 0 });
    const services = this.target.lb ? this.target.lb.status() : [];
    if (Array.isArray(services)) {
      for (const s of services as { name?: unknown; targets?: unknown }[]) {
        if (!Array.isArray(s.targets)) continue;
        for (const t of s.targets as { address?: unknown; port?: unknown; state?: unknown; effectiveWeight?: unknown; flows?: unknown; active?: unknown; queued?: unknown }[]) {
          const labels: [string, string][] = [['service', String(s.name)], ['target', `${String(t.address)}:${String(t.port)}`]];
          extra.push({ name: 'portcullis_lb_target_up', type: 'gauge', help: 'distributor target health: 1 up, 0 down (unchecked targets count as up)', labels, value: t.state === 'down' ? 0 : 1 });
          if (typeof t.effectiveWeight === 'number') extra.push({ name: 'portcullis_lb_target_weight', type: 'gauge', help: 'distributor target weight in effect (health, slow start and drain applied)', labels, value: t.effectiveWeight });
          if (typeof t.flows === 'number') extra.push({ name: 'portcullis_lb_target_flows', type: 'gauge', help: 'live flows the distributor sent to the target', labels, value: t.flows });
          if (typeof t.active === 'number') extra.push({ name: 'portcullis_lb_target_active', type: 'gauge', help: 'TLS services: connections open to the target', labels, value: t.active });
          if (typeof t.queued === 'number') extra.push({ name: 'portcullis_lb_target_queued', type: 'gauge', help: 'TLS services: connections waiting in the target\'s queue', labels, value: t.queued });
        }
      }
    }
    extra.push({ name: 'portcullis_admin_refused_total', type: 'counter', help: 'admin API requests refused for a missing or wrong bearer token', value: this.refused });
    return renderMetrics(this.target.counterValues(), extra);
  }

  private mappings(q: URLSearchParams): { mappings: unknown[]; total: number; matched: number } {
    const all = this.target.napt.listMappings();
    const needle = (q.get('q') ?? '').trim().toLowerCase().slice(0, 200);
    const limitArg = q.get('limit');
    const limit = limitArg === null ? Infinity : Math.max(0, Math.floor(Number(limitArg)) || 0);
    const rows = needle === '' ? all : all.filter((m) => mappingText(m).includes(needle));
    return { mappings: rows.length > limit ? rows.slice(0, limit) : rows, total: all.length, matched: rows.length };
  }

  private flowRows(q: URLSearchParams): unknown[] {
    const f = this.target.flows;
    const topArg = q.get('top');
    if (topArg !== null) {
      const n = Math.min(MAX_TOP, Math.max(1, Math.floor(Number(topArg)) || 10));
      return topFlows(f, n);
    }
    const limit = Math.min(MAX_FLOWS, Math.max(1, Number(q.get('limit') ?? 1000) || 1000));
    const flows: unknown[] = [];
    f.forEach((x) => { if (flows.length < limit) flows.push(x); });
    return flows;
  }

  private servePage(res: http.ServerResponse, kind: 'html' | 'js', send: Send): void {
    const d = this.dashboard;
    if (!d) return send(404, { error: 'the dashboard files were not found beside the admin module (src/control/dashboard/)' });
    const body = kind === 'html' ? d.html : d.js;
    res.writeHead(200, { ...PAGE_HEADERS, 'content-type': kind === 'html' ? 'text/html; charset=utf-8' : 'text/javascript; charset=utf-8', 'content-length': String(body.length) });
    res.end(body);
  }

  /** A request without a body we want: discard what it sends (bounded), then answer. */
  private drainThen(req: http.IncomingMessage, res: http.ServerResponse, answer: () => void): void {
    const len = Number(req.headers['content-length'] ?? 0);
    if (len > MAX_BODY) return this.tooLarge(req, res);
    if (req.complete || (len === 0 && req.headers['transfer-encoding'] === undefined)) {
      req.resume();
      return answer();
    }
    let size = 0, over = false;
    req.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_BODY && !over) {
        over = true;
        this.tooLarge(req, res);
      }
    });
    req.on('end', () => { if (!over) answer(); });
    req.on('error', () => { /* the client went away */ });
  }

  private readJson(req: http.IncomingMessage, res: http.ServerResponse, send: Send, cb: (body: unknown) => void): void {
    const len = Number(req.headers['content-length'] ?? 0);
    if (len > MAX_BODY) return this.tooLarge(req, res);
    const chunks: Buffer[] = [];
    let size = 0, over = false;
    req.on('data', (d: Buffer) => {
      if (over) return;
      size += d.length;
      if (size > MAX_BODY) {
        over = true;
        chunks.length = 0;
        this.tooLarge(req, res);
      } else chunks.push(d);
    });
    req.on('error', () => { /* the client went away */ });
    req.on('end', () => {
      if (over) return;
      let body: unknown = undefined;
      if (size > 0) {
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          return send(400, { error: 'the body is not JSON (expected {"addr": "<address or prefix>", "duration": <seconds>})' });
        }
      }
      if (body === null || typeof body !== 'object' || Array.isArray(body)) return send(400, { error: 'expected a JSON object such as {"addr": "198.18.7.9"}' });
      cb(body);
    });
  }

  /**
   * 413, then close. What the client still sends is read and thrown away for
   * a moment (closing with unread data would reset the connection before it
   * reads the answer), never kept.
   */
  private tooLarge(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (!res.headersSent) {
      const text = JSON.stringify({ error: `body larger than ${MAX_BODY} bytes` }) + '\n';
      res.writeHead(413, { ...JSON_HEADERS, connection: 'close', 'content-length': String(Buffer.byteLength(text)) });
      res.end(text);
    }
    req.removeAllListeners('data');
    req.on('data', () => { /* discarded */ });
    req.resume();
    const sock = req.socket;
    setTimeout(() => sock.destroy(), 500).unref();
  }

  close(): Promise<void> {
    const one = (s: http.Server | null, after?: () => void) => new Promise<void>((resolve) => {
      if (s === null || !s.listening) {
        after?.();
        return resolve();
      }
      s.close(() => {
        after?.();
        resolve();
      });
      s.closeAllConnections();
    });
    return Promise.all([
      one(this.unix, () => { if (this.socketPath) try { fs.unlinkSync(this.socketPath); } catch { /* gone */ } }),
      one(this.tcp),
    ]).then(() => undefined);
  }
}

function fmtAddr(a: { host: string; port: number }): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** What ?q= searches in a mapping row: protocol, both endpoints, state and the remotes. */
function mappingText(m: unknown): string {
  const r = m as { proto?: unknown; insideAddress?: unknown; insidePort?: unknown; outsideAddress?: unknown; outsidePort?: unknown; state?: unknown; remotes?: { address?: unknown; port?: unknown }[] };
  let s = `${String(r.proto)} ${String(r.insideAddress)}:${String(r.insidePort)} ${String(r.outsideAddress)}:${String(r.outsidePort)} ${String(r.state)}`;
  if (Array.isArray(r.remotes)) for (const x of r.remotes) s += ` ${String(x.address)}:${String(x.port)}`;
  return s.toLowerCase();
}

/** The n flows with the most bytes (both directions), largest first; only those n rows are built. */
export function topFlows(f: AdminFlows, n: number): unknown[] {
  if (f.capacity !== undefined && f.isLive && f.bytes && f.info) {
    const ids: number[] = [], sizes: number[] = [];
    for (let id = 0; id < f.capacity; id++) {
      if (!f.isLive(id)) continue;
      const b = f.bytes(id, 0) + f.bytes(id, 1);
      if (ids.length === n && b <= sizes[n - 1]) continue;
      // Insertion into a short sorted list: n is small (the dashboard asks for 10).
      let k = ids.length === n ? n - 1 : ids.length;
      while (k > 0 && sizes[k - 1] < b) {
        ids[k] = ids[k - 1];
        sizes[k] = sizes[k - 1];
        k--;
      }
      ids[k] = id;
      sizes[k] = b;
    }
    return ids.map((id) => f.info!(id));
  }
  const all: unknown[] = [];
  f.forEach((x) => all.push(x));
  const bytes = (x: unknown) => {
    const r = x as { bytesFromClient?: number; bytesFromServer?: number };
    return (r.bytesFromClient ?? 0) + (r.bytesFromServer ?? 0);
  };
  return all.sort((a, b) => bytes(b) - bytes(a)).slice(0, n);
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
