// Helpers for the limits/queue loopback tests: a Node TCP target that holds
// every connection open until told to finish (so "at maxconn" is a state the
// test controls), and a TLS client that reports which target answered.

import net from 'node:net';
import tls from 'node:tls';
import { decode } from '../../src/wire/proxy-v2.js';

/**
 * A target on 127.0.0.1 that, once the PROXY v2 header and the client's first
 * bytes arrive, answers "<name>\n" and then keeps the connection open until
 * finish() ends it.
 */
export class HoldTarget {
  readonly server: net.Server;
  readonly open = new Set<net.Socket>();
  /** Connections accepted so far. */
  accepted = 0;
  /** Client source ports read from the PROXY headers, in arrival order. */
  readonly clientPorts: number[] = [];
  port = 0;

  constructor(readonly name: string) {
    this.server = net.createServer({ allowHalfOpen: true }, (s) => {
      this.accepted++;
      this.open.add(s);
      let buf = Buffer.alloc(0);
      let answered = false;
      s.on('data', (d: Buffer) => {
        if (answered) return;
        buf = Buffer.concat([buf, d]);
        const r = decode(buf, 0, buf.length);
        if (r.status !== 'ok' || buf.length <= r.consumed) return; // header, then at least one client byte
        answered = true;
        this.clientPorts.push(r.header.srcPort ?? -1);
        s.write(`${this.name}\n`);
      });
      s.on('error', () => undefined);
      s.on('close', () => this.open.delete(s));
    });
  }

  start(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => {
      this.port = (this.server.address() as net.AddressInfo).port;
      resolve(this.port);
    }));
  }

  /** Ends (FIN) every open connection: each frees its slot on the terminator once both sides close. */
  finishAll(): void {
    for (const s of this.open) s.end();
  }

  stop(): Promise<void> {
    for (const s of this.open) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

export interface HeldClient {
  socket: tls.TLSSocket;
  /** Resolves with the answering target's name, or with '' when the connection closed first. */
  answer: Promise<string>;
  /** Resolves when the connection closed, with the error code seen, if any ('ECONNRESET' for a reset). */
  closed: Promise<string | null>;
  /** performance.now() at the answer or close, whichever came first. */
  at(): number;
}

/** A TLS client on an optional fixed local port that sends "hi" after the handshake. */
export function heldClient(port: number, ca: string, localPort?: number): HeldClient {
  // localAddress/localPort go to the underlying net.connect (not in tls.ConnectionOptions' type).
  const opts = { host: '127.0.0.1', port, servername: 'test.example', ca, localAddress: '127.0.0.1' } as tls.ConnectionOptions & net.TcpNetConnectOpts;
  if (localPort !== undefined) opts.localPort = localPort;
  const s = tls.connect(opts);
  let when = 0;
  let got = '';
  let errCode: string | null = null;
  let answerResolve: (v: string) => void = () => undefined;
  const answer = new Promise<string>((r) => { answerResolve = r; });
  const closed = new Promise<string | null>((r) => {
    s.once('close', () => {
      if (when === 0) when = performance.now();
      answerResolve('');
      r(errCode);
    });
  });
  s.once('secureConnect', () => s.write('hi'));
  s.on('data', (d) => {
    got += d;
    const nl = got.indexOf('\n');
    if (nl >= 0) {
      if (when === 0) when = performance.now();
      answerResolve(got.slice(0, nl));
    }
  });
  s.on('error', (e: NodeJS.ErrnoException) => { errCode = e.code ?? e.message; });
  return { socket: s, answer, closed, at: () => when };
}

/** Resolves with the value, or with `fallback` after ms. */
export function within<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  return Promise.race([p, new Promise<T>((r) => setTimeout(() => r(fallback), ms))]);
}
