// The live appliance in af-packet router mode between network namespaces
// this test creates (prefix pca<pid>-, 198.18.0.0/15 only, removed in
// teardown, also on failure). The gateway's kernel does not forward
// (ip_forward=0): every packet that crosses is one the appliance took from
// its AF_PACKET ring, translated, re-addressed (Ethernet) and sent.
//
// Two runs:
// 1. vnetHdr off, TSO/GSO off on the client and server: MTU-sized segments
//    that still carry partial checksums (veth TX offload), completed in
//    software before translation. curl (small page, 24 MiB download),
//    iperf3 TCP and UDP, ping; tshark on the server checks every translated
//    packet's checksums.
// 2. vnetHdr on, offloads as the kernel sets them: TCP super-frames (GSO)
//    cross whole with their partial checksum re-seeded for the new
//    addresses. The gateway's interfaces have TX checksumming off, so the
//    kernel segments and checksums our frames in software from our seed:
//    tshark on the server then sees real checksums, and a wrong seed would
//    show as bad ones.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { NatLab, LAB, waitForLine } from '../../src/cli/lab.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = path.join(REPO, 'bin/portcullis.js');
const ADDON = path.join(REPO, 'native/build/Release/portcullis.node');

const why = process.getuid?.() !== 0 ? 'needs root (network namespaces, AF_PACKET)'
  : !fs.existsSync(ADDON) ? 'the native addon is not built (cd native && ../node_modules/.bin/node-gyp rebuild --nodedir=/usr)'
  : !fs.existsSync(path.join(REPO, 'dist/control/appliance.js')) ? 'dist/ is not built (node_modules/.bin/tsc -p tsconfig.build.json)' : '';

t.test('af-packet router NAT end-to-end', { skip: why ? `af-packet NAT end-to-end: ${why}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pca-'));
  const lab = new NatLab(`pca${process.pid}-`);
  t.teardown(() => {
    lab.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  lab.create({ mode: 'af-packet' });
  t.equal(lab.exec(lab.gw, 'sysctl', ['-n', 'net.ipv4.ip_forward']).out.trim(), '0', 'the gateway kernel does not forward');

  // --- nginx on the server: a small page and a 24 MiB file ---
  const www = path.join(tmp, 'www');
  fs.mkdirSync(www);
  fs.writeFileSync(path.join(www, 'index.html'), 'portcullis af-packet\n');
  const big = crypto.randomBytes(24 << 20);
  fs.writeFileSync(path.join(www, 'big.bin'), big);
  const bigSha = crypto.createHash('sha256').update(big).digest('hex');
  const conf = path.join(tmp, 'nginx.conf');
  fs.writeFileSync(conf, `daemon off; master_process off; worker_processes 1;
pid ${tmp}/nginx.pid; error_log ${tmp}/nginx-error.log;
events { worker_connections 256; }
http {
  access_log ${tmp}/access.log; client_body_temp_path ${tmp}/cb; proxy_temp_path ${tmp}/pt;
  fastcgi_temp_path ${tmp}/ft; uwsgi_temp_path ${tmp}/ut; scgi_temp_path ${tmp}/st;
  server { listen ${LAB.server}:80; root ${www}; }
}
`);
  lab.spawn(lab.sv, 'nginx', ['-c', conf, '-p', tmp, '-e', `${tmp}/nginx-error.log`]);

  const offload = (ns: string, dev: string, ...kv: string[]) => {
    const r = lab.exec(ns, 'ethtool', ['-K', dev, ...kv]);
    if (r.code !== 0) throw new Error(`ethtool -K ${dev} ${kv.join(' ')}: ${r.err}`);
  };

  async function startAppliance(tag: string, io: string): Promise<{ app: ChildProcess; out: () => string }> {
    const cfg = path.join(tmp, `${tag}.yaml`);
    fs.writeFileSync(cfg, `io: { mode: af-packet, inside: gwi, outside: gwo${io} }\nnat:\n  inside: [${LAB.insidePrefix}]\n  pool: [${LAB.pool}]\nadmin: { socket: ${tmp}/${tag}.sock }\nstats: { interval: 0 }\n`);
    const chk = execFileSync('node', [BIN, 'check-config', cfg], { encoding: 'utf8' });
    t.match(chk, /ok \(af-packet gwi -> gwo/, `${tag}: check-config accepts the af-packet config`);
    const app = lab.spawn(lab.gw, 'node', [BIN, 'run', '--config', cfg]);
    let out = '';
    app.stdout!.on('data', (d) => { out += d; });
    app.stderr!.on('data', (d) => { out += d; });
    await waitForLine(app, /^READY$/);
    return { app, out: () => out };
  }
  async function stop(app: ChildProcess): Promise<number | null> {
    app.kill('SIGTERM');
    return new Promise((r) => app.once('exit', (c) => r(c)));
  }
  function counter(out: string, name: string): number {
    const m = new RegExp(`^\\s+${name}\\s+(\\d+)$`, 'm').exec(out);
    return m ? Number(m[1]) : 0;
  }
  function startCapture(file: string, filter: string): ChildProcess {
    return lab.spawn(lab.sv, 'tcpdump', ['-i', 'sv0', '-n', '-s', '0', '-U', '-w', file, filter]);
  }
  async function stopCapture(cap: ChildProcess): Promise<void> {
    execFileSync('sleep', ['0.5']);
    cap.kill('SIGINT');
    await new Promise((r) => cap.once('exit', r));
  }
  /** tshark over a capture: rows of ip/tcp/udp/icmp checksum status and protocol. */
  function checksums(file: string): { rows: number; seen: Record<string, number>; bad: string[] } {
    const out = execFileSync('tshark', ['-r', file, '-n', '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE',
      '-T', 'fields', '-E', 'separator=,', '-e', 'ip.checksum.status', '-e', 'tcp.checksum.status', '-e', 'udp.checksum.status', '-e', 'icmp.checksum.status', '-e', 'ip.proto', '-e', 'ip.src'],
    { encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'ignore'] });
    const lines = out.trim() ? out.trim().split('\n') : [];
    const seen: Record<string, number> = {};
    const bad: string[] = [];
    for (const l of lines) {
      const [ipS, tcpS, udpS, icmpS, proto, src] = l.split(',');
      seen[proto] = (seen[proto] ?? 0) + 1;
      if (src !== LAB.pool) bad.push(`untranslated source ${l}`);
      // status 1 = good, 0 = bad, 2 = unverified (UDP checksum 0 is legal)
      if (ipS !== '1') bad.push(`ip ${l}`);
      if (proto === '6' && tcpS !== '1') bad.push(`tcp ${l}`);
      if (proto === '17' && udpS !== '1' && udpS !== '2') bad.push(`udp ${l}`);
      if (proto === '1' && icmpS !== '1') bad.push(`icmp ${l}`);
    }
    return { rows: lines.length, seen, bad };
  }

  // ================= 1: no vnet header, partial checksums completed in software =================
  await t.test('vnetHdr off: curl, iperf3 TCP and UDP, ping; good checksums on the server side', async (t) => {
    for (const [ns, dev] of [[lab.cl, 'cl0'], [lab.sv, 'sv0']]) offload(ns, dev, 'tso', 'off', 'gso', 'off');
    offload(lab.gw, 'gwi', 'gro', 'off');
    offload(lab.gw, 'gwo', 'gro', 'off');
    const pcap = path.join(tmp, 'plain.pcap');
    const cap = startCapture(pcap, `src host ${LAB.pool} and not tcp port 5201`);
    await new Promise((r) => setTimeout(r, 500));
    const a = await startAppliance('plain', ', vnetHdr: false');

    // The first packet towards a next hop the kernel has not resolved is
    // dropped while the appliance asks for it; curl's SYN retry covers that.
    const r = lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '15', `http://${LAB.server}/index.html`]);
    t.equal(r.code, 0, r.err);
    t.equal(r.out, 'portcullis af-packet\n');
    const log = fs.readFileSync(path.join(tmp, 'access.log'), 'utf8');
    t.match(log, new RegExp(`^${LAB.pool.replace(/\./g, '\\.')} `, 'm'), 'nginx saw the pool address');
    t.notMatch(log, /198\.18\.1\.2/, 'the inside address never reached the server');

    const dl = path.join(tmp, 'dl1.bin');
    const d = lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '60', '-o', dl, `http://${LAB.server}/big.bin`], { timeoutMs: 70000 });
    t.equal(d.code, 0, d.err);
    t.equal(crypto.createHash('sha256').update(fs.readFileSync(dl)).digest('hex'), bigSha, '24 MiB download intact');

    const srv = lab.spawn(lab.sv, 'iperf3', ['-s', '-B', LAB.server, '-p', '5201']);
    await new Promise((r) => setTimeout(r, 500));
    const tcp = lab.exec(lab.cl, 'iperf3', ['-c', LAB.server, '-p', '5201', '-t', '2', '-J'], { timeoutMs: 30000 });
    t.equal(tcp.code, 0, `iperf3 TCP exit code ${tcp.err.slice(0, 300)}`);
    const tj = JSON.parse(tcp.out);
    t.ok(tj.end.sum_received.bytes > 1e6, `TCP moved ${(tj.end.sum_received.bits_per_second / 1e6).toFixed(0)} Mbit/s`);
    const udp = lab.exec(lab.cl, 'iperf3', ['-c', LAB.server, '-p', '5201', '-u', '-b', '20M', '-t', '2', '-J'], { timeoutMs: 30000 });
    t.equal(udp.code, 0, `iperf3 UDP exit code ${udp.err.slice(0, 300)}`);
    const uj = JSON.parse(udp.out);
    t.ok(uj.end.sum.packets > 1000, `UDP sent ${uj.end.sum.packets} datagrams`);
    t.ok(uj.end.sum.lost_percent < 5, `UDP loss ${uj.end.sum.lost_percent}%`);
    srv.kill('SIGKILL');

    const p = lab.exec(lab.cl, 'ping', ['-c', '3', '-i', '0.2', '-W', '2', LAB.server]);
    t.equal(p.code, 0, p.err);
    t.match(p.out, / 0% packet loss/);

    t.equal(await stop(a.app), 0, 'SIGTERM stops cleanly');
    const out = a.out();
    t.ok(counter(out, 'nat_out_translated') > 1000, 'outbound packets translated');
    t.ok(counter(out, 'nat_in_translated') > 1000, 'inbound packets translated');
    t.ok(counter(out, 'route_csum_completed') > 100, `partial checksums completed in software (${counter(out, 'route_csum_completed')})`);
    t.equal(counter(out, 'route_gso'), 0, 'no GSO without the vnet header');

    await stopCapture(cap);
    const c = checksums(pcap);
    t.ok(c.rows > 1000, `${c.rows} translated packets captured`);
    t.same(c.bad.slice(0, 10), [], `no bad checksum (${c.bad.length} bad)`);
    t.ok(c.seen['6'] > 0 && c.seen['17'] > 0 && c.seen['1'] > 0, `TCP, UDP and ICMP all checked: ${JSON.stringify(c.seen)}`);
    for (const [ns, dev] of [[lab.cl, 'cl0'], [lab.sv, 'sv0']]) offload(ns, dev, 'tso', 'on', 'gso', 'on');
  });

  // ================= 2: vnet header, GSO super-frames =================
  await t.test('vnetHdr on: TCP super-frames cross whole, the kernel segments them with our checksum seed', async (t) => {
    // TX checksumming off on the gateway: the kernel segments and checksums
    // in software, starting from the seed we wrote.
    offload(lab.gw, 'gwo', 'tx', 'off');
    offload(lab.gw, 'gwi', 'tx', 'off');
    const pcap = path.join(tmp, 'vnet.pcap');
    const cap = startCapture(pcap, `src host ${LAB.pool} and tcp port 5203`);
    await new Promise((r) => setTimeout(r, 500));
    const a = await startAppliance('vnet', ', vnetHdr: true');
    const r = lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '15', `http://${LAB.server}/index.html`]);
    t.equal(r.code, 0, r.err);
    t.equal(r.out, 'portcullis af-packet\n');

    const srv = lab.spawn(lab.sv, 'iperf3', ['-s', '-B', LAB.server, '-p', '5202']);
    await new Promise((r) => setTimeout(r, 500));
    const tcp = lab.exec(lab.cl, 'iperf3', ['-c', LAB.server, '-p', '5202', '-t', '2', '-J'], { timeoutMs: 30000 });
    t.equal(tcp.code, 0, `iperf3 TCP exit code ${tcp.err.slice(0, 300)}`);
    const tj = JSON.parse(tcp.out);
    t.ok(tj.end.sum_received.bytes > 1e6, `TCP moved ${(tj.end.sum_received.bits_per_second / 1e6).toFixed(0)} Mbit/s`);
    srv.kill('SIGKILL');
    // A bounded transfer captured whole for the checksum check.
    const srv2 = lab.spawn(lab.sv, 'iperf3', ['-s', '-B', LAB.server, '-p', '5203']);
    await new Promise((r) => setTimeout(r, 500));
    const n = lab.exec(lab.cl, 'iperf3', ['-c', LAB.server, '-p', '5203', '-n', '16M', '-J'], { timeoutMs: 30000 });
    t.equal(n.code, 0, `iperf3 -n 16M exit code ${n.err.slice(0, 300)}`);
    srv2.kill('SIGKILL');

    t.equal(await stop(a.app), 0, 'SIGTERM stops cleanly');
    const out = a.out();
    t.ok(counter(out, 'route_gso') > 100, `GSO super-frames forwarded whole (${counter(out, 'route_gso')})`);
    t.ok(counter(out, 'route_csum_seeded') >= counter(out, 'route_gso'), 'every super-frame got its seed rewritten');
    t.equal(counter(out, 'afp_outside_tx_errors'), 0, 'the kernel refused no frame');

    await stopCapture(cap);
    const c = checksums(pcap);
    t.ok(c.rows > 1000, `${c.rows} translated TCP segments captured`);
    t.same(c.bad.slice(0, 10), [], `no bad checksum (${c.bad.length} bad)`);
  });
});
