// The live appliance between network namespaces this test creates (prefix
// pce<pid>-, 198.18.0.0/15 only), with real clients and servers: curl to
// nginx (small page and a large download), iperf3 TCP and UDP, ping and
// traceroute (ICMP errors translated back), coturn's natdiscovery (mapping and
// filtering behaviour), tshark checking every translated packet's checksums,
// and `portcullis nat list` reading the running appliance's table.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { NatLab, LAB, waitForLine } from '../../src/cli/lab.js';
import { adminGet } from '../../src/control/admin.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = path.join(REPO, 'bin/portcullis.js');

const why = process.getuid?.() !== 0 ? 'needs root (network namespaces, TUN)' : !fs.existsSync('/dev/net/tun') ? '/dev/net/tun is missing' : '';
t.test('live NAT end-to-end', { skip: why ? `live NAT end-to-end: ${why}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pce-'));
  const lab = new NatLab(`pce${process.pid}-`);
  t.teardown(() => {
    lab.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  lab.create();

  // --- the server side: nginx with a small page and a 24 MiB file ---
  const www = path.join(tmp, 'www');
  fs.mkdirSync(www);
  fs.writeFileSync(path.join(www, 'index.html'), 'portcullis e2e\n');
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

  // --- a capture on the server's interface for the checksum check ---
  const pcap = path.join(tmp, 'server.pcap');
  const cap = lab.spawn(lab.sv, 'tcpdump', ['-i', 'sv0', '-n', '-s', '0', '-U', '-w', pcap, `src host ${LAB.pool} and not tcp port 5201`]);
  await new Promise((r) => setTimeout(r, 500));

  async function startAppliance(tag: string, extra: string): Promise<{ app: ChildProcess; sock: string; out: () => string }> {
    const sock = path.join(tmp, `${tag}.sock`);
    const cfg = path.join(tmp, `${tag}.yaml`);
    fs.writeFileSync(cfg, `io: { tun: ${LAB.tun} }\nnat:\n  inside: [${LAB.insidePrefix}]\n  pool: [${LAB.pool}]\n${extra}admin: { socket: ${sock} }\nstats: { interval: 0 }\n`);
    t.equal(execFileSync('node', [BIN, 'check-config', cfg], { encoding: 'utf8' }).includes('ok'), true, `${tag}: check-config accepts the config`);
    const app = lab.spawn(lab.gw, 'node', [BIN, 'run', '--config', cfg]);
    let out = '';
    app.stdout!.on('data', (d) => { out += d; });
    app.stderr!.on('data', (d) => { out += d; });
    await waitForLine(app, /^READY$/);
    return { app, sock, out: () => out };
  }
  async function stop(app: ChildProcess): Promise<number | null> {
    app.kill('SIGTERM');
    return new Promise((r) => app.once('exit', (c) => r(c)));
  }
  const natList = (sock: string) => JSON.parse(execFileSync('node', [BIN, 'nat', 'list', '--json', '--socket', sock], { encoding: 'utf8' })).mappings as
    { proto: string; insideAddress: string; outsideAddress: string; outsidePort: number; remotes: { address: string; port: number }[] }[];

  // ================= default configuration: address-dependent filtering =================
  const a = await startAppliance('adf', '');

  await t.test('without the appliance nothing passes; with it, curl reaches nginx', async (t) => {
    const r = lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '10', `http://${LAB.server}/index.html`]);
    t.equal(r.code, 0, r.err);
    t.equal(r.out, 'portcullis e2e\n');
    const log = fs.readFileSync(path.join(tmp, 'access.log'), 'utf8');
    t.match(log, new RegExp(`^${LAB.pool.replace(/\./g, '\\.')} `, 'm'), 'nginx saw the pool address, not the client');
    t.notMatch(log, /198\.18\.1\.2/, 'the inside address never reached the server');
    // The reply alias: the connection is one flow seen both ways (not a
    // syn_sent flow before the NAT plus a syn_recv one for the replies).
    const rows = ((await adminGet(a.sock, '/flows')) as { flows: { proto: number; state: string; client: string; server: string; serverPort: number; packetsFromServer: number }[] }).flows
      .filter((f) => f.proto === 6 && (f.server === LAB.server || f.client === LAB.server));
    t.equal(rows.length, 1, `one TCP flow for the curl connection: ${JSON.stringify(rows)}`);
    t.equal(rows[0]?.client, LAB.client);
    t.equal(rows[0]?.serverPort, 80);
    t.ok(['established', 'fin_wait', 'time_wait', 'closed'].includes(rows[0]?.state), `state ${rows[0]?.state}`);
    t.ok(rows[0]?.packetsFromServer > 0, 'the replies were counted on the same flow');
  });

  await t.test('a 24 MiB download arrives intact', async (t) => {
    const out = path.join(tmp, 'dl.bin');
    const r = lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '60', '-o', out, `http://${LAB.server}/big.bin`], { timeoutMs: 70000 });
    t.equal(r.code, 0, r.err);
    t.equal(crypto.createHash('sha256').update(fs.readFileSync(out)).digest('hex'), bigSha);
  });

  await t.test('iperf3 TCP and UDP through the NAT', async (t) => {
    const srv = lab.spawn(lab.sv, 'iperf3', ['-s', '-B', LAB.server, '-p', '5201']);
    await new Promise((r) => setTimeout(r, 500));
    const tcp = lab.exec(lab.cl, 'iperf3', ['-c', LAB.server, '-p', '5201', '-t', '3', '-J'], { timeoutMs: 30000 });
    t.equal(tcp.code, 0, `iperf3 TCP exit code ${tcp.err.slice(0, 300)}`);
    const tj = JSON.parse(tcp.out);
    t.ok(tj.end.sum_received.bytes > 1e6, `TCP moved ${(tj.end.sum_received.bits_per_second / 1e6).toFixed(0)} Mbit/s`);
    const udp = lab.exec(lab.cl, 'iperf3', ['-c', LAB.server, '-p', '5201', '-u', '-b', '20M', '-t', '3', '-J'], { timeoutMs: 30000 });
    t.equal(udp.code, 0, `iperf3 UDP exit code ${udp.err.slice(0, 300)}`);
    const uj = JSON.parse(udp.out);
    t.ok(uj.end.sum.packets > 1000, `UDP sent ${uj.end.sum.packets} datagrams`);
    t.ok(uj.end.sum.lost_percent < 5, `UDP loss ${uj.end.sum.lost_percent}%`);
    srv.kill('SIGKILL');
  });

  await t.test('ping and traceroute through the NAT (ICMP errors translated back)', async (t) => {
    const p = lab.exec(lab.cl, 'ping', ['-c', '3', '-i', '0.2', '-W', '2', LAB.server]);
    t.equal(p.code, 0, p.err);
    t.match(p.out, / 0% packet loss/);
    // UDP traceroute: the last hop answers port unreachable, sent to the pool
    // address and quoting the translated probe; only a correct ICMP error
    // translation brings it back to the client.
    const tr = lab.exec(lab.cl, 'traceroute', ['-n', '-q', '1', '-w', '2', '-m', '5', LAB.server], { timeoutMs: 40000 });
    t.equal(tr.code, 0, tr.err);
    const hops = tr.out.trim().split('\n').slice(1);
    t.match(hops[0], new RegExp(`^\\s*1\\s+${LAB.gwInside.replace(/\./g, '\\.')}`), 'hop 1 is the gateway');
    t.match(hops[hops.length - 1], new RegExp(`${LAB.server.replace(/\./g, '\\.')}`), `the destination answered: ${tr.out}`);
    t.ok(hops.length <= 4, 'the destination was reached before the hop limit');
  });

  await t.test('natdiscovery: endpoint-independent mapping, address-dependent filtering', async (t) => {
    const turn = lab.spawn(lab.sv, 'turnserver', ['-n', '-S', `--listening-ip=${LAB.server}`, `--listening-ip=${LAB.server2}`, '--no-cli', '--no-tls', '--no-dtls', `--log-file=${tmp}/turn.log`, '--simple-log']);
    await new Promise((r) => setTimeout(r, 1000));
    const d = lab.exec(lab.cl, 'turnutils_natdiscovery', ['-m', '-f', '-L', LAB.client, LAB.server], { timeoutMs: 40000 });
    t.match(d.out, new RegExp(`reflexive addr: ${LAB.pool.replace(/\./g, '\\.')}:\\d+`), 'the reflexive address is the pool address');
    t.match(d.out, /NAT with Endpoint Independent Mapping!/);
    t.match(d.out, /NAT with Address Dependent Filtering!/);
    turn.kill('SIGKILL');
  });

  await t.test('portcullis nat list shows the mappings the traffic made', async (t) => {
    const ms = natList(a.sock);
    const has = (proto: string, port?: number) => ms.some((m) => m.proto === proto && m.insideAddress === LAB.client && m.outsideAddress === LAB.pool &&
      (port === undefined || m.remotes.some((r) => r.address === LAB.server && r.port === port)));
    t.ok(has('tcp', 80), 'TCP mapping towards nginx');
    t.ok(has('tcp', 5201), 'TCP mapping towards iperf3');
    t.ok(has('udp'), 'UDP mappings (iperf3, traceroute, natdiscovery)');
    t.ok(has('icmp'), 'ICMP echo mapping');
    const text = execFileSync('node', [BIN, 'nat', 'list', '--socket', a.sock], { encoding: 'utf8' });
    t.match(text, /^proto\s+inside\s+outside/m);
    t.match(text, new RegExp(`tcp\\s+${LAB.client.replace(/\./g, '\\.')}:\\d+\\s+${LAB.pool.replace(/\./g, '\\.')}:\\d+`));
  });

  await t.test('SIGTERM stops cleanly with final counters', async (t) => {
    t.equal(await stop(a.app), 0);
    t.match(a.out(), /final counters:\n(.|\n)*nat_out_translated\s+\d+/);
  });

  await t.test('tshark: every translated packet carries good IP, TCP, UDP and ICMP checksums', async (t) => {
    execFileSync('sleep', ['0.5']);
    cap.kill('SIGINT');
    await new Promise((r) => cap.once('exit', r));
    const out = execFileSync('tshark', ['-r', pcap, '-n', '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE',
      '-T', 'fields', '-E', 'separator=,', '-e', 'ip.checksum.status', '-e', 'tcp.checksum.status', '-e', 'udp.checksum.status', '-e', 'icmp.checksum.status', '-e', 'ip.proto'],
    { encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'ignore'] });
    const rows = out.trim().split('\n').map((l) => l.split(','));
    t.ok(rows.length > 1000, `${rows.length} translated packets captured`);
    const seen: Record<string, number> = {};
    const bad: string[] = [];
    for (const r of rows) {
      const [ipS, tcpS, udpS, icmpS, proto] = r;
      seen[proto] = (seen[proto] ?? 0) + 1;
      // status 1 = good, 0 = bad, 2 = unverified (UDP checksum 0 is legal and unverified)
      if (ipS !== '1') bad.push(`ip ${r.join(',')}`);
      if (proto === '6' && tcpS !== '1') bad.push(`tcp ${r.join(',')}`);
      if (proto === '17' && udpS !== '1' && udpS !== '2') bad.push(`udp ${r.join(',')}`);
      if (proto === '1' && icmpS !== '1') bad.push(`icmp ${r.join(',')}`);
    }
    t.same(bad.slice(0, 10), [], `no bad checksum (${bad.length} bad)`);
    t.ok(seen['6'] > 0 && seen['17'] > 0 && seen['1'] > 0, `TCP, UDP and ICMP all checked: ${JSON.stringify(seen)}`);
  });

  // ================= endpoint-independent filtering =================
  await t.test('natdiscovery with filtering: endpoint-independent', async (t) => {
    const b = await startAppliance('eif', '  filtering: endpoint-independent\n');
    const turn = lab.spawn(lab.sv, 'turnserver', ['-n', '-S', `--listening-ip=${LAB.server}`, `--listening-ip=${LAB.server2}`, '--no-cli', '--no-tls', '--no-dtls', `--log-file=${tmp}/turn2.log`, '--simple-log']);
    await new Promise((r) => setTimeout(r, 1000));
    const d = lab.exec(lab.cl, 'turnutils_natdiscovery', ['-m', '-f', '-L', LAB.client, LAB.server], { timeoutMs: 40000 });
    t.match(d.out, /NAT with Endpoint Independent Mapping!/);
    t.match(d.out, /NAT with Endpoint Independent Filtering!/);
    turn.kill('SIGKILL');
    t.equal(await stop(b.app), 0);
  });
  // ================= outside MTU and unsolicited inbound SYNs =================
  await t.test('DF packets over the outside MTU get ICMP fragmentation-needed; unsolicited SYNs are dropped', async (t) => {
    const c = await startAppliance('mtu', '  outsideMtu: 1200\n');
    // RFC 1191: the appliance answers (through its raw socket) with the MTU.
    const p = lab.exec(lab.cl, 'ping', ['-M', 'do', '-s', '1300', '-c', '1', '-W', '2', LAB.server]);
    t.match(p.out + p.err, /mtu ?= ?1200/, `ping saw the next-hop MTU: ${(p.out + p.err).trim()}`);
    const small = lab.exec(lab.cl, 'ping', ['-M', 'do', '-s', '1100', '-c', '1', '-W', '2', LAB.server]);
    t.equal(small.code, 0, 'a packet under the MTU still passes');
    // RFC 5382 REQ-4 (default policy): SYNs from outside with no mapping never reach inside.
    const before = (await adminGet(c.sock, '/counters')) as Record<string, number>;
    const h = lab.exec(lab.sv, 'hping3', ['-S', '-p', '40000', '-c', '5', '-i', 'u20000', LAB.pool], { timeoutMs: 15000 });
    t.match(h.out + h.err, /5 packets transmitted/, 'hping3 sent its 5 SYNs');
    const after = (await adminGet(c.sock, '/counters')) as Record<string, number>;
    const dropped = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
    t.ok(dropped('nat_drop_no_mapping') + dropped('nat_syn_dropped') >= 5, `dropped and counted: no_mapping +${dropped('nat_drop_no_mapping')}, syn_dropped +${dropped('nat_syn_dropped')}`);
    t.equal(dropped('nat_in_translated'), 0, 'nothing was translated inwards');
    t.ok(after.nat_icmp_originated >= 1 && after.originated_sent >= 1, `ICMP originated ${after.nat_icmp_originated}, sent by the raw socket ${after.originated_sent}`);
    t.equal(await stop(c.app), 0);
  });
});
