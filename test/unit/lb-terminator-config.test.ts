// TlsTerminator configuration (src/lb/tls/terminator.ts): errors that name the
// bad key, pools of targets chosen by SNI, and session ticket keys shared by
// two terminators (two workers) on loopback.
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import crypto from 'node:crypto';
import { TlsTerminator, type TlsTerminatorConfig } from '../../src/lb/tls/terminator.js';
import { makeSelfSigned, UPSTREAM_NAME, type SelfSigned } from '../helpers/lb-upstream-util.js';

let cert: SelfSigned;
const terms: TlsTerminator[] = [];
const sink = net.createServer((s) => { s.on('error', () => undefined); s.resume(); });
let sinkPort = 0;

t.before(async () => {
  cert = makeSelfSigned();
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
  sinkPort = (sink.address() as net.AddressInfo).port;
});
t.teardown(async () => {
  for (const x of terms) await x.stop();
  sink.close();
  fs.rmSync(cert.dir, { recursive: true, force: true });
});

function base(extra: Partial<TlsTerminatorConfig> = {}): TlsTerminatorConfig {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    certificates: [{ names: [UPSTREAM_NAME], cert: cert.cert, key: cert.key }],
    targets: [{ host: '127.0.0.1', port: sinkPort }],
    ...extra,
  };
}

t.test('configuration errors name the key and what is expected', async (t) => {
  const bad: [Partial<TlsTerminatorConfig>, RegExp][] = [
    [{ classify: { ports: [0] } }, /classify\.ports\[0\] must be an integer 1\.\.65535/],
    [{ classify: { ports: 443 as unknown as number[] } }, /classify\.ports must be an array/],
    [{ classify: { sniff: 'yes' as unknown as boolean } }, /classify\.sniff must be true or false/],
    [{ classify: { sniff: true, sniffTimeoutMs: 0 } }, /classify\.sniffTimeoutMs must be an integer 1\.\./],
    [{ classify: { sniff: true, sniffMaxBytes: 8 } }, /classify\.sniffMaxBytes must be an integer 16\.\./],
    [{ upstreamPool: { size: 2 } }, /upstreamPool applies to mode 'tls-to-target' only/],
    [{ mode: 'tls-to-target', upstreamPool: { size: 0 } }, /upstreamPool\.size must be an integer 1\.\./],
    [{ mode: 'tls-to-target', upstreamPool: { size: 1, order: 'lifo' as 'fifo' } }, /upstreamPool\.order must be 'fifo' or 'priority'/],
    [{ mode: 'tls-to-target', upstreamPool: { size: 1, priorities: { 'a.example': 'high' as unknown as number } } }, /upstreamPool\.priorities\.a\.example must be a finite number/],
    [{ pools: { default: [{ host: '127.0.0.1', port: 1 }] } }, /pools\.default is reserved/],
    [{ pools: { a: [] } }, /pools\.a must list at least one/],
    [{ pools: { a: [{ host: '127.0.0.1', port: 70000 }] } }, /pools\.a\[0\]\.port must be an integer 1\.\.65535/],
    [{ sniPools: { 'x.example': 'nope' } }, /sniPools\.x\.example names pool "nope", which is not 'default' or one of pools/],
    [{ targets: [{ host: '127.0.0.1', port: 1, clearPort: 0 }] }, /targets\[0\]\.clearPort must be an integer 1\.\.65535/],
    [{ ticketKeys: Buffer.alloc(32) }, /ticketKeys must be 48 bytes/],
    [{ extraListen: [{ host: '127.0.0.1', port: -1 }] }, /extraListen\[0\]\.port must be an integer 0\.\.65535/],
  ];
  for (const [extra, re] of bad) t.throws(() => new TlsTerminator(base(extra)), re, JSON.stringify(extra));
  // Backward compatible: the old fields alone still make a terminator, and a hex ticketKeys string is taken.
  t.doesNotThrow(() => new TlsTerminator(base({ ticketKeys: 'ab'.repeat(48) })));
});

t.test('pools of targets: SNI to pool (exact and one-label wildcard), each its own Maglev table', async (t) => {
  const term = new TlsTerminator(base({
    pools: { a: [{ host: '127.0.0.1', port: 1001 }, { host: '127.0.0.1', port: 1002 }], b: [{ host: '127.0.0.1', port: 2001 }] },
    sniPools: { 'a.example': 'a', '*.b.example': 'b', 'direct.b.example': 'default' },
  }));
  t.same(term.poolNames(), ['default', 'a', 'b']);
  t.equal(term.poolForSni('a.example'), 'a');
  t.equal(term.poolForSni('x.b.example'), 'b');
  t.equal(term.poolForSni('direct.b.example'), 'default', 'an exact name wins over the wildcard');
  t.equal(term.poolForSni(''), 'default');
  t.equal(term.poolForSni('unknown.example'), 'default');
  const ports = new Set<number>();
  for (let p = 30000; p < 30200; p++) ports.add(term.target(term.pickTarget('192.0.2.1', p, '192.0.2.10', 443, 'a'), 'a').port);
  t.same([...ports].sort(), [1001, 1002], 'pool a spreads over its own two targets');
  t.equal(term.target(term.pickTarget('192.0.2.1', 30000, '192.0.2.10', 443, 'b'), 'b').port, 2001);
  t.equal(term.target(term.pickTarget('192.0.2.1', 30000, '192.0.2.10', 443)).port, sinkPort, 'default pool');
  term.setPoolTargets('b', [{ host: '127.0.0.1', port: 2002 }]);
  t.equal(term.target(term.pickTarget('192.0.2.1', 30000, '192.0.2.10', 443, 'b'), 'b').port, 2002, 'setPoolTargets swaps one pool');
  t.throws(() => term.pickTarget('192.0.2.1', 1, '192.0.2.10', 443, 'c'), /no pool named "c"/);
  t.equal(term.poolQueues('a').size, 2);
});

/** A TLS 1.2 handshake with the terminator on port; resolves with its session and whether it resumed one. */
function handshake(port: number, session?: Buffer): Promise<{ session: Buffer | undefined; reused: boolean }> {
  return new Promise((resolve, reject) => {
    let sess: Buffer | undefined;
    const s = tls.connect({ host: '127.0.0.1', port, servername: UPSTREAM_NAME, ca: cert.cert, maxVersion: 'TLSv1.2', session });
    s.on('session', (x: Buffer) => { sess = x; });
    s.once('secureConnect', () => {
      const reused = s.isSessionReused();
      s.end();
      setImmediate(() => resolve({ session: sess, reused }));
    });
    s.once('error', reject);
  });
}

t.test('ticketKeys: a session from one terminator resumes on another with the same keys, not with its own random keys', async (t) => {
  const keys = crypto.randomBytes(48);
  const start = async (k?: Buffer): Promise<number> => {
    const x = new TlsTerminator(base(k ? { ticketKeys: k } : {}));
    terms.push(x);
    return (await x.start()).port;
  };
  const w1 = await start(keys), w2 = await start(keys), w3 = await start();
  const first = await handshake(w1);
  t.notOk(first.reused);
  t.ok(first.session, 'got a session (ticket)');
  t.ok((await handshake(w1, first.session)).reused, 'resumed on the same terminator');
  t.ok((await handshake(w2, first.session)).reused, 'resumed on another terminator with the same ticketKeys');
  t.notOk((await handshake(w3, first.session)).reused, 'not on one with its own keys');
  t.equal(terms[1].counters.clientResumptions, 1);
});

t.test('stop() then start(): the same terminator serves again, its queue timers included', async (t) => {
  const term = new TlsTerminator(base({
    targets: [{ host: '127.0.0.1', port: sinkPort, maxconn: 1, maxqueue: 2, queueTimeoutMs: 200 }],
    limits: { onQueueTimeout: 'reject' },
  }));
  terms.push(term);
  const port1 = (await term.start()).port;
  await term.stop();
  const port = (await term.start()).port;
  t.ok(port1 > 0 && port > 0, 'listening again');
  const open = (): Promise<{ s: tls.TLSSocket; closed: Promise<number> }> => new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: UPSTREAM_NAME, ca: cert.cert });
    s.on('error', () => undefined);
    const closed = new Promise<number>((r) => s.once('close', () => r(performance.now())));
    s.once('secureConnect', () => resolve({ s, closed }));
    s.once('close', () => reject(new Error('closed before the handshake')));
  });
  const first = await open(); // holds the only slot (the sink never closes)
  await new Promise((r) => setTimeout(r, 50));
  const t0 = performance.now();
  const second = await open();
  const closedAt = await Promise.race([second.closed, new Promise<number>((r) => setTimeout(() => r(-1), 3000))]);
  t.ok(closedAt > 0, 'the queued flow was rejected at its queue timeout (the timers work after a restart)');
  t.ok(closedAt - t0 >= 150 && closedAt - t0 < 1500, `after about 200 ms (${(closedAt - t0).toFixed(0)} ms)`);
  t.equal(term.queueCounters.queueTimeouts, 1);
  first.s.destroy();
});
