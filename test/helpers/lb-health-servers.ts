// Real servers on 127.0.0.1 for the health-check tests (test/unit/lb-health.test.ts):
// plain TCP, HTTP and TLS, each on a random port (or a given one, to bring a
// "backend" back where it was), and a throwaway self-signed certificate made
// with the system openssl at test time. Every server tracks its sockets so
// close() really ends them (a server that never answers keeps its requests
// open otherwise).

import * as net from 'node:net';
import * as http from 'node:http';
import * as tls from 'node:tls';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestServer {
  port: number;
  /** Connections accepted so far. */
  accepted(): number;
  /** Connections open now. */
  open(): number;
  /** Most connections ever open at once. */
  peakOpen(): number;
  /** Stops listening and destroys every open connection. */
  close(): Promise<void>;
}

function track(server: net.Server, port: number): Promise<TestServer> {
  const socks = new Set<net.Socket>();
  let accepted = 0, peak = 0;
  server.on('connection', (s: net.Socket) => {
    accepted++;
    socks.add(s);
    if (socks.size > peak) peak = socks.size;
    s.on('error', () => {});
    s.on('close', () => socks.delete(s));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      const p = (server.address() as net.AddressInfo).port;
      resolve({
        port: p,
        accepted: () => accepted,
        open: () => socks.size,
        peakOpen: () => peak,
        close: () =>
          new Promise<void>((res) => {
            for (const s of socks) s.destroy();
            server.close(() => res());
          }),
      });
    });
  });
}

/** A TCP server that accepts and, when `greeting` is given, writes it and closes. */
export function tcpServer(port = 0, greeting?: string): Promise<TestServer> {
  const server = net.createServer((s) => {
    if (greeting !== undefined) s.end(greeting);
  });
  return track(server, port);
}

/** An HTTP server; the handler may leave a request unanswered (it is destroyed at close). */
export function httpServer(handler: http.RequestListener, port = 0): Promise<TestServer> {
  return track(http.createServer(handler), port);
}

export interface TlsServer extends TestServer {
  /** SNI of each completed handshake (null when the client sent none). */
  servernames: Array<string | null>;
}

export async function tlsServer(cert: Cert, port = 0): Promise<TlsServer> {
  const servernames: Array<string | null> = [];
  const server = tls.createServer({ key: cert.key, cert: cert.cert }, (s) => {
    const sn = (s as tls.TLSSocket & { servername?: string | false }).servername;
    servernames.push(typeof sn === 'string' ? sn : null);
    s.on('error', () => {});
    s.end();
  });
  // Handshake failures (the checker hanging up) are expected, not errors.
  server.on('tlsClientError', () => {});
  const base = await track(server, port);
  return { ...base, servernames };
}

export interface Cert {
  key: string;
  cert: string;
}

/** A self-signed P-256 certificate for CN/SAN localhost, valid one day; the temp dir is removed at once. */
export function makeCert(): Cert {
  const dir = mkdtempSync(join(tmpdir(), 'lb-health-cert-'));
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost',
    ], { stdio: 'pipe' });
    return { key: readFileSync(join(dir, 'key.pem'), 'utf8'), cert: readFileSync(join(dir, 'cert.pem'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A port that was free a moment ago (listen on 0, read it, close). */
export async function freePort(): Promise<number> {
  const s = await tcpServer();
  await s.close();
  return s.port;
}

/** Resolves with the first value `subscribe` delivers that satisfies `pred`; rejects after `ms`. */
export function waitFor<T>(subscribe: (fn: (v: T) => void) => () => void, pred: (v: T) => boolean, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    let off: () => void = () => {};
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    off = subscribe((v) => {
      if (!pred(v)) return;
      clearTimeout(timer);
      off();
      resolve(v);
    });
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
