// The connection guard live, single node, embedded bus, between network
// namespaces this test creates (prefix pcg<pid>-, 198.18.0.0/15 only):
//
//   <p>cl  legit client 198.18.1.2 ─┐                       ┌─ <p>sv nginx 198.19.1.2:80
//   <p>at  attacker     198.18.3.2 ─┴─ <p>gw appliance (TUN) ┘
//          (+ 198.18.3.3, the fragment sender)
//
// While a curl loop from the client fetches a page from nginx, the attacker
// sends SYNs split into 8-byte fragments (hping3 -m 8: a tiny first fragment
// and one at offset 1, RFC 1858) from one address, then floods SYNs from
// another (hping3, bounded by -c and timeout). Checked:
//   - the fragment sender is blocked by the suspicious-fragment rule, its
//     fragments dropped, its split SYNs counted;
//   - the flooder is blocked by the rate rule, and the block reaches the
//     data path within one monitor interval of the threshold being crossed:
//     the decision (alert time) comes at most one interval after the first
//     flood SYN reached the server (the crossing cannot be earlier), and no
//     flood SYN reaches the server after the decision (tcpdump timestamps);
//   - SYNs from the blocked flooder are answered with resets (guard.rst);
//   - at least 99.9% of the client's requests succeed;
//   - `portcullis guard list|block|unblock` on the running appliance.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { NatLab, LAB, waitForLine } from '../../src/cli/lab.js';
import { adminGet } from '../../src/control/admin.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = path.join(REPO, 'bin/portcullis.js');
const INTERVAL = 1;
const ATTACKER = '198.18.3.2';
const FRAGGER = '198.18.3.3';

const which = (c: string) => { try { execFileSync('which', [c], { stdio: 'ignore' }); return true; } catch { return false; } };
const why = process.getuid?.() !== 0 ? 'needs root (network namespaces, TUN)'
  : !fs.existsSync('/dev/net/tun') ? '/dev/net/tun is missing'
    : !fs.existsSync(path.join(REPO, 'dist/guard/guard.js')) ? 'dist/ is not built with the guard (make build)'
      : ['hping3', 'nginx', 'curl', 'tcpdump', 'tshark'].find((c) => !which(c)) ?? '';

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

t.test('guard live: fragment evasion and a SYN flood are blocked, the legitimate client is not', { skip: why ? `guard e2e: ${why}` : false }, async (t) => {
  const prefix = `pcg${process.pid}-`;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcg-'));
  const lab = new NatLab(prefix);
  const at = `${prefix}at`;
  let atMade = false;
  t.teardown(() => {
    lab.destroy();
    if (atMade) {
      try {
        for (const pid of execFileSync('ip', ['netns', 'pids', at], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
          try { process.kill(Number(pid), 'SIGKILL'); } catch { /* gone */ }
        }
      } catch { /* gone */ }
      try { ip(['netns', 'del', at]); } catch { /* gone */ }
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  lab.create();
  // The attacker's namespace on a second inside network of the gateway.
  ip(['netns', 'add', at]);
  atMade = true;
  ip(['-n', at, 'link', 'set', 'lo', 'up']);
  ip(['-n', at, 'link', 'add', 'at0', 'type', 'veth', 'peer', 'name', 'gwa', 'netns', lab.gw]);
  ip(['-n', at, 'addr', 'add', `${ATTACKER}/24`, 'dev', 'at0']);
  ip(['-n', at, 'addr', 'add', `${FRAGGER}/24`, 'dev', 'at0']);
  ip(['-n', lab.gw, 'addr', 'add', '198.18.3.1/24', 'dev', 'gwa']);
  ip(['-n', at, 'link', 'set', 'at0', 'up']);
  ip(['-n', lab.gw, 'link', 'set', 'gwa', 'up']);
  ip(['-n', at, 'route', 'add', '198.19.0.0/16', 'via', '198.18.3.1']);
  lab.sysctl(lab.gw, 'net.ipv4.conf.gwa.rp_filter', '0');
  ip(['-n', lab.gw, 'rule', 'add', 'iif', 'gwa', 'lookup', '100', 'pref', '102']);

  // nginx on the server side.
  const www = path.join(tmp, 'www');
  fs.mkdirSync(www);
  fs.writeFileSync(path.join(www, 'index.html'), 'portcullis guard e2e\n');
  fs.writeFileSync(path.join(tmp, 'nginx.conf'), `daemon off; master_process off; worker_processes 1;
pid ${tmp}/nginx.pid; error_log ${tmp}/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off; client_body_temp_path ${tmp}/cb; proxy_temp_path ${tmp}/pt;
  fastcgi_temp_path ${tmp}/ft; uwsgi_temp_path ${tmp}/ut; scgi_temp_path ${tmp}/st;
  server { listen ${LAB.server}:80 backlog=4096; root ${www}; }
}
`);
  lab.spawn(lab.sv, 'nginx', ['-c', path.join(tmp, 'nginx.conf'), '-p', tmp]);

  // The server's view: every TCP SYN and fragment arriving from the pool address.
  const pcap = path.join(tmp, 'server.pcap');
  const cap = lab.spawn(lab.sv, 'tcpdump', ['-i', 'sv0', '-n', '-s', '128', '-U', '-w', pcap, `src host ${LAB.pool} and (tcp[tcpflags] & tcp-syn != 0 or ip[6:2] & 0x3fff != 0)`]);

  const sock = path.join(tmp, 'admin.sock');
  const cfg = path.join(tmp, 'guard.yaml');
  fs.writeFileSync(cfg, `io: { tun: ${LAB.tun} }
nat:
  inside: [${LAB.insidePrefix}, 198.18.3.0/24]
  pool: [${LAB.pool}]
  # The flood varies its source port: let the NAT map all of it, so that only the guard stops it.
  maxMappingsPerSubscriber: 196605
admin: { socket: ${sock} }
stats: { interval: 0 }
guard:
  node: e2e-gw
  interval: ${INTERVAL}
  rst: true
  thresholds:
    rate: { rate: 300, burst: 600 }
  # The flood's SYNs never complete either: the rate weighs double so that the block names it.
  score: { threshold: 100, weights: { rate: 2 } }
  ban: { time: 120 }
`);
  t.match(execFileSync('node', [BIN, 'check-config', cfg], { encoding: 'utf8' }), /ok/);
  const app = lab.spawn(lab.gw, 'node', [BIN, 'run', '--config', cfg]);
  let appOut = '';
  app.stdout!.on('data', (d) => { appOut += d; });
  app.stderr!.on('data', (d) => { appOut += d; });
  await waitForLine(app, /^READY$/);
  await new Promise((r) => setTimeout(r, 300));
  t.equal(lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '5', `http://${LAB.server}/`]).out, 'portcullis guard e2e\n', 'the client reaches nginx through the appliance');

  // The legitimate client: a curl loop for the whole attack, one new connection per request.
  const loop = lab.spawn(lab.cl, 'sh', ['-c',
    `end=$(($(date +%s) + 18)); while [ $(date +%s) -lt $end ]; do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 http://${LAB.server}/; done`]);
  let loopOut = '';
  loop.stdout!.on('data', (d) => { loopOut += d; });
  const loopDone = new Promise<void>((r) => loop.once('exit', () => r()));
  await new Promise((r) => setTimeout(r, 2000));

  // 1. SYNs split into 8-byte fragments (RFC 1858 tiny fragment + offset 1), from FRAGGER.
  const frag = lab.exec(at, 'timeout', ['10', 'hping3', '-S', '-p', '80', '-m', '8', '-a', FRAGGER, '-c', '3', '-i', 'u200000', LAB.server], { timeoutMs: 15000 });
  t.match(frag.out + frag.err, /3 packets transmitted/, 'hping3 sent 3 fragmented SYNs');
  await new Promise((r) => setTimeout(r, (INTERVAL + 0.5) * 1000));

  // 2. The flood, from ATTACKER to a closed port (the server answers RST; nginx is not involved).
  const sent = 20000;
  const flood = lab.exec(at, 'timeout', ['15', 'hping3', '-S', '-p', '81', '-i', 'u100', '-c', String(sent), LAB.server], { timeoutMs: 20000 });
  t.match(flood.out + flood.err, new RegExp(`${sent} packets transmitted`), `hping3 sent ${sent} SYNs`);

  // 3. A blocked address's SYNs to the open port are answered by the appliance with RST (the server would have said SYN-ACK).
  const rst = lab.exec(at, 'hping3', ['-S', '-p', '80', '-c', '2', '-i', 'u300000', LAB.server], { timeoutMs: 10000 });
  t.match(rst.out, /flags=RA/, 'the appliance answered the blocked SYN with a reset');
  t.notMatch(rst.out, /flags=SA/, 'no SYN-ACK from the server: the SYN never reached it');

  await loopDone;
  const codes = loopOut.trim().split('\n').filter(Boolean);
  const ok = codes.filter((c) => c === '200').length;
  t.ok(codes.length >= 700, `${codes.length} requests made by the client`);
  t.ok(ok / codes.length >= 0.999, `${ok} of ${codes.length} succeeded (${((100 * ok) / codes.length).toFixed(2)}%; non-200: ${JSON.stringify(codes.filter((c) => c !== '200').slice(0, 5))})`);

  // What the appliance says.
  const counters = (await adminGet(sock, '/counters')) as Record<string, number>;
  const alerts = ((await adminGet(sock, '/guard/alerts?limit=100')) as { alerts: { action: string; addr: string; rule: string; at: number; window?: { from: number; to: number }; nodes: string[]; score: number }[] }).alerts;
  const blocks = alerts.filter((a) => a.action === 'block');
  t.same(blocks.map((a) => a.addr).sort(), [ATTACKER, FRAGGER], `blocked: ${JSON.stringify(blocks.map((a) => [a.addr, a.rule]))}`);
  const fb = blocks.find((a) => a.addr === FRAGGER)!;
  const ab = blocks.find((a) => a.addr === ATTACKER)!;
  t.equal(fb.rule, 'suspicious');
  t.equal(ab.rule, 'rate');
  t.same(ab.nodes, ['e2e-gw']);
  t.ok(ab.score >= 100);
  t.ok(counters.guard_suspicious >= 6 && counters.guard_suspicious_drop >= 6, `suspicious fragments ${counters.guard_suspicious}, dropped ${counters.guard_suspicious_drop}`);
  t.ok(counters.guard_assembled_syn >= 3, `SYNs assembled from fragments: ${counters.guard_assembled_syn}`);
  t.ok(counters.guard_blocked_drop > sent / 2, `packets dropped because blocked: ${counters.guard_blocked_drop}`);
  t.ok(counters.guard_blocked_rst >= 1, `resets sent: ${counters.guard_blocked_rst}`);
  t.ok(ab.at - ab.window!.from <= INTERVAL * 1000 + 250, `decided ${ab.at - ab.window!.from} ms after the start of the interval that crossed`);

  // The legitimate client as the monitor sees it (after one more flush): handshakes completed, connections closed, no score.
  await new Promise((r) => setTimeout(r, INTERVAL * 1000 + 300));
  const scores = ((await adminGet(sock, '/guard/scores?limit=1000')) as { scores: { addr: string; attempts: number; completed: number; closed: number; concurrent: number; score: number }[] }).scores;
  const legit = scores.find((x) => x.addr === LAB.client)!;
  t.ok(legit.attempts >= codes.length, `client: ${legit.attempts} attempts`);
  t.ok(legit.completed >= 0.99 * legit.attempts, `client: ${legit.completed} handshakes completed`);
  t.ok(legit.attempts - legit.closed <= 10 && legit.concurrent <= 10, `client: ${legit.closed} closed, ${legit.concurrent} open`);
  t.ok(legit.score < 10, `client score ${legit.score}`);

  // The server's capture: when the flood arrived, and that it stopped at the decision.
  await new Promise((r) => setTimeout(r, 300));
  cap.kill('SIGINT');
  await new Promise((r) => cap.once('exit', r));
  const rows = execFileSync('tshark', ['-r', pcap, '-n', '-o', 'ip.defragment:FALSE', '-T', 'fields', '-E', 'separator=,', '-e', 'frame.time_epoch', '-e', 'tcp.dstport', '-e', 'tcp.flags.syn', '-e', 'tcp.flags.ack', '-e', 'ip.frag_offset', '-e', 'ip.flags.mf'],
    { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n').map((l) => l.split(','));
  const floodAt = rows.filter((r) => r[1] === '81' && r[2] === '1' && r[3] === '0').map((r) => Number(r[0]) * 1000);
  t.ok(floodAt.length > 0, `${floodAt.length} flood SYNs reached the server`);
  const first = Math.min(...floodAt), last = Math.max(...floodAt);
  t.ok(ab.at - first <= INTERVAL * 1000 + 250, `the block was decided ${(ab.at - first).toFixed(0)} ms after the first flood SYN reached the server (the threshold cannot have been crossed before it)`);
  t.ok(last <= ab.at + 100, `the last flood SYN reached the server ${(last - ab.at).toFixed(0)} ms after the decision: the block was in the data path at once`);
  t.ok(floodAt.length < sent / 2, `${floodAt.length} of ${sent} flood SYNs got through before the block`);
  t.equal((counters.nat_drop_subscriber_limit ?? 0) + (counters.nat_drop_pool_empty ?? 0), 0, 'the NAT refused no mapping: the guard alone stopped the flood');
  const tiny = rows.filter((r) => (r[4] === '0' && r[5] === '1') || r[4] === '1');
  t.equal(tiny.length, 0, 'no tiny first fragment and no fragment at offset 1 reached the server');

  // The CLI on the running appliance.
  const list = JSON.parse(execFileSync('node', [BIN, 'guard', 'list', '--json', '--socket', sock], { encoding: 'utf8' })) as { blacklist: { addr: string; rule: string; drops: number; offences: number }[] };
  t.same(list.blacklist.map((e) => e.addr).sort(), [ATTACKER, FRAGGER]);
  t.ok(list.blacklist.find((e) => e.addr === ATTACKER)!.drops > 0);
  t.match(execFileSync('node', [BIN, 'guard', 'list', '--socket', sock], { encoding: 'utf8' }), new RegExp(`${ATTACKER.replace(/\./g, '\\.')}\\s+rate`));
  t.match(execFileSync('node', [BIN, 'guard', 'block', `${LAB.client}`, '--duration', '60', '--socket', sock], { encoding: 'utf8' }), /blocked 198\.18\.1\.2 until/);
  await new Promise((r) => setTimeout(r, 100));
  t.not(lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '2', `http://${LAB.server}/`]).code, 0, 'a manually blocked client gets nowhere');
  t.match(execFileSync('node', [BIN, 'guard', 'unblock', LAB.client, '--socket', sock], { encoding: 'utf8' }), /unblocked 198\.18\.1\.2/);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '5', `http://${LAB.server}/`]).out, 'portcullis guard e2e\n', 'and passes again once unblocked');
  let badCode = 0;
  try { execFileSync('node', [BIN, 'guard', 'block', 'nonsense', '--socket', sock], { stdio: 'pipe' }); } catch (e) { badCode = (e as { status: number }).status; }
  t.equal(badCode, 2, 'a bad address is a usage error');

  app.kill('SIGTERM');
  const code = await new Promise<number | null>((r) => (app as ChildProcess).once('exit', (c) => r(c)));
  t.equal(code, 0, 'stops cleanly');
  t.match(appOut, /"msg":"guard block"/, 'the blocks were logged as structured lines');
});
