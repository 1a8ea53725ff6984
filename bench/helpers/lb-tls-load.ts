// Load generator child of bench/lb-tls.ts, the same for every proxy under
// test. Its own process: it must not share an event loop (or, when pinned,
// a core) with the proxy it measures.
//
//   node --import=tsx bench/helpers/lb-tls-load.ts handshakes <port> <seconds> <concurrency> <warmupSeconds>
//   node --import=tsx bench/helpers/lb-tls-load.ts requests   <port> <seconds> <concurrency> <warmupSeconds>
//
// handshakes: `concurrency` loops, each opening a new TLS connection, counting
//   it at secureConnect, closing it (end(): close_notify + FIN) and opening the
//   next one. No session is passed to tls.connect, so there is no resumption
//   (every handshake is a full one: ECDHE + the server's signature).
// requests: `concurrency` keep-alive TLS connections, each with one GET / in
//   flight at a time (HTTP/1.1, no pipelining). node:https's Agent costs the
//   client several times what the proxy spends per request, so the client
//   writes the request bytes itself and counts responses by length: the first
//   response (read on a probe connection) is parsed and checked (200, body
//   "ok\n"), and every later one has the same length (nginx's headers are
//   fixed-width). A connection the server closes counts as an error and is
//   replaced.
//
// Protocol with the parent (stdout, one line each): `measuring` when the
// warm-up ends, then `result <json>` when the measured window ends.

import tls from 'node:tls';

const [kind, portS, secS, concS, warmS] = process.argv.slice(2);
const port = Number(portS), seconds = Number(secS), concurrency = Number(concS), warmup = Number(warmS);
const HOST = '127.0.0.1';
const REQ = Buffer.from('GET / HTTP/1.1\r\nHost: bench.portcullis.test\r\n\r\n');
// One client context for every connection: without it tls.connect builds a
// new SecureContext per call, which costs the client more than the whole
// handshake costs the server and would make the client the bottleneck.
const CTX = tls.createSecureContext({});
const OPTS: tls.ConnectionOptions = { host: HOST, port, rejectUnauthorized: false, servername: 'bench.portcullis.test', ALPNProtocols: ['http/1.1'], secureContext: CTX };

let measuring = false, done = false;
let count = 0, errors = 0;

function handshakeLoop(): void {
  if (done) return;
  const s = tls.connect(OPTS);
  let secure = false;
  s.once('secureConnect', () => {
    secure = true;
    if (measuring) count++;
    s.end();
    handshakeLoop();
  });
  s.on('error', () => {
    if (!secure) {
      if (measuring) errors++;
      handshakeLoop();
    }
    s.destroy();
  });
}

/** One request on a fresh connection: the whole response, for checking and for its length. */
function probe(): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = tls.connect(OPTS);
    const chunks: Buffer[] = [];
    s.once('secureConnect', () => s.write(REQ));
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      const all = Buffer.concat(chunks);
      const he = all.indexOf('\r\n\r\n');
      if (he < 0) return;
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(all.subarray(0, he).toString('latin1'));
      if (!m) { s.destroy(); reject(new Error('probe: no Content-Length')); return; }
      if (all.length >= he + 4 + Number(m[1])) { s.destroy(); resolve(all); }
    });
    s.once('error', reject);
    setTimeout(() => { s.destroy(); reject(new Error('probe: no response in 5 s')); }, 5000).unref();
  });
}

function requestLoop(respLen: number): void {
  if (done) return;
  const s = tls.connect(OPTS);
  let got = 0;
  s.setNoDelay(true);
  s.once('secureConnect', () => s.write(REQ));
  s.on('data', (d: Buffer) => {
    got += d.length;
    if (got < respLen) return;
    got -= respLen;
    if (measuring) count++;
    if (got !== 0) { errors++; s.destroy(); return; } // one request in flight: never more than one response
    if (!done) s.write(REQ);
  });
  s.once('close', () => {
    if (done) return;
    if (measuring) errors++;
    requestLoop(respLen);
  });
  s.on('error', () => s.destroy());
}

async function main(): Promise<void> {
  let respLen = 0;
  if (kind === 'requests') {
    const r = await probe();
    const text = r.toString('latin1');
    if (!text.startsWith('HTTP/1.1 200 ') || !text.endsWith('\r\n\r\nok\n')) throw new Error(`probe: unexpected response ${JSON.stringify(text)}`);
    respLen = r.length;
    for (let i = 0; i < concurrency; i++) requestLoop(respLen);
  } else if (kind === 'handshakes') {
    for (let i = 0; i < concurrency; i++) handshakeLoop();
  } else {
    throw new Error(`kind must be handshakes or requests, got ${kind}`);
  }
  await new Promise((r) => setTimeout(r, warmup * 1000));
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  measuring = true;
  process.stdout.write('measuring\n');
  await new Promise((r) => setTimeout(r, seconds * 1000));
  measuring = false;
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  done = true;
  const result = { kind, count, errors, seconds: elapsed, rate: count / elapsed, responseBytes: respLen, clientCpu: (cpu.user + cpu.system) / 1e6 / elapsed };
  process.stdout.write(`result ${JSON.stringify(result)}\n`, () => process.exit(0));
}

main().catch((e: Error) => {
  process.stderr.write(`lb-tls-load: ${e.message}\n`);
  process.exit(1);
});
