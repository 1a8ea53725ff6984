// Encapsulated direct server return live, between network namespaces this
// test creates (LbLab, prefix pcx<pid>-, 198.18.0.0/15 only, removed in
// teardown, also on failure). This kernel has no ipip or fou module, so each
// target runs `portcullis decap` (src/cli/decap.ts): it captures the tunnel
// packets on t0, strips the outer headers and writes the inner packet into a
// TUN; the target's kernel delivers it to the VIP on lo and nginx answers the
// client directly.
//
// The appliance (af-packet, the gateway's kernel does not forward) serves
// three services on the VIP with three nginx targets each:
//   :80   dsr-ipip                 (IPv4 in IPv4, RFC 2003)
//   :8080 dsr-gue variant 0        (UDP 6080 + 4-byte GUE header, checksum 0)
//   :8081 dsr-gue variant 1 + csum (UDP 6080, direct IP as Katran sends it)
// Checked: every connection answered, every target reached per service;
// on the bridge (tshark, with a Lua GUE dissector: tshark 4.0 has none) the
// encapsulated packets from the gateway to the targets with the inner
// destination the VIP and good checksums, and the replies leaving the
// targets unencapsulated from the VIP to the client; no ICMP unreachable
// from the targets (--drop-originals); the decapsulators' counters; garbage
// sent at them is counted and does not stop them.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { LbLab, LB_LAB, waitForLine } from '../../src/cli/lab.js';
import { gueTsharkArgs } from '../helpers/gue-dissector.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = path.join(REPO, 'bin/portcullis.js');
const ADDON = path.join(REPO, 'native/build/Release/portcullis.node');

function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const why = process.getuid?.() !== 0 ? 'needs root (network namespaces, TUN, AF_PACKET)'
  : !fs.existsSync('/dev/net/tun') ? '/dev/net/tun is missing'
  : !fs.existsSync(ADDON) ? 'the native addon is not built (make build)'
  : !fs.existsSync(path.join(REPO, 'dist/lb/decap.js')) ? 'dist/ is not built (make build)'
  : ['nginx', 'curl', 'tshark', 'tcpdump', 'nft', 'hping3'].find((c) => !have(c)) !== undefined ? `missing ${['nginx', 'curl', 'tshark', 'tcpdump', 'nft', 'hping3'].find((c) => !have(c))}` : '';

const VIP = LB_LAB.vip;
const GW = LB_LAB.gwOutside;
const TUN = 'pcxd0';
const SERVICES = [
  { port: 80, mode: 'dsr-ipip', gue: '' },
  { port: 8080, mode: 'dsr-gue', gue: '' },
  { port: 8081, mode: 'dsr-gue', gue: 'gue: { variant: 1, checksum: true }' },
] as const;
const PER_SERVICE = 150;
/** 1500 - 20 (IP) - 20 (TCP) - 32 (GUE v0 + UDP + outer IP) - 12 (TCP timestamps) - 16 spare. */
const ADVMSS = 1400;

function nginxConf(dir: string, name: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(conf, `daemon off; master_process off; worker_processes 1;
pid ${dir}/nginx.pid; error_log ${dir}/error.log;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path ${dir}/cb; proxy_temp_path ${dir}/pt; fastcgi_temp_path ${dir}/ft; uwsgi_temp_path ${dir}/ut; scgi_temp_path ${dir}/st;
  server { ${SERVICES.map((s) => `listen ${s.port};`).join(' ')} default_type text/plain; return 200 "${name} $server_port $remote_addr\\n"; }
}
`);
  return conf;
}

async function waitFor<T>(what: string, fn: () => T | undefined, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function stop(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
  c.kill('SIGTERM');
  return new Promise((r) => c.once('exit', () => r()));
}

function counter(out: string, name: string): number {
  const m = new RegExp(`^\\s+${name}\\s+(\\d+)$`, 'm').exec(out);
  return m ? Number(m[1]) : 0;
}

t.test('dsr-ipip and dsr-gue live: decapsulating helper on each target, replies straight from the VIP', { skip: why ? `lb dsr encap: ${why}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcx-'));
  const lab = new LbLab(`pcx${process.pid}-`, 3);
  t.teardown(() => {
    lab.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  lab.create({ mode: 'af-packet', dsr: true });
  // Small requests only, but no TSO super-frames from the client either: the
  // appliance encapsulates what it receives, and a 64 KiB frame cannot be.
  lab.exec(lab.cl, 'ethtool', ['-K', 'cl0', 'tso', 'off', 'gso', 'off']);
  // Complete checksums on the targets' replies (no veth TX offload), so that tshark on the bridge can verify them.
  for (const ns of lab.targets) lab.exec(ns, 'ethtool', ['-K', 't0', 'tx', 'off']);

  // ---- targets: nginx, a TUN with rp_filter off, the decapsulator ----
  const decaps: { ns: string; proc: ChildProcess; out: () => string }[] = [];
  for (let i = 0; i < 3; i++) {
    const ns = lab.targets[i];
    lab.spawn(ns, 'nginx', ['-c', nginxConf(path.join(tmp, `n${i + 1}`), `t${i + 1}`), '-e', path.join(tmp, `n${i + 1}`, 'error.log')]);
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', TUN, 'mode', 'tun']);
    // Encapsulation adds 20 (IPIP) to 32 (GUE) bytes and the inner packets keep
    // DF: a full-size segment from the client no longer fits the 1500-byte
    // links to the targets. The target's SYN-ACK sets the client's segment
    // size, so the targets advertise a smaller MSS on their route back to the
    // clients (the usual setting for tunnelled DSR, as with IPVS-TUN).
    execFileSync('ip', ['-n', ns, 'route', 'change', '198.18.0.0/16', 'via', GW, 'dev', 't0', 'advmss', String(ADVMSS)]);
    // The inner packets come from the client, whose network is routed via t0:
    // reverse-path filtering on the TUN would drop them.
    for (const dev of ['all', 'default', TUN]) lab.sysctl(ns, `net.ipv4.conf.${dev}.rp_filter`, '0');
    const proc = lab.spawn(ns, 'node', [BIN, 'decap', '--tun', TUN, '--dev', 't0', '--local', LB_LAB.target(i), '--from', GW, '--vip', VIP, '--drop-originals']);
    let out = '';
    proc.stdout!.on('data', (d) => { out += d; });
    proc.stderr!.on('data', (d) => { out += d; });
    decaps.push({ ns, proc, out: () => out });
  }
  await Promise.all(decaps.map((d) => waitForLine(d.proc, /^READY$/, 15000)));
  const rules = lab.exec(lab.targets[0], 'nft', ['list', 'ruleset']).out;
  // nft prints protocol 4 by its /etc/protocols name.
  t.match(rules, /ip protocol (4|ipencap|ipip) drop\s+udp dport 6080 drop/, 'the decapsulator installed its drop rules for the originals');
  for (let i = 0; i < 3; i++) {
    await waitFor(`nginx t${i + 1}`, () => lab.exec(lab.gw, 'curl', ['-s', '-m', '1', `http://${LB_LAB.target(i)}/`]).out.startsWith(`t${i + 1}`) || undefined, 10000);
  }

  // ---- the appliance ----
  const cfg = path.join(tmp, 'encap.yaml');
  // vnetHdr off: the encapsulated copies must carry complete inner checksums
  // (the appliance completes partial ones only without the virtio header).
  fs.writeFileSync(cfg, `io: { mode: af-packet, inside: gwi, outside: gwo, vnetHdr: false }
nat: { inside: [${LB_LAB.insidePrefix}], pool: ${LB_LAB.pool} }
admin: { socket: ${tmp}/encap.sock }
stats: { interval: 0 }
lb:
  services:
${SERVICES.map((s) => `    - name: s${s.port}
      vip: ${VIP}
      port: ${s.port}
      mode: ${s.mode}
      ${s.gue}
      health: { type: tcp, interval: 0.5, timeout: 0.5 }
      targets:
${[0, 1, 2].map((i) => `        - { address: ${LB_LAB.target(i)}, port: ${s.port} }`).join('\n')}`).join('\n')}
`);
  const chk = execFileSync('node', [BIN, 'check-config', cfg], { encoding: 'utf8' });
  t.match(chk, /ok \(af-packet gwi -> gwo/, 'check-config accepts the dsr-ipip / dsr-gue configuration');
  const app = lab.spawn(lab.gw, 'node', [BIN, 'run', '--config', cfg]);
  let appOut = '';
  app.stdout!.on('data', (d) => { appOut += d; });
  app.stderr!.on('data', (d) => { appOut += d; });
  await waitForLine(app, /^READY$/, 20000);

  // ---- capture on the bridge from before the first packet (every valid tunnel packet is then both on the wire and in the counters) ----
  const pcap = path.join(tmp, 'bridge.pcap');
  const dump = lab.spawn(lab.br, 'tcpdump', ['-i', 'br0', '-n', '-s', '0', '-U', '--immediate-mode', '-w', pcap, '-c', '20000',
    `ip proto 4 or udp port 6080 or icmp or (tcp and host ${VIP})`]);
  await new Promise<void>((resolve, reject) => {
    let err = '';
    const timer = setTimeout(() => reject(new Error(`tcpdump did not start: ${err}`)), 10000);
    dump.stderr!.on('data', (d) => {
      err += d;
      if (/listening on/.test(err)) { clearTimeout(timer); resolve(); }
    });
  });

  // The next hops' MACs come from the neighbour table (the health checks fill it): wait for a first answer per service.
  for (const s of SERVICES) {
    await waitFor(`first answer on :${s.port}`, () => /^t\d /.test(lab.exec(lab.cl, 'curl', ['-s', '-m', '1', `http://${VIP}:${s.port}/`]).out) || undefined, 10000);
  }

  for (const s of SERVICES) {
    const cc = path.join(tmp, `c${s.port}.curl`);
    const lines: string[] = [];
    for (let k = 0; k < PER_SERVICE; k++) lines.push(`url = "http://${VIP}:${s.port}/"`, 'header = "Connection: close"', 'max-time = 5', 'connect-timeout = 3', 'next');
    lines.pop();
    fs.writeFileSync(cc, lines.join('\n') + '\n');
    const r = lab.exec(lab.cl, 'curl', ['-sS', '-K', cc], { timeoutMs: 60000 });
    const answers = [...r.out.matchAll(/^(t\d) (\d+) (\S+)$/gm)];
    t.equal(answers.length, PER_SERVICE, `${s.mode}${s.gue ? ' (variant 1, checksum)' : ''} :${s.port}: all ${PER_SERVICE} connections answered ${r.err.slice(0, 200)}`);
    const by: Record<string, number> = {};
    for (const m of answers) by[m[1]] = (by[m[1]] ?? 0) + 1;
    t.same(Object.keys(by).sort(), ['t1', 't2', 't3'], `:${s.port}: every target reached (${JSON.stringify(by)})`);
    t.ok(answers.every((m) => m[2] === String(s.port) && m[3] === LB_LAB.client), `:${s.port}: nginx saw the client's own address on the service port`);
  }

  // ---- full-size segments: a request with a 6 KB header, several MSS-sized packets per service ----
  const pad = 'x'.repeat(6000);
  for (const s of SERVICES) {
    const r = lab.exec(lab.cl, 'curl', ['-sS', '-m', '5', '-H', `X-Pad: ${pad}`, `http://${VIP}:${s.port}/`]);
    t.match(r.out, new RegExp(`^t\\d ${s.port} `), `:${s.port}: a 6 KB request crosses the tunnel in full-size segments ${r.err.slice(0, 200)}`);
  }

  // ---- garbage at the decapsulators: counted, and they keep working ----
  // From the gateway's own stack (its source passes --from; the appliance only reads what arrives on gwo).
  lab.exec(lab.gw, 'hping3', ['-2', '-p', '6080', '-c', '20', '-i', 'u2000', '-d', '40', LB_LAB.target(0)], { timeoutMs: 10000 });
  lab.exec(lab.gw, 'hping3', ['-0', '-H', '4', '-c', '20', '-i', 'u2000', '-d', '10', LB_LAB.target(0)], { timeoutMs: 10000 });
  await new Promise((r) => setTimeout(r, 1500));
  t.match(decaps[0].out(), /decap: \d+ refused in the last second \(.*(decap_gue_proto|decap_gue_version|decap_gue_header)=\d+/, 'garbage GUE refused and logged');
  t.match(decaps[0].out(), /decap_bad_inner=\d+/, 'garbage IPIP refused and logged');
  const again = lab.exec(lab.cl, 'curl', ['-s', '-m', '5', `http://${VIP}:8080/`, `http://${VIP}:80/`]);
  t.match(again.out, /^t\d 8080 .*\nt\d 80 /, 'still answering after the garbage');
  const errorLines = (decaps[0].out().match(/refused in the last second/g) ?? []).length;
  t.ok(errorLines >= 1 && errorLines <= 4, `error log rate-limited: ${errorLines} lines for 40 bad packets`);

  await new Promise((r) => setTimeout(r, 300));
  dump.kill('SIGINT');
  await new Promise((r) => dump.once('exit', r));

  // ---- the wire ----
  const fields = ['frame.number', 'frame.len', 'ip.proto', 'ip.src', 'ip.dst', 'ip.checksum.status', 'udp.dstport', 'udp.checksum.status', 'gue.version', 'gue.proto', 'tcp.srcport', 'tcp.dstport', 'tcp.checksum.status', 'icmp.type'];
  const txt = execFileSync('tshark', ['-r', pcap, '-n', ...gueTsharkArgs(tmp), '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE',
    '-T', 'fields', '-E', 'occurrence=a', '-E', 'aggregator=,', ...fields.flatMap((f) => ['-e', f])], { encoding: 'utf8', maxBuffer: 256 << 20 });
  const rows = txt.trim().split('\n').map((l) => Object.fromEntries(l.split('\t').map((v, k) => [fields[k], v])));
  const targets = [0, 1, 2].map((i) => LB_LAB.target(i));
  const ipip = rows.filter((r) => r['ip.proto'] === '4,6');
  const gue = rows.filter((r) => r['ip.proto'] === '17,6' && r['udp.dstport'] === '6080');
  t.ok(ipip.length >= PER_SERVICE * 3, `${ipip.length} IPIP packets (ip.proto == 4) on the bridge`);
  t.ok(ipip.every((r) => r['ip.src'] === `${GW},${LB_LAB.client}` && targets.includes(r['ip.dst'].split(',')[0]) && r['ip.dst'].split(',')[1] === VIP && r['tcp.dstport'] === '80'),
    'IPIP: outer gateway -> target, inner client -> VIP:80');
  t.same(new Set(ipip.map((r) => r['ip.dst'].split(',')[0])), new Set(targets), 'IPIP to every target');
  t.ok(ipip.every((r) => r['ip.checksum.status'] === '1,1' && r['tcp.checksum.status'] === '1'), 'IPIP: both IP checksums and the inner TCP checksum good');
  const v0 = gue.filter((r) => r['tcp.dstport'] === '8080');
  const v1 = gue.filter((r) => r['tcp.dstport'] === '8081');
  t.ok(v0.length >= PER_SERVICE * 3 && v1.length >= PER_SERVICE * 3, `${v0.length} GUE variant 0 and ${v1.length} variant 1 packets (udp to 6080) on the bridge`);
  t.ok(gue.every((r) => r['ip.src'] === `${GW},${LB_LAB.client}` && targets.includes(r['ip.dst'].split(',')[0]) && r['ip.dst'].split(',')[1] === VIP),
    'GUE: outer gateway -> target, inner client -> VIP');
  t.ok(v0.every((r) => r['gue.version'] === '0' && r['gue.proto'] === '4' && r['udp.checksum.status'] === '3'), 'variant 0: GUE version 0, proto 4, UDP checksum 0 (tshark: not present)');
  t.ok(v1.every((r) => r['gue.version'] === '1' && r['gue.proto'] === '' && r['udp.checksum.status'] === '1'), 'variant 1: direct IP, UDP checksum present and good');
  t.ok(gue.every((r) => r['ip.checksum.status'] === '1,1' && r['tcp.checksum.status'] === '1'), 'GUE: both IP checksums and the inner TCP checksum good');
  t.same(new Set(gue.map((r) => r['ip.dst'].split(',')[0])), new Set(targets), 'GUE to every target');
  const biggest = Math.max(...[...ipip, ...gue].map((r) => Number(r['frame.len'])));
  t.ok(biggest > 1400 && biggest <= 1514, `largest encapsulated frame ${biggest} bytes: full-size segments, within the 1500-byte MTU`);
  const replies = rows.filter((r) => r['ip.proto'] === '6' && r['ip.src'] === VIP);
  t.ok(replies.length >= PER_SERVICE * 3 * 3, `${replies.length} replies on the bridge`);
  const badReply = replies.find((r) => !(r['ip.dst'] === LB_LAB.client && ['80', '8080', '8081'].includes(r['tcp.srcport']) && r['tcp.checksum.status'] === '1'));
  t.equal(badReply, undefined, 'replies: plain TCP from VIP:port straight to the client (not encapsulated, not translated)');
  t.equal(rows.filter((r) => r['ip.proto'] === '6' && r['ip.dst'] === VIP).length, 0, 'no unencapsulated packet to the VIP on the bridge');
  // (The appliance's own UDP probes to port 9, sent to resolve next hops, do get port unreachables: not ours.)
  const unreach = rows.filter((r) => r['icmp.type'] === '3' && targets.includes(r['ip.src'].split(',')[0]) &&
    (r['ip.proto'].split(',').includes('4') || r['udp.dstport'] === '6080'));
  t.equal(unreach.length, 0, 'no ICMP unreachable from the targets for tunnel packets (the originals are dropped after capture)');

  // ---- stop everything; counters ----
  app.kill('SIGTERM');
  await new Promise((r) => app.once('exit', r));
  t.ok(counter(appOut, 'lb_distributed') >= PER_SERVICE * 3 * 3, `appliance distributed ${counter(appOut, 'lb_distributed')} packets`);
  t.ok(counter(appOut, 'lb_dsr_return') >= PER_SERVICE * 3 * 3, `appliance passed ${counter(appOut, 'lb_dsr_return')} DSR replies through untouched`);
  await Promise.all(decaps.map((d) => stop(d.proc)));
  let ipipN = 0, gueN = 0;
  decaps.forEach((d, i) => {
    const o = d.out();
    t.comment(`t${i + 1} decap: ${o.slice(o.indexOf('final counters:')).replace(/\s+/g, ' ')}`);
    ipipN += counter(o, 'decap_ipip');
    gueN += counter(o, 'decap_gue');
    t.ok(counter(o, 'decap_ipip') > 0 && counter(o, 'decap_gue') > 0, `t${i + 1}: decapsulated ${counter(o, 'decap_ipip')} IPIP and ${counter(o, 'decap_gue')} GUE packets`);
    t.equal(counter(o, 'tun_tx_errors'), 0, `t${i + 1}: no TUN write errors`);
    if (i > 0) t.equal(counter(o, 'decap_bad_inner') + counter(o, 'decap_gue_proto') + counter(o, 'decap_bad_outer'), 0, `t${i + 1}: nothing refused`);
  });
  t.equal(ipipN, ipip.length, `the decapsulators took every IPIP packet seen on the wire (${ipipN})`);
  t.equal(gueN, gue.length, `the decapsulators took every GUE packet seen on the wire (${gueN})`);
  t.equal(lab.exec(lab.targets[0], 'nft', ['list', 'ruleset']).out.includes('portcullis_decap'), false, 'drop rules removed on exit');
});
