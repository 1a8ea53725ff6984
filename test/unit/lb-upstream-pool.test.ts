// UpstreamPool (src/lb/tls/upstream-pool.ts) against a real node:tls server on
// loopback that reports, per accepted connection, whether the handshake
// resumed a session (server side), plus openssl s_client as a second client.
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import t from 'tap';
import {
  UpstreamPool, UpstreamPoolError, WaitQueue, exportSessions, importSessions, sharedSessions, sessionKey,
  type UpstreamLease, type UpstreamPoolOptions, type UpstreamRequest, type SessionCache,
} from '../../src/lb/tls/upstream-pool.js';
import {
  makeSelfSigned, startEchoServer, roundTrip, sClient, sClientHandshakes, UPSTREAM_NAME,
  type EchoServer, type SelfSigned,
} from '../helpers/lb-upstream-util.js';
import type { QueueClock } from '../../src/lb/queue.js';

let cert: SelfSigned;
const servers: EchoServer[] = [];
const pools: UpstreamPool[] = [];

t.before(() => { cert = makeSelfSigned(); });
t.teardown(async () => {
  for (const p of pools) p.close();
  for (const s of servers) await s.close();
  sharedSessions.clear();
  fs.rmSync(cert.dir, { recursive: true, force: true });
});

async function server(opts: Parameters<typeof startEchoServer>[1] = {}): Promise<EchoServer> {
  const s = await startEchoServer(cert, opts);
  servers.push(s);
  return s;
}

function pool(es: EchoServer, o: Partial<UpstreamPoolOptions> = {}): UpstreamPool {
  const p = new UpstreamPool({
    host: '127.0.0.1', port: es.port, servername: UPSTREAM_NAME, ca: cert.cert,
    maxConnections: 2, idleTimeoutMs: 10_000, queue: 'fifo', maxWaiters: 8, waitTimeoutMs: 3000,
    // Each test starts from an empty cache of its own unless it asks for the shared one.
    sessions: new Map(),
    ...o,
  });
  pools.push(p);
  return p;
}

function acquire(p: UpstreamPool, req: UpstreamRequest = {}): Promise<UpstreamLease> {
  return new Promise((resolve, reject) => p.acquire(req, (err, lease) => (err ? reject(err) : resolve(lease as UpstreamLease))));
}

async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const tick = () => new Promise((r) => setImmediate(r));

t.test('sequential requests reuse one pooled connection', async (t) => {
  const es = await server();
  const p = pool(es);
  const reused: boolean[] = [];
  const ports: number[] = [];
  for (let i = 0; i < 4; i++) {
    const l = await acquire(p);
    reused.push(l.reused);
    ports.push(l.socket.localPort as number);
    t.equal(await roundTrip(l.socket, `r${i}`), `echo:r${i}`);
    l.release(true);
  }
  t.same(reused, [false, true, true, true], 'only the first request opened a connection');
  t.equal(new Set(ports).size, 1, 'same client socket every time');
  t.equal(es.tcp, 1, 'server saw one TCP connection');
  t.equal(es.accepted.length, 1, 'and one handshake');
  t.equal(p.counters.handshakes, 1);
  t.equal(p.counters.reuses, 3);
  t.equal(p.counters.resumptions, 0);
  t.equal(p.openCount, 1);
  t.equal(p.idleCount, 1);
});

t.test('idle connections close after idleTimeoutMs', async (t) => {
  const es = await server();
  const p = pool(es, { idleTimeoutMs: 80 });
  const l = await acquire(p);
  await roundTrip(l.socket, 'x');
  l.release(true);
  t.equal(p.idleCount, 1);
  const srv = es.accepted[0].socket;
  await until(() => srv.destroyed || srv.readableEnded, 'server side of the idle connection to close');
  t.equal(p.counters.idleCloses, 1);
  t.equal(p.openCount, 0);
  t.equal(p.idleCount, 0);
  t.equal(p.counters.dropped, 0, 'an idle close is not a drop');
  const l2 = await acquire(p);
  t.notOk(l2.reused, 'a new connection after the idle close');
  l2.release(false);
});

t.test('a connection closed by the server leaves the pool; the next one resumes the session', async (t) => {
  const es = await server();
  const p = pool(es);
  const l = await acquire(p);
  t.notOk(l.resumed, 'first handshake is full');
  await roundTrip(l.socket, 'a');
  l.release(true);
  await until(() => p.session !== undefined, 'the session ticket');
  es.dropAll();
  await until(() => p.openCount === 0, 'the pool to notice the close');
  t.equal(p.counters.dropped, 1, 'counted as dropped');
  t.equal(p.idleCount, 0);

  const l2 = await acquire(p);
  t.notOk(l2.reused, 'not the dead connection');
  t.ok(l2.resumed, 'client: session resumed');
  t.equal(await roundTrip(l2.socket, 'b'), 'echo:b');
  await es.waitAccepted(2);
  t.same(es.accepted.map((a) => a.reused), [false, true], 'server: second connection resumed');
  t.equal(es.accepted[1].remotePort, l2.socket.localPort, 'the resumed one is the pool\'s new connection');
  t.equal(p.counters.resumptions, 1);
  t.equal(p.counters.handshakes, 1);
  l2.release(true);

  // The same server resumes for openssl's client too. s_client -reconnect
  // drops its connection before reading a TLS 1.3 ticket (it arrives after
  // the handshake), so -reconnect is checked on TLS 1.2, and TLS 1.3 with a
  // saved session that s_client had time to receive.
  const before = es.accepted.length;
  const out12 = sClientHandshakes(await sClient(es.port, ['-reconnect', '-tls1_2']));
  t.equal(out12.length, 6, 's_client -reconnect: one connection then five reconnects');
  t.match(out12[0], /^New, TLSv1\.2/);
  t.ok(out12.slice(1).every((l) => l.startsWith('Reused, TLSv1.2')), `reconnects reused: ${out12.join(' | ')}`);
  t.same(es.accepted.slice(before).map((a) => a.reused), [false, true, true, true, true, true], 'server agrees');
  const sess = path.join(cert.dir, 'sess.pem');
  const first = sClientHandshakes(await sClient(es.port, ['-tls1_3', '-sess_out', sess], 300));
  const again = sClientHandshakes(await sClient(es.port, ['-tls1_3', '-sess_in', sess]));
  t.match(first[0], /^New, TLSv1\.3/);
  t.match(again[0], /^Reused, TLSv1\.3/, 'TLS 1.3 ticket resumed by s_client');
});

t.test('TLS 1.3: the ticket arrives after secureConnect; a new connection waits for it', async (t) => {
  const es = await server();
  const p = pool(es, { maxConnections: 2 });
  let cachedAtHandshake = true;
  const a = await new Promise<UpstreamLease>((resolve, reject) => p.acquire({}, (err, lease) => {
    if (err) return reject(err);
    cachedAtHandshake = p.session !== undefined;
    resolve(lease as UpstreamLease);
  }));
  t.equal(a.socket.getProtocol(), 'TLSv1.3');
  t.notOk(cachedAtHandshake, 'no ticket yet when the handshake completes (RFC 8446 §4.6.1)');
  // The second connection opens while the first is still leased and its
  // ticket is one round trip away: it waits for the ticket and resumes.
  const b = await acquire(p);
  t.ok(p.session !== undefined, 'ticket cached');
  t.equal(p.counters.ticketWaits, 1, 'the open waited for the ticket');
  t.ok(b.resumed, 'client: resumed');
  await es.waitAccepted(2);
  t.same(es.accepted.map((x) => x.reused), [false, true], 'server: resumed');
  a.release(true);
  b.release(true);

  // Control: without the wait the same sequence is a second full handshake.
  const es2 = await server();
  const q = pool(es2, { maxConnections: 2, sessionWaitMs: 0 });
  const a2 = await acquire(q);
  const b2 = await acquire(q);
  t.notOk(b2.resumed, 'sessionWaitMs 0: full handshake');
  await es2.waitAccepted(2);
  t.same(es2.accepted.map((x) => x.reused), [false, false]);
  t.equal(q.counters.handshakes, 2);
  a2.release(false);
  b2.release(false);
});

t.test('TLS 1.2: the session comes with the handshake; the next connection resumes', async (t) => {
  const es = await server({ maxVersion: 'TLSv1.2' });
  const p = pool(es, { maxConnections: 2 });
  const a = await acquire(p);
  t.equal(a.socket.getProtocol(), 'TLSv1.2');
  const b = await acquire(p);
  t.ok(p.session !== undefined, 'session cached');
  t.ok(b.resumed, 'resumed');
  t.equal(p.counters.ticketWaits, 0, 'no wait: the session came in the handshake flight');
  t.equal(await roundTrip(b.socket, 'b'), 'echo:b');
  await es.waitAccepted(2);
  t.same(es.accepted.map((x) => x.reused), [false, true]);
  a.release(false);
  b.release(false);
});

t.test('maxConnections 1: FIFO waiters, maxWaiters bound', async (t) => {
  const es = await server();
  const p = pool(es, { maxConnections: 1, maxWaiters: 3 });
  const first = await acquire(p);
  const served: string[] = [];
  const all: Promise<void>[] = [];
  for (const name of ['w1', 'w2', 'w3']) {
    all.push(acquire(p).then(async (l) => {
      served.push(name);
      t.ok(l.reused, `${name} got the pooled connection`);
      t.equal(await roundTrip(l.socket, name), `echo:${name}`);
      l.release(true);
    }));
  }
  const refused = await acquire(p).then(() => null, (e: unknown) => e);
  t.type(refused, UpstreamPoolError);
  t.equal((refused as UpstreamPoolError).code, 'EQUEUEFULL', 'the fourth waiter is refused');
  t.equal(p.counters.queueFull, 1);
  t.equal(p.waiting, 3);
  await tick();
  t.same(served, [], 'nobody is served while the connection is leased');
  first.release(true);
  await Promise.all(all);
  t.same(served, ['w1', 'w2', 'w3'], 'served in arrival order');
  t.equal(p.counters.waits, 3);
  t.equal(es.tcp, 1, 'one connection served all');
});

t.test('priority queue: highest priority first, ties in arrival order', async (t) => {
  const es = await server();
  const p = pool(es, { maxConnections: 1, queue: 'priority' });
  const first = await acquire(p);
  const served: string[] = [];
  const all: Promise<void>[] = [];
  for (const [name, priority] of [['a', 1], ['b', 5], ['c', 3], ['d', 5], ['e', 0]] as const) {
    all.push(acquire(p, { priority }).then((l) => { served.push(name); l.release(true); }));
  }
  first.release(true);
  await Promise.all(all);
  t.same(served, ['b', 'd', 'c', 'a', 'e']);
  // A FIFO pool ignores priorities.
  const q = pool(es, { maxConnections: 1, queue: 'fifo' });
  const f = await acquire(q);
  const fifo: string[] = [];
  const all2 = (['a', 'b', 'c'] as const).map((name, i) => acquire(q, { priority: i }).then((l) => { fifo.push(name); l.release(true); }));
  f.release(true);
  await Promise.all(all2);
  t.same(fifo, ['a', 'b', 'c']);
});

t.test('waitTimeoutMs fires for a waiter that never gets a connection', async (t) => {
  const es = await server();
  const p = pool(es, { maxConnections: 1, waitTimeoutMs: 120 });
  const held = await acquire(p);
  const t0 = performance.now();
  const err = await acquire(p).then(() => null, (e: unknown) => e);
  const waited = performance.now() - t0;
  t.type(err, UpstreamPoolError);
  t.equal((err as UpstreamPoolError).code, 'EWAITTIMEOUT');
  t.ok(waited >= 100 && waited < 1000, `waited about 120 ms (${waited.toFixed(0)})`);
  t.equal(p.counters.waitTimeouts, 1);
  t.equal(p.waiting, 0);
  held.release(true);
  t.equal(p.idleCount, 1, 'the released connection goes idle, not to the timed-out waiter');
});

t.test('dedicated requests get fresh, unshared connections, never pooled', async (t) => {
  const es = await server();
  const p = pool(es, { maxConnections: 1 });
  const shared = await acquire(p);
  await roundTrip(shared.socket, 's');
  await until(() => p.session !== undefined, 'a cached session');
  const cached = p.session;

  const d1 = await acquire(p, { dedicated: true });
  t.ok(d1.dedicated);
  t.notOk(d1.reused);
  t.notOk(d1.resumed, 'a dedicated connection does not offer the shared session');
  t.equal(p.counters.waits, 0, 'not held back by maxConnections');
  t.not(d1.socket, shared.socket);
  t.equal(await roundTrip(d1.socket, 'd1'), 'echo:d1');
  await es.waitAccepted(2);
  t.equal(es.accepted[1].reused, false, 'server: full handshake');
  t.equal(p.session, cached, 'its own ticket does not replace the shared one');
  d1.release(true);
  await until(() => d1.socket.destroyed, 'the dedicated socket to be destroyed on release');
  t.equal(p.idleCount, 0, 'not returned to the pool');

  shared.release(true);
  t.equal(p.idleCount, 1);
  const d2 = await acquire(p, { dedicated: true });
  t.notOk(d2.reused, 'an idle pooled connection is not lent to a dedicated request');
  t.not(d2.socket.localPort, shared.socket.localPort);
  t.equal(es.tcp, 3);
  t.equal(p.counters.dedicated, 2);
  t.equal(p.idleCount, 1);
  d2.release(true);
  const s2 = await acquire(p);
  t.ok(s2.reused, 'the pooled connection is still there for shared requests');
  s2.release(true);
});

t.test('exportSessions/importSessions: a fresh cache resumes on its first connection', async (t) => {
  const es = await server();
  sharedSessions.clear();
  // This pool uses the process-wide cache.
  const p = pool(es, { sessions: undefined });
  const l = await acquire(p);
  await roundTrip(l.socket, 'x');
  await until(() => sharedSessions.has(p.key), 'the ticket in the shared cache');
  t.equal(p.key, sessionKey('127.0.0.1', es.port, UPSTREAM_NAME));
  l.release(false);

  const exported = exportSessions();
  t.equal(exported.length, 1);
  const cloned = structuredClone(exported); // what postMessage to a worker does
  t.ok(cloned[0].session instanceof Uint8Array);
  t.equal(cloned[0].session.buffer.byteLength, cloned[0].session.byteLength, 'no shared slab travels with it');

  // A fresh cache (another worker) with no sessions: full handshake.
  const cold: SessionCache = new Map();
  const c0 = pool(es, { sessions: cold });
  const l0 = await acquire(c0);
  t.notOk(l0.resumed, 'without the import: full handshake');
  // Complete the exchange before closing: a TLS 1.3 client is done one flight
  // before the server, which would otherwise never count this handshake.
  await roundTrip(l0.socket, 'cold');
  l0.release(false);

  const fresh: SessionCache = new Map();
  t.equal(importSessions(cloned, fresh), 1);
  const q = pool(es, { sessions: fresh });
  const l2 = await acquire(q);
  t.ok(l2.resumed, 'client: first connection resumed');
  t.equal(q.counters.resumptions, 1);
  t.equal(q.counters.handshakes, 0);
  await es.waitAccepted(3);
  t.same(es.accepted.map((a) => a.reused), [false, false, true], 'server: only the imported one resumed');
  l2.release(false);
  t.equal(importSessions([{ target: 'x', session: new Uint8Array(0) }], fresh), 0, 'empty sessions are ignored');
});

t.test('WaitQueue on an injected clock', async (t) => {
  let now = 0;
  const timers: { at: number; fn: () => void; id: number }[] = [];
  let seq = 0;
  const clock: QueueClock = {
    now: () => now,
    setTimer: (fn, ms) => { const id = ++seq; timers.push({ at: now + ms, fn, id }); return id; },
    clearTimer: (h) => { const i = timers.findIndex((x) => x.id === h); if (i >= 0) timers.splice(i, 1); },
  };
  const timedOut: string[] = [];
  const q = new WaitQueue<string>(4, 100, clock, (w) => timedOut.push(w));
  t.equal(q.push('a', 1), 0);
  now = 10;
  q.push('b', 9);
  now = 20;
  const kc = q.push('c', 9);
  q.push('d', 0);
  t.equal(q.push('e', 0), -1, 'full');
  t.ok(q.remove(kc, 'c'));
  t.notOk(q.remove(kc, 'c'), 'already removed');
  t.equal(q.shift(), 'b');
  t.equal(timers.length, 1, 'one timer for the whole line');
  now = 100;
  timers.shift()!.fn();
  t.same(timedOut, ['a'], 'the oldest times out first, whatever its priority');
  t.equal(q.length, 1);
  now = 120;
  timers.shift()!.fn();
  t.same(timedOut, ['a', 'd']);
  t.equal(timers.length, 0);
  t.same(q.dispose(), []);
});

t.test('close fails waiters and destroys connections', async (t) => {
  const es = await server();
  const p = pool(es, { maxConnections: 1 });
  const l = await acquire(p);
  const err = acquire(p).then(() => null, (e: unknown) => e);
  p.close();
  t.equal(((await err) as UpstreamPoolError).code, 'ECLOSED');
  await until(() => l.socket.destroyed, 'leased socket destroyed');
  const after = await acquire(p).then(() => null, (e: unknown) => e);
  t.equal((after as UpstreamPoolError).code, 'ECLOSED');
  t.throws(() => new UpstreamPool({ ...({} as UpstreamPoolOptions), host: 'h', port: 1, maxConnections: 0, idleTimeoutMs: 0, queue: 'fifo', maxWaiters: 0, waitTimeoutMs: 0 }), /maxConnections must be an integer 1/);
  t.throws(() => new UpstreamPool({ host: 'h', port: 1, servername: '10.0.0.1', maxConnections: 1, idleTimeoutMs: 0, queue: 'fifo', maxWaiters: 0, waitTimeoutMs: 0 }), /servername/);
});

/**
 * A server that reads a clear preface of `len` bytes per TCP connection, then
 * hands the connection to the echo server's TLS side (what nginx's
 * `listen ... ssl proxy_protocol` does with a PROXY header).
 */
async function prefacedServer(len: number): Promise<{ port: number; prefaces: Buffer[]; es: EchoServer; close(): Promise<void> }> {
  const es = await server();
  const prefaces: Buffer[] = [];
  const front = net.createServer((s) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < len) return;
      s.off('data', onData);
      s.pause();
      prefaces.push(buf.subarray(0, len));
      if (buf.length > len) s.unshift(buf.subarray(len));
      es.server.emit('connection', s);
    };
    s.on('data', onData);
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
  return {
    port: (front.address() as net.AddressInfo).port,
    prefaces,
    es,
    close: () => new Promise<void>((r) => front.close(() => r())),
  };
}

t.test('preface: pooled connections write the pool\'s, dedicated ones their own, in clear before the ClientHello', async (t) => {
  const ps = await prefacedServer(6);
  t.teardown(() => ps.close());
  const p = pool(ps.es, { port: ps.port, maxConnections: 2, preface: Buffer.from('POOL1\n') });
  const a = await acquire(p);
  t.equal(await roundTrip(a.socket, 'a'), 'echo:a', 'TLS works after the preface');
  const b = await acquire(p); // a second pooled connection (a is leased)
  t.ok(b.resumed, 'a resumption over a prefaced connection');
  const d = await acquire(p, { dedicated: true, preface: Buffer.from('DEDI1\n') });
  t.equal(await roundTrip(d.socket, 'd'), 'echo:d');
  t.same(ps.prefaces.map((x) => x.toString()), ['POOL1\n', 'POOL1\n', 'DEDI1\n']);
  a.release(true);
  const again = await acquire(p);
  t.ok(again.reused, 'a reuse writes nothing new');
  t.equal(ps.prefaces.length, 3);
  again.release(true);
  b.release(false);
  d.release(false);
  t.throws(() => p.acquire({ dedicated: true, preface: 'x' as unknown as Buffer }, () => undefined), /preface must be a Uint8Array/);
  t.throws(() => pool(ps.es, { preface: 'x' as unknown as Buffer }), /preface must be a Uint8Array/);
  p.close(); // the front server's close waits for its connections
});

t.test('preface: a refused TCP connection fails the request and frees the slot', async (t) => {
  const es = await server();
  const dead = net.createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
  const deadPort = (dead.address() as net.AddressInfo).port;
  await new Promise<void>((r) => dead.close(() => r()));
  const p = pool(es, { port: deadPort, maxConnections: 1, preface: Buffer.from('X') });
  const err = await acquire(p).then(() => null, (e: unknown) => e as NodeJS.ErrnoException);
  t.equal(err?.code, 'ECONNREFUSED');
  t.equal(p.counters.errors, 1);
  t.equal(p.openCount, 0, 'the slot is free again');
});

t.test('cancel(): a waiting request leaves the line and is never called back', async (t) => {
  const es = await server();
  const p = pool(es, { maxConnections: 1 });
  const first = await acquire(p);
  let called = false;
  const w = p.acquire({}, () => { called = true; });
  const served: string[] = [];
  const next = acquire(p).then((l) => { served.push('next'); return l; });
  t.equal(p.waiting, 2);
  t.ok(w.cancel(), 'it was waiting');
  t.notOk(w.cancel(), 'only once');
  t.equal(p.waiting, 1);
  t.equal(p.counters.cancelled, 1);
  first.release(true);
  const l = await next;
  t.same(served, ['next'], 'the connection went to the next waiter');
  await tick();
  t.notOk(called, 'the cancelled callback never ran');
  l.release(true);
  const immediate = p.acquire({}, (_e, lease) => lease?.release(true));
  t.notOk(immediate.cancel(), 'a request served at once was not waiting');
});
