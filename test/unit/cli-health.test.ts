// `portcullis health` (src/cli/health.ts) against a stand-in admin API on a
// Unix socket: healthy only for a 200 with {"ok": true}; every other answer,
// a missing socket and a server that never answers give exit code 1 with a
// reason; --config takes the socket from a configuration file.
import t from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { main } from '../../src/cli/main.js';
import { probeHealth } from '../../src/cli/health.js';

type Mode = 'ok' | 'status500' | 'notjson' | 'okfalse' | 'hang';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-health-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

let mode: Mode = 'ok';
let requests = 0;
const sock = path.join(tmp, 'admin.sock');
const server = http.createServer((req, res) => {
  requests++;
  if (req.url !== '/healthz') { res.writeHead(404); res.end('{}'); return; }
  switch (mode) {
    case 'ok': res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"ok":true}\n'); return;
    case 'status500': res.writeHead(500); res.end('{"error":"broken"}'); return;
    case 'notjson': res.writeHead(200); res.end('<html>'); return;
    case 'okfalse': res.writeHead(200); res.end('{"ok":false}'); return;
    case 'hang': return; // never answers
  }
});
t.teardown(() => { server.closeAllConnections(); server.close(); });

/** Runs the CLI in-process; stdout and stderr are captured (stdout would otherwise mix into TAP). */
async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const ow = process.stdout.write;
  const ew = process.stderr.write;
  process.stdout.write = ((s: string | Uint8Array) => { out += String(s); return true; }) as typeof process.stdout.write;
  process.stderr.write = ((s: string | Uint8Array) => { err += String(s); return true; }) as typeof process.stderr.write;
  try {
    const code = await main(['node', 'portcullis', 'health', ...args]);
    return { code, out, err };
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
}

t.test('no socket: unhealthy, says no appliance is listening', async (t) => {
  const r = await cli(['--socket', path.join(tmp, 'absent.sock')]);
  t.equal(r.code, 1);
  t.match(r.err, /unhealthy: no appliance is listening on .*absent\.sock/);
  t.equal(r.out, '');
});

t.test('with a stand-in admin API', async (t) => {
  await new Promise<void>((resolve) => server.listen(sock, resolve));

  await t.test('200 {"ok":true}: healthy, exit 0', async (t) => {
    mode = 'ok';
    const before = requests;
    const r = await cli(['--socket', sock]);
    t.equal(r.code, 0, r.err);
    t.equal(r.out, `ok ${sock}\n`);
    t.equal(requests, before + 1, 'exactly one request');
    const q = await cli(['--socket', sock, '--quiet']);
    t.equal(q.code, 0);
    t.equal(q.out, '', '--quiet prints nothing');
  });

  for (const [m, re] of [['status500', /answered 500/], ['notjson', /other than JSON/], ['okfalse', /did not say ok/]] as const) {
    await t.test(`${m}: unhealthy, exit 1`, async (t) => {
      mode = m;
      const r = await cli(['--socket', sock]);
      t.equal(r.code, 1);
      t.match(r.err, re);
    });
  }

  await t.test('a server that never answers: unhealthy after --timeout', async (t) => {
    mode = 'hang';
    const t0 = Date.now();
    const r = await cli(['--socket', sock, '--timeout', '300']);
    const ms = Date.now() - t0;
    t.equal(r.code, 1);
    t.match(r.err, /no answer from .* within 300 ms/);
    t.ok(ms >= 280 && ms < 3000, `gave up after ${ms} ms`);
    server.closeAllConnections();
  });

  await t.test('--config: the socket comes from admin.socket', async (t) => {
    mode = 'ok';
    const cfg = path.join(tmp, 'c.yaml');
    fs.writeFileSync(cfg, `io: { tun: pcl0 }\nnat:\n  inside: [198.18.1.0/24]\n  pool: [198.19.2.1]\nadmin: { socket: ${sock} }\n`);
    const r = await cli(['--config', cfg, '--quiet']);
    t.equal(r.code, 0, r.err);
    // --socket wins over --config.
    const other = await cli(['--config', cfg, '--socket', path.join(tmp, 'absent.sock')]);
    t.equal(other.code, 1);
    const bad = path.join(tmp, 'bad.yaml');
    fs.writeFileSync(bad, 'nat: { pool: 12 }\n');
    const b = await cli(['--config', bad]);
    t.equal(b.code, 2, 'an invalid configuration is a usage error');
    t.match(b.err, /bad\.yaml: invalid configuration/);
  });

  await t.test('probeHealth never rejects and reports the reason', async (t) => {
    mode = 'ok';
    t.same(await probeHealth(sock, 1000), { ok: true });
    mode = 'status500';
    const r = await probeHealth(sock, 1000);
    t.equal(r.ok, false);
  });
});
