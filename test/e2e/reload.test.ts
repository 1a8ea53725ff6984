// SIGHUP while connections are open, between network namespaces this test
// creates (NatLab and LbLab from src/cli/lab.ts, prefixes pcr<pid>- and
// pcs<pid>-, 198.18.0.0/15 only, removed in teardown, also on failure).
// Long-lived TCP conversations (test/helpers/reload-stream.ts: the server
// streams 8 KiB every 50 ms, the client sends 512 B every 100 ms, both sides
// hash everything) are held open across the reloads and must end with every
// byte intact in both directions.
//
// 1. NAT over TUN: a reload that changes log.level and stats.interval (live)
//    and nat.filtering and nat.timeouts.udp (need a restart: logged by key
//    path, and the NAT really keeps filtering address-dependent), then a file
//    with a YAML syntax error (refused, logged). The held connections keep
//    their outside ports (the server's view and `nat/mappings` agree before
//    and after), new connections are translated.
// 2. lb nat service over TUN: reloads that add a target and remove another
//    (t1 -> t3), then change weights, then a file with a bad weight (refused,
//    the running targets stay). Connections held on the removed target t1
//    finish intact; new connections follow each new configuration.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { NatLab, LbLab, LAB, LB_LAB, NsLab, waitForLine } from '../../src/cli/lab.js';
import { adminGet } from '../../src/control/admin.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(REPO, 'bin/portcullis.js');
const HELPER = path.join(REPO, 'test/helpers/reload-stream.ts');
const ADDON = path.join(REPO, 'native/build/Release/portcullis.node');

const why = process.getuid?.() !== 0 ? 'needs root (network namespaces, TUN)'
  : !fs.existsSync('/dev/net/tun') ? '/dev/net/tun is missing'
  : !fs.existsSync(ADDON) ? 'the native addon is not built (make build)'
  : !fs.existsSync(path.join(REPO, 'dist/control/reload.js')) ? 'dist/ is not built (make build)' : '';

interface LogLine { level: string; msg: string; [k: string]: unknown }

/** The appliance in the gateway namespace, with its stdout and its JSON log lines (stderr). */
class Running {
  out = '';
  err = '';
  constructor(readonly app: ChildProcess) {
    app.stdout!.on('data', (d) => { this.out += d; });
    app.stderr!.on('data', (d) => { this.err += d; });
  }
  /** The complete JSON lines so far (a line still being written is left for the next call). */
  logs(): LogLine[] {
    return this.err.split('\n').slice(0, -1).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as LogLine);
  }
  /** SIGHUP, then the first log line after it that `pred` accepts (a reload logs one line either way). */
  async hup(pred: (l: LogLine) => boolean, ms = 10000): Promise<LogLine> {
    const from = this.logs().length;
    this.app.kill('SIGHUP');
    return waitUntil('reload log line', () => this.logs().slice(from).find(pred), ms);
  }
  stop(): Promise<number | null> {
    this.app.kill('SIGTERM');
    return new Promise((r) => (this.app.exitCode !== null ? r(this.app.exitCode) : this.app.once('exit', (c) => r(c))));
  }
}

async function startAppliance(lab: NsLab, ns: string, cfg: string): Promise<Running> {
  const chk = await run(lab, ns, 'node', [BIN, 'check-config', cfg]);
  if (chk.code !== 0) throw new Error(`check-config refused ${cfg}: ${chk.err}`);
  const r = new Running(lab.spawn(ns, 'node', [BIN, 'run', '--config', cfg], { cwd: REPO }));
  await waitForLine(r.app, /^READY$/, 20000);
  return r;
}

/** Runs a command to its end inside `ns` without blocking the event loop (the held conversations and the appliance keep being read). */
function run(lab: NsLab, ns: string, cmd: string, args: string[], timeoutMs = 30000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const c = lab.spawn(ns, cmd, args, { cwd: REPO });
    let out = '', err = '';
    c.stdout!.on('data', (d) => { out += d; });
    c.stderr!.on('data', (d) => { err += d; });
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('close', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

async function waitUntil<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await Promise.resolve().then(fn).catch(() => undefined);
    if (v !== undefined && v !== null && (v as unknown) !== false) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Conn { i: number; name: string; seen: string; local: number }
interface Done { i: number; name: string; ok: boolean; rx: number; tx: number; error?: string }

/** The held conversations: started, then stopped and checked at the end. */
class Held {
  text = '';
  constructor(readonly child: ChildProcess) {
    child.stdout!.on('data', (d) => { this.text += d; });
    child.stderr!.on('data', (d) => { this.text += d; });
  }
  conns(): Conn[] {
    return [...this.text.matchAll(/^CONNECTED (.*)$/gm)].map((m) => JSON.parse(m[1]) as Conn);
  }
  async holding(): Promise<Conn[]> {
    await waitUntil(`held connections (${this.text.slice(-300)})`, () => /^HOLDING \d+$/m.test(this.text), 20000);
    return this.conns();
  }
  async finish(): Promise<Done[]> {
    this.child.stdin!.write('stop\n');
    await waitUntil(`held connections' end (${this.text.slice(-500)})`, () => /^ALL DONE$/m.test(this.text), 20000);
    return [...this.text.matchAll(/^DONE (.*)$/gm)].map((m) => JSON.parse(m[1]) as Done);
  }
}

function heldClient(lab: NsLab, ns: string, arg: object): Held {
  return new Held(lab.spawn(ns, 'node', ['--import=tsx', HELPER, 'client', JSON.stringify(arg)], { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] }));
}

async function streamServer(lab: NsLab, ns: string, arg: object): Promise<void> {
  await waitForLine(lab.spawn(ns, 'node', ['--import=tsx', HELPER, 'server', JSON.stringify(arg)], { cwd: REPO }), /^LISTENING$/, 20000);
}

async function probe(lab: NsLab, ns: string, arg: object): Promise<{ names: Record<string, number>; seen: string[]; failed: number }> {
  const r = await run(lab, ns, 'node', ['--import=tsx', HELPER, 'probe', JSON.stringify(arg)]);
  if (r.code !== 0) throw new Error(`probe failed: ${r.err}`);
  return JSON.parse(r.out.trim().split('\n').pop()!);
}

interface Asserts { ok(v: unknown, m: string): unknown; equal(a: unknown, b: unknown, m: string): unknown }

function checkDone(t: Asserts, done: Done[], conns: Conn[], minRx: number): void {
  t.equal(done.length, conns.length, `all ${conns.length} held conversations reported`);
  for (const d of done) {
    t.ok(d.ok, `conversation ${d.i} (${d.name}): every byte intact both ways (${d.rx} B received, ${d.tx} B sent)${d.error ? `: ${d.error}` : ''}`);
    t.ok(d.rx >= minRx, `conversation ${d.i}: ${d.rx} B received, at least ${minRx} (it lasted across the reloads)`);
  }
}

t.test('SIGHUP reload keeps established flows', { skip: why ? `reload e2e: ${why}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcr-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

  t.test('NAT over TUN: live keys applied, restart keys reported and kept, mappings keep their ports', async (t) => {
    const lab = new NatLab(`pcr${process.pid}-`);
    t.teardown(() => lab.destroy());
    lab.create();
    await streamServer(lab, lab.sv, { host: LAB.server, port: 9000, name: 'sv' });
    const sock = path.join(tmp, 'nat.sock');
    const cfg = path.join(tmp, 'nat.yaml');
    const write = (o: { filtering?: string; udp?: number; stats?: number; level?: string } = {}) => fs.writeFileSync(cfg, `io: { mode: tun, tun: ${LAB.tun} }
nat:
  inside: [${LAB.insidePrefix}]
  pool: [${LAB.pool}]
  filtering: ${o.filtering ?? 'address-dependent'}
  timeouts: { udp: ${o.udp ?? 300} }
admin: { socket: ${sock} }
stats: { interval: ${o.stats ?? 0} }
log: { level: ${o.level ?? 'info'} }
`);
    write();
    const app = await startAppliance(lab, lab.gw, cfg);
    t.teardown(() => { if (app.app.exitCode === null) app.app.kill('SIGKILL'); });

    const held = heldClient(lab, lab.cl, { host: LAB.server, port: 9000, count: 6 });
    const conns = await held.holding();
    t.equal(conns.length, 6, 'six conversations held open');
    const mapped = async () => {
      const ms = ((await adminGet(sock, '/nat/mappings')) as { mappings: { proto: string; insideAddress: string; insidePort: number; outsideAddress: string; outsidePort: number; remotes: { address: string; port: number }[] }[] }).mappings;
      return new Map(ms.filter((m) => m.proto === 'tcp' && m.insideAddress === LAB.client && m.remotes.some((r) => r.address === LAB.server && r.port === 9000))
        .map((m) => [m.insidePort, `${m.outsideAddress}:${m.outsidePort}`]));
    };
    const before = await mapped();
    for (const c of conns) t.equal(before.get(c.local), c.seen, `conversation ${c.i}: the server sees ${c.seen}, the NAT's mapping for inside port ${c.local} says ${before.get(c.local)}`);
    t.ok(conns.every((c) => c.seen.startsWith(`${LAB.pool}:`)), 'every conversation reaches the server from the pool address');
    await sleep(800);

    // 1. Live keys and restart keys in one file.
    write({ filtering: 'endpoint-independent', udp: 600, stats: 1, level: 'debug' });
    const ok = await app.hup((l) => /configuration (not )?reloaded/.test(l.msg));
    t.equal(ok.msg, 'configuration reloaded', `reload accepted: ${JSON.stringify(ok)}`);
    t.same((ok.applied as string[]).sort(), ['log.level', 'stats.interval'], 'applied: log.level and stats.interval');
    t.same((ok.needsRestart as string[]).sort(), ['nat.filtering', 'nat.timeouts.udp'], 'needs a restart: named by key path');
    const warn = app.logs().find((l) => l.level === 'warn' && /need a restart/.test(l.msg));
    t.same((warn?.keys as string[] | undefined)?.sort(), ['nat.filtering', 'nat.timeouts.udp'], 'a warn line lists the keys that need a restart');
    await waitUntil('a statistics line (stats.interval 0 -> 1 applied)', () => /pkt\/s/.test(app.out), 4000);
    t.pass('stats.interval took effect: statistics lines on stdout');

    // The NAT still filters address-dependent: SYNs from another server address to a held mapping are refused.
    const outPort = conns[0].seen.split(':')[1];
    const c0 = (await adminGet(sock, '/counters')) as Record<string, number>;
    await run(lab, lab.sv, 'hping3', ['-q', '-S', '-c', '3', '-i', 'u100000', '-a', LAB.server2, '-s', '40000', '-p', outPort, LAB.pool], 10000);
    const c1 = (await adminGet(sock, '/counters')) as Record<string, number>;
    // A SYN the filter refuses is an unsolicited SYN (RFC 5382 REQ-4a: dropped, nat_syn_dropped); endpoint-independent filtering would have let it in.
    const refused = (c: Record<string, number>) => (c.nat_syn_dropped ?? 0) + (c.nat_drop_filtered ?? 0);
    t.ok(refused(c1) - refused(c0) >= 3, `SYNs from ${LAB.server2} to ${LAB.pool}:${outPort} still refused (+${refused(c1) - refused(c0)}): filtering keeps its running value`);

    // 2. A file with a YAML syntax error: refused, logged, the running configuration stays.
    fs.writeFileSync(cfg, `io: { mode: tun, tun: ${LAB.tun} }\nnat:\n  inside: [${LAB.insidePrefix}\n  pool: [${LAB.pool}]\n`);
    const bad = await app.hup((l) => /configuration (not )?reloaded/.test(l.msg));
    t.equal(bad.msg, 'configuration not reloaded; the running one stays', 'the broken file is refused');
    t.equal(bad.level, 'error');
    t.match(String(bad.error), new RegExp(`${cfg.replace(/[.]/g, '\\.')}: invalid configuration:\\n {2}YAML syntax: .*line \\d+`), 'the log line names the file and the line');

    // New connections still work and are translated; the held ones kept their mappings.
    const p = await probe(lab, lab.cl, { host: LAB.server, port: 9000, count: 8, parallel: 4 });
    t.equal(p.failed, 0, 'new connections after the reloads');
    t.ok(p.seen.length === 8 && p.seen.every((s) => s.startsWith(`${LAB.pool}:`)), 'translated to the pool address');
    await sleep(500);
    const after = await mapped();
    for (const c of conns) t.equal(after.get(c.local), before.get(c.local), `conversation ${c.i}: outside port kept across the reloads (${after.get(c.local)})`);

    checkDone(t, await held.finish(), conns, 100_000);
    t.equal(await app.stop(), 0, 'the appliance stops cleanly');
  });

  t.test('lb nat service: targets added, removed and reweighted; held flows stay on their targets', async (t) => {
    const lab = new LbLab(`pcs${process.pid}-`, 3);
    t.teardown(() => lab.destroy());
    lab.create({ mode: 'tun' });
    await Promise.all(lab.targets.map((ns, i) => streamServer(lab, ns, { host: LB_LAB.target(i), port: 9000, name: `t${i + 1}` })));
    const sock = path.join(tmp, 'lb.sock');
    const cfg = path.join(tmp, 'lb.yaml');
    const VIP = LB_LAB.vip;
    const write = (targets: [number, number | string][], udp = 300) => fs.writeFileSync(cfg, `io: { mode: tun, tun: ${LB_LAB.tun} }
nat: { inside: [${LB_LAB.insidePrefix}], pool: ${LB_LAB.pool}, timeouts: { udp: ${udp} } }
admin: { socket: ${sock} }
stats: { interval: 0 }
lb:
  services:
    - name: stream
      vip: ${VIP}
      port: 9000
      mode: nat
      health: { type: tcp, interval: 0.5, timeout: 0.5 }
      targets:
${targets.map(([i, w]) => `        - { address: ${LB_LAB.target(i)}, port: 9000, weight: ${w} }`).join('\n')}
`);
    const lbTargets = async () => ((await adminGet(sock, '/lb')) as { services: { targets: { address: string; weight: number }[] }[] }).services[0].targets
      .map((x) => `${x.address}=${x.weight}`);
    write([[0, 1], [1, 1]]);
    const app = await startAppliance(lab, lab.gw, cfg);
    t.teardown(() => { if (app.app.exitCode === null) app.app.kill('SIGKILL'); });

    // Conversations on both targets (at least three each), held across everything below.
    const held = heldClient(lab, lab.cl, { host: VIP, port: 9000, count: 6, minPer: { t1: 3, t2: 3 }, max: 40 });
    const conns = await held.holding();
    const on = (n: string) => conns.filter((c) => c.name === n).length;
    t.ok(on('t1') >= 3 && on('t2') >= 3, `held: ${on('t1')} on t1, ${on('t2')} on t2`);
    const rebuilds0 = ((await adminGet(sock, '/counters')) as Record<string, number>).lb_rebuilds;
    await sleep(800);

    // 1. t3 added, t1 removed.
    write([[1, 1], [2, 1]]);
    const r1 = await app.hup((l) => /configuration (not )?reloaded/.test(l.msg));
    t.equal(r1.msg, 'configuration reloaded', JSON.stringify(r1));
    t.same(r1.applied, ['lb.services[0].targets[0].address', 'lb.services[0].targets[1].address'], 'applied: the two target addresses that changed');
    t.same(await lbTargets(), [`${LB_LAB.target(1)}=1`, `${LB_LAB.target(2)}=1`], 'the distributor now has t2 and t3');
    t.ok(((await adminGet(sock, '/counters')) as Record<string, number>).lb_rebuilds > rebuilds0, 'tables rebuilt and swapped');
    const p1 = await probe(lab, lab.cl, { host: VIP, port: 9000, count: 60, parallel: 8 });
    t.equal(p1.failed, 0, 'every new connection answered');
    t.equal(p1.names.t1 ?? 0, 0, `no new connection reaches the removed target (${JSON.stringify(p1.names)})`);
    t.ok((p1.names.t3 ?? 0) > 0 && (p1.names.t2 ?? 0) > 0, 'new connections reach t2 and the added t3');

    // 2. Weights t2:1 t3:4, and a key that needs a restart.
    write([[1, 1], [2, 4]], 600);
    const r2 = await app.hup((l) => /configuration (not )?reloaded/.test(l.msg));
    t.same(r2.applied, ['lb.services[0].targets[1].weight'], 'applied: the weight');
    t.same(r2.needsRestart, ['nat.timeouts.udp'], 'nat.timeouts.udp needs a restart');
    t.same(await lbTargets(), [`${LB_LAB.target(1)}=1`, `${LB_LAB.target(2)}=4`]);
    const p2 = await probe(lab, lab.cl, { host: VIP, port: 9000, count: 60, parallel: 8 });
    t.equal(p2.failed, 0);
    t.equal(p2.names.t1 ?? 0, 0, 'still nothing new to t1');
    t.ok((p2.names.t3 ?? 0) > (p2.names.t2 ?? 0), `t3 (weight 4) takes more new connections than t2 (weight 1): ${JSON.stringify(p2.names)}`);

    // 3. A bad weight: refused with its key path; the running targets stay.
    write([[1, 1], [2, -1]]);
    const r3 = await app.hup((l) => /configuration (not )?reloaded/.test(l.msg));
    t.equal(r3.msg, 'configuration not reloaded; the running one stays', 'the bad file is refused');
    t.match(String(r3.error), /lb\.services\[0\]\.targets\[1\]\.weight: /, 'the log line names the key path');
    t.same(await lbTargets(), [`${LB_LAB.target(1)}=1`, `${LB_LAB.target(2)}=4`], 'the running targets and weights stay');
    const p3 = await probe(lab, lab.cl, { host: VIP, port: 9000, count: 30, parallel: 8 });
    t.equal(p3.failed, 0);
    t.ok((p3.names.t1 ?? 0) === 0 && (p3.names.t3 ?? 0) > (p3.names.t2 ?? 0), `new connections still follow the running weights: ${JSON.stringify(p3.names)}`);

    const done = await held.finish();
    checkDone(t, done, conns, 100_000);
    for (const d of done) t.equal(d.name, conns.find((c) => c.i === d.i)?.name, `conversation ${d.i} stayed on ${d.name}`);
    t.ok(done.filter((d) => d.name === 't1' && d.ok).length >= 3, 'the conversations on the removed target t1 finished intact');
    t.equal(await app.stop(), 0, 'the appliance stops cleanly');
  });
});
