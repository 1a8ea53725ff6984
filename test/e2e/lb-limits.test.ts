// Per-target limits on the packet path, live (src/lb/distributor.ts
// "Limits"): LbLab (src/cli/lab.ts, namespaces prefixed plm<pid>-, removed in
// teardown also on failure), the appliance in TUN mode run from src/, three
// nginx targets with maxconn 1 for a nat service.
//
// 1. onFull redispatch: two slow downloads (curl --limit-rate) hold two
//    targets; every new connection is answered by the third (redispatched,
//    counted); a third download fills it; the next connection is refused
//    with a TCP RST from the VIP (curl: connection refused); killing one
//    download (its client resets) frees its target for the next connection.
// 2. SIGHUP to onFull queue: with every target full, a new connection's SYN
//    is held, its retransmission after ~1 s takes no second slot, and when
//    the downloads end it is released and answered.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { LbLab, LB_LAB, waitForLine } from '../../src/cli/lab.js';
import { adminGet } from '../../src/control/admin.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const RUN = path.join(REPO, 'bin/portcullis.js');
const ADDON = path.join(REPO, 'native/build/Release/portcullis.node');
const VIP = LB_LAB.vip;

const have = (bin: string) => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'].some((d) => fs.existsSync(path.join(d, bin)));
const why = process.getuid?.() !== 0 ? 'needs root (network namespaces, TUN)'
  : !fs.existsSync(ADDON) ? 'the native addon is not built (make build)'
  : !have('nginx') || !have('curl') || !have('ss') ? 'needs nginx, curl and ss' : '';

function nginxConf(dir: string, www: string, name: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(conf, `daemon off; master_process off; worker_processes 1;
pid ${dir}/nginx.pid; error_log ${dir}/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/cb; proxy_temp_path ${dir}/pt; fastcgi_temp_path ${dir}/ft; uwsgi_temp_path ${dir}/ut; scgi_temp_path ${dir}/st;
  server {
    listen 80;
    default_type application/octet-stream;
    location = / { default_type text/plain; return 200 "${name} "; }
    location /big.bin { root ${www}; }
  }
}
`);
  return conf;
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await Promise.resolve().then(fn).catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('lb limits live: maxconn 1 per nginx target, redispatch, reset, queue', { skip: why ? `lb limits live: ${why}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const lab = new LbLab(`plm${process.pid}-`, 3);
  t.teardown(() => lab.destroy());
  lab.create({ mode: 'tun' });
  // A file far larger than the socket buffers: at 20 KB/s its download holds its connection for minutes.
  const www = path.join(tmp, 'www');
  fs.mkdirSync(www);
  fs.writeFileSync(path.join(www, 'big.bin'), Buffer.alloc(24 << 20, 0x61));
  lab.targets.forEach((ns, i) => lab.spawn(ns, 'nginx', ['-c', nginxConf(path.join(tmp, `n${i + 1}`), www, `t${i + 1}`), '-e', path.join(tmp, `n${i + 1}`, 'error.log')]));
  for (let i = 0; i < 3; i++) {
    await waitFor(`nginx t${i + 1}`, () => lab.exec(lab.gw, 'curl', ['-s', '-m', '1', `http://${LB_LAB.target(i)}/`]).out.startsWith(`t${i + 1}`) || undefined, 10000);
  }
  const cfg = path.join(tmp, 'lb.yaml');
  const sock = path.join(tmp, 'admin.sock');
  const writeCfg = (onFull: string) => fs.writeFileSync(cfg, `io: { mode: tun, tun: ${LB_LAB.tun} }
nat: { inside: [${LB_LAB.insidePrefix}], pool: ${LB_LAB.pool} }
admin: { socket: ${sock} }
stats: { interval: 0 }
lb:
  services:
    - name: web
      vip: ${VIP}
      port: 80
      mode: nat
      health: { type: tcp, interval: 1, timeout: 0.5 }
      limits: { onFull: ${onFull}, onQueueFull: reject, onQueueTimeout: reject }
      targets:
${[0, 1, 2].map((i) => `        - { address: ${LB_LAB.target(i)}, port: 80, maxconn: 1, queueTimeout: 8 }`).join('\n')}
`);
  writeCfg('redispatch');
  const app = lab.spawn(lab.gw, 'node', [RUN, 'run', '--config', cfg], { cwd: REPO });
  let log = '';
  app.stdout!.on('data', (d) => { log += d; });
  app.stderr!.on('data', (d) => { log += d; });
  t.teardown(() => { if (app.exitCode === null) app.kill('SIGKILL'); });
  await waitForLine(app, /^READY$/, 30000);
  const counters = async () => (await adminGet(sock, '/counters')) as Record<string, number>;

  /** Established connections from the client on each target (ss in the target's namespace). */
  const holders = (): number[] => lab.targets.map((ns) => lab.exec(ns, 'ss', ['-Htn', 'state', 'established', '(', 'sport', '=', ':80', ')'])
    .out.split('\n').filter((l) => l.includes(LB_LAB.client)).length);
  const total = () => holders().reduce((a, b) => a + b, 0);
  const slow: ChildProcess[] = [];
  const startSlow = async (): Promise<void> => {
    const want = total() + 1;
    slow.push(lab.spawn(lab.cl, 'curl', ['-s', '-o', '/dev/null', '--limit-rate', '20k', `http://${VIP}/big.bin`]));
    await waitFor(`download ${slow.length} connected`, () => (total() === want ? true : undefined), 5000);
  };
  const get = () => {
    const t0 = Date.now();
    const r = lab.exec(lab.cl, 'curl', ['-sS', '-m', '4', '--connect-timeout', '3', `http://${VIP}/`], { timeoutMs: 10000 });
    return { code: r.code, name: /^(t\d) $/.exec(r.out)?.[1] ?? null, err: r.err.trim(), ms: Date.now() - t0 };
  };

  // 1. Two downloads hold two targets (the second redispatched if Maglev gave it the first's).
  await startSlow();
  await startSlow();
  let h = holders();
  t.same([...h].sort(), [0, 1, 1], `two targets hold one download each (${h.join(' ')})`);
  const free = `t${h.indexOf(0) + 1}`;
  const c0 = await counters();
  const names: (string | null)[] = [];
  for (let k = 0; k < 12; k++) names.push(get().name);
  const c1 = await counters();
  t.same(names, Array(12).fill(free), `every new connection answered by the free target ${free}: ${names.join(' ')}`);
  t.ok(c1.lb_limit_redispatched - c0.lb_limit_redispatched > 0, `redispatched ${c1.lb_limit_redispatched - c0.lb_limit_redispatched} of 12 (the rest were Maglev's choice already)`);
  t.ok(c1.lb_conn_closed - c0.lb_conn_closed >= 12, 'each short connection ended its count (client FIN)');

  // 2. A third download fills the last target: the next connection is refused with a RST.
  await startSlow();
  h = holders();
  t.same(h, [1, 1, 1], 'every target holds one download');
  const refused = get();
  // Exit 7 at once (ECONNREFUSED: a RST answered the SYN), not 28 after the 3 s connect timeout (a SYN dropped).
  t.equal(refused.code, 7, `curl could not connect (${refused.err})`);
  t.ok(refused.ms < 1500, `refused at once (${refused.ms} ms): the SYN was answered by a reset`);
  const c2 = await counters();
  t.ok(c2.lb_limit_rejected - c1.lb_limit_rejected >= 1, 'counted as rejected');
  t.ok(c2.originated_sent > c1.originated_sent, 'the reset left through the raw socket');

  // 3. One download ends (its client resets): its target takes the next connection.
  const victim = slow.shift()!;
  const before = holders();
  victim.kill('SIGKILL');
  await waitFor('download ended', () => (total() === 2 ? true : undefined), 5000);
  const freed = `t${before.findIndex((x, i) => x === 1 && holders()[i] === 0) + 1}`;
  const after = get();
  t.equal(after.name, freed, `the freed target ${freed} answers the next connection`);
  t.ok((await counters()).lb_conn_closed > c2.lb_conn_closed, 'the killed download ended its count');

  // 4. onFull queue (SIGHUP): all full again (filled while redispatch still finds the free target: with
  //    queue, a new connection waits for its own Maglev target), a new SYN is held, then released.
  await startSlow();
  t.same(holders(), [1, 1, 1], 'full again');
  writeCfg('queue');
  const rb = (await counters()).lb_rebuilds;
  app.kill('SIGHUP');
  await waitFor('reload', async () => ((await counters()).lb_rebuilds > rb ? true : undefined), 5000);
  t.same(holders(), [1, 1, 1], 'the reload kept every connection and its count');
  const q0 = await counters();
  const waiting = lab.spawn(lab.cl, 'curl', ['-sS', '-m', '12', `http://${VIP}/`]);
  let body = '';
  waiting.stdout!.on('data', (d) => { body += d; });
  const done = new Promise<number | null>((r) => waiting.once('exit', (c) => r(c)));
  await waitFor('SYN held', async () => ((await counters()).lb_limit_queued > q0.lb_limit_queued ? true : undefined), 3000);
  await waitFor('SYN retransmitted', async () => ((await counters()).lb_limit_queued_retransmit > q0.lb_limit_queued_retransmit ? true : undefined), 3000);
  const q1 = await counters();
  t.equal(q1.lb_limit_queued - q0.lb_limit_queued, 1, 'held once: the retransmission took no second slot');
  for (const s of slow) s.kill('SIGKILL');
  const code = await done;
  t.equal(code, 0, 'the held connection completed');
  t.match(body, /^t\d $/, `answered by a target (${body.trim()})`);
  const q2 = await counters();
  t.ok(q2.lb_limit_dequeued - q1.lb_limit_dequeued >= 1, 'released from the queue');
  t.equal(q2.lb_limit_queue_timeout - q0.lb_limit_queue_timeout, 0, 'before its queue timeout');
  app.kill('SIGTERM');
  await new Promise((r) => app.once('exit', r));
  t.match(log, /lb_limit_dequeued\s+\d+/, 'final counters list the limit counters');
});
