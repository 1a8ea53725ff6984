// Helpers for the upstream pool's loopback tests (src/lb/tls/upstream-pool.ts):
// a throwaway self-signed certificate made with `openssl req -x509`, a
// node:tls echo server that records every accepted connection and whether
// its handshake resumed a session (server side), and `openssl s_client`
// run asynchronously (the server lives in the test's own event loop).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { execFileSync, spawn } from 'node:child_process';

export const UPSTREAM_NAME = 'upstream.test';

export interface SelfSigned { dir: string; cert: string; key: string }

/** A temp dir with a P-256 self-signed certificate for UPSTREAM_NAME (PEM strings returned). */
export function makeSelfSigned(): SelfSigned {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-upstream-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '1', '-subj', `/CN=${UPSTREAM_NAME}`,
    '-addext', `subjectAltName=DNS:${UPSTREAM_NAME}`], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  return { dir, cert: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'), key: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8') };
}

export interface Accepted {
  /** Client port of the TCP connection (matches the client socket's localPort). */
  remotePort: number;
  /** Server side: tlsSocket.isSessionReused() at 'secureConnection'. */
  reused: boolean;
  socket: tls.TLSSocket;
}

export interface EchoServer {
  port: number;
  /** TCP connections accepted. */
  tcp: number;
  accepted: Accepted[];
  server: tls.Server;
  /** Destroys every accepted connection (the pool's sockets see a close). */
  dropAll(): void;
  /** Resolves once n handshakes completed. */
  waitAccepted(n: number, ms?: number): Promise<void>;
  close(): Promise<void>;
}

/** A TLS echo server on 127.0.0.1: each line "x\n" is answered with "echo:x\n". */
export function startEchoServer(cert: SelfSigned, opts: tls.TlsOptions = {}): Promise<EchoServer> {
  const accepted: Accepted[] = [];
  const raws = new Set<net.Socket>();
  const server = tls.createServer({ cert: cert.cert, key: cert.key, ...opts });
  const es: EchoServer = {
    port: 0,
    tcp: 0,
    accepted,
    server,
    dropAll: () => { for (const r of raws) r.destroy(); },
    waitAccepted: async (n, ms = 3000) => {
      const end = Date.now() + ms;
      while (accepted.length < n) {
        if (Date.now() > end) throw new Error(`server saw ${accepted.length} handshakes, expected ${n}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    },
    close: () => new Promise<void>((resolve) => {
      for (const r of raws) r.destroy();
      server.close(() => resolve());
    }),
  };
  server.on('connection', (raw: net.Socket) => {
    es.tcp++;
    raws.add(raw);
    raw.once('close', () => raws.delete(raw));
  });
  server.on('secureConnection', (s: tls.TLSSocket) => {
    accepted.push({ remotePort: s.remotePort as number, reused: s.isSessionReused(), socket: s });
    s.setEncoding('utf8');
    let buf = '';
    s.on('data', (d: string) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        s.write(`echo:${buf.slice(0, i)}\n`);
        buf = buf.slice(i + 1);
      }
    });
    s.on('error', () => { /* client resets are expected */ });
  });
  server.on('tlsClientError', () => { /* counted by the tests through accepted */ });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      es.port = (server.address() as net.AddressInfo).port;
      resolve(es);
    });
  });
}

/** Writes "msg\n" and resolves with the echoed line; leaves the socket paused with no listeners. */
export function roundTrip(s: tls.TLSSocket, msg: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('utf8');
      const i = buf.indexOf('\n');
      if (i < 0) return;
      done();
      resolve(buf.slice(0, i));
    };
    const onErr = (e: Error) => { done(); reject(e); };
    const onClose = () => { done(); reject(new Error('closed during round trip')); };
    const done = () => { s.off('data', onData); s.off('error', onErr); s.off('close', onClose); s.pause(); };
    s.on('data', onData);
    s.once('error', onErr);
    s.once('close', onClose);
    // Leases come paused (upstream-pool.ts): a 'data' listener alone does not start the flow.
    s.resume();
    s.write(`${msg}\n`);
  });
}

/**
 * Runs `openssl s_client -connect 127.0.0.1:port -servername UPSTREAM_NAME <extra>`
 * asynchronously, stdin held open holdMs (a TLS 1.3 ticket arrives after the
 * handshake and is read only while s_client waits for input), then closed;
 * resolves with stdout+stderr.
 */
export function sClient(port: number, extra: string[], holdMs = 0, ms = 8000): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', UPSTREAM_NAME, ...extra], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const timer = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`s_client did not finish in ${ms} ms:\n${out}`)); }, ms);
    p.once('error', (e) => { clearTimeout(timer); reject(e); });
    p.once('close', () => { clearTimeout(timer); resolve(out); });
    if (holdMs > 0) setTimeout(() => p.stdin.end(), holdMs); else p.stdin.end();
  });
}

/** The "New, ..." / "Reused, ..." handshake lines s_client prints, in order. */
export function sClientHandshakes(out: string): string[] {
  return out.match(/^(New|Reused), .*$/gm) ?? [];
}
