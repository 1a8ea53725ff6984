// `portcullis health`: asks a running appliance's admin API for GET /healthz
// and turns the answer into an exit code, for container health checks
// (docker/Dockerfile HEALTHCHECK, docker/compose.yaml) and scripts.
//
// Exit codes: 0 the appliance answered {"ok": true}; 1 it did not (no
// socket, refused, timed out, another status or body: stderr says which);
// 2 usage (bad flags, or --config names a file that is not a valid
// configuration).
//
// A health check runs every few seconds for the life of the container, so
// this stays small: one request with its own deadline, nothing else loaded
// unless --config asks for the socket path from the configuration.

import http from 'node:http';

export const DEFAULT_ADMIN_SOCKET = '/run/portcullis/admin.sock';

export interface HealthOptions {
  /** Admin socket; wins over --config. */
  socket?: string;
  /** Configuration file whose admin.socket names the socket. */
  config?: string;
  /** Deadline for the whole request in milliseconds. */
  timeout: number;
  /** Print nothing on success. */
  quiet?: boolean;
}

export type HealthResult = { ok: true } | { ok: false; reason: string };

/** One GET /healthz over the Unix socket, bounded by timeoutMs; never rejects. */
export function probeHealth(socketPath: string, timeoutMs: number): Promise<HealthResult> {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (r: HealthResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      resolve(r);
    };
    // A deadline on the whole exchange: http's own `timeout` is per idle
    // period, and a peer that trickles bytes would never trip it.
    const timer = setTimeout(() => finish({ ok: false, reason: `no answer from ${socketPath} within ${timeoutMs} ms` }), timeoutMs);
    const req = http.get({ socketPath, path: '/healthz', headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { if (body.length < 4096) body += d; });
      res.on('end', () => {
        if (res.statusCode !== 200) return finish({ ok: false, reason: `GET /healthz answered ${res.statusCode}: ${body.trim().slice(0, 200)}` });
        let j: unknown;
        try { j = JSON.parse(body); } catch { return finish({ ok: false, reason: `GET /healthz answered something other than JSON: ${body.slice(0, 80)}` }); }
        if (j !== null && typeof j === 'object' && (j as { ok?: unknown }).ok === true) return finish({ ok: true });
        finish({ ok: false, reason: `GET /healthz did not say ok: ${body.trim().slice(0, 200)}` });
      });
      res.on('error', (err) => finish({ ok: false, reason: `reading the answer: ${err.message}` }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        finish({ ok: false, reason: `no appliance is listening on ${socketPath} (${err.code}; is 'portcullis run' running? --socket or --config names another socket)` });
      } else {
        finish({ ok: false, reason: `${socketPath}: ${err.message}` });
      }
    });
  });
}

export async function runHealth(opts: HealthOptions): Promise<number> {
  let socketPath = opts.socket;
  if (!socketPath && opts.config) {
    // Loaded only here: the plain --socket check needs no schema.
    const { loadConfig, ConfigError } = await import('../control/config.js');
    try {
      socketPath = loadConfig(opts.config).admin.socket;
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`${err.message}\n`);
        return 2;
      }
      throw err;
    }
  }
  socketPath ??= DEFAULT_ADMIN_SOCKET;
  const r = await probeHealth(socketPath, opts.timeout);
  if (r.ok) {
    if (!opts.quiet) process.stdout.write(`ok ${socketPath}\n`);
    return 0;
  }
  process.stderr.write(`portcullis: unhealthy: ${r.reason}\n`);
  return 1;
}
