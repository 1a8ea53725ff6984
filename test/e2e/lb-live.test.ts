// The workload distributor live, between network namespaces this test
// creates (LbLab in src/cli/lab.ts, prefix pcl<pid>-, 198.18.0.0/15 only,
// removed in teardown, also on failure): a client, the appliance, and three
// nginx targets on a bridge, each answering with its own name.
//
// 1. mode nat, TUN I/O: curl makes 3,000 connections to the VIP, each
//    target gets its share within 10 %; the same 3,000 client tuples again
//    after a target is removed (SIGHUP with the new configuration): at most
//    the removed target's share + 2 % of them move; a stopped nginx is taken
//    out within its fall count and no new connection reaches it; HTTPS and
//    openssl s_client through the VIP: TLS terminated by the appliance,
//    PROXY v2 to nginx, which logs the client's real address; a target at
//    its maxconn makes new TLS connections redispatch to another target.
// 2. mode dsr-l2, AF_PACKET I/O: the same distribution check; the targets
//    hold the VIP and answer the client themselves (replies come from the
//    VIP, their destination MAC was the only thing we changed: checked with
//    tshark on the bridge).
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { LbLab, LB_LAB, waitForLine } from '../../src/cli/lab.js';
import { adminGet } from '../../src/control/admin.js';
import { makePki } from '../helpers/lb-tls-util.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = path.join(REPO, 'bin/portcullis.js');
const ADDON = path.join(REPO, 'native/build/Release/portcullis.node');

const why = process.getuid?.() !== 0 ? 'needs root (network namespaces, TUN, AF_PACKET)'
  : !fs.existsSync(ADDON) ? 'the native addon is not built (make build)'
  : !fs.existsSync(path.join(REPO, 'dist/control/lb.js')) ? 'dist/ is not built (make build)' : '';

const N = 3000;
const VIP = LB_LAB.vip;

function nginxConf(dir: string, name: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(conf, `daemon off; master_process off; worker_processes 1;
pid ${dir}/nginx.pid; error_log ${dir}/error.log;
events { worker_connections 1024; }
http {
  log_format pp '$proxy_protocol_addr:$proxy_protocol_port $remote_addr:$remote_port $status';
  access_log off;
  client_body_temp_path ${dir}/cb; proxy_temp_path ${dir}/pt; fastcgi_temp_path ${dir}/ft; uwsgi_temp_path ${dir}/ut; scgi_temp_path ${dir}/st;
  server { listen 80 reuseport backlog=4096; default_type text/plain; return 200 "${name} "; }
  server { listen 81 proxy_protocol; access_log ${dir}/pp.log pp; default_type text/plain; return 200 "${name} $proxy_protocol_addr\\n"; }
}
`);
  return conf;
}

/** curl config: one transfer per local port (or n transfers without), each on a new connection. */
function curlConfig(file: string, url: string, ports: number[] | number): void {
  const list = typeof ports === 'number' ? Array.from({ length: ports }, () => 0) : ports;
  const lines: string[] = [];
  for (const p of list) {
    lines.push(`url = "${url}"`, 'header = "Connection: close"', 'write-out = "%{local_port}\\n"', 'max-time = 5', 'connect-timeout = 3');
    if (p !== 0) lines.push(`local-port = ${p}`);
    lines.push('next');
  }
  lines.pop();
  fs.writeFileSync(file, lines.join('\n') + '\n');
}

/** Runs a curl config in the client namespace; returns target name per local port, and the failures. */
function curlRun(lab: LbLab, cfg: string): { byPort: Map<number, string>; names: string[]; ok: number; failed: number; err: string } {
  const r = lab.exec(lab.cl, 'curl', ['-sS', '-K', cfg], { timeoutMs: 240_000 });
  const byPort = new Map<number, string>();
  const names: string[] = [];
  let ok = 0;
  for (const m of r.out.matchAll(/(t\d) (\d+)\n/g)) {
    byPort.set(Number(m[2]), m[1]);
    names.push(m[1]);
    ok++;
  }
  const total = (fs.readFileSync(cfg, 'utf8').match(/^url = /gm) ?? []).length;
  return { byPort, names, ok, failed: total - ok, err: r.err };
}

/** Connections per target (a list: ephemeral client ports repeat over thousands of connections). */
function counts(names: Iterable<string>): Record<string, number> {
  const c: Record<string, number> = {};
  for (const v of names) c[v] = (c[v] ?? 0) + 1;
  return c;
}

interface Running { app: ChildProcess; out: () => string; stop(): Promise<number | null> }

async function startAppliance(lab: LbLab, cfgFile: string): Promise<Running> {
  execFileSync('node', [BIN, 'check-config', cfgFile], { encoding: 'utf8' });
  const app = lab.spawn(lab.gw, 'node', [BIN, 'run', '--config', cfgFile]);
  let out = '';
  app.stdout!.on('data', (d) => { out += d; });
  app.stderr!.on('data', (d) => { out += d; });
  await waitForLine(app, /^READY$/, 20000);
  return {
    app,
    out: () => out,
    stop: () => {
      app.kill('SIGTERM');
      return new Promise((r) => app.once('exit', (c) => r(c)));
    },
  };
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface LbStatus { services: { name: string; targets: { address: string; state: string; effectiveWeight: number }[] }[] }

function checkShares(t: { ok(v: boolean, m: string): void }, c: Record<string, number>, names: string[], total: number, what: string): void {
  for (const n of names) {
    const share = total / names.length;
    const got = c[n] ?? 0;
    t.ok(Math.abs(got - share) <= share * 0.1, `${what}: ${n} got ${got} of ${total} connections (share ${share.toFixed(0)}, within 10 %)`);
  }
}

t.test('distributor live: nat (TUN) and dsr-l2 (AF_PACKET) with nginx targets', { skip: why ? `lb live: ${why}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcl-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const pki = makePki(tmp, ['vip.test']);

  t.test('mode nat over TUN: shares, disruption, health, TLS termination', async (t) => {
    const lab = new LbLab(`pcl${process.pid}-`, 3);
    t.teardown(() => lab.destroy());
    lab.create({ mode: 'tun', localVip: true });
    // The same client ports are used twice: no TIME_WAIT in the client's namespace, so bind() to them succeeds again.
    lab.sysctl(lab.cl, 'net.ipv4.tcp_max_tw_buckets', '0');
    const nginx = lab.targets.map((ns, i) => lab.spawn(ns, 'nginx', ['-c', nginxConf(path.join(tmp, `n${i + 1}`), `t${i + 1}`), '-e', path.join(tmp, `n${i + 1}`, 'error.log')]));
    const cfg = path.join(tmp, 'nat.yaml');
    const writeCfg = (targets: number[]) => fs.writeFileSync(cfg, `io: { mode: tun, tun: ${LB_LAB.tun} }
nat: { inside: [${LB_LAB.insidePrefix}], pool: ${LB_LAB.pool} }
admin: { socket: ${tmp}/nat.sock }
stats: { interval: 0 }
lb:
  services:
    - name: web
      vip: ${VIP}
      port: 80
      mode: nat
      health: { type: http, path: /, interval: 0.2, timeout: 0.2, rise: 2, fall: 2 }
      targets:
${targets.map((i) => `        - { address: ${LB_LAB.target(i)}, port: 80 }`).join('\n')}
    - name: secure
      vip: ${VIP}
      port: 443
      health: { type: tcp, interval: 0.5, timeout: 0.5 }
      tls:
        certificates: [{ names: [vip.test], cert: ${pki.cert('vip.test').cert}, key: ${pki.cert('vip.test').key} }]
        onFull: redispatch
        classify: { sniff: true }
      targets:
${targets.map((i) => `        - { address: ${LB_LAB.target(i)}, port: 81, maxconn: 1 }`).join('\n')}
`);
    writeCfg([0, 1, 2]);
    for (let i = 0; i < 3; i++) {
      await waitFor(`nginx t${i + 1}`, async () => lab.exec(lab.gw, 'curl', ['-s', '-m', '1', `http://${LB_LAB.target(i)}/`]).out.startsWith(`t${i + 1}`) || undefined, 10000);
    }
    const app = await startAppliance(lab, cfg);
    t.teardown(() => { if (app.app.exitCode === null) app.app.kill('SIGKILL'); });
    const sock = `${tmp}/nat.sock`;

    // 1. 3,000 connections, each from its own client port.
    const ports = Array.from({ length: N }, (_, k) => 20000 + k);
    const cc = path.join(tmp, 'ports.curl');
    curlConfig(cc, `http://${VIP}/`, ports);
    const first = curlRun(lab, cc);
    t.equal(first.failed, 0, `all ${N} connections answered`);
    checkShares(t, counts(first.names), ['t1', 't2', 't3'], first.ok, 'nat');

    // 2. Remove t3 (SIGHUP with the new list): the same tuples again.
    writeCfg([0, 1]);
    const before = ((await adminGet(sock, '/counters')) as Record<string, number>).lb_rebuilds;
    app.app.kill('SIGHUP');
    await waitFor('reload', async () => (((await adminGet(sock, '/lb')) as LbStatus).services[0].targets.length === 2 ? true : undefined), 5000);
    t.ok(((await adminGet(sock, '/counters')) as Record<string, number>).lb_rebuilds > before, 'tables rebuilt on SIGHUP');
    const second = curlRun(lab, cc);
    const lost: Record<string, number> = {};
    for (const [p, tgt] of first.byPort) if (!second.byPort.has(p)) lost[tgt] = (lost[tgt] ?? 0) + 1;
    t.equal(second.failed, 0, `all connections answered after the removal (unanswered by first target: ${JSON.stringify(lost)}; now ${JSON.stringify(counts(second.names))}; ${second.err.slice(0, 300)})`);
    let moved = 0, onRemoved = 0, toRemoved = 0;
    for (const [p, tgt] of first.byPort) {
      const now = second.byPort.get(p);
      if (tgt === 't3') onRemoved++;
      if (now !== tgt) moved++;
      if (now === 't3') toRemoved++;
    }
    t.equal(toRemoved, 0, 'no new connection reaches the removed target');
    t.ok(moved <= onRemoved + 0.02 * N, `disruption: ${moved} of ${N} moved (${(100 * moved / N).toFixed(2)} %), the removed target had ${onRemoved} (${(100 * onRemoved / N).toFixed(2)} %)`);
    t.ok(moved >= onRemoved, 'every flow of the removed target moved');

    // 3. HTTPS: terminated here, PROXY v2 to nginx with the client's real address.
    const https = lab.exec(lab.cl, 'curl', ['-sS', '-m', '5', '--cacert', pki.ca, '--resolve', `vip.test:443:${VIP}`, 'https://vip.test/']);
    t.match(https.out, new RegExp(`^t[12] ${LB_LAB.client}\\n$`), `curl https through the VIP: ${JSON.stringify(https.out)} ${https.err}`);
    const clear = lab.exec(lab.cl, 'curl', ['-sS', '-m', '5', `http://${VIP}:443/`]);
    t.match(clear.out, new RegExp(`^t[12] ${LB_LAB.client}\\n$`), `clear HTTP on the same port is classified clear and forwarded with the PROXY header: ${JSON.stringify(clear.out)} ${clear.err}`);
    const s = lab.exec(lab.cl, 'openssl', ['s_client', '-connect', `${VIP}:443`, '-servername', 'vip.test', '-CAfile', pki.ca, '-brief'], { input: 'GET / HTTP/1.0\r\n\r\n' });
    t.match(s.err + s.out, /Verification: OK/, 'openssl s_client verifies the appliance\'s certificate for vip.test');
    const logs = [0, 1].map((i) => { try { return fs.readFileSync(path.join(tmp, `n${i + 1}`, 'pp.log'), 'utf8'); } catch { return ''; } }).join('');
    t.match(logs, new RegExp(`^${LB_LAB.client.replace(/\./g, '\\.')}:\\d+ ${LB_LAB.gwOutside.replace(/\./g, '\\.')}:\\d+ 200$`, 'm'), 'nginx logged the real client address from the PROXY header (the connection came from the gateway)');

    // 3b. Queue overflow: targets take one connection each (maxconn 1) and a
    // full target redispatches. One client holds a keep-alive connection
    // open on target X; every new connection Maglev sends to X goes to the
    // other target instead.
    const held = lab.spawn(lab.cl, 'openssl', ['s_client', '-quiet', '-connect', `${VIP}:443`, '-servername', 'vip.test', '-CAfile', pki.ca], { stdio: ['pipe', 'pipe', 'pipe'] });
    let heldOut = '';
    held.stdout!.on('data', (d) => { heldOut += d; });
    held.stdin!.write('GET / HTTP/1.1\r\nHost: vip.test\r\n\r\n');
    const x = await waitFor('held connection answered', async () => /(t[12]) 198\.18\.1\.2/.exec(heldOut)?.[1], 5000);
    const q0 = (await adminGet(sock, '/counters')) as Record<string, number>;
    const answered: string[] = [];
    for (let k = 0; k < 20; k++) {
      const r = lab.exec(lab.cl, 'curl', ['-sS', '-m', '5', '--cacert', pki.ca, '--resolve', `vip.test:443:${VIP}`, 'https://vip.test/']);
      answered.push(r.out.split(' ')[0]);
    }
    const q1 = (await adminGet(sock, '/counters')) as Record<string, number>;
    held.kill('SIGKILL');
    const other = x === 't1' ? 't2' : 't1';
    t.same(answered, answered.map(() => other), `while ${x} is full every new HTTPS connection is answered by ${other}`);
    const redis = q1.lb_queue_secure_redispatched - q0.lb_queue_secure_redispatched;
    t.ok(redis >= 1 && redis <= 20, `${redis} of 20 connections redispatched (counter lb_queue_secure_redispatched)`);

    // 4. Back to three, then stop t2's nginx: out within its fall count.
    writeCfg([0, 1, 2]);
    app.app.kill('SIGHUP');
    await waitFor('reload back', async () => (((await adminGet(sock, '/lb')) as LbStatus).services[0].targets.length === 3 ? true : undefined), 5000);
    await waitFor('t3 up', async () => (((await adminGet(sock, '/lb')) as LbStatus).services[0].targets.every((x) => x.state === 'up') ? true : undefined), 5000);
    const killedAt = Date.now();
    nginx[1].kill('SIGKILL');
    const downAfter = await waitFor('t2 down', async () => (((await adminGet(sock, '/lb')) as LbStatus).services[0].targets[1].state === 'down' ? Date.now() - killedAt : undefined), 5000);
    // fall 2 checks, each at most interval (0.2 s, +10 % jitter) + timeout (0.2 s).
    t.ok(downAfter <= 2 * (220 + 200) + 300, `stopped nginx taken out after ${downAfter} ms (fall 2, interval 0.2 s, timeout 0.2 s)`);
    const st = execFileSync('node', [BIN, 'lb', 'status', '--socket', sock], { encoding: 'utf8' });
    t.match(st, new RegExp(`${LB_LAB.target(1).replace(/\./g, '\\.')}:80\\s+down`), `portcullis lb status shows the stopped target down:\n${st}`);
    const cc2 = path.join(tmp, 'after-down.curl');
    curlConfig(cc2, `http://${VIP}/`, 300);
    const third = curlRun(lab, cc2);
    t.equal(third.failed, 0, 'every new connection answered while t2 is down');
    t.equal(counts(third.names).t2 ?? 0, 0, 'none reached the stopped target');

    const code = await app.stop();
    t.equal(code, 0, 'appliance stops cleanly');
    const final = app.out();
    t.match(final, /lb_distributed\s+\d+/, 'final counters name the distributor');
    t.match(final, /lb_reply_rewritten\s+\d+/, 'replies were rewritten back to the VIP');
  });

  t.test('mode dsr-l2 over AF_PACKET: shares, replies straight from the targets', async (t) => {
    const lab = new LbLab(`pcm${process.pid}-`, 3);
    t.teardown(() => lab.destroy());
    lab.create({ mode: 'af-packet', dsr: true });
    lab.targets.forEach((ns, i) => lab.spawn(ns, 'nginx', ['-c', nginxConf(path.join(tmp, `d${i + 1}`), `t${i + 1}`), '-e', path.join(tmp, `d${i + 1}`, 'error.log')]));
    for (let i = 0; i < 3; i++) {
      await waitFor(`nginx t${i + 1}`, async () => lab.exec(lab.gw, 'curl', ['-s', '-m', '1', `http://${LB_LAB.target(i)}/`]).out.startsWith(`t${i + 1}`) || undefined, 10000);
    }
    const cfg = path.join(tmp, 'dsr.yaml');
    fs.writeFileSync(cfg, `io: { mode: af-packet, inside: gwi, outside: gwo }
nat: { inside: [${LB_LAB.insidePrefix}], pool: ${LB_LAB.pool} }
admin: { socket: ${tmp}/dsr.sock }
stats: { interval: 0 }
lb:
  services:
    - name: web
      vip: ${VIP}
      port: 80
      mode: dsr-l2
      health: { type: tcp, interval: 0.5, timeout: 0.5 }
      targets:
${[0, 1, 2].map((i) => `        - { address: ${LB_LAB.target(i)}, port: 80 }`).join('\n')}
`);
    const app = await startAppliance(lab, cfg);
    t.teardown(() => { if (app.app.exitCode === null) app.app.kill('SIGKILL'); });
    // The targets' MACs come from the kernel's neighbour table (the health checks fill it).
    await waitFor('first answer', async () => lab.exec(lab.cl, 'curl', ['-s', '-m', '1', `http://${VIP}/`]).out.match(/^t\d /) ? true : undefined, 10000);
    const cap = path.join(tmp, 'dsr.pcap');
    const dump = lab.spawn(lab.br, 'tcpdump', ['-i', 'br0', '-n', '-U', '-w', cap, '-c', '2000', 'tcp port 80']);
    await new Promise((r) => setTimeout(r, 500));
    const cc = path.join(tmp, 'dsr.curl');
    curlConfig(cc, `http://${VIP}/`, N);
    const r = curlRun(lab, cc);
    t.equal(r.failed, 0, `all ${N} connections answered`);
    checkShares(t, counts(r.names), ['t1', 't2', 't3'], r.ok, 'dsr-l2');
    dump.kill('SIGINT');
    await new Promise((r) => dump.once('exit', r));
    const macs = [0, 1, 2].map((i) => lab.targetMac(i));
    const rows = execFileSync('tshark', ['-r', cap, '-T', 'fields', '-e', 'eth.dst', '-e', 'ip.src', '-e', 'ip.dst', '-e', 'tcp.srcport', '-e', 'tcp.dstport'], { encoding: 'utf8' })
      .trim().split('\n').map((l) => l.split('\t'));
    const toVip = rows.filter((x) => x[2] === VIP);
    const fromVip = rows.filter((x) => x[1] === VIP);
    t.ok(toVip.length > 100 && fromVip.length > 100, `tshark saw ${toVip.length} packets to the VIP and ${fromVip.length} from it on the bridge`);
    t.ok(toVip.every((x) => macs.includes(x[0])), 'every packet to the VIP carries a target\'s MAC (only the MAC changed)');
    t.ok(toVip.every((x) => x[1] === LB_LAB.client && x[4] === '80'), 'addresses and ports untouched');
    t.ok(fromVip.every((x) => x[2] === LB_LAB.client && x[3] === '80'), 'replies come from the VIP itself, straight from the targets');
    const code = await app.stop();
    t.equal(code, 0);
    t.match(app.out(), /lb_dsr_return\s+\d+/, 'the replies crossed the gateway unchanged (counted, not translated)');
  });
});
