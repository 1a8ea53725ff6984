// Clients and a target for the terminator's upstream-pool loopback tests: a
// TLS client that sends one HTTP/1.1 request and reports the response (and
// keeps the connection until told to finish), a TLS line target that answers
// "answer:<line>" (slowly for "slow"), and s_client with stdin held open.

import net from 'node:net';
import tls from 'node:tls';
import { spawn } from 'node:child_process';

export interface HttpTlsClient {
  socket: tls.TLSSocket;
  /** The response body, or '' when the connection closed first. */
  body: Promise<string>;
  /** performance.now() when the body was complete (0 before). */
  at(): number;
  closed: Promise<void>;
}

/**
 * Connects with TLS (SNI `servername`), sends `GET <path>` (HTTP/1.1,
 * keep-alive) after the handshake, reads one response by its Content-Length.
 * The connection stays open: end() or destroy() the socket.
 */
export function httpTlsClient(port: number, servername: string, reqPath: string, opts: tls.ConnectionOptions = {}): HttpTlsClient {
  const s = tls.connect({ host: '127.0.0.1', port, servername, ...opts });
  let buf = Buffer.alloc(0);
  let when = 0;
  let resolveBody: (v: string) => void = () => undefined;
  const body = new Promise<string>((r) => { resolveBody = r; });
  const closed = new Promise<void>((r) => s.once('close', () => { resolveBody(''); r(); }));
  s.once('secureConnect', () => s.write(`GET ${reqPath} HTTP/1.1\r\nHost: backend.test\r\n\r\n`));
  s.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    const h = buf.indexOf('\r\n\r\n');
    if (h < 0) return;
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(buf.subarray(0, h).toString('latin1'));
    const len = m ? Number(m[1]) : 0;
    if (buf.length >= h + 4 + len && when === 0) {
      when = performance.now();
      resolveBody(buf.subarray(h + 4, h + 4 + len).toString('latin1'));
    }
  });
  s.on('error', () => undefined);
  return { socket: s, body, at: () => when, closed };
}

/** Length of the answer to "big", newline included. */
export const BIG_ANSWER = 8 * 1024 * 1024;

/** A TLS server on 127.0.0.1 answering each line L with "answer:L\n" (after delayMs for "slow"), counting TCP connections. */
export class LineTlsTarget {
  readonly server: tls.Server;
  readonly raws = new Set<net.Socket>();
  tcp = 0;
  port = 0;
  constructor(cert: { cert: string; key: string }, private readonly delayMs: number) {
    this.server = tls.createServer({ cert: cert.cert, key: cert.key }, (s) => {
      s.setEncoding('utf8');
      let buf = '';
      s.on('data', (d: string) => {
        buf += d;
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          // "big": an answer of BIG_ANSWER bytes (it outruns every socket buffer).
          const answer = (): void => { if (!s.destroyed) s.write(line === 'big' ? `answer:big:${'x'.repeat(BIG_ANSWER - 12)}\n` : `answer:${line}\n`); };
          if (line === 'slow') setTimeout(answer, this.delayMs); else answer();
        }
      });
      s.on('error', () => undefined);
    });
    this.server.on('connection', (r: net.Socket) => {
      this.tcp++;
      this.raws.add(r);
      r.once('close', () => this.raws.delete(r));
    });
    this.server.on('tlsClientError', () => undefined);
  }
  start(): Promise<number> {
    return new Promise((r) => this.server.listen(0, '127.0.0.1', () => { this.port = (this.server.address() as net.AddressInfo).port; r(this.port); }));
  }
  stop(): Promise<void> {
    for (const r of this.raws) r.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

export interface LineClient {
  socket: tls.TLSSocket;
  /** The TCP socket under the TLS one (for a reset: resetAndDestroy). */
  raw: net.Socket;
  /** Everything received, once the connection closed. */
  received: Promise<string>;
  /** Resolves with the first line received. */
  firstLine: Promise<string>;
  /** performance.now() when the first line arrived (0 before). */
  at(): number;
}

/** A TLS client (over a TCP socket of its own) that sends `line\n` after the handshake and collects what comes back. */
export function lineClient(port: number, ca: string, line: string): LineClient {
  const raw = net.connect(port, '127.0.0.1');
  const s = tls.connect({ socket: raw, servername: 'test.example', ca });
  let got = '';
  let when = 0;
  let resolveLine: (v: string) => void = () => undefined;
  const firstLine = new Promise<string>((r) => { resolveLine = r; });
  const received = new Promise<string>((r) => s.once('close', () => { resolveLine(got); r(got); }));
  s.once('secureConnect', () => s.write(`${line}\n`));
  s.on('data', (d: Buffer) => {
    got += d.toString('latin1');
    const i = got.indexOf('\n');
    if (i >= 0) {
      if (when === 0) when = performance.now();
      resolveLine(got.slice(0, i));
    }
  });
  s.on('error', () => undefined);
  raw.on('error', () => undefined);
  return { socket: s, raw, received, firstLine, at: () => when };
}

/** Runs a command with stdin open for holdMs (then closed); resolves with stdout+stderr. */
export function runHeld(cmd: string, args: string[], holdMs: number, timeoutMs = 8000): Promise<string> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('close', () => { clearTimeout(timer); resolve(out); });
    if (holdMs > 0) setTimeout(() => p.stdin.end(), holdMs); else p.stdin.end();
  });
}

/** The "New, ..." / "Reused, ..." handshake lines openssl s_client prints, in order. */
export function handshakeLines(out: string): string[] {
  return out.match(/^(New|Reused), .*$/gm) ?? [];
}
