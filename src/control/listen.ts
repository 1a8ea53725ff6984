// `host:port` listen addresses of the admin API (config `admin.listen`):
// an IPv4 literal (`127.0.0.1:9180`), an IPv6 literal in brackets
// (`[::1]:9180`, RFC 3986 3.2.2), or `off`. No host names: what the API
// binds to must not depend on a resolver.

import net from 'node:net';

export interface ListenAddress { host: string; port: number }

/** Parses `host:port` / `[v6]:port` / `off` (null); throws with what was expected. */
export function parseListen(s: string): ListenAddress | null {
  if (s === 'off') return null;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/.exec(s);
  if (!m) throw new Error(`expected host:port with an IPv4 or [IPv6] literal (127.0.0.1:9180, [::1]:9180) or 'off', got '${s}'`);
  const host = m[1] ?? m[2];
  const family = net.isIP(host);
  if (family === 0 || (m[1] !== undefined && family !== 6) || (m[2] !== undefined && family !== 4)) throw new Error(`'${host}' is not an IP${m[1] !== undefined ? 'v6' : 'v4'} address`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port ${port} is out of range (0..65535; 0 picks a free one)`);
  return { host, port };
}

/** True for addresses only this host can reach (127.0.0.0/8, ::1). */
export function isLoopback(host: string): boolean {
  return /^127\./.test(host) || host === '::1' || host === '0:0:0:0:0:0:0:1';
}
