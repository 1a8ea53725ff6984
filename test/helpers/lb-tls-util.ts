// Helpers for the TLS terminator's loopback tests: a throwaway PKI made with
// `openssl` at test time, nginx targets with `listen ... proxy_protocol`, and
// child processes run asynchronously (the terminator under test lives in the
// test's own event loop, so a synchronous exec would deadlock it).

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';

export interface Pki {
  dir: string;
  ca: string;
  cert(name: string): { cert: string; key: string };
}

/** A CA and one leaf certificate per name (CN and subjectAltName = name), P-256 keys, valid one day. */
export function makePki(dir: string, names: string[], clientNames: string[] = []): Pki {
  const ossl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem',
    '-days', '1', '-subj', '/CN=portcullis test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const leaf = (name: string, usage: string) => {
    ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    fs.writeFileSync(path.join(dir, `${name}.ext`), `subjectAltName=DNS:${name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=${usage}\n`);
    ossl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '1', '-extfile', `${name}.ext`);
  };
  for (const n of names) leaf(n, 'serverAuth');
  for (const n of clientNames) leaf(n, 'clientAuth');
  return {
    dir,
    ca: path.join(dir, 'ca.pem'),
    cert: (name) => ({ cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) }),
  };
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** Resolves once something accepts TCP on 127.0.0.1:port, or rejects after ms. */
export async function waitListening(port: number, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => { c.destroy(); r(true); });
      c.once('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on 127.0.0.1:${port} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 30));
  }
}

export interface NginxTarget {
  name: string;
  port: number;
  accessLog: string;
  proc: ChildProcess;
  /** SIGKILL, resolves on exit (no-op when already gone). */
  kill(): Promise<void>;
}

/**
 * nginx on 127.0.0.1:port (TLS when tlsCert is given, after the clear PROXY
 * header) expecting a PROXY header (v1 or v2) and answering
 * every request with "<name>\n". The access log line is
 * `<proxy_protocol_addr>:<proxy_protocol_port> <remote_addr>:<remote_port> <status>`.
 */
export function startNginx(dir: string, name: string, port: number, tlsCert?: { cert: string; key: string }): Promise<NginxTarget> {
  return startNginxWith(dir, name, port, { tlsCert });
}

export interface NginxOptions {
  /** Serve TLS (after the clear PROXY header when proxyProtocol). */
  tlsCert?: { cert: string; key: string };
  /** `listen ... proxy_protocol`. Default true. */
  proxyProtocol?: boolean;
  /** Access log format (nginx variables). Default the startNginx one. */
  logFormat?: string;
  /** Response body (nginx `return 200` text, variables allowed). Default "<name>\n". */
  body?: string;
  /** ssl_protocols (nginx 1.22 defaults to TLSv1 TLSv1.1 TLSv1.2). */
  sslProtocols?: string;
}

/** nginx as startNginx, with the listen flags, log format and body chosen by the caller. */
export async function startNginxWith(dir: string, name: string, port: number, o: NginxOptions): Promise<NginxTarget> {
  const d = path.join(dir, name);
  fs.mkdirSync(d, { recursive: true });
  const accessLog = path.join(d, 'access.log');
  const conf = path.join(d, 'nginx.conf');
  const tlsCert = o.tlsCert;
  const fmt = o.logFormat ?? '$proxy_protocol_addr:$proxy_protocol_port $remote_addr:$remote_port $status';
  const body = o.body ?? `${name}\\n`;
  fs.writeFileSync(conf, `daemon off; master_process off; worker_processes 1;
pid ${d}/nginx.pid; error_log ${d}/error.log;
events { worker_connections 64; }
http {
  log_format pp '${fmt}';
  access_log ${accessLog} pp;
  client_body_temp_path ${d}/cb; proxy_temp_path ${d}/pt; fastcgi_temp_path ${d}/ft; uwsgi_temp_path ${d}/ut; scgi_temp_path ${d}/st;
  keepalive_requests 1000; keepalive_timeout 60s;
  server {
    listen 127.0.0.1:${port}${tlsCert ? ' ssl' : ''}${o.proxyProtocol === false ? '' : ' proxy_protocol'};
${tlsCert ? `    ssl_certificate ${tlsCert.cert}; ssl_certificate_key ${tlsCert.key};\n` : ''}${o.sslProtocols ? `    ssl_protocols ${o.sslProtocols};\n` : ''}    default_type text/plain;
    return 200 "${body}";
  }
}
`);
  const proc = spawn('nginx', ['-c', conf, '-p', d, '-e', `${d}/error.log`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (b) => { err += b; });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const kill = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
  };
  try {
    await Promise.race([waitListening(port), exited.then(() => { throw new Error(`nginx ${name} exited: ${err}`); })]);
  } catch (e) {
    await kill();
    throw e;
  }
  return { name, port, accessLog, proc, kill };
}

export interface RunResult { code: number | null; out: string; err: string }

/** Runs a command asynchronously with stdin closed, killing it after timeoutMs. */
export function run(cmd: string, args: string[], timeoutMs = 10000): Promise<RunResult> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout!.on('data', (b) => { out += b; });
    p.stderr!.on('data', (b) => { err += b; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('close', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}
