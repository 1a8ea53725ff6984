// Per-target limits and queues of the TLS terminator on loopback: real TLS
// clients, Node targets that hold connections open until told to finish, and
// a throwaway PKI made with openssl. Which target answered is visible in the
// reply ("<name>\n").
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TlsTerminator, type TlsTerminatorConfig } from '../../src/lb/tls/terminator.js';
import { makePki } from '../helpers/lb-tls-util.js';
import { HoldTarget, heldClient, within, type HeldClient } from '../helpers/lb-queue-util.js';

const missing = ['openssl'].filter((c) => !fs.existsSync(`/usr/bin/${c}`) && !fs.existsSync(`/usr/sbin/${c}`));

async function waitFor(pred: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return pred();
}

t.test('per-target limits and queues on loopback', { skip: missing.length ? `missing ${missing.join(', ')}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-lbq-'));
  const targets: HoldTarget[] = [];
  const terminators: TlsTerminator[] = [];
  const clients: HeldClient[] = [];
  t.teardown(async () => {
    for (const c of clients) c.socket.destroy();
    for (const x of terminators) await x.stop().catch(() => undefined);
    for (const x of targets) await x.stop().catch(() => undefined);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const pki = makePki(tmp, ['test.example']);
  const ca = fs.readFileSync(pki.ca, 'utf8');
  const hold = async (name: string): Promise<HoldTarget> => {
    const h = new HoldTarget(name);
    targets.push(h);
    await h.start();
    return h;
  };
  const terminator = async (cfg: Omit<TlsTerminatorConfig, 'listen' | 'certificates'>): Promise<{ term: TlsTerminator; port: number }> => {
    const term = new TlsTerminator({
      listen: { host: '127.0.0.1', port: 0 },
      certificates: [{ names: ['test.example'], ...pki.cert('test.example') }],
      handshakeTimeoutMs: 2000,
      connectTimeoutMs: 2000,
      ...cfg,
    });
    terminators.push(term);
    return { term, port: (await term.start()).port };
  };
  const client = (port: number, localPort?: number): HeldClient => {
    const c = heldClient(port, ca, localPort);
    clients.push(c);
    return c;
  };
  // Fixed client ports (outside the ephemeral range) let a test choose the Maglev target.
  let nextPort = 20000 + (process.pid % 5000) * 2;
  const portFor = (term: TlsTerminator, port: number, k: number): number => {
    for (let p = nextPort; p < nextPort + 2000; p++) {
      if (term.pickTarget('127.0.0.1', p, '127.0.0.1', port) === k) { nextPort = p + 1; return p; }
    }
    throw new Error(`no port maps to target ${k}`);
  };

  await t.test("maxconn 1 and 'queue': the second client waits and is served after the first finishes", async (t) => {
    const a = await hold('A');
    const { term, port } = await terminator({ targets: [{ host: '127.0.0.1', port: a.port, maxconn: 1, maxqueue: 4, queueTimeoutMs: 5000 }] });
    const q = term.queueCounters;
    const c1 = client(port);
    t.equal(await within(c1.answer, 3000, 'timeout'), 'A', 'first client served at once');
    const c2 = client(port);
    t.ok(await waitFor(() => q.queued === 1, 3000), 'second client queued');
    t.equal(await within(c2.answer, 300, 'waiting'), 'waiting', 'and not served while the first holds the slot');
    t.equal(a.accepted, 1, 'the target saw one connection');
    t.equal(term.queues.activeCount(0), 1);
    const finished = performance.now();
    a.finishAll();
    t.equal(await within(c2.answer, 3000, 'timeout'), 'A', 'served after the first finished');
    t.ok(c2.at() >= finished, 'not before');
    t.equal(await c1.closed, null, 'the first client saw a clean close');
    t.equal(q.dequeued, 1);
    t.equal(a.accepted, 2);
    t.equal(a.clientPorts[1], c2.socket.localPort, 'the dequeued flow carries its own PROXY header');
    t.equal(q.rejected + q.redispatched + q.queueTimeouts, 0);
    a.finishAll();
    t.ok(await waitFor(() => term.queues.activeCount(0) === 0, 3000), 'slot freed when the flow closed');
  });

  await t.test("maxqueue 0 and 'redispatch': the second client is served by another target", async (t) => {
    const a = await hold('R0'), b = await hold('R1');
    const { term, port } = await terminator({
      targets: [a, b].map((h) => ({ host: '127.0.0.1', port: h.port, maxconn: 1, maxqueue: 0 })),
      limits: { onFull: 'queue', onQueueFull: 'redispatch' },
    });
    const q = term.queueCounters;
    const c1 = client(port, portFor(term, port, 0));
    t.equal(await within(c1.answer, 3000, 'timeout'), 'R0', 'first client on its Maglev target');
    const p2 = portFor(term, port, 0);
    t.equal(term.pickTarget('127.0.0.1', p2, '127.0.0.1', port), 0, 'the second client hashes to the same, full target');
    const c2 = client(port, p2);
    t.equal(await within(c2.answer, 3000, 'timeout'), 'R1', 'served by the other target');
    t.equal(q.redispatched, 1);
    t.equal(q.queueFull, 1, 'maxqueue 0: the queue is full at once');
    t.equal(q.queued, 0);
    // Both targets full now: a third redispatch finds no free slot and is rejected.
    const c3 = client(port, portFor(term, port, 1));
    t.equal(await within(c3.answer, 3000, 'timeout'), '', 'no target free: closed');
    t.equal(q.rejected, 1);
    t.equal(b.accepted, 1);
  });

  await t.test("'reject': the second client gets a reset quickly", async (t) => {
    const a = await hold('J');
    const { term, port } = await terminator({
      targets: [{ host: '127.0.0.1', port: a.port, maxconn: 1 }],
      limits: { onFull: 'reject' },
    });
    const c1 = client(port);
    t.equal(await within(c1.answer, 3000, 'timeout'), 'J');
    const started = performance.now();
    const c2 = client(port);
    const code = await within(c2.closed, 3000, 'timeout');
    t.equal(code, 'ECONNRESET', 'a TCP RST, not a clean close');
    t.ok(performance.now() - started < 1000, `promptly (${(performance.now() - started).toFixed(0)} ms)`);
    t.equal(await c2.answer, '', 'no data');
    t.equal(term.queueCounters.rejected, 1);
    t.equal(a.accepted, 1, 'the target never saw the rejected client');
  });

  await t.test('queue timeout: after ~queueTimeoutMs the queued client goes to the backup pool', async (t) => {
    const a = await hold('T'), bk = await hold('BACKUP');
    const { term, port } = await terminator({
      targets: [{ host: '127.0.0.1', port: a.port, maxconn: 1, maxqueue: 4, queueTimeoutMs: 300 }],
      backupTargets: [{ host: '127.0.0.1', port: bk.port }],
      limits: { onFull: 'queue', onQueueTimeout: 'backup' },
    });
    const q = term.queueCounters;
    const c1 = client(port);
    t.equal(await within(c1.answer, 3000, 'timeout'), 'T');
    const c2 = client(port);
    t.ok(await waitFor(() => q.queued === 1, 3000));
    const queuedAt = performance.now();
    t.equal(await within(c2.answer, 3000, 'timeout'), 'BACKUP', 'the backup answered');
    const waited = c2.at() - queuedAt;
    t.ok(waited >= 250 && waited < 1500, `after about 300 ms (${waited.toFixed(0)} ms)`);
    t.equal(q.queueTimeouts, 1);
    t.equal(q.toBackup, 1);
    t.equal(a.accepted, 1, 'the full target never saw it');
  });

  await t.test("queue timeout with 'reject', and a client that leaves the queue", async (t) => {
    const a = await hold('X');
    const { term, port } = await terminator({
      targets: [{ host: '127.0.0.1', port: a.port, maxconn: 1, maxqueue: 4, queueTimeoutMs: 250 }],
      limits: { onQueueTimeout: 'reject' },
    });
    const q = term.queueCounters;
    const c1 = client(port);
    t.equal(await within(c1.answer, 3000, 'timeout'), 'X');
    const gone = client(port);
    t.ok(await waitFor(() => q.queued === 1, 3000));
    gone.socket.destroy();
    t.ok(await waitFor(() => q.abandoned === 1, 2000), 'a client that closes while queued leaves the queue');
    const c2 = client(port);
    t.ok(await waitFor(() => q.queued === 2, 3000));
    const queuedAt = performance.now();
    t.equal(await within(c2.closed, 3000, 'timeout'), 'ECONNRESET', 'reset at the timeout');
    const waited = c2.at() - queuedAt;
    t.ok(waited >= 200 && waited < 1500, `after about 250 ms (${waited.toFixed(0)} ms)`);
    t.equal(q.queueTimeouts, 1);
    t.equal(q.rejected, 1);
    t.equal(term.queues.queueLength(0), 0);
    t.equal(a.accepted, 1);
  });
});
