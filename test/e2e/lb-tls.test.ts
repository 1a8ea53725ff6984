// The TLS terminator on loopback (127.0.0.1, free ports, no namespaces):
// a throwaway PKI made with openssl now, three nginx targets that expect a
// PROXY header, curl and openssl s_client as clients, and a raw Node target
// whose captured stream our PROXY v2 decoder reads back.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { TlsTerminator } from '../../src/lb/tls/terminator.js';
import {
  decode, PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS, PP2_CMD_PROXY, AF_INET,
} from '../../src/wire/proxy-v2.js';
import { makePki, freePort, startNginx, run, type NginxTarget } from '../helpers/lb-tls-util.js';

const missing = ['nginx', 'curl', 'openssl'].filter((c) => !fs.existsSync(`/usr/sbin/${c}`) && !fs.existsSync(`/usr/bin/${c}`));

async function waitFor(pred: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return pred();
}

t.test('TLS terminator on loopback', { skip: missing.length ? `missing ${missing.join(', ')}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-lbtls-'));
  const nginxes: NginxTarget[] = [];
  const terminators: TlsTerminator[] = [];
  const rawServers: net.Server[] = [];
  const rawSockets = new Set<net.Socket>();
  t.teardown(async () => {
    for (const x of terminators) await x.stop().catch(() => undefined);
    for (const s of rawSockets) s.destroy();
    for (const s of rawServers) s.close();
    for (const n of nginxes) await n.kill().catch(() => undefined);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const pki = makePki(tmp, ['test.example', 'other.example'], ['client.example']);
  const caPem = fs.readFileSync(pki.ca, 'utf8');
  for (let i = 0; i < 3; i++) nginxes.push(await startNginx(tmp, `target-${i}`, await freePort()));

  const term = new TlsTerminator({
    listen: { host: '127.0.0.1', port: 0 },
    certificates: [
      { names: ['test.example'], ...pki.cert('test.example') },
      { names: ['other.example'], ...pki.cert('other.example') },
    ],
    targets: nginxes.map((n) => ({ host: '127.0.0.1', port: n.port })),
    handshakeTimeoutMs: 2000,
    connectTimeoutMs: 2000,
  });
  terminators.push(term);
  const { port } = await term.start();
  const c = term.counters;

  const curl = (extra: string[] = []) => run('curl', ['-sS', '--max-time', '5', '--cacert', pki.ca, '--resolve', `test.example:${port}:127.0.0.1`,
    '-w', '\n%{local_port}', ...extra, `https://test.example:${port}/`]);
  /** A local port outside the ephemeral range whose flow Maglev sends to target k. */
  const portFor = (k: number, from: number): number => {
    for (let p = from; p < 30000; p++) if (term.pickTarget('127.0.0.1', p, '127.0.0.1', port) === k) return p;
    throw new Error(`no port maps to target ${k}`);
  };
  const base = 20000 + (process.pid % 4000);

  await t.test('curl through the terminator reaches the Maglev-picked nginx, which logs the real client address and port', async (t) => {
    const h0 = c.handshakes;
    const chosen = [portFor(0, base), portFor(1, base), portFor(2, base)];
    const runs: { lp: number; body: string }[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await curl(i < 3 ? [] : ['--local-port', String(chosen[i - 3])]);
      t.equal(r.code, 0, `curl #${i} exit code (${r.err.trim()})`);
      const [body, lp] = r.out.split('\n\n');
      runs.push({ lp: Number(lp), body });
    }
    const seen = new Set<string>();
    for (const { lp, body } of runs) {
      const k = term.pickTarget('127.0.0.1', lp, '127.0.0.1', port);
      t.equal(body, `target-${k}`, `local port ${lp}: answered by the target Maglev picks`);
      seen.add(body);
      const log = fs.readFileSync(nginxes[k].accessLog, 'utf8');
      // proxy_protocol_addr:port is the curl's own socket; remote_addr:port is the terminator's.
      const line = log.split('\n').find((l) => l.startsWith(`127.0.0.1:${lp} `));
      t.ok(line, `target-${k} logged the client 127.0.0.1:${lp} from the PROXY header`);
      t.match(line ?? '', / 200$/);
      t.notMatch(line ?? '', new RegExp(`127\\.0\\.0\\.1:\\d+ 127\\.0\\.0\\.1:${lp} `), 'the TCP peer nginx saw is not the client');
    }
    t.equal(seen.size, 3, 'every target served a request');
    t.equal(c.handshakes - h0, 6);
    t.ok(c.proxyHeaders >= 6 && c.bytesToTargets > 0 && c.bytesFromTargets > 0, `counters ${JSON.stringify(c)}`);
    t.ok(await waitFor(() => c.active === 0, 2000), 'every flow closed after curl finished');
  });

  await t.test('SNI picks the certificate (openssl s_client)', async (t) => {
    const sc = (sni: string[]) => run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...sni, '-CAfile', pki.ca, '-verify_return_error']);
    const other = await sc(['-servername', 'other.example']);
    t.match(other.out, /subject=\s*CN\s*=\s*other\.example/, 'other.example gets its own certificate');
    t.match(other.out, /Verify return code: 0 \(ok\)/);
    const def = await sc(['-servername', 'test.example']);
    t.match(def.out, /subject=\s*CN\s*=\s*test\.example/);
    const none = await sc(['-noservername']);
    t.match(none.out, /subject=\s*CN\s*=\s*test\.example/, 'no SNI: the default certificate');
  });

  // ---- a raw target: what exactly goes on the wire ----
  const captured: Buffer[] = [];
  const raw = net.createServer({ allowHalfOpen: true }, (s) => {
    rawSockets.add(s);
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => {
      captured.push(Buffer.concat(chunks));
      s.end('world'); // answer after the client's FIN: the reverse direction must stay open
    });
    s.on('error', () => undefined);
    s.on('close', () => rawSockets.delete(s));
  });
  rawServers.push(raw);
  await new Promise<void>((r) => raw.listen(0, '127.0.0.1', () => r()));
  const rawPort = (raw.address() as net.AddressInfo).port;
  const term2 = new TlsTerminator({
    listen: { host: '127.0.0.1', port: 0 },
    certificates: [{ names: ['test.example'], ...pki.cert('test.example') }],
    requestClientCert: true,
    clientCa: pki.ca,
    targets: [{ host: '127.0.0.1', port: rawPort }],
    handshakeTimeoutMs: 2000,
    connectTimeoutMs: 2000,
  });
  terminators.push(term2);
  const port2 = (await term2.start()).port;

  /** A Node TLS client that sends "hello", half-closes, and collects the answer. */
  function exchange(opts: tls.ConnectionOptions): Promise<{ reply: string; local: number; version: string | null; cipher: string }> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: port2, servername: 'test.example', ca: caPem, ALPNProtocols: ['h2', 'http/1.1'], ...opts });
      let reply = '', local = 0, version: string | null = null, cipher = '';
      s.once('secureConnect', () => {
        local = s.localPort ?? 0; version = s.getProtocol(); cipher = s.getCipher()?.name ?? '';
        s.write('hello');
        s.end();
      });
      s.on('data', (d) => { reply += d; });
      s.once('error', reject);
      s.once('close', () => resolve({ reply, local, version, cipher }));
      setTimeout(() => { s.destroy(); reject(new Error('exchange timed out')); }, 5000).unref();
    });
  }

  await t.test('a raw target receives PROXY v2 with the SSL TLV, AUTHORITY = SNI and ALPN; half-close works both ways', async (t) => {
    const r = await exchange({});
    t.equal(r.reply, 'world', 'the target answered after the client half-closed');
    t.equal(captured.length, 1);
    const got = captured[0];
    const d = decode(got, 0, got.length);
    t.equal(d.status, 'ok');
    if (d.status !== 'ok') return;
    const h = d.header;
    t.equal(h.command, PP2_CMD_PROXY);
    t.equal(h.family, AF_INET);
    t.equal(h.src, '127.0.0.1');
    t.equal(h.srcPort, r.local, 'the client port is the TLS client socket\'s own port');
    t.equal(h.dst, '127.0.0.1');
    t.equal(h.dstPort, port2);
    t.equal(h.tlvs?.authority, 'test.example');
    t.equal(Buffer.from(h.tlvs?.alpn as Uint8Array).toString(), 'http/1.1', 'ALPN: what was negotiated (http/1.1, not h2)');
    const ssl = h.tlvs?.ssl;
    t.ok(ssl);
    t.equal(ssl?.client, PP2_CLIENT_SSL, 'no client certificate');
    t.not(ssl?.verify, 0, 'verify is non-zero without a certificate (2.2.5)');
    t.equal(ssl?.version, r.version);
    t.equal(ssl?.cipher, r.cipher);
    t.equal(got.subarray(d.consumed).toString(), 'hello', 'the payload follows the header intact');
  });

  await t.test('a client certificate sets CERT_CONN, verify 0 and the CN', async (t) => {
    const r = await exchange({ cert: fs.readFileSync(pki.cert('client.example').cert), key: fs.readFileSync(pki.cert('client.example').key) });
    t.equal(r.reply, 'world');
    const got = captured[captured.length - 1];
    const d = decode(got, 0, got.length);
    if (d.status !== 'ok') return t.fail(`decode: ${d.status}`);
    const ssl = d.header.tlvs?.ssl;
    t.equal(ssl?.client, PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS);
    t.equal(ssl?.verify, 0);
    t.equal(ssl?.cn, 'client.example');
  });

  await t.test('a bad handshake is counted and reaches no target', async (t) => {
    const f0 = c.handshakeFailures, tc0 = c.targetConnects, f20 = term2.counters.handshakeFailures, cap0 = captured.length;
    const logs0 = nginxes.map((n) => fs.readFileSync(n.accessLog, 'utf8'));
    for (const p of [port, port2]) {
      const closed = await new Promise<boolean>((resolve) => {
        const s = net.connect(p, '127.0.0.1', () => s.write('GET / HTTP/1.1\r\nHost: test.example\r\n\r\n'));
        s.on('data', () => undefined);
        s.on('error', () => undefined);
        s.once('close', () => resolve(true));
        setTimeout(() => { s.destroy(); resolve(false); }, 3000);
      });
      t.ok(closed, `port ${p}: the terminator closed the connection`);
    }
    t.ok(await waitFor(() => c.handshakeFailures === f0 + 1 && term2.counters.handshakeFailures === f20 + 1, 1000), 'one failure on each terminator');
    t.equal(c.targetConnects, tc0, 'no target connection');
    t.equal(captured.length, cap0, 'the raw target saw nothing');
    t.same(nginxes.map((n) => fs.readFileSync(n.accessLog, 'utf8')), logs0, 'no nginx logged anything');
  });

  await t.test('a stopped target: the connect failure is counted and the client sees a closed connection', async (t) => {
    await nginxes[1].kill();
    const f0 = c.targetConnectFailures;
    const started = Date.now();
    const r = await curl(['--local-port', String(portFor(1, base + 500))]);
    t.not(r.code, 0, `curl failed (${r.err.trim()})`);
    t.ok(Date.now() - started < 4000, 'promptly, not at the timeout');
    t.equal(c.targetConnectFailures, f0 + 1);
    const ok = await curl(['--local-port', String(portFor(2, base + 500))]);
    t.equal(ok.code, 0, 'the other targets still serve');
    t.match(ok.out, /^target-2\n/);

    // The raw target too, seen from a Node client: closed after the handshake, no data.
    raw.close();
    for (const s of rawSockets) s.destroy();
    const g0 = term2.counters.targetConnectFailures;
    const res = await exchange({});
    t.equal(res.reply, '');
    t.equal(term2.counters.targetConnectFailures, g0 + 1);
  });

  await t.test("mode 'tls-to-target': re-encrypted to an nginx that takes PROXY v2 in clear, then TLS", async (t) => {
    const ng = await startNginx(tmp, 'target-tls', await freePort(), pki.cert('test.example'));
    nginxes.push(ng);
    const term3 = new TlsTerminator({
      listen: { host: '127.0.0.1', port: 0 },
      certificates: [{ names: ['test.example'], ...pki.cert('test.example') }],
      targets: [{ host: '127.0.0.1', port: ng.port }],
      mode: 'tls-to-target',
      proxyProtocol: true,
      targetTls: { ca: pki.ca, servername: 'test.example' },
    });
    terminators.push(term3);
    const p3 = (await term3.start()).port;
    const r = await run('curl', ['-sS', '--max-time', '5', '--cacert', pki.ca, '--resolve', `test.example:${p3}:127.0.0.1`, '-w', '\n%{local_port}', `https://test.example:${p3}/`]);
    t.equal(r.code, 0, r.err.trim());
    const [body, lp] = r.out.split('\n\n');
    t.equal(body, 'target-tls');
    t.match(fs.readFileSync(ng.accessLog, 'utf8'), new RegExp(`^127\\.0\\.0\\.1:${lp} .* 200$`, 'm'), 'nginx over TLS logged the real client port');
    t.equal(term3.counters.targetConnects, 1);
    await term3.stop();
  });

  await t.test('stop() closes the listener and every flow', async (t) => {
    const hanging = tls.connect({ host: '127.0.0.1', port, servername: 'test.example', ca: caPem });
    await new Promise((r) => hanging.once('secureConnect', r));
    const closed = new Promise((r) => hanging.once('close', r));
    hanging.on('error', () => undefined);
    await term.stop();
    await closed;
    t.pass('open flow closed by stop()');
    const refused = await new Promise<boolean>((r) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); r(false); });
      s.once('error', () => r(true));
    });
    t.ok(refused, 'the listener is gone');
  });
});
