// lb-tls: TLS termination (src/lb/tls/terminator.ts) against HAProxy doing the
// same job in the same run, on loopback.
//
// The job, for both: accept TLS on 127.0.0.1 (one P-256 certificate, TLS 1.3
// as negotiated by OpenSSL 3.0 on both sides, ALPN http/1.1), open a plain TCP
// connection to one nginx target, send a PROXY v2 header with the SSL TLV
// (ours: always in 'tcp' mode; HAProxy: `send-proxy-v2-ssl`), then forward
// the byte stream both ways (HAProxy `mode tcp`). The target is one nginx
// (`listen ... proxy_protocol`, `return 200 "ok\n"`) shared by both.
//
// - ours: TlsTerminator in its own `node --import=tsx` child
//   (bench/helpers/lb-tls-terminator.ts): one event loop, single-threaded.
// - haproxy: Debian's haproxy, `nbthread 1`, no logging, foreground (-db).
// - Load (bench/helpers/lb-tls-load.ts, a Node child, the same for both, run
//   one after the other, WARMUP_S then MEASURE_S each):
//   (a) full TLS handshakes/s: CONCURRENCY loops of new connections, no
//       session resumption;
//   (b) HTTPS requests/s: CONCURRENCY keep-alive connections, GET / one at a
//       time per connection.
// - Placement (2 cores): the proxy under test is pinned to CPU 1 (taskset, all
//   its threads), the load generator and nginx to CPU 0, so each proxy gets
//   exactly one core and never competes with its load. LB_TLS_PIN=0 turns
//   pinning off. The proxy's own CPU time (/proc/<pid>/stat, every thread) is
//   read over the measured window, so the table also gives work per CPU
//   second: a proxy below 100% CPU was limited by the client, not by itself.
// - LB_TLS_PROF=1 runs ours with --cpu-prof (profiles, one per thread, in bench/results/lb-tls-prof/).
//
// Run: node --import=tsx bench/lb-tls.ts   (about 40 s)

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { spawn, type ChildProcess } from 'node:child_process';
import { makePki, freePort, waitListening } from '../test/helpers/lb-tls-util.js';
import { BENCH_DIR, RESULTS_DIR, ratio, report, type Measured } from './common.js';

const MEASURE_S = 5;
const WARMUP_S = 1;
const CONCURRENCY = 16;
const TARGET_RATIO = 0.5;
const SERVERNAME = 'bench.portcullis.test';
const PIN = process.env.LB_TLS_PIN !== '0';
const PROF = process.env.LB_TLS_PROF === '1';
const PROXY_CPU = '1', LOAD_CPU = '0';
const CLK_TCK = 100; // USER_HZ on Linux: /proc/<pid>/stat counts in 1/100 s

const children = new Set<ChildProcess>();

function start(cpu: string, cmd: string, args: string[], opts: { stdout?: 'pipe' | 'ignore' } = {}): ChildProcess {
  // taskset execs the command, so the child's pid is the command's.
  const [c, a] = PIN ? ['taskset', ['-c', cpu, cmd, ...args]] : [cmd, args];
  const p = spawn(c, a, { stdio: ['ignore', opts.stdout ?? 'pipe', 'pipe'], cwd: path.dirname(BENCH_DIR) });
  children.add(p);
  p.once('exit', () => children.delete(p));
  return p;
}

function exited(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((r) => p.once('exit', () => r()));
}

async function stopChild(p: ChildProcess, graceMs = 0): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  if (graceMs > 0) {
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), graceMs);
    await exited(p);
    clearTimeout(t);
    return;
  }
  p.kill('SIGKILL');
  await exited(p);
}

function stderrOf(p: ChildProcess): () => string {
  let err = '';
  p.stderr?.on('data', (b) => { err += b; if (err.length > 8192) err = err.slice(-8192); });
  return () => err;
}

/** Seconds of CPU (user + system, all threads) a process has used. */
function cpuSeconds(pid: number): number {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime (14), stime (15)
}

/** Lines of a child's stdout, each handed to `on`. */
function onLines(p: ChildProcess, on: (line: string) => void): void {
  readline.createInterface({ input: p.stdout! }).on('line', on);
}

async function startNginx(dir: string, port: number): Promise<ChildProcess> {
  const d = path.join(dir, 'nginx');
  fs.mkdirSync(d);
  const conf = path.join(d, 'nginx.conf');
  // One worker, no access log, keep-alive for the whole run (the default
  // keepalive_requests 1000 would close the load's connections mid-run).
  fs.writeFileSync(conf, `daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 8192;
pid ${d}/nginx.pid; error_log ${d}/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000; keepalive_timeout 60s;
  client_body_temp_path ${d}/cb; proxy_temp_path ${d}/pt; fastcgi_temp_path ${d}/ft; uwsgi_temp_path ${d}/ut; scgi_temp_path ${d}/st;
  server {
    listen 127.0.0.1:${port} proxy_protocol backlog=4096;
    default_type text/plain;
    return 200 "ok\\n";
  }
}
`);
  const p = start(LOAD_CPU, 'nginx', ['-c', conf, '-p', d, '-e', `${d}/error.log`]);
  const err = stderrOf(p);
  await Promise.race([waitListening(port), exited(p).then(() => { throw new Error(`nginx exited: ${err()}`); })]);
  return p;
}

async function startHaproxy(dir: string, port: number, pem: string, target: number): Promise<ChildProcess> {
  const cfg = path.join(dir, 'haproxy.cfg');
  // The same job as ours: terminate TLS, PROXY v2 with the SSL TLV, forward
  // the stream (mode tcp). nbthread 1: ours is one event loop. No `log`
  // lines: nothing is logged. maxconn sized under the 20000 nofile limit.
  fs.writeFileSync(cfg, `global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend tls_in
  bind 127.0.0.1:${port} ssl crt ${pem} alpn http/1.1
  default_backend nginx
backend nginx
  server n1 127.0.0.1:${target} send-proxy-v2-ssl
`);
  const p = start(PROXY_CPU, 'haproxy', ['-f', cfg, '-db']);
  const err = stderrOf(p);
  await Promise.race([waitListening(port), exited(p).then(() => { throw new Error(`haproxy exited: ${err()}`); })]);
  return p;
}

interface Ours { proc: ChildProcess; counters: Promise<Record<string, number> | null> }

async function startOurs(port: number, cert: { cert: string; key: string }, target: number, profDir: string): Promise<Ours> {
  const cfg = {
    listen: { host: '127.0.0.1', port },
    certificates: [{ names: [SERVERNAME], cert: cert.cert, key: cert.key }],
    targets: [{ host: '127.0.0.1', port: target }],
    mode: 'tcp',
    proxyProtocol: true,
  };
  const prof = PROF ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [];
  const p = start(PROXY_CPU, process.execPath, [...prof, '--import=tsx', path.join(BENCH_DIR, 'helpers', 'lb-tls-terminator.ts'), JSON.stringify(cfg)]);
  const err = stderrOf(p);
  let ready!: (v: void) => void;
  const readyP = new Promise<void>((r) => { ready = r; });
  let gotCounters!: (v: Record<string, number> | null) => void;
  const counters = new Promise<Record<string, number> | null>((r) => { gotCounters = r; });
  onLines(p, (line) => {
    if (line.startsWith('ready ')) ready();
    else if (line.startsWith('counters ')) gotCounters(JSON.parse(line.slice(9)) as Record<string, number>);
  });
  void exited(p).then(() => gotCounters(null));
  await Promise.race([readyP, exited(p).then(() => { throw new Error(`terminator child exited: ${err()}`); })]);
  return { proc: p, counters };
}

interface LoadResult {
  rate: number;
  count: number;
  errors: number;
  seconds: number;
  /** Cores the proxy used over the window (1 = one core busy all the time). */
  proxy_cpu: number;
  /** Operations per CPU second of the proxy. */
  per_proxy_cpu_s: number;
  /** Cores the load generator used. */
  client_cpu: number;
}

/** Runs one load child against a proxy, sampling the proxy's CPU time over the measured window. */
function runLoad(kind: 'handshakes' | 'requests', port: number, proxyPid: number): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const p = start(LOAD_CPU, process.execPath, ['--import=tsx', path.join(BENCH_DIR, 'helpers', 'lb-tls-load.ts'), kind, String(port), String(MEASURE_S), String(CONCURRENCY), String(WARMUP_S)]);
    const err = stderrOf(p);
    let cpu0 = 0, result: LoadResult | null = null;
    const timer = setTimeout(() => p.kill('SIGKILL'), (MEASURE_S + WARMUP_S + 15) * 1000);
    onLines(p, (line) => {
      if (line === 'measuring') cpu0 = cpuSeconds(proxyPid);
      else if (line.startsWith('result ')) {
        const cpu = cpuSeconds(proxyPid) - cpu0;
        const r = JSON.parse(line.slice(7)) as { count: number; errors: number; seconds: number; rate: number; clientCpu: number };
        const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
        result = {
          rate: Math.round(r.rate), count: r.count, errors: r.errors, seconds: round(r.seconds, 3),
          proxy_cpu: round(cpu / r.seconds), per_proxy_cpu_s: cpu > 0 ? Math.round(r.count / cpu) : NaN, client_cpu: round(r.clientCpu),
        };
      }
    });
    void exited(p).then(() => {
      clearTimeout(timer);
      if (result) resolve(result);
      else reject(new Error(`load ${kind} on :${port} gave no result: ${err()}`));
    });
  });
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-lb-tls-'));
  const onSignal = () => { for (const c of children) c.kill('SIGKILL'); fs.rmSync(dir, { recursive: true, force: true }); process.exit(130); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const pki = makePki(dir, [SERVERNAME]);
    const cert = pki.cert(SERVERNAME);
    const pem = path.join(dir, 'haproxy.pem'); // HAProxy wants certificate and key in one file
    fs.writeFileSync(pem, fs.readFileSync(cert.cert, 'utf8') + fs.readFileSync(cert.key, 'utf8'));

    const [nginxPort, oursPort, haPort] = [await freePort(), await freePort(), await freePort()];
    await startNginx(dir, nginxPort);
    const ha = await startHaproxy(dir, haPort, pem, nginxPort);
    const ours = await startOurs(oursPort, cert, nginxPort, path.join(RESULTS_DIR, 'lb-tls-prof'));

    const res: Record<string, LoadResult> = {};
    const names = {
      oursHs: 'ours tls handshakes', haHs: 'haproxy tls handshakes',
      oursRq: 'ours https requests (keep-alive)', haRq: 'haproxy https requests (keep-alive)',
    };
    res[names.oursHs] = await runLoad('handshakes', oursPort, ours.proc.pid!);
    res[names.haHs] = await runLoad('handshakes', haPort, ha.pid!);
    res[names.oursRq] = await runLoad('requests', oursPort, ours.proc.pid!);
    res[names.haRq] = await runLoad('requests', haPort, ha.pid!);

    await stopChild(ours.proc, 3000);
    const counters = await ours.counters;
    if (!counters || counters.targetConnects === 0 || counters.proxyHeaders === 0) throw new Error(`ours forwarded nothing: counters ${JSON.stringify(counters)}`);

    console.log(`\n## lb-tls: TLS termination + PROXY v2 to one nginx, loopback, ${MEASURE_S} s per run after ${WARMUP_S} s warm-up, concurrency ${CONCURRENCY}`);
    console.log(`  ours: one node event loop (single-threaded); haproxy: nbthread 1. ${PIN ? `Proxy pinned to CPU ${PROXY_CPU}, load + nginx to CPU ${LOAD_CPU}.` : 'Not pinned.'}`);
    console.log(`  ${'case'.padEnd(36)} ${'rate/s'.padStart(9)} ${'errors'.padStart(7)} ${'proxy cpu'.padStart(10)} ${'per proxy cpu-s'.padStart(16)} ${'client cpu'.padStart(11)}`);
    for (const [k, v] of Object.entries(res)) {
      console.log(`  ${k.padEnd(36)} ${String(v.rate).padStart(9)} ${String(v.errors).padStart(7)} ${v.proxy_cpu.toFixed(2).padStart(10)} ${String(v.per_proxy_cpu_s).padStart(16)} ${v.client_cpu.toFixed(2).padStart(11)}`);
    }
    const hsRatio = ratio(res[names.oursHs].rate, res[names.haHs].rate);
    const rqRatio = ratio(res[names.oursRq].rate, res[names.haRq].rate);
    report({
      suite: 'lb-tls',
      results: res as unknown as Record<string, Measured & Record<string, unknown>>,
      ratios: {
        'ours/haproxy-tls-handshakes': hsRatio,
        'ours/haproxy-https-requests': rqRatio,
        'ours/haproxy-tls-handshakes per proxy cpu-s': ratio(res[names.oursHs].per_proxy_cpu_s, res[names.haHs].per_proxy_cpu_s),
        'ours/haproxy-https-requests per proxy cpu-s': ratio(res[names.oursRq].per_proxy_cpu_s, res[names.haRq].per_proxy_cpu_s),
      },
      heap_growth_per_packet: {},
      targets: {
        'ours/haproxy-tls-handshakes': { value: hsRatio, target: `>= ${TARGET_RATIO}`, met: hsRatio >= TARGET_RATIO },
        'ours/haproxy-https-requests': { value: rqRatio, target: `>= ${TARGET_RATIO}`, met: rqRatio >= TARGET_RATIO },
      },
      ours_counters: counters,
      setup: {
        measure_s: MEASURE_S, warmup_s: WARMUP_S, concurrency: CONCURRENCY, pinned: PIN,
        ours: 'TlsTerminator mode tcp, PROXY v2 (SSL, ALPN, AUTHORITY TLVs), one node event loop',
        haproxy: 'mode tcp, bind ssl crt alpn http/1.1, server send-proxy-v2-ssl, nbthread 1, no log',
        target: 'one nginx worker, listen proxy_protocol, return 200 "ok\\n", access_log off',
        certificate: 'ECDSA P-256 leaf from a throwaway CA; TLS 1.3 negotiated by OpenSSL 3.0 on both sides',
        client: 'node tls.connect, no session resumption; requests: one GET / in flight per keep-alive connection',
        node_openssl: process.versions.openssl,
      },
    });
  } finally {
    await Promise.all([...children].map((c) => stopChild(c)));
    fs.rmSync(dir, { recursive: true, force: true });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await main();
