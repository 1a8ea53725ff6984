// Shared upstream TLS sessions of the TLS terminator (mode 'tls-to-target'
// with upstreamPool) on loopback: nginx over TLS behind a clear PROXY v2
// header logs, per request, its connection number and $ssl_session_reused;
// openssl s_client checks resumption on the client side; a Node line target
// checks that a connection is never handed on with an answer still due.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TlsTerminator, type TlsTerminatorConfig } from '../../src/lb/tls/terminator.js';
import { exportSessions, importSessions, type SessionCache } from '../../src/lb/tls/upstream-pool.js';
import { makePki, freePort, startNginxWith, type NginxTarget } from '../helpers/lb-tls-util.js';
import { httpTlsClient, LineTlsTarget, lineClient, runHeld, handshakeLines, BIG_ANSWER, type HttpTlsClient } from '../helpers/lb-tls-clients.js';

const missing = ['nginx', 'openssl', 'curl'].filter((c) => !fs.existsSync(`/usr/sbin/${c}`) && !fs.existsSync(`/usr/bin/${c}`));

async function waitFor(pred: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return pred();
}

interface LogLine { conn: number; requests: number; reused: string; proto: string; pp: string; uri: string; status: number }
const LOG_FORMAT = '$connection $connection_requests $ssl_session_reused $ssl_protocol $proxy_protocol_addr:$proxy_protocol_port $request_uri $status';
function readLog(n: NginxTarget): LogLine[] {
  return fs.readFileSync(n.accessLog, 'utf8').split('\n').filter(Boolean).map((l) => {
    const [conn, requests, reused, proto, pp, uri, status] = l.split(' ');
    return { conn: Number(conn), requests: Number(requests), reused, proto, pp, uri, status: Number(status) };
  });
}

t.test('shared upstream TLS sessions on loopback', { skip: missing.length ? `missing ${missing.join(', ')}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-lbup-'));
  const nginxes: NginxTarget[] = [];
  const terminators: TlsTerminator[] = [];
  const clients: HttpTlsClient[] = [];
  const lineTargets: LineTlsTarget[] = [];
  t.teardown(async () => {
    for (const c of clients) c.socket.destroy();
    for (const x of terminators) await x.stop().catch(() => undefined);
    for (const l of lineTargets) await l.stop().catch(() => undefined);
    for (const n of nginxes) await n.kill().catch(() => undefined);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const pki = makePki(tmp, ['test.example', 'backend.test', 'hi.example', 'mid.example', 'lo.example'], ['client.example']);
  const ca = fs.readFileSync(pki.ca, 'utf8');
  const ng = await startNginxWith(tmp, 'backend', await freePort(), {
    tlsCert: pki.cert('backend.test'), logFormat: LOG_FORMAT, body: '$request_uri\\n', sslProtocols: 'TLSv1.2 TLSv1.3',
  });
  nginxes.push(ng);

  const terminator = async (extra: Partial<TlsTerminatorConfig>): Promise<{ term: TlsTerminator; port: number }> => {
    const term = new TlsTerminator({
      listen: { host: '127.0.0.1', port: 0 },
      certificates: ['test.example', 'hi.example', 'mid.example', 'lo.example'].map((n) => ({ names: [n], ...pki.cert(n) })),
      targets: [{ host: '127.0.0.1', port: ng.port }],
      mode: 'tls-to-target',
      proxyProtocol: true,
      targetTls: { ca: pki.ca, servername: 'backend.test' },
      requestClientCert: true,
      clientCa: pki.ca,
      handshakeTimeoutMs: 2000,
      connectTimeoutMs: 2000,
      ...extra,
    });
    terminators.push(term);
    return { term, port: (await term.start()).port };
  };
  const client = (port: number, sni: string, p: string, opts: Parameters<typeof httpTlsClient>[3] = { ca }): HttpTlsClient => {
    const c = httpTlsClient(port, sni, p, opts);
    clients.push(c);
    return c;
  };

  const sessions: SessionCache = new Map();
  const { term, port } = await terminator({ upstreamPool: { size: 3, waitTimeoutMs: 3000, quietMs: 50, sessions } });
  const c = term.counters;

  await t.test('new upstream connections resume the session (nginx logs r); finished flows hand their connection on', async (t) => {
    // Three flows open at once need three upstream connections.
    const held: HttpTlsClient[] = [];
    for (const name of ['held-1', 'held-2', 'held-3']) {
      const h = client(port, 'test.example', `/${name}`);
      t.equal(await h.body, `/${name}\n`, `${name} answered`);
      held.push(h);
    }
    let log = readLog(ng);
    t.equal(log.length, 3);
    const conns = new Set(log.map((l) => l.conn));
    t.equal(conns.size, 3, 'three upstream connections');
    t.same(log.map((l) => l.reused), ['.', 'r', 'r'], 'nginx: the first did a full handshake, the next two resumed');
    t.ok(log.every((l) => l.proto === 'TLSv1.3'), `TLS 1.3 upstream (tickets after the handshake): ${log.map((l) => l.proto).join(',')}`);
    t.ok(log.every((l) => l.pp === '-:-'), 'pooled connections carry a PROXY LOCAL header: nginx accepted it and has no client address');
    t.equal(c.upstreamHandshakes, 1);
    t.equal(c.upstreamResumptions, 2);
    t.equal(c.upstreamReuses, 0);

    for (const h of held) h.socket.end();
    t.ok(await waitFor(() => c.upstreamReleased === 3, 2000), `the three connections went back to the pool (released ${c.upstreamReleased})`);
    for (const h of held) await h.closed;

    // Sequential flows now get those connections: no TCP or TLS handshake.
    for (const name of ['seq-1', 'seq-2', 'seq-3']) {
      const s = client(port, 'test.example', `/${name}`);
      t.equal(await s.body, `/${name}\n`);
      s.socket.end();
      await s.closed;
      t.ok(await waitFor(() => c.upstreamReleased + c.upstreamDiscarded === 3 + Number(name.slice(-1)), 2000), `${name} finished and released`);
    }
    log = readLog(ng);
    const seq = log.filter((l) => l.uri.startsWith('/seq-'));
    t.equal(seq.length, 3);
    t.ok(seq.every((l) => conns.has(l.conn)), `nginx: every later request came on one of the first three connections (${seq.map((l) => l.conn).join(',')})`);
    t.ok(seq.every((l) => l.requests >= 2), 'nginx: a second (or later) request on its connection');
    t.equal(c.upstreamReuses, 3, 'three reuses');
    t.equal(c.upstreamHandshakes, 1, 'still one full handshake in all');
    t.equal(c.upstreamDiscarded, 0);
    const totals = term.upstreamTotals();
    t.equal(totals.reuses, 3, 'the pool agrees: reuses');
    t.equal(totals.resumptions, 2, 'resumptions');
    t.equal(totals.handshakes, 1, 'handshakes');
    const pool = [...term.upstreamPoolsByKey().values()][0];
    t.equal(term.upstreamPoolsByKey().size, 1);
    t.equal(pool.idleCount, 3, 'three idle connections in the pool');
  });

  await t.test('another worker imports the session cache: its first upstream connection resumes', async (t) => {
    const exported = structuredClone(exportSessions(sessions)); // what postMessage does
    const fresh: SessionCache = new Map();
    t.equal(importSessions(exported, fresh), 1);
    const w2 = await terminator({ upstreamPool: { size: 1, quietMs: 50, sessions: fresh } });
    const n0 = readLog(ng).length;
    const r = client(w2.port, 'test.example', '/worker-2');
    t.equal(await r.body, '/worker-2\n');
    const line = readLog(ng)[n0];
    t.equal(line.uri, '/worker-2');
    t.equal(line.reused, 'r', 'nginx: resumed on the imported ticket');
    t.equal(w2.term.counters.upstreamResumptions, 1);
    t.equal(w2.term.counters.upstreamHandshakes, 0);
    // Control: a worker without the import does a full handshake.
    const cold = await terminator({ upstreamPool: { size: 1, quietMs: 50, sessions: new Map() } });
    const r2 = client(cold.port, 'test.example', '/cold');
    t.equal(await r2.body, '/cold\n');
    t.equal(readLog(ng).find((l) => l.uri === '/cold')?.reused, '.', 'nginx: full handshake without the import');
    t.equal(cold.term.counters.upstreamHandshakes, 1);
  });

  await t.test('client side: openssl s_client -reconnect through the terminator shows Reused', async (t) => {
    const r0 = c.clientResumptions;
    const out = handshakeLines(await runHeld('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'test.example', '-CAfile', pki.ca, '-reconnect', '-tls1_2'], 0));
    t.equal(out.length, 6, `one connection and five reconnects: ${out.join(' | ')}`);
    t.match(out[0], /^New, TLSv1\.2/);
    t.ok(out.slice(1).every((l) => l.startsWith('Reused, TLSv1.2')), 'every reconnect reused the session');
    t.equal(c.clientResumptions - r0, 5, 'counted: five client resumptions');
    // TLS 1.3: the ticket comes after the handshake; s_client saves it when it has time to read it.
    const sess = path.join(tmp, 'client.sess');
    const first = handshakeLines(await runHeld('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'test.example', '-CAfile', pki.ca, '-tls1_3', '-sess_out', sess], 300));
    const again = handshakeLines(await runHeld('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'test.example', '-CAfile', pki.ca, '-tls1_3', '-sess_in', sess], 0));
    t.match(first[0], /^New, TLSv1\.3/);
    t.match(again[0], /^Reused, TLSv1\.3/, 'TLS 1.3 ticket resumed');
    t.equal(c.clientResumptions - r0, 6);
    t.ok(await waitFor(() => c.active === 0, 3000), 'every flow closed');
  });

  await t.test('a client with a certificate gets a dedicated upstream connection with its own PROXY header', async (t) => {
    const n0 = readLog(ng).length;
    const before = new Set(readLog(ng).map((l) => l.conn));
    const idle0 = [...term.upstreamPoolsByKey().values()][0].idleCount;
    const d0 = c.upstreamDedicated, disc0 = c.upstreamDiscarded;
    const id = client(port, 'test.example', '/with-cert', { ca, cert: fs.readFileSync(pki.cert('client.example').cert), key: fs.readFileSync(pki.cert('client.example').key) });
    t.equal(await id.body, '/with-cert\n');
    const line = readLog(ng)[n0];
    t.notOk(before.has(line.conn), 'nginx: a new connection, not a pooled one');
    t.equal(line.reused, '.', 'nginx: no shared session offered');
    t.equal(line.pp, `127.0.0.1:${id.socket.localPort}`, 'nginx: the PROXY header names this client');
    t.equal(c.upstreamDedicated - d0, 1);
    id.socket.end();
    await id.closed;
    t.ok(await waitFor(() => c.upstreamDiscarded - disc0 === 1, 2000), 'destroyed when its flow ended, never pooled');
    t.equal([...term.upstreamPoolsByKey().values()][0].idleCount, idle0, 'the pool is unchanged');
  });

  // ---- priority order through the terminator, with a FIFO control ----
  const servedOrder = async (order: 'fifo' | 'priority'): Promise<{ order: string[]; conns: number[] }> => {
    const { term: tp, port: pp } = await terminator({
      upstreamPool: { size: 1, order, quietMs: 30, waitTimeoutMs: 5000, priorities: { 'hi.example': 10, 'mid.example': 5 }, sessions: new Map() },
    });
    const tag = `${order}-${pp}`;
    const holder = client(pp, 'test.example', `/hold-${tag}`);
    await holder.body;
    const waiting: { name: string; c: HttpTlsClient }[] = [];
    for (const name of ['lo', 'mid', 'hi']) {
      const w0 = tp.counters.upstreamWaits;
      const w = client(pp, `${name}.example`, `/${name}-${tag}`);
      waiting.push({ name, c: w });
      // Arrival order is the order of the pool's line.
      if (!await waitFor(() => tp.counters.upstreamWaits === w0 + 1, 3000)) throw new Error(`${name} did not wait`);
      // Each, once served, finishes so that the connection moves on.
      void w.body.then(() => w.socket.end());
    }
    holder.socket.end();
    const bodies = await Promise.all(waiting.map((w) => w.c.body));
    for (let i = 0; i < waiting.length; i++) if (bodies[i] !== `/${waiting[i].name}-${tag}\n`) throw new Error(`${waiting[i].name}: ${bodies[i]}`);
    const served = [...waiting].sort((a, b) => a.c.at() - b.c.at()).map((w) => w.name);
    // nginx writes its access log line after the answer left: the last one may lag the client by a moment.
    let lines = readLog(ng).filter((l) => l.uri.endsWith(tag));
    await waitFor(() => (lines = readLog(ng).filter((l) => l.uri.endsWith(tag))).length >= 4, 2000);
    return { order: served, conns: lines.map((l) => l.conn) };
  };

  await t.test("priority: with one pooled connection, hi (10) then mid (5) then lo (0), whatever the arrival order", async (t) => {
    const r = await servedOrder('priority');
    t.same(r.order, ['hi', 'mid', 'lo']);
    t.equal(new Set(r.conns).size, 1, 'nginx: all four requests on one upstream connection');
    t.equal(r.conns.length, 4);
  });

  await t.test('fifo control: the same arrivals are served lo, mid, hi', async (t) => {
    const r = await servedOrder('fifo');
    t.same(r.order, ['lo', 'mid', 'hi']);
    t.equal(new Set(r.conns).size, 1);
  });

  await t.test('a connection is never handed on with an answer still due; a finished exchange is', async (t) => {
    const bc = pki.cert('backend.test');
    const lt = new LineTlsTarget({ cert: fs.readFileSync(bc.cert, 'utf8'), key: fs.readFileSync(bc.key, 'utf8') }, 300);
    lineTargets.push(lt);
    await lt.start();
    const { term: tl, port: lp } = await terminator({
      targets: [{ host: '127.0.0.1', port: lt.port }],
      proxyProtocol: false,
      upstreamPool: { size: 1, quietMs: 50, sessions: new Map() },
    });
    const k = tl.counters;
    const sentAt = (c: ReturnType<typeof lineClient>): Promise<number> => new Promise((r) => c.socket.once('secureConnect', () => r(performance.now())));

    // A asks something slow (answered 300 ms later) and half-closes: its flow
    // must wait for the answer; B, waiting for the only connection, gets it
    // only after A's answer went to A.
    const a = lineClient(lp, ca, 'slow');
    const aSent = await sentAt(a);
    await new Promise((r) => setTimeout(r, 30));
    a.socket.end();
    const b = lineClient(lp, ca, 'fast-b');
    t.equal(await b.firstLine, 'answer:fast-b', 'B got its own answer');
    t.ok(b.at() - aSent >= 250, `after A's answer was due (${(b.at() - aSent).toFixed(0)} ms)`);
    t.equal(await a.received, 'answer:slow\n', 'A, half-closed, still got its answer, then our FIN');
    b.socket.end();
    t.equal(await b.received, 'answer:fast-b\n', 'B got nothing else');
    t.equal(lt.tcp, 1, 'one upstream connection served both, in turn');
    t.equal(k.upstreamReuses, 1);
    t.equal(k.upstreamDiscarded, 0);
    t.ok(await waitFor(() => k.upstreamReleased === 2, 2000), 'both exchanges ended at a boundary');

    // D asks something slow and resets: its answer would reach the next
    // client, so the connection is destroyed; E gets a new one.
    const d = lineClient(lp, ca, 'slow');
    await sentAt(d);
    await new Promise((r) => setTimeout(r, 30));
    d.raw.resetAndDestroy();
    const e = lineClient(lp, ca, 'fast-e');
    t.equal(await e.firstLine, 'answer:fast-e', 'E got its own answer');
    await new Promise((r) => setTimeout(r, 400)); // past D's answer time
    e.socket.end();
    t.equal(await e.received, 'answer:fast-e\n', 'and never D\'s');
    t.equal(k.upstreamDiscarded, 1, "D's connection was destroyed");
    t.equal(lt.tcp, 2, 'E came on a new connection');

    // F asks for a big answer, half-closes, and reads nothing for 400 ms: the
    // target's bytes wait behind F, which is not the target being quiet. G,
    // waiting meanwhile, must get a clean connection.
    const rel0 = k.upstreamReleased;
    const f = lineClient(lp, ca, 'big');
    f.socket.once('secureConnect', () => {
      f.socket.end();
      f.socket.pause();
      setTimeout(() => f.socket.resume(), 400);
    });
    await sentAt(f);
    await new Promise((r) => setTimeout(r, 30));
    const g = lineClient(lp, ca, 'fast-g');
    const fAll = await f.received;
    t.equal(fAll.length, BIG_ANSWER, `F got its whole answer (${fAll.length} of ${BIG_ANSWER} bytes)`);
    t.ok(fAll.endsWith('x\n') && fAll.startsWith('answer:big:'), 'intact');
    t.equal(await g.firstLine, 'answer:fast-g', 'G got its own answer first');
    g.socket.end();
    t.equal(await g.received, 'answer:fast-g\n', 'and nothing of F\'s');
    t.ok(await waitFor(() => k.upstreamReleased === rel0 + 2, 2000), 'both released at a boundary');
    t.equal(lt.tcp, 2, 'G reused the connection after F was done');
  });
});
