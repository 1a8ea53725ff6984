// Secure-flow classification and SNI-to-pool routing of the TLS terminator on
// loopback (127.0.0.1, free ports, no namespaces): curl http:// and https://
// on one sniffing port, nginx targets behind a recording relay (nginx checks
// the PROXY header; our decoder reads the captured bytes), SNIs that select
// pools of nginx targets, and hostile first bytes (garbage, slowloris, split
// ClientHellos).
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { TlsTerminator } from '../../src/lb/tls/terminator.js';
import { decode, PP2_CLIENT_SSL, PP2_CMD_PROXY } from '../../src/wire/proxy-v2.js';
import { makePki, freePort, startNginx, run, type NginxTarget } from '../helpers/lb-tls-util.js';

const missing = ['nginx', 'curl', 'openssl'].filter((c) => !fs.existsSync(`/usr/sbin/${c}`) && !fs.existsSync(`/usr/bin/${c}`));

async function waitFor(pred: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return pred();
}

/** A TCP relay in front of a target: records the first bytes of every connection (up to 4 KiB) and forwards everything. */
class RecordingRelay {
  readonly first: Buffer[] = [];
  readonly server: net.Server;
  readonly open = new Set<net.Socket>();
  port = 0;
  constructor(private readonly targetPort: number) {
    this.server = net.createServer({ allowHalfOpen: true }, (s) => {
      this.open.add(s);
      const slot = this.first.length;
      this.first.push(Buffer.alloc(0));
      const up = net.connect({ host: '127.0.0.1', port: this.targetPort, allowHalfOpen: true });
      this.open.add(up);
      s.on('data', (d: Buffer) => { if (this.first[slot].length < 4096) this.first[slot] = Buffer.concat([this.first[slot], d]); });
      s.pipe(up);
      up.pipe(s);
      for (const x of [s, up]) {
        x.on('error', () => { s.destroy(); up.destroy(); });
        x.on('close', () => this.open.delete(x));
      }
    });
  }
  start(): Promise<number> {
    return new Promise((r) => this.server.listen(0, '127.0.0.1', () => { this.port = (this.server.address() as net.AddressInfo).port; r(this.port); }));
  }
  stop(): Promise<void> {
    for (const s of this.open) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/** Connects, writes the chunks (gapMs apart), and resolves how the connection ended and after how long. */
function poke(port: number, chunks: Buffer[], gapMs: number, limitMs = 5000): Promise<{ how: 'closed' | 'reset' | 'open'; ms: number; got: number }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const s = net.connect(port, '127.0.0.1');
    let got = 0, how: 'closed' | 'reset' | 'open' = 'closed';
    let i = 0;
    const next = (): void => {
      if (s.destroyed || i >= chunks.length) return;
      s.write(chunks[i++]);
      if (i < chunks.length) setTimeout(next, gapMs);
    };
    s.once('connect', next);
    s.on('data', (d) => { got += d.length; });
    s.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'ECONNRESET') how = 'reset'; });
    const timer = setTimeout(() => { how = 'open'; s.destroy(); }, limitMs);
    s.once('close', () => { clearTimeout(timer); resolve({ how, ms: performance.now() - t0, got }); });
  });
}

t.test('classification and SNI pools on loopback', { skip: missing.length ? `missing ${missing.join(', ')}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-lbcls-'));
  const nginxes: NginxTarget[] = [];
  const relays: RecordingRelay[] = [];
  const terminators: TlsTerminator[] = [];
  t.teardown(async () => {
    for (const x of terminators) await x.stop().catch(() => undefined);
    for (const r of relays) await r.stop().catch(() => undefined);
    for (const n of nginxes) await n.kill().catch(() => undefined);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const pki = makePki(tmp, ['test.example', 'a.example', 'x.b.example']);
  const caPem = fs.readFileSync(pki.ca, 'utf8');
  const ng = async (name: string): Promise<NginxTarget> => {
    const n = await startNginx(tmp, name, await freePort());
    nginxes.push(n);
    return n;
  };
  const def = await ng('default-0');
  const poolA = await ng('poolA-0');
  const poolB = await ng('poolB-0');
  const relay = new RecordingRelay(def.port);
  relays.push(relay);
  await relay.start();

  const SNIFF_MS = 600;
  const term = new TlsTerminator({
    listen: { host: '127.0.0.1', port: 0 },
    certificates: [
      { names: ['test.example'], ...pki.cert('test.example') },
      { names: ['a.example'], ...pki.cert('a.example') },
      { names: ['*.b.example'], ...pki.cert('x.b.example') },
    ],
    targets: [{ host: '127.0.0.1', port: relay.port }],
    pools: { poolA: [{ host: '127.0.0.1', port: poolA.port }], poolB: [{ host: '127.0.0.1', port: poolB.port }] },
    sniPools: { 'a.example': 'poolA', '*.b.example': 'poolB' },
    classify: { sniff: true, sniffTimeoutMs: SNIFF_MS },
    handshakeTimeoutMs: 2000,
    connectTimeoutMs: 2000,
  });
  terminators.push(term);
  const { port } = await term.start();
  const c = term.counters;

  const curl = (url: string, host: string, extra: string[] = []) => run('curl', ['-sS', '--max-time', '5', '--cacert', pki.ca,
    '--resolve', `${host}:${port}:127.0.0.1`, '-w', '\n%{local_port}', ...extra, url]);

  await t.test('one port: curl http:// goes in clear, curl https:// is terminated; both reach nginx with a PROXY header', async (t) => {
    const cap0 = relay.first.length;
    const plain = await curl(`http://test.example:${port}/`, 'test.example');
    t.equal(plain.code, 0, `curl http:// (${plain.err.trim()})`);
    const [pBody, pLp] = plain.out.split('\n\n');
    t.equal(pBody, 'default-0', 'clear: answered by the default pool');
    const secure = await curl(`https://test.example:${port}/`, 'test.example');
    t.equal(secure.code, 0, `curl https:// (${secure.err.trim()})`);
    const [sBody, sLp] = secure.out.split('\n\n');
    t.equal(sBody, 'default-0');
    t.equal(c.classifiedClear, 1);
    t.equal(c.classifiedTls, 1);
    t.equal(c.handshakes, 1, 'only the https flow was a TLS handshake');

    // nginx parsed both PROXY headers: it logs each curl's own port.
    const log = fs.readFileSync(def.accessLog, 'utf8');
    for (const lp of [pLp, sLp]) t.match(log, new RegExp(`^127\\.0\\.0\\.1:${lp} 127\\.0\\.0\\.1:\\d+ 200$`, 'm'), `nginx logged client port ${lp} from the PROXY header`);

    // Our decoder on the bytes the target received.
    t.equal(relay.first.length - cap0, 2);
    const [clearBytes, tlsBytes] = relay.first.slice(cap0);
    const dc = decode(clearBytes, 0, clearBytes.length);
    const ds = decode(tlsBytes, 0, tlsBytes.length);
    t.equal(dc.status, 'ok');
    t.equal(ds.status, 'ok');
    if (dc.status !== 'ok' || ds.status !== 'ok') return;
    t.equal(dc.header.command, PP2_CMD_PROXY);
    t.equal(dc.header.srcPort, Number(pLp));
    t.equal(dc.header.dstPort, port);
    t.equal(dc.header.tlvs?.ssl, undefined, 'clear flow: no SSL TLV');
    t.equal(dc.header.tlvs?.authority, undefined, 'and no AUTHORITY');
    t.match(clearBytes.subarray(dc.consumed).toString('latin1'), /^GET \/ HTTP\/1\.1\r\nHost: test\.example/, 'the sniffed bytes follow the header intact');
    t.equal(ds.header.srcPort, Number(sLp));
    t.equal(ds.header.tlvs?.ssl?.client, PP2_CLIENT_SSL, 'TLS flow: SSL TLV present');
    t.match(String(ds.header.tlvs?.ssl?.version), /^TLSv1\.[23]$/);
    t.equal(ds.header.tlvs?.authority, 'test.example');
    t.match(tlsBytes.subarray(ds.consumed).toString('latin1'), /^GET \/ HTTP\/1\.1\r\n/, 'decrypted request after the header');
  });

  await t.test('SNI picks the pool: a.example → poolA, x.b.example → poolB (wildcard), others and clear → default', async (t) => {
    const a = await curl(`https://a.example:${port}/`, 'a.example');
    t.equal(a.code, 0, a.err.trim());
    t.equal(a.out.split('\n\n')[0], 'poolA-0');
    const b = await curl(`https://x.b.example:${port}/`, 'x.b.example');
    t.equal(b.code, 0, b.err.trim());
    t.equal(b.out.split('\n\n')[0], 'poolB-0');
    const d = await curl(`https://test.example:${port}/`, 'test.example');
    t.equal(d.out.split('\n\n')[0], 'default-0');
    const clearA = await curl(`http://a.example:${port}/`, 'a.example');
    t.equal(clearA.out.split('\n\n')[0], 'default-0', 'a clear flow has no SNI: default pool');
    // Each pool has its own Maglev table.
    t.same(term.poolNames(), ['default', 'poolA', 'poolB']);
    t.equal(term.poolForSni('A.Example'), 'poolA', 'names compare case-insensitively');
    t.equal(term.poolForSni('y.b.example'), 'poolB');
    t.equal(term.poolForSni('b.example'), 'default', 'the wildcard covers one label, not the bare suffix');
    t.equal(term.poolForSni('z.y.b.example'), 'default', 'and only one label');
    t.equal(term.target(term.pickTarget('127.0.0.1', 40000, '127.0.0.1', port, 'poolB'), 'poolB').port, poolB.port);
    t.ok(fs.readFileSync(poolA.accessLog, 'utf8').trim().split('\n').length === 1, 'poolA served exactly one request');
  });

  await t.test('a ClientHello split across three TCP segments is reassembled and classified TLS', async (t) => {
    // A relay that holds the client's first flight and forwards it in three pieces, 100 ms apart.
    const splitter = net.createServer((s) => {
      const up = net.connect(port, '127.0.0.1');
      up.setNoDelay(true);
      let first = true;
      s.on('data', (d: Buffer) => {
        if (!first) { up.write(d); return; }
        first = false;
        s.pause();
        const a = Math.floor(d.length / 3);
        up.write(d.subarray(0, 3)); // not even a full record header
        setTimeout(() => up.write(d.subarray(3, a)), 100);
        setTimeout(() => { up.write(d.subarray(a)); s.resume(); }, 200);
      });
      up.pipe(s);
      s.on('error', () => up.destroy());
      up.on('error', () => s.destroy());
      s.on('close', () => up.destroy());
    });
    await new Promise<void>((r) => splitter.listen(0, '127.0.0.1', () => r()));
    t.teardown(() => { splitter.close(); });
    const sp = (splitter.address() as net.AddressInfo).port;
    const tls0 = c.classifiedTls, h0 = c.handshakes;
    const reply = await new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: sp, servername: 'a.example', ca: caPem });
      let got = '';
      s.once('secureConnect', () => s.write('GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n'));
      s.on('data', (d) => { got += d; });
      s.once('error', reject);
      s.once('close', () => resolve(got));
    });
    t.match(reply, /^HTTP\/1\.1 200 OK[\s\S]*\r\n\r\npoolA-0\n$/, 'served by poolA after the split ClientHello');
    t.equal(c.classifiedTls, tls0 + 1);
    t.equal(c.handshakes, h0 + 1);
  });

  await t.test('garbage is reset at once; silent and slowloris clients are reset at the sniff timeout; nothing reaches a target', async (t) => {
    const g0 = c.sniffGarbage, to0 = c.sniffTimeout, cap0 = relay.first.length, tc0 = c.targetConnects;
    const logs0 = nginxes.map((n) => fs.readFileSync(n.accessLog, 'utf8'));
    // A handshake record with a zero length (RFC 8446 5.1 forbids it).
    const zero = await poke(port, [Buffer.from([0x16, 0x03, 0x03, 0x00, 0x00])], 0);
    // A handshake record that starts with a ServerHello, not a ClientHello.
    const serverHello = await poke(port, [Buffer.from([0x16, 0x03, 0x03, 0x00, 0x2a, 0x02, 0x00, 0x00, 0x26, 0x03, 0x03, ...new Array(36).fill(0)])], 0);
    // A ClientHello whose declared length is below the smallest possible body.
    const lying = await poke(port, [Buffer.from([0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00])], 0);
    for (const [name, r] of [['zero-length record', zero], ['ServerHello', serverHello], ['lying ClientHello', lying]] as const) {
      t.equal(r.how, 'reset', `${name}: reset`);
      t.ok(r.ms < SNIFF_MS / 2, `${name}: at once (${r.ms.toFixed(0)} ms)`);
      t.equal(r.got, 0, `${name}: no byte back`);
    }
    t.ok(await waitFor(() => c.sniffGarbage === g0 + 3, 1000), `three counted as garbage (${c.sniffGarbage - g0})`);

    // Three bytes of a record header, then nothing.
    const three = poke(port, [Buffer.from([0x16, 0x03, 0x01])], 0);
    // Nothing at all.
    const silent = poke(port, [], 0);
    // Slowloris: a plausible ClientHello start, one byte every 100 ms (each byte would restart an idle timer).
    const hello = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, ...new Array(40).fill(7)]);
    const slow = poke(port, [...hello].map((b) => Buffer.from([b])), 100);
    for (const [name, p] of [['3 bytes then nothing', three], ['silent', silent], ['slowloris', slow]] as const) {
      const r = await p;
      t.equal(r.how, 'reset', `${name}: reset`);
      t.ok(r.ms >= SNIFF_MS - 50 && r.ms < SNIFF_MS + 400, `${name}: at the sniff timeout (${r.ms.toFixed(0)} ms, timeout ${SNIFF_MS})`);
    }
    t.equal(c.sniffTimeout, to0 + 3, 'three counted as sniff timeouts');
    t.equal(relay.first.length, cap0, 'the relay saw no connection');
    t.equal(c.targetConnects, tc0, 'no target connection');
    t.same(nginxes.map((n) => fs.readFileSync(n.accessLog, 'utf8')), logs0, 'no nginx logged anything');
  });

  await t.test('a burst of random junk neither crashes nor sticks; the port still serves', async (t) => {
    // Junk that starts like a TLS record is garbage; other first bytes are clear
    // traffic by design (the target judges it): both must end promptly.
    let seed = 12345;
    const rnd = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed & 0xff; };
    const before = c.classifiedClear + c.classifiedTls + c.sniffGarbage + c.sniffTimeout;
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => {
      const body = Buffer.from(Array.from({ length: 20 + (i * 37) % 300 }, rnd));
      if (i % 2 === 0) { body[0] = 0x16; body[1] = 0x03; body[2] = 0x03; }
      return poke(port, [body], 0, 4000).then((r) => ({ i, ...r }));
    }));
    const tlsLike = results.filter((r) => r.i % 2 === 0);
    t.ok(tlsLike.every((r) => r.how !== 'open'), 'every TLS-looking junk connection was closed');
    t.equal(c.classifiedClear + c.classifiedTls + c.sniffGarbage + c.sniffTimeout - before, 40, 'every connection got exactly one decision');
    t.ok(results.every((r) => r.how !== 'open'), `no connection left hanging: ${results.filter((r) => r.how === 'open').map((r) => r.i).join(',')}`);
    const ok = await curl(`https://test.example:${port}/`, 'test.example');
    t.equal(ok.code, 0, 'still serving');
    t.ok(await waitFor(() => c.active === 0, 3000), `every flow closed (active ${c.active})`);
  });

  await t.test('classify.ports: flows to a TLS port skip sniffing; without sniff the other ports are clear', async (t) => {
    const tlsPort = await freePort(), clearPort = await freePort();
    const t2 = new TlsTerminator({
      listen: { host: '127.0.0.1', port: tlsPort },
      extraListen: [{ host: '127.0.0.1', port: clearPort }],
      certificates: [{ names: ['test.example'], ...pki.cert('test.example') }],
      targets: [{ host: '127.0.0.1', port: def.port }],
      classify: { ports: [tlsPort] },
    });
    terminators.push(t2);
    await t2.start();
    t.same(t2.addresses().map((a) => a.port), [tlsPort, clearPort]);
    const s = await run('curl', ['-sS', '--max-time', '5', '--cacert', pki.ca, '--resolve', `test.example:${tlsPort}:127.0.0.1`, `https://test.example:${tlsPort}/`]);
    t.equal(s.out, 'default-0\n', `https on the TLS port (${s.err.trim()})`);
    const p = await run('curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${clearPort}/`]);
    t.equal(p.out, 'default-0\n', `http on the other port (${p.err.trim()})`);
    const wrong = await run('curl', ['-sS', '--max-time', '3', `http://127.0.0.1:${tlsPort}/`]);
    t.not(wrong.code, 0, 'clear HTTP to the TLS port fails the handshake');
    t.equal(t2.counters.classifiedTls, 2);
    t.equal(t2.counters.classifiedClear, 1);
    t.equal(t2.counters.handshakeFailures, 1);
    t.equal(t2.counters.sniffTimeout + t2.counters.sniffGarbage, 0, 'no sniffing');
  });
});
